"""Loading policy, reference and reward models (safetensors only by default), LoRA, tiny models for tests."""
