"""A second run in the same Python process: accelerate's process-wide state made to match this run's settings.

accelerate keeps one AcceleratorState per process (a shared dict: the first Accelerator sets the mixed precision,
the device, the dynamo plugin, and later ones reuse them). A notebook that trains a bf16 config and then a float32
one got accelerate's "AcceleratorState has already been initialized and cannot be changed, restart your runtime"
(and under DeepSpeed, whose check accelerate skips, the second run kept the first's precision silently; a GPU run
after a use_cpu one stayed on the CPU, and a changed ACCELERATE_DYNAMO_BACKEND was ignored).

So before a run builds its Accelerator, the state an earlier run left is compared with what this run asks for:
- the same settings: the state is reused as before (DeepSpeed on CPU reuses the first run's plugin and group);
- different settings in a single, non-distributed process: accelerate's state is reset (AcceleratorState and
  PartialState, and GradientState) and this run builds it afresh;
- different settings under a distributed launch (several processes, a process group, DeepSpeed or FSDP): resetting
  would drop the process group every rank shares, so the run is refused naming both settings.

The gradient accumulation plugin needs no check: GradientState takes each Accelerator's plugin (accelerate updates
its plugin_kwargs when they differ); device_placement is a per-Accelerator attribute, not shared state.
"""
from __future__ import annotations

from preflab.errors import ConfigError

_PRECISION_NAMES = {"bf16": "bfloat16 mixed precision (bf16: true)", "fp16": "float16 mixed precision (fp16: true)",
                    "no": "float32 (no mixed precision)", "fp8": "fp8 mixed precision"}


def earlier_settings() -> dict | None:
    """What an earlier Accelerator in this process set in accelerate's shared state (precision, device, dynamo
    backend), None when no Accelerator was built yet (or the state was reset)."""
    from accelerate.state import AcceleratorState

    if not AcceleratorState._shared_state or "_mixed_precision" not in AcceleratorState._shared_state:
        return None
    state = AcceleratorState()  # attaches to the initialized shared state; changes nothing
    dynamo = getattr(state, "dynamo_plugin", None)
    return {"precision": state.mixed_precision,  # under DeepSpeed: its config's bf16 / fp16, as accelerate reads it
            "device": "cpu" if state.device.type == "cpu" else state.device.type,
            "dynamo": str(getattr(dynamo, "backend", "NO")).rsplit(".", 1)[-1].upper()}


def wanted_settings(precision: str, on_cpu: bool) -> dict:
    """What this run's Accelerator asks for. precision: accelerate's name (bf16 / fp16 / no); on_cpu: the run
    trains on the CPU (use_cpu, or a machine without an accelerator device)."""
    from accelerate.utils import TorchDynamoPlugin

    return {"precision": precision, "device": "cpu" if on_cpu else "accelerator",
            "dynamo": str(TorchDynamoPlugin().backend).rsplit(".", 1)[-1].upper()}  # ACCELERATE_DYNAMO_BACKEND


def _differences(before: dict, wanted: dict) -> list[str]:
    out = []
    if before["precision"] != wanted["precision"]:
        out.append(f"precision: the earlier run set {_PRECISION_NAMES.get(before['precision'], before['precision'])}"
                   f", this run asks for {_PRECISION_NAMES.get(wanted['precision'], wanted['precision'])}")
    if (before["device"] == "cpu") != (wanted["device"] == "cpu"):
        out.append(f"device: the earlier run set {before['device']}, this run asks for {wanted['device']}")
    if before["dynamo"] != wanted["dynamo"]:
        out.append(f"dynamo backend: the earlier run set {before['dynamo']}, this run asks for {wanted['dynamo']}")
    return out


def _distributed() -> str | None:
    """Why accelerate's state belongs to a distributed launch (then it must not be reset), None otherwise."""
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    shared = PartialState._shared_state
    kind = shared.get("distributed_type", DistributedType.NO)
    if kind != DistributedType.NO:
        return f"accelerate runs {str(kind).rsplit('.', 1)[-1]}"
    if shared.get("num_processes", 1) > 1:
        return f"{shared['num_processes']} processes"
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return "a torch.distributed process group is formed"
    return None


def match_accelerate_state(precision: str, on_cpu: bool) -> str | None:
    """Make accelerate's process-wide state fit this run before its Accelerator is built (see the module
    docstring). Returns the note to print when an earlier run's state was reset (None when nothing changed);
    raises ConfigError under a distributed launch whose state differs."""
    before = earlier_settings()
    if before is None:
        return None
    differences = _differences(before, wanted_settings(precision, on_cpu))
    if not differences:
        return None
    why = _distributed()
    if why:
        raise ConfigError(
            "an earlier run in this Python process set accelerate's process-wide state, and this run asks for other "
            f"settings ({'; '.join(differences)}). Under a distributed launch ({why}) preflab cannot reset that "
            "state without breaking the process group every rank shares. Launch each configuration on its own "
            "(one `accelerate launch` / `preflab train` per config), or give both runs the same settings.")
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return ("preflab: note: an earlier run in this Python process left accelerate's process-wide state with other "
            f"settings ({'; '.join(differences)}); it was reset and this run builds its own.")
