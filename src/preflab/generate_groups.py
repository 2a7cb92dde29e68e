"""K sampled completions per prompt with each prompt prefilled once (its KV cache shared by its K completions).

    ids = generate_groups(model, prompts, 4, eos_id=eos, pad_id=pad, max_new_tokens=32, temperature=1.0,
                          top_p=1.0, seed=7)        # [len(prompts) * 4], completion i belongs to prompt i // 4

Same result as generate_ids(model, [p for p in prompts for _ in range(k)], do_sample=True, batch_size=len * k,
seed=seed): the P distinct prompts (left-padded to width W) run through the model once over their first W - 1
positions; that cache is repeated K times per prompt (group-major) and `model.generate` continues from it on the
repeated [P * K, W] batch (it runs only the uncached last prompt position, then decodes), with the same sampling
settings, the same seed set before the first draw, and the same position ids (attention-mask cumsum, 0 on the
padding), so the random draws and what they draw from are the old path's. The logits differ from the old path's by
float rounding only (the last prompt position is computed in a one-token step instead of inside the full prefill).
The prefill-once step itself is prefilled_generate (on a padded batch, with optional processor tensors), which the
image-text generator (online/vision.py) uses too.

Only a transformers DynamicCache made of full-attention or sliding-window layers is repeated; any other cache
(linear-attention / recurrent states, KV sharing, indexed attention, a cache_implementation on the generation
config, a model that does not fill the cache it is given) falls back to prefilling the repeated batch, and says why
once per process.
"""
from __future__ import annotations

import inspect

import torch

from preflab.generate import cut_after_eos, generate_ids, left_padded

_SAID: set[str] = set()


def _say_once(why: str) -> None:
    if why not in _SAID:
        _SAID.add(why)
        print(f"preflab: note: generation prefills each prompt once per completion (as before): {why}")


def _forward_params(model) -> dict:
    """The parameters of the forward that runs under `model` (a PEFT wrapper passes its keyword arguments on)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inspect.signature(inner.forward).parameters


def _why_not_before(model) -> str | None:
    """Why this model's cache cannot be prefilled once and shared, as far as the model tells before running it."""
    name = type(model).__name__
    if "cache" not in _forward_params(model):
        return f"{name}'s forward takes no `cache` argument"
    if getattr(model.generation_config, "cache_implementation", None) is not None:
        return f"{name}'s generation config sets cache_implementation={model.generation_config.cache_implementation!r}"
    if hasattr(model, "_supports_default_dynamic_cache") and not model._supports_default_dynamic_cache():
        return f"{name} keeps its own cache (no transformers DynamicCache)"
    return None


def _why_not_after(model, cache, width: int) -> str | None:
    """Why the cache the prefill filled cannot be repeated per completion (None: it can)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    name = type(model).__name__
    if type(cache) is not DynamicCache:
        return f"{name}'s cache is a {type(cache).__name__}, not a plain DynamicCache"
    kinds = {type(layer) for layer in cache.layers}
    if not kinds <= {DynamicLayer, DynamicSlidingWindowLayer}:
        others = sorted(k.__name__ for k in kinds - {DynamicLayer, DynamicSlidingWindowLayer})
        return f"{name}'s cache has {', '.join(others)} layers (only full-attention and sliding-window KV layers " \
               "repeat)"
    if cache.get_seq_length() != width - 1:
        return f"{name} did not fill the cache it was given ({cache.get_seq_length()} of {width - 1} positions)"
    return None


@torch.no_grad()
def generate_groups(model, prompts: list[list[int]], k: int, *, eos_id: int, pad_id: int, max_new_tokens: int,
                    temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                    do_sample: bool = True, **sampling) -> list[list[int]]:
    """k completions per prompt (sampled; greedy with do_sample=False), group-major, each cut after its first eos
    (eos kept). sampling: further `model.generate` sampling options (top_k, min_p, repetition_penalty), passed with
    do_sample only."""
    def old_path():
        return generate_ids(model, [p for p in prompts for _ in range(k)], eos_id=eos_id, pad_id=pad_id,
                            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
                            batch_size=len(prompts) * k, seed=seed, **sampling)

    width = max(len(p) for p in prompts)
    if k == 1 or width == 1:  # nothing to share
        return old_path()
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        ids, attn = left_padded(prompts, pad_id)
        kwargs = dict(temperature=temperature, top_p=top_p, **sampling) if do_sample else {}
        gen = prefilled_generate(model, ids.to(device), attn.to(device), k, seed=seed, do_sample=do_sample,
                                 max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id, **kwargs)
        if gen is None:
            return old_path()
        return cut_after_eos(gen[:, width:], eos_id)
    finally:
        model.train(was_training)


def prefilled_generate(model, ids: torch.Tensor, attn: torch.Tensor, k: int, *, seed: int | None,
                       inputs: dict | None = None, **generate_kwargs) -> torch.Tensor | None:
    """`model.generate(**generate_kwargs)` on the left-padded [P, W] batch `ids` / `attn` with every row repeated k
    times (group-major), each row prefilled once: [P * k, W + new] ids, or None (said once) when the cache cannot be
    shared (the caller then generates on the repeated batch). The model is in eval mode.

    `inputs` are the processor's other tensors for the P rows (image-text models: pixel_values, image_grid_thw, ...):
    they reach the prefill only (the image encoder runs once per prompt); per-token ones (*token_type_ids) are cut
    to its W - 1 positions. The prefill's position ids are the model's own for generation
    (`_prepare_position_ids_for_generation`: attention-mask cumsum, or Qwen2-VL-style 3-D rope positions); a
    per-row `rope_deltas` the model keeps for decoding (Qwen2-VL) is repeated k times like the cache."""
    from transformers import DynamicCache

    if (why := _why_not_before(model)) is not None:
        _say_once(why)
        return None
    inputs = dict(inputs or {})
    rows, width = ids.shape
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    prepare = getattr(inner, "_prepare_position_ids_for_generation", None)  # transformers' own (private) rule
    if prepare is not None:
        positions = prepare(ids, {"attention_mask": attn, **inputs})
    elif not inputs:  # a text model: generate numbers the positions by the attention mask
        positions = (attn.cumsum(-1) - 1).masked_fill(attn == 0, 0)
    else:
        _say_once(f"this transformers version has no _prepare_position_ids_for_generation on "
                  f"{type(inner).__name__}, whose image-text positions the shared prefill would need")
        return None
    cache = DynamicCache(config=model.config)
    head = {key: v[:, :-1] if key.endswith("token_type_ids") else v for key, v in inputs.items()}
    head.update(input_ids=ids[:, :-1], attention_mask=attn[:, :-1], position_ids=positions[..., :-1], cache=cache,
                use_cache=True)
    if "logits_to_keep" in _forward_params(model):
        head["logits_to_keep"] = 1  # the prefill's logits are not used: [P, 1, vocab], not [P, W - 1, vocab]
    model(**head)
    if (why := _why_not_after(model, cache, width)) is not None:
        _say_once(why)
        return None
    cache.batch_repeat_interleave(k)  # group-major: row i is prompt i // k
    for module in inner.modules():  # Qwen2-VL's rope_deltas [P, 1], set from the positions above, used when decoding
        deltas = getattr(module, "rope_deltas", None)
        if isinstance(deltas, torch.Tensor) and deltas.shape[0] == rows:
            module.rope_deltas = deltas.repeat_interleave(k, 0)
    if seed is not None:
        torch.manual_seed(seed)
    return model.generate(input_ids=ids.repeat_interleave(k, 0), attention_mask=attn.repeat_interleave(k, 0),
                          cache=cache, **generate_kwargs)
