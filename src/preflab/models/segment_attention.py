"""Prefix-shared attention that computes only the (query, key) pairs the layout's mask allows.

Wang & Hegde (2024), "Accelerating Direct Preference Optimization with Prefix Sharing", arXiv:2410.20305, Sec. 3:
a row `[prompt | response_1 | response_2 ...]` (preflab.data.prefix) scores every response as in its own
`[prompt | response]` sequence when

    allowed(query i, key j) = j <= i  and  seg(j) in {seg(i), root(i)}

(seg: the prompt or response holding a position, root: its block's prompt). With a dense [R, 1, T, T] mask, sdpa and
eager attention compute all T x T scores of a row and discard the disallowed ones. Here each segment is attended on
its own, in a few batched calls per layer (B blocks, P = longest prompt, L = longest response):

    prompts    O_P[b] = softmax(Q_P[b] K_P[b]^T * s + causal) V_P[b]                            [B, H, P, D], is_causal
    piece i    O_i[n] = softmax(Q_R[n, iS:(i+1)S] [K_P[b(n)] | K_R[n, :(i+1)S]]^T * s + M_i[n])
                        [V_P[b(n)] | V_R[n, :(i+1)S]]                                             [N_i, H, S, D]
               M_i[n][l, j] = 0 where j < P_b(n) (a real prompt key) or j = P_i + l' with l' <= iS + l, else -inf

Each response is cut into up to MAX_PIECES pieces of S = ceil(L / pieces) queries (pieces = ceil(L / PIECE_TOKENS)
at most); piece i's call holds the N_i responses longer than iS, each with its prompt's keys (P_i: the longest of
their prompts) and its own first (i + 1) S keys. A query attends exactly the keys of the dense mask's row (the
softmax runs over the same allowed keys, no merging of partial softmaxes: values equal the dense-mask path's up to
float rounding); the pieces only leave out work: short responses are not padded to the longest and a query's later
own keys are not computed for the early pieces (a staircase under the causal triangle; sdpa's CPU kernel skips no
causal work below 512 keys, so is_causal alone would not). s = the module's scaling; Q, K, V are the layer's
projections (after RoPE), gathered from the rows by index lists built on the host at collation (SegmentPlan,
preflab.data.prefix.block_rows), and the outputs are scattered back into [R, T, H, D] by one more index list:
three gathers and one scatter per layer whatever the number of calls. Nothing is computed over the other
responses, other blocks of a packed row, or padding beyond the pieces'. The pieces' masks are small and made once
per layout and dtype. On the benchmark fixture (prompts 64-128, responses 64-256 tokens, batch 4) the calls cover
0.44x the dense mask's scores with 3 pieces (0.70x with one call for all responses, 0.41x with 4 pieces, which
measured no faster than 3 on CPU; 0.25x are allowed; batches in file order).

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


PIECE_TOKENS = 64  # a response piece holds at least this many queries (fewer calls for short responses)
MAX_PIECES = 3     # and a response is cut into at most this many pieces (one attention call each per layer)


@dataclass
class SegmentPlan:
    """Where each segment of a block layout sits, as flat positions row * width + col of its [R, width] rows, grouped
    into the attention calls of segment_attention_forward.

    calls: ((n, queries, keys), ...) per call: call 0 the B prompts (n = B, queries = keys = P, causal), then one per
    response piece i = 0, 1, ... (n = the responses longer than i * S, queries = its S (or fewer) positions, keys =
    P_i + own_i: the longest prompt among them, then the response's positions 0..own_i-1, own_i = min((i + 1) S, L));
    index: one long tensor, [queries | keys | output slots]: the calls' query positions (n * queries each, padding
    slots at the block's first prompt position), their key positions (n * keys each) and, for each of the R * width
    positions, its slot in the calls' concatenated outputs (a padding position takes slot 0: never read);
    allowed: the response pieces' masks [n, 1, queries, keys] (True = may attend), flat and concatenated."""

    width: int
    rows: int
    calls: tuple
    index: Tensor
    allowed: Tensor
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # parts(), additive_masks() per dtype, device

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
        lmax = int(r_len.max()) if len(responses) else 0
        ap = torch.arange(pmax)
        p_real = ap < p_len[:, None]                                   # [B, P]
        prompt_index = torch.where(p_real, p_start[:, None] + ap, p_start[:, None])
        calls, queries, keys, allowed = [(len(prompts), pmax, pmax)], [prompt_index], [prompt_index], []
        out = torch.zeros(rows * width, dtype=torch.long)
        out[prompt_index[p_real]] = torch.arange(p_real.numel()).reshape(p_real.shape)[p_real]
        slots = p_real.numel()
        pieces = min(MAX_PIECES, -(-lmax // PIECE_TOKENS))
        size = -(-lmax // pieces) if pieces else 0
        for i in range(pieces):
            members = (r_len > i * size).nonzero().reshape(-1)
            first, own = i * size, min((i + 1) * size, lmax)
            q_len = own - first
            block, start, length = r_block[members], r_start[members], r_len[members]
            pk = int(p_len[block].max())
            t = torch.arange(first, own)                               # the piece's own positions
            u = torch.arange(own)                                      # its own keys
            fill = p_start[block][:, None]
            q_real = t < length[:, None]                               # [n, q]
            queries.append(torch.where(q_real, start[:, None] + t, fill))
            keys.append(torch.cat([prompt_index[block][:, :pk], torch.where(u < length[:, None], start[:, None] + u,
                                                                            fill)], dim=1))
            root = (torch.arange(pk) < p_len[block][:, None])[:, None, :].expand(-1, q_len, -1)
            causal = (u <= t[:, None]).expand(len(members), -1, -1)
            allowed.append(torch.cat([root, causal], dim=-1).reshape(-1))
            out[queries[-1][q_real]] = slots + torch.arange(q_real.numel()).reshape(q_real.shape)[q_real]
            slots += q_real.numel()
            calls.append((len(members), q_len, pk + own))
        index = torch.cat([x.reshape(-1) for x in (*queries, *keys, out)])
        return cls(width, rows, tuple(calls), index,
                   torch.cat(allowed) if allowed else torch.zeros(0, dtype=torch.bool))

    def parts(self) -> tuple[Tensor, Tensor, Tensor]:
        """index as (query positions, key positions, output slots): views, made once per plan."""
        parts = self.cache.get("parts")
        if parts is None:
            nq, nk = sum(n * q for n, q, _ in self.calls), sum(n * k for n, _, k in self.calls)
            parts = self.cache["parts"] = self.index.split([nq, nk, self.rows * self.width])
        return parts

    def to(self, device) -> "SegmentPlan":
        """The plan on `device`: two host -> accelerator copies (index, allowed), asynchronous as
        preflab.data.layout.to_device's."""
        def to_device(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=t.device.type == "cpu" and torch.device(device).type != "cpu")

        return SegmentPlan(self.width, self.rows, self.calls, to_device(self.index), to_device(self.allowed))

    def widened(self, width: int) -> "SegmentPlan":
        """The plan for the same rows right-padded to `width` positions (preflab.data.layout.bucket)."""
        if width == self.width:
            return self
        move = lambda t: t // self.width * width + t % self.width  # noqa: E731
        queries, keys, slots = self.parts()
        out = torch.zeros(self.rows * width, dtype=torch.long, device=slots.device)
        out[move(torch.arange(self.rows * self.width, device=out.device))] = slots
        return SegmentPlan(width, self.rows, self.calls, torch.cat([move(queries), move(keys), out]), self.allowed)

    def additive_masks(self, dtype: torch.dtype, device) -> list[Tensor]:
        """The response pieces' masks as sdpa's float masks (0 / -inf) in `dtype`, made once per dtype and device
        (one kernel, then views)."""
        key = (dtype, torch.device(device))
        masks = self.cache.get(key)
        if masks is None:
            allowed = self.allowed.to(device)
            flat = torch.where(allowed, allowed.new_zeros((), dtype=dtype), float("-inf"))
            masks = self.cache[key] = [m.view(n, 1, q, k) for m, (n, q, k) in
                                       zip(flat.split([n * q * k for n, q, k in self.calls[1:]]), self.calls[1:])]
        return masks


def segment_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask,
                              dropout: float = 0.0, scaling: float | None = None, segments: SegmentPlan | None = None,
                              **kwargs) -> tuple[Tensor, None]:
    """transformers attention function (query [R, H, T, D], key/value [R, Hkv, T, D]) -> ([R, T, H, D], None):
    the module docstring's batched sdpa calls over the segments of `segments`. `attention_mask` is ignored."""
    if segments is None:
        raise RuntimeError(f"attention implementation {SEGMENT_ATTENTION!r} was called without its segment plan; "
                           "it is meant for preflab's scorer only (preflab.models.segment_attention).")
    rows, heads, width, dim = query.shape
    kv_heads = key.shape[1]
    calls = segments.calls
    query_index, key_index, output_index = segments.parts()

    def gather(x: Tensor, index: Tensor, sizes: list[int]) -> tuple[Tensor, ...]:
        # [R, h, T, D] -> one gather of [len(index), h, D], split by call (the backward of a split is one cat, that
        # of each slice a zero fill and a copy)
        return x.transpose(1, 2).reshape(rows * width, x.shape[1], dim).index_select(0, index).split(sizes)

    def heads_first(x: Tensor, n: int) -> Tensor:  # [n * l, h, D] -> [n, h, l, D]
        return x.view(n, -1, x.shape[1], dim).transpose(1, 2)

    q_sizes, k_sizes = [n * q for n, q, _ in calls], [n * k for n, _, k in calls]
    qs, ks, vs = gather(query, query_index, q_sizes), gather(key, key_index, k_sizes), gather(value, key_index, k_sizes)
    masks = segments.additive_masks(query.dtype, query.device)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    gqa = {"enable_gqa": True} if heads != kv_heads else {}  # key/value heads shared by groups of query heads
    outputs = []
    for c, (n, q_len, _) in enumerate(calls):  # call 0: the prompts, causal; then the response pieces, masked
        out = sdpa(heads_first(qs[c], n), heads_first(ks[c], n), heads_first(vs[c], n),
                   attn_mask=masks[c - 1] if c else None, dropout_p=dropout, is_causal=not c, scale=scaling, **gqa)
        outputs.append(out.transpose(1, 2).reshape(n * q_len, heads, dim))
    outputs = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
    return outputs.index_select(0, output_index).view(rows, width, heads, dim), None


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
    if not segment_attention_supported(model)[0]:
        return False
    return not (base.training and torch.is_grad_enabled() and _checkpointed(base))


def _checkpointed(base: nn.Module) -> bool:
    """Whether a training forward of `base` recomputes an attention call in backward (transformers' gradient
    checkpointing, or torch's CheckpointWrapper as FSDP's activation checkpointing installs it by replacing modules):
    the recompute would run after `segment_attention` has restored the implementation.

    Read on every call, without walking every module when the model is transformers' own: the model, its decoder
    (`base_model`), each decoder layer and each layer's attention module are transformers classes (a module's
    `__module__`) in a plain ModuleList. Then no CheckpointWrapper holds an attention call (it would replace one of
    these modules; one around a projection or MLP recomputes no attention), and what checkpoints is the decoder
    layers' `gradient_checkpointing` flag (transformers' GradientCheckpointingLayer checkpoints its call when set;
    gradient_checkpointing_enable / disable set it on the decoder and every layer). Anything else (a replaced module,
    FSDP's wrapped layers, remote code, a model that is not transformers') walks every module: a CheckpointWrapper
    anywhere, or a `gradient_checkpointing` flag set anywhere. Measured on the benchmark fixture's 6-layer model
    (one thread, a loaded 2-core machine): 0.008 ms a call this way, 0.35-0.5 ms walking every module."""
    decoder = getattr(base, "base_model", None)
    children = decoder._modules if isinstance(decoder, nn.Module) else {}
    layers = children.get("layers", children.get("h"))  # llama, mistral, qwen2, qwen3; gpt2
    if type(layers) is nn.ModuleList:
        flagged = (decoder, *layers._modules.values())
        attention = [layer._modules.get("self_attn", layer._modules.get("attn")) for layer in flagged[1:]]
        if all(t.__module__.startswith("transformers.") for t in set(map(type, (base, *flagged, *attention)))):
            return any(getattr(m, "gradient_checkpointing", False) is True for m in flagged)
    wrapper = _checkpoint_wrapper()
    return any(getattr(m, "gradient_checkpointing", False) is True or isinstance(m, wrapper) for m in base.modules())


def _checkpoint_wrapper() -> type | tuple:
    """torch's CheckpointWrapper (isinstance also matches FSDP2's sharded copy of its class), () without it."""
    try:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    except ImportError:  # a torch built without torch.distributed
        return ()
    return CheckpointWrapper


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
