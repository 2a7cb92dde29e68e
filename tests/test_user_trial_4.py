"""Regressions from a fourth new-user trial (a TRL 1.16 user's Python API, callbacks, options, data edge cases;
changes/user-trial2.md): each failed on the code before."""
import json

import pytest

from preflab.errors import ConfigError, PreflabError


def _rows(n: int = 16) -> list[dict]:
    words = ["cat", "dog", "owl", "bee", "ant", "oak", "jam", "log"]
    return [{"prompt": f"echo: {words[i % 8]} {words[(i * 3) % 8]}\n",
             "chosen": f"{words[i % 8].upper()} {words[(i * 3) % 8].upper()}",
             "rejected": f"{words[i % 8]} {words[(i * 3) % 8]}"} for i in range(n)]


def _cfg(tmp_path, name: str, **over):
    from preflab.config import config_from_dict

    return config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "rows",
                             "output_dir": str(tmp_path / name), "max_steps": 2, "per_device_train_batch_size": 4,
                             "max_length": 64, "learning_rate": 1e-3, "logging_steps": 1, "disable_tqdm": True,
                             **over})


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.slow
def test_a_datasets_dataset_or_row_dicts_train_as_the_same_rows_in_a_file(tmp_path):
    """Trainer(cfg, train_data=datasets.Dataset) (TRL's train_dataset) crashed at the first step with
    AttributeError: 'dict' object has no attribute 'row_id' (train_data took tokenized examples only). Now rows given
    from Python are checked and tokenized like a file's rows and train exactly as that file does."""
    from datasets import Dataset

    from preflab.loops.offline import Trainer

    rows = _rows()
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    Trainer(_cfg(tmp_path, "file", dataset_name=str(data))).train()
    Trainer(_cfg(tmp_path, "dataset"), train_data=Dataset.from_list(rows)).train()
    Trainer(_cfg(tmp_path, "dicts"), train_data=rows, eval_data=rows[:4]).train()
    assert _losses(tmp_path / "dataset") == _losses(tmp_path / "file") == _losses(tmp_path / "dicts")
    evals = [r for r in map(json.loads, (tmp_path / "dicts" / "metrics.jsonl").read_text().splitlines())
             if "eval_loss" in r]
    assert evals and evals[-1]["step"] == 2
    # a bad row given from Python is named like a file's row
    with pytest.raises(PreflabError, match=r"row 1.*'rejected'"):
        Trainer(_cfg(tmp_path, "bad"), train_data=[rows[0], {"prompt": "p", "chosen": "c"}])
    with pytest.raises(ConfigError, match="eval_fraction"):
        Trainer(_cfg(tmp_path, "both", eval_fraction=0.25), train_data=rows, eval_data=rows[:4])


def test_a_callback_that_sets_should_training_stop_stops_the_run(tmp_path):
    """A transformers TrainerCallback setting control.should_training_stop (TRL users' early stopping) was ignored:
    the run trained every max_steps step. Now the run stops after that step as transformers' Trainer does (the final
    model, summary and metrics end there), and control.should_save / should_evaluate ask for a checkpoint / an
    evaluation at that step."""
    from transformers import TrainerCallback

    from preflab.loops.offline import Trainer

    class StopAtTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_save = state.global_step == 1
            control.should_evaluate = state.global_step == 1
            control.should_training_stop = state.global_step == 2

    cfg = _cfg(tmp_path, "stop", max_steps=5)
    summary = Trainer(cfg, train_data=_rows(), eval_data=_rows(4), callbacks=[StopAtTwo()]).train()
    assert summary["global_step"] == 2 and summary["stopped_early"]["step"] == 2
    rows = [json.loads(r) for r in (tmp_path / "stop" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert [r["step"] for r in rows if "eval_loss" in r] == [1, 2]  # asked at step 1, the final one at step 2
    assert (tmp_path / "stop" / "checkpoint-1" / "COMPLETE").exists()
    assert not (tmp_path / "stop" / "checkpoint-2").exists()


def test_a_callback_reading_a_trainingarguments_field_preflab_lacks_is_named(tmp_path):
    """A callback reading a transformers TrainingArguments field the config lacks died with a raw `AttributeError:
    'TrainConfig' object has no attribute ...` traceback; now a preflab error names the callback and the field and
    says what works. (transformers' EarlyStoppingCallback, the first one found, now works: tests/loops/
    test_best_model.py.)"""
    from transformers import TrainerCallback

    from preflab.loops.offline import Trainer

    class ReadsPastIndex(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            return args.past_index

    trainer = Trainer(_cfg(tmp_path, "es"), train_data=_rows(), callbacks=[ReadsPastIndex()])
    with pytest.raises(PreflabError, match=r"ReadsPastIndex.*on_train_begin.*args\.past_index.*"
                                           r"EarlyStoppingCallback works.*should_training_stop"):
        trainer.train()


def test_message_lists_saved_as_json_strings_in_a_csv_are_refused_not_trained_as_text(tmp_path):
    """A CSV (or any string column) holding conversational rows as JSON text (`[{"role": "user", ...}]`, what
    pandas.to_csv writes for a list column) was read as the standard form: the model trained on the JSON syntax as
    the prompt and responses, without a word. Now the row is refused naming the field and what to write instead."""
    import csv

    from preflab.data.rows import load_rows
    from preflab.errors import DataError

    path = tmp_path / "conv.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["prompt", "chosen", "rejected"])
        writer.writeheader()
        for r in _rows(3):
            writer.writerow({k: json.dumps([{"role": "assistant" if k != "prompt" else "user", "content": v}])
                             for k, v in r.items()})
    with pytest.raises(DataError, match=r"conv.csv row 0.*'prompt'.*JSON text of a list of messages.*parquet"):
        load_rows(path)
    # text that merely starts with a bracket is still text
    rows, _ = load_rows([{"prompt": "[1, 2] + [3]?", "chosen": "[1, 2, 3]", "rejected": "[{}]"}])
    assert rows[0].chosen == "[1, 2, 3]"


def test_sharegpt_from_value_messages_are_named_with_the_conversion(tmp_path):
    """ShareGPT messages ({"from": "human", "value": ...}) were refused with only "missing 'role'"; the error now
    says they are ShareGPT messages and how to write them (TRL converts them with maybe_convert_to_chatml)."""
    from preflab.data.rows import load_rows
    from preflab.errors import DataError

    row = {"prompt": [{"from": "human", "value": "hi"}], "chosen": [{"from": "gpt", "value": "HI"}],
           "rejected": [{"from": "gpt", "value": "hi"}]}
    with pytest.raises(DataError, match=r"'prompt\[0\]'.*ShareGPT.*human -> user, gpt -> assistant.*"
                                        r"maybe_convert_to_chatml"):
        load_rows([row])


def test_lora_options_without_use_peft_are_refused_not_a_silent_full_fine_tune():
    """lora_r / lora_alpha / lora_target_modules without use_peft: true (TRL's ModelConfig needs it too) trained the
    whole model at a LoRA learning rate, without a word. Now the config is refused, naming use_peft."""
    from preflab.config import config_from_dict

    base = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "output_dir": "o"}
    with pytest.raises(ConfigError, match=r"lora_r, lora_alpha only apply to use_peft: true .*remove them"):
        config_from_dict({**base, "lora_r": 8, "lora_alpha": 16})
    assert config_from_dict({**base, "use_peft": True, "lora_r": 8}).lora_r == 8
    # written at TRL's default value it is refused too (it was accepted: TrainConfig.written_options); a saved config's
    # default lora_r (every option is in it) is not the user's
    with pytest.raises(ConfigError, match=r"^lora_r only applies to use_peft: true .*remove it"):
        config_from_dict({**base, "lora_r": 16})
    assert not config_from_dict(config_from_dict(base).to_dict()).use_peft


@pytest.mark.parametrize("key, value, said", [
    ("auto_find_batch_size", True, "auto_find_batch_size is not supported: set per_device_train_batch_size (and "
                                   "gradient_accumulation_steps) yourself."),
    ("lr_scheduler_type", "greedy", "lr_scheduler_type='greedy' is not supported: transformers' GreedyLR adapts"),
])
def test_a_refused_trl_option_says_not_supported_once(key, value, said):
    """Refused TRL options read `load_best_model_at_end is not supported: not supported: the saved model ...` (the
    TRL option the trial found; it is accepted now, tests/loops/test_best_model.py)."""
    from preflab.config import config_from_dict

    with pytest.raises(ConfigError) as err:
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", key: value})
    assert said in str(err.value) and str(err.value).count("not supported") == 1


def test_a_local_copy_of_a_hub_dataset_reads_only_the_split_asked_for(tmp_path):
    """A local copy of a hub dataset with splits train_prefs / train_sft / train_gen (HuggingFaceH4's
    ultrafeedback_binarized layout: data/{split}-00000-of-00001.parquet) read all three as split `train`: three
    splits mixed into the training data, 3x the rows, without a word. Now a shard name gives its split exactly, as
    datasets reads it, and split `train` (absent) is refused, listing the splits there."""
    import pandas as pd

    from preflab.data.rows import load_rows
    from preflab.errors import DataError

    (tmp_path / "data").mkdir()
    for i, split in enumerate(("train_prefs", "train_sft", "train_gen", "test_prefs")):
        pd.DataFrame(_rows(4 + i)).to_parquet(tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    rows, _ = load_rows(tmp_path, split="train_sft")
    assert len(rows) == 5
    with pytest.raises(DataError, match=r"split\(s\) \['test_prefs', 'train_gen', 'train_prefs', 'train_sft'\] "
                                        r"and none of split 'train'"):
        load_rows(tmp_path, split="train")


def test_a_round_whose_judge_raises_names_the_exception(tmp_path):
    """A reward function that raised on every completion (here: text methods on TRL's conversational completions,
    which are message lists) stopped the run with "the judge failed ... for 8 of 8 completions" and no word of what
    it raised; the error now names the function and its exception."""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    def loud(prompts, completions, **kw):
        return [sum(ch.isupper() for ch in c[0]["content"]) for c in completions]  # expects messages, gets text

    cfg = _cfg(tmp_path, "judge", task="online", trainer="online_dpo", online_task="dataset", reward_funcs="x",
               num_generations=2, prompts_per_generation=4, max_completion_length=3, use_cpu=True,
               max_length=None)  # task: online reads no max_length (refused since the online trial)
    tok = tiny_tokenizer("char")
    run = OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=1), tokenizer=tok,
                    task=Task(["say a\n", "say b\n", "say c\n", "say d\n"], [loud]))
    with pytest.raises(PreflabError, match=r"8 of 8 completions could not be scored.*'loud' raised TypeError: string "
                                           r"indices must be integers"):
        run.train()


def test_trl_style_train_resume_argument_says_where_it_goes(tmp_path):
    """trainer.train(resume_from_checkpoint=True) (TRL's call) was a raw TypeError traceback ('unexpected keyword
    argument'); now it is a preflab error saying to set it in the config (the same value there is accepted)."""
    from preflab.loops.offline import Trainer

    trainer = Trainer(_cfg(tmp_path, "resume", max_steps=1), train_data=_rows())
    with pytest.raises(ConfigError, match=r"train\(resume_from_checkpoint=True\).*config .*None.*resume_from_check"
                                          r"point: true"):
        trainer.train(resume_from_checkpoint=True)
    assert Trainer(_cfg(tmp_path, "resume", max_steps=1), train_data=_rows()).train(
        resume_from_checkpoint=None)["global_step"] == 1  # the lock of the refused run was released


def test_a_refused_train_argument_says_nothing_of_starting_afresh_before_the_refusal(tmp_path, capsys):
    """Building a Trainer in a folder holding an earlier run printed "this run starts afresh and replaces its model,
    metrics.jsonl and summary.json" during the build; a train(resume_from_checkpoint=True) then refused, replacing
    nothing: the note was false. It is said when train() starts the run: nothing before the refusal, the earlier run's
    files untouched, and the note (once) from the train() that runs."""
    from preflab.loops.offline import Trainer

    Trainer(_cfg(tmp_path, "again", max_steps=1), train_data=_rows()).train()
    summary = (tmp_path / "again" / "summary.json").read_bytes()
    capsys.readouterr()
    trainer = Trainer(_cfg(tmp_path, "again", max_steps=1), train_data=_rows())
    with pytest.raises(ConfigError, match=r"^train\(resume_from_checkpoint=True\): preflab reads"):
        trainer.train(resume_from_checkpoint=True)
    said = capsys.readouterr()
    assert "earlier run" not in said.out + said.err and "afresh" not in said.out + said.err
    assert (tmp_path / "again" / "summary.json").read_bytes() == summary
    Trainer(_cfg(tmp_path, "again", max_steps=1, seed=1), train_data=_rows()).train()
    note = (f"preflab: note: output_dir {tmp_path / 'again'} holds an earlier run (it ended at step 1); this run "
            "starts afresh and replaces its model, metrics.jsonl and summary.json;")
    assert capsys.readouterr().out.count(note) == 1


def test_the_max_length_cap_note_is_printed_by_the_main_process_only(monkeypatch, capsys):
    """Under `accelerate launch --num_processes 2` the note "max_length=1024 is above the 512 positions ..." was
    printed once per process; now only the main process prints it (every process still caps)."""
    from types import SimpleNamespace

    from preflab.models import load

    cfg = SimpleNamespace(max_length=1024, model_name_or_path="builtin:tiny-llama")
    monkeypatch.setattr(load, "is_main_process", lambda: False)
    load.cap_max_length(cfg, 512)
    assert cfg.max_length == 512 and capsys.readouterr().out == ""
    monkeypatch.setattr(load, "is_main_process", lambda: True)
    cfg.max_length = 1024
    load.cap_max_length(cfg, 512)
    assert "max_length=1024 is above the 512 positions" in capsys.readouterr().out


def test_vision_rows_given_to_a_text_task_are_refused_not_trained_as_text(tmp_path):
    """TRL vision rows (an `images` column, a string prompt) under task: dpo (the default) trained the text model on
    the text alone, the images dropped into unused extras, without a word (TRL's DPOTrainer would have used them);
    task: sft likewise. Now such a row is refused naming the column and task: vlm."""
    from preflab.data.rows import load_rows
    from preflab.errors import DataError
    from preflab.loops.sft import prepare_sft
    from preflab.models.tiny import tiny_tokenizer

    rows = [dict(r, images=["red_square.png"]) for r in _rows(2)]
    with pytest.raises(DataError, match=r"row 0, field 'images': holds images or videos.*task: vlm"):
        load_rows(rows)
    for kind, row in (("unpaired", {"prompt": "p", "completion": "c", "label": True, "image": "x.png"}),):
        with pytest.raises(DataError, match="field 'image'.*task: vlm"):
            load_rows([row], kind=kind)
    assert len(load_rows([dict(r, images=[]) for r in _rows(2)])[0]) == 2  # an empty column is no image
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "What colour?", "completion": "Red.", "images": ["red.png"]}))
    with pytest.raises(DataError, match="field 'images'.*task: vlm"):
        prepare_sft(_cfg(tmp_path, "sft", task="sft", dataset_name=str(data)), tiny_tokenizer())


def test_trls_single_image_column_is_read_as_the_rows_image():
    """TRL's vision rows may carry one `image` instead of an `images` list; task: vlm said "the prompt has 1 image
    placeholder(s) but the row gives 0 image(s)". Now `image` is that one image (both columns: refused)."""
    from PIL import Image

    from preflab.data.report import RowProblem
    from preflab.data.vision import vision_prompt

    red = Image.new("RGB", (8, 8), (255, 0, 0))
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    _, images = vision_prompt({"prompt": prompt, "image": red})
    _, listed = vision_prompt({"prompt": prompt, "images": [red]})
    assert len(images) == 1 and images[0].tobytes() == listed[0].tobytes()
    with pytest.raises(RowProblem, match="both 'image' and 'images'"):
        vision_prompt({"prompt": prompt, "image": red, "images": [red]})


def test_kto_with_one_example_per_micro_batch_is_refused(tmp_path):
    """loss_type kto with per_device_train_batch_size=1 trained without a word, though its KL reference point pairs
    example i's prompt with example i-1's completion inside the micro-batch: alone in it, each example was paired
    with its own completion, so the "KL" was the implied reward (TRL's KTOTrainer refuses batch size 1). Now a
    config error; apo_zero_unpaired (no reference point) still trains with it."""
    from preflab.loops.offline import Trainer

    with pytest.raises(ConfigError, match=r"per_device_train_batch_size=1 every example is paired with its own "
                                          r"completion.*apo_zero_unpaired"):
        Trainer(_cfg(tmp_path, "kto", loss_type="kto", per_device_train_batch_size=1), train_data=_rows(4))
    with pytest.raises(ConfigError, match=r"per_device_eval_batch_size=1 every example"):  # evaluation's batches
        Trainer(_cfg(tmp_path, "kto", loss_type="kto", per_device_eval_batch_size=1, eval_fraction=0.5),
                train_data=_rows(4))
    # without an eval set the eval batch size is never used: no refusal for it
    Trainer(_cfg(tmp_path, "kto1", loss_type="kto", per_device_eval_batch_size=1), train_data=_rows(4))
    trainer = Trainer(_cfg(tmp_path, "apo", loss_type="apo_zero_unpaired", per_device_train_batch_size=1),
                      train_data=_rows(4))
    assert trainer.train()["global_step"] == 2


def test_sft_says_how_many_examples_eval_fraction_holds_out(tmp_path, capsys):
    """task: sft with eval_fraction printed only "tokenized 48, 48 kept": nothing said that 5 of them were the eval
    set (DPO prints a `data (eval)` line); now a line gives the hold-out's size."""
    from preflab.loops.sft import prepare_sft
    from preflab.models.tiny import tiny_tokenizer

    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) for i in range(20)))
    train, evals, _ = prepare_sft(_cfg(tmp_path, "sft", task="sft", dataset_name=str(data), eval_fraction=0.25),
                                  tiny_tokenizer())
    assert (len(train), len(evals)) == (15, 5)
    assert "preflab: data (eval): eval_fraction=0.25 holds out 5 of the 20 tokenized examples (seed 42); 15 train." \
        in capsys.readouterr().out
