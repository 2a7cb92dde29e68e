"""preflab.deepspeed_device: DS_ACCELERATOR=cpu only where DeepSpeed's own detection would end at its CPU accelerator
(and so only its "unable to detect" warning goes away), never over the user's DS_ACCELERATOR."""
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from preflab import deepspeed_device
from preflab.deepspeed_device import (deepspeed_accelerator_default, deepspeed_accelerators,
                                      quiet_deepspeed_cpu_detection, torch_devices)

DS_LIST = ["cuda", "cpu", "xpu", "npu", "mps", "hpu", "mlu", "sdaa", "supa", "klxpu"]  # deepspeed 0.19's
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_cpu_only_where_no_device_is_found_and_the_user_set_nothing():
    assert deepspeed_accelerator_default(DS_LIST, [], {}) == "cpu"
    assert deepspeed_accelerator_default(DS_LIST, [], {"PATH": "/bin"}) == "cpu"
    for device in ("cuda", "xpu", "mps", "npu", "hpu", "mlu", "sdaa", "supa", "klxpu", "accelerator"):
        assert deepspeed_accelerator_default(DS_LIST, [device], {}) is None, device


def test_the_users_ds_accelerator_is_never_replaced():
    for value in ("cuda", "cpu", "", "npu"):
        assert deepspeed_accelerator_default(DS_LIST, [], {"DS_ACCELERATOR": value}) is None
        env = {"DS_ACCELERATOR": value}
        assert quiet_deepspeed_cpu_detection(env) is None
        assert env == {"DS_ACCELERATOR": value}


def test_nothing_without_deepspeed_or_with_an_accelerator_preflab_does_not_probe():
    assert deepspeed_accelerator_default(None, [], {}) is None
    assert deepspeed_accelerator_default(DS_LIST + ["tpu"], [], {}) is None  # a later DeepSpeed's new device
    assert deepspeed_accelerator_default(["cuda", "cpu"], [], {}) == "cpu"  # an older one's shorter list


def test_the_environment_is_set_only_as_decided(monkeypatch):
    monkeypatch.delitem(sys.modules, "deepspeed", raising=False)
    monkeypatch.setattr(deepspeed_device, "deepspeed_accelerators", lambda: list(DS_LIST))
    monkeypatch.setattr(deepspeed_device, "found_accelerators", lambda: [])
    env = {"HOME": "/h"}
    assert quiet_deepspeed_cpu_detection(env) == "cpu"
    assert env == {"HOME": "/h", "DS_ACCELERATOR": "cpu"}
    monkeypatch.setattr(deepspeed_device, "found_accelerators", lambda: ["cuda"])
    env = {"HOME": "/h"}
    assert quiet_deepspeed_cpu_detection(env) is None and env == {"HOME": "/h"}
    monkeypatch.setitem(sys.modules, "deepspeed", object())  # already imported: its choice is made
    monkeypatch.setattr(deepspeed_device, "found_accelerators", lambda: [])
    assert quiet_deepspeed_cpu_detection(env) is None and env == {"HOME": "/h"}


def test_the_torch_probes_count_a_device_or_a_probe_that_fails(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert "cuda" in torch_devices()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert "cuda" not in torch_devices()

    def broken():
        raise RuntimeError("driver error")
    monkeypatch.setattr(torch.cuda, "device_count", broken)
    assert "cuda" in torch_devices()


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="needs deepspeed")
def test_the_list_read_from_deepspeeds_source_is_the_one_it_imports():
    from deepspeed.accelerator import real_accelerator

    assert deepspeed_accelerators() == list(real_accelerator.SUPPORTED_ACCELERATOR_LIST)


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="needs deepspeed")
def test_importing_deepspeed_after_it_picks_cpu_without_the_warning():
    """In a fresh process on this CPU machine: without the call deepspeed warns and picks cpu; with it, it picks cpu
    (set by override) and does not warn. Skipped on a machine with a device (the call then leaves things alone)."""
    if deepspeed_device.found_accelerators():
        pytest.skip("this machine has an accelerator: the call sets nothing here")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"} | {"PYTHONPATH": SRC}
    code = ("import sys\nfrom preflab.deepspeed_device import quiet_deepspeed_cpu_detection\n"
            "print(quiet_deepspeed_cpu_detection() if sys.argv[1] == 'on' else None)\n"
            "from deepspeed.accelerator import get_accelerator\nprint(get_accelerator().device_name())\n")
    runs = {mode: subprocess.run([sys.executable, "-c", code, mode], env=env, capture_output=True, text=True,
                                 timeout=600) for mode in ("off", "on")}
    said = {mode: run.stdout.strip().splitlines() for mode, run in runs.items()}  # deepspeed logs to stdout too
    assert [said["off"][0], said["off"][-1]] == ["None", "cpu"], runs["off"].stderr
    assert "unable to detect" in runs["off"].stderr + runs["off"].stdout
    assert [said["on"][0], said["on"][-1]] == ["cpu", "cpu"], runs["on"].stderr
    assert "unable to detect" not in runs["on"].stderr + runs["on"].stdout


def test_mps_counts_where_torch_is_built_with_it_and_any_other_torch_accelerator_counts(monkeypatch):
    """DeepSpeed's MPS probe (torch.mps.current_allocated_memory()) can succeed where torch.backends.mps.is_available()
    is False, so a torch built with MPS counts; a PrivateUse1 device torch.accelerator reports counts too."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    assert torch_devices() == []
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    assert torch_devices() == ["mps"]
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    assert torch_devices() == ["accelerator"]


def test_an_installed_vendor_package_or_one_that_cannot_be_looked_up_counts(monkeypatch):
    """DeepSpeed picks npu / hpu / ... on a successful import of the vendor's package alone, so an installed one is
    a device found; a package whose lookup raises cannot be ruled out and counts as there."""
    monkeypatch.setattr(deepspeed_device, "torch_devices", lambda: [])
    find_spec = importlib.util.find_spec
    vendors = set(deepspeed_device.VENDOR_PACKAGES.values())
    answers = {}

    def find(name, *args, **kwargs):
        if name not in vendors:
            return find_spec(name, *args, **kwargs)
        if isinstance(answers.get(name), Exception):
            raise answers[name]
        return answers.get(name)

    monkeypatch.setattr(importlib.util, "find_spec", find)
    assert deepspeed_device.found_accelerators() == []
    answers.update(torch_npu=importlib.machinery.ModuleSpec("torch_npu", None),
                   habana_frameworks=ValueError("habana_frameworks.__spec__ is None"))
    assert deepspeed_device.found_accelerators() == ["npu", "hpu"]
    assert deepspeed_accelerator_default(DS_LIST, deepspeed_device.found_accelerators(), {}) is None


def _fake_deepspeed(root, list_source):
    """A package named deepspeed under root whose accelerator/real_accelerator.py sets the list as list_source."""
    (root / "deepspeed" / "accelerator").mkdir(parents=True)
    (root / "deepspeed" / "__init__.py").write_text("raise ImportError('the test reads this package, never imports it')\n")
    (root / "deepspeed" / "accelerator" / "real_accelerator.py").write_text(
        f"import os\nSUPPORTED_ACCELERATOR_LIST = {list_source}\n")


def test_a_list_deepspeed_does_not_write_as_a_literal_is_unknown_and_sets_nothing(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "deepspeed", raising=False)
    monkeypatch.setattr(deepspeed_device, "found_accelerators", lambda: [])
    _fake_deepspeed(tmp_path / "literal", '["cuda", "cpu"]')
    _fake_deepspeed(tmp_path / "computed", '["cuda", "cpu"] + os.environ.get("EXTRA", "").split()')
    monkeypatch.syspath_prepend(str(tmp_path / "literal"))
    assert deepspeed_accelerators() == ["cuda", "cpu"]
    env = {}
    assert quiet_deepspeed_cpu_detection(env) == "cpu" and env == {"DS_ACCELERATOR": "cpu"}
    monkeypatch.syspath_prepend(str(tmp_path / "computed"))
    assert deepspeed_accelerators() is None  # cannot tell which accelerators it knows
    env = {}
    assert quiet_deepspeed_cpu_detection(env) is None and env == {}
