"""Prefix-shared attention that computes only the (query, key) pairs the layout's mask allows.

Wang & Hegde (2024), "Accelerating Direct Preference Optimization with Prefix Sharing", arXiv:2410.20305, Sec. 3:
a row `[prompt | response_1 | response_2 ...]` (preflab.data.prefix) scores every response as in its own
`[prompt | response]` sequence when

    allowed(query i, key j) = j <= i  and  seg(j) in {seg(i), root(i)}

(seg: the prompt or response holding a position, root: its block's prompt). With a dense [R, 1, T, T] mask, sdpa and
eager attention compute all T x T scores of a row and discard the disallowed ones. Here each segment is attended on
its own, in two batched calls per layer (B blocks, N responses, P = longest prompt, L = longest response):

    prompts    O_P[b]  = softmax(Q_P[b] K_P[b]^T * s + causal) V_P[b]                       [B, H, P, D], is_causal
    responses  O_R[n]  = softmax(Q_R[n] [K_P[b(n)] | K_R[n]]^T * s + M[n]) [V_P[b(n)] | V_R[n]]   [N, H, L, D]
               M[n][l, j] = 0 where j < P_b(n) (a real prompt key) or j = P + l' with l' <= l, -inf elsewhere

s = the module's scaling; Q, K, V are the layer's projections (after RoPE), gathered from the rows by index lists
built on the host at collation (SegmentPlan, preflab.data.prefix.block_rows), and the outputs are scattered back
into [R, T, H, D] by one more index list. The work is sum_b P_b^2 + sum_n L_n (P + L) scores instead of R T^2
(nothing over the other responses, other blocks of a packed row, or padding), and the prompts go through sdpa's
fused causal kernel. The responses' mask is small ([N, 1, L, P + L]) and made once per layout and dtype. Values
equal the dense-mask path's up to float rounding (the softmax runs over the same allowed keys).

How it reaches the model: the function is registered as transformers attention implementation SEGMENT_ATTENTION
(AttentionInterface), the model's implementation is switched to it for the scorer's forward only
(`segment_attention`), and the plan travels as the `segments` keyword through the model forward's **kwargs, which
transformers 5.x hands to the attention function in the families of SUPPORTED_FAMILIES. No attention mask is
built: the layout's bool 4-D mask is passed, which create_causal_mask returns as given, and the attention function
ignores it. Anything else keeps the dense mask
(`segment_attention_supported` says why): other families, models whose attention adds soft-capping or sinks,
flex_attention (it has its own block-sparse path), gradient checkpointing (the recompute in backward would run
outside the switch), torch.compile traces. Each model is probed once (a short pair scored this way must give the
plain sequences' log-probs, with the function called once per layer).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from preflab.errors import ConfigError

SEGMENT_ATTENTION = "preflab_segments"
ATTENTION_MODES = ("auto", "segments", "dense")
DEFAULT_ATTENTION = "auto"
# families whose attention modules pass the forward's **kwargs to the attention function and compute plain
# softmax(QK^T * scaling) V (no soft-capping, sinks, ALiBi or extra biases)
SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
_MODE_ATTR = "_preflab_attention_mode"
_VERDICT_ATTR = "_preflab_segment_attention"


@dataclass
class SegmentPlan:
    """Where each segment of a block layout sits, as flat positions row * width + col of its [R, width] rows.

    prompt_index [B, P]: block b's prompt positions (slots past its length repeat its first position);
    response_index [N, L]: response n's positions (slots past its length: its block's first prompt position);
    response_keys [N, P + L]: the keys response n attends over, [its block's prompt_index | response_index];
    response_allowed [N, 1, L, P + L] bool: M[n] of the module docstring (True = may attend);
    output_index [R * width]: for each position, its slot in the concatenated outputs [B * P + N * L]
    (prompt slots first, then response slots; a padding position takes slot 0: its output is never read);
    query_index, key_index: the gathers of the attention function (made from the above)."""

    width: int
    rows: int
    prompt_index: Tensor
    response_index: Tensor
    response_keys: Tensor
    response_allowed: Tensor
    output_index: Tensor
    query_index: Tensor | None = None
    key_index: Tensor | None = None
    masks: dict = field(default_factory=dict, repr=False, compare=False)  # {(dtype, device): additive mask}

    def __post_init__(self):
        # the gathers of the attention function: queries [prompts | responses], keys and values [prompts | the
        # responses' prompt keys and own keys], one index list each
        if self.query_index is None:
            self.query_index = torch.cat([self.prompt_index.reshape(-1), self.response_index.reshape(-1)])
        if self.key_index is None:
            self.key_index = torch.cat([self.prompt_index.reshape(-1), self.response_keys.reshape(-1)])

    @classmethod
    def of(cls, prompts: list[tuple[int, int]], responses: list[tuple[int, int, int]], rows: int,
           width: int) -> "SegmentPlan":
        """From host lists: prompts [(flat start, length)] per block, responses [(flat start, length, block)]."""
        p_start = torch.tensor([s for s, _ in prompts], dtype=torch.long)
        p_len = torch.tensor([n for _, n in prompts], dtype=torch.long)
        r_start = torch.tensor([s for s, _, _ in responses], dtype=torch.long).reshape(-1)
        r_len = torch.tensor([n for _, n, _ in responses], dtype=torch.long).reshape(-1)
        r_block = torch.tensor([b for _, _, b in responses], dtype=torch.long).reshape(-1)
        pmax = max(int(p_len.max()) if len(prompts) else 1, 1)
        lmax = max(int(r_len.max()) if len(responses) else 1, 1)
        ap, al = torch.arange(pmax), torch.arange(lmax)
        p_real = ap < p_len[:, None]                                   # [B, P]
        r_real = al < r_len[:, None]                                   # [N, L]
        prompt_index = torch.where(p_real, p_start[:, None] + ap, p_start[:, None])
        response_index = torch.where(r_real, r_start[:, None] + al, p_start[r_block][:, None])
        keys = torch.cat([prompt_index[r_block], response_index], dim=1)
        causal = torch.ones(lmax, lmax, dtype=torch.bool).tril()
        allowed = torch.cat([p_real[r_block][:, None, :].expand(-1, lmax, -1),
                             causal.expand(len(responses), -1, -1)], dim=-1).unsqueeze(1)
        out = torch.zeros(rows * width, dtype=torch.long)
        out[prompt_index[p_real]] = torch.arange(p_real.numel()).reshape(p_real.shape)[p_real]
        out[response_index[r_real]] = p_real.numel() + torch.arange(r_real.numel()).reshape(r_real.shape)[r_real]
        return cls(width, rows, prompt_index, response_index, keys, allowed, out)

    def to(self, device) -> "SegmentPlan":
        """The plan with what the attention function reads on `device` (the response mask and the three index
        lists; host -> accelerator copies asynchronous, as preflab.data.layout.to_device's); prompt_index,
        response_index and response_keys stay where they are (the attention function reads their shapes only)."""
        def to_device(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=t.device.type == "cpu" and torch.device(device).type != "cpu")

        return SegmentPlan(self.width, self.rows, self.prompt_index, self.response_index, self.response_keys,
                           *(to_device(t) for t in (self.response_allowed, self.output_index, self.query_index,
                                                    self.key_index)))

    def widened(self, width: int) -> "SegmentPlan":
        """The plan for the same rows right-padded to `width` positions (preflab.data.layout.bucket)."""
        if width == self.width:
            return self
        move = lambda t: t // self.width * width + t % self.width  # noqa: E731
        out = torch.zeros(self.rows * width, dtype=torch.long, device=self.output_index.device)
        out[move(torch.arange(self.rows * self.width, device=out.device))] = self.output_index
        return SegmentPlan(width, self.rows, move(self.prompt_index), move(self.response_index),
                           move(self.response_keys), self.response_allowed, out, move(self.query_index),
                           move(self.key_index))

    def additive_mask(self, dtype: torch.dtype, device) -> Tensor:
        """response_allowed as sdpa's float mask (0 / -inf) in `dtype`, made once per dtype and device."""
        key = (dtype, torch.device(device))
        mask = self.masks.get(key)
        if mask is None:
            allowed = self.response_allowed.to(device)
            mask = self.masks[key] = torch.where(allowed, allowed.new_zeros((), dtype=dtype), float("-inf"))
        return mask


def segment_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask,
                              dropout: float = 0.0, scaling: float | None = None, segments: SegmentPlan | None = None,
                              **kwargs) -> tuple[Tensor, None]:
    """transformers attention function (query [R, H, T, D], key/value [R, Hkv, T, D]) -> ([R, T, H, D], None):
    the module docstring's two batched sdpa calls over the segments of `segments`. `attention_mask` is ignored."""
    if segments is None:
        raise RuntimeError(f"attention implementation {SEGMENT_ATTENTION!r} was called without its segment plan; "
                           "it is meant for preflab's scorer only (preflab.models.segment_attention).")
    rows, heads, width, dim = query.shape
    kv_heads = key.shape[1]
    blocks, pmax = segments.prompt_index.shape
    responses, lmax = segments.response_index.shape
    split = blocks * pmax  # the prompts' slots come first in the gathered tensors, then the responses'

    def gather(x: Tensor, index: Tensor) -> Tensor:  # [R, h, T, D] -> [len(index), h, D], one gather
        return x.transpose(1, 2).reshape(rows * width, x.shape[1], dim).index_select(0, index)

    def heads_first(x: Tensor, n: int) -> Tensor:  # [n * l, h, D] -> [n, h, l, D]
        return x.view(n, -1, x.shape[1], dim).transpose(1, 2)

    # split, not sliced: the backward of a split is one cat, that of each slice a zero fill and a copy
    (qp, qr), (kp, kr), (vp, vr) = (gather(x, index).split([split, index.shape[0] - split]) for x, index in (
        (query, segments.query_index), (key, segments.key_index), (value, segments.key_index)))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    gqa = {"enable_gqa": True} if heads != kv_heads else {}  # key/value heads shared by groups of query heads
    prompt_out = sdpa(heads_first(qp, blocks), heads_first(kp, blocks), heads_first(vp, blocks),
                      dropout_p=dropout, is_causal=True, scale=scaling, **gqa)
    outputs = prompt_out.transpose(1, 2).reshape(split, heads, dim)
    if responses:
        mask = segments.additive_mask(query.dtype, query.device)
        response_out = sdpa(heads_first(qr, responses), heads_first(kr, responses), heads_first(vr, responses),
                            attn_mask=mask, dropout_p=dropout, scale=scaling, **gqa)
        outputs = torch.cat([outputs, response_out.transpose(1, 2).reshape(responses * lmax, heads, dim)])
    return outputs.index_select(0, segments.output_index).view(rows, width, heads, dim), None


def _register(function=None) -> None:
    """`function` (default: segment_attention_forward) as transformers attention implementation SEGMENT_ATTENTION
    (transformers is imported on first use, not when this module is)."""
    from transformers import AttentionInterface

    AttentionInterface.register(SEGMENT_ATTENTION, function or segment_attention_forward)


def _text_config(model: nn.Module):
    from preflab.models.attention import unwrap

    return getattr(unwrap(model), "config", None)


@contextmanager
def segment_attention(model: nn.Module):
    """The model's attention implementation switched to SEGMENT_ATTENTION inside the block (restored after it)."""
    _register()
    config = _text_config(model)
    before = config._attn_implementation
    config._attn_implementation = SEGMENT_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


def set_attention_mode(mode: str, *models) -> None:
    """Attention of the prefix-shared / packed layouts for these models: "auto" (segment attention where
    supported, else the dense mask), "segments" (ConfigError when a model cannot), "dense" (always the mask).
    Kept on each model object; a model never given a mode uses DEFAULT_ATTENTION."""
    if mode not in ATTENTION_MODES:
        raise ConfigError(f"attention: {mode!r} is not one of {', '.join(ATTENTION_MODES)}.")
    from preflab.models.attention import unwrap

    for model in models:
        if model is None:
            continue
        if mode != "dense":  # probed now, before training (the probe runs the model's forward)
            ok, why = segment_attention_supported(model)
            if mode == "segments" and not ok:
                raise ConfigError(f"attention: segments cannot be used: {why}. Use attention: auto (the dense mask "
                                  "for such models) or dense.")
        setattr(unwrap(model), _MODE_ATTR, mode)


def attention_mode(model: nn.Module) -> str:
    from preflab.models.attention import unwrap

    return getattr(unwrap(model), _MODE_ATTR, DEFAULT_ATTENTION)


def uses_segments(layout, model: nn.Module) -> bool:
    """Whether the scorer runs `model` on `layout` with segment attention (else the dense mask)."""
    plan = getattr(layout, "segments", None)
    if plan is None or torch.compiler.is_compiling() or attention_mode(model) == "dense":
        return False
    if plan.width != layout.input_ids.shape[1] or plan.rows != layout.input_ids.shape[0]:
        return False
    from preflab.models.attention import unwrap

    base = unwrap(model)
    if base.training and torch.is_grad_enabled() and _checkpointed(base):
        return False
    return segment_attention_supported(model)[0]


def _checkpointed(base: nn.Module) -> bool:
    """Whether some layer of `base` recomputes its forward in backward (transformers' gradient checkpointing, or
    torch's CheckpointWrapper as FSDP's activation checkpointing installs it): the recompute would run after
    `segment_attention` has restored the implementation."""
    return any(getattr(m, "gradient_checkpointing", False) is True or type(m).__name__ == "CheckpointWrapper"
               for m in base.modules())


def segment_attention_supported(model: nn.Module) -> tuple[bool, str]:
    """(True, "") when `model` can score prefix-shared rows with segment attention; else (False, why). Decided once
    per model object and attention implementation (kept on the model): the family (SUPPORTED_FAMILIES), no
    soft-capping or sinks, sdpa or eager, every layer full attention (models.attention.supports_custom_mask), and a
    probe pair scored this way."""
    from preflab.models.attention import supports_custom_mask, unwrap

    base = unwrap(model)
    config = getattr(base, "config", None)
    family = getattr(config, "model_type", type(base).__name__)
    impl = getattr(config, "_attn_implementation", None) or "eager"
    known = getattr(base, _VERDICT_ATTR, None)
    if known is not None and known[0] == impl:  # decided for this attention implementation
        return known[1]
    if family not in SUPPORTED_FAMILIES:
        verdict = (False, f"model type {family!r} is not among {', '.join(SUPPORTED_FAMILIES)}")
    elif impl not in ("sdpa", "eager"):
        verdict = (False, f"attn_implementation={impl!r} (segment attention replaces sdpa or eager)")
    elif any(getattr(config, name, None) for name in ("attn_logit_softcapping", "sinks", "use_sinks")):
        verdict = (False, f"{family} soft-caps its attention logits or uses attention sinks")
    else:
        ok, why = supports_custom_mask(base)
        verdict = _probe(base) if ok else (False, why)
    setattr(base, _VERDICT_ATTR, (impl, verdict))
    return verdict


@torch.no_grad()
def _probe(base: nn.Module) -> tuple[bool, str]:
    """One short block (a prompt and two responses of different lengths) scored with segment attention, in eval mode,
    against each [prompt | response] sequence scored plainly; the attention function must run once per layer."""
    param = next(base.parameters())
    vocab = base.get_input_embeddings().weight.shape[0]
    ids = [1 + (5 * x) % max(vocab - 1, 1) for x in range(9)]
    prompt, first, second = ids[:3], ids[3:7], ids[7:]
    p = len(prompt)
    row = prompt + first + second
    positions = list(range(p + len(first))) + list(range(p, p + len(second)))
    plan = SegmentPlan.of([(0, p)], [(p, len(first), 0), (p + len(first), len(second), 0)], 1, len(row))
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return segment_attention_forward(*args, **kwargs)

    from preflab.models.attention import probe_logprobs

    logprobs = lambda tokens, **kwargs: probe_logprobs(base, tokens, **kwargs)  # noqa: E731

    was_training = base.training
    base.eval()
    try:
        plain = torch.cat([logprobs(prompt + first)[p - 1:-1], logprobs(prompt + second)[p - 1:-1]])
        with segment_attention(base):
            _register(counted)
            shared = logprobs(row, position_ids=torch.tensor([positions], device=param.device),
                              segments=plan.to(param.device))
        picked = list(range(p - 1, p + len(first) - 1)) + [p - 1] + list(range(p + len(first), len(row) - 1))
        err = float((plain - shared[picked]).abs().max())
        layers = getattr(base.config.get_text_config(), "num_hidden_layers", None)
        tol = 1e-4 if param.dtype == torch.float32 else 5e-2
        if layers is not None and len(calls) != layers:
            verdict = (False, f"{base.config.model_type}'s layers did not hand the segment plan to the attention "
                              f"function ({len(calls)} calls for {layers} layers)")
        elif not err <= tol:
            verdict = (False, f"{base.config.model_type} gives different log-probs with segment attention "
                              f"(difference {err:.3g} on a probe pair)")
        else:
            verdict = (True, "")
    except Exception as error:  # noqa: BLE001  (any failure of the probe means: keep the dense mask)
        verdict = (False, f"{getattr(base.config, 'model_type', type(base).__name__)} fails with segment attention "
                          f"({type(error).__name__}: {str(error)[:120]})")
    finally:
        _register()
        base.train(was_training)
    if not verdict[0]:
        warnings.warn(f"preflab: {verdict[1]}; prefix-shared rows keep the dense attention mask.", stacklevel=3)
    return verdict
