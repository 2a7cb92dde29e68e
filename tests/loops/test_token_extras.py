"""Per-token extras from data (RRPO's phrase ids) reach the objective padded and aligned with the response tokens,
or are refused naming the column (issue 11, item 5: ragged list columns were silently dropped by the stacking)."""
import json
import re
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


CUT_WORDS = ["one two three four five", "the cat sat on a mat", "red green blue and gold", "up down left right"]


def _phrase_rows(tokenizer):
    """Rows whose responses (12+ tokens with eos) max_length=10 cuts, each side's phrase ids 1, 0, 2, 0, 3, ... over
    its tokens (eos included); the rejected response differs at its start and its end."""
    rows = []
    for w in CUT_WORDS:
        row = {"prompt": "p", "chosen": w, "rejected": "x " + w + " y"}
        for side in ("chosen", "rejected"):
            n = len(tokenizer(row[side], add_special_tokens=False).input_ids) + 1  # + eos
            row[f"{side}_phrase_ids"] = [1 + (i % 4) if i % 2 == 0 else 0 for i in range(n)]
        rows.append(row)
    return rows


def _write(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train(tmp_path, name, rows, *params, loss="rrpo"):
    """(metrics rows, summary) of a 2-step tiny-llama run on `rows` with max_length=10."""
    out = tmp_path / name
    code = main(["train", str(ROOT / "examples/quickstart.yaml"), f"loss_type={loss}", *(["alpha=0.0"] if loss ==
                 "rrpo" else []), f"dataset_name={_write(tmp_path, rows, f'{name}.jsonl')}", f"output_dir={out}",
                 "max_steps=2", "per_device_train_batch_size=4", "eval_fraction=0", "eval_steps=0", "save_steps=0",
                 "logging_steps=1", "disable_tqdm=true", "learning_rate=1e-2", "warmup_steps=0", "max_length=10",
                 *params])
    assert code == 0
    return ([json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()],
            json.loads((out / "summary.json").read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_text_rrpo_phrase_ids_cut_with_the_response_train_like_ids_written_already_cut(tmp_path, mode):
    """max_length=10 keeps 8 response tokens (keep_start: the first; keep_end: the last 7, the prompt is cut too).
    The phrase columns are cut to the same tokens: a run on the full ids equals, step for step, a run whose ids are
    0 on every token the cut drops (written already cut). Before, the longer column stopped the run at batching."""
    tokenizer = load_tokenizer("builtin:tiny-llama")
    rows = _phrase_rows(tokenizer)
    examples, _ = load_rows(_write(tmp_path, rows), kind="pairwise")
    pairs, _ = tokenize_pairs(examples, tokenizer, max_length=10, truncation_mode=mode)
    cut_rows = []
    for r, p in zip(rows, pairs):
        r = dict(r)
        for side, ids in (("chosen", p.chosen_ids), ("rejected", p.rejected_ids)):
            full, k = r[f"{side}_phrase_ids"], len(ids)
            assert k < len(full)
            r[f"{side}_phrase_ids"] = (full[:k] + [0] * (len(full) - k) if mode == "keep_start"
                                       else [0] * (len(full) - k) + full[len(full) - k:])
        cut_rows.append(r)
    full_run, summary = _train(tmp_path, "full", rows, f"truncation_mode={mode}")
    cut_run, _ = _train(tmp_path, "cut", cut_rows, f"truncation_mode={mode}")
    assert summary["data"]["train_tokenize"]["response_truncated"] == 4
    for a, b in zip(full_run, cut_run, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], rel=1e-6, abs=1e-7)
    wrong = [dict(r, chosen_phrase_ids=list(reversed(r["chosen_phrase_ids"]))) for r in cut_rows]
    wrong_run, _ = _train(tmp_path, "wrong", wrong, f"truncation_mode={mode}")  # other kept ids give another loss
    assert wrong_run[-1]["loss"] != pytest.approx(cut_run[-1]["loss"], rel=1e-6, abs=1e-7)  # (step 1: log 2)
    cut, _ = tokenize_pairs(examples, tokenizer, max_length=10, truncation_mode=mode, token_extras=True,
                            phrase_ids=True)
    for p, r in zip(cut, cut_rows):  # the kept ids are the full ids at the kept tokens
        for side, ids in (("chosen", p.chosen_ids), ("rejected", p.rejected_ids)):
            written = r[f"{side}_phrase_ids"]
            assert p.extras[f"{side}_phrase_ids"] == (written[:len(ids)] if mode == "keep_start"
                                                      else written[len(written) - len(ids):])


@pytest.mark.slow
def test_text_rrpo_pair_whose_phrases_are_all_cut_away_is_skipped_and_counted(tmp_path):
    """A pair whose differing phrases lie only in the tokens max_length cuts keeps all-0 phrase ids: RRPO's reward
    term would be 0 (it trained only the KL term). It is the bad row `no_differing_phrase`, skipped and counted
    (on_bad_row: skip) or an error naming file and row; the other rows train. Before, the run stopped at batching."""
    tokenizer = load_tokenizer("builtin:tiny-llama")
    rows = _phrase_rows(tokenizer)
    rows[2] = {**rows[2], **{f"{side}_phrase_ids": [0] * 8 + [1] * (len(rows[2][f"{side}_phrase_ids"]) - 8)
                             for side in ("chosen", "rejected")}}  # phrases only after the 8 tokens kept
    _, summary = _train(tmp_path, "skip", rows, "on_bad_row=skip", "per_device_train_batch_size=3")
    tok = summary["data"]["train_tokenize"]
    assert tok["skipped"] == {"no_differing_phrase": 1} and tok["kept"] == 3
    assert [(e["row_id"], e["reason"]) for e in tok["skipped_examples"]] == [(2, "no_differing_phrase")]
    examples, _ = load_rows(_write(tmp_path, rows), kind="pairwise")
    with pytest.raises(DataError, match=r"rows\.jsonl row 2 \(line 3\), field 'rejected': after truncation "
                                        r"every kept chosen_phrase_ids and rejected_phrase_ids value is 0"):
        tokenize_pairs(examples, tokenizer, max_length=10, token_extras=True, phrase_ids=True)
    kept, _ = tokenize_pairs(examples, tokenizer, max_length=10, token_extras=True)  # not RRPO: a plain pair
    assert len(kept) == 4 and kept[2].extras["chosen_phrase_ids"] == [0] * 8


@pytest.mark.slow
def test_per_token_column_of_the_wrong_length_before_any_cut_is_an_error_naming_file_row_and_column(tmp_path,
                                                                                                   capsys):
    """A per-token column must match the uncut response (eos included); cutting cannot mend a wrong length, and
    skipping would hide a data file made with another tokenizer: an error even under on_bad_row: skip."""
    tokenizer = load_tokenizer("builtin:tiny-llama")
    rows = _phrase_rows(tokenizer)
    rows[1] = {**rows[1], "rejected_phrase_ids": rows[1]["rejected_phrase_ids"][:-1]}  # one short (no eos value)
    n = len(rows[1]["rejected_phrase_ids"])
    message = (rf"bad\.jsonl row 1 \(line 2\), field 'rejected_phrase_ids': per-token column 'rejected_phrase_ids' "
               rf"has {n} values but the rejected response has {n + 1} tokens \(before truncation")
    with pytest.raises(AssertionError):
        _train(tmp_path, "bad", rows, "on_bad_row=skip")
    assert re.search(message, capsys.readouterr().err)
    examples, _ = load_rows(_write(tmp_path, rows, "bad.jsonl"), kind="pairwise")
    for policy in ("error", "skip"):
        with pytest.raises(DataError, match=message):
            tokenize_pairs(examples, tokenizer, max_length=None, on_bad_row=policy, token_extras=True)


@pytest.mark.slow
def test_generic_per_token_columns_are_cut_with_their_response_and_cached_cut(tmp_path):
    """Any `<side>_<name>` list column is per-token (data.extras.stack_extras), whatever the objective: a DPO run
    with such columns trains under a max_length cut (before: stopped at batching); a pair's chosen/rejected columns
    and an unpaired completion's column keep the response's kept tokens, and a cache hit gives the same cut."""
    from preflab.data.cache import tokenize_cached
    from preflab.data.tokenize import tokenize_unpaired

    tokenizer = load_tokenizer("builtin:tiny-llama")
    rows = [{"prompt": "p", "chosen": w, "rejected": "z " + w} for w in CUT_WORDS]
    for r in rows:
        for side in ("chosen", "rejected"):
            n = len(tokenizer(r[side], add_special_tokens=False).input_ids) + 1
            r[f"{side}_weight"] = [float(i) for i in range(n)]
    _, summary = _train(tmp_path, "dpo", rows, loss="sigmoid")
    assert summary["data"]["train_tokenize"]["response_truncated"] == 4
    examples, _ = load_rows(_write(tmp_path, rows[:2]), kind="pairwise")
    for attempt in range(2):
        pairs, report = tokenize_cached(examples, tokenizer, cache_dir=tmp_path / "cache", max_length=None,
                                        max_completion_length=5, token_extras=True)
        assert report.from_cache == (attempt == 1) and report.response_truncated == 2
        assert [p.extras["chosen_weight"] for p in pairs] == [[0.0, 1.0, 2.0, 3.0, 4.0]] * 2
        assert [p.extras["rejected_weight"] for p in pairs] == [[0.0, 1.0, 2.0, 3.0, 4.0]] * 2
    batch = collate_pairs(pairs, pad_id=0)
    assert batch.extras["chosen_weight"][batch.response_mask[:2]].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] * 2
    n = len(tokenizer(CUT_WORDS[0], add_special_tokens=False).input_ids) + 1
    unpaired, _ = load_rows(_write(tmp_path, [{"prompt": "p", "completion": CUT_WORDS[0], "label": True,
                                               "completion_weight": [float(i) for i in range(n)]}]), kind="unpaired")
    items, _ = tokenize_unpaired(unpaired, tokenizer, max_length=6, truncation_mode="keep_end", token_extras=True)
    kept = len(items[0].completion_ids)
    assert items[0].extras["completion_weight"] == [float(i) for i in range(n - kept, n)] and kept < n


def test_a_per_token_column_of_ints_and_floats_keeps_its_fractions():
    """A weight column written as 1, 0.5, 2 (JSON keeps 1 and 2 as ints) is a float column: cast to long, 0.5
    became 0. Any float in the column makes it float32; ids alone stay long."""
    pairs = [pair(0, [7, 8, 9], [7, 6], chosen_w=[1, 0.5, 2], rejected_w=[0, 1], chosen_phrase_ids=[0, 1, 1],
                  rejected_phrase_ids=[2, 2]),
             pair(1, [8], [6], chosen_w=[3], rejected_w=[1], chosen_phrase_ids=[4], rejected_phrase_ids=[5])]
    batch = collate_pairs(pairs, pad_id=0)
    mask, weights = batch.response_mask, batch.extras["chosen_w"]
    assert weights.dtype == torch.float32 and batch.extras["chosen_phrase_ids"].dtype == torch.long
    assert weights[0][mask[0]].tolist() == [1.0, 0.5, 2.0] and weights[1][mask[1]].tolist() == [3.0]
    assert batch.extras["rejected_w"][0][mask[2]].tolist() == [0.0, 1.0]
