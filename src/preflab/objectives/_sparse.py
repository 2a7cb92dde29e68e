"""The token-masked reward + KL pair loss shared by `sparsepo` and `sparsepo_mapo` (methods/objectives.md §C #2).

    U(y) = sum_t m_t mu_t h_t          h_t = lp_theta[t] - lp_ref[t]
    D(y) = sum_t m_t md_t k_t          k_t = -KL(pi_ref || pi_theta) at t  (extras chosen/rejected_token_kl)
    L    = l(beta [(U_w - U_l) - (D_w - D_l)]) + l1_u (|mu_w m|_1 + |mu_l m|_1) + l1_d (|md_w m|_1 + |md_l m|_1)

A mask given as None is all ones (and adds no L1 term). Padded positions contribute nothing whatever the mask holds.
"""
import torch
import torch.nn.functional as F

from preflab.objectives.base import ObjectiveOutput, PairBatch, as_loss_dtype, reward_metrics


def token_logratios(batch: PairBatch, side: str):
    """([B, T] h_t with padding set to 0, bool response mask [B, T]) for side 'chosen' or 'rejected'."""
    pol, ref = getattr(batch, f"policy_{side}"), getattr(batch, f"ref_{side}")
    h = as_loss_dtype(pol.token_logps) - as_loss_dtype(ref.token_logps)
    return torch.where(pol.mask, h, torch.zeros_like(h)), pol.mask


def sparse_pair_loss(batch: PairBatch, beta: float, masks: dict, l1_u: float = 0.0, l1_d: float = 0.0,
                     owner: str = "sparsepo") -> ObjectiveOutput:
    """masks: {'u_chosen', 'u_rejected', 'd_chosen', 'd_rejected'} -> [B, T] non-negative tensor or None."""
    parts, l1 = {}, 0.0
    for side in ("chosen", "rejected"):
        h, m = token_logratios(batch, side)
        mf = m.to(h.dtype)
        kl = torch.where(m, as_loss_dtype(torch.as_tensor(batch.extra(f"{side}_token_kl", owner))).to(h), 0.0)
        mu, md = masks.get(f"u_{side}"), masks.get(f"d_{side}")
        mu_m = mf if mu is None else as_loss_dtype(mu).to(h) * mf
        md_m = mf if md is None else as_loss_dtype(md).to(h) * mf
        U, D = (mu_m * h).sum(-1), -(md_m * kl).sum(-1)
        parts[side] = (U, D)
        if mu is not None and l1_u:
            l1 = l1 + l1_u * mu_m.abs().sum(-1)
        if md is not None and l1_d:
            l1 = l1 + l1_d * md_m.abs().sum(-1)
    (U_w, D_w), (U_l, D_l) = parts["chosen"], parts["rejected"]
    logit = beta * ((U_w - U_l) - (D_w - D_l))
    losses = -F.logsigmoid(logit) + l1
    # the official trainer logs rewards beta * (U + D) per side; the loss's own logit is logged separately
    metrics = reward_metrics(batch, beta, chosen=beta * (U_w + D_w), rejected=beta * (U_l + D_l))
    metrics["sparse/logit"] = logit.detach().mean()
    metrics["kl/chosen"], metrics["kl/rejected"] = (-D_w).detach().mean(), (-D_l).detach().mean()
    return ObjectiveOutput(losses.mean(), losses, metrics)
