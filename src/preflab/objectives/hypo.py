"""HyPO: hybrid preference optimization; offline DPO on preference pairs plus an online reverse-KL penalty
estimated on fresh samples from the current policy, with a REINFORCE leave-one-out (RLOO) gradient.

Paper: Song, Swamy, Singh, Bagnell, Sun, 2024, "The Importance of Online Data: Understanding Preference Fine-tuning
via Coverage" (arXiv:2406.01462), the HyPO objective. From methods/objectives.md §C #7, written from memory; only the
hyper-parameter names (beta, lambda, k for RLOO) were confirmed by a paper summary. Unverified.

    L = -log sigmoid(beta * Delta) + lam * KL(pi_theta || pi_ref),   KL ~ (1/k) sum_i rho_i,  rho_i = S_theta(y_i) - S_ref(y_i)
    gradient of the KL term:  (1/k) sum_i (rho_i - mean_{j != i} rho_j) * grad S_theta(y_i)   (RLOO, unbiased)

Extras: online_policy_logps [B, k] = S_theta(y_i) of k >= 2 samples y_i ~ pi_theta(.|x) per prompt (with gradient),
online_ref_logps [B, k] = S_ref(y_i). `preflab train` with loss_type: hypo (preflab.online.hypo_offline.HyPOTrainer) runs the
paper's data split: the DPO term on the offline pairs, k fresh samples of the current policy per pair's prompt each
step (hypo_online_samples) for the KL term. The online recipe trainer: hypo_online_pairs feeds judged online pairs
instead (online DPO + this KL term).

Deviation from the paper: unverified (see above). The KL term's value is the plain estimate (1/k) sum rho_i while
its gradient is the RLOO one (value and gradient are combined with a stop-gradient), so the logged loss is
DPO + lam * KL-estimate.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError, PreflabError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, logratios, reward_metrics


@dataclass(frozen=True)
class HyPO(Objective):
    beta: float = 0.1   # DPO inverse temperature
    lam: float = 0.01   # weight of the online KL term (unverified default); 0 gives DPO

    required_extras = ("online_policy_logps", "online_ref_logps")
    gradient_extras = ("online_policy_logps",)
    gradient_extras_hint = ("Run it with `preflab train` (task: dpo, loss_type: hypo, hypo_online_samples: k): "
                            "preflab.online.hypo_offline.HyPOTrainer samples and scores the policy's responses each step; or "
                            "the online run's hypo_online_pairs recipe.")
    paper = "Song et al. 2024, The Importance of Online Data (HyPO) (arXiv:2406.01462)"
    checked_against = "unverified: from memory; only beta, lambda, k names confirmed by a paper summary"
    tags = {"data": ("pair-wise",), "framework": ("online", "offline"), "constraint": ("reference", "divergence"),
            "property": ()}

    def validate(self):
        super().validate()
        if self.lam < 0:
            raise ConfigError(f"HyPO: lam must be >= 0, got {self.lam}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        pol = as_loss_dtype(torch.as_tensor(batch.extra("online_policy_logps", "HyPO"))).to(h_w.device)
        ref = as_loss_dtype(torch.as_tensor(batch.extra("online_ref_logps", "HyPO"))).to(pol)
        k = pol.shape[-1]
        if pol.dim() != 2 or k < 2 or ref.shape != pol.shape:
            raise PreflabError(f"HyPO needs online_policy_logps and online_ref_logps of shape [B, k>=2], got "
                               f"{tuple(pol.shape)} and {tuple(ref.shape)}; sample at least 2 responses per prompt.")
        rho = (pol - ref).detach()
        advantage = rho - (rho.sum(-1, keepdim=True) - rho) / (k - 1)   # rho_i - mean_{j != i} rho_j
        surrogate = (advantage * pol).mean(-1)
        kl = rho.mean(-1) + surrogate - surrogate.detach()
        losses = -F.logsigmoid(self.beta * (h_w - h_l)) + self.lam * kl
        metrics = reward_metrics(batch, self.beta)
        metrics["kl/online"] = rho.mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)

    @classmethod
    def example_extras(cls, batch) -> dict:
        pol = torch.tensor([[-5.0, -7.0, -6.0, -4.5]], dtype=torch.float64).expand(batch.size, 4)
        return {"online_policy_logps": pol, "online_ref_logps": pol - torch.tensor([0.3, -0.2, 0.1, 0.5])}


OBJECTIVE = HyPO
