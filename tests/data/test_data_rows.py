"""load_rows: every row kind and form, implicit prompts, column maps, and each bad-row case in both modes."""
import json
import re

import pytest

from preflab.data.examples import PairExample, PromptExample, UnpairedExample
from preflab.data.rows import load_rows
from preflab.errors import ConfigError, DataError
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


GOOD = {"prompt": "What is 2+2?", "chosen": " 4", "rejected": " 5"}


def test_standard_pairwise_keeps_extras_and_row_ids(tmp_path):
    rows = [dict(GOOD, id="a", margin=0.5), dict(GOOD, chosen=" four", weight=2.0)]
    examples, report = load_rows(write_jsonl(tmp_path / "train.jsonl", rows))
    assert examples == [PairExample(0, "What is 2+2?", " 4", " 5", {"id": "a", "margin": 0.5}),
                        PairExample(1, "What is 2+2?", " four", " 5", {"weight": 2.0})]
    assert (report.total, report.kept, report.skipped, report.forms) == (2, 2, {}, {"standard": 2})
    assert "train.jsonl" in report.summary() and "2 kept" in report.summary()
    json.dumps(report.to_dict())


def test_conversational_pairwise():
    row = {"prompt": msgs(("system", "Be brief."), ("user", "hi")), "chosen": msgs(("assistant", "hello")),
           "rejected": msgs(("assistant", "go away"))}
    (ex,), report = load_rows([row])
    assert ex.prompt == row["prompt"] and ex.chosen == row["chosen"] and ex.rejected == row["rejected"]
    assert report.forms == {"conversational": 1}


def test_conversational_tool_turns_and_none_keys_dropped():
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}
    chosen = [call, {"role": "tool", "content": "42"}, {"role": "assistant", "content": "It is 42.", "name": None}]
    row = {"prompt": msgs(("user", "hi")), "chosen": chosen, "rejected": msgs(("assistant", "no idea"))}
    (ex,), _ = load_rows([row])
    assert ex.chosen[2] == {"role": "assistant", "content": "It is 42."}  # None-valued keys (Arrow) dropped
    assert ex.chosen[0]["tool_calls"]


@pytest.mark.parametrize("chosen, rejected, prompt, c, r", [
    ("Human: hi\n\nAssistant: hello there", "Human: hi\n\nAssistant: go away", "Human: hi\n\nAssistant:",
     " hello there", " go away"),
    ("Answer: yes", "Answer: yes indeed", "Answer:", " yes", " yes indeed"),   # chosen is a prefix of rejected
    ("Q: 2+2=4", "Q: 2+2=5", "Q:", " 2+2=4", " 2+2=5"),                        # cut back to a word boundary
    ("a b  c", "a b  d", "a b ", " c", " d"),    # TRL's cut: one space moves to the responses (was "a b", "  c")
    ("Q?\nyes", "Q?\nno", "Q?\n", "yes", "no"),      # TRL's cut: the newline stays in the prompt (was "Q?", "\nyes")
    ("A: The sky", "A: They", "A:", " The sky", " They"),  # TRL cuts inside "They" ("A: The"): a word boundary
])
def test_implicit_prompt_text(chosen, rejected, prompt, c, r):
    (ex,), report = load_rows([{"chosen": chosen, "rejected": rejected}])
    assert (ex.prompt, ex.chosen, ex.rejected) == (prompt, c, r)
    assert ex.prompt + ex.chosen == chosen and ex.prompt + ex.rejected == rejected
    assert report.forms == {"standard_implicit": 1}


def test_implicit_prompt_conversational():
    shared = msgs(("system", "s"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"))
    row = {"chosen": shared + msgs(("assistant", "good")), "rejected": shared + msgs(("assistant", "bad"))}
    (ex,), report = load_rows([row])
    assert ex.prompt == shared and ex.chosen == msgs(("assistant", "good"))
    assert report.forms == {"conversational_implicit": 1}
    # chosen is the start of rejected: TRL's extract_prompt keeps every shared message but the last as the prompt,
    # and rejected's response holds a user turn (trained, as in TRL; form *_multiturn). Before, a bad row
    row = {"chosen": shared[:3], "rejected": shared + msgs(("assistant", "x"))}
    (ex,), report = load_rows([row])
    assert ex.prompt == shared[:2] and ex.chosen == shared[2:3] and ex.rejected == shared[2:] + msgs(("assistant", "x"))
    assert report.forms == {"conversational_implicit_multiturn": 1}


def test_implicit_prompt_without_boundary_is_a_bad_row():
    with pytest.raises(DataError, match="row 0, field 'prompt'.*Add a 'prompt' column"):
        load_rows([{"chosen": "yes", "rejected": "no"}])
    with pytest.raises(DataError, match="no_common_prompt|share"):
        load_rows([{"chosen": msgs(("user", "a"), ("assistant", "b")), "rejected": msgs(("user", "c"),
                                                                                      ("assistant", "d"))}])


def test_unpaired_kto_rows_and_pairwise_conversion():
    rows = [{"prompt": "p", "completion": " good", "label": True, "id": 1},
            {"prompt": "p", "completion": " bad", "label": "false"},
            {"prompt": "p", "chosen": " c", "rejected": " r", "margin": 1.0}]
    examples, report = load_rows(rows, kind="unpaired")
    assert examples == [UnpairedExample(0, "p", " good", True, {"id": 1}), UnpairedExample(1, "p", " bad", False, {}),
                        UnpairedExample(2, "p", " c", True, {"margin": 1.0}),
                        UnpairedExample(2, "p", " r", False, {"margin": 1.0})]
    assert (report.kept, report.examples) == (3, 4)
    assert report.forms == {"standard": 2, "pairwise_standard": 1}


def test_unpaired_conversational():
    row = {"prompt": msgs(("user", "hi")), "completion": msgs(("assistant", "hello")), "label": False}
    (ex,), _ = load_rows([row], kind="unpaired")
    assert ex.completion == msgs(("assistant", "hello")) and ex.label is False


def test_prompt_kind():
    rows = [{"prompt": "Tell me a joke.", "topic": "fun"}, {"prompt": msgs(("user", "hi"))},
            {"chosen": "Answer: yes", "rejected": "Answer: no", "id": 7}]
    examples, report = load_rows(rows, kind="prompt")
    assert examples == [PromptExample(0, "Tell me a joke.", {"topic": "fun"}),
                        PromptExample(1, msgs(("user", "hi")), {}), PromptExample(2, "Answer:", {"id": 7})]
    assert report.forms == {"standard": 1, "conversational": 1, "standard_implicit": 1}


def test_column_map_and_messages_name_the_users_column(tmp_path):
    rows = [{"question": "q", "good": " a", "bad": " b"}, {"question": "q", "good": "", "bad": " b"}]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    cmap = {"question": "prompt", "good": "chosen", "bad": "rejected"}
    with pytest.raises(DataError, match="mine.jsonl row 1 \\(line 2\\), field 'good': empty string"):
        load_rows(path, column_map=cmap)
    examples, report = load_rows(path, column_map=cmap, on_bad_row="skip")
    assert examples == [PairExample(0, "q", " a", " b", {})]
    assert report.skipped_examples[0]["field"] == "good"
    with pytest.raises(ConfigError, match="also has a 'prompt' column"):
        load_rows([{"question": "q", "prompt": "p", "good": "a", "bad": "b"}], column_map=cmap)


BAD_ROWS = [  # (row, kind, reason, field)
    ({"prompt": "p", "rejected": "r"}, "pairwise", "missing_field", "chosen"),
    ({"prompt": "p", "chosen": "c"}, "pairwise", "missing_field", "rejected"),
    ({"prompt": "p", "chosen": "", "rejected": "r"}, "pairwise", "empty_field", "chosen"),
    ({"prompt": "  \n", "chosen": "c", "rejected": "r"}, "pairwise", "empty_field", "prompt"),
    ({"prompt": 3, "chosen": "c", "rejected": "r"}, "pairwise", "wrong_type", "prompt"),
    ({"prompt": None, "chosen": "c", "rejected": "r"}, "pairwise", "missing_field", "prompt"),
    ({"prompt": "p", "chosen": {"text": "c"}, "rejected": "r"}, "pairwise", "wrong_type", "chosen"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "pairwise", "identical", "rejected"),
    ({"prompt": "p", "chosen": "c\ud800", "rejected": "r"}, "pairwise", "invalid_unicode", "chosen"),
    ({"prompt": "p", "chosen": msgs(("assistant", "c")), "rejected": "r"}, "pairwise", "mixed_forms", "rejected"),
    # a number beside message lists is the number's wrong type, not "rejected is a list but chosen is text"
    ({"prompt": msgs(("user", "hi")), "chosen": 123, "rejected": msgs(("assistant", "r"))},
     "pairwise", "wrong_type", "chosen"),
    ({"prompt": msgs(("robot", "hi")), "chosen": msgs(("assistant", "c")), "rejected": msgs(("assistant", "r"))},
     "pairwise", "invalid_message", "prompt[0].role"),
    ({"prompt": [{"content": "hi"}], "chosen": msgs(("assistant", "c")), "rejected": msgs(("assistant", "r"))},
     "pairwise", "invalid_message", "prompt[0].role"),
    ({"prompt": ["hi"], "chosen": msgs(("assistant", "c")), "rejected": msgs(("assistant", "r"))},
     "pairwise", "invalid_message", "prompt[0]"),
    ({"prompt": msgs(("user", "hi")), "chosen": [{"role": "assistant", "content": 5}],
      "rejected": msgs(("assistant", "r"))}, "pairwise", "invalid_message", "chosen[0].content"),
    ({"prompt": msgs(("user", "hi")), "chosen": msgs(("assistant", "c"), ("bot", "c")),
      "rejected": msgs(("assistant", "r"))}, "pairwise", "invalid_message", "chosen[1].role"),
    ({"prompt": msgs(("user", "hi")), "chosen": msgs(("assistant", "c")), "rejected": msgs(("assistant", " "))},
     "pairwise", "empty_field", "rejected[0].content"),
    ({"prompt": msgs(("user", "hi")), "chosen": [], "rejected": msgs(("assistant", "r"))},
     "pairwise", "empty_field", "chosen"),
    ({"prompt": "p", "completion": "c", "label": "maybe"}, "unpaired", "invalid_label", "label"),
    ({"prompt": "p", "completion": "c"}, "unpaired", "missing_field", "label"),
    ({"completion": "c", "label": True}, "unpaired", "missing_field", "prompt"),
    ({"prompt": "p", "label": True}, "unpaired", "missing_field", "completion"),
    ({"text": "hello"}, "prompt", "missing_field", "prompt"),
    ({"prompt": ""}, "prompt", "empty_field", "prompt"),
]


@pytest.mark.parametrize("row, kind, reason, field", BAD_ROWS)
def test_bad_rows_error_and_skip(tmp_path, row, kind, reason, field):
    good = {"pairwise": GOOD, "unpaired": {"prompt": "p", "completion": "c", "label": True},
            "prompt": {"prompt": "p"}}[kind]
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_rows(path, kind=kind)
    msg = str(info.value)
    assert msg.startswith(f"{path} row 1 (line 2), field {field!r}: ") and "on_bad_row: skip" in msg
    assert (info.value.row_id, info.value.field, info.value.reason) == (1, field, reason)
    examples, report = load_rows(path, kind=kind, on_bad_row="skip")
    assert [e.row_id for e in examples] == [0]
    assert (report.total, report.kept, report.skipped) == (2, 1, {reason: 1})
    assert report.skipped_examples == [{"row_id": 1, "field": field, "reason": reason, "line": 2,
                                        "detail": report.skipped_examples[0]["detail"]}]


@pytest.mark.parametrize("line, reason", [
    (b'{"prompt": "p", "chosen": "c", "rej', "invalid_json"),   # truncated line
    (b'{"prompt": "p\xff\xfe", "chosen": "c", "rejected": "r"}', "invalid_utf8"),
    (b'[1, 2, 3]', "not_an_object"),
    (b'null', "not_an_object"),
    (b'{"prompt": "p", "chosen": "c", "rejected": "r", "n": ' + b"9" * 5000 + b'}', "invalid_json"),
    (b'{"prompt": "' + b"x" * 5000 + b'", "chosen": "c", "rejected": "r"}', "row_too_large"),
])
def test_unreadable_jsonl_lines(tmp_path, line, reason):
    path = tmp_path / "d.jsonl"
    good = json.dumps(GOOD).encode()
    path.write_bytes(good + b"\n\n" + line + b"\n" + good + b"\n")
    with pytest.raises(DataError, match=r"d.jsonl row 1 \(line 3\): ") as info:
        load_rows(path, max_row_bytes=6000 if b"9999" in line else 1000)
    assert info.value.reason == reason
    examples, report = load_rows(path, on_bad_row="skip", max_row_bytes=6000 if b"9999" in line else 1000)
    assert [e.row_id for e in examples] == [0, 2]
    assert (report.total, report.kept, report.skipped, report.blank_lines) == (3, 2, {reason: 1}, 1)


def test_skip_examples_capped_and_report_adds_up():
    rows = [{"prompt": "p", "chosen": "", "rejected": "r"}] * 25 + [GOOD] * 5 + [{"prompt": "p"}] * 3
    examples, report = load_rows(rows, on_bad_row="skip")
    assert (report.total, report.kept, report.skipped) == (33, 5, {"empty_field": 25, "missing_field": 3})
    assert len(report.skipped_examples) == 20
    assert report.summary().startswith("<rows> (pairwise): 33 rows, 5 kept, 28 skipped (empty_field: 25, "
                                       "missing_field: 3)")


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="Did you mean 'pairwise'"):
        load_rows([GOOD], kind="pairwse")
    with pytest.raises(ConfigError, match="on_bad_row"):
        load_rows([GOOD], on_bad_row="drop")


# ---------------------------------------------------------------- an objective's per-row extras (#18.14)


def _sem_rows(tmp_path, bad: dict | None):
    rows = [{"prompt": f"q{i}", "chosen": f" yes {i}", "rejected": f" no {i}", "similarity": 0.5} for i in range(3)]
    if bad is not None:
        rows[1] = {k: v for k, v in {**rows[1], **bad}.items() if v is not None}
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.mark.parametrize("bad, detail", [({"similarity": None}, "missing"),
                                         ({"similarity": "high"}, "expected a number, got 'high'"),
                                         ({"similarity": float("nan")}, "the value nan is not finite"),
                                         ({"similarity": True}, "expected a number, got bool")])
def test_objective_extras_are_checked_at_data_load_for_sem_dpo(tmp_path, bad, detail):
    from preflab.config import config_from_dict
    from preflab.loops.prepare import prepare_pairs
    from preflab.models.tiny import tiny_tokenizer

    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", loss_type="sem_dpo",
                                dataset_name=str(_sem_rows(tmp_path, bad)), output_dir=str(tmp_path / "out")))
    with pytest.raises(DataError, match=rf"train.jsonl row 1 \(line 2\), field 'similarity': {detail}") as err:
        prepare_pairs(cfg, tiny_tokenizer())
    assert err.value.row_id == 1 and err.value.field == "similarity"
    skip = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", loss_type="sem_dpo", on_bad_row="skip",
                                 dataset_name=str(_sem_rows(tmp_path, bad)), output_dir=str(tmp_path / "out")))
    train, _, report = prepare_pairs(skip, tiny_tokenizer())
    assert [p.row_id for p in train] == [0, 2] and sum(report["skipped"].values()) == 1


def test_required_extras_ranges_and_csv_numbers(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("prompt,chosen,rejected,w\nq, a, b,0.25\nq, a, b,1e3\nq, a, b,\"[1, 2]\"\n")
    examples, report = load_rows(path, required_extras={"w": (0.0, 1.0)}, on_bad_row="skip")
    assert [e.extras["w"] for e in examples] == [0.25]                 # CSV text became a float
    assert report.skipped == {"invalid_extra": 2}
    assert "outside [0.0, 1.0]" in report.skipped_examples[0]["detail"]
    nested = [{"prompt": "q", "chosen": " a", "rejected": " b", "v": [[1, 2.5], [3, "4"]]}]
    assert load_rows(nested, required_extras=["v"])[0][0].extras["v"] == [[1, 2.5], [3, 4.0]]
    from preflab.objectives import get_objective
    assert get_objective("sem_dpo").row_extras() == {"similarity": (None, None)}
    assert get_objective("dpo").row_extras() == {}
    from preflab.objectives.sem_dpo import SemDPO

    class BoundedSemDPO(SemDPO):                                       # an objective that declares a range
        extra_ranges = {"similarity": (-1.0, 1.0)}
    assert BoundedSemDPO.row_extras() == {"similarity": (-1.0, 1.0)}


@pytest.mark.parametrize("row,form,fix", [
    ({"prompt": "q", "completion": " a", "label": True}, "unpaired preference form (prompt, completion, label)",
     "loss_type: kto (or apo_zero_unpaired)"),
    ({"prompt": "q", "completion": " a"}, "prompt-completion form (prompt, completion)", "task: sft"),
    ({"messages": [{"role": "user", "content": "q"}]}, "language-modeling form (text or messages)", "task: sft"),
])
def test_a_row_of_another_trl_form_in_pairwise_data_names_its_form_and_the_trainer(row, form, fix):
    """An unpaired (KTO) or SFT file given to DPO / a reward model said only "field 'chosen': missing ... Fix the row
    or set on_bad_row: skip" (which skips every row); now it names the row's TRL form and what trains it."""
    with pytest.raises(DataError, match=r"row 0, field 'chosen': missing: the row is TRL's " + re.escape(form)) as e:
        load_rows([row], kind="pairwise")
    assert fix in str(e.value)
    with pytest.raises(DataError, match=r"field 'rejected': missing \(the row's columns: 'prompt', 'chosen', "
                                        r"'completion'\)\. A pairwise row needs"):
        load_rows([{"prompt": "q", "chosen": "a", "completion": "b"}], kind="pairwise")  # a pair with a gap


def test_rows_mixing_text_and_conversational_forms_get_a_note():
    """A file with text rows and message-list rows trained both, the text rows without the chat template, and said
    it only as `forms: conversational 1, standard 2` in the data line."""
    conv = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    text = {"prompt": "q", "chosen": " a", "rejected": " b"}
    _, report = load_rows([text, conv, {"chosen": "q a", "rejected": "q b"}], kind="pairwise")
    assert report.mixed_forms_note().startswith("<rows> mixes 2 text row(s) and 1 conversational row(s): only the "
                                                "conversational ones get the chat template")
    assert load_rows([text, text], kind="pairwise")[1].mixed_forms_note() is None
    assert load_rows([conv, {"chosen": conv["prompt"] + conv["chosen"], "rejected": conv["prompt"] + conv["rejected"]}],
                     kind="pairwise")[1].mixed_forms_note() is None


def test_responses_that_repeat_the_whole_prompt_are_counted_and_said(tmp_path, capsys):
    """Full transcripts (hh-rlhf's chosen/rejected) with a `prompt` column as well trained the prompt a second time
    inside each response, without a word (TRL does the same). Now such rows are counted and the run says so; a short
    prompt that opens a response by chance, and implicit-prompt rows, are not counted."""
    from preflab.cli import main

    rows = [{"prompt": f"Human: echo w{i}\n\nAssistant:", "chosen": f"Human: echo w{i}\n\nAssistant: W{i}",
             "rejected": f"Human: echo w{i}\n\nAssistant: w{i}"} for i in range(3)]
    rows += [{"prompt": "Hi", "chosen": "Hi there", "rejected": "Hi, who?"},
             {"chosen": "Human: echo w9\n\nAssistant: W9", "rejected": "Human: echo w9\n\nAssistant: w9"},
             {"prompt": "Human: echo w4\n\nAssistant:", "chosen": " W4", "rejected": " w4"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [rows[3], *rows[:3], *rows[4:]]))
    _, report = load_rows(path)
    assert (report.prompt_repeated, report.prompt_repeated_first) == (3, 1)
    assert main(["train", "examples/quickstart.yaml", f"dataset_name={path}", "eval_fraction=0", "max_steps=1",
                 "per_device_train_batch_size=2", f"output_dir={tmp_path / 'out'}", "eval_steps=0",
                 "save_steps=0"]) == 0
    assert f"preflab: note: data: {path}: in 3 of 6 row(s) (first: row 1) every response begins with the whole " \
           "prompt, so the prompt is trained a second time" in capsys.readouterr().out


def test_a_prompt_column_under_another_name_is_not_left_unread_by_the_implicit_prompt(tmp_path):
    """{"question", "chosen": "The answer is 4", "rejected": "The answer is 5"} trained "The answer is" -> " 4" with
    the question never read (TRL's implicit prompt does the same, silently). Refused naming the column; a column the
    implicit prompt already holds (a full transcript beside it) is fine."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"question": "2 + 2?", "chosen": "The answer is 4", "rejected": "The answer is 5"}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl row 0 \(line 1\), field 'question': looks like the prompt, but "
                                        r"the row has no 'prompt' column, so the shared start of 'chosen' and "
                                        r"'rejected' \('The answer is'\) would be the prompt and 'question' never read"):
        load_rows(path)
    conv = {"Instruction": "2 + 2?", "chosen": [{"role": "user", "content": "Sum: 2 + 2?"},
                                                {"role": "assistant", "content": "4"}],
            "rejected": [{"role": "user", "content": "Sum: 2 + 2?"}, {"role": "assistant", "content": "5"}]}
    examples, _ = load_rows([conv, {"question": "2 + 2?", "chosen": "Q: 2 + 2? A: 4", "rejected": "Q: 2 + 2? A: 5"}])
    assert [e.prompt for e in examples] == [[{"role": "user", "content": "Sum: 2 + 2?"}], "Q: 2 + 2? A:"]
    with pytest.raises(DataError, match=r"field 'Instruction': looks like the prompt"):
        load_rows([dict(conv, Instruction="3 + 3?")])


def test_unpaired_rows_mixed_with_pairs_get_a_note_naming_the_split(tmp_path, capsys):
    """A KTO file mixing {prompt, completion, label} rows with {prompt, chosen, rejected} rows split each pair into
    two examples, said only as forms in the data line. TRL's KTOTrainer reads one form per dataset."""
    import yaml

    from preflab.cli import main

    rows = [{"prompt": "p", "completion": " good", "label": True}, {"prompt": "q", "completion": " bad", "label": False},
            {"prompt": "r", "chosen": " c", "rejected": " x"}, {"prompt": "s", "chosen": " d", "rejected": " y"},
            {"prompt": "t", "completion": " ok", "label": True}]
    want = ("<rows> mixes 3 unpaired row(s) (prompt, completion, label) with 2 pairwise row(s) (chosen, rejected): "
            "each pair was split into a desirable (chosen) and an undesirable (rejected) example (4 examples). TRL's "
            "KTOTrainer reads one form per dataset")
    assert load_rows(rows, kind="unpaired")[1].split_pairs_note().startswith(want)
    assert load_rows(rows[:2], kind="unpaired")[1].split_pairs_note() is None      # one form: no note
    assert load_rows(rows[2:4], kind="unpaired")[1].split_pairs_note() is None
    assert load_rows(rows[2:4], kind="pairwise")[1].split_pairs_note() is None
    data = tmp_path / "kto.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model_name_or_path": "builtin:tiny-gpt2", "dataset_name": str(data), "loss_type": "kto", "max_steps": 1,
           "per_device_train_batch_size": 4, "use_cpu": True, "disable_tqdm": True, "eval_fraction": 0,
           "save_steps": 0, "output_dir": str(tmp_path / "out")}
    (tmp_path / "kto.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "kto.yaml")]) == 0
    assert f"preflab: note: data: {data} mixes 3 unpaired row(s)" in capsys.readouterr().out


def test_validation_boundaries_label_extras_implicit_prompt_and_skipped_examples(tmp_path):
    """The edges of row validation: a label must be 0/1 (2 is not desirable), a numeric extra may equal its
    bounds but not be NaN, an implicit prompt never takes a whole response (one response a prefix of the other), and
    a report keeps the first MAX_SKIPPED_EXAMPLES skipped rows as examples while counting all of them."""
    from preflab.data.report import MAX_SKIPPED_EXAMPLES, RowProblem
    from preflab.data.validate import check_label, check_numeric_extra, split_implicit_text

    assert (check_label(1), check_label(0), check_label("1")) == (True, False, True)
    with pytest.raises(RowProblem, match=r"expected a boolean \(true / false, or 1 / 0\), got 2"):
        check_label(2)
    assert (check_numeric_extra(0.0, "s", 0.0, 1.0), check_numeric_extra("1", "s", 0.0, 1.0)) == (0.0, 1.0)
    with pytest.raises(RowProblem, match="the value nan is not finite"):
        check_numeric_extra(float("nan"), "s")
    assert split_implicit_text("Hello there", "Hello there friend") == ("Hello", " there", " there friend")
    rows = [GOOD] + [dict(GOOD, rejected=GOOD["chosen"]) for _ in range(MAX_SKIPPED_EXAMPLES + 5)]
    _, report = load_rows(write_jsonl(tmp_path / "t.jsonl", rows), on_bad_row="skip")
    assert report.skipped == {"identical": MAX_SKIPPED_EXAMPLES + 5} and report.kept == 1
    assert [e["row_id"] for e in report.skipped_examples] == list(range(1, MAX_SKIPPED_EXAMPLES + 1))


@pytest.mark.parametrize("chosen, rejected", [
    ("echo: cat dog\nCAT DOG", "echo: cat dog\ncat dog"),          # a prompt ending in a newline
    ("Question: why?\n\nAnswer: because", "Question: why?\n\nAnswer: no"),
    ("Q:\n\nyes", "Q:\n\nno"), ("a b  c", "a b  d"), ("x:\t1", "x:\t2"),  # whitespace runs, a tab
    ("Human: hi\n\nAssistant: hello there", "Human: hi\n\nAssistant: go away"),
    ("echo: cat dog\nCAT DOG", "echo: cat dog\nCAT dog"),          # responses sharing a first word
])
def test_implicit_text_prompt_is_trls_where_trl_cuts_at_a_word_boundary(chosen, rejected):
    """TRL 1.16's extract_prompt: the longest common prefix, less one space before the first differing character.
    Where that cut falls at a word boundary preflab's is the same; it moved every whitespace character before the
    responses into them (a newline-ended prompt's newline was trained as the responses' first token)."""
    extract_prompt = pytest.importorskip("trl.data_utils").extract_prompt
    (ex,), _ = load_rows([{"chosen": chosen, "rejected": rejected}])
    trl = extract_prompt({"chosen": chosen, "rejected": rejected})
    assert (ex.prompt, ex.chosen, ex.rejected) == (trl["prompt"], trl["chosen"], trl["rejected"])


def test_implicit_text_prompt_token_ids_equal_trls_dpo_trainer(tmp_path):
    """The same row through TRL's DPOTrainer (extract_prompt, EOS, tokenizing) and preflab's loader and tokenizer:
    equal prompt_ids, chosen_ids and rejected_ids (preflab's prompt was one newline short, its responses one
    newline longer)."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from preflab.data.tokenize import tokenize_pairs
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    rows = [{"chosen": "echo: cat dog\nCAT DOG", "rejected": "echo: cat dog\ncat dog"}]
    trainer = trl.DPOTrainer(model=model, ref_model=frozen_copy(model), processing_class=tok,
                             args=trl.DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False,
                                                max_length=None, gradient_checkpointing=False),
                             train_dataset=datasets.Dataset.from_list(rows))
    theirs = trainer.train_dataset[0]
    (pair,), _ = tokenize_pairs(load_rows(datasets.Dataset.from_list(rows), kind="pairwise")[0], tok, max_length=None)
    assert list(pair.prompt_ids) == list(theirs["prompt_ids"])
    assert tok.decode(pair.prompt_ids).endswith("\n")
    assert list(pair.chosen_ids) == list(theirs["chosen_ids"])
    assert list(pair.rejected_ids) == list(theirs["rejected_ids"])
