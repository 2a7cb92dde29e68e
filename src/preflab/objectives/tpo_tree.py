"""TPO (tree): listwise ranking loss over implicit rewards built from step-weighted token log-ratios.

Paper: Liao, Chu, Wang, 2024, "TPO: Aligning Large Language Models with Multi-branch & Multi-step Preference
Trees" (arXiv:2410.12854). Step weights as coded in MrBlankness/TPO@ba87a23 `loss.py`; the lambda weights as the
paper's Eqs. 7-8 (read 2026-12, see below):

    m_ik = mean_{t in step k} (lp_theta - lp_ref)[i, t]
    w_ik = 1 + cos(hbar_ik, hbar_1k)          hbar = mean policy hidden state over the step; 1 = top-scored response
    R_i  = sum_k w_ik m_ik / sum_k w_ik,      s_i = beta R_i       (weights detached)
    L    = sum_{v_i > v_j} lam_ij l(s_i - s_j) / sum lam_ij,   l(u) = -log sigmoid(u)
    lam_ij = |G_i - G_j| |1/ln(1 + tau_i) - 1/ln(1 + tau_j)|,  G = 2^(gain_scale v) - 1, tau = rank by s (descending)

`lambda_weight="uniform"` sets lam_ij = 1 (RankNet over ordered pairs); `step_weights="uniform"` sets w = 1.
`step_weights="pairwise"` is the paper's Eq. 10 as written (with Eq. 9): the pair (i, j) is ranked on the margin

    RM_ij = beta sum_k (1 + cos(hbar_ik, hbar_jk)) (S_ik - S_jk),   S_ik = sum_{t in step k} (lp_theta - lp_ref)[i, t]

(step log-ratios summed, not averaged; cos between the two responses' own step k), l(RM_ij) in place of
l(s_i - s_j), and the lambda ranks tau by r_i = beta sum_k S_ik (Eq. 9's response reward). Eq. 10 assumes both
responses have the same steps: a ranked pair whose step sets differ is refused.
`lambda_reduction="sum"` is the paper's Eq. 7 as written: L = sum_{v_i > v_j} lam_ij l(s_i - s_j), no division,
with G = 2^(gain_scale v) unshifted (|G_i - G_j| = |2^v_i - 2^v_j| as in Eq. 8) and the natural log; the default
"normalized" divides by sum lam_ij, which makes the loss invariant to a shift of v and to the log base (both are
per-list factors), and keeps it O(1) for the paper's ChatGPT scores in [-100, 100] (2^100 in Eq. 8 as written;
Eq. 7 takes "typically v in [0, 1]"). Scores whose 2^(gain_scale v) over- or underflows are refused under "sum".
Audit 2026-12 (paper-audit-2): the paper's text (ICLR 2025 submission PDF, stored in ChangshuoShen/ICLR_2025_4_DPO@
8814195 `papers/9326_TPO_Aligning_Large_Langua.pdf`, §3.1 Eqs. 7-8) gives lam_ij = |2^v_i - 2^v_j| |1/log(1 + tau(i))
- 1/log(1 + tau(j))|, tau the rank under the implicit rewards r, summed over v_i > v_j without normalisation: the
weights above; the reduction is `lambda_reduction="sum"`. Its Eq. 10 weights the pairwise step margin by
1 + cos(emb(s_ik), emb(s_jk)) and sums over steps; the released code (kept as the default "adaptive") weights each
response's steps by 1 + cos to response 0 and averages them, on per-step token means. Paper's beta 0.5 (§4.1) = the
default. Audit 2026-12 (paper-audit-3): Eq. 10 added as `step_weights="pairwise"` (by hand in the tests); the default
stays the released code's weighting, the form the authors ran (the paper gives no reason for either aggregation).
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

from preflab.errors import ConfigError, PreflabError
from preflab.objectives.base import ListBatch, Objective, ObjectiveOutput, as_loss_dtype


@dataclass(frozen=True)
class TPOTree(Objective):
    beta: float = 0.5                 # `tpo_train.py` default
    lambda_weight: str = "lambdarank"  # "lambdarank" | "uniform"
    step_weights: str = "adaptive"     # "adaptive" (1 + cos to the top response) | "uniform" | "pairwise" (Eq. 10)
    gain_scale: float = 1.0           # G = 2^(gain_scale * v) - 1
    lambda_reduction: str = "normalized"  # "normalized" (sum lam l / sum lam) | "sum" (the paper's Eq. 7)

    batch_type = ListBatch
    required_extras = ("step_index",)
    token_needs = ("hidden",)
    paper = "Liao et al. 2024, TPO: Multi-branch & Multi-step Preference Trees (arXiv:2410.12854)"
    checked_against = ("official code: MrBlankness/TPO@ba87a23 loss.py (step weights match; its ranking loss has no "
                       "lambda weights = lambda_weight='uniform'); paper text Eqs. 7-8 (lambda weights match; its "
                       "unnormalised sum = lambda_reduction='sum') and Eq. 10 (= step_weights='pairwise')")
    tags = {"data": ("list-wise", "step-level"), "framework": ("offline",), "constraint": ("reference",),
            "property": ()}

    def validate(self):
        super().validate()
        if self.lambda_weight not in ("lambdarank", "uniform") or \
                self.step_weights not in ("adaptive", "uniform", "pairwise"):
            raise ConfigError("TPOTree: lambda_weight must be 'lambdarank' or 'uniform'; step_weights must be "
                              "'adaptive', 'uniform' or 'pairwise' (the paper's Eq. 10).")
        if self.lambda_reduction not in ("normalized", "sum"):
            raise ConfigError(f"TPOTree: lambda_reduction must be 'normalized' or 'sum' (the paper's Eq. 7), got "
                              f"{self.lambda_reduction!r}.")

    def compute(self, batch: ListBatch) -> ObjectiveOutput:
        lr = as_loss_dtype(batch.policy.token_logps) - as_loss_dtype(batch.ref.token_logps)  # [B, K, T]
        step = torch.as_tensor(batch.extra("step_index", "TPOTree"), device=lr.device)
        active = batch.policy.mask & (step > 0)
        onehot = (step.unsqueeze(-1) == torch.arange(1, int(step.max().clamp_min(1)) + 1, device=lr.device))
        onehot = (onehot & active.unsqueeze(-1)).to(lr.dtype)                               # [B, K, T, S]
        cnt = onehot.sum(-2)                                                                # [B, K, S]
        m = torch.einsum("bkt,bkts->bks", torch.where(active, lr, torch.zeros_like(lr)), onehot) / cnt.clamp_min(1)
        valid, v = batch.valid, batch.scores.to(lr.dtype)
        pairs = (v.unsqueeze(-1) > v.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)
        if self.step_weights != "uniform":
            hid = torch.as_tensor(batch.extra("hidden", "TPOTree"), dtype=lr.dtype, device=lr.device).detach()
            hbar = torch.einsum("bkth,bkts->bksh", hid, onehot) / cnt.clamp_min(1).unsqueeze(-1)
        margins = None                                                                      # [B, K, K] or s_i - s_j
        if self.step_weights == "pairwise":
            s, margins = self._eq10_rewards_and_margins(lr, active, onehot, cnt, hbar, pairs)
        else:
            if self.step_weights == "adaptive":
                top = torch.where(valid, v, torch.full_like(v, -torch.inf)).argmax(-1)      # [B]
                gold = hbar[torch.arange(v.shape[0]), top].unsqueeze(1)                     # [B, 1, S, H]
                w = (1 + F.cosine_similarity(hbar, gold, dim=-1)) * (cnt > 0)
            else:
                w = (cnt > 0).to(lr.dtype)
            s = self.beta * (w * m).sum(-1) / w.sum(-1).clamp_min(1e-12)                   # [B, K]
        if self.lambda_weight == "lambdarank":
            sd = torch.where(valid, s.detach(), torch.full_like(s, -torch.inf))
            rank = sd.argsort(-1, descending=True).argsort(-1).to(lr.dtype) + 1
            vs = torch.where(valid, v * self.gain_scale, torch.full_like(v, -torch.inf))
            gain = torch.exp2(vs if self.lambda_reduction == "sum" else vs - vs.max(-1, keepdim=True).values)
            if self.lambda_reduction == "sum" and (torch.isinf(gain) | (valid & (gain == 0))).any():
                raise PreflabError("TPOTree: 2^(gain_scale * score) overflows or underflows under "
                                   "lambda_reduction='sum' (the paper's Eq. 8 takes scores in [0, 1]); rescale the "
                                   "scores, lower gain_scale, or use lambda_reduction='normalized'.")
            disc = 1 / torch.log1p(rank)
            lam = (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs() * (disc.unsqueeze(-1) - disc.unsqueeze(-2)).abs()
            lam = torch.where(pairs, lam, torch.zeros_like(lam))
        else:
            lam = pairs.to(lr.dtype)
        if margins is None:
            margins = s.unsqueeze(-1) - s.unsqueeze(-2)
        pair_loss = F.softplus(-margins)
        losses = (lam * pair_loss).sum((-1, -2))
        if self.lambda_reduction == "normalized":
            losses = losses / lam.sum((-1, -2)).clamp_min(1e-30)
        acc = ((margins > 0) & pairs).sum((-1, -2)) / pairs.sum((-1, -2)).clamp_min(1)
        metrics = {"rewards/mean": s.detach().mean(), "rewards/accuracies": acc.to(lr.dtype).mean()}
        return ObjectiveOutput(losses.mean(), losses, metrics)

    def _eq10_rewards_and_margins(self, lr, active, onehot, cnt, hbar, pairs):
        """The paper's Eqs. 9-10: r_i = beta sum_k S_ik with S_ik the step's summed token log-ratio (Eq. 9: the
        response's log-ratio), and the pair margin RM_ij = beta sum_k (1 + cos(emb_ik, emb_jk)) (S_ik - S_jk)
        (Eq. 10, emb = the step's mean hidden state, detached). Eq. 10 assumes both responses have the same
        steps; a ranked pair whose step sets differ is refused."""
        S = torch.einsum("bkt,bkts->bks", torch.where(active, lr, torch.zeros_like(lr)), onehot)  # [B, K, S]
        present = cnt > 0
        differ = (present.unsqueeze(2) != present.unsqueeze(1)).any(-1) & pairs           # [B, K, K]
        if differ.any():
            b, i, j = (int(x) for x in differ.nonzero()[0])
            raise PreflabError(
                f"TPOTree step_weights='pairwise' (the paper's Eq. 10) pairs step k of one response with step k of "
                f"the other, so both need the same steps: list {b} of the batch ranks response {i} "
                f"({int(present[b, i].sum())} steps) against response {j} ({int(present[b, j].sum())} steps). "
                f"Give every response of a list the same number of steps, or use step_weights='adaptive'.")
        cos = F.cosine_similarity(hbar.unsqueeze(2), hbar.unsqueeze(1), dim=-1)           # [B, K, K, S]
        both = (present.unsqueeze(2) & present.unsqueeze(1)).to(lr.dtype)
        margins = self.beta * ((1 + cos) * both * (S.unsqueeze(2) - S.unsqueeze(1))).sum(-1)
        return self.beta * S.sum(-1), margins

    @classmethod
    def example_extras(cls, batch) -> dict:
        mask = batch.policy.mask
        t = torch.arange(mask.shape[-1])
        half = (batch.policy.length.long().unsqueeze(-1) + 1) // 2
        step = torch.where(mask, 1 + (t >= half).long(), torch.zeros_like(t))
        gen = torch.Generator().manual_seed(0)
        return {"step_index": step, "hidden": torch.randn(*mask.shape, 4, generator=gen, dtype=torch.float64)}


OBJECTIVE = TPOTree
