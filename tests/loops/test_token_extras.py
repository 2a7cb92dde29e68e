"""Per-token extras from data (RRPO's phrase ids) reach the objective padded and aligned with the response tokens,
or are refused naming the column (issue 11, item 5: ragged list columns were silently dropped by the stacking)."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from preflab.cli import main
from preflab.data.rows import load_rows
from preflab.data.tokenize import tokenize_pairs
from preflab.errors import DataError, PreflabError
from preflab.loops.batches import collate_pairs
from preflab.models.load import load_tokenizer
from preflab.objectives import PairBatch, SequenceLogps, get_objective

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples/data/loud_echo_pairs.jsonl"


def pair(i, chosen, rejected, **extras):
    return SimpleNamespace(row_id=i, prompt_ids=[1, 5], chosen_ids=chosen, rejected_ids=rejected, extras=extras)


@pytest.mark.parametrize("layout", ["padded", "prefix_shared", "packed", "prefix_packed"])
def test_ragged_per_token_columns_are_padded_and_aligned_with_the_response_mask(layout):
    pairs = [pair(0, [7, 8, 9], [7, 6], chosen_phrase_ids=[0, 1, 2], rejected_phrase_ids=[3, 4]),
             pair(1, [8], [6, 6, 6, 6], chosen_phrase_ids=[5], rejected_phrase_ids=[1, 0, 2, 3])]
    batch = collate_pairs(pairs, pad_id=0, layout=layout)
    mask, targets = batch.response_mask, batch.target_ids
    chosen, rejected = batch.extras["chosen_phrase_ids"], batch.extras["rejected_phrase_ids"]
    assert chosen.shape == rejected.shape == (2, mask.shape[1])
    for i, p in enumerate(pairs):
        for side, ids, values, row in (("chosen", p.chosen_ids, chosen[i], i), ("rejected", p.rejected_ids,
                                                                                rejected[i], i + 2)):
            assert targets[row][mask[row]].tolist() == ids  # the response tokens sit where the values sit
            assert values[mask[row]].tolist() == p.extras[f"{side}_phrase_ids"]
            assert not values[~mask[row]].any()


def test_per_token_column_of_the_wrong_length_names_row_and_column():
    pairs = [pair(0, [7, 8, 9], [7, 6], chosen_phrase_ids=[0, 1], rejected_phrase_ids=[3, 4]),
             pair(1, [8], [6], chosen_phrase_ids=[5], rejected_phrase_ids=[1])]
    with pytest.raises(DataError, match=r"row 0: per-token column 'chosen_phrase_ids' has 2 values but the chosen "
                                        r"response has 3 tokens"):
        collate_pairs(pairs, pad_id=0)


def test_ragged_column_without_a_side_is_refused_not_dropped():
    pairs = [pair(0, [7], [6], spans=[1, 2]), pair(1, [8], [6], spans=[3])]
    with pytest.raises(DataError, match="'spans' holds lists of different lengths"):
        collate_pairs(pairs, pad_id=0)
    same = collate_pairs([pair(0, [7], [6], k=[1.0, 2.0]), pair(1, [8], [6], k=[3.0, 4.0])], pad_id=0)
    assert same.extras["k"].tolist() == [[1.0, 2.0], [3.0, 4.0]]  # equal lengths: a [B, k] vector as before


def test_rrpo_refuses_phrase_ids_not_shaped_like_the_log_probs():
    s = SequenceLogps(torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool))
    batch = PairBatch(s, s, s, s, {"chosen_phrase_ids": torch.ones(1, 2, dtype=torch.long),
                                   "rejected_phrase_ids": torch.ones(1, 3, dtype=torch.long),
                                   "chosen_token_kl": torch.zeros(1, 3)})
    with pytest.raises(PreflabError, match=r"extras\['chosen_phrase_ids'\] has shape \(1, 2\)"):
        get_objective("rrpo")(batch)


@pytest.mark.slow
def test_rrpo_from_a_data_file_with_one_phrase_over_each_response_trains_exactly_like_dpo(tmp_path):
    """All response tokens in phrase 1 and alpha = 0: RRPO's loss is DPO's (tests/objectives/test_rrpo.py), so two
    runs give the same metrics at every step; ragged ids that were dropped or misaligned could not."""
    tokenizer = load_tokenizer("builtin:tiny-llama")
    rows = [json.loads(x) for x in DATA.read_text().splitlines()[:24]]
    examples, _ = load_rows(DATA, kind="pairwise")
    tokenized, _ = tokenize_pairs(examples[:24], tokenizer, max_length=128)
    assert len({len(t.chosen_ids) for t in tokenized} | {len(t.rejected_ids) for t in tokenized}) > 1  # ragged
    path = tmp_path / "phrases.jsonl"
    path.write_text("".join(json.dumps({**r, "chosen_phrase_ids": [1] * len(t.chosen_ids),
                                        "rejected_phrase_ids": [1] * len(t.rejected_ids)}) + "\n"
                            for r, t in zip(rows, tokenized)))
    runs = {}
    for name, params in (("rrpo", ["alpha=0.0"]), ("sigmoid", [])):
        out = tmp_path / name
        code = main(["train", str(ROOT / "examples/quickstart.yaml"), f"loss_type={name}", *params,
                     f"dataset_name={path}", f"output_dir={out}", "max_steps=3", "per_device_train_batch_size=4",
                     "eval_fraction=0", "eval_steps=0", "save_steps=0", "logging_steps=1", "disable_tqdm=true",
                     "learning_rate=1e-2", "warmup_steps=0"])
        assert code == 0
        runs[name] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(runs["rrpo"], runs["sigmoid"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], rel=1e-4, abs=1e-6)
    assert runs["rrpo"][-1]["loss"] != pytest.approx(runs["rrpo"][0]["loss"], abs=1e-4)  # it trained


def test_unpaired_per_token_column_is_aligned_with_the_completion_and_the_shape_is_checked():
    from preflab.loops.kinds import UnpairedKind
    from preflab.objectives import UnpairedBatch
    from preflab.objectives.base import _check_token_extra

    items = [SimpleNamespace(row_id=i, prompt_ids=[1, 5], completion_ids=ids, label=True,
                             extras={"completion_weights": [0.5] * len(ids)}) for i, ids in enumerate([[7, 8], [9]])]
    layout = UnpairedKind.collate(items, pad_id=0, layout="padded")
    weights, mask = layout.extras["completion_weights"], layout.response_mask[:2]
    assert weights[mask].tolist() == [0.5, 0.5, 0.5] and not weights[~mask].any()
    short = SequenceLogps(torch.zeros(2, 1), torch.ones(2, 1, dtype=torch.bool))
    batch = UnpairedBatch(short, torch.tensor([True, True]), extras={"completion_weights": weights})
    with pytest.raises(PreflabError, match="one value per completion response token"):
        _check_token_extra(batch, "completion_weights", "test")


def test_text_rrpo_row_with_no_differing_phrase_is_a_bad_row_counted_in_the_report(tmp_path):
    """A text RRPO row whose phrase ids are all 0 has reward term u = 0 and trained only the KL term, silently; it
    is now the bad row `no_differing_phrase`, as a vision pair without a differing phrase (data.vision)."""
    rows = [{"prompt": "p", "chosen": "a b", "rejected": "a c", "chosen_phrase_ids": [0, 1],
             "rejected_phrase_ids": [0, 1]},
            {"prompt": "q", "chosen": "x y", "rejected": "x z", "chosen_phrase_ids": [0, 0],
             "rejected_phrase_ids": [0, 0]},
            {"prompt": "r", "chosen": "u", "rejected": "v", "chosen_phrase_ids": [1], "rejected_phrase_ids": [0]}]
    path = tmp_path / "rrpo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extras = get_objective("rrpo").row_extras()
    kept, report = load_rows(path, kind="pairwise", on_bad_row="skip", required_extras=extras)
    assert [ex.row_id for ex in kept] == [0, 2]
    assert report.skipped == {"no_differing_phrase": 1}
    with pytest.raises(DataError, match=r"row 1.*'rejected'.*every chosen_phrase_ids and rejected_phrase_ids "
                                        r"value is 0"):
        load_rows(path, kind="pairwise", on_bad_row="error", required_extras=extras)
    # without RRPO (no phrase ids required) the same rows are plain pairs
    assert len(load_rows(path, kind="pairwise")[0]) == 3
