"""Two runs in one Python process with different settings (a notebook's bf16 run, then a float32 one): each trains
with its own precision (preflab.loops.accelerate_reuse resets accelerate's process-wide state), and under a
distributed launch the second is refused naming both precisions."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import run  # noqa: E402


def _clear_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def clean_accelerate_state():
    """Each test starts with no accelerate state and leaves none (later tests in this worker build their own)."""
    _clear_accelerate_state()
    yield
    _clear_accelerate_state()


def _trained(tmp_path, name, bf16):
    summary, trainer = run(tmp_path / name, max_steps=3, logging_steps=1000, bf16=bf16)
    assert summary["global_step"] == 3
    weights = {k: v.detach().float().clone() for k, v in trainer.accelerator.unwrap_model(trainer.policy)
               .state_dict().items()}
    return trainer.accelerator.mixed_precision, weights


@pytest.mark.parametrize("first_bf16", [True, False], ids=["bf16_then_fp32", "fp32_then_bf16"])
def test_second_run_in_process_trains_with_its_own_precision(tmp_path, clean_accelerate_state, first_bf16, capsys):
    """The second run's weights equal those of the same config trained first in a clean process state (before the
    fix accelerate refused it: 'AcceleratorState has already been initialized and cannot be changed')."""
    alone_precision, alone = _trained(tmp_path, "alone", bf16=not first_bf16)
    _clear_accelerate_state()
    first_precision, first = _trained(tmp_path, "first", bf16=first_bf16)
    second_precision, second = _trained(tmp_path, "second", bf16=not first_bf16)
    wanted = "no" if first_bf16 else "bf16"
    assert (first_precision, alone_precision, second_precision) == ("no" if wanted == "bf16" else "bf16", wanted,
                                                                     wanted)
    assert alone.keys() == second.keys()
    assert all(torch.equal(alone[k], second[k]) for k in alone)
    assert not all(torch.equal(first[k], second[k]) for k in first)  # the precision changes the trained weights
    assert "it was reset and this run builds its own" in capsys.readouterr().out


def test_second_run_with_other_precision_refused_under_distributed_state(tmp_path, clean_accelerate_state,
                                                                         monkeypatch):
    """Under a distributed launch accelerate's state holds the process group: it is not reset, the run is refused
    naming both precisions (faked: the first run's state says 2 processes)."""
    from accelerate.state import PartialState

    from preflab.errors import ConfigError

    _trained(tmp_path, "first", bf16=False)
    monkeypatch.setitem(PartialState._shared_state, "num_processes", 2)
    with pytest.raises(ConfigError) as caught:
        run(tmp_path / "second", max_steps=3, bf16=True)
    assert str(caught.value) == (
        "an earlier run in this Python process set accelerate's process-wide state, and this run asks for other "
        "settings (precision: the earlier run set float32 (no mixed precision), this run asks for bfloat16 mixed "
        "precision (bf16: true)). Under a distributed launch (2 processes) preflab cannot reset that state without "
        "breaking the process group every rank shares. Launch each configuration on its own (one `accelerate "
        "launch` / `preflab train` per config), or give both runs the same settings.")
    assert PartialState._shared_state["num_processes"] == 2  # the state was left as it was
    assert not (tmp_path / "second").exists()  # refused before output_dir was claimed
