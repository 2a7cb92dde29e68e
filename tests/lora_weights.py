"""LoRA test models: peft starts every adapter as a no-op (B = 0), so a test that needs adapters which change the
model draws B ~ N(0, std^2) in place with torch's global generator (randomize_lora_b)."""
import torch


def randomize_lora_b(model: torch.nn.Module, std: float = 0.1) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
