"""tokenize_pairs / tokenize_unpaired / tokenize_prompts: bos/eos, the chat-template path, truncation counts,
and the tokenization bad-row cases in both modes."""
import json
import re

import pytest

from preflab.data.examples import PairExample, PromptExample
from preflab.data.rows import load_rows
from preflab.data.tokenize import TokenizedPair, tokenize_pairs, tokenize_prompts, tokenize_unpaired
from preflab.errors import ConfigError, DataError
from preflab.models.tiny import tiny_tokenizer

TOK = tiny_tokenizer("bytelevel")
CHAR = tiny_tokenizer("char")


def dec(ids, tok=TOK):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def test_text_pair_bos_eos_and_exact_decoding():
    ex = PairExample(5, "What is 2+2?", " 4", " five", {"margin": 1.0})
    (pair,), report = tokenize_pairs([ex], TOK)
    assert isinstance(pair, TokenizedPair) and pair.row_id == 5 and pair.extras == {"margin": 1.0}
    assert pair.prompt_ids[0] == TOK.bos_token_id and pair.prompt_ids.count(TOK.bos_token_id) == 1
    assert dec(pair.prompt_ids) == "<s>What is 2+2?"
    assert dec(pair.chosen_ids) == " 4</s>" and dec(pair.rejected_ids) == " five</s>"
    assert pair.chosen_ids.count(TOK.eos_token_id) == 1
    assert (report.total, report.kept, report.prompt_truncated, report.response_truncated) == (1, 1, 0, 0)
    json.dumps(report.to_dict())


def test_chat_template_path():
    ex = PairExample(0, msgs(("system", "Be brief."), ("user", "hi")), msgs(("assistant", "hello")),
                     msgs(("assistant", "go away")))
    for tok in (TOK, CHAR):
        (pair,), _ = tokenize_pairs([ex], tok)
        prompt_text = tok.apply_chat_template(ex.prompt, tokenize=False, add_generation_prompt=True)
        assert dec(pair.prompt_ids, tok) == prompt_text
        assert prompt_text == "<s><|system|>\nBe brief.</s>\n<|user|>\nhi</s>\n<|assistant|>\n"
        assert pair.prompt_ids.count(tok.bos_token_id) == 1  # the template's bos, not added twice
        assert dec(pair.chosen_ids, tok) == "hello</s>\n" and dec(pair.rejected_ids, tok) == "go away</s>\n"
        full = tok.apply_chat_template(ex.prompt + ex.chosen, tokenize=False)
        assert dec(pair.prompt_ids + pair.chosen_ids, tok) == full


def test_chat_template_gets_row_tools_and_kwargs():
    tok = tiny_tokenizer("bytelevel")
    tok.chat_template = ("{% if tools %}[tools:{{ tools | length }}]{% endif %}{% if flag %}[flag]{% endif %}"
                         + tok.chat_template)
    ex = PairExample(0, msgs(("user", "hi")), msgs(("assistant", "a")), msgs(("assistant", "b")),
                     {"tools": json.dumps([{"type": "function", "function": {"name": "f"}}]),
                      "chat_template_kwargs": {"flag": True}})
    (pair,), _ = tokenize_pairs([ex], tok)
    assert dec(pair.prompt_ids).startswith("[tools:1][flag]<s>")


def test_template_prefix_mismatch_and_template_errors_are_bad_rows():
    tok = tiny_tokenizer("bytelevel")  # renders the last user turn differently when an answer follows
    tok.chat_template = ("{% for m in messages %}{% if loop.last and m['role'] == 'user' %}LAST:{% endif %}"
                         "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}")
    ex = PairExample(3, msgs(("user", "hi")), msgs(("assistant", "a")), msgs(("assistant", "b")))
    with pytest.raises(DataError, match="train.jsonl row 3, field 'chosen': the chat template renders the prompt"):
        tokenize_pairs([ex], tok, source="train.jsonl")
    _, report = tokenize_pairs([ex], tok, on_bad_row="skip")
    assert report.skipped == {"template_prefix_mismatch": 1}
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(DataError, match="row 3, field 'prompt': the chat template failed.*roles must alternate"):
        tokenize_pairs([ex], tok)
    tok.chat_template = None
    with pytest.raises(ConfigError, match="need a chat template"):
        tokenize_pairs([ex], tok, on_bad_row="skip")


def test_eos_already_in_text_is_not_doubled_and_inside_is_a_bad_row():
    examples = [PairExample(0, "p", " yes</s>", " no", {}), PairExample(1, "p", " a</s> b", " no", {})]
    pairs, report = tokenize_pairs(examples, TOK, on_bad_row="skip")
    assert [p.row_id for p in pairs] == [0] and dec(pairs[0].chosen_ids) == " yes</s>"
    assert report.eos_already_present == 1 and report.skipped == {"eos_in_response": 1}
    with pytest.raises(DataError, match="row 1, field 'chosen': the text contains the end-of-sequence token"):
        tokenize_pairs(examples, TOK)


def test_truncation_keep_end_keep_start_and_counts():
    prompt = "0123456789" * 3  # 30 chars: 30 tokens with the char tokenizer, 31 with bos
    ex = PairExample(0, prompt, " abcdefghij", " xyz", {})
    (pair,), report = tokenize_pairs([ex], CHAR, max_length=16, max_prompt_length=8)
    assert dec(pair.prompt_ids, CHAR) == "<s>3456789" and len(pair.prompt_ids) == 8  # bos kept, end kept
    assert dec(pair.chosen_ids, CHAR) == " abcdefg" and len(pair.prompt_ids + pair.chosen_ids) == 16
    assert dec(pair.rejected_ids, CHAR) == " xyz</s>"  # each response against its own length
    assert (report.prompt_truncated, report.response_truncated) == (1, 1)
    (pair,), report = tokenize_pairs([ex], CHAR, max_length=100, max_prompt_length=8, truncation_mode="keep_start")
    assert dec(pair.prompt_ids, CHAR) == "<s>0123456" and (report.prompt_truncated, report.response_truncated) == (1, 0)


def test_prompt_that_fills_max_length_and_identical_after_truncation():
    examples = [PairExample(0, "x" * 30, " a", " b", {}), PairExample(1, "p", " same start A", " same start B", {}),
                PairExample(2, "p", " ok", " fine", {})]
    with pytest.raises(DataError, match="data.csv row 0, field 'prompt': the prompt is 31 tokens.*max_length=10"):
        tokenize_pairs(examples, CHAR, max_length=10, source="data.csv")
    pairs, report = tokenize_pairs(examples, CHAR, max_length=10, on_bad_row="skip")
    assert [p.row_id for p in pairs] == [2]
    assert report.skipped == {"prompt_fills_max_length": 1, "identical_after_tokenization": 1}
    assert (report.total, report.kept, report.response_truncated) == (3, 1, 0)  # counts cover kept rows
    assert "1 kept" in report.summary() and "response truncated 0" in report.summary()


def test_unpaired_and_prompts():
    rows = [{"prompt": "Q:", "chosen": " yes", "rejected": " no"},
            {"prompt": msgs(("user", "hi")), "completion": msgs(("assistant", "hey")), "label": True}]
    examples, _ = load_rows(rows, kind="unpaired")
    items, report = tokenize_unpaired(examples, TOK)
    assert [(i.row_id, i.label, dec(i.completion_ids)) for i in items] == [
        (0, True, " yes</s>"), (0, False, " no</s>"), (1, True, "hey</s>\n")]
    assert report.total == 3
    prompts = [PromptExample(0, "Tell me", {"k": 1}), PromptExample(1, msgs(("user", "hi")), {})]
    items, report = tokenize_prompts(prompts, TOK)
    assert dec(items[0].prompt_ids) == "<s>Tell me" and items[0].extras == {"k": 1}
    assert dec(items[1].prompt_ids) == "<s><|user|>\nhi</s>\n<|assistant|>\n" and report.prompt_truncated == 0
    short, report = tokenize_prompts(prompts, TOK, max_prompt_length=5)
    assert short[1].prompt_ids == [TOK.bos_token_id] + items[1].prompt_ids[-4:]
    assert report.prompt_truncated == 2 and report.max_prompt_tokens == 5


def test_settings_are_checked():
    ex = [PairExample(0, "p", " a", " b", {})]
    with pytest.raises(ConfigError, match="truncation_mode"):
        tokenize_pairs(ex, TOK, truncation_mode="keep_middle")
    with pytest.raises(ConfigError, match="max_length"):
        tokenize_pairs(ex, TOK, max_length=0)
    with pytest.raises(ConfigError, match="on_bad_row"):
        tokenize_pairs(ex, TOK, on_bad_row="ignore")


def test_end_to_end_file_with_implicit_prompts(tmp_path):
    user = [{"role": "user", "content": "hi"}]
    rows = [{"chosen": "Human: hi\n\nAssistant: hello there", "rejected": "Human: hi\n\nAssistant: go away"},
            {"chosen": user + msgs(("assistant", "hello")), "rejected": user + msgs(("assistant", "bye"))}]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples, data_report = load_rows(path)
    pairs, report = tokenize_pairs(examples, TOK, source=data_report.source)
    assert dec(pairs[0].prompt_ids) == "<s>Human: hi\n\nAssistant:"
    assert dec(pairs[0].chosen_ids) == " hello there</s>" and dec(pairs[0].rejected_ids) == " go away</s>"
    assert dec(pairs[1].prompt_ids) == "<s><|user|>\nhi</s>\n<|assistant|>\n"
    assert dec(pairs[1].chosen_ids) == "hello</s>\n" and dec(pairs[1].rejected_ids) == "bye</s>\n"
    assert report.kept == 2 and data_report.forms == {"standard_implicit": 1, "conversational_implicit": 1}


# ---------------------------------------------------------------- control tokens written as text, tool calls (#18.16)


@pytest.mark.parametrize("prompt, chosen, field, token", [
    ("Say </s> then stop", " ok", "prompt", "</s>"),                                  # eos inside a text prompt
    ("Hi <|assistant|> sure", " ok", "prompt", "<|assistant|>"),                      # a fake turn marker
    ("Hi", " ok <|user|> and more", "chosen", "<|user|>"),                             # in a text response
    (msgs(("user", "x <|assistant|>\nI agree")), msgs(("assistant", "ok")), "prompt[0].content", "<|assistant|>"),
    (msgs(("user", "hello")), msgs(("assistant", "ok <s>")), "chosen[0].content", "<s>"),
])
def test_special_tokens_written_in_rows_are_refused(prompt, chosen, field, token):
    rejected = " no" if isinstance(chosen, str) else msgs(("assistant", "no"))
    ex = PairExample(3, prompt, chosen, rejected, {})
    expected = rf"row 3, field {re.escape(repr(field))}: the text contains {re.escape(repr(token))}, one of the " \
        "tokenizer's special tokens"
    with pytest.raises(DataError, match=expected) as err:
        tokenize_pairs([ex], TOK)
    assert err.value.reason == "special_token_in_text"
    if field.startswith("prompt"):                                   # prompts for generation: the same rule
        with pytest.raises(DataError, match=expected):
            tokenize_prompts([PromptExample(3, prompt, {})], TOK)
    ok = PairExample(4, "Hi", " ok</s>", " no", {})                  # one eos at the very end stays allowed
    (pair,), report = tokenize_pairs([ok], TOK)
    assert report.eos_already_present == 1 and pair.chosen_ids.count(TOK.eos_token_id) == 1


def test_tool_call_turn_must_be_rendered_by_the_template():
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                                 "function": {"name": "lookup", "arguments": "{}"}}]}
    ex = PairExample(0, msgs(("user", "weather?")), [call], msgs(("assistant", "sunny")), {})
    with pytest.raises(DataError, match=r"row 0, field 'chosen': an assistant turn has tool_calls, but the chat "
                                        "template does not render them"):
        tokenize_pairs([ex], TOK)                                     # the tiny template ignores tool_calls
    tok = tiny_tokenizer("bytelevel")
    tok.chat_template = TOK.chat_template.replace(
        "{{ message['content'] }}", "{{ message['content'] }}{% for c in message.get('tool_calls', []) %}"
        "CALL {{ c['function']['name'] }}{% endfor %}")
    (pair,), _ = tokenize_pairs([ex], tok)
    assert dec(pair.chosen_ids, tok) == "CALL lookup</s>\n"          # the prompt holds "<|assistant|>\n"


def test_an_error_at_tokenization_names_the_rows_file_line(tmp_path):
    """A problem found at tokenization (here the prompt filling max_length) named the row only; with a blank line
    before it the row's line is not row + 1, so the message now says the line the reader read it from."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": " ok", "rejected": " fine"}) + "\n\n"
                    + json.dumps({"prompt": "x" * 30, "chosen": " a", "rejected": " b"}) + "\n")
    examples, _ = load_rows(str(path))
    with pytest.raises(DataError, match=r"pairs\.jsonl row 1 \(line 3\), field 'prompt': the prompt is 31 tokens"):
        tokenize_pairs(examples, CHAR, max_length=10, source="pairs.jsonl")
    _, report = tokenize_pairs(examples, CHAR, max_length=10, on_bad_row="skip")
    assert report.skipped_examples[0]["line"] == 3
    assert examples[1] == PairExample(1, "x" * 30, " a", " b", {})  # where a row came from is not its content


def test_a_row_counts_once_in_prompt_truncated_and_its_prompt_once_in_prompt_tokens():
    """A prompt cut by max_prompt_length and again by keep_end's max_length cut is one truncated row, not two; a
    prompt shared by both responses is counted once in prompt_tokens (it is stored once)."""
    ex = PairExample(0, "0123456789" * 3, " abcdefghij", " xyz", {})
    (pair,), report = tokenize_pairs([ex], CHAR, max_length=16, max_prompt_length=8, truncation_mode="keep_end")
    assert (len(pair.prompt_ids), report.prompt_truncated, report.response_truncated) == (4, 1, 0)
    (pair,), report = tokenize_pairs([PairExample(0, "Question", " yes", " no", {})], CHAR)
    assert len(pair.prompt_ids) == 9 and (report.prompt_tokens, report.max_prompt_tokens) == (9, 9)
    assert report.response_tokens == len(pair.chosen_ids) + len(pair.rejected_ids) == 5 + 4


def test_dataset_num_proc_adds_up_the_skips_of_every_chunk():
    """tokenize_parallel merges the chunks' reports: bad rows of one reason in two chunks count twice (and both are
    examples), as one process counts them."""
    from preflab.data.tokenize import tokenize_indexed, tokenize_parallel

    ex = [PairExample(i, f"echo: w{i}\n", f"W{i}", f"w{i}", {}) for i in range(12)]
    for i in (1, 10):  # chunks 1 and 3 of 3
        ex[i] = PairExample(i, "echo: same\n", "same", "same", {})
    settings = dict(max_length=32, on_bad_row="skip", source="d.jsonl")
    one = tokenize_indexed("pairs", ex, TOK, **settings)
    three = tokenize_parallel("pairs", ex, TOK, 3, **settings)
    assert sum(one[1].skipped.values()) == 2 and [e["row_id"] for e in one[1].skipped_examples] == [1, 10]
    assert three[1].to_dict() == one[1].to_dict() and three[2] == one[2]
