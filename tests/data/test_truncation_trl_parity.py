"""truncation_mode as TRL 1.16: the same rows tokenized by TRL's DPOTrainer._prepare_dataset (called with a stand-in
`self`, its drop of keep_start rows whose prompt fills max_length included) and cut by its DataCollatorForPreference
give the same sequences and the same scored tokens as preflab's tokenize_pairs, for keep_start and keep_end and
several max_length values. TRL 1.16 has no max_prompt_length / max_completion_length: with them, preflab's result is
TRL's cut applied to preflab's prompt / response after those options."""
import types

import pytest

from preflab.data.examples import PairExample
from preflab.data.layout import pair_sequences
from preflab.data.rows import load_rows
from preflab.data.tokenize import is_intra_row, tokenize_pairs
from preflab.loops.batches import sequence_tokens
from preflab.models.tiny import tiny_tokenizer

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

CHAR = tiny_tokenizer("char")
BYTE = tiny_tokenizer("bytelevel")
user = lambda t: {"role": "user", "content": t}  # noqa: E731
bot = lambda t: {"role": "assistant", "content": t}  # noqa: E731
TEXT_ROWS = [  # long prompt; long chosen vs short rejected; a response longer than the small max_lengths; short row
    {"prompt": "The quick brown fox jumps over the lazy dog and", "chosen": " runs far away.", "rejected": " sits."},
    {"prompt": "Q: sky?", "chosen": " It is blue on a clear day, grey when it rains, red at dusk.",
     "rejected": " Green."},
    {"prompt": "Hi", "chosen": " a long long long long long long answer here", "rejected": " no"},
    {"prompt": "Tell", "chosen": " yes", "rejected": " no!"},
]
CHAT_ROWS = [
    {"prompt": [user("Which colour is the sky on a clear day?")], "chosen": [bot("Blue, mostly.")],
     "rejected": [bot("Green.")]},
    {"prompt": [user("Hi")], "chosen": [bot("Hello there, how can I help you today?")], "rejected": [bot("Go.")]},
]


def _trl_sequences(rows, tok, max_length, mode):
    """{row index: [(ids, scored positions) of chosen, of rejected]} as TRL 1.16 trains them: its dataset rows, then
    its collator's cut; a position j is scored when completion_mask[j] is 1 and j >= 1 (labels are input_ids[1:])."""
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    data = datasets.Dataset.from_list([{**r, "index": i} for i, r in enumerate(rows)])
    args = DPOConfig(output_dir="unused", report_to=[], max_length=max_length, truncation_mode=mode, bf16=False,
                     use_cpu=True)
    me = types.SimpleNamespace(_tokenizer=tok)
    prepared = list(DPOTrainer._prepare_dataset(me, data, tok, args, "train"))
    collate = DataCollatorForPreference(pad_token_id=tok.pad_token_id, max_length=max_length, truncation_mode=mode)
    out = {}
    for row in prepared:
        batch = collate([{k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}])
        sides = []
        for i in range(2):
            keep = batch["attention_mask"][i].bool()
            ids = batch["input_ids"][i][keep].tolist()
            mask = batch["completion_mask"][i][keep].tolist()
            sides.append((ids, [j for j in range(1, len(ids)) if mask[j]]))
        out[row["index"]] = sides
    return out


def _preflab_sequences(rows, tok, **settings):
    """The same, from preflab's pairs: each (prompt, response) sequence the layouts score, the response scored."""
    examples, _ = load_rows(datasets.Dataset.from_list(rows), kind="pairwise")
    pairs, report = tokenize_pairs(examples, tok, on_bad_row="skip", **settings)
    seqs = pair_sequences(pairs)
    b = len(pairs)
    out = {}
    for k, pair in enumerate(pairs):
        sides = [seqs[k], seqs[b + k]]
        out[pair.row_id] = [(p + r, list(range(len(p), len(p) + len(r)))) for p, r in sides]
        assert not is_intra_row(pair)  # a keep_end cut apart is not a MAPL intra row (rc_dpo's weights)
    return out, report, pairs


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_truncation_gives_trls_token_ids_for_keep_start_and_keep_end(mode):
    for tok, rows in ((CHAR, TEXT_ROWS), (BYTE, TEXT_ROWS), (BYTE, CHAT_ROWS)):
        full, _, _ = _preflab_sequences(rows, tok, max_length=None)
        longest = max(len(ids) for sides in full.values() for ids, _ in sides)
        for max_length in (4, 9, 16, 24, 40, longest - 1, longest, None):
            theirs = _trl_sequences(rows, tok, max_length, mode)
            same = {i for i, (chosen, rejected) in theirs.items() if chosen == rejected}  # TRL trains them (no
            theirs = {i: sides for i, sides in theirs.items() if i not in same}  # gradient); preflab counts them bad
            ours, report, pairs = _preflab_sequences(rows, tok, max_length=max_length, truncation_mode=mode)
            assert ours == theirs, (mode, max_length, tok.name_or_path)
            assert report.skipped.get("identical_after_tokenization", 0) == len(same)
            cut = any(ours[i] != full[i] for i in ours)  # counted when a kept row was cut
            assert (report.response_truncated + report.prompt_truncated > 0) == cut
            if mode == "keep_start":  # TRL drops these rows unsaid; preflab counts them
                assert report.skipped.get("prompt_fills_max_length", 0) == len(rows) - len(theirs) - len(same)
    # keep_end cuts each sequence's start: a long chosen and a short rejected keep different ends of the prompt
    _, _, (pair, *_) = _preflab_sequences(TEXT_ROWS[:1], CHAR, max_length=60, truncation_mode=mode)
    theirs = _trl_sequences(TEXT_ROWS[:1], CHAR, 60, mode)[0]
    assert sequence_tokens([pair]) == sum(len(ids) for ids, _ in theirs)  # num_tokens: TRL's attention-mask sum
    if mode == "keep_end":
        assert pair.cut_apart and len(pair.rejected_prompt_ids) > len(pair.prompt_ids)
        assert pair.rejected_prompt_ids[-len(pair.prompt_ids):] == pair.prompt_ids
    else:
        assert pair.rejected_prompt_ids is None


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_prompt_and_completion_limits_then_trls_cut(mode):
    """max_prompt_length / max_completion_length (TRL 0.x, not in TRL 1.16) act first; max_length then cuts each
    sequence exactly as TRL's collator cuts those ids."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    examples, _ = load_rows(datasets.Dataset.from_list(TEXT_ROWS), kind="pairwise")
    for limits in ({"max_prompt_length": 12}, {"max_completion_length": 10},
                   {"max_prompt_length": 6, "max_completion_length": 20}):
        before, _ = tokenize_pairs(examples, CHAR, max_length=None, truncation_mode=mode, **limits)
        for max_length in (9, 16, 30):
            collate = DataCollatorForPreference(pad_token_id=CHAR.pad_token_id, max_length=max_length,
                                                truncation_mode=mode)
            ours, _, _ = _preflab_sequences(TEXT_ROWS, CHAR, max_length=max_length, truncation_mode=mode, **limits)
            for pair in before:
                if mode == "keep_start" and len(pair.prompt_ids) >= max_length:
                    assert pair.row_id not in ours  # a bad row, as TRL's filter drops it
                    continue
                batch = collate([{"prompt_ids": pair.prompt_ids, "chosen_ids": pair.chosen_ids,
                                  "rejected_ids": pair.rejected_ids}])
                if batch["input_ids"][0].tolist() == batch["input_ids"][1].tolist():
                    assert pair.row_id not in ours  # identical_after_tokenization (TRL trains it, no gradient)
                    continue
                for i, (ids, scored) in enumerate(ours[pair.row_id]):
                    keep = batch["attention_mask"][i].bool()
                    assert ids == batch["input_ids"][i][keep].tolist(), (limits, max_length)
                    mask = batch["completion_mask"][i][keep].tolist()
                    assert scored == [j for j in range(1, len(ids)) if mask[j]], (limits, max_length)
    # the prompt limit keeps the prompt's start under keep_start, its end (bos kept) otherwise
    (short, *_), _ = tokenize_pairs(examples[:1], CHAR, max_length=None, max_prompt_length=6, truncation_mode=mode)
    assert CHAR.decode(short.prompt_ids) == ("<s>The q" if mode == "keep_start" else "<s>g and")


def test_truncation_mode_unset_keeps_sequence_start_and_prompt_end():
    """Unset (the default): sequences keep their start (TRL 1.16's default keep_start), a prompt longer than
    max_prompt_length keeps its end (what the default did before)."""
    ex = [PairExample(0, "0123456789" * 3, " abcdefghij", " xyz", {})]
    (unset,), _ = tokenize_pairs(ex, CHAR, max_length=16, max_prompt_length=8)
    (start,), _ = tokenize_pairs(ex, CHAR, max_length=16, max_prompt_length=8, truncation_mode="keep_start")
    (end,), _ = tokenize_pairs(ex, CHAR, max_length=16, max_prompt_length=8, truncation_mode="keep_end")
    assert CHAR.decode(unset.prompt_ids) == "<s>3456789" and CHAR.decode(unset.chosen_ids) == " abcdefg"
    assert CHAR.decode(start.prompt_ids) == "<s>0123456" and CHAR.decode(start.chosen_ids) == " abcdefg"
    assert CHAR.decode(end.prompt_ids) == "6789" and CHAR.decode(end.chosen_ids) == " abcdefghij</s>"
    assert CHAR.decode(end.rejected_prompt_ids) == "<s>3456789" and end.cut_apart  # 8 + 5 fits 16


def test_keep_end_pairs_cut_apart_score_alike_in_every_layout():
    """A pair whose chosen and rejected sequences kept different ends of the prompt (keep_end) is scored, in each
    layout, as one plain forward of each TRL sequence: the sum of log p over its scored tokens."""
    import torch

    from preflab.loops.batches import INTRA_ROW, collate_pairs
    from preflab.models.tiny import tiny_causal_lm
    from preflab.scoring.lm import LogProbScorer

    torch.manual_seed(0)
    model = tiny_causal_lm(CHAR)
    examples, _ = load_rows(datasets.Dataset.from_list(TEXT_ROWS), kind="pairwise")
    pairs, _ = tokenize_pairs(examples, CHAR, max_length=30, truncation_mode="keep_end", on_bad_row="skip")
    assert sum(p.cut_apart for p in pairs) >= 2
    trl_seqs = _trl_sequences(TEXT_ROWS, CHAR, 30, "keep_end")
    want = []
    with torch.no_grad():
        for side in range(2):
            for p in pairs:
                ids, scored = trl_seqs[p.row_id][side]
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
                want.append(sum(logp[j - 1, ids[j]] for j in scored))
        for layout in ("padded", "prefix_shared", "packed", "prefix_packed"):
            batch = collate_pairs(pairs, CHAR.pad_token_id, layout)
            assert INTRA_ROW not in batch.extras  # not MAPL intra rows: rc_dpo gives them no intra_weight
            scores = LogProbScorer(model)(batch)
            got = scores.token_logps.sum(-1)
            torch.testing.assert_close(got, torch.stack(want), rtol=0, atol=2e-5, msg=layout)


def test_keep_end_is_refused_where_one_prompt_serves_every_cut():
    """task: vlm (TRL 1.16 refuses it too: the image tokens are in the prompt) and listwise rows (k completions
    share one prompt) cannot hold per-sequence prompt cuts: refused with the reason, never cut otherwise."""
    from types import SimpleNamespace

    from preflab.config import config_from_dict
    from preflab.errors import ConfigError
    from preflab.loops.listwise import _tokenize_lists

    base = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl", "task": "vlm"}
    with pytest.raises(ConfigError, match="keep_end with max_length=1024 is not supported for task: vlm"):
        config_from_dict({**base, "truncation_mode": "keep_end"})
    config_from_dict({**base, "truncation_mode": "keep_start"})
    config_from_dict({**base, "truncation_mode": "keep_end", "max_length": None})
    cfg = SimpleNamespace(truncation_mode="keep_end", max_length=64, max_prompt_length=None, on_bad_row="error",
                          max_completion_length=None)
    with pytest.raises(ConfigError, match="the k completions of a listwise row share one prompt"):
        _tokenize_lists(cfg, CHAR, [], "rows.jsonl")


def test_cut_apart_mark_survives_the_cache_and_leaves_the_data_fingerprint_of_earlier_versions():
    """The keep_end mark is no dataclass field: a new field changed the fingerprint of every pair, so the checkpoints
    of earlier versions were refused at resume ("the training examples differ"). The hash is the one the version
    before this change gives for these two pairs. A cut-apart pair read back from the tokenization cache keeps its
    mark (a MAPL intra row's own prompt stays intra)."""
    from preflab.data.cache import tokenize_cached
    from preflab.data.fingerprint import training_data_fingerprint
    from preflab.data.tokenize import TokenizedPair

    pairs = [TokenizedPair(0, [1, 2], [3], [4], {"margin": 1.0}), TokenizedPair(1, [5], [6], [7], {}, [8, 9])]
    assert training_data_fingerprint(pairs) == (
        "sha256:2db27e2a9895a4953d9a89347783247e3061027eb7360cfebdda183cf2029dff")
    examples, _ = load_rows(datasets.Dataset.from_list(TEXT_ROWS), kind="pairwise")
    fresh, _ = tokenize_pairs(examples, CHAR, max_length=30, truncation_mode="keep_end")
    assert [p.cut_apart for p in fresh] == [p.rejected_prompt_ids is not None for p in fresh] and any(
        p.cut_apart for p in fresh)
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        for _ in range(2):  # a miss, then a hit
            items, report = tokenize_cached(examples, CHAR, cache_dir=cache, max_length=30, truncation_mode="keep_end")
            assert items == fresh and [p.cut_apart for p in items] == [p.cut_apart for p in fresh]
        assert report.from_cache


def test_checkpoint_of_the_old_keep_end_default_resumes_with_truncation_mode_unset():
    """preflab before this change wrote its default truncation_mode: keep_end into each checkpoint's config; that
    keep_end cut sequences as an unset truncation_mode does now, so resuming such a checkpoint with the option unset
    is no config change that refuses the resume (a note says it; the data fingerprint still compares the tokens).
    keep_start -> unset still changes the meaning."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError
    from preflab.resume_check import check_resume_config

    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl"})
    notes = []
    check_resume_config({**cfg.to_dict(), "truncation_mode": "keep_end"}, cfg, "checkpoint-4", note=notes.append)
    assert len(notes) == 1 and "truncation_mode ('keep_end' -> None)" in notes[0]
    with pytest.raises(ConfigError, match="truncation_mode"):
        check_resume_config({**cfg.to_dict(), "truncation_mode": "keep_start"}, cfg, "checkpoint-4", note=print)
