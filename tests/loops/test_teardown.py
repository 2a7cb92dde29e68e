"""What a finished run holds of its process group (TrainingRun._drop_ddp_wrapper) and what a stopped one leaves
(preflab.cli.drop_tracebacks). A gloo group freed during Python's finalization aborted a rank at exit in CI (SIGABRT,
"terminate called without an active exception"); the 2-process launches that check the whole path are
tests/loops/test_ref_sync.py (a module-level trainer), tests/loops/test_scale_matrix.py (`preflab train`, KTO under
DDP) and tests/online/test_online_run.py (an online run)."""
import gc
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from preflab.cli import drop_tracebacks

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import run  # noqa: E402


@pytest.fixture
def one_rank_group(free_port, monkeypatch):
    """A gloo process group of one rank in this process (DDP needs one), closed after the test."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("compiled", [False, True])
def test_a_finished_ddp_run_holds_the_unwrapped_scorer_and_frees_the_wrapper(tmp_path, one_rank_group, compiled):
    """A trained tiny run whose scorer is DDP-wrapped as accelerate wraps it on several processes (the attributes
    scorer and sync_module hold the wrapper): after _drop_ddp_wrapper they hold the module inside, the wrapper is
    gone (a weak reference to it is dead, with no collection by the test; the first wrapper of a process can also be
    held by a reference cycle that its constructor's lazy imports leave, until the collector runs: planted here as a
    cycle), and the loss of a micro-batch is the one computed through the wrapper. compiled: accelerate's dynamo_backend compiles around the wrapper (torch.compile's module, not called
    here, so nothing is compiled): the same."""
    _, trainer = run(tmp_path, max_steps=1)
    scorer = trainer.scorer
    gc.disable()  # the only collection is the one _drop_ddp_wrapper makes
    try:
        wrapper = torch.nn.parallel.DistributedDataParallel(scorer)
        trainer.scorer = trainer.sync_module = wrapper
        mb = trainer.micro_batches(0)[0]
        through_wrapper = trainer.forward(mb).loss  # with gradients: the wrapper's forward as in a step
        through_wrapper.backward()
        if compiled:
            trainer.scorer = trainer.sync_module = torch.compile(wrapper)
        gone = weakref.ref(wrapper)
        garbage = [wrapper]  # a reference cycle holding the wrapper, as torch's first DDP constructor leaves one
        garbage.append(garbage)
        del wrapper, garbage
        trainer._drop_ddp_wrapper()
        assert gone() is None
    finally:
        gc.enable()
    assert trainer.scorer is scorer and trainer.sync_module is scorer
    with torch.no_grad():
        assert trainer.forward(mb).loss.item() == pytest.approx(through_wrapper.item(), abs=1e-7)


def test_a_run_without_a_ddp_wrapper_is_left_as_it_is(tmp_path):
    """One process (no wrapper): nothing is rebound and accelerate's prepared models stay as they are."""
    _, trainer = run(tmp_path, max_steps=1)
    before = dict(vars(trainer)), list(trainer.accelerator._models)
    trainer._drop_ddp_wrapper()
    assert all(vars(trainer)[k] is v for k, v in before[0].items()) and trainer.accelerator._models == before[1]


class Held:
    """Something a stopped run's frames hold (its trainer, in `preflab train`)."""


def _fail(held):
    raise ValueError("inner")


def _stop(held):
    try:
        _fail(held)
    except ValueError as inner:
        raise RuntimeError("outer") from inner


def test_drop_tracebacks_frees_what_the_frames_of_an_error_and_its_causes_held():
    """The error of a stopped run keeps the frames it passed through (and their locals) alive through its traceback
    and its cause's; drop_tracebacks frees them, so preflab.cli closes the process group with the run gone."""
    held = Held()
    alive = weakref.ref(held)
    try:
        _stop(held)
    except RuntimeError as err:
        caught = err
    del held
    assert alive() is not None  # the frames of _stop and _fail hold it
    drop_tracebacks(caught)
    assert alive() is None
    assert str(caught) == "outer" and str(caught.__cause__) == "inner"  # the messages are kept


def _run_that_forms_a_group_then_fails(held_alive: list, port: int):
    """A `preflab train` handler that forms a process group (as a launched run does), holds a run-like object in its
    frame and fails with an error that is not preflab's."""
    def handler(args):
        import os

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=0, world_size=1)
        run_object = Held()
        held_alive.append(weakref.ref(run_object))
        raise RuntimeError("planted failure in the run")

    return handler


def test_an_unexpected_error_of_a_launched_run_closes_its_group_with_the_run_freed(monkeypatch, free_port, capsys):
    """A run that fails with an error not preflab's after it formed the process group: `preflab train` prints the
    traceback (through sys.excepthook, as Python would), frees what the failed frames held, then closes the group,
    and exits 1; before, the error escaped main() with the group open and the run alive to interpreter exit. Without a
    group the error still escapes as it is."""
    import preflab.cli as cli

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    held, freed_before_close = [], []
    destroy = dist.destroy_process_group
    monkeypatch.setattr(dist, "destroy_process_group",
                        lambda *a, **k: (freed_before_close.append(held[0]() is None), destroy(*a, **k)))
    monkeypatch.setattr(cli, "_handler", lambda args: _run_that_forms_a_group_then_fails(held, free_port()))
    try:
        assert cli.main(["train", "config.yaml"]) == 1
        assert not dist.is_initialized() and freed_before_close == [True]
        assert "RuntimeError: planted failure in the run" in capsys.readouterr().err
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

    monkeypatch.setattr(cli, "_handler", lambda args: _fail)
    with pytest.raises(ValueError, match="inner"):
        cli.main(["train", "config.yaml"])
