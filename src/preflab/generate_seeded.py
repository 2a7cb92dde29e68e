"""Sampling whose draws belong to the rows, not to the batch: each prompt has a seed of its own, and its completion
depends only on that seed and the model's logits for it, so the same rows split over several processes (or micro-
batches of another size) sample the same completions as one batch on one process (up to the float noise of padded
batched matmuls in the logits, which moves a sample only where two perturbed scores tie).

Rule (the Gumbel-max trick: argmax_v (s_v + G_v) with G_v i.i.d. standard Gumbel is a draw from softmax(s)): at each
new token of row i, the scores s are the model's last-position logits through transformers' sampling chain for the
given settings, in `generate`'s order (repetition penalty, temperature, top-k, top-p, min-p: sampling_chain), and
G = -log(-log U) with U ~ Uniform(0, 1)^V drawn (float64, on the scores' device: the CPU's stream on a CPU, the
CUDA one on a GPU) from row i's own torch.Generator. The token is
then argmax(s + G), taken by `generate`'s greedy path (do_sample=False), so finished rows, eos and padding are
`generate`'s. The law of each token is transformers' do_sample law for the same settings (softmax of the same
scores, the same one TRL's trainers sample from); only the source of randomness differs (torch.multinomial on the
global generator there).
"""
from __future__ import annotations

import torch

from preflab.generate import cut_after_eos, left_padded


def sampling_chain(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float | None = None,
                   repetition_penalty: float = 1.0):
    """transformers' LogitsProcessorList of `generate(do_sample=True, ...)` for these settings, in its order (the
    repetition penalty is a processor, applied before the sampling warpers); an inactive setting adds nothing
    (temperature 1, top_k 0, top_p 1, min_p None, repetition_penalty 1), as there."""
    from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper,
                                                        RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    chain = LogitsProcessorList()
    if repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(penalty=float(repetition_penalty)))
    if temperature != 1.0:
        chain.append(TemperatureLogitsWarper(float(temperature)))
    if top_k:
        chain.append(TopKLogitsWarper(top_k=int(top_k), min_tokens_to_keep=1))
    if top_p < 1.0:
        chain.append(TopPLogitsWarper(top_p=float(top_p), min_tokens_to_keep=1))
    if min_p is not None:
        chain.append(MinPLogitsWarper(min_p=float(min_p), min_tokens_to_keep=1))
    return chain


def gumbel_noise(generator: torch.Generator, size: int) -> torch.Tensor:
    """[size] float64 standard Gumbel draws -log(-log U) from `generator`, on its device (U kept inside (0, 1))."""
    u = torch.rand(size, generator=generator, dtype=torch.float64, device=generator.device)
    tiny = torch.finfo(torch.float64).tiny
    return -torch.log(-torch.log(u.clamp(tiny, 1.0 - 2 ** -53)))


class RowSeededSampler:
    """A logits processor for `generate`'s greedy path: the sampling chain, then each row's own Gumbel noise (module
    docstring), so the greedy argmax is a sample. One generator per row, in the batch's row order."""

    def __init__(self, seeds: list[int], chain):
        self.chain = chain
        self.seeds = [int(s) for s in seeds]
        self.generators: list[torch.Generator] = []  # made on the scores' device at the first token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != len(self.seeds):
            raise RuntimeError(f"row-seeded sampling: {scores.shape[0]} rows scored for {len(self.seeds)} seeds.")
        if not self.generators:  # on the scores' device (a CUDA stream: the same on GPUs of one kind)
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        scores = self.chain(input_ids, scores)
        noise = torch.stack([gumbel_noise(g, scores.shape[-1]) for g in self.generators])
        return (scores.double() + noise).to(scores.dtype)


@torch.no_grad()
def generate_ids_row_seeded(model, prompts: list[list[int]], seeds: list[int], *, eos_id: int, pad_id: int,
                            max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                            min_p: float | None = None, repetition_penalty: float = 1.0) -> list[list[int]]:
    """Each prompt's sampled completion ids (without the prompt, cut after the first eos, eos kept), row i drawn from
    seeds[i] alone (module docstring), in one left-padded batch. The model's own generation config adds no sampling
    setting (the chain is built from the arguments alone); the global random state is not read or changed."""
    from transformers.generation.logits_process import LogitsProcessorList

    if len(seeds) != len(prompts):
        raise ValueError(f"row-seeded sampling: {len(seeds)} seeds for {len(prompts)} prompts.")
    if not prompts:
        return []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids, attn = left_padded(prompts, pad_id)
    sampler = RowSeededSampler(seeds, sampling_chain(temperature, top_k, top_p, min_p, repetition_penalty))
    try:
        gen = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=False, num_beams=1,
                             max_new_tokens=int(max_new_tokens), eos_token_id=eos_id, pad_token_id=pad_id,
                             repetition_penalty=1.0, logits_processor=LogitsProcessorList([sampler]))
    finally:
        model.train(was_training)
    return cut_after_eos(gen[:, ids.shape[1]:], eos_id)
