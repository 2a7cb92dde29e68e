"""Tests that pretend to be on a GPU machine replace torch.cuda's probes (`monkeypatch.setattr(torch.cuda,
"is_available", lambda: True)`, tests/test_reference_dtype.py, tests/test_qlora.py, tests/loops/test_fsdp2.py).
A replacement left behind would send every later test in the process down the GPU branches (a bf16 reference, a
GPU-sized LM-head chunk, device="cuda" in eval) on a machine without one. conftest.py checks after every test that
these are torch's own again (cuda_fakes_left), restores them if not, and fails the test that left them."""
import torch

CUDA_PROBES = ("is_available", "is_bf16_supported", "get_device_name", "mem_get_info", "device_count",
               "get_device_capability", "get_rng_state_all", "set_rng_state_all")
REAL = {name: getattr(torch.cuda, name) for name in CUDA_PROBES}


def cuda_fakes_left() -> list[str]:
    """The probes of torch.cuda that are not torch's own functions now."""
    return [name for name, real in REAL.items() if getattr(torch.cuda, name, None) is not real]


def restore_cuda_probes() -> list[str]:
    """Put torch's own probes back; returns the names that had been replaced."""
    left = cuda_fakes_left()
    for name in left:
        setattr(torch.cuda, name, REAL[name])
    return left
