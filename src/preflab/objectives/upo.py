"""UPO: DPO against the previous iterate with per-pair label smoothing from uncertainty, plus a weighted NLL.

Paper: Wang et al., 2025 (AAAI), "Self-Evolutionary Large Language Models through Uncertainty-Enhanced
Preference Optimization" (arXiv id not checked); objective as printed in the paper, per the spec
(methods/models-and-loops.md #26; the released trainer has no per-pair alpha):

    L = (1 - alpha) l(beta Delta') + alpha l(-beta Delta') + lam * (-S_theta(y_w)) / max(|r(y_w)|, eps)

l(z) = -log sigmoid(z); Delta' = [S_theta - S_t](y_w) - [S_theta - S_t](y_l). The reference slots carry the
previous iterate pi_{t-1}. Extras: `alpha` [B] in [0, 1] (per-pair smoothing, from the estimator's BALD score --
see `alpha_from_bald`); `chosen_reward_abs` [B] = |r^{t-1}(x, y_w)|, read only when lam > 0. alpha = 0, lam = 0
gives DPO. MC-dropout estimation and reliable-pair sampling live in the selection/loop layer (`uncertainty_select`,
`online/upo`).

Audit 2026-12 (wjn1996/Uncertainty-Preference-Optimization@29a1c21): the released DPO step is LLaMA-Factory's
(`src/alignment/train/dpo/trainer.py`: sigmoid loss with one global dpo_label_smoothing, i.e. this loss with a
constant alpha; pref_ftx adds the mean (not summed, not reward-scaled) chosen NLL). Its reference at iteration >= 2
is not the previous iterate: the iteration-2 config resumes the iteration-1 LoRA adapter as the policy
(`adapter_name_or_path`, create_new_adapter false: `src/alignment/model/adapter.py`) and, with ref_model unset and
finetuning_type lora, scores the reference with the adapter disabled (trainer.py `disable_adapter()`), i.e. the SFT
model. This objective keeps the paper's pi_{t-1} reference (the spec); the loop refreshes it every round.

Deviation from the paper: the printed alpha_j = 1/(P_j + 1) is degenerate (alpha near 1 prefers the rejected
response), so alpha is an input and the default mapping is the library's alpha = alpha_max * BALD / ln 2; the NLL
is printed as "+lam log pi" and implemented as -log pi (an NLL); |r| is floored at eps.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError, PreflabError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, logratios, reward_metrics


def alpha_from_bald(bald: torch.Tensor, alpha_max: float = 0.1) -> torch.Tensor:
    """Library mapping of BALD mutual information (0 <= B <= ln 2) to the smoothing alpha in [0, alpha_max]."""
    return alpha_max * torch.as_tensor(bald).clamp(0, math.log(2)) / math.log(2)


@dataclass(frozen=True)
class UPO(Objective):
    beta: float = 0.1         # DPO inverse temperature (released DPO config)
    nll_weight: float = 0.0   # lam, weight of the reward-scaled NLL on y_w (paper value not given)
    reward_eps: float = 1e-3  # floor on |r(y_w)| in the NLL weight

    required_extras = ("alpha",)
    paper = "Wang et al. 2025, Uncertainty-Enhanced Preference Optimization (UPO), AAAI 2025"
    checked_against = ("official code: wjn1996/Uncertainty-Preference-Optimization@29a1c21 src/alignment/train/dpo/"
                       "trainer.py (LLaMA-Factory DPO: beta 0.1, global label smoothing = constant alpha, no per-pair "
                       "alpha; reference = SFT via disable_adapter, not pi_{t-1}), re-read 2026-12 + paper text "
                       "(spec) for per-pair alpha, the NLL and the pi_{t-1} reference")
    tags = {"data": ("pair-wise",), "framework": ("iterative",), "constraint": ("reference",),
            "property": ("uncertainty",)}

    def validate(self):
        super().validate()
        if self.nll_weight < 0 or not self.reward_eps > 0:
            raise ConfigError(f"UPO: need nll_weight >= 0 and reward_eps > 0, got {self.nll_weight}, "
                              f"{self.reward_eps}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        alpha = torch.as_tensor(batch.extra("alpha", "UPO"), dtype=h_w.dtype, device=h_w.device)
        if ((alpha < 0) | (alpha > 1)).any():
            raise PreflabError("UPO: extras['alpha'] must lie in [0, 1] (alpha >= 0.5 reverses the preference).")
        z = self.beta * (h_w - h_l)
        losses = (1 - alpha) * -F.logsigmoid(z) + alpha * -F.logsigmoid(-z)
        metrics = reward_metrics(batch, self.beta)
        if self.nll_weight > 0:
            r_abs = torch.as_tensor(batch.extra("chosen_reward_abs", "UPO"), dtype=h_w.dtype, device=h_w.device)
            nll = -batch.policy_chosen.sum.to(h_w.dtype) / r_abs.abs().clamp_min(self.reward_eps)
            losses = losses + self.nll_weight * nll
            metrics["nll_loss"] = nll.detach().mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)

    @classmethod
    def example_extras(cls, batch) -> dict:
        b = batch.size
        return {"alpha": torch.linspace(0.0, 0.1, b, dtype=torch.float64),
                "chosen_reward_abs": torch.linspace(0.5, 2.0, b, dtype=torch.float64)}


OBJECTIVE = UPO
