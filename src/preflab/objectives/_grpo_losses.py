"""The per-token forms of TRL 1.16's GRPO loss types beyond the clipped surrogate (preflab.objectives.grpo).

With rho the importance ratio (per token, or the completion's GSPO ratio at importance_sampling_level sequence),
A the completion's advantage and lp the policy's token log-prob:

    cispo  l_t = -sg(min(rho, epsilon_high)) A lp_t
           CISPO, MiniMax-M1 (MiniMax, 2025, arXiv:2506.13585): the importance weight is clipped (and detached), not
           the surrogate, so every token keeps a gradient. epsilon_high is the absolute cap eps_max (TRL's option;
           ScaleRL, arXiv:2510.13786, recommends 5.0; unset it is epsilon, as TRL's epsilon_high falls back).
    sapo   l_t = -(4 / tau) sigmoid(tau (rho - 1)) A,  tau = sapo_temperature_pos if A > 0 else sapo_temperature_neg
           SAPO (Gao et al., 2025, "Soft Adaptive Policy Optimization", arXiv:2511.20347): a smooth gate in place of
           the hard clip; its gradient at rho = 1 is the policy gradient -A grad rho.
    luspo  the clipped surrogate of grpo, aggregated as sum_t over each completion, mean over completions
           LUSPO (arXiv:2602.05261, "Length-Unbiased Sequence Policy Optimization"): GSPO whose sequence loss is
           scaled by its length; with the sequence ratio (required here) every token carries the same term.
    vespo  l_t = -sg(phi(w)) A lp_t,  phi(w) = exp(lambda + k log w - lambda w) = e^lambda w^k e^(-lambda w)
           w = exp(clamp(sum_t clamp(lp_t - lp_old_t, -20, 20), log 1e-8, 20)) the completion's (summed, not mean)
           ratio; (k, lambda) = (vespo_k_pos, vespo_lambda_pos) if A >= 0 else the _neg pair (lambda >= 1e-4);
           a non-finite phi is 0 (TRL's get_gamma_weights). VESPO (arXiv:2602.10693, "Variational Sequence-Level
           Soft Policy Optimization"): phi(1) = 1, so on-policy it is the policy gradient.
Aggregations (TRL 1.16): sapo as grpo (token mean per completion, mean over completions), cispo and vespo as dapo
(sum over the generation batch's completion tokens), luspo as above.
"""
import math

import torch


def cispo_per_token(ratio: torch.Tensor, lp: torch.Tensor, adv: torch.Tensor, epsilon_high: float) -> torch.Tensor:
    return -ratio.clamp(max=epsilon_high).detach() * adv * lp


def sapo_per_token(ratio: torch.Tensor, adv: torch.Tensor, tau_pos: float, tau_neg: float) -> torch.Tensor:
    tau = torch.where(adv > 0, tau_pos, tau_neg).to(ratio.dtype)
    return -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv


@torch.no_grad()
def vespo_weights(log_ratio: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, k_pos: float, lambda_pos: float,
                  k_neg: float, lambda_neg: float) -> torch.Tensor:
    """phi(w) [..., 1] from token log-ratios [..., T] (detached), as TRL 1.16's GRPOTrainer.get_gamma_weights."""
    lower = math.log(1e-8)
    seq = (log_ratio.clamp(-20.0, 20.0) * mask).sum(-1, keepdim=True)
    log_w = seq.clamp(lower, 20.0)
    nonneg = adv >= 0
    k = torch.where(nonneg, k_pos, k_neg).to(log_w.dtype)
    lam = torch.where(nonneg, lambda_pos, lambda_neg).to(log_w.dtype).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, quantile: float,
                      threshold: torch.Tensor | None = None) -> torch.Tensor:
    """[..., T] bool: the trained tokens whose entropy is at least the top_entropy_quantile cut (TRL 1.16
    GRPOTrainer.get_high_entropy_mask; Wang et al., 2025, "Beyond the 80/20 Rule", arXiv:2506.01939):

        tau = quantile_{1 - rho}(H_t over the trained tokens)    (torch.quantile, linear interpolation, float32)
        keep_t = m_t and H_t m_t >= tau                            (no trained token: keep none)

    `quantile` is 1 - rho; `threshold`: tau computed elsewhere (over every process's tokens, as TRL gathers them);
    None: over this batch's."""
    if threshold is None:
        values = entropy[mask].float()
        if values.numel() == 0:
            return torch.zeros_like(mask)
        threshold = torch.quantile(values, quantile)
    return ((entropy * mask.float()) >= threshold) & mask


def off_policy_sequence_mask(advantages: torch.Tensor, lp: torch.Tensor, sampling_lp: torch.Tensor,
                             mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """[..., 1] in {0, 1} of mask's dtype: TRL 1.16 GRPOTrainer.get_off_policy_mask (off_policy_mask_threshold;
    DeepSeek-AI, 2025, DeepSeek-V3.2, arXiv:2512.02556, Eq. 9): a completion is dropped from the policy loss when
    its advantage is negative and its mean token KL estimate from the sampling policy exceeds delta,

        KL_i = sum_t m_t (lp_old_t - sg(lp_t)) / max(sum_t m_t, 1)     (NaN log-probs count 0)
        keep_i = A_i >= 0 or KL_i <= delta

    advantages [..., 1]; lp, sampling_lp, mask [..., T]."""
    kl = (sampling_lp - lp.detach()).nan_to_num(nan=0.0)
    seq_kl = (kl * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
    return ((advantages >= 0) | (seq_kl <= threshold)).to(mask.dtype)
