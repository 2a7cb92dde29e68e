"""The mixture-of-experts router's load-balancing loss, added to the training loss as TRL 1.16 adds it.

Fedus, Zoph & Shazeer (2022), "Switch Transformers", arXiv:2101.03961, Eqs. 4-6, with top-k routing as
transformers' Mixtral `load_balancing_loss_func` computes it (TRL's fused LM head calls that function for every MoE
family): over the E experts, the L router layers and the tokens t of the batch, each token weighted by w_t,

    p_{l,t}   = softmax(router_logits_{l,t})                       (the router's probabilities, [E])
    f_e       = sum_{l,t} w_t #[e in top_k(p_{l,t})] / sum_{l,t} w_t  (share of top-k assignments to expert e)
    P_e       = sum_{l,t} w_t p_{l,t,e} / sum_{l,t} w_t              (mean router probability of expert e)
    aux_loss  = E * sum_e f_e P_e

TRL (DPO, KTO, SFT, GRPO trainers) adds `router_aux_loss_coef * aux_loss` to the policy's loss and logs aux_loss
(unscaled) as `aux_loss`, when the model's text config has an `output_router_logits` attribute (whatever its value)
and the coefficient is not 0; the coefficient is the trainer config's router_aux_loss_coef, or the model config's
when that is unset. TRL's weights w_t are its padded batch's attention mask: every real token of every
[prompt | completion] row, so a prompt counts once per response. preflab's layouts record that count per position
(LayoutBatch.token_multiplicity: a prompt shared by k responses in a prefix-shared or packed row counts k times, a
sequence TRL scores in another forward counts 0), so every layout averages over TRL's token multiset.

The router logits come from the decoder forward the scorer already runs (preflab.scoring.lm, `want_router_loss`):
no second forward, and nothing for a dense model. The reference model's routers are never asked (TRL drops
output_router_logits from its reference forward too).
"""
from __future__ import annotations

import torch
from torch import Tensor

from preflab.models.moe import router_loss_coef, router_shape  # noqa: F401  (re-exported)

METRIC = "aux_loss"  # TRL 1.16's metric name: the unscaled load-balancing loss


def load_balancing_loss(router_logits, weights: Tensor, num_experts: int, top_k: int) -> Tensor:
    """aux_loss of the module docstring: router_logits, one [N, E] tensor per router layer (N = rows x positions,
    flattened as `weights`); weights [R, T] (LayoutBatch.token_multiplicity). float32 scalar with gradient through
    the router probabilities (the top-k counts carry none, as in transformers). No host sync: the counts are a
    scatter-add, the denominator stays on the device."""
    device = router_logits[0].device
    w = weights.reshape(-1).to(device=device, dtype=torch.float32)
    assigned = torch.zeros(num_experts, dtype=torch.float32, device=device)
    prob_sum = torch.zeros(num_experts, dtype=torch.float32, device=device)
    w_top = w.unsqueeze(-1).expand(-1, top_k).reshape(-1)  # each token's weight for each of its k experts
    for logits in router_logits:
        probs = torch.softmax(logits.reshape(-1, logits.shape[-1]).to(device), dim=-1)  # the router's dtype
        top = torch.topk(probs, top_k, dim=-1).indices
        assigned = assigned + torch.zeros_like(assigned).scatter_add_(0, top.reshape(-1), w_top)
        prob_sum = prob_sum + (probs.float() * w.unsqueeze(-1)).sum(0)
    total = w.sum() * len(router_logits)
    return (assigned / total * (prob_sum / total)).sum() * num_experts


def add_router_loss(out, aux: Tensor, coef: float):
    """The objective's output with coef * aux added to its loss and to each example's loss (the step averages those,
    so the step's loss is the objective's plus coef * aux, as TRL's), and aux logged as `aux_loss`."""
    extra = coef * aux.to(out.losses.dtype)
    out.losses = out.losses + extra
    out.loss = out.loss + extra
    out.metrics = {**out.metrics, METRIC: aux.detach()}
    return out
