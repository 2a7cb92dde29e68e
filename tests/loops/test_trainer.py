"""The trainer's exactness guarantees: accumulation, processes, resume after SIGKILL, the non-finite guard."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from preflab.errors import NonFiniteError

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import run  # noqa: E402

SCRIPT = Path(__file__).parent / "tiny_run.py"


def weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def losses(path):
    return [json.loads(line)["loss"] for line in open(Path(path) / "metrics.jsonl") if '"loss"' in line]


def test_accumulation_equals_large_batch(tmp_path):
    run(tmp_path / "big", per_device_train_batch_size=4)
    run(tmp_path / "acc", per_device_train_batch_size=2, gradient_accumulation_steps=2)
    assert max_diff(weights(tmp_path / "big"), weights(tmp_path / "acc")) < 1e-5
    assert losses(tmp_path / "big") == pytest.approx(losses(tmp_path / "acc"), abs=1e-5)


def test_logging_first_step_logs_step_one_then_every_logging_steps(tmp_path):
    """logging_first_step (transformers' DefaultFlowCallback): a row after step 1, then every logging_steps and at
    the end; each row averages the steps since the previous row (here checked against a run logging every step)."""
    run(tmp_path / "every", logging_steps=1)
    run(tmp_path / "first", logging_steps=4, logging_first_step=True)
    run(tmp_path / "plain", logging_steps=4)
    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "first" / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}
    every = losses(tmp_path / "every")
    assert sorted(rows) == [1, 4, 6]
    plain = (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in plain] == [4, 6]
    assert rows[1]["loss"] == pytest.approx(every[0], abs=1e-6)
    assert rows[4]["loss"] == pytest.approx(sum(every[1:4]) / 3, abs=1e-6)  # steps 2..4, not 1..4
    assert rows[6]["loss"] == pytest.approx(sum(every[4:6]) / 2, abs=1e-6)


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_uninterrupted_run(tmp_path, kill_when):
    steps = dict(max_steps=240, save_steps=20)
    out = tmp_path / "killed"
    args = [f"{k}={v}" for k, v in steps.items()]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    with kill_when(proc, out / "checkpoint-60" / "COMPLETE", within_s=120):
        run(tmp_path / "full", **steps)  # meanwhile, the uninterrupted run in this process
    assert not (out / "model.safetensors").exists(), "killed too late to test resume"
    summary, _ = run(out, resume_from_checkpoint=True, **steps)
    assert summary["resumed_from_step"] >= 60
    assert max_diff(weights(tmp_path / "full"), weights(out)) <= 1e-6
    logged = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
    assert logged == sorted(set(logged)), "metrics.jsonl must not repeat steps after resume"


def test_nonfinite_steps_are_skipped_then_stop_with_checkpoint(tmp_path, monkeypatch):
    from preflab.loops.offline import Trainer

    original = Trainer.forward
    calls = {"n": 0}

    def poisoned(self, mb):
        calls["n"] += 1
        out = original(self, mb)
        if calls["n"] in (2, 4, 5, 6):  # step 2 alone, then steps 4-6 in a row
            out.loss = out.loss * float("nan")
            out.losses = out.losses * float("nan")
        return out

    monkeypatch.setattr(Trainer, "forward", poisoned)
    with pytest.raises(NonFiniteError, match="non-finite steps in a row") as err:
        run(tmp_path, max_steps=10, max_nonfinite_steps=3)
    ckpt = tmp_path / "checkpoint-6"
    assert str(ckpt) in str(err.value)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert [s["step"] for s in state["nonfinite"]] == [2, 4, 5, 6]
    assert all(len(s["row_ids"]) == 4 for s in state["nonfinite"])
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [row["step"] for row in logged if row.get("nonfinite")] == [2, 4, 5, 6]
    # the saved weights are those after step 3, the last good update: a run poisoned at step 2 only, saved at 3
    bad_only_two = {"n": 0}

    def poison_two(self, mb):
        bad_only_two["n"] += 1
        out = original(self, mb)
        if bad_only_two["n"] == 2:
            out.loss, out.losses = out.loss * float("nan"), out.losses * float("nan")
        return out

    monkeypatch.setattr(Trainer, "forward", poison_two)
    run(tmp_path / "clean", max_steps=10, save_steps=3)
    assert max_diff(weights(ckpt), weights(tmp_path / "clean" / "checkpoint-3")) == 0.0
