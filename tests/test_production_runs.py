"""Findings of a production user's trial (long runs on shared machines): full disks, trackers without network,
resumes that change the run's length, early refusal of unsafe model folders, TRL option meanings."""
import json
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import preflab.checkpoint as ck
from preflab.errors import PreflabError

ROOT = Path(__file__).resolve().parents[1]
SAFETENSORS_ENOSPC = "Error while serializing: I/O error: No space left on device (os error 28)"


def _linear_and_optimizer():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, opt


def test_safetensors_full_disk_in_a_checkpoint_is_the_documented_error(tmp_path, monkeypatch):
    """safetensors reports ENOSPC as its own SafetensorError, not OSError: the save was a traceback that left a
    .tmp-checkpoint folder behind instead of naming the checkpoint and saying what is kept."""
    model, opt = _linear_and_optimizer()
    ck.save_checkpoint(tmp_path, 1, model, opt, None, {})
    real = ck.save_file

    def full_disk(tensors, path, *a, **k):
        if "optimizer" in str(path):
            raise SafetensorError(SAFETENSORS_ENOSPC)
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(PreflabError, match=r"checkpoint-2: No space left on device\. Earlier checkpoints are kept"):
        ck.save_checkpoint(tmp_path, 2, model, opt, None, {})
    assert ck.list_checkpoints(tmp_path) == [tmp_path / "checkpoint-1"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_write_failure_reads_the_errno_of_a_safetensors_error():
    failure = ck.write_failure(SafetensorError(SAFETENSORS_ENOSPC), "out/model.safetensors")
    assert (failure.errno, failure.strerror, failure.filename) == (28, "No space left on device",
                                                                    "out/model.safetensors")
    assert ck.write_failure(SafetensorError("Error while deserializing header: HeaderTooLarge")) is None
    assert ck.write_failure(ValueError("x")) is None


def _tiny_run():
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "loops"))
    from tiny_run import run

    return run


FAKE_WANDB = '''
calls = []


class UsageError(Exception):
    pass


def init(**kwargs):
    calls.append(kwargs)
    raise UsageError("No API key configured. Use `wandb login` to log in.")
'''


def test_wandb_that_cannot_start_is_an_error_saying_what_to_do(tmp_path, monkeypatch):
    """report_to: wandb without a login (or, after a 90 s wait, without network) was a wandb traceback after the
    models were loaded; wandb's files also went to ./wandb in the working directory, not under output_dir."""
    import sys

    package = tmp_path / "site" / "wandb"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_WANDB)
    info = tmp_path / "site" / "wandb-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wandb\nVersion: 0.0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    import accelerate.tracking
    from accelerate.utils import LoggerType

    # accelerate lists the installed trackers once, when accelerate.tracking is first imported (earlier tests did)
    if LoggerType.WANDB not in accelerate.tracking._available_trackers:
        monkeypatch.setattr(accelerate.tracking, "_available_trackers",
                            [*accelerate.tracking._available_trackers, LoggerType.WANDB])
    from preflab.errors import ConfigError

    out = tmp_path / "run"
    try:
        with pytest.raises(ConfigError, match=r"report_to: wandb could not start \(UsageError: No API key.*"
                                              r"WANDB_MODE=offline.*report_to: none"):
            _tiny_run()(out, max_steps=1, report_to="wandb")
        import wandb

        assert wandb.calls[0]["dir"] == str(out)
    finally:
        sys.modules.pop("wandb", None)  # the fake must not look installed to later tests
    assert not (out / ".preflab.lock").exists()


def test_resume_with_a_shorter_max_steps_trains_on_the_new_schedule_from_its_first_step(tmp_path):
    """Lowering max_steps at resume is allowed (with a note); the linear schedule then follows the new length, but
    the first resumed step trained at the rate the checkpoint's optimizer state held (the old schedule's)."""
    import json

    run = _tiny_run()
    out = tmp_path / "run"
    run(out, max_steps=8, save_steps=4, lr_scheduler_type="linear", learning_rate=1e-3)
    run(out, max_steps=5, save_steps=4, lr_scheduler_type="linear", learning_rate=1e-3,
        resume_from_checkpoint=str(out / "checkpoint-4"))
    rates = {row["step"]: row["learning_rate"] for row in map(json.loads, (out / "metrics.jsonl").open())
             if "learning_rate" in row}
    # linear decay over 5 steps, no warmup: step s (1-based) trains at lr x (1 - (s - 1) / 5)
    assert rates[5] == pytest.approx(1e-3 * (1 - 4 / 5), rel=1e-9)  # the old code: 1e-3 x (1 - 4 / 8)
    assert rates[4] == pytest.approx(1e-3 * (1 - 3 / 8), rel=1e-9)  # before the resume: the first run's schedule


def _saved_tiny_model(folder: Path) -> None:
    from preflab.models.tiny import tiny_causal_lm

    tiny_causal_lm(vocab_size=64).save_pretrained(folder)


def test_unsafe_model_folders_are_refused_before_the_data_is_read(tmp_path):
    """A .bin-only folder and a folder whose model needs its shipped code were refused only when the model loaded,
    after the whole dataset had been read and tokenized (minutes on a real dataset)."""
    import json

    import torch as t

    from preflab.config import config_from_dict, preflight
    from preflab.errors import ConfigError, UnsafeLoadError
    from preflab.models.tiny import tiny_causal_lm

    pickled = tmp_path / "bin-only"
    model = tiny_causal_lm(vocab_size=64)
    model.config.save_pretrained(pickled)
    t.save(model.state_dict(), pickled / "pytorch_model.bin")
    custom = tmp_path / "custom"
    _saved_tiny_model(custom)
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="my_llama", auto_map={"AutoConfig": "configuration_my.MyConfig",
                                                   "AutoModelForCausalLM": "modeling_my.MyLM"})
    (custom / "config.json").write_text(json.dumps(config))
    known = tmp_path / "known-type-with-auto-map"  # transformers' own class loads it: not refused
    _saved_tiny_model(known)
    config = json.loads((known / "config.json").read_text())
    (known / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "x.Y"}}))

    def cfg(**kw):
        return config_from_dict({"model_name_or_path": str(known), "dataset_name": "data.jsonl",
                                 "output_dir": str(tmp_path / "out"), **kw})

    with pytest.raises(UnsafeLoadError, match="pytorch_model.bin.*allow_pickle"):
        preflight(cfg(model_name_or_path=str(pickled)))
    with pytest.raises(ConfigError, match=r"ref_model_name_or_path=.*configuration_my\.py, modeling_my\.py.*"
                                          r"trust_remote_code: true"):
        preflight(cfg(ref_model_name_or_path=str(custom)))
    preflight(cfg(model_name_or_path=str(pickled), allow_pickle=True, ref_model_name_or_path=str(custom),
                  trust_remote_code=True))
    preflight(cfg())


def test_trl_keep_end_keeps_the_sequences_end_without_a_note(capsys):
    """TRL 1.16's truncation_mode: keep_end keeps the end of prompt + response. preflab's used to cut prompts longer
    than max_prompt_length only (a note said keep_end without it changed nothing); it now cuts as TRL does."""
    from preflab.config import config_from_dict
    from preflab.data.examples import PairExample
    from preflab.data.tokenize import tokenize_pairs
    from preflab.models.tiny import tiny_tokenizer

    base = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl", "max_length": 16}
    assert config_from_dict({**base, "truncation_mode": "keep_end"}).truncation_mode == "keep_end"
    assert config_from_dict(base).truncation_mode is None  # TRL's default keep_start for sequences
    assert "truncation_mode" not in capsys.readouterr().err
    tok = tiny_tokenizer("char")
    row = [PairExample(row_id=0, prompt="the cat sat on", chosen=" the mat and ran", rejected=" a dog")]
    end, report = tokenize_pairs(row, tok, max_length=20, truncation_mode="keep_end")
    start, _ = tokenize_pairs(row, tok, max_length=20, truncation_mode="keep_start")
    assert (report.response_truncated, report.prompt_truncated) == (0, 1)
    assert tok.decode(end[0].prompt_ids + end[0].chosen_ids) == " on the mat and ran</s>"  # the last 20 tokens
    assert tok.decode(start[0].prompt_ids + start[0].chosen_ids) == "<s>the cat sat on the "


def test_model_card_and_summary_count_rows_skipped_at_tokenization(tmp_path):
    """With on_bad_row: skip, rows dropped at tokenization (a prompt that fills max_length) were missing from the
    model card ("skipped rows: {}") and from summary.json's data.skipped, though half the data was left out."""
    import json
    from types import SimpleNamespace

    from preflab.config import config_from_dict
    from preflab.loops.prepare import prepare_pairs
    from preflab.models.tiny import tiny_tokenizer
    from preflab.runlog import write_model_card

    rows = [{"prompt": f"echo: {'cat ' * (60 if i % 2 else 1)}\n", "chosen": "CAT HAT", "rejected": "cat hat"}
            for i in range(12)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
                            "max_length": 32, "on_bad_row": "skip"})
    train, _, report = prepare_pairs(cfg, tiny_tokenizer())
    assert len(train) == 6 and report["skipped"] == {"prompt_fills_max_length": 6}
    card_cfg = SimpleNamespace(loss_type="sigmoid", model_name_or_path="m", output_dir=str(tmp_path),
                               dataset_name=str(data), beta=0.1)
    write_model_card(tmp_path, card_cfg, {"global_step": 1, "train_examples_seen": 2, "data": report})
    assert "- training rows skipped: 6 (prompt_fills_max_length: 6)" in (tmp_path / "README.md").read_text()


def test_model_card_of_a_resumed_run_says_which_examples_it_counts(tmp_path):
    from types import SimpleNamespace

    from preflab.runlog import write_model_card

    cfg = SimpleNamespace(loss_type="sigmoid", model_name_or_path="m", output_dir=str(tmp_path), dataset_name="d",
                          beta=0.1)
    write_model_card(tmp_path, cfg, {"global_step": 125, "resumed_from_step": 115, "train_examples_seen": 80,
                                     "data": {"train_tokenize": {"skipped": {}, "response_truncated": 3}}})
    card = (tmp_path / "README.md").read_text()
    assert "- steps: 125, resumed from step 115 (80 examples trained after the resume)" in card  # was "seen: 80"
    assert "- training rows skipped: none; truncated: response 3" in card


def test_dashed_flags_that_are_no_option_are_not_told_to_become_overrides(capsys):
    """`preflab train CONFIG --dry-run` was told to write `dry-run=VALUE` (an unknown key in turn)."""
    from preflab.cli import main

    with pytest.raises(SystemExit):
        main(["train", str(ROOT / "examples" / "quickstart.yaml"), "--dry-run"])
    err = capsys.readouterr().err
    assert "--dry-run is not an option" in err and "preflab plan CONFIG" in err and "dry-run=VALUE" not in err
    with pytest.raises(SystemExit):
        main(["train", str(ROOT / "examples" / "quickstart.yaml"), "--torch_dtype", "bfloat16"])  # TRL's name
    assert "write torch_dtype=VALUE instead of --torch_dtype VALUE" in capsys.readouterr().err


def test_restore_callback_states_is_what_preflab_does_and_false_is_said(capsys):
    """The option used to be refused (checkpoints held no callback state); preflab now saves and restores it
    (tests/loops/test_best_model.py::test_resumed_early_stopping_stops_at_the_uninterrupted_runs_step)."""
    from preflab.config import config_from_dict

    base = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl"}
    config_from_dict({**base, "restore_callback_states_from_checkpoint": True})
    assert "restore_callback_states_from_checkpoint" not in capsys.readouterr().err
    config_from_dict({**base, "restore_callback_states_from_checkpoint": False})
    assert "preflab always restores the state of the callbacks" in capsys.readouterr().err


def test_accelerate_launch_num_processes_without_multi_gpu_is_refused_not_run_on_one_process(tmp_path,
                                                                                             monkeypatch):
    """`accelerate launch --num_processes 2 preflab train ...` (no --multi_gpu, no config file) on a CPU machine
    runs accelerate's simple launcher: one process (MASTER_ADDR set, no WORLD_SIZE), which trained on one process
    with half the global batch and only summary.json's world_size 1 to tell."""
    from preflab.errors import ConfigError

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")  # what accelerate's simple launcher sets
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(ConfigError, match=r"accelerate launch started one process.*--multi_gpu --num_processes N"):
        _tiny_run()(tmp_path / "run", max_steps=1)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")  # mpirun (accelerate's multi-CPU launch) sets its own sizes
    from preflab.loops.launch import check_launch_started_processes

    check_launch_started_processes()


def test_fresh_start_over_an_unfinished_run_with_checkpoints_is_refused(tmp_path):
    """A killed job restarted without resume_from_checkpoint started afresh with only a note claiming the old
    checkpoints "stay": each was replaced once the new run saved the same step (checkpoint-2 below)."""
    import json

    from preflab.errors import ConfigError

    run = _tiny_run()
    out = tmp_path / "run"
    run(out, max_steps=4, save_steps=2)
    (out / "summary.json").unlink()  # as a kill leaves it: checkpoints, no summary
    before = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["timeline"]
    with pytest.raises(ConfigError, match=r"did not finish, with checkpoints up to checkpoint-4.*"
                                          r"resume_from_checkpoint: true.*overwrite_output_dir: true"):
        run(out, max_steps=2, save_steps=2)
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["timeline"] == before
    run(out, max_steps=2, save_steps=2, overwrite_output_dir=True)  # asked for: starts afresh
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["timeline"] != before


def test_tokenizer_without_eos_is_named_with_how_to_fix_it(tmp_path):
    """A local tokenizer with no eos token stopped with "set tokenizer.eos_token before tokenizing", naming neither
    the folder nor how to set it for `preflab train`."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from preflab.data.examples import PairExample
    from preflab.data.tokenize import tokenize_pairs
    from preflab.errors import ConfigError
    from preflab.models.load import load_tokenizer
    from preflab.models.tiny import tiny_tokenizer

    folder = tmp_path / "my-tokenizer"
    backend = Tokenizer.from_str(tiny_tokenizer().backend_tokenizer.to_str())
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(folder)
    tok = load_tokenizer(str(folder))
    with pytest.raises(ConfigError, match=rf"tokenizer of '{folder}' has no eos token.*tokenizer_config\.json"):
        tokenize_pairs([PairExample(0, "a", " b", " c")], tok)


def test_resume_on_another_number_of_processes_must_keep_the_global_batch(tmp_path):
    """A 2-process checkpoint (8 x 2 = 16 a step) resumed by the same YAML on one process (8 a step) went on with
    only a note that the process count changed: the config comparison saw per_device_train_batch_size 8 == 8."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError
    from preflab.resume_check import check_global_batch

    def cfg(**kw):
        return config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl",
                                 "output_dir": str(tmp_path), "per_device_train_batch_size": 8, **kw})

    saved, state = cfg().to_dict(), {"world_size": 2}
    with pytest.raises(ConfigError, match=r"global batch of 16 \(per_device_train_batch_size 8 x 2 processes\) and "
                                          r"gradient_accumulation_steps 1, 16 examples an optimizer step; this run has "
                                          r"8 \(8 x 1\) and 1, 8 .*per_device_train_batch_size: 16"):
        check_global_batch(saved, state, cfg(), 1, "checkpoint-4")
    check_global_batch(saved, state, cfg(per_device_train_batch_size=16), 1, "checkpoint-4")  # the same run
    check_global_batch(saved, state, cfg(per_device_train_batch_size=4), 4, "checkpoint-4")
    notes = []
    check_global_batch(saved, state, cfg(allow_config_change=True), 1, "checkpoint-4", note=notes.append)
    assert "global batch of 16" in notes[0] and "allow_config_change" in notes[0]


def test_an_interrupted_multi_process_run_says_what_is_kept_once(monkeypatch, capsys):
    """torchrun forwards SIGTERM to every rank: each printed the same "terminated (SIGTERM) ..." message."""
    from accelerate.state import PartialState

    import preflab.cli as cli

    def terminated(args):
        raise cli.Terminated()

    monkeypatch.setattr(cli, "_handler", lambda args: terminated)
    monkeypatch.setattr(PartialState, "_shared_state", {})  # before accelerate is set up: RANK decides
    for rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        assert cli.main(["train", "model_name_or_path=builtin:tiny-llama"]) == 143
        assert ("terminated (SIGTERM)" in capsys.readouterr().err) is printed


def test_model_card_of_lora_adapters_shows_how_to_merge_them(tmp_path):
    """A LoRA run's card showed AutoModelForCausalLM.from_pretrained(output_dir) only (no way to the merged model;
    on a built-in base a hub lookup error). The card's snippet now runs and merges."""
    import re
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from preflab.models.tiny import tiny_tokenizer
    from preflab.runlog import write_model_card

    from preflab.models.tiny import tiny_causal_lm

    base, out = tmp_path / "base", tmp_path / "run"
    tiny_causal_lm(tiny_tokenizer()).save_pretrained(base)  # vocabulary = the tokenizer's (peft resizes otherwise)
    tiny_tokenizer().save_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    cfg = SimpleNamespace(loss_type="sigmoid", model_name_or_path=str(base), output_dir=str(out),
                          dataset_name="d", beta=0.1)
    write_model_card(out, cfg, {"global_step": 1})
    code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    names = {}
    exec(code, names)  # noqa: S102 - the card's own snippet
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert torch.allclose(names["merged"](ids).logits, model(ids).logits, atol=1e-5)
    write_model_card(out, SimpleNamespace(**{**vars(cfg), "model_name_or_path": "builtin:tiny-llama"}),
                     {"global_step": 1})
    assert f"preflab eval {out}" in (out / "README.md").read_text()


def test_no_checkpoint_message_names_the_timeline_rule_only_where_checkpoints_exist(tmp_path):
    from preflab.loops.resume import no_checkpoint_to_resume

    assert "holds no checkpoint-* folder" in no_checkpoint_to_resume(tmp_path)
    (tmp_path / "checkpoint-3").mkdir()  # e.g. a checkpoint of an abandoned timeline, or one without COMPLETE
    text = no_checkpoint_to_resume(tmp_path)
    assert "holds no complete checkpoint of its current run" in text and "rolled back or restarted" in text


def test_nothing_to_resume_is_said_before_the_data_is_read(tmp_path, capsys):
    """resume_from_checkpoint: true over a folder without checkpoints, or a mistyped checkpoint path, was refused
    only after the dataset had been read and tokenized (here: the data file is not even there)."""
    from preflab.cli import main

    base = ["train", "model_name_or_path=builtin:tiny-llama", f"dataset_name={tmp_path / 'pairs.jsonl'}",
            f"output_dir={tmp_path / 'run'}", "max_steps=2", "disable_tqdm=true"]
    assert main(base + ["resume_from_checkpoint=true"]) == 2
    # a folder with no checkpoint at all is said as such (docs-walk-3: the message spoke of rolled-back timelines)
    assert (f"{tmp_path / 'run'} holds no checkpoint-* folder (a run saves them every save_steps steps; with "
            "save_steps 0 it saves none)") in capsys.readouterr().err
    assert main(base + [f"resume_from_checkpoint={tmp_path / 'run' / 'checkpoint-99'}"]) == 2
    assert "checkpoint-99 does not exist" in capsys.readouterr().err


def test_checkpoint_and_model_files_are_readable_as_the_umask_says(tmp_path):
    """safetensors writes its files 0600: on a shared machine the team could read config.yaml and metrics.jsonl
    but not the checkpoints or the final model."""
    import os

    from preflab.checkpoint import share_run_files

    model, opt = _linear_and_optimizer()
    mask = os.umask(0o022)
    try:
        path = ck.save_checkpoint(tmp_path, 1, model, opt, None, {})
        final = tmp_path / "final"
        final.mkdir()
        ck.save_file({"w": torch.zeros(2)}, str(final / "model.safetensors"))
        (final / "private.key").write_text("x")
        os.chmod(final / "private.key", 0o400)
        share_run_files(final)
    finally:
        os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in path.iterdir()}
    assert modes["model.safetensors"] == modes["optimizer.safetensors"] == modes["rng.safetensors"] == 0o644
    assert (final / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (final / "private.key").stat().st_mode & 0o777 == 0o400  # a mode someone chose is left alone
    ck.verify_checkpoint(path)  # the marker's checksums still hold


def test_a_finished_runs_folder_is_noted_not_refused_and_its_last_checkpoint_resumes(tmp_path, capsys):
    """A finished run (summary.json) with checkpoints: a fresh start there gets the note, not the refusal meant for
    an unfinished run; its last checkpoint (step = max_steps) resumes with nothing left to train, returning the
    run's own summary; and resume_from_checkpoint "false" (a string, as a quoted YAML value gives it) asks for no
    resume."""
    from types import SimpleNamespace

    from preflab.loops.resume import earlier_run_note, resume_requested

    run = _tiny_run()
    out = tmp_path / "run"
    run(out, max_steps=4, save_steps=2)
    capsys.readouterr()
    assert "holds an earlier run (it ended at step 4)" in earlier_run_note(
        SimpleNamespace(output_dir=str(out), resume_from_checkpoint="false"))
    assert [resume_requested(SimpleNamespace(resume_from_checkpoint=v)) for v in ("false", "", None, False, True)] \
        == [False, False, False, False, True]
    kept = json.loads((out / "summary.json").read_text())
    summary, _ = run(out, max_steps=4, save_steps=2, resume_from_checkpoint=str(out / "checkpoint-4"))
    # nothing left to train: the run's own summary is returned and kept (tests/test_crash_leftovers.py)
    assert summary == kept and summary["global_step"] == 4 and summary["resumed_from_step"] is None
    assert f"{out} finished at step 4" in capsys.readouterr().out
