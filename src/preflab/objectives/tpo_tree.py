"""TPO (tree): listwise ranking loss over implicit rewards built from step-weighted token log-ratios.

Paper: Liao, Chu, Wang, 2024, "TPO: Aligning Large Language Models with Multi-branch & Multi-step Preference
Trees" (arXiv:2410.12854). Step weights as coded in MrBlankness/TPO@ba87a23 `loss.py`; the lambda-weighted ranking
form is from memory (unverified as the paper's equation):

    m_ik = mean_{t in step k} (lp_theta - lp_ref)[i, t]
    w_ik = 1 + cos(hbar_ik, hbar_1k)          hbar = mean policy hidden state over the step; 1 = top-scored response
    R_i  = sum_k w_ik m_ik / sum_k w_ik,      s_i = beta R_i       (weights detached)
    L    = sum_{v_i > v_j} lam_ij l(s_i - s_j) / sum lam_ij,   l(u) = -log sigmoid(u)
    lam_ij = |G_i - G_j| |1/ln(1 + tau_i) - 1/ln(1 + tau_j)|,  G = 2^(gain_scale v) - 1, tau = rank by s (descending)

`lambda_weight="uniform"` sets lam_ij = 1 (RankNet over ordered pairs); `step_weights="uniform"` sets w = 1.
Audit 2026-12 (MrBlankness/TPO@ba87a23 `loss.py`, re-read): `compute_step_weights` / `compute_weighted_logits`
match w_ik and R_i above (cosine to response 0 of the list, which the data puts first); the released
`lambda_rank_loss` has NO lambda weights -- it is lambda_weight="uniform" over all ordered pairs (each counted
twice, ties included), so the lambdarank default is the paper's method name, not the released code (unverified).
Extras: `step_index` [B, K, T] int (0 = not a response token, k >= 1 = step k); `hidden` [B, K, T, H] (the policy's
last hidden states, token need "hidden"; read only for adaptive weights). v = ListBatch.scores. The tree -> list
builder (steps, scores) lives in the data layer.

Deviation from the paper: the released loss is not ported (it scores unshifted log-probs, wraps the ranking loss in
-log sigmoid(beta * .), which maximizes it, and double-counts pairs and ties); here each ordered pair v_i > v_j is
counted once and ties give no pair. G is computed shifted by max v (cancels in the normalized loss); use
gain_scale = 0.1 for TPO's scores in [-100, 100].
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError
from preflab.objectives.base import ListBatch, Objective, ObjectiveOutput, as_loss_dtype


@dataclass(frozen=True)
class TPOTree(Objective):
    beta: float = 0.5                 # `tpo_train.py` default
    lambda_weight: str = "lambdarank"  # "lambdarank" | "uniform"
    step_weights: str = "adaptive"     # "adaptive" (1 + cos to the top response) | "uniform"
    gain_scale: float = 1.0           # G = 2^(gain_scale * v) - 1

    batch_type = ListBatch
    required_extras = ("step_index",)
    token_needs = ("hidden",)
    paper = "Liao et al. 2024, TPO: Multi-branch & Multi-step Preference Trees (arXiv:2410.12854)"
    checked_against = ("official code: MrBlankness/TPO@ba87a23 loss.py (step weights match; its ranking loss has no "
                       "lambda weights = lambda_weight='uniform'); the lambdarank default is unverified")
    tags = {"data": ("list-wise", "step-level"), "framework": ("offline",), "constraint": ("reference",),
            "property": ()}

    def validate(self):
        super().validate()
        if self.lambda_weight not in ("lambdarank", "uniform") or self.step_weights not in ("adaptive", "uniform"):
            raise ConfigError("TPOTree: lambda_weight must be 'lambdarank' or 'uniform'; step_weights must be "
                              "'adaptive' or 'uniform'.")

    def compute(self, batch: ListBatch) -> ObjectiveOutput:
        lr = as_loss_dtype(batch.policy.token_logps) - as_loss_dtype(batch.ref.token_logps)  # [B, K, T]
        step = torch.as_tensor(batch.extra("step_index", "TPOTree"), device=lr.device)
        active = batch.policy.mask & (step > 0)
        onehot = (step.unsqueeze(-1) == torch.arange(1, int(step.max().clamp_min(1)) + 1, device=lr.device))
        onehot = (onehot & active.unsqueeze(-1)).to(lr.dtype)                               # [B, K, T, S]
        cnt = onehot.sum(-2)                                                                # [B, K, S]
        m = torch.einsum("bkt,bkts->bks", torch.where(active, lr, torch.zeros_like(lr)), onehot) / cnt.clamp_min(1)
        valid, v = batch.valid, batch.scores.to(lr.dtype)
        if self.step_weights == "adaptive":
            hid = torch.as_tensor(batch.extra("hidden", "TPOTree"), dtype=lr.dtype, device=lr.device).detach()
            hbar = torch.einsum("bkth,bkts->bksh", hid, onehot) / cnt.clamp_min(1).unsqueeze(-1)
            top = torch.where(valid, v, torch.full_like(v, -torch.inf)).argmax(-1)          # [B]
            gold = hbar[torch.arange(v.shape[0]), top].unsqueeze(1)                         # [B, 1, S, H]
            w = (1 + F.cosine_similarity(hbar, gold, dim=-1)) * (cnt > 0)
        else:
            w = (cnt > 0).to(lr.dtype)
        s = self.beta * (w * m).sum(-1) / w.sum(-1).clamp_min(1e-12)                       # [B, K]
        pairs = (v.unsqueeze(-1) > v.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)
        if self.lambda_weight == "lambdarank":
            sd = torch.where(valid, s.detach(), torch.full_like(s, -torch.inf))
            rank = sd.argsort(-1, descending=True).argsort(-1).to(lr.dtype) + 1
            vs = torch.where(valid, v * self.gain_scale, torch.full_like(v, -torch.inf))
            gain = torch.exp2(vs - vs.max(-1, keepdim=True).values)                        # 2^v up to a factor
            disc = 1 / torch.log1p(rank)
            lam = (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs() * (disc.unsqueeze(-1) - disc.unsqueeze(-2)).abs()
            lam = torch.where(pairs, lam, torch.zeros_like(lam))
        else:
            lam = pairs.to(lr.dtype)
        pair_loss = F.softplus(-(s.unsqueeze(-1) - s.unsqueeze(-2)))
        losses = (lam * pair_loss).sum((-1, -2)) / lam.sum((-1, -2)).clamp_min(1e-30)
        acc = ((s.unsqueeze(-1) > s.unsqueeze(-2)) & pairs).sum((-1, -2)) / pairs.sum((-1, -2)).clamp_min(1)
        metrics = {"rewards/mean": s.detach().mean(), "rewards/accuracies": acc.to(lr.dtype).mean()}
        return ObjectiveOutput(losses.mean(), losses, metrics)

    @classmethod
    def example_extras(cls, batch) -> dict:
        mask = batch.policy.mask
        t = torch.arange(mask.shape[-1])
        half = (batch.policy.length.long().unsqueeze(-1) + 1) // 2
        step = torch.where(mask, 1 + (t >= half).long(), torch.zeros_like(t))
        gen = torch.Generator().manual_seed(0)
        return {"step_index": step, "hidden": torch.randn(*mask.shape, 4, generator=gen, dtype=torch.float64)}


OBJECTIVE = TPOTree
