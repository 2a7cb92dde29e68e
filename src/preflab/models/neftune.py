"""NEFTune (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning", arXiv:2310.05914), as
transformers' Trainer runs it for every TRL trainer (`neftune_noise_alpha`).

While the input-embedding module is in training mode, its output E of shape [B, L, d] becomes

    E + U(-1, 1) * alpha / sqrt(L * d)

with L = E.size(1) (the sequence length of the batch as the embedding sees it: the padded width) and d = E.size(2)
(the hidden size). The bound is computed as transformers computes it (alpha over the square root of an integer
tensor: a float32 number), the noise is drawn in E's dtype on E's device from torch's global generator (so a
checkpoint's saved RNG state resumes it exactly), and nothing is added in eval mode. Which runs may use it (and so
which L it sees) is preflab.neftune_options.

    handle = add_neftune_hook(model, alpha)   # on model.get_input_embeddings(); handle.remove() takes it off
"""
from __future__ import annotations

import torch
from torch import nn


def neftune_bound(alpha: float, length: int, hidden: int) -> float:
    """alpha / sqrt(L * d), rounded through float32 as transformers' hook computes it."""
    return float(alpha / torch.sqrt(torch.tensor(length * hidden)))


def noisy_embeddings(embeddings: torch.Tensor, alpha: float) -> torch.Tensor:
    """embeddings [B, L, d] + uniform noise in (-bound, bound), bound = neftune_bound(alpha, L, d); the noise has
    embeddings' dtype and device and comes from torch's global generator of that device."""
    bound = neftune_bound(alpha, embeddings.size(1), embeddings.size(2))
    return embeddings + torch.zeros_like(embeddings).uniform_(-bound, bound)


class NEFTuneHook:
    """A forward hook for an embedding module: noisy_embeddings(output, alpha) while the module trains, else the
    output unchanged."""

    def __init__(self, alpha: float):
        self.alpha = float(alpha)

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return noisy_embeddings(output, self.alpha) if module.training else output


def add_neftune_hook(model: nn.Module, alpha: float):
    """Register NEFTuneHook(alpha) on model.get_input_embeddings() (a PEFT model's is its base model's); returns the
    removable handle."""
    embeddings = model.get_input_embeddings()
    if embeddings is None:
        raise ValueError(f"{type(model).__name__} has no input embeddings (get_input_embeddings() is None); "
                         "NEFTune cannot be applied")
    return embeddings.register_forward_hook(NEFTuneHook(alpha))
