"""What a model's attention accepts: unwrapping DDP/PEFT wrappers, whether a custom 4-D mask is honoured, and the
mask in the form the attention implementation expects. Used by the prefix-shared and packed layouts
(preflab.data.prefix) and by the scorer (preflab.scoring.lm)."""
from __future__ import annotations

import warnings
import weakref

import torch
from torch import Tensor, nn

MASK_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention")
FLEX_BLOCK = 128  # FlexAttention's default block size (query and key)
_warned: set[str] = set()
_probed: "weakref.WeakKeyDictionary[nn.Module, tuple[bool, str]]" = weakref.WeakKeyDictionary()
# right_padding_needs_no_mask's verdict, kept on the model object itself (not in a module-level dict): the compiled
# scorer reads it inside its trace, and dynamo guards what it reads. A shared dict made every model ever probed in
# the process part of the graph's guards (its length, each key by index), so another model's collection by the
# garbage collector recompiled a later run's scorer mid-training (a second Trainer in one process).
_CAUSAL_ATTR = "_preflab_right_padding_needs_no_mask"


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / PEFT wrappers (LoRA layers stay active inside it)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def supports_custom_mask(model) -> tuple[bool, str]:
    """(True, "") when `model` applies a 4-D attention mask and explicit position ids as given; else (False, why).

    Checked: the attention implementation (sdpa or eager), that every layer is full attention (a sliding-window
    or linear-attention layer would get the full mask instead of its own), then once per model a probe pair scored in
    both layouts through model.forward."""
    config = getattr(unwrap(model), "config", None)
    if config is None:
        return False, f"{type(model).__name__} has no transformers config"
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in MASK_IMPLEMENTATIONS:
        return False, f"attn_implementation={impl!r} does not take a custom 4-D mask (use sdpa or eager)"
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None) or []
    other = sorted({t for t in layer_types if t != "full_attention"})
    if other:
        return False, f"{text.model_type} has {other} layers, which would receive the full-attention mask"
    if getattr(text, "use_sliding_window", False) and getattr(text, "sliding_window", None):
        return False, f"{text.model_type} uses sliding-window attention"
    window = binding_sliding_window(text) if not layer_types else None
    if window is not None:
        return False, (f"{text.model_type} applies sliding-window attention (sliding_window={window}) in every layer, "
                       "which a custom 4-D mask replaces")
    return _probe_custom_mask(unwrap(model))


def binding_sliding_window(text_config) -> int | None:
    """The sliding window of a config that declares no per-layer types but applies `sliding_window` in every layer
    whenever it is set (transformers 5.x: Mistral, Mixtral, Phi-3, Starcoder2, ...), or None when there is none or
    it can never bind (0, or not below max_position_embeddings; use_sliding_window=False turns it off). Such a model
    gives a custom 4-D mask precedence over its window, so rows longer than the window would be scored with full
    attention: 0.05 nats/token off on a tiny Mistral with a window of 12 and 30-token rows. The probe pair
    (_probe_custom_mask) is shorter than any real window and cannot see it."""
    window = getattr(text_config, "sliding_window", None)
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        return None
    if getattr(text_config, "use_sliding_window", True) is False:
        return None
    positions = getattr(text_config, "max_position_embeddings", None)
    if isinstance(positions, int) and window >= positions:
        return None
    return window


@torch.no_grad()
def _probe_custom_mask(base: nn.Module) -> tuple[bool, str]:
    """Once per model object: one short pair scored in the prefix-shared form ([prompt | chosen | rejected], 4-D mask,
    positions restarting after the prompt, built here independently of preflab.data.prefix) gives the log-probs of
    the two plain sequences, through model.forward in eval mode. Catches models that ignore the 4-D mask or the
    position ids (recurrent models, ALiBi, positions computed internally), which the config alone does not reveal."""
    if base in _probed:
        return _probed[base]
    param = next(base.parameters())
    vocab = base.get_input_embeddings().weight.shape[0] if hasattr(base, "get_input_embeddings") else 8
    ids = [1 + x % max(vocab - 1, 1) for x in range(8)]
    prompt, chosen, rejected = ids[:3], ids[3:6], ids[6:]
    p, c, r = len(prompt), len(chosen), len(rejected)

    logprobs = lambda tokens, **kwargs: probe_logprobs(base, tokens, **kwargs)  # noqa: E731

    was_training = base.training
    base.eval()
    try:
        plain = torch.cat([logprobs(prompt + chosen)[p - 1:p + c - 1], logprobs(prompt + rejected)[p - 1:p + r - 1]])
        seg = torch.tensor([0] * p + [1] * c + [2] * r, device=param.device)
        allowed = torch.ones(p + c + r, p + c + r, dtype=torch.bool, device=param.device).tril() & (
            (seg[None, :] == seg[:, None]) | (seg[None, :] == 0))
        positions = torch.tensor([list(range(p + c)) + list(range(p, p + r))], device=param.device)
        shared = logprobs(prompt + chosen + rejected, position_ids=positions,
                          attention_mask=scorer_mask(allowed[None, None], base, param.dtype))
        rows = list(range(p - 1, p + c - 1)) + [p - 1] + list(range(p + c, p + c + r - 1))
        err = float((plain - shared[rows]).abs().max())
        tol = 1e-3 if param.dtype == torch.float32 else 5e-2
        verdict = (True, "") if err <= tol else (
            False, f"{base.config.model_type} gives different log-probs with a 4-D mask and restarted positions "
                   f"(difference {err:.3g} on a probe pair)")
    except Exception as error:  # noqa: BLE001  (any failure of the probe means: do not use the custom mask)
        verdict = (False, f"{getattr(base.config, 'model_type', type(base).__name__)} fails with a 4-D mask "
                          f"({type(error).__name__}: {str(error)[:120]})")
    finally:
        base.train(was_training)
    _probed[base] = verdict
    return verdict


def probe_logprobs(base: nn.Module, tokens: list[int], **kwargs) -> Tensor:
    """[T, V] float32 log-softmax of `base`'s logits for one row of `tokens` (no cache): what the layout probes
    (here and preflab.models.segment_attention) compare between a plain and a shared scoring."""
    device = next(base.parameters()).device
    out = base(input_ids=torch.tensor([tokens], device=device), use_cache=False, **kwargs)
    return torch.log_softmax(out.logits[0].float(), -1)


def effective_layout(layout: str, *models) -> str:
    """`layout`, or "padded" (with a one-time warning per reason) when a model cannot take a custom 4-D mask."""
    if layout == "padded":
        return layout
    for model in models:
        if model is None:
            continue
        ok, why = supports_custom_mask(model)
        if not ok:
            if why not in _warned:
                _warned.add(why)
                warnings.warn(f"preflab: layout {layout!r} needs a custom 4-D attention mask but {why}; "
                              "falling back to the padded layout (same log-probs, slower).", stacklevel=2)
            return "padded"
    return layout


def model_mask(mask: Tensor, model, dtype: torch.dtype) -> Tensor:
    """A bool 4-D layout mask in the form `model`'s attention implementation expects: bool for sdpa, additive
    float (0 where allowed, dtype min elsewhere) for eager, a BlockMask for flex_attention (flex_block_mask).
    2-D masks and float masks pass through."""
    if mask.dim() != 4 or mask.dtype != torch.bool:
        return mask
    impl = getattr(getattr(unwrap(model), "config", None), "_attn_implementation", None) or "eager"
    if impl == "sdpa":
        return mask
    if impl == "flex_attention":
        return flex_block_mask(mask)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


def scorer_mask(mask: Tensor, model, dtype: torch.dtype):
    """The mask the text scorer (preflab.scoring.lm) hands to `model`: model_mask's, with sdpa's bool 4-D mask made
    float once (sdpa_additive_mask) in the dtype attention computes in (attention_dtype). The custom-mask probe
    scores with the same form."""
    out = model_mask(mask, model, dtype)
    if isinstance(out, Tensor) and out.dim() == 4 and out.dtype == torch.bool:
        out = sdpa_additive_mask(out, attention_dtype(out.device, dtype))
    return out


def sdpa_additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """The bool 4-D mask as the float mask torch's scaled_dot_product_attention makes of a bool one (0 where
    allowed, -inf elsewhere, in the query's dtype), once per forward instead of once per layer: sdpa converts a bool
    mask at every call (scalar_tensor + where per layer, forward; and every layer keeps its own converted copy for
    backward). Attention outputs and gradients are bit-identical to the bool mask's, fully masked rows included."""
    return torch.where(mask, mask.new_zeros((), dtype=dtype), float("-inf"))


def attention_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype attention computes in: autocast's where autocast is on for `device`, else `dtype` (the weights')."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else dtype


def flex_block_mask(mask: Tensor):
    """The layout's bool mask [R, 1, T, T] as a FlexAttention BlockMask (torch.nn.attention.flex_attention): the
    same allowed (query, key) pairs, so scores equal the dense-mask path's, but blocks of FLEX_BLOCK x FLEX_BLOCK
    positions that are all masked (the other response of a prefix-shared row, other examples of a packed row,
    padding) are skipped by the fused kernel instead of computed and thrown away. transformers' `flex_attention`
    implementation takes it as `attention_mask`. (Wang & Hegde, 2024, arXiv:2410.20305, Sec. 3 build their
    prefix-sharing mask this way.)"""
    from torch.nn.attention.flex_attention import create_block_mask

    dense = mask[:, 0]
    rows, width = dense.shape[0], dense.shape[-1]

    def allowed(b, h, q, k):
        return dense[b, q, k]

    return create_block_mask(allowed, rows, None, width, width, device=mask.device, BLOCK_SIZE=FLEX_BLOCK)


def refuse_flex_training_on_cpu(model, device, what: str = "policy") -> None:
    """A model (`what`: the policy, the reward model) with attn_implementation="flex_attention" that would train on
    the CPU is refused before anything runs (preflab.loops.driver.TrainingRun calls it as every run kind starts
    training): torch 2.13 refuses gradients through FlexAttention on CPU ("FlexAttention does not support backward
    on CPU"), compiled or not (and its compiled CPU forward failed to build its C++ kernel for the benchmark's tiny
    Llama shape), so such a run could only fail inside its first step, after minutes of compiling (a tiny reward
    model: 80 s). Decided by asking torch (flex_trains_on_cpu), so a torch that trains it on CPU is let through."""
    if not flex_training_refused(model, device):
        return
    from preflab.errors import ConfigError

    raise ConfigError(
        f"attn_implementation: flex_attention (the {what}'s) cannot train on the CPU: torch {torch.__version__} has "
        "no FlexAttention backward on CPU ('FlexAttention does not support backward on CPU'). On CPU use sdpa (the "
        "default: the prefix-shared and packed layouts attend segment by segment there), or train on a GPU.")


def flex_training_refused(model, device) -> bool:
    """Whether refuse_flex_training_on_cpu refuses training `model` on `device`. The run constructors ask it to skip
    work that only training would use (the custom-mask probe: six compiled FlexAttention forwards, ~4 CPU-s on a
    tiny model) when train() will refuse before any of it is read."""
    impl = getattr(getattr(unwrap(model), "config", None), "_attn_implementation", None)
    return impl == "flex_attention" and torch.device(device).type == "cpu" and not flex_trains_on_cpu()


def flex_trains_on_cpu() -> bool:
    """Whether this torch accepts CPU inputs that require grad in FlexAttention, asked on 16 positions each time (no
    answer kept: torch's refusal comes from its input checks, before anything is computed or compiled)."""
    from torch.nn.attention.flex_attention import flex_attention

    q = torch.zeros(1, 1, 16, 8, requires_grad=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flex_attention(q, q, q)
    except NotImplementedError:
        return False
    return True


@torch.no_grad()
def right_padding_needs_no_mask(model) -> bool:
    """Whether `model`, given no attention mask, scores the real tokens of a right-padded row exactly as with the
    padding mask: true for causal decoders (a token never attends to the later pads), false for bidirectional or
    prefix-LM models and for models that read the mask for anything else. Decided once per model object by a probe
    of 6 tokens + 3 pads through model.forward in eval mode (no random numbers drawn); any failure means no."""
    base = unwrap(model)
    known = getattr(base, _CAUSAL_ATTR, None)
    if known is not None:
        return known
    param = next(base.parameters())
    vocab = base.get_input_embeddings().weight.shape[0] if hasattr(base, "get_input_embeddings") else 8
    ids = torch.tensor([[1 + (7 * x) % max(vocab - 1, 1) for x in range(9)]], device=param.device)
    real = 6
    padding = torch.tensor([[1] * real + [0] * (ids.shape[1] - real)], device=param.device)
    was_training = base.training
    base.eval()
    try:  # in the weights' own precision (the scorer may call this under bf16 autocast)
        with torch.autocast(param.device.type, enabled=False):
            masked = _token_outputs(base(input_ids=ids, attention_mask=padding, use_cache=False))[0, :real].float()
            plain = _token_outputs(base(input_ids=ids, use_cache=False))[0, :real].float()
        tol = 1e-4 if param.dtype == torch.float32 else 5e-2
        verdict = bool((masked - plain).abs().max() <= tol * max(1.0, float(masked.abs().max())))
    except Exception:  # noqa: BLE001  (any failure of the probe means: keep the padding mask)
        verdict = False
    finally:
        base.train(was_training)
    setattr(base, _CAUSAL_ATTR, verdict)
    return verdict


def _token_outputs(out) -> Tensor:
    """[N, T, ...] per-position outputs of a forward: a causal LM's logits, a bare decoder's last hidden state (the
    backbone of a reward model); a sequence-classification model's pooled logits [N, D] are refused (KeyError: the
    probe's verdict is then no)."""
    logits = getattr(out, "logits", None)
    if logits is not None and logits.dim() == 3:
        return logits
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        raise KeyError("no per-position outputs")
    return hidden
