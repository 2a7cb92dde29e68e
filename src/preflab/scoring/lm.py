"""Response log-probs of a causal LM on a LayoutBatch, without ever building [B, T, V] logits.

The backbone runs once on the layout's rows; hidden states are gathered at the positions that predict response
tokens only (prompt and padding positions never reach the LM head); the LM head, the float32 log-softmax and any
token-level needs run in chunks of `chunk_tokens` positions (default: sized by the device, see
preflab.scoring.chunking). Under autograd, when there is more than one chunk, each chunk is checkpointed
(recomputed in backward), so peak memory for the head is about one chunk's [C, V] logits whatever the sequence
length or vocabulary size; a single chunk keeps its logits instead of recomputing them.
A prefix-shared or packed layout is attended segment by segment (each prompt causally, each response over its prompt
and itself: preflab.models.segment_attention, for the model families it supports, unless `attention: dense`); else
its 4-D bool layout mask is handed to the model in its attention implementation's form (for
sdpa: the float mask sdpa would make of it at every layer, made once: models.attention.scorer_mask); a
right-padded layout (LayoutBatch.causal_only) gets no mask at all (plain causal attention) when the model is a
causal decoder (models.attention.right_padding_needs_no_mask). The response positions
come as host-built index lists (LayoutBatch.gather), so scoring makes no device-to-host sync.

    token_logps[n, l] = log softmax(head(h[pred_index[n, l]]))[target_ids[n, l]]

`head` is the model type's LMHead (preflab.scoring.head): the output projection plus the logit scaling or
soft-capping its forward applies, so token_logps equal log_softmax(model(...).logits); a model whose head cannot be
reproduced is refused with a ConfigError.

Token-level needs (declared by objectives, see preflab.objectives.base):
    "token_kl"     per-token KL(pi_ref || pi_theta) over the full vocabulary, from the reference hidden states
    "hidden"       the policy's hidden states at the predicting positions
    "prompt_logps" (prompt_sequences=k) also the log-probs of the prompt tokens after the first of sequences 0..k-1,
                   each predicted from the position before it (LayoutBatch.prompt_plan): their positions join the
                   response's in the one chunked head pass (a compiled scorer keeps its graphs); without this need
                   the LM head never sees a prompt position
With want_token_stats, each chunk also gives, without gradient and from the logits it already has (no extra LM-head
matmul), the per-token statistics behind TRL's DPO metrics (preflab.scoring.token_metrics): the mean logit over the
vocabulary, the entropy of the softmax and whether the target is the argmax.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from preflab.data.layout import LayoutBatch
from preflab.errors import PreflabError
from preflab.models.attention import attention_dtype, model_mask, right_padding_needs_no_mask, scorer_mask
from preflab.models.attention import unwrap  # noqa: F401  (re-exported)
from preflab.models.segment_attention import segment_attention, uses_segments
from preflab.objectives.base import PairBatch, SequenceLogps
from preflab.scoring.chunking import CHUNK_BYTES, chunk_budget_of, chunk_for_budget, head_chunk_budget  # noqa: F401
from preflab.scoring.head import LMHead, backbone_and_head  # noqa: F401  (backbone_and_head: re-exported)


def _head_chunk(h: Tensor, targets: Tensor, head: LMHead, ref_h, ref_head: LMHead | None, want_kl: bool,
                want_stats: bool = False):
    """(log-prob of `targets` [C] from hidden states h [C, H], per-token KL(ref || policy) [C] when want_kl (else
    None), token statistics [C, 3] when want_stats (_token_stats, else None))."""
    logits = head(h)
    if want_kl:  # the KL differentiates through log Z as well: plain autograd
        logz = torch.logsumexp(logits, dim=-1)
        logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    else:
        logp, logz = TargetLogProb.apply(logits, targets)
    kl = None
    if want_kl:
        ref_logprobs = torch.log_softmax(ref_head(ref_h), dim=-1)
        kl = (ref_logprobs.exp() * (ref_logprobs - (logits - logz.unsqueeze(-1)))).sum(-1)
    # last, after every op that saves tensors for backward: a checkpoint's recompute stops before it (early stop)
    return logp, kl, _token_stats(logits, logz, targets) if want_stats else None


class TargetLogProb(torch.autograd.Function):
    """(log p(target) [C], log Z [C]) of float32 logits [C, V]: log p(t) = z_t - logsumexp(z), with a backward
    that works in one [C, V] buffer.

    The gradient is autograd's for `logits.gather(-1, t) - torch.logsumexp(logits, -1)`, bit for bit: with g the
    incoming gradient, d logp / d z_v = g * ([v = t] - softmax(z)_v), softmax as logsumexp's backward computes it,
    exp(z - log Z), times -g, plus g at the target (the same float operations: a sum of two terms is the same in
    either order). Autograd builds it from three [C, V] tensors and a zero-filled one (the gather's backward
    scatters into zeros, then the two gradients are added); here exp, the product and the target's term happen in
    place in the buffer of z - log Z (1 allocation instead of 4, no fill, no add: fewer ops and passes over C x V
    memory per chunk, on every device). log Z is returned without gradient (ctx.mark_non_differentiable): callers
    that differentiate through it (the token KL) use plain autograd."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor):
        logz = torch.logsumexp(logits, dim=-1)
        logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
        ctx.save_for_backward(logits, logz, targets)
        ctx.mark_non_differentiable(logz)
        ctx.set_materialize_grads(False)  # log Z's gradient stays None: no zero-filled [C] tensor (one launch)
        return logp, logz

    @staticmethod
    def backward(ctx, grad_logp: Tensor | None, _grad_logz):
        if grad_logp is None:  # log p received no gradient (not materialized): none for the logits either
            return None, None
        logits, logz, targets = ctx.saved_tensors
        grad = torch.sub(logits, logz.unsqueeze(-1)).exp_()  # softmax (logsumexp's backward: exp(z - log Z))
        grad.mul_(grad_logp.neg().unsqueeze(-1))
        grad.scatter_add_(-1, targets.unsqueeze(-1), grad_logp.unsqueeze(-1).to(grad.dtype))
        return grad, None


@torch.no_grad()
def _token_stats(logits: Tensor, logz: Tensor, targets: Tensor) -> Tensor:
    """[C, 3] float32, no gradient: (mean logit over the vocabulary, entropy -sum_v p_v log p_v = log Z -
    sum_v p_v z_v, 1.0 where argmax_v z_v == target else 0.0), as TRL 1.16's fused LM head (`mean_logits`,
    `entropy`, `is_top1`; the first maximum wins a tie)."""
    z = logits.float()
    logz = logz.float()
    p = torch.sub(z, logz.unsqueeze(-1)).exp_()  # one [C, V] buffer; the dot below makes no other
    entropy = logz - torch.bmm(p.unsqueeze(1), z.unsqueeze(-1)).reshape(-1)
    top1 = (z.argmax(-1) == targets).float()
    return torch.stack([z.mean(-1), entropy, top1], dim=-1)


@dataclass
class Scores:
    """token_logps [N, L] (zeros off the mask; None from a hidden_only forward), mask [N, L]; token_kl [N, L] and
    hidden [N, L, H] when asked."""

    token_logps: Tensor | None
    mask: Tensor
    hidden_flat: Tensor | None = None  # [M, H] hidden states at response-predicting positions
    token_kl: Tensor | None = None
    hidden: Tensor | None = None
    wpo: Tensor | None = None  # [N, L] log p(y_t) - log sum_v p(v)^2 (no gradient), for WPO weighting
    token_stats: Tensor | None = None  # [N, L, 3] (mean logit, entropy, target is argmax), no gradient, zeros off mask
    prompt_logps: Tensor | None = None  # [k, W] log-probs of the prompt tokens of sequences 0..k-1, zeros off mask
    prompt_mask: Tensor | None = None   # [k, W] True on those prompt tokens (LayoutBatch.prompt_plan)
    router_loss: Tensor | None = None   # [] the MoE routers' load-balancing loss (want_router_loss), unscaled


class LogProbScorer(nn.Module):
    """Wraps a causal LM so that one forward call returns response log-probs (wrap this in DDP, not the LM).
    temperature T: every head output (log-probs, token statistics, KL, WPO terms) is of the logits divided by T,
    log_softmax(z / T) (LMHead.tempered; TRL 1.16's GRPOTrainer and RLOOTrainer score at the sampling temperature);
    at 1 (default) the scorer is the model's own distribution, unchanged."""

    def __init__(self, model: nn.Module, chunk_tokens: int | None = None, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.temperature = temperature

    @property
    def _no_split_modules(self):
        """The wrapped model's layer classes: accelerate's FSDP auto-wrap shards one unit per decoder layer."""
        return getattr(self.model, "_no_split_modules", None)

    def forward(self, layout: LayoutBatch, want_hidden: bool = False, ref: Scores | None = None,
                ref_head: LMHead | None = None, want_wpo: bool = False, want_token_stats: bool = False,
                prompt_sequences: int = 0, want_router_loss: bool = False, hidden_only: bool = False) -> Scores:
        """hidden_only: the backbone's final hidden states at the response-predicting positions only
        (Scores.hidden_flat, and Scores.hidden with want_hidden), without the LM head: token_logps is None (for a
        head of one's own on the policy, e.g. spo_degree's degree head). ref_head: the reference's LMHead (backbone_and_head(ref)[1]), for the "token_kl" need. want_wpo: also
        the per-token WPO term log p(y_t) - log sum_v p(v)^2, without gradient (the "wpo" need).
        want_token_stats: also Scores.token_stats, for TRL's token metrics (preflab.scoring.token_metrics).
        prompt_sequences: also Scores.prompt_logps of sequences 0..prompt_sequences-1 (the "prompt_logps" need).
        want_router_loss: also Scores.router_loss, the load-balancing loss of a mixture-of-experts model's routers
        over the layout's tokens (preflab.scoring.router_loss), from this same decoder forward."""
        backbone, head = backbone_and_head(self.model)
        head = head.tempered(self.temperature)
        if ref_head is not None and not isinstance(ref_head, LMHead):
            raise TypeError("ref_head must be the reference's LMHead, backbone_and_head(ref)[1] (it applies the "
                            f"model type's logit post-processing), not a bare {type(ref_head).__name__}")
        # right padding only, causal model: plain causal attention is exact for every real token (causal_only)
        plain = layout.causal_only and right_padding_needs_no_mask(self.model)
        segments = not plain and uses_segments(layout, self.model)
        mask = None if plain or segments else layout_scorer_mask(layout, self.model, head.weight.dtype)
        kwargs = {"attention_mask": mask, "use_cache": False}
        if layout.position_ids is not None:
            kwargs["position_ids"] = layout.position_ids
        if want_router_loss:
            kwargs["output_router_logits"] = True
        if segments:  # attention over each prompt and response only (preflab.models.segment_attention); the
            kwargs["attention_mask"] = layout.attention_mask  # bool mask goes through unread (no padding warning)
            with segment_attention(self.model):
                decoded = backbone(input_ids=layout.input_ids, segments=layout.segments, **kwargs)
        else:
            decoded = backbone(input_ids=layout.input_ids, **kwargs)
        hidden = decoded.last_hidden_state  # [R, T, H]
        if hidden_only:  # the gather of _head_inputs, no LM head
            plan = layout.gather_plan()
            h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, plan.pred)
            return Scores(None, layout.response_mask, hidden_flat=h,
                          hidden=_scatter(h, plan.slot, layout.response_mask.shape) if want_hidden else None)
        h, targets, plan, prompt, chunk, ref_h = _head_inputs(hidden, layout, head, self.chunk_tokens, ref, ref_head,
                                                             prompt_sequences)
        if torch.compiler.is_compiling() and h.shape[0] > chunk:  # several chunks: their loop outside the graph
            parts = self._head_outside_graph(h, targets, head, ref_h, ref_head, ref_h is not None, want_wpo,
                                             chunk, want_token_stats)
        else:
            parts = _head_pass(h, targets, head, ref_h, ref_head, ref_h is not None, want_wpo,
                               _chunk_slices(h.shape[0], chunk), _head_chunk, want_token_stats)
        out = _placed(parts, h, plan, layout.response_mask, want_hidden, prompt)
        if want_router_loss:
            out.router_loss = _router_loss(self.model, decoded, layout)
        return out

    @torch.compiler.disable
    def _head_outside_graph(self, h, targets, head, ref_h, ref_head, want_kl: bool, want_wpo: bool, chunk: int,
                            want_stats: bool = False):
        """The LM head over several chunks when the scorer runs under torch.compile (preflab.scoring.compile): the
        loop over chunks runs here, outside the scorer's graph (in the graph, each chunk count would be a graph of
        its own, and a run reaching dynamo's recompile limit falls back to eager for good), and each chunk goes
        through `compiled_head_chunk` (compile_scorer sets it: _head_chunk under the run's backend and mode),
        always on `chunk` positions (the last window overlaps the one before): one head graph per grad mode and
        head, whatever the number of chunks."""
        run_chunk = getattr(self, "compiled_head_chunk", None) or _head_chunk
        out = _head_pass(h, targets, head, ref_h, ref_head, want_kl, want_wpo,
                         _chunk_slices(h.shape[0], chunk, equal_windows=True), run_chunk, want_stats)
        # the rest of forward is a graph of its own (dynamo resumes after this call): M is dynamic there too
        for t in (h, targets, ref_h, *out):
            if t is not None:
                torch._dynamo.maybe_mark_dynamic(t, 0)
        return out


def layout_scorer_mask(layout: LayoutBatch, model: nn.Module, dtype: torch.dtype):
    """scorer_mask of the layout's attention mask for `model`, made once per layout and kept on it
    (LayoutBatch.scorer_masks, keyed by the model's attention implementation and the dtypes), so that the reference
    and the policy scoring the same micro-batch share one float mask instead of converting the [R, 1, T, T] bool
    mask twice (the same values: the same function of the same inputs). Under torch.compile it is made in the graph
    each time (no Python-side cache inside a trace)."""
    if torch.compiler.is_compiling():
        return scorer_mask(layout.attention_mask, model, dtype)
    impl = getattr(getattr(unwrap(model), "config", None), "_attn_implementation", None)
    key = (impl, dtype, attention_dtype(layout.attention_mask.device, dtype))
    kept = layout.scorer_masks.get(key)
    if kept is None or kept[0] is not layout.attention_mask:  # the field was replaced: made again
        kept = layout.scorer_masks[key] = (layout.attention_mask, scorer_mask(layout.attention_mask, model, dtype))
    return kept[1]


def _router_loss(model: nn.Module, decoded, layout: LayoutBatch) -> Tensor:
    """The routers' load-balancing loss of the decoder output `decoded` (asked with output_router_logits), each
    position weighted by how many of the layout's sequences hold its token (LayoutBatch.multiplicity)."""
    from preflab.data.layout import to_device
    from preflab.models.moe import router_shape
    from preflab.scoring.router_loss import load_balancing_loss

    logits = getattr(decoded, "router_logits", None)
    if not logits:
        raise PreflabError(f"{type(unwrap(model)).__name__}'s decoder returned no router logits with "
                           "output_router_logits=True, so its load-balancing loss cannot be computed; set "
                           "router_aux_loss_coef: 0 to train without it.")
    weights = layout.multiplicity()
    return load_balancing_loss(tuple(logits), to_device(weights, logits[0].device), *router_shape(model))


def scores_from_hidden(hidden: Tensor, layout: LayoutBatch, head, chunk_tokens: int | None,
                       want_hidden: bool = False, ref: Scores | None = None, ref_head: nn.Module | None = None,
                       want_wpo: bool = False, want_token_stats: bool = False, prompt_sequences: int = 0) -> Scores:
    """Scores from backbone hidden states [R, T, H], as LogProbScorer.forward computes them from its backbone's
    (without its torch.compile chunk loop): the head in chunks (`_head_pass`) at the response-predicting positions
    (`_head_inputs`; and the prompt tokens' with prompt_sequences), the values placed back by index (`_placed`)."""
    h, targets, plan, prompt, chunk, ref_h = _head_inputs(hidden, layout, head, chunk_tokens, ref, ref_head,
                                                         prompt_sequences)
    parts = _head_pass(h, targets, head, ref_h, ref_head, ref_h is not None, want_wpo,
                       _chunk_slices(h.shape[0], chunk), _head_chunk, want_token_stats)
    return _placed(parts, h, plan, layout.response_mask, want_hidden, prompt)


def _head_inputs(hidden: Tensor, layout: LayoutBatch, head, chunk_tokens: int | None, ref: Scores | None,
                 ref_head, prompt_sequences: int = 0) -> tuple:
    """(h [M, H]: the hidden states at the response-predicting positions, gathered by the layout's host-built index
    lists (LayoutBatch.gather_plan: no boolean-mask indexing, whose output size the host would wait for, and no
    graph break under torch.compile); their targets [M]; the plan; the PromptPlan or None; the head's chunk size;
    the reference's hidden states for the token KL, or None when it is not asked for). With prompt_sequences, h and
    the targets go on with the M' prompt positions of LayoutBatch.prompt_plan: [M + M', H], [M + M']."""
    plan = layout.gather_plan()
    pred, targets, prompt = plan.pred, plan.target, None
    want_kl = ref is not None and ref_head is not None
    if prompt_sequences:
        if want_kl:
            raise PreflabError("the prompt tokens' log-probs (prompt_logps) and the token-level KL to the reference "
                               "(token_kl) cannot be scored in one pass: the reference gives the response positions "
                               "only. Use an objective that needs one of them.")
        prompt = layout.prompt_plan(prompt_sequences)
        pred, targets = torch.cat([pred, prompt.pred]), torch.cat([targets, prompt.target])
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, pred)  # [M (+ M'), H]
    chunk = chunk_tokens or chunk_for_budget(chunk_budget_of(head), head.weight.shape[0],
                                             2 if want_kl else 1)
    return h, targets, plan, prompt, chunk, ref.hidden_flat if want_kl else None


def _placed(parts: tuple, h: Tensor, plan, mask: Tensor, want_hidden: bool, prompt=None) -> Scores:
    """Scores from `_head_pass`'s (logp, kl, wpo, stats) at the M gathered positions, placed back into [N, L] by
    the plan's slots (a part that was not asked for is None and stays unset); with a PromptPlan, the M' positions
    after those are the prompt tokens', placed into its [k, W] grid (their WPO terms and token stats are dropped)."""
    logp, kl, wpo, stats = parts
    prompt_logp = None
    if prompt is not None:
        m = plan.pred.shape[0]
        prompt_logp, logp, h = logp[m:], logp[:m], h[:m]
        wpo = wpo[:m] if wpo is not None else None
        stats = stats[:m] if stats is not None else None
    out = Scores(_scatter(logp, plan.slot, mask.shape), mask, hidden_flat=h)
    if prompt is not None:
        out.prompt_logps, out.prompt_mask = _scatter(prompt_logp, prompt.slot, prompt.mask.shape), prompt.mask
    if kl is not None:
        out.token_kl = _scatter(kl, plan.slot, mask.shape)
    if want_hidden:
        out.hidden = _scatter(h, plan.slot, mask.shape)
    if wpo is not None:
        out.wpo = _scatter(wpo, plan.slot, mask.shape)
    if stats is not None:
        out.token_stats = _scatter(stats, plan.slot, mask.shape)
    return out


def _head_pass(h: Tensor, targets: Tensor, head: LMHead, ref_h, ref_head, want_kl: bool, want_wpo: bool,
               slices, run_chunk, want_stats: bool = False):
    """(log-probs [M], KL [M] or None, WPO term [M] or None, token stats [M, 3] or None) of the M gathered
    positions, chunk by chunk (`slices` from _chunk_slices; run_chunk: _head_chunk or its compiled form). One chunk
    keeps its logits for backward (no recompute); several are each recomputed in backward (checkpoint)."""
    pieces_lp, pieces_kl, pieces_stats = [], [], []
    recompute = torch.is_grad_enabled() and h.requires_grad and len(slices) > 1
    for sl, keep in slices:
        args = (_part(h, sl), _part(targets, sl), head, _part(ref_h, sl) if want_kl else None, ref_head, want_kl,
                want_stats)
        if recompute:
            lp, kl, stats = checkpoint(run_chunk, *args, use_reentrant=False)
        else:
            lp, kl, stats = run_chunk(*args)
        pieces_lp.append(_part(lp, keep))
        if want_kl:
            pieces_kl.append(_part(kl, keep))
        if want_stats:
            pieces_stats.append(_part(stats, keep))
    logp = _joined(pieces_lp) if pieces_lp else h.new_zeros(0)
    wpo = None
    if want_wpo:
        with torch.no_grad():
            wpo = _joined([_part(_wpo_chunk(_part(h, sl), _part(targets, sl), head), keep) for sl, keep in slices]) \
                if h.shape[0] else h.new_zeros(0)
    stats = (_joined(pieces_stats) if pieces_stats else h.new_zeros((0, 3), dtype=torch.float32)) \
        if want_stats else None
    return logp, _joined(pieces_kl) if want_kl else None, wpo, stats


def _part(t: Tensor, sl: slice) -> Tensor:
    """t[sl], and t itself for the whole range (one chunk: no slice op to dispatch)."""
    return t if sl == slice(None) else t[sl]


def _joined(pieces: list[Tensor]) -> Tensor:
    """torch.cat(pieces), and the one piece itself when there is one (cat would copy it)."""
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _chunk_slices(n, chunk: int, equal_windows: bool | None = None) -> list[tuple[slice, slice]]:
    """The LM-head chunks of n positions: (positions fed to the head, part of its output kept) per chunk.

    Under torch.compile (preflab.scoring.compile) n is a dynamic size, and no chunk may depend on n alone in a way
    that pins it: one chunk is the whole range (slice(None): guarded by n <= chunk only; range(0, n, chunk) would
    specialise the graph to one n). Several chunks run outside the graph (LogProbScorer._head_outside_graph) in
    equal windows of `chunk` positions (equal_windows; default: while dynamo traces): the last window is
    [n - chunk, n), whose first outputs (already computed by the chunk before) are dropped, so that every chunk
    has the one size `chunk` (one graph of the compiled head). Eagerly the last chunk is [(k - 1) * chunk, n): no
    position goes through the head twice."""
    if n <= chunk:
        return [(slice(None), slice(None))]
    k = -(-n // chunk)
    out = [(slice(i * chunk, (i + 1) * chunk), slice(None)) for i in range(k - 1)]
    if torch.compiler.is_compiling() if equal_windows is None else equal_windows:
        out.append((slice(n - chunk, n), slice(k * chunk - n, None)))
    else:
        out.append((slice((k - 1) * chunk, n), slice(None)))
    return out


def _scatter(values: Tensor, slot: Tensor, shape) -> Tensor:
    """[M, ...] values placed at flat positions `slot` of an [N, L, ...] grid of zeros (differentiable)."""
    grid = values.new_zeros((shape[0] * shape[1], *values.shape[1:]))
    return grid.index_copy(0, slot, values).reshape(*shape, *values.shape[1:])


def _wpo_chunk(h: Tensor, targets: Tensor, head: LMHead) -> Tensor:
    """WPO's per-token term (Zhou et al., 2024, arXiv:2406.11827, Eq. 2): log p(y_t) - log sum_v p(v)^2, with
    log sum_v p(v)^2 = logsumexp(2 log p) (TRL's `use_weighting`)."""
    logprobs = torch.log_softmax(head(h).float(), dim=-1)
    return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(2 * logprobs, dim=-1)


def _entropy_chunk(h: Tensor, head: LMHead) -> Tensor:
    """[C] entropy -sum_v p_v log p_v = log Z - sum_v p_v z_v of the head's float32 logits z at h [C, H], with
    gradient (plain autograd)."""
    z = head(h)
    logz = torch.logsumexp(z, dim=-1)
    return logz - (torch.softmax(z, dim=-1) * z).sum(-1)


def token_entropy(scores: Scores, layout: LayoutBatch, head: LMHead, chunk_tokens: int | None = None) -> Tensor:
    """[N, L] the policy's entropy at each response position, with gradient (GRPO's entropy bonus, entropy_coef: TRL
    1.16's fused LM head returns it differentiable), zeros off the mask: a second pass of the LM head over
    Scores.hidden_flat (the scorer's gathered hidden states, so the gradient reaches the backbone through the same
    forward), chunked as the scorer's (each chunk recomputed in backward when there are several)."""
    h = scores.hidden_flat
    chunk = chunk_tokens or chunk_for_budget(chunk_budget_of(head), head.weight.shape[0], 1)
    slices = _chunk_slices(h.shape[0], chunk, equal_windows=False)
    recompute = torch.is_grad_enabled() and h.requires_grad and len(slices) > 1
    pieces = [checkpoint(_entropy_chunk, _part(h, sl), head, use_reentrant=False) if recompute else
              _entropy_chunk(_part(h, sl), head) for sl, _ in slices]
    values = _joined(pieces) if pieces else h.new_zeros(0, dtype=torch.float32)
    return _scatter(values, layout.gather_plan().slot, scores.mask.shape)


def split_pairs(policy: Scores, ref: Scores | None, extras: dict | None = None) -> PairBatch:
    """PairBatch from scores of [chosen_1..B, rejected_1..B] sequences; token needs land in extras."""
    b = policy.token_logps.shape[0] // 2
    side = lambda s, part: SequenceLogps(s.token_logps[part], s.mask[part])  # noqa: E731
    first, second = slice(0, b), slice(b, 2 * b)
    extras = dict(extras or {})
    if policy.token_kl is not None:
        extras["chosen_token_kl"], extras["rejected_token_kl"] = policy.token_kl[first], policy.token_kl[second]
    if policy.hidden is not None:
        extras["chosen_hidden"], extras["rejected_hidden"] = policy.hidden[first], policy.hidden[second]
    if policy.wpo is not None:
        extras["chosen_wpo"], extras["rejected_wpo"] = policy.wpo[first], policy.wpo[second]
    if policy.prompt_logps is not None:  # scored for the chosen half (prompt_sequences = B)
        if policy.prompt_logps.shape[0] != b:
            raise PreflabError(f"split_pairs: prompt log-probs of {policy.prompt_logps.shape[0]} sequences for {b} "
                               "pairs; score the chosen half's prompts (prompt_sequences = the number of pairs).")
        extras["chosen_prompt_logps"] = SequenceLogps(policy.prompt_logps, policy.prompt_mask)
    return PairBatch(side(policy, first), side(policy, second),
                     side(ref, first) if ref is not None else None, side(ref, second) if ref is not None else None,
                     extras)


def naive_token_logps(model: nn.Module, layout: LayoutBatch) -> Tensor:
    """Reference implementation (full [R, T, V] logits through model.forward) for equality tests."""
    kwargs = {"attention_mask": model_mask(layout.attention_mask, model, unwrap(model).dtype)}
    if layout.position_ids is not None:
        kwargs["position_ids"] = layout.position_ids
    logits = model(input_ids=layout.input_ids, **kwargs).logits.float()
    logprobs = torch.log_softmax(logits, -1).reshape(-1, logits.shape[-1])
    lp = logprobs[layout.pred_index, layout.target_ids]
    return torch.where(layout.response_mask, lp, torch.zeros_like(lp))
