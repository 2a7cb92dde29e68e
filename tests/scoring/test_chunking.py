"""The LM-head chunk budget comes from the device: CPU keeps 64 MiB; an accelerator gets 1/32 of its free memory,
clamped to [64 MiB, 1 GiB], read once per device."""
import torch

import preflab.scoring.chunking as chunking
from preflab.scoring.chunking import CHUNK_BYTES, chunk_budget_bytes, chunk_for_budget, head_chunk_budget

GIB, MIB = 2**30, 2**20


def test_budget_from_free_memory():
    assert chunk_budget_bytes("cpu", 100 * GIB) == CHUNK_BYTES == 64 * MIB
    assert chunk_budget_bytes("cuda", None) == CHUNK_BYTES
    assert chunk_budget_bytes("cuda", 8 * GIB) == 256 * MIB  # 8 GiB / 32
    assert chunk_budget_bytes("cuda", 130 * GIB) == 1 * GIB  # capped (a larger one measured no faster)
    assert chunk_budget_bytes("cuda", 1 * GIB) == 64 * MIB  # floored at the CPU budget


def test_chunk_positions_from_budget():
    # Qwen2's 151,936-token vocabulary: 256 MiB of float32 logits hold 441 positions; with token KL half that
    assert chunk_for_budget(256 * MIB, 151936) == 441
    assert chunk_for_budget(256 * MIB, 151936, factor=2) == 220
    assert chunk_for_budget(64 * MIB, 8192) == 2048  # the CPU default on the benchmark fixture, as before
    assert chunk_for_budget(MIB, 10**7) == 16  # never below 16


def test_device_budget_is_read_once_per_device(monkeypatch):
    free = iter([16 * GIB, 2 * GIB])
    monkeypatch.setattr(chunking, "_free_bytes", lambda device: next(free))
    monkeypatch.setattr(chunking, "_budgets", {})
    device = torch.device("cuda", 7)  # never touched: only its type and index are read
    assert head_chunk_budget(device) == 512 * MIB
    assert head_chunk_budget(device) == 512 * MIB  # same chunk length every step, although free memory changed
    assert head_chunk_budget(torch.device("cpu")) == CHUNK_BYTES


def test_an_lm_head_keeps_its_budget_until_it_moves(monkeypatch):
    """chunk_budget_of: the device's budget, kept on the head (the compiled scorer reads it there, not in the
    module-level dict); a head moved to another device reads that device's."""
    from torch import nn

    from preflab.scoring.chunking import chunk_budget_of

    free = iter([16 * GIB, 2 * GIB])
    monkeypatch.setattr(chunking, "_free_bytes", lambda device: next(free))
    monkeypatch.setattr(chunking, "_budgets", {})
    head = nn.Linear(4, 8, device="meta")  # never computed on: only the weight's device is read
    assert chunk_budget_of(head) == 512 * MIB
    chunking._budgets.clear()
    assert chunk_budget_of(head) == 512 * MIB  # kept on the head: the dict was not read again
    assert chunk_budget_of(head.to_empty(device="cpu")) == CHUNK_BYTES


def test_free_memory_is_read_from_the_devices_backend(monkeypatch):
    """_free_bytes: torch.cuda.mem_get_info's free bytes on CUDA (faked: no GPU is touched), another accelerator
    backend's mem_get_info where it has one, None where it has none; head_chunk_budget sizes the chunk from it."""
    from types import SimpleNamespace

    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: asked.append(device) or (96 * GIB, 141 * GIB))
    monkeypatch.setattr(chunking, "_budgets", {})
    device = torch.device("cuda", 0)
    assert chunking._free_bytes(device) == 96 * GIB and asked == [device]
    assert head_chunk_budget(device) == 1 * GIB  # 96 GiB / 32 = 3 GiB, capped
    monkeypatch.setattr(torch, "xpu", SimpleNamespace(mem_get_info=lambda device: (4 * GIB, 8 * GIB)), raising=False)
    assert chunking._free_bytes(torch.device("xpu", 0)) == 4 * GIB
    monkeypatch.setattr(torch, "xpu", SimpleNamespace(), raising=False)
    assert chunking._free_bytes(torch.device("xpu", 0)) is None
    assert head_chunk_budget(torch.device("xpu", 1)) == CHUNK_BYTES  # unknown free memory: the CPU budget


def test_lm_head_chunks_cover_every_position_once_in_eager_and_equal_windows():
    """10 positions in chunks of 4. Eagerly [0, 4), [4, 8), [8, 10). In equal windows (torch.compile: one graph of
    size 4) the last window is [6, 10) and its first 2 outputs (positions 6, 7, the chunk before's) are dropped."""
    from preflab.scoring.lm import _chunk_slices

    eager = _chunk_slices(10, 4, equal_windows=False)
    equal = _chunk_slices(10, 4, equal_windows=True)
    assert eager == [(slice(0, 4), slice(None)), (slice(4, 8), slice(None)), (slice(8, 10), slice(None))]
    assert equal == [(slice(0, 4), slice(None)), (slice(4, 8), slice(None)), (slice(6, 10), slice(2, None))]
    for n in (3, 8, 9, 10, 12):
        for windows in (False, True):
            kept = [p for fed, keep in _chunk_slices(n, 4, equal_windows=windows) for p in list(range(n))[fed][keep]]
            assert kept == list(range(n))
