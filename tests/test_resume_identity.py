"""A resume continues the same run or says why not: the training examples and the preflab version a checkpoint was
written with are checked; Ctrl-C and SIGTERM name what is kept."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

import preflab.checkpoint as ck
from preflab.cli import main
from preflab.errors import ConfigError
from preflab.resume_check import CHECKPOINT_FORMAT

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "loops"))
import tiny_run  # noqa: E402
from tiny_run import run  # noqa: E402


def _max_diff(a, b):
    a, b = load_file(str(Path(a) / "model.safetensors")), load_file(str(Path(b) / "model.safetensors"))
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_resume_refuses_training_examples_that_changed_since_the_checkpoint(tmp_path, monkeypatch, capsys):
    """The config names the data, not what it holds: a file edited in place (or a changed tokenizer) gives other
    token ids under the same config. The old code resumed on them without a word."""
    run(tmp_path / "straight", max_steps=4)
    out = tmp_path / "run"
    run(out, max_steps=4, save_steps=2)
    ckpt2 = str(out / "checkpoint-2")
    original = tiny_run.synthetic_pairs

    def edited(n=32, seed=0):
        pairs = original(n, seed)
        pairs[5].chosen_ids = [7, 8, 9, 2]  # one response of one row edited
        return pairs

    monkeypatch.setattr(tiny_run, "synthetic_pairs", edited)
    with pytest.raises(ConfigError, match=r"training examples differ from those .*checkpoint-2 was trained on.*"
                                          r"allow_config_change: true"):
        run(out, max_steps=4, save_steps=2, resume_from_checkpoint=ckpt2)
    capsys.readouterr()
    summary, _ = run(out, max_steps=4, save_steps=2, resume_from_checkpoint=ckpt2, allow_config_change=True)
    assert summary["resumed_from_step"] == 2
    assert "resuming on changed training examples" in capsys.readouterr().out
    monkeypatch.setattr(tiny_run, "synthetic_pairs", original)  # the original data: resumed, and exact
    summary, _ = run(out, max_steps=4, save_steps=2, resume_from_checkpoint=ckpt2)
    assert summary["resumed_from_step"] == 2
    assert _max_diff(tmp_path / "straight", out) <= 1e-6


def _reseal(checkpoint: Path, **changes) -> None:
    """Edit trainer_state.json as another preflab would have written it, and seal it again (COMPLETE)."""
    state_file = checkpoint / "trainer_state.json"
    state = {**json.loads(state_file.read_text()), **changes}
    state = {k: v for k, v in state.items() if v is not None}
    state_file.write_text(json.dumps(state))
    marker = json.loads((checkpoint / ck.MARKER).read_text())
    marker["files"] = ck.file_records(checkpoint)
    (checkpoint / ck.MARKER).write_text(json.dumps(marker))


def test_checkpoint_of_a_newer_format_is_refused_and_another_version_is_noted(tmp_path, capsys):
    out = tmp_path / "run"
    run(out, max_steps=2, save_steps=2)
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["preflab_checkpoint_format"] == CHECKPOINT_FORMAT and state["preflab_version"]
    _reseal(out / "checkpoint-2", preflab_version="9.0.0", preflab_checkpoint_format=CHECKPOINT_FORMAT + 1)
    with pytest.raises(ConfigError, match=r"checkpoint-2 was written by preflab 9\.0\.0 in checkpoint format 2; "
                                          r"this preflab .* reads format 1 or older"):
        run(out, max_steps=4, resume_from_checkpoint=True)
    _reseal(out / "checkpoint-2", preflab_version="0.1.0", preflab_checkpoint_format=CHECKPOINT_FORMAT)
    capsys.readouterr()
    summary, _ = run(out, max_steps=3, resume_from_checkpoint=True)
    assert summary["resumed_from_step"] == 2
    assert "was written by preflab 0.1.0; resuming with preflab" in capsys.readouterr().out


def test_ctrl_c_names_the_latest_checkpoint_or_that_there_is_none(tmp_path, monkeypatch, capsys):
    from preflab.loops.offline import Trainer

    real = Trainer.micro_batches

    def interrupt_at_step_3(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(Trainer, "micro_batches", interrupt_at_step_3)
    args = ["train", str(ROOT / "examples" / "quickstart.yaml"), "max_steps=6", "per_device_train_batch_size=2",
            "eval_fraction=0", "eval_steps=0", "disable_tqdm=true", "max_length=64"]
    assert main([*args, f"output_dir={tmp_path / 'a'}", "save_steps=2"]) == 130
    err = capsys.readouterr().err
    assert f"interrupted. The latest finished checkpoint is {tmp_path / 'a' / 'checkpoint-2'} (step 2)" in err
    assert main([*args, f"output_dir={tmp_path / 'b'}", "save_steps=0"]) == 130
    assert "holds no finished checkpoint of this run" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_stops_with_a_message_naming_the_latest_checkpoint(tmp_path):
    """SIGTERM (a scheduler's preemption) used to end the process without a word."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "preflab.cli", "train", str(ROOT / "examples" / "quickstart.yaml"),
                             f"output_dir={out}", "max_steps=100000", "save_steps=2", "per_device_train_batch_size=2",
                             "eval_fraction=0", "eval_steps=0", "disable_tqdm=true", "max_length=64",
                             "logging_steps=1000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ck.list_checkpoints(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    latest = ck.latest_checkpoint(out)  # SIGTERM inside the steps: the step under way is saved (preflab.stop_signal)
    assert f"terminated (SIGTERM). Saved {latest} (step {ck.checkpoint_step(latest)}) before stopping" in err


def test_a_full_disk_while_writing_metrics_is_an_error_naming_the_file_and_the_checkpoint_to_resume(tmp_path,
                                                                                                 monkeypatch):
    """The old code let the OSError out (a traceback at the CLI), saying neither the file nor what was kept."""
    import errno

    from preflab.errors import PreflabError
    from preflab.runlog import MetricsLog

    real = MetricsLog.write

    def full_after_step_3(self, row):
        if row.get("step", 0) > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real(self, row)

    monkeypatch.setattr(MetricsLog, "write", full_after_step_3)
    out = tmp_path / "run"
    with pytest.raises(PreflabError, match=rf"{out / 'metrics.jsonl'}: No space left on device\. The latest "
                                           rf"finished checkpoint is {out / 'checkpoint-2'} \(step 2\); the steps after "
                                           rf"it are lost\. Set resume_from_checkpoint: true"):
        run(out, max_steps=6, save_steps=2)
    monkeypatch.setattr(MetricsLog, "write", real)
    summary, _ = run(out, max_steps=6, save_steps=2, resume_from_checkpoint=True)
    assert summary["resumed_from_step"] == 2


USER_LOSS = '''
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, logratios


@dataclass(frozen=True)
class MyDPO(Objective):
    beta: float = 0.1

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        losses = -F.logsigmoid(self.beta * (h_w - h_l))
        return ObjectiveOutput(losses.mean(), losses, {})
'''


def test_resume_refuses_user_code_edited_since_the_checkpoint(tmp_path, capsys):
    """`loss_type: my_losses.py:MyDPO` names the file, not what it holds: an objective edited between the checkpoint
    and the resume trained the rest of the run with another loss under the same config, without a word (found in the
    extending trial). The checkpoint records the file's sha256 (trainer_state.json user_code); a changed file is
    refused unless allow_config_change, then said in a note. The same file resumes exactly."""
    losses = tmp_path / "my_losses.py"
    losses.write_text(USER_LOSS)
    spec = f"{losses}:MyDPO"
    run(tmp_path / "straight", max_steps=4, loss_type=spec)
    out = tmp_path / "run"
    run(out, max_steps=4, save_steps=2, loss_type=spec)
    ckpt2 = out / "checkpoint-2"
    saved = json.loads((ckpt2 / "trainer_state.json").read_text())["user_code"]
    assert saved == {str(losses): {"file": str(losses.resolve()), "sha256": __import__("hashlib").sha256(
        losses.read_bytes()).hexdigest()}}
    summary, _ = run(out, max_steps=4, save_steps=2, loss_type=spec, resume_from_checkpoint=str(ckpt2))
    assert summary["resumed_from_step"] == 2 and _max_diff(tmp_path / "straight", out) <= 1e-6
    losses.write_text(USER_LOSS.replace("self.beta * (h_w - h_l)", "2 * self.beta * (h_w - h_l)"))
    with pytest.raises(ConfigError, match=r"user code the run trained with changed since .*checkpoint-2 was saved: "
                                          r".*my_losses\.py \(.*: edited\).*allow_config_change: true"):
        run(out, max_steps=4, save_steps=2, loss_type=spec, resume_from_checkpoint=str(ckpt2))
    capsys.readouterr()
    summary, _ = run(out, max_steps=4, save_steps=2, loss_type=spec, resume_from_checkpoint=str(ckpt2),
                     allow_config_change=True)
    assert summary["resumed_from_step"] == 2
    assert "resuming with changed code (allow_config_change: true)" in capsys.readouterr().out


def test_user_code_records_only_what_the_run_names():
    """A user file another run of the same process loaded (a notebook, a test session) is not this run's code."""
    from preflab.plugins import _LOADED, user_code

    _LOADED["elsewhere.py"] = Path(__file__)
    try:
        assert "elsewhere.py" not in user_code({"loss_type": "sigmoid", "reward_funcs": ["mine.py:f"]})
        assert user_code({"reward_funcs": ["elsewhere.py:f"]})["elsewhere.py"]["file"] == str(Path(__file__))
    finally:
        del _LOADED["elsewhere.py"]


def test_a_run_whose_max_length_was_capped_at_the_models_positions_resumes_and_a_changed_max_length_is_refused(
        tmp_path, capsys):
    """max_length unset (default 1024) on builtin:tiny-llama (512 positions): the run caps it to 512 and its
    checkpoints save 512; the resume compared that with its own 1024, before its model was read, and refused its
    own run ("max_length (512 -> 1024)"). Now compared after the checkpoint's cap: the resume ends on the
    uninterrupted run's weights, and a max_length the user changed below the positions is still refused."""
    config = tmp_path / "no_max_length.yaml"
    lines = (ROOT / "examples" / "quickstart.yaml").read_text().splitlines()
    config.write_text("\n".join(line.replace("examples/data/", f"{ROOT}/examples/data/") for line in lines
                                if not line.startswith("max_length:")) + "\n")
    out = tmp_path / "run"
    args = ["train", str(config), "max_steps=4", "save_steps=2", "per_device_train_batch_size=2", "eval_fraction=0",
            "eval_steps=0", "disable_tqdm=true", "logging_steps=100", f"output_dir={out}"]
    assert main(args) == 0
    assert "max_length=1024 is above the 512 positions of builtin:tiny-llama" in capsys.readouterr().out
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["config"]["max_length"] == 512 and state["model_positions"] == 512
    straight = tmp_path / "straight"
    straight.mkdir()
    (straight / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    resume = [*args, f"resume_from_checkpoint={out / 'checkpoint-2'}"]
    assert main([*resume, "max_length=256"]) != 0
    assert "max_length (512 -> 256)" in capsys.readouterr().err
    assert main(resume) == 0
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == 2
    assert _max_diff(straight, out) <= 1e-6
