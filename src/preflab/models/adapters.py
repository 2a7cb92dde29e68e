"""What a model's adapters are: one test, shared by the trainers and the given-model checks."""
from __future__ import annotations

from torch import nn


def is_lora(model: nn.Module) -> bool:
    """A peft model with LoRA adapters (its reference can be itself with the adapters off: `disable_adapter()`)."""
    return hasattr(model, "disable_adapter")
