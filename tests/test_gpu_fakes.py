"""conftest's guard against a faked torch.cuda left behind by a test (tests/gpu_fakes.py)."""
import torch

from gpu_fakes import cuda_fakes_left, restore_cuda_probes


def test_a_cuda_probe_replaced_without_monkeypatch_is_named_and_restored():
    real = torch.cuda.is_available
    torch.cuda.is_available = lambda: True  # what a test must not do: nothing would undo it
    try:
        assert cuda_fakes_left() == ["is_available"]
        assert torch.cuda.is_available() is True
    finally:
        assert restore_cuda_probes() == ["is_available"]
    assert torch.cuda.is_available is real and cuda_fakes_left() == []


def test_a_monkeypatched_probe_is_undone_before_the_guard_looks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (2**40, 2**40))
    assert cuda_fakes_left() == ["mem_get_info"]  # undone by monkeypatch's teardown, before conftest's check
