"""Findings of the TRL user's trial of offline training with local models and data files (changes/user-trial-data.md).
Each test plants the user's case and asserts the number, row, field or text the fix gives."""
import json

import pytest

from preflab.data.rows import load_rows
from preflab.data.tokenize import tokenize_pairs
from preflab.errors import ConfigError, DataError
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest

SYSTEM_ROW = {"prompt": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "hi"}],
              "chosen": [{"role": "assistant", "content": "bonjour"}],
              "rejected": [{"role": "assistant", "content": "hello"}]}
# a template that renders user and assistant turns only: anything else is dropped without an error
NO_SYSTEM_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}"
                      "{{ eos_token }}\n{% elif m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}"
                      "{{ eos_token }}\n{% endif %}{% endfor %}"
                      "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def test_a_chat_template_that_drops_the_system_message_is_a_bad_row(tmp_path):
    """A template that renders only user and assistant turns trained every row without its system prompt, silently
    (TRL too): the rendered prompt was '<s><|user|>\\nhi...'. Now the row is bad, naming the message; skipped rows
    are counted under message_not_rendered; a template that renders the system turn is unchanged."""
    tok = tiny_tokenizer("bytelevel")
    plain = {"prompt": [{"role": "user", "content": "hey"}], "chosen": [{"role": "assistant", "content": "salut"}],
             "rejected": [{"role": "assistant", "content": "yo"}]}
    path = write_jsonl(tmp_path / "sys.jsonl", [plain, SYSTEM_ROW, plain])
    examples, _ = load_rows(path)
    pairs, _ = tokenize_pairs(examples, tok)  # the tiny template renders system turns
    assert tok.decode(pairs[1].prompt_ids) == "<s><|system|>\nAnswer in French.</s>\n<|user|>\nhi</s>\n<|assistant|>\n"
    tok.chat_template = NO_SYSTEM_TEMPLATE
    with pytest.raises(DataError, match=r"sys.jsonl row 1 \(line 2\), field 'prompt\[0\]': the chat template leaves "
                                        r"out this 'system' message \(its text 'Answer in French.'"):
        tokenize_pairs(examples, tok, source=path)
    kept, report = tokenize_pairs(examples, tok, on_bad_row="skip", source=path)
    assert [p.row_id for p in kept] == [0, 2] and report.skipped == {"message_not_rendered": 1}


def test_tokens_the_model_cannot_embed_name_the_row_not_an_index_error(tmp_path):
    """A tokenizer given a token after its model was saved (no resize_token_embeddings) stopped the run at its first
    step with `IndexError: index out of range in self`. Now the run stops before training, naming the first row and
    field holding such a token; a pad token past the embedding is a ConfigError."""
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer
    from preflab.loops.prepare import check_ids_fit_embeddings

    tok = tiny_tokenizer("bytelevel")
    model_dir = tmp_path / "model"
    tiny_causal_lm(tok, hidden_size=16, num_layers=1).save_pretrained(model_dir)
    tok.add_tokens(["zqzqzq"])  # id 300: the model has 300 embeddings
    tok.save_pretrained(model_dir)
    rows = [{"prompt": f"q{i}", "chosen": " yes", "rejected": " no"} for i in range(3)]
    rows[1]["chosen"] = " zqzqzq"
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = dict(model_name_or_path=str(model_dir), dataset_name=data, output_dir=str(tmp_path / "out"), max_steps=1,
               per_device_train_batch_size=2, max_length=64)
    with pytest.raises(DataError, match=r"pairs.jsonl row 1.*field 'chosen': token 'zqzqzq' has id 300, but the model "
                                        r"has 300 token embeddings.*resize_token_embeddings\(len\(tokenizer\)\) "
                                        r"\(here 301\)"):
        Trainer(config_from_dict(cfg))
    from preflab.reward_models.train import train_reward

    with pytest.raises(DataError, match=r"pairs.jsonl row 1.*field 'chosen': token 'zqzqzq' has id 300"):
        train_reward(config_from_dict({**cfg, "task": "reward", "output_dir": str(tmp_path / "rm")}))
    tok.add_special_tokens({"pad_token": "[PAD]"})  # id 301, used by every padded batch
    model = tiny_causal_lm(tiny_tokenizer("bytelevel"), hidden_size=16, num_layers=1)
    with pytest.raises(ConfigError, match=r"pad token '\[PAD\]' has id 301, but the model has 300 token embeddings"):
        check_ids_fit_embeddings(model, tok, tok.pad_token_id, [])
    check_ids_fit_embeddings(model, tiny_tokenizer("bytelevel"), 0, [("x", [object()])])  # fits: nothing scanned


def test_load_best_model_at_end_that_could_load_nothing_is_refused(tmp_path):
    """`load_best_model_at_end: true` without an evaluation schedule (preflab saves no checkpoints by default, where
    transformers saves every 500 steps and so refuses the pair), or with a schedule but no eval set, trained to the
    end and kept the last step's weights without a word (summary: best_model_checkpoint null)."""
    from preflab.config import config_from_dict
    from preflab.data.eval_set import note_eval_steps_without_eval_set

    base = dict(model_name_or_path="builtin:tiny-llama", dataset_name="pairs.jsonl",
                output_dir=str(tmp_path / "out"), load_best_model_at_end=True)
    with pytest.raises(ConfigError, match=r"load_best_model_at_end: true, but this run neither evaluates nor saves "
                                          r"checkpoints during training"):
        config_from_dict(base)
    cfg = config_from_dict({**base, "eval_steps": 2, "save_steps": 4})  # a schedule, no eval set
    with pytest.raises(ConfigError, match=r"load_best_model_at_end: true, but there is no eval set"):
        note_eval_steps_without_eval_set(cfg)
    note_eval_steps_without_eval_set(config_from_dict({**base, "eval_steps": 2, "save_steps": 4,
                                                       "eval_fraction": 0.25}))  # an eval set: accepted


def test_summary_skipped_counts_what_tokenizing_dropped_in_a_reward_run(tmp_path, capsys):
    """summary.json's data["skipped"] is the training rows left out by reason. A reward run (and an SFT or streaming
    run) summed only the reading stage: a pair dropped as longer than max_length was in train_tokenize but not in
    the total, so data["skipped"] disagreed with what the run said on the terminal."""
    from preflab.config import config_from_dict
    from preflab.reward_models.data import load_reward_pairs

    rows = [{"prompt": f"q{i}", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(6)]
    rows[1]["rejected"] = rows[1]["chosen"]  # identical
    rows[3]["chosen"] = ""  # empty
    rows[4]["chosen"] = " long" * 80  # past max_length=48: dropped at tokenizing, as TRL's RewardTrainer drops it
    data = write_jsonl(tmp_path / "rm.jsonl", rows)
    cfg = config_from_dict(dict(task="reward", model_name_or_path="builtin:tiny-llama", dataset_name=data,
                                output_dir=str(tmp_path / "out"), max_length=48, on_bad_row="skip"))
    train, _, report, _ = load_reward_pairs(cfg, tiny_tokenizer("bytelevel"))
    assert len(train) == 3
    assert report["skipped"] == {"identical": 1, "empty_field": 1, "longer_than_max_length": 1}


def test_model_card_counts_an_sft_runs_bad_row_once(tmp_path):
    """The model card's "training rows skipped" summed the train_* parts of the data report; an SFT run reads and
    tokenizes a row in one stage, which counts a bad row in both parts, so one skipped row was written as 2."""
    from preflab.config import config_from_dict
    from preflab.loops.sft import prepare_sft
    from preflab.runlog import training_data_line

    data = write_jsonl(tmp_path / "sft.jsonl", [{"text": "ok row"}, {"question": "q", "answer": "a"},
                                                  {"text": "another row"}])
    cfg = config_from_dict(dict(task="sft", model_name_or_path="builtin:tiny-llama", dataset_name=data,
                                output_dir=str(tmp_path / "out"), max_length=64, on_bad_row="skip"))
    train, _, report = prepare_sft(cfg, tiny_tokenizer("bytelevel"))
    assert len(train) == 2 and report["skipped"] == {"missing_field": 1}
    assert training_data_line(report) == "1 (missing_field: 1)"


@pytest.mark.parametrize("row,field,said", [
    ({"prompt": "q", "Chosen": " a", "Rejected": " b"}, "chosen", r"is 'Chosen' meant as 'chosen'\? Rename"),
    ({"Prompt": "q", "completion": " a", "label": True}, "prompt", r"is 'Prompt' meant as 'prompt'\? Rename"),
    ({"question": "q", "response_j": " a", "response_k": " b"}, "chosen",
     r"missing \(the row's columns: 'question', 'response_j', 'response_k'\)\. A pairwise"),
])
def test_a_missing_field_names_the_columns_the_row_has(tmp_path, row, field, said):
    """`field 'chosen': missing` for a row whose file plainly has a 'Chosen' column (an export's capitals, a CSV
    header 'prompt, chosen, rejected' with spaces) left the user staring at the column the message said was absent;
    it now lists the row's columns and names the one that differs only in case or spaces."""
    kind = "unpaired" if "label" in row else "pairwise"
    with pytest.raises(DataError, match=rf"row 0 \(line 1\), field '{field}': .*{said}"):
        load_rows(write_jsonl(tmp_path / "r.jsonl", [row]), kind=kind)


def test_a_csv_header_with_spaces_is_named(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt, chosen, rejected\nwhat?, yes, no\n")
    with pytest.raises(DataError, match=r"pairs.csv row 0 \(line 2\), field 'chosen': missing \(the row's columns: "
                                        r"'prompt', ' chosen', ' rejected'\); is ' chosen' meant as 'chosen'\?"):
        load_rows(str(path))


@pytest.mark.parametrize("text", [json.dumps([{"prompt": "p", "chosen": " a", "rejected": " b"}] * 2),
                                  json.dumps([{"prompt": "p", "chosen": " a", "rejected": " b"}] * 2, indent=2),
                                  json.dumps({"prompt": "p", "chosen": " a", "rejected": " b"}, indent=2)])
def test_a_jsonl_file_holding_one_json_document_says_to_name_it_json(tmp_path, text):
    """`json.dump(rows, open("train.jsonl", "w"))` (an array, on one line or indented) read as "row 0 (line 1): the
    line is not valid JSON ...; it may be truncated" or "the row is a list", never naming the cause; the same text
    as a .json file loads."""
    path = tmp_path / "train.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=r"train.jsonl row 0 \(line 1\): .*The file looks like one JSON document .*"
                                        r"write one row per line .* or save an array of rows with the suffix \.json"):
        load_rows(str(path))
    if text.startswith("["):
        (tmp_path / "train.json").write_text(text)
        assert len(load_rows(str(tmp_path / "train.json"))[0]) == 2


@pytest.mark.parametrize("chosen,rejected,prompt", [
    ("问题：天空是什么颜色？回答：蓝色", "问题：天空是什么颜色？回答：绿色", "问题：天空是什么颜色？回答："),
    ("日本の首都は東京です", "日本の首都は大阪です", "日本の首都は"),
    ("Answer:yes.", "Answer:yesterday", "Answer:"),
    ("A: The U.S. is big", "A: The U.K. is big", "A: The"),  # whitespace boundaries still come first
])
def test_implicit_prompt_of_text_without_spaces(chosen, rejected, prompt):
    """Rows without a prompt column whose texts share no prefix ending before whitespace (Chinese and Japanese text,
    'Answer:yes') were bad rows ('share no prefix that ends at a word boundary'), where TRL cuts at the first
    differing character; the prompt now ends after punctuation or beside a character of a script without spaces."""
    (example,), report = load_rows([{"chosen": chosen, "rejected": rejected}])
    assert (example.prompt, example.prompt + example.chosen, example.prompt + example.rejected) == (
        prompt, chosen, rejected)
    assert report.forms == {"standard_implicit": 1}


def test_an_eval_set_in_the_other_row_form_than_training_is_said(tmp_path, capsys):
    """Text training rows with a conversational eval file (or the reverse) trained without the chat template and
    evaluated through it, without a word: the eval metrics measured a format the policy never saw."""
    from preflab.config import config_from_dict
    from preflab.loops.prepare import prepare_pairs

    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"q{i}", "chosen": " a", "rejected": " b"}
                                                    for i in range(3)])
    conv = write_jsonl(tmp_path / "eval.jsonl", [SYSTEM_ROW] * 2)
    text_eval = write_jsonl(tmp_path / "eval_text.jsonl", [{"prompt": "e", "chosen": " a", "rejected": " b"}])
    said = "and the eval rows of {} conversational (chat template), so the eval metrics measure a format"
    for eval_name, expected in ((conv, 1), (text_eval, 0)):
        cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name=train,
                                    eval_dataset_name=eval_name, output_dir=str(tmp_path / "out")))
        capsys.readouterr()
        prepare_pairs(cfg, tiny_tokenizer("bytelevel"))
        out = capsys.readouterr().out
        assert out.count(f"the training rows of {train} are text (no chat template) ") == expected
        assert out.count(said.format(conv)) == expected


def test_sft_dataset_text_field_reads_the_named_column(tmp_path):
    """TRL's SFTConfig `dataset_text_field: content` (a corpus whose text column is not `text`) was refused ("rename
    the column"); it now reads that column as the row's text, with the same token ids as a `text` column, and is
    refused under a task that reads no text column."""
    from preflab.config import config_from_dict
    from preflab.loops.sft import prepare_sft

    texts = ["the cat sat on the mat", "hello world"]
    named = write_jsonl(tmp_path / "content.jsonl", [{"content": t, "source": "web"} for t in texts])
    plain = write_jsonl(tmp_path / "text.jsonl", [{"text": t, "source": "web"} for t in texts])
    base = dict(task="sft", model_name_or_path="builtin:tiny-llama", output_dir=str(tmp_path / "out"),
                max_length=64)
    tok = tiny_tokenizer("bytelevel")
    got, _, report = prepare_sft(config_from_dict({**base, "dataset_name": named, "dataset_text_field": "content"}),
                                 tok)
    want, _, _ = prepare_sft(config_from_dict({**base, "dataset_name": plain}), tok)
    assert [(x.prompt_ids, x.completion_ids) for x in got] == [(x.prompt_ids, x.completion_ids) for x in want]
    assert report["train_rows"]["forms"] == {"text": 2}
    both = write_jsonl(tmp_path / "both.jsonl", [{"content": "a b", "text": "c d"}])
    with pytest.raises(DataError, match=r"both.jsonl row 0 \(line 1\), field 'text': the row has both the "
                                        r"dataset_text_field column 'content' and a 'text' column"):
        prepare_sft(config_from_dict({**base, "dataset_name": both, "dataset_text_field": "content"}), tok)
    with pytest.raises(ConfigError, match=r"dataset_text_field only applies to task: sft"):
        config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name=plain,
                              output_dir=str(tmp_path / "o2"), dataset_text_field="content"))


def test_eval_strategy_without_an_eval_set_takes_a_local_folders_test_split_as_trl(tmp_path, capsys):
    """TRL's scripts evaluate on dataset_name's dataset_test_split, which defaults to "test", whenever eval_strategy
    is not "no"; the same YAML without dataset_test_split was refused here ("needs an eval set") for a folder that
    holds train.jsonl and test.jsonl. A local folder (or saved DatasetDict) with a 'test' split now gives it; a
    single file (whose only split is the training data) or a folder without one is still refused."""
    import datasets

    from preflab.config import config_from_dict

    row = {"prompt": "q", "chosen": " a", "rejected": " b"}
    folder = tmp_path / "prefs"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [row] * 3)
    write_jsonl(folder / "test.jsonl", [row])
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([row] * 3),
                          "test": datasets.Dataset.from_list([row])}).save_to_disk(str(saved))
    base = dict(model_name_or_path="builtin:tiny-llama", output_dir=str(tmp_path / "out"), eval_strategy="steps",
                eval_steps=5)
    for source in (folder, saved):
        capsys.readouterr()
        cfg = config_from_dict({**base, "dataset_name": str(source)})
        assert (cfg.eval_dataset_name, cfg.eval_split) == (str(source), "test")
        assert capsys.readouterr().err.count(f"-> eval_dataset_name: {source} (its 'test' split), as TRL's scripts "
                                             "do (their dataset_test_split defaults to test).") == 1
    (folder / "test.jsonl").rename(folder / "validation.jsonl")
    for source in (folder, folder / "train.jsonl"):
        with pytest.raises(ConfigError, match="eval_strategy='steps' needs an eval set"):
            config_from_dict({**base, "dataset_name": str(source)})


def test_the_data_note_says_which_end_of_a_cut_prompt_was_kept(tmp_path, capsys):
    """The data line said `prompt truncated 2; response truncated 2` but not which end was cut: with
    max_prompt_length and truncation_mode unset a prompt keeps its END (TRL 0.x's keep_end), while max_length keeps a
    sequence's start (TRL 1.16's keep_start). The note now says which end each kept."""
    from preflab.config import config_from_dict
    from preflab.loops.prepare import prepare_pairs

    rows = [{"prompt": "word " * 40 + str(i), "chosen": " yes" * 30, "rejected": " no" * 30} for i in range(2)]
    rows.append({"prompt": "short", "chosen": " a", "rejected": " b"})
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    base = dict(model_name_or_path="builtin:tiny-llama", dataset_name=data, output_dir=str(tmp_path / "out"),
                max_length=60, max_prompt_length=20)
    expected = {None: "truncation: 2 example(s) lost their prompt's start: a prompt over max_prompt_length=20 keeps "
                      "its end when truncation_mode is unset (TRL 0.x's keep_end); set truncation_mode: keep_start to "
                      "keep its start; 2 example(s) had a response cut (max_length=60): each keeps its start, its "
                      "end is not trained.",
                "keep_start": "truncation: 2 example(s) kept their prompt's start (max_prompt_length=20, "
                              "truncation_mode: keep_start); 2 example(s) had a response cut (max_length=60): each "
                              "keeps its start, its end is not trained."}
    for mode, note in expected.items():
        capsys.readouterr()
        train, _, report = prepare_pairs(config_from_dict({**base, "truncation_mode": mode}),
                                         tiny_tokenizer("bytelevel"))
        assert (report["train_tokenize"]["prompt_truncated"], report["train_tokenize"]["response_truncated"]) == (2, 2)
        assert capsys.readouterr().out.count(f"preflab: note: data: {note}\n") == 1
        kept = tiny_tokenizer("bytelevel").decode(train[0].prompt_ids)
        assert len(train[0].prompt_ids) == 20 and kept.startswith("<s>")  # bos kept either way
        assert kept.endswith("word 0") == (mode is None)  # the prompt's last words, kept only when its end is
        assert kept.startswith("<s>word word") == (mode == "keep_start")
    capsys.readouterr()
    prepare_pairs(config_from_dict({**base, "max_length": 1024, "max_prompt_length": None}),
                  tiny_tokenizer("bytelevel"))
    assert "truncation:" not in capsys.readouterr().out


def test_the_developer_role_is_read_and_a_mistyped_role_gets_a_hint(tmp_path):
    """OpenAI's chat format names the system turn `developer` (gpt-oss's template renders it); such rows were refused
    ("role 'developer' is not one of system, user, assistant, tool"). It is read now, and checked like a system turn:
    a template that drops it makes the row bad. A typo ('usr') is still refused, now with the role it meant."""
    tok = tiny_tokenizer("bytelevel")
    row = {"prompt": [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "hi"}],
           "chosen": [{"role": "assistant", "content": "bonjour"}], "rejected": [{"role": "assistant", "content": "hi"}]}
    (example,), _ = load_rows([row])
    (pair,), _ = tokenize_pairs([example], tok)
    assert tok.decode(pair.prompt_ids) == ("<s><|developer|>\nAnswer in French.</s>\n<|user|>\nhi</s>\n"
                                           "<|assistant|>\n")
    tok.chat_template = NO_SYSTEM_TEMPLATE
    with pytest.raises(DataError, match=r"field 'prompt\[0\]': the chat template leaves out this 'developer' message"):
        tokenize_pairs([example], tok)
    row["prompt"][0]["role"] = "usr"
    with pytest.raises(DataError, match=r"field 'prompt\[0\].role': role 'usr' is not one of system, developer, "
                                        r"user, assistant, tool\. .* Did you mean 'user'\?"):
        load_rows([row])


def test_a_nan_cell_is_named_missing_not_a_float(tmp_path):
    """A pandas frame with an empty cell saved as JSON lines (`NaN`) read as "field 'chosen': expected a string or a
    list of messages, got float"; the row is now bad as a missing value, and skipped rows are counted as such."""
    path = tmp_path / "pandas.jsonl"
    path.write_text('{"prompt": "p1", "chosen": " a", "rejected": " b"}\n{"prompt": "p2", "chosen": NaN, '
                    '"rejected": " d"}\n')
    with pytest.raises(DataError, match=r"row 1 \(line 2\), field 'chosen': missing \(NaN: how pandas writes an "
                                        r"empty cell\)"):
        load_rows(str(path))
    examples, report = load_rows(str(path), on_bad_row="skip")
    assert [x.row_id for x in examples] == [0] and report.skipped == {"missing_field": 1}


def test_an_sft_file_mixing_text_and_messages_rows_is_said(tmp_path, capsys):
    """A preference file mixing text and conversational rows gets a note; an SFT file mixing `text` rows and
    `messages` rows trained both formats without one (its forms are named text / messages)."""
    from preflab.config import config_from_dict
    from preflab.loops.sft import prepare_sft

    messages = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data = write_jsonl(tmp_path / "mixed.jsonl", [{"text": "plain words"}, messages, messages])
    cfg = config_from_dict(dict(task="sft", model_name_or_path="builtin:tiny-llama", dataset_name=data,
                                output_dir=str(tmp_path / "out"), max_length=64))
    capsys.readouterr()
    prepare_sft(cfg, tiny_tokenizer("bytelevel"))
    assert capsys.readouterr().out.count(f"preflab: note: data: {data} mixes 1 text row(s) and 2 messages row(s): "
                                         "only the messages rows get the chat template") == 1
