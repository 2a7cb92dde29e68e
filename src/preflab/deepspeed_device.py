"""DS_ACCELERATOR=cpu where DeepSpeed would pick its CPU accelerator anyway, so it does not warn that it picked it.

accelerate imports deepspeed whenever the package is installed (accelerate.utils.other.extract_model_from_parallel,
called by every run's unwrap_model), and deepspeed's import calls deepspeed.accelerator.get_accelerator(). Without
DS_ACCELERATOR in the environment, get_accelerator() probes, in order: torch.xpu, the packages torch_npu and
torch_sdaa, torch.mps, habana_frameworks (hpu), torch_mlu, torch_supa, torch_xmlir (klxpu), then torch.cuda
(device_count() > 0 and is_available()); where all of them fail it logs, at warning level, "Setting accelerator to
CPU. If you have GPU or other accelerator, we were unable to detect it." and uses its CPU accelerator. On a CPU
machine that line was printed by every `preflab train` with deepspeed installed, though nothing was wrong.

With DS_ACCELERATOR=cpu the same CPU accelerator is chosen ("override" instead of "auto detect") without the warning.
preflab sets it only where the answer is certain to be the same (deepspeed_accelerator_default):
- the user's DS_ACCELERATOR, whatever it is (an empty value included), is never replaced;
- every accelerator DeepSpeed knows (its SUPPORTED_ACCELERATOR_LIST, read from its source without importing it:
  importing any deepspeed module runs the detection) is one preflab can probe; a DeepSpeed that knows another one
  leaves the environment alone;
- no probe finds a device. The probes lean towards "found": an installed vendor package counts (DeepSpeed picks npu
  or hpu on a successful import alone), MPS counts where torch is built with it, and a probe that raises counts.

Everything else (deepspeed not installed, deepspeed already imported: its choice is made once per process) also
leaves the environment alone. The variable stays set after the run, as the other process-wide settings a run makes
(it names what detection gives on this machine, so a later run or a child process chooses as it would have).
"""
from __future__ import annotations

import ast
import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

# DeepSpeed's accelerator name -> the package whose installation alone makes DeepSpeed pick it (real_accelerator.py)
VENDOR_PACKAGES = {"npu": "torch_npu", "sdaa": "torch_sdaa", "hpu": "habana_frameworks", "mlu": "torch_mlu",
                   "supa": "torch_supa", "klxpu": "torch_xmlir"}
# the accelerators probed through torch itself (torch_devices); "cpu" is the fallback, not a device
TORCH_DEVICES = ("cuda", "xpu", "mps")
PROBED = frozenset(VENDOR_PACKAGES) | frozenset(TORCH_DEVICES) | {"cpu"}


def deepspeed_accelerator_default(deepspeed_knows: Iterable[str] | None, found: Iterable[str],
                                  env: Mapping[str, str]) -> str | None:
    """The DS_ACCELERATOR value to set: "cpu" when DeepSpeed's own detection is certain to end at its CPU
    accelerator, else None (leave the environment alone).

    deepspeed_knows: DeepSpeed's SUPPORTED_ACCELERATOR_LIST (None: deepspeed not installed, or its list unreadable);
    found: the accelerators the probes found (or could not rule out); env: the environment as it is."""
    if "DS_ACCELERATOR" in env or deepspeed_knows is None:
        return None
    if not set(deepspeed_knows) <= PROBED:  # a DeepSpeed with an accelerator preflab does not probe
        return None
    return None if any(True for _ in found) else "cpu"


def deepspeed_accelerators() -> list[str] | None:
    """SUPPORTED_ACCELERATOR_LIST of the installed deepspeed, read from deepspeed/accelerator/real_accelerator.py's
    source (importing it would run the detection); None without deepspeed or where the list is not a literal."""
    try:
        spec = importlib.util.find_spec("deepspeed")
    except (ImportError, ValueError):
        return None
    folders = getattr(spec, "submodule_search_locations", None)
    for folder in folders or ():
        path = os.path.join(folder, "accelerator", "real_accelerator.py")
        try:
            tree = ast.parse(Path(path).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SUPPORTED_ACCELERATOR_LIST"
                                                     for t in node.targets)):
                try:
                    names = ast.literal_eval(node.value)
                except ValueError:
                    return None
                return [str(n) for n in names] if isinstance(names, (list, tuple)) else None
    return None


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return True  # cannot tell: count it as there


def torch_devices() -> list[str]:
    """The accelerators this process's torch has, or that could not be ruled out: cuda (device_count() > 0, DeepSpeed's
    first condition), xpu (torch.xpu.is_available()), mps (torch built with it: DeepSpeed's own MPS probe,
    torch.mps.current_allocated_memory(), may succeed where torch.backends.mps.is_available() does not), and
    "accelerator" for any other device torch.accelerator reports (a PrivateUse1 backend: NPU, HPU, ...)."""
    import torch

    found = []
    probes = (("cuda", lambda: torch.cuda.device_count() > 0),
              ("xpu", lambda: hasattr(torch, "xpu") and torch.xpu.is_available()),
              ("mps", lambda: torch.backends.mps.is_built() or torch.backends.mps.is_available()),
              ("accelerator", lambda: hasattr(torch, "accelerator") and torch.accelerator.is_available()))
    for name, probe in probes:
        try:
            present = bool(probe())
        except Exception:  # a probe that fails cannot rule its device out
            present = True
        if present:
            found.append(name)
    return found


def found_accelerators() -> list[str]:
    """torch_devices() and each DeepSpeed vendor package that is installed (by its DeepSpeed accelerator name)."""
    return torch_devices() + [name for name, package in VENDOR_PACKAGES.items() if _installed(package)]


def quiet_deepspeed_cpu_detection(env=None) -> str | None:
    """Set DS_ACCELERATOR=cpu (setdefault) where deepspeed_accelerator_default says so, before anything imports
    deepspeed; returns the value set, or None where the environment was left alone (deepspeed already imported
    included: its choice is made)."""
    env = os.environ if env is None else env
    if "deepspeed" in sys.modules or "DS_ACCELERATOR" in env:
        return None
    knows = deepspeed_accelerators()
    value = deepspeed_accelerator_default(knows, found_accelerators() if knows is not None else (), env)
    if value is not None:
        env.setdefault("DS_ACCELERATOR", value)
    return value
