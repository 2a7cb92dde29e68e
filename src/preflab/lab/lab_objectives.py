"""Pairwise losses the lab's loops need, written here from their formulas in the objective contract's form
(`PairBatch` in, `ObjectiveOutput` out) so the lab does not depend on objective modules that other engineers add.
Where `get_objective` finds the registered module, the lab's tests cross-check it against these.

Notation: S the summed log-prob, h = S_theta - S_ref, Delta = h_w - h_l, l(z) = softplus(-z).

- SquaredMarginLoss:  (Delta - target)^2 with a per-pair target in extras["target"]. IPO (Azar et al. 2023,
  arXiv:2310.12036) is target = 1/(2 beta); online IPO (Calandriello et al. 2024, arXiv:2403.08635; EGPO's OIPO-1,
  Zhou et al. 2025, arXiv:2503.08942) is target = ((P pi)_w - (P pi)_l)/beta with pi detached.
- INPOLoss (Zhang et al. 2024, arXiv:2407.00617):
      h_t = (S_w - S_l) - eta tau (S_ref,w - S_ref,l) - (1 - eta tau)(S_t,w - S_t,l),   L = (h_t - eta/2)^2,
  with the previous iterate's log-probs in extras["prev_chosen_logps"], extras["prev_rejected_logps"] (the
  registered `inpo` module's names).
- RobustDPOLoss (Chowdhury, Kini, Natarajan 2024, "Provably Robust DPO", arXiv:2403.00409, Eq. 8):
      L = [(1 - eps) l(beta Delta) - eps l(-beta Delta)] / (1 - 2 eps),   eps = flip rate < 1/2;
  unbiased: (1 - eps) L(Delta) + eps L(-Delta) = l(beta Delta).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError
from preflab.objectives import Objective, ObjectiveOutput, PairBatch, get_objective, list_objectives
from preflab.objectives.base import logratios


@dataclass(frozen=True)
class SquaredMarginLoss(Objective):
    """(h_w - h_l - target)^2, target from extras["target"] [B]."""

    required_extras = ("target",)
    paper = "Azar et al. 2023 (IPO, arXiv:2310.12036); Calandriello et al. 2024 (online IPO, arXiv:2403.08635)"
    checked_against = "paper text: closed form (h - 1/(2 beta))^2 of the IPO paper; the lab's own copy, not registered"

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        losses = (h_w - h_l - torch.as_tensor(batch.extras["target"]).to(h_w)) ** 2
        return ObjectiveOutput(losses.mean(), losses, {})


@dataclass(frozen=True)
class INPOLoss(Objective):
    eta: float = 1.0  # mirror-descent step
    tau: float = 0.1  # KL regularization of the game

    required_extras = ("prev_chosen_logps", "prev_rejected_logps")
    paper = "Zhang et al. 2024, Iterative Nash Policy Optimization (arXiv:2407.00617)"
    checked_against = ("3rd-party: as the registered `inpo` (see its checked_against); its population minimiser is "
                       "the closed form (tests/lab/test_nash_loops.py)")

    def validate(self):
        if not (self.eta > 0 and 0 <= self.eta * self.tau <= 1):
            raise ConfigError(f"INPO needs eta > 0 and 0 <= eta*tau <= 1; got eta={self.eta}, tau={self.tau}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        w = self.eta * self.tau
        policy = batch.policy_chosen.sum - batch.policy_rejected.sum
        ref = batch.ref_chosen.sum - batch.ref_rejected.sum
        prev = torch.as_tensor(batch.extras["prev_chosen_logps"]) - torch.as_tensor(batch.extras["prev_rejected_logps"])
        h = policy - w * ref - (1 - w) * prev.to(policy)
        losses = (h - self.eta / 2) ** 2
        return ObjectiveOutput(losses.mean(), losses, {})


@dataclass(frozen=True)
class RobustDPOLoss(Objective):
    beta: float = 0.1
    flip_rate: float = 0.1  # eps, the probability that a label is flipped

    paper = "Chowdhury, Kini, Natarajan 2024, Provably Robust DPO (arXiv:2403.00409)"
    checked_against = ("reference code: as the registered `robust_dpo` (TRL 1.16 loss_type='robust'); the lab optimum "
                       "equals the registered one's (tests/lab/test_contrasts.py)")

    def validate(self):
        super().validate()
        if not 0 <= self.flip_rate < 0.5:
            raise ConfigError(f"flip_rate must be in [0, 0.5), got {self.flip_rate}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        z, eps = self.beta * (h_w - h_l), self.flip_rate
        losses = ((1 - eps) * -F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
        return ObjectiveOutput(losses.mean(), losses, {})


def registered(name: str) -> bool:
    """Whether preflab.objectives has a module of this name (other engineers add them over time)."""
    return name in list_objectives()


def registered_objective(name: str, candidates: dict):
    """get_objective(name, **params) where each parameter may go by several names in the registered module:
    candidates maps a tuple of accepted names to the value, e.g. {("flip_rate", "epsilon", "label_smoothing"): 0.1}.
    ConfigError when the module is absent or takes none of a parameter's names (a renamed parameter must fail the
    lab's cross-checks, not skip them)."""
    if not registered(name):
        raise ConfigError(f"preflab.objectives has no module {name!r}; the lab cross-check needs it.")
    from preflab.objectives import objective_info

    fields = set(objective_info(name)["params"])
    params = {}
    for names, value in candidates.items():
        match = [n for n in names if n in fields]
        if not match:
            raise ConfigError(f"objective {name!r} takes none of the parameter names {list(names)} (it takes "
                              f"{sorted(fields)}); update the lab cross-check.")
        params[match[0]] = value
    return get_objective(name, **params)


@dataclass(frozen=True)
class FlexDPOLoss(Objective):
    """Flex-DPO (Yan et al. 2024, 3D-properties, arXiv:2406.07327): l(beta_chosen h_w - beta_rejected h_l);
    beta_rejected < beta_chosen slows the drop of the rejected likelihood; equal betas give DPO."""

    beta_chosen: float = 0.1
    beta_rejected: float = 0.08

    paper = "Yan et al. 2024, 3D-Properties: Identifying Challenges in DPO (arXiv:2406.07327)"
    checked_against = "paper text (App. B.2.1): equals the registered `flex_dpo` (tests/lab/test_dpo_3d.py)"

    def validate(self):
        if not (self.beta_chosen > 0 and self.beta_rejected > 0):
            raise ConfigError("Flex-DPO needs beta_chosen > 0 and beta_rejected > 0.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        losses = -F.logsigmoid(self.beta_chosen * h_w - self.beta_rejected * h_l)
        return ObjectiveOutput(losses.mean(), losses, {})
