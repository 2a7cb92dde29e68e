"""What the launcher asked for, read from the variables it sets (accelerate launch, torchrun): how many processes it
started (WORLD_SIZE) and the engine the accelerate config names (ACCELERATE_USE_FSDP with FSDP_VERSION,
ACCELERATE_USE_DEEPSPEED). Plain reads of os.environ, before any process group or Accelerator exists: the training
loops' launch checks (preflab.loops.launch) read them, and so do the layers below the loops that must know how they
were launched (preflab.cli, preflab.recipes, preflab.recipe_state), without importing the loops.
"""
from __future__ import annotations

import os


def launched_world_size() -> int:
    """Processes the launcher started (accelerate launch / torchrun set WORLD_SIZE), 1 for a plain run."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def env_flag(name: str) -> bool:
    """An accelerate launcher's boolean variable ("true" / "1"), False when unset."""
    return os.environ.get(name, "false").lower() in ("true", "1")


def fsdp_version_asked() -> int | None:
    """The FSDP version the accelerate config asks for (`distributed_type: FSDP`, fsdp_version), None without."""
    if not env_flag("ACCELERATE_USE_FSDP"):
        return None
    try:
        return int(os.environ.get("FSDP_VERSION", "1"))
    except ValueError:
        return 1


def deepspeed_asked() -> bool:
    """Whether the accelerate config asks for DeepSpeed (`distributed_type: DEEPSPEED`)."""
    return env_flag("ACCELERATE_USE_DEEPSPEED")
