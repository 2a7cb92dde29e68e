"""KTO's mismatched (KL) sequences cut to max_length as TRL 1.16 cuts them: the same rows tokenized by TRL's
KTOTrainer._prepare_dataset (called with a stand-in `self`: its drop of rows whose prompt fills max_length and its
KL_completion_ids rotation inside chunks of per_device_train_batch_size included) and cut by its
DataCollatorForUnpairedPreference give the same completion and KL sequences, and the same scored tokens, as
preflab's unpaired batches, with the pairing fixed per example (precompute_ref_log_probs, eval) and formed inside
each micro-batch (the default). TRL's KL completion is the other example's completion before any cut: an example
with a short prompt pairs with more of it than that example kept itself."""
import types

import pytest

from preflab.data.mismatched import fix_mismatched, trl_unpaired_order
from preflab.data.rows import load_rows
from preflab.data.tokenize import kl_sequence, tokenize_unpaired
from preflab.loops.kinds import UnpairedKind
from preflab.models.tiny import tiny_tokenizer

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

CHAR = tiny_tokenizer("char")
BYTE = tiny_tokenizer("bytelevel")
CHUNK = 2  # per_device_train_batch_size: TRL rotates KL completions inside chunks of it
ROWS = [  # long and short prompts next to long and short completions, so the KL sequences cut differently
    {"prompt": "The quick brown fox jumps over the lazy dog and", "completion": " sits.", "label": True},
    {"prompt": "Hi", "completion": " a long long long long long long answer here", "label": False},
    {"prompt": "Q: sky?", "completion": " It is blue on a clear day, grey when it rains.", "label": True},
    {"prompt": "Tell me about the weather over there", "completion": " no!", "label": False},
    {"prompt": "Go", "completion": " yes, and then some more words follow", "label": True},
    {"prompt": "Why", "completion": " because", "label": False},
]


def _trl_sequences(rows, tok, max_length):
    """{row index: [(ids, scored positions) of its completion sequence, of its KL sequence]} as TRL 1.16's
    KTOTrainer trains them (positions j >= 1 with completion_mask[j] = 1: labels are input_ids[1:])."""
    from trl import KTOConfig, KTOTrainer
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    data = datasets.Dataset.from_list([{**r, "index": i} for i, r in enumerate(rows)])
    args = KTOConfig(output_dir="unused", report_to=[], max_length=max_length, bf16=False, use_cpu=True,
                     per_device_train_batch_size=CHUNK)
    me = types.SimpleNamespace(_tokenizer=tok, calculate_KL=True, desirable_weight=1.0, undesirable_weight=1.0)
    prepared = list(KTOTrainer._prepare_dataset(me, data, tok, args, "train"))
    collate = DataCollatorForUnpairedPreference(pad_token_id=tok.pad_token_id, max_length=max_length)
    out = {}
    for row in prepared:
        batch = collate([{k: row[k] for k in ("prompt_ids", "completion_ids", "KL_completion_ids", "label")}])
        sides = []
        for prefix in ("", "KL_"):
            ids = batch[f"{prefix}input_ids"][0][batch[f"{prefix}attention_mask"][0].bool()].tolist()
            mask = batch[f"{prefix}completion_mask"][0].tolist()
            sides.append((ids, [j for j in range(1, len(ids)) if mask[j]]))
        out[row["index"]] = sides
    return out


def _as_trl(prompt, completion):
    return prompt + completion, list(range(len(prompt), len(prompt) + len(completion)))


def _preflab_sequences(rows, tok, max_length, fixed: bool):
    """The same from preflab: the items' own sequences and their KL sequences, the pairing fixed per example in
    TRL's chunks (fix_mismatched) or formed by the default collate on micro-batches of CHUNK examples."""
    examples, _ = load_rows(datasets.Dataset.from_list(rows), kind="unpaired")
    items, report = tokenize_unpaired(examples, tok, max_length=max_length, on_bad_row="skip")
    out = {}
    for start in range(0, len(items), CHUNK):  # TRL's chunks are over the rows it kept, as preflab's batches
        batch = items[start:start + CHUNK]
        if fixed:
            batch = fix_mismatched(batch, CHUNK, trl_unpaired_order(batch))
        layout = UnpairedKind.collate(batch, tok.pad_token_id, "padded")
        n = len(batch)
        for k, (x, m) in enumerate(zip(batch, UnpairedKind.mismatched(batch))):
            kl = kl_sequence(x, m)
            for row, (p, c) in ((k, (x.prompt_ids, x.completion_ids)), (n + k, kl)):  # the layout scores them
                width = len(p) + len(c)
                assert layout.input_ids[row, :width].tolist() == p + c
                assert int(layout.attention_mask[row].sum()) == width
            out[x.row_id] = [_as_trl(x.prompt_ids, x.completion_ids), _as_trl(*kl)]
    return out, report, items


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed_pairing", "micro_batch_pairing"])
def test_kto_kl_sequences_are_cut_as_trls(fixed):
    for tok in (CHAR, BYTE):
        full, _, _ = _preflab_sequences(ROWS, tok, None, fixed)
        longest = max(len(ids) for sides in full.values() for ids, _ in sides)
        for max_length in (8, 12, 20, 30, longest - 1, longest, None):
            theirs = _trl_sequences(ROWS, tok, max_length)
            ours, report, items = _preflab_sequences(ROWS, tok, max_length, fixed)
            assert ours == theirs, (max_length, tok.name_or_path)
            assert report.skipped.get("prompt_fills_max_length", 0) == len(ROWS) - len(theirs)
            if max_length is not None:
                assert all(len(ids) <= max_length for sides in ours.values() for ids, _ in sides)
    # the cases that differed before: preflab paired each prompt with the other example's completion as that
    # example kept it, uncut by this prompt's room (longer than max_length, or shorter than TRL's)
    _, _, items = _preflab_sequences(ROWS, CHAR, 20, fixed)
    old = [_as_trl(x.prompt_ids, y.completion_ids) for x, y in zip(items, items[1:2] + items[:1])]
    new = [_as_trl(*kl_sequence(x, m)) for x, m in zip(items[:2], UnpairedKind.mismatched(items[:2]))]
    assert len(old[1][0]) > 20 and len(new[0][0]) > len(old[0][0])  # too long; shorter than TRL's
    assert new == [_trl_sequences(ROWS, CHAR, 20)[x.row_id][1] for x in items[:2]]

def test_kto_kl_cut_survives_the_cache_and_keys_the_reference_cache(tmp_path):
    """The tokenization cache gives back each unpaired item's KLCut (a hit equals a fresh call, KL sequences
    included); the reference cache's key of unpaired examples changes with max_length's cut of the KL sequences."""
    from preflab.data.cache import tokenize_cached
    from preflab.data.mismatched import unpaired_fingerprint

    examples, _ = load_rows(datasets.Dataset.from_list(ROWS), kind="unpaired")
    fresh, _ = tokenize_unpaired(examples, CHAR, max_length=20, on_bad_row="skip")
    for _ in range(2):  # a miss, then a hit
        items, report = tokenize_cached(examples, CHAR, cache_dir=tmp_path, max_length=20, on_bad_row="skip")
        assert items == fresh and [x.kl_cut for x in items] == [x.kl_cut for x in fresh]
    assert report.from_cache
    assert any(x.kl_cut.completion_ids != x.completion_ids for x in items)
    cut = [x for x in fresh if x.row_id == 5]  # a short prompt and completion: 20 cuts neither
    longer, _ = tokenize_unpaired([e for e in examples if e.row_id == 5], CHAR, max_length=60)
    assert [(x.prompt_ids, x.completion_ids) for x in cut] == [(x.prompt_ids, x.completion_ids) for x in longer]
    assert unpaired_fingerprint(cut) != unpaired_fingerprint(longer)


def test_kto_kl_sequences_keep_their_end_under_keep_end():
    """truncation_mode: keep_end (preflab's; TRL's KTOTrainer has no truncation_mode) cuts a KL sequence as it cuts
    an example's own: (prompt + the other's completion, both uncut)[-max_length:], the completion's tokens scored."""
    from preflab.data.tokenize import uncut_completion

    examples, _ = load_rows(datasets.Dataset.from_list(ROWS), kind="unpaired")
    full, _ = tokenize_unpaired(examples, CHAR, max_length=None)
    for max_length in (8, 20, 30):
        items, _ = tokenize_unpaired(examples, CHAR, max_length=max_length, truncation_mode="keep_end")
        for x, y, fx, fy in zip(items, items[1:] + items[:1], full, full[1:] + full[:1]):
            prompt, completion = kl_sequence(x, uncut_completion(y))
            assert prompt + completion == (fx.prompt_ids + fy.completion_ids)[-max_length:]
            assert completion == fy.completion_ids[-len(completion):] and 0 < len(completion)
            assert len(completion) == min(len(fy.completion_ids), max_length - 1)
