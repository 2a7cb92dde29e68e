"""Three checks of a pairwise objective's sense, part of the objective contract (preflab.objectives.check_objective,
`preflab lab check`): the mistakes a first preference loss makes that still give a scalar, differentiable loss,
which the contract's other checks pass and a run trains without a word.

Let S_w, S_l be the policy's summed log-probs of the chosen and rejected response of a pair and
D = dL/dS_w - dL/dS_l the derivative of the pair's loss along raising the chosen and lowering the rejected by one
nat each (spread evenly over their tokens). The checks, on the example batch and on the same batch at
policy = reference (h_w = h_l = 0, where every training run starts):

- reads the chosen: dL/dS_w is not zero on every pair at both points. A loss that ignores the chosen responses
  (`-logsigmoid(-beta * h_l)` alone) trains the policy only away from the rejected.
- prefers the chosen: D < 0 on some pair at one of the points. A loss with D > 0 on every pair at both points
  trains the policy towards the rejected responses (a sign error: `h_l - h_w` for `h_w - h_l`, or chosen and
  rejected swapped). Every built-in objective passes, including DiscoPOP, whose modulated loss rises with the
  margin near h = 0 (D > 0 at the reference) but not on the example batch, and APO-down, which lowers the chosen
  but the rejected more.
- uses its reference (needs_reference = True, the default): each side whose policy log-probs the loss reads,
  its reference log-probs change the losses too (exactly, multiplied by 1.1). A loss that compares policy
  log-probs without log pi_ref (`S_w - S_l` for `h_w - h_l`) is another objective (reference-free, SimPO-like
  without the length normalisation) while the run loads and scores a reference model for nothing.
"""
from __future__ import annotations

import copy

import torch

from preflab.errors import PreflabError
from preflab.objectives.base import PairBatch, SequenceLogps


def _per_side_derivatives(objective, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """([B] dL/dS_w, [B] dL/dS_l): the gradient of the summed per-example losses along raising each response's
    summed log-prob by one, spread evenly over its tokens (sum_t g_t / n_tokens); zeros where the loss does not
    read that side."""
    sides = (batch.policy_chosen, batch.policy_rejected)
    losses = objective(batch).losses
    grads = torch.autograd.grad(losses.sum(), [s.token_logps for s in sides], allow_unused=True)
    out = []
    for g, side in zip(grads, sides):
        mask = side.mask.to(torch.float64)
        g = torch.zeros_like(mask) if g is None else g.detach().to(torch.float64)
        out.append((g * mask).sum(-1) / mask.sum(-1).clamp_min(1))
    return out[0], out[1]


def _fresh(batch: PairBatch) -> PairBatch:
    """A copy of `batch` with new SequenceLogps around the same policy leaves: a SequenceLogps caches its sums, and
    a backward through an earlier computation of the batch has freed that cache's graph."""
    fresh = copy.copy(batch)
    fresh.policy_chosen = SequenceLogps(batch.policy_chosen.token_logps, batch.policy_chosen.mask)
    fresh.policy_rejected = SequenceLogps(batch.policy_rejected.token_logps, batch.policy_rejected.mask)
    return fresh


def at_reference(batch: PairBatch) -> PairBatch:
    """A copy of `batch` whose policy log-probs equal its reference log-probs (requiring grad): h_w = h_l = 0, the
    first step of every run. A fresh copy of the batch when it has no reference."""
    if batch.ref_chosen is None or batch.ref_rejected is None:
        return _fresh(batch)
    start = copy.copy(batch)
    start.policy_chosen = SequenceLogps(batch.ref_chosen.token_logps.detach().clone().requires_grad_(True),
                                        batch.ref_chosen.mask)
    start.policy_rejected = SequenceLogps(batch.ref_rejected.token_logps.detach().clone().requires_grad_(True),
                                          batch.ref_rejected.mask)
    return start


def _fmt(values: torch.Tensor) -> str:
    return "[" + ", ".join(f"{float(v):.3g}" for v in values) + "]"


def check_pair_sense(objective, batch: PairBatch, name: str) -> list[str]:
    """The checks passed (module docstring); a PreflabError naming the failure and what to do otherwise."""
    points = {"on the example batch": _fresh(batch), "at policy = reference": at_reference(batch)}
    derivs = {where: _per_side_derivatives(objective, b) for where, b in points.items()}
    if all(bool((d_w == 0).all()) for d_w, _ in derivs.values()):
        raise PreflabError(
            f"{name}: the loss does not read the chosen responses: its gradient with respect to their log-probs is "
            "zero on every pair, on the example batch and at policy = reference. A preference loss compares the "
            "chosen with the rejected (e.g. h_w - h_l with h = logratios(batch)); a loss of the rejected alone "
            "trains the policy only away from them.")
    passed = ["reads the chosen responses"]
    margins = {where: d_w - d_l for where, (d_w, d_l) in derivs.items()}
    if all(bool((m > 0).all()) for m in margins.values()):
        said = "; ".join(f"{where} {_fmt(m)}" for where, m in margins.items())
        raise PreflabError(
            f"{name}: the loss prefers the rejected responses: raising a pair's chosen log-prob over its rejected "
            f"raises the loss on every pair (dL/dS_w - dL/dS_l > 0 {said}), so training moves the policy towards "
            "the rejected. Check the sign of the margin (h_w - h_l, not h_l - h_w, with h_w, h_l = "
            "logratios(batch)) and that chosen and rejected are not swapped.")
    passed.append("prefers the chosen: raising the chosen over the rejected lowers the loss")
    if objective.needs_reference and batch.ref_chosen is not None and batch.ref_rejected is not None:
        with torch.no_grad():
            base = objective(batch).losses.detach()
        d_w, d_l = derivs["on the example batch"]
        for side, read in (("ref_chosen", bool((d_w != 0).any())), ("ref_rejected", bool((d_l != 0).any()))):
            if not read:
                continue  # the loss ignores this side's policy log-probs (an SFT term), so its reference too
            moved = copy.copy(batch)
            ref = getattr(batch, side)
            setattr(moved, side, SequenceLogps(ref.token_logps * 1.1, ref.mask))
            with torch.no_grad():
                if torch.equal(objective(moved).losses.detach(), base):
                    raise PreflabError(
                        f"{name}: declares needs_reference = True (the default) but its losses do not change when "
                        f"the reference log-probs of the {side.removeprefix('ref_')} responses do: the loss misses "
                        "its reference term (use h_w, h_l = logratios(batch), log pi - log pi_ref, not the policy's "
                        "log-probs alone), or it is reference-free: declare needs_reference = False, and a run then "
                        "loads no reference model.")
        passed.append("uses the reference it declares")
    return passed
