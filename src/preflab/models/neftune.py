"""NEFTune (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning", arXiv:2310.05914), as
transformers' Trainer runs it for every TRL trainer (`neftune_noise_alpha`).

While the input-embedding module is in training mode, its output E of shape [B, L, d] becomes

    E + U(-1, 1) * alpha / sqrt(L * d)

with L = E.size(1) (the sequence length of the batch as the embedding sees it: the padded width) and d = E.size(2)
(the hidden size). The bound is computed as transformers computes it (alpha over the square root of an integer
tensor: a float32 number), the noise is drawn in E's dtype on E's device from torch's global generator (so a
checkpoint's saved RNG state resumes it exactly), and nothing is added in eval mode. Which runs may use it (and so
which L it sees) is preflab.neftune_options.

Several processes (DDP): transformers seeds every rank's global generator with the same seed, so ranks whose
batches have the same shape draw the same noise (with N ranks each noise tensor is used N times in the global
batch; the method's noise is independent per token). Here rank r draws the k-th noisy forward of optimizer step s
from a generator of its own seeded by rank_noise_seed(seed, r, s, k): independent between ranks, the same on every
launch, and resumed exactly from the step without any RNG state. One process keeps transformers' global generator.

    handle = add_neftune_hook(model, alpha)   # on model.get_input_embeddings(); handle.remove() takes it off
    handle = add_neftune_hook(model, alpha, RankNoise(seed, rank, lambda: step))   # several processes
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torch import nn


def neftune_bound(alpha: float, length: int, hidden: int) -> float:
    """alpha / sqrt(L * d), rounded through float32 as transformers' hook computes it."""
    return float(alpha / torch.sqrt(torch.tensor(length * hidden)))


def noisy_embeddings(embeddings: torch.Tensor, alpha: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """embeddings [B, L, d] + uniform noise in (-bound, bound), bound = neftune_bound(alpha, L, d); the noise has
    embeddings' dtype and device and comes from `generator` (None: torch's global generator of that device)."""
    bound = neftune_bound(alpha, embeddings.size(1), embeddings.size(2))
    return embeddings + torch.zeros_like(embeddings).uniform_(-bound, bound, generator=generator)


def rank_noise_seed(seed: int, rank: int, step: int, k: int) -> int:
    """The seed of rank `rank`'s k-th noisy forward (0-based) of optimizer step `step` (0-based) under several
    processes: 63 bits of sha256("neftune:seed:rank:step:k")."""
    digest = hashlib.sha256(f"neftune:{seed}:{rank}:{step}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class RankNoise:
    """The generators of one rank's noise: the k-th call during optimizer step current_step() gets a generator on
    `device` seeded by rank_noise_seed(seed, rank, step, k)."""

    def __init__(self, seed: int, rank: int, current_step: Callable[[], int]):
        self.seed, self.rank, self.current_step = int(seed), int(rank), current_step
        self.step, self.k = None, 0

    def __call__(self, device: torch.device) -> torch.Generator:
        step = self.current_step()
        if step != self.step:
            self.step, self.k = step, 0
        generator = torch.Generator(device=device).manual_seed(rank_noise_seed(self.seed, self.rank, step, self.k))
        self.k += 1
        return generator


class NEFTuneHook:
    """A forward hook for an embedding module: noisy_embeddings(output, alpha) while the module trains, else the
    output unchanged. generators: RankNoise (several processes), None for torch's global generator."""

    def __init__(self, alpha: float, generators: RankNoise | None = None):
        self.alpha, self.generators = float(alpha), generators

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        if self.generators is None:
            return noisy_embeddings(output, self.alpha)
        return noisy_embeddings(output, self.alpha, self.generators(output.device))


def add_neftune_hook(model: nn.Module, alpha: float, generators: RankNoise | None = None):
    """Register NEFTuneHook(alpha, generators) on model.get_input_embeddings() (a PEFT model's is its base model's);
    returns the removable handle."""
    embeddings = model.get_input_embeddings()
    if embeddings is None:
        raise ValueError(f"{type(model).__name__} has no input embeddings (get_input_embeddings() is None); "
                         "NEFTune cannot be applied")
    return embeddings.register_forward_hook(NEFTuneHook(alpha, generators))
