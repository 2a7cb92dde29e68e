"""Batched generation from token ids (left-padded), used by the demo, evaluation and online loops."""
from __future__ import annotations

import torch


@torch.no_grad()
def generate_ids(model, prompts: list[list[int]], *, eos_id: int, pad_id: int, max_new_tokens: int = 32,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64,
                 seed: int | None = None, **sampling) -> list[list[int]]:
    """Response ids for each prompt (without the prompt, cut after the first eos, eos kept). sampling: further
    `model.generate` sampling options (top_k, min_p, repetition_penalty), passed with do_sample only."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if seed is not None:
        torch.manual_seed(seed)
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        ids, attn = left_padded(prompts[start:start + batch_size], pad_id)
        kwargs = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, **sampling)
        gen = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), **kwargs)
        out += cut_after_eos(gen[:, ids.shape[1]:], eos_id)
    model.train(was_training)
    return out


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[len(prompts), longest] token ids, left-padded with pad_id, and their attention mask (0 on the padding)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        attn[i, width - len(p):] = 1
    return ids, attn


def cut_after_eos(generated: torch.Tensor, eos_id: int) -> list[list[int]]:
    """Each row of generated ids up to and including its first eos (the whole row when it has none)."""
    out = []
    for row in generated.tolist():
        out.append(row[:row.index(eos_id) + 1] if eos_id in row else row)
    return out


def generate_text(model, tokenizer, prompt_ids: list[list[int]], **kwargs) -> list[str]:
    ids = generate_ids(model, prompt_ids, eos_id=tokenizer.eos_token_id,
                       pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                       **kwargs)
    return [tokenizer.decode(r, skip_special_tokens=True) for r in ids]
