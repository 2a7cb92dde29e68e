"""dataset_columns ({preflab field: dataset column}): a dataset whose columns are named otherwise reads exactly as the
same dataset with preflab's names, for every kind of row; a mapping that does not fit the data, or names no preflab
field, is refused naming the file, the option and the columns."""
import json
from pathlib import Path

import pytest

from jsonl_files import write_jsonl
from preflab.cli import main
from preflab.config import config_from_dict
from preflab.data.columns import with_columns
from preflab.data.rows import load_rows
from preflab.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [json.loads(line) for line in (ROOT / "examples" / "data" / "loud_echo_pairs.jsonl").read_text().splitlines()]
TO_USERS = {"prompt": "question", "chosen": "good", "rejected": "bad"}  # preflab field -> the dataset's column


def renamed(rows: list[dict], columns: dict) -> list[dict]:
    """`rows` with each preflab field under the dataset's name (what a user's file holds)."""
    back = {field: column for field, column in columns.items()}
    return [{back.get(k, k): v for k, v in row.items()} for row in rows]


# ------------------------------------------------------------------------------------------------ every row kind
def test_pairs_read_the_same_and_the_old_names_are_not_kept():
    rows = [{**r, "note": i} for i, r in enumerate(PAIRS[:6])]
    mapped, report = load_rows(with_columns(renamed(rows, TO_USERS), TO_USERS))
    plain, _ = load_rows(rows)
    assert mapped == plain and report.kept == 6
    assert mapped[0].extras == {"note": 0}  # 'question' / 'good' / 'bad' are not extras under their old names
    # all renames at once: a swap is well defined
    swapped, _ = load_rows(with_columns(rows, {"chosen": "rejected", "rejected": "chosen"}))
    assert [(x.chosen, x.rejected) for x in swapped] == [(x.rejected, x.chosen) for x in plain]


def test_a_question_column_read_as_the_prompt_is_not_refused_as_an_unread_prompt():
    # without a prompt column, 'question' is refused as a prompt that would never be read (implicit prompt)
    row = {"question": "say hi", "good": "Hi there", "bad": "Hi you"}
    with pytest.raises(DataError, match="dataset_columns: {prompt: question}"):
        load_rows([{"question": "say hi", "chosen": "Hi there", "rejected": "Hi you"}])
    [x], _ = load_rows(with_columns([row], TO_USERS))
    assert (x.prompt, x.chosen, x.rejected, x.extras) == ("say hi", "Hi there", "Hi you", {})


@pytest.mark.parametrize("kind,rows,columns", [
    ("unpaired", [{"prompt": "p1", "completion": " a", "label": True}, {"prompt": "p2", "completion": " b",
                                                                         "label": False}],
     {"prompt": "instruction", "completion": "answer", "label": "thumbs_up"}),
    ("unpaired", PAIRS[:3], TO_USERS),  # KTO reading pairs as one desirable and one undesirable completion
    ("prompt", [{"prompt": "what is 2+2?", "answer": "4"}], {"prompt": "query"}),
    ("prompt", [{"prompt": "q", "completions": [" a", " b", " c"], "scores": [3, 1, 2]}],  # ranked lists (RRHF)
     {"prompt": "query", "completions": "responses"}),
])
def test_every_row_kind_reads_renamed_columns_as_the_original(kind, rows, columns):
    mapped, _ = load_rows(with_columns(renamed(rows, columns), columns), kind=kind)
    plain, _ = load_rows(rows, kind=kind)
    assert mapped == plain and len(mapped) >= len(rows)


def test_sft_rows_read_renamed_columns_as_the_original(tmp_path):
    from preflab.loops.sft_rows import prepare_sft
    from preflab.models.tiny import tiny_tokenizer

    rows = [{"prompt": f"echo {w}:", "completion": f" {w.upper()}"} for w in ("cat", "dog", "ant")]
    columns = {"prompt": "input", "completion": "output"}
    tok = tiny_tokenizer("bytelevel")
    made = []
    for data, mapping in ((rows, {}), (renamed(rows, columns), columns)):
        cfg = config_from_dict(dict(task="sft", model_name_or_path="builtin:tiny-llama", output_dir=str(tmp_path),
                                    dataset_name=write_jsonl(tmp_path / f"sft{len(made)}.jsonl", data),
                                    dataset_columns=mapping, learning_rate=1e-4))
        made.append(prepare_sft(cfg, tok)[0])
    assert made[0] == made[1] and len(made[0]) == 3


def test_reward_pairs_and_the_eval_set_read_renamed_columns(tmp_path):
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.data import load_reward_pairs

    tok = tiny_tokenizer("bytelevel")
    got = []
    for name, mapping in (("plain", {}), ("users", TO_USERS)):
        rows = PAIRS[:8] if not mapping else renamed(PAIRS[:8], mapping)
        cfg = config_from_dict(dict(task="reward", model_name_or_path="builtin:tiny-llama", output_dir=str(tmp_path),
                                    dataset_name=write_jsonl(tmp_path / f"{name}.jsonl", rows[:5]),
                                    eval_dataset_name=write_jsonl(tmp_path / f"{name}_eval.jsonl", rows[5:]),
                                    dataset_columns=mapping, learning_rate=1e-4))
        train, evals, _, _ = load_reward_pairs(cfg, tok)
        got.append((train, evals))
    assert got[0] == got[1] and len(got[0][0]) == 5 and len(got[0][1]) == 3


def test_vlm_images_and_diffusion_pairs_read_renamed_columns():
    from preflab.data.vision import read_vision_pairs
    from preflab.diffusion.data import load_image_pairs
    from vlm.vlm_helpers import pair_row

    rows = [pair_row("what colour?", "red", "blue", (200, 20, 20), seed=0)]
    columns = {"images": "pictures", "prompt": "question"}
    assert read_vision_pairs(with_columns(renamed(rows, columns), columns))[0] == read_vision_pairs(rows)[0]
    from diffusion.test_image_data import BLUE, RED

    pick = [{"caption": "a", "jpg_0": RED, "jpg_1": BLUE, "label_0": 0}]
    columns = {"caption": "text", "jpg_0": "left", "jpg_1": "right", "label_0": "left_wins"}
    [a], _ = load_image_pairs(with_columns(renamed(pick, columns), columns), resolution=8)
    [b], _ = load_image_pairs(pick, resolution=8)
    assert a.prompt == b.prompt == "a" and (a.chosen == b.chosen).all() and (a.rejected == b.rejected).all()


# ------------------------------------------------------------------------------------------------ errors
def test_a_missing_mapped_column_names_the_file_the_option_and_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", renamed(PAIRS[:2], TO_USERS))
    with pytest.raises(DataError) as err:
        load_rows(with_columns(path, {**TO_USERS, "chosen": "Good"}), on_bad_row="skip")  # not skippable
    said = str(err.value)
    assert said.startswith(f"{path} row 0 (line 1), field 'Good': missing: dataset_columns=")
    assert "reads the field 'chosen' from the column 'Good'" in said
    assert "(its columns: 'question', 'good', 'bad')" in said and "on_bad_row" not in said


def test_a_field_that_is_also_a_column_is_ambiguous(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "question": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError) as err:
        load_rows(with_columns(path, {"prompt": "question"}))
    said = str(err.value)
    assert said.startswith(f"{path} row 0 (line 1), field 'prompt': is a column of this row, and dataset_columns=")
    assert "from the column 'question': which is the prompt is ambiguous" in said


def test_the_config_refuses_unknown_fields_a_shared_column_and_a_non_mapping():
    base = dict(model_name_or_path="builtin:tiny-llama", dataset_name="x.jsonl", output_dir="o")
    with pytest.raises(ConfigError) as err:
        config_from_dict({**base, "dataset_columns": {"question": "prompt"}})  # written the other way round
    said = str(err.value)
    assert "dataset_columns: 'question' is not a preflab field" in said
    assert ": caption, caption_0," in said and ", prompt, prompt_chosen," in said and ", text, videos." in said
    assert said.endswith("It reads as written the other way round: write {prompt: question} (the field first).")
    with pytest.raises(ConfigError) as err:
        config_from_dict({**base, "dataset_columns": {"promt": "question"}})
    assert str(err.value).endswith("Did you mean 'prompt'? If 'promt' is your dataset's column, write it as the "
                                   "value: {FIELD: promt}.")
    with pytest.raises(ConfigError, match="'chosen' and 'rejected' are both read from the column 'x'"):
        config_from_dict({**base, "dataset_columns": {"chosen": "x", "rejected": "x"}})
    with pytest.raises(ConfigError, match=r"dataset_columns must be dict, got \[.prompt., .question.\] \(list\)"):
        config_from_dict({**base, "dataset_columns": ["prompt", "question"]})
    # an objective's own per-row extra is a field too (sem_dpo reads `similarity`)
    assert config_from_dict({**base, "loss_type": "sem_dpo",
                             "dataset_columns": {"similarity": "sim"}}).dataset_columns == {"similarity": "sim"}
    with pytest.raises(ConfigError, match="'similarity' is not a preflab field"):
        config_from_dict({**base, "dataset_columns": {"similarity": "sim"}})
    # the tasks that read no dataset refuse it
    with pytest.raises(ConfigError, match="dataset_columns"):
        config_from_dict({**base, "task": "online", "online_task": "game", "dataset_columns": {"prompt": "q"}})


def test_a_changed_mapping_on_resume_is_a_meaning_change():
    from preflab.resume_check import check_resume_config, compare_configs

    saved = {"dataset_name": "d.jsonl", "dataset_columns": {"prompt": "question"}}
    _, meaning = compare_configs(saved, {**saved, "dataset_columns": {"prompt": "query"}})
    assert meaning == {"dataset_columns": ({"prompt": "question"}, {"prompt": "query"})}
    assert compare_configs(saved, dict(saved)) == ({}, {})
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="d.jsonl", output_dir="o",
                                dataset_columns={"prompt": "query"}))
    with pytest.raises(ConfigError, match="dataset_columns"):
        check_resume_config(saved, cfg, "o/checkpoint-2")


# ------------------------------------------------------------------------------------------------ end to end
def _metrics(run: Path) -> list[dict]:
    keep = ("loss", "rewards/", "logps/", "logits/", "eval_", "grad_norm", "step")
    return [{k: v for k, v in json.loads(line).items() if k.startswith(keep) and "runtime" not in k
             and "per_second" not in k} for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_run_on_renamed_columns_equals_the_run_on_the_original_and_eval_reads_them(tmp_path, capsys):
    train, evals = PAIRS[:12], PAIRS[10:16]  # two eval pairs were trained on
    runs = {}
    for name, columns in (("plain", {}), ("users", TO_USERS)):
        out = tmp_path / name
        cfg = {"model_name_or_path": "builtin:tiny-llama", "output_dir": str(out), "seed": 0,
               "dataset_name": write_jsonl(tmp_path / f"{name}.jsonl", renamed(train, columns)),
               "eval_dataset_name": write_jsonl(tmp_path / f"{name}_eval.jsonl", renamed(evals, columns)),
               "dataset_columns": columns, "learning_rate": 5e-4, "per_device_train_batch_size": 4,
               "max_steps": 2, "logging_steps": 1, "eval_steps": 2, "save_steps": 0, "max_length": 64,
               "disable_tqdm": True, "use_cpu": True}
        (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
        assert main(["train", str(tmp_path / f"{name}.json")]) == 0, capsys.readouterr().err[-2000:]
        runs[name] = out
    plain, users = _metrics(runs["plain"]), _metrics(runs["users"])
    assert plain == users and any("eval_loss" in r for r in plain) and sum("loss" in r for r in plain) >= 2
    import yaml

    assert yaml.safe_load((runs["users"] / "config.yaml").read_text())["dataset_columns"] == TO_USERS
    # preflab eval of the run: its config.yaml's mapping reads the renamed file; --data-columns none the original
    results = []
    plain_eval = tmp_path / "plain_eval.jsonl"
    for data, extra in ((tmp_path / "users_eval.jsonl", []), (plain_eval, ["--data-columns", "none"]),
                        (plain_eval, ["--data-columns", "prompt=prompt"])):
        out = tmp_path / f"eval{len(results)}.json"
        assert main(["eval", str(runs["users"]), "--data", str(data), "--no-reference", "--out", str(out),
                     *extra]) == 0
        results.append(json.loads(out.read_text()))
    assert "read with the run's dataset_columns" in capsys.readouterr().err
    accuracy = [r["metrics"]["ranking_accuracy"] for r in results]
    assert accuracy[0] == accuracy[1] == accuracy[2] and results[0]["num_pairs"] == 6
    assert results[0]["per_pair"] == results[1]["per_pair"]
    assert results[0]["data_columns"] == TO_USERS and "data_columns" not in results[1]
    # the overlap check read the run's training rows with its mapping: the two shared pairs are found
    for result in results:
        assert (result["overlap_with_training"]["pairs"], result["overlap_with_training"]["training_pairs"]) == (2, 12)
    # the run's own mapping on data with the original names: the missing column names the file and the option
    assert main(["eval", str(runs["users"]), "--data", str(tmp_path / "plain_eval.jsonl"), "--no-reference",
                 "--out", str(tmp_path / "x.json")]) != 0
    said = capsys.readouterr().err
    assert (f"{tmp_path / 'plain_eval.jsonl'} row 0 (line 1), field 'question': missing: dataset_columns (from "
            f"{runs['users']}'s config.yaml; --data-columns overrides it)={TO_USERS}") in said
    assert "(its columns: 'prompt', 'chosen', 'rejected')" in said


def test_eval_data_columns_flag_is_checked():
    from types import SimpleNamespace

    from preflab.eval.run import eval_columns

    args = lambda text: SimpleNamespace(data_columns=text, checkpoint="nowhere")  # noqa: E731
    assert eval_columns(args("prompt=question, chosen=good")) == ({"prompt": "question", "chosen": "good"},
                                                                    "--data-columns")
    assert eval_columns(args('{"rejected": "bad"}'))[0] == {"rejected": "bad"}
    with pytest.raises(ConfigError, match="--data-columns: 'question' is not a preflab field"):
        eval_columns(args("question=prompt"))
    with pytest.raises(ConfigError, match="write FIELD=COLUMN"):
        eval_columns(args("prompt"))


def test_streamed_rows_are_renamed_from_a_file_and_from_python(tmp_path):
    from preflab.loops.streaming import _row_source

    rows = renamed(PAIRS[:3], TO_USERS)
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", output_dir=str(tmp_path),
                                dataset_name=write_jsonl(tmp_path / "d.jsonl", rows), dataset_columns=TO_USERS,
                                streaming=True, max_steps=2))
    for given in (None, rows, lambda: iter(rows)):
        open_rows, _ = _row_source(cfg, given)
        assert [raw.data for raw in open_rows()] == PAIRS[:3]


def test_eval_reward_reads_renamed_columns_with_the_flag(tmp_path):
    import argparse

    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.cli import register_reward_eval
    from preflab.reward_models.heads import build_reward_model

    tok = tiny_tokenizer()
    build_reward_model("builtin:tiny-llama", 1, tok, seed=2).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    parser = argparse.ArgumentParser()
    register_reward_eval(parser.add_subparsers())
    printed = []
    for name, rows, extra in (("plain", PAIRS[:6], []),
                              ("users", renamed(PAIRS[:6], TO_USERS), ["--data-columns", "prompt=question,chosen=good,"
                                                                                         "rejected=bad"])):
        args = parser.parse_args(["eval-reward", "--model", str(tmp_path / "rm"), "--data",
                                  write_jsonl(tmp_path / f"{name}.jsonl", rows), "--output",
                                  str(tmp_path / f"{name}.json"), *extra])
        assert args.func(args) == 0
        printed.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert printed[0]["num_pairs"] == printed[1]["num_pairs"] == 6
    assert printed[0]["accuracy"] == printed[1]["accuracy"] and printed[0]["margin"] == printed[1]["margin"]
