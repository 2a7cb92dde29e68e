"""RRPO's phrase ids derived from a text row's chosen / rejected texts when the row gives neither column
(data.phrases.derived_phrase_columns, called by data.tokenize._make_pair): aligned with the very response tokens
preflab trains (eos appended), cut and checked like given columns; conversational rows and one column alone refused."""
import json
from pathlib import Path

import pytest
from tokenizers import pre_tokenizers

from preflab.cli import main
from preflab.data.rows import load_rows
from preflab.data.tokenize import tokenize_pairs
from preflab.errors import DataError
from preflab.models.load import load_tokenizer
from preflab.models.tiny import tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]
PHRASES = {"chosen_phrase_ids": (None, None), "rejected_phrase_ids": (None, None)}  # what RRPO's rows require


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("builtin:tiny-llama")


def _pairs(rows, tok, on_bad_row="error", **settings):
    examples, _ = load_rows(rows, kind="pairwise", required_extras=PHRASES, on_bad_row=on_bad_row)
    return tokenize_pairs(examples, tok, token_extras=True, phrase_ids=True, on_bad_row=on_bad_row,
                          **{"max_length": None, **settings})


def test_derived_ids_equal_hand_written_ids_on_the_tiny_tokenizer(tok):
    """Tokens (tiny-llama): 'I', 'Ġ', 'l', 'i', 'k', 'e', 'Ġthe', 'Ġ', 'c', 'at', '.' + eos against 'I', 'Ġ', 'l',
    'i', 'k', 'e', 'Ġa', 'Ġb', 'ig', 'Ġdo', 'g', '.' + eos: 'the cat' / 'a big dog' is phrase 1 (the space token
    between 'the' and 'cat' lies inside it: 1; the space after 'I' is shared: 0), eos 0. Second pair: 'two' / '2'
    is phrase 1, the inserted 'four' phrase 2 on the rejected side only."""
    rows = [{"prompt": "Q:\n", "chosen": "I like the cat.", "rejected": "I like a big dog."},
            {"prompt": "Q:\n", "chosen": "one two three", "rejected": "one 2 three four"}]
    pairs, _ = _pairs(rows, tok)
    assert pairs[0].extras["chosen_phrase_ids"] == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert pairs[0].extras["rejected_phrase_ids"] == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    assert pairs[1].extras["chosen_phrase_ids"] == [0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert pairs[1].extras["rejected_phrase_ids"] == [0, 0, 0, 0, 1, 0, 0, 0, 2, 2, 2, 2, 0]
    eos_written, _ = _pairs([dict(rows[1], chosen="one two three</s>")], tok)  # an eos at the end: shared, 0
    assert eos_written[0].chosen_ids == pairs[1].chosen_ids and eos_written[0].extras == pairs[1].extras
    for p in pairs:  # one id per trained response token, eos included
        assert len(p.extras["chosen_phrase_ids"]) == len(p.chosen_ids) and p.chosen_ids[-1] == tok.eos_token_id
        assert len(p.extras["rejected_phrase_ids"]) == len(p.rejected_ids)


CUT_ROWS = [{"prompt": "p", "chosen": w, "rejected": "x " + w + " y"}
            for w in ["one two three four five", "the cat sat on a mat", "red green blue and gold",
                      "up down left right"]]


def _explicit(rows, tok):
    """The rows with the derived (uncut) ids written as columns."""
    pairs, _ = _pairs(rows, tok)
    return [dict(r, chosen_phrase_ids=p.extras["chosen_phrase_ids"], rejected_phrase_ids=p.extras[
        "rejected_phrase_ids"]) for r, p in zip(rows, pairs)]


@pytest.mark.parametrize("settings", [{"max_length": 10}, {"max_length": 10, "truncation_mode": "keep_end"},
                                      {"max_completion_length": 5}])
def test_truncation_cuts_derived_ids_as_it_cuts_given_ids(tok, settings):
    """max_length / max_completion_length cut the derived ids to the kept tokens exactly as the same ids given as
    columns; the rejected response's differing 'x' (start) and 'y' (end) make keep_start and keep_end keep
    different ids."""
    full = _explicit(CUT_ROWS, tok)
    derived, d_report = _pairs(CUT_ROWS, tok, **settings)
    given, g_report = _pairs(full, tok, **settings)
    assert d_report.response_truncated == g_report.response_truncated == 4
    for d, g, f in zip(derived, given, full, strict=True):
        assert d.extras == g.extras and d.chosen_ids == g.chosen_ids and d.rejected_ids == g.rejected_ids
        assert len(d.extras["rejected_phrase_ids"]) == len(d.rejected_ids) < len(f["rejected_phrase_ids"])
        kept = len(d.rejected_ids)
        start = len(f["rejected_phrase_ids"]) - kept if settings.get("truncation_mode") == "keep_end" else 0
        assert d.extras["rejected_phrase_ids"] == f["rejected_phrase_ids"][start:start + kept]


@pytest.mark.parametrize("settings", [{"max_length": 10, "truncation_mode": "keep_end"}, {"max_length": None}])
def test_a_cached_tokenization_keeps_the_derived_ids(tok, tmp_path, settings):
    """The tokenize cache rebuilds an item from its example's extras, which lack derived ids: they are stored with
    the item, so a second run reads the same (cut) ids as the first, not a pair without phrase ids."""
    from preflab.data.cache import tokenize_cached

    examples, _ = load_rows(CUT_ROWS, kind="pairwise", required_extras=PHRASES)
    first, report = tokenize_cached(examples, tok, cache_dir=tmp_path, token_extras=True, phrase_ids=True,
                                    **settings)
    again, cached = tokenize_cached(examples, tok, cache_dir=tmp_path, token_extras=True, phrase_ids=True,
                                    **settings)
    assert not report.from_cache and cached.from_cache
    assert [p.extras for p in again] == [p.extras for p in first]
    assert all(len(p.extras["chosen_phrase_ids"]) == len(p.chosen_ids) for p in again)


def test_a_pair_whose_derived_phrases_are_all_cut_away_is_the_same_bad_row(tok):
    """Responses whose only differing word is the last (and a double space, a token of its own, shared text: 0):
    max_length keeps their start, different tokens whose derived ids are all 0, the bad row `no_differing_phrase`,
    as with the ids given; a pair differing only in spacing derives no phrase at all."""
    rows = [{"prompt": "p", "chosen": "one two three four five six", "rejected": "one  two three four five sixty"},
            CUT_ROWS[1], {"prompt": "p", "chosen": "a  b", "rejected": "a b"}]
    derived, d_report = _pairs(rows, tok, on_bad_row="skip", max_length=8)
    given, g_report = _pairs(_explicit(rows[:2], tok) + rows[2:], tok, on_bad_row="skip", max_length=8)
    assert d_report.skipped == g_report.skipped == {"no_differing_phrase": 2}
    assert [p.row_id for p in derived] == [p.row_id for p in given] == [1]
    with pytest.raises(DataError, match=r"row 1.*derived from the chosen and rejected texts are all 0"):
        _pairs(rows[1:], tok)


def test_one_phrase_column_alone_is_an_error_naming_row_and_field(tok):
    rows = [CUT_ROWS[0], dict(CUT_ROWS[1], chosen_phrase_ids=[0, 1])]
    with pytest.raises(DataError, match=r"row 1.*rejected_phrase_ids.*gives chosen_phrase_ids but not "
                                        r"rejected_phrase_ids"):
        _pairs(rows, tok)


def test_rows_whose_ids_cannot_be_aligned_are_refused_even_under_skip(tok):
    """A conversational row (chat-templated response) and a text response trained on other tokens than its own
    tokenization (after 'hi ', the continuation of data.boundary's "merged" split, no word-start marker) are
    refused, naming row and field, whatever on_bad_row says."""
    chat = [{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a b"}],
             "rejected": [{"role": "assistant", "content": "a c"}]}]
    with pytest.raises(DataError, match=r"row 0.*chosen_phrase_ids.*conversational"):
        _pairs(chat, tok, on_bad_row="skip")
    spaced = tiny_tokenizer("whitespace")  # SentencePiece-like: "there" alone encodes as "▁there"
    spaced.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    merged = [{"prompt": "hi ", "chosen": "there", "rejected": "you"}]
    pairs, report = tokenize_pairs(load_rows(merged, kind="pairwise")[0], spaced, max_length=None)
    own = spaced("there", add_special_tokens=False).input_ids + [spaced.eos_token_id]
    assert report.boundary_merged == 1 and pairs[0].chosen_ids != own  # trained as 'hi ' + 'there', not '▁there'
    with pytest.raises(DataError, match=r"row 0.*chosen_phrase_ids.*other tokens than its own tokenization"):
        _pairs(merged, spaced, on_bad_row="skip")


def _train(tmp_path, name, rows, *params):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / name
    code = main(["train", str(ROOT / "examples/quickstart.yaml"), "loss_type=rrpo", f"dataset_name={path}",
                 f"output_dir={out}", "max_steps=2", "per_device_train_batch_size=4", "eval_fraction=0",
                 "eval_steps=0", "save_steps=0", "logging_steps=1", "disable_tqdm=true", "learning_rate=1e-2",
                 "warmup_steps=0", "max_length=12", *params])
    assert code == 0
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_run_on_derived_ids_equals_the_run_on_the_same_ids_given_and_the_note_counts_them(tmp_path, tok, capsys):
    """Loss and margins step for step equal between rows without phrase columns (read at once or streamed) and the
    same rows with the derived ids written out (max_length=12 cuts them); a mixed file says how many rows got
    derived ids. Ids reversed give
    another loss (the comparison can fail)."""
    rows = CUT_ROWS + [{"prompt": "q", "chosen": "I like the cat.", "rejected": "I like a big dog."}] * 4
    full = _explicit(rows, tok)
    derived = _train(tmp_path, "derived", rows)
    assert capsys.readouterr().out.count("derived from the chosen and rejected texts for 8 of 8 training rows") == 1
    mixed = _train(tmp_path, "mixed", full[:5] + rows[5:])
    assert "for 3 of 8 training rows" in capsys.readouterr().out
    given = _train(tmp_path, "given", full)
    assert "derived from the chosen" not in capsys.readouterr().out
    for a, b, c in zip(derived, mixed, given, strict=True):
        for key in ("loss", "rewards/margins"):
            assert a[key] == pytest.approx(c[key], rel=1e-6, abs=1e-7) == b[key]
    streamed = [_train(tmp_path, f"streamed-{name}", data, "streaming=true") for name, data in (("derived", rows),
                                                                                               ("given", full))]
    for a, c in zip(*streamed, strict=True):  # rows read as the steps need them (in another order than above)
        assert a["loss"] == pytest.approx(c["loss"], rel=1e-6, abs=1e-7)
    wrong = _train(tmp_path, "wrong", [dict(r, rejected_phrase_ids=r["rejected_phrase_ids"][::-1]) for r in full])
    assert wrong[-1]["loss"] != pytest.approx(given[-1]["loss"], rel=1e-6, abs=1e-7)
