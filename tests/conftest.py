import os
from contextlib import contextmanager

import pytest
import torch

# Tiny models run faster on one thread than two (DESIGN.md, conventions).
torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


class StopRun(Exception):
    """A run interrupted on purpose by the `stop_at_step` fixture."""


@pytest.fixture
def stop_at_step():
    """`with stop_at_step(run, step): run.train()`: the run (any TrainingRun with `micro_batches(step)`, e.g. an
    OnlineRun) is interrupted when it asks for the micro-batches of `step`, as if killed there; the block must end
    with that interruption (else the test fails), and `run.micro_batches` is restored afterwards."""

    @contextmanager
    def stop(run, step: int):
        original = run.micro_batches

        def micro_batches(s):
            if s == step:
                raise StopRun(f"stopped at step {step}")
            return original(s)

        run.micro_batches = micro_batches
        try:
            with pytest.raises(StopRun):
                yield
        finally:
            run.micro_batches = original

    return stop
