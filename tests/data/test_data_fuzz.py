"""Fuzz (issue "reliability"): random malformed rows and JSONL files never crash with an internal traceback.
Each bad row gives a DataError naming the file, the row and the field, or is skipped and counted."""
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preflab.data.rows import load_rows
from preflab.data.tokenize import tokenize_pairs, tokenize_prompts, tokenize_unpaired
from preflab.errors import DataError
from preflab.models.tiny import tiny_tokenizer

TOK = tiny_tokenizer("bytelevel")
MAX_ROW_BYTES = 8000
FIELDS = ["prompt", "chosen", "rejected", "completion", "label", "id"]

text = st.one_of(st.text(max_size=12), st.sampled_from(["", "  ", "\n", "same", "bad\ud800", "x" * 9000,
                                                        "a</s>b", "Answer: yes", "Answer: no"]))
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "robot", ""]),
                           "content": text}),
    st.fixed_dictionaries({}, optional={"role": st.one_of(st.none(), st.integers(), st.just("user")),
                                        "content": st.one_of(st.none(), st.integers(), text),
                                        "tool_calls": st.just([{"name": "f"}])}),
    st.integers(), text)
value = st.one_of(text, st.lists(message, max_size=4), st.none(), st.booleans(), st.integers(),
                  st.floats(allow_nan=False), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
USER, ASSISTANT = [{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "hello"}]
VALID = [{"prompt": "Q: hi", "chosen": " yes", "rejected": " no", "id": 1},
         {"prompt": USER, "chosen": ASSISTANT, "rejected": [{"role": "assistant", "content": "bye"}]},
         {"chosen": USER + ASSISTANT, "rejected": USER + [{"role": "assistant", "content": "bye"}]},
         {"chosen": "Answer: yes", "rejected": "Answer: no"},
         {"prompt": "Q: hi", "completion": " yes", "label": True}, {"prompt": USER}]


@st.composite
def near_valid(draw):
    """A valid row of some form with one field deleted, replaced by a random value, or left alone."""
    base = dict(draw(st.sampled_from(VALID)))
    key, how = draw(st.sampled_from(FIELDS)), draw(st.sampled_from(["keep", "delete", "replace"]))
    if how == "delete":
        base.pop(key, None)
    elif how == "replace":
        base[key] = draw(value)
    return base


row = st.one_of(near_valid(), st.dictionaries(st.sampled_from(FIELDS), value, max_size=6))
mutation = st.tuples(st.sampled_from(["none", "none", "truncate", "bad_utf8", "not_object", "blank", "bignum"]),
                     st.integers(0, 10**6))


def mutate(line: bytes, how: str, at: int) -> bytes:
    cut = at % (len(line) + 1)
    return {"none": line, "truncate": line[:cut], "bad_utf8": line[:cut] + b"\xff\xfe" + line[cut:],
            "not_object": b"[1, 2]", "blank": b"   ", "bignum": line[:-1] + b', "n": ' + b"9" * 5000 + b"}"}[how]


def check_error(err: DataError, path: str, n_rows: int) -> None:
    msg = str(err)
    assert msg.startswith(f"{path} row {err.row_id}"), msg
    assert 0 <= err.row_id < n_rows
    if err.field is not None:
        assert f"field {err.field!r}" in msg
    assert "on_bad_row: skip" in msg


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rows=st.lists(st.tuples(row, mutation), min_size=1, max_size=6),
       kind=st.sampled_from(["pairwise", "unpaired", "prompt"]))
def test_fuzz_jsonl_files_never_crash(rows, kind):
    lines = [mutate(json.dumps(r).encode(), how, at) for r, (how, at) in rows]
    n_rows = sum(1 for line in lines if line.strip())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        try:
            load_rows(path, kind=kind, max_row_bytes=MAX_ROW_BYTES)
        except DataError as err:
            check_error(err, str(path), n_rows)
        examples, report = load_rows(path, kind=kind, on_bad_row="skip", max_row_bytes=MAX_ROW_BYTES)
    assert report.total == n_rows and report.kept + sum(report.skipped.values()) == n_rows
    assert len({e.row_id for e in examples}) == report.kept
    tokenize = {"pairwise": tokenize_pairs, "unpaired": tokenize_unpaired, "prompt": tokenize_prompts}[kind]
    limits = {} if kind == "prompt" else {"max_length": 48}
    try:
        tokenize(examples, TOK, source=str(path), **limits)
    except DataError as err:
        assert str(err).startswith(f"{path} row {err.row_id}") and err.row_id in {e.row_id for e in examples}
    items, tok_report = tokenize(examples, TOK, on_bad_row="skip", source=str(path), **limits)
    assert tok_report.total == len(examples) and len(items) == tok_report.kept
    assert tok_report.kept + sum(tok_report.skipped.values()) == tok_report.total


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.one_of(row, st.integers(), st.text(max_size=3)), min_size=1, max_size=6),
       kind=st.sampled_from(["pairwise", "unpaired", "prompt"]))
def test_fuzz_in_memory_rows_never_crash(rows, kind):
    try:
        load_rows(rows, kind=kind)
    except DataError as err:
        check_error(err, "<rows>", len(rows))
    examples, report = load_rows(rows, kind=kind, on_bad_row="skip")
    assert report.total == len(rows) and report.kept + sum(report.skipped.values()) == len(rows)
    json.dumps(report.to_dict())
