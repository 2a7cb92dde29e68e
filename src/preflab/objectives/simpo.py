"""SimPO: reference-free, length-normalised margin loss with a target reward margin (TRL CPOTrainer `simpo`).

Paper: Meng, Xia & Chen, 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"
(arXiv:2405.14734), Eq. 6. With A(y) = S_theta(y)/|y| (mean token log-prob), z = beta (A_w - A_l) - gamma:

    L = (1 - eps) l(z) + eps l(-z) + cpo_alpha * NLL,   l(z) = -log sigmoid(z),  eps = label_smoothing

gamma = `simpo_gamma` (reward units, TRL's name and default 0.5 = the official 2.0 x 0.25), or beta *
`gamma_beta_ratio` (the official code's name) when that is given. NLL = batch token-mean NLL of the chosen responses.

Deviation from the paper: none at the defaults (cpo_alpha = 0, eps = 0, which is pure SimPO; TRL's CPOConfig defaults
cpo_alpha to 1.0). Metrics follow TRL's CPO trainer: rewards = beta * A (AlphaPO: beta * r), logps/* = A, nll_loss
(0 when cpo_alpha = 0).

Defaults (paper audit 2026-12): the class defaults beta = 2.0, gamma = 0.5 are the official code's, princeton-nlp/SimPO
`scripts/simpo_config.py` (@1aa921d: beta 2.0, gamma_beta_ratio 0.25, label_smoothing 0, sft_weight 0) with
`scripts/simpo_trainer.py::simpo_loss` (@15c4ff8: -log sigmoid(beta ((A_w - A_l) - gamma_beta_ratio)) on
`get_batch_logps(average_log_prob=True)`): equal to 1e-12 (tests/objectives/test_simpo.py). A preflab run whose config
leaves `beta` out trains at TRL CPOConfig's beta 0.1 (and simpo_gamma 0.5, so gamma/beta = 5) -- deliberate, the
drop-in TRL behaviour for TRL's loss type (preflab.objectives._own_beta) -- not at the paper's 2.0: set `beta: 2.0`
for the official code's default (its per-model recipes were not re-read in this audit).
"""
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from preflab.errors import ConfigError
from preflab.objectives.base import MEAN_LOGPS, Objective, ObjectiveOutput, PairBatch, as_loss_dtype, reward_metrics
from preflab.objectives.sft import batch_token_nll


def policy_metrics(batch: PairBatch, beta: float, x_w: Tensor, x_l: Tensor, nll: Tensor | None = None,
                   logps: tuple[Tensor, Tensor] | None = None) -> dict:
    """TRL CPO/ORPO metrics for reference-free rewards beta * x; logps/* report `logps` (TRL's policy_chosen_logps /
    policy_rejected_logps), x itself by default."""
    metrics = reward_metrics(batch, beta, beta * x_w, beta * x_l)
    lp_w, lp_l = logps if logps is not None else (x_w, x_l)
    metrics["logps/chosen"], metrics["logps/rejected"] = lp_w.detach().mean(), lp_l.detach().mean()
    if nll is not None:
        metrics["nll_loss"] = nll.detach()
    return metrics


def smoothed(z: Tensor, eps: float) -> Tensor:
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


@dataclass(frozen=True)
class SimPO(Objective):
    reward_meaning = "beta * mean token log-prob (no reference)"
    logps_meaning = MEAN_LOGPS
    beta: float = 2.0                     # reward scale
    simpo_gamma: float = 0.5              # target margin gamma in reward units (TRL's name)
    gamma_beta_ratio: float | None = None  # official code's gamma/beta; when set, gamma = beta * ratio
    label_smoothing: float = 0.0
    cpo_alpha: float = 0.0                # weight of the chosen NLL term (TRL's name; 0 = pure SimPO)

    needs_reference = False
    paper = "Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward (arXiv:2405.14734)"
    checked_against = ("reference code: TRL 1.16 CPOTrainer.cpo_loss loss_type='simpo'; NLL by hand "
                       "(tests/objectives/test_trl_parity.py, 1e-9); class defaults: official princeton-nlp/SimPO "
                       "simpo_config.py + SimPOTrainer.simpo_loss (tests/objectives/test_simpo.py)")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference-free",),
            "property": ("length",)}

    @property
    def micro_batch_statistic(self) -> bool:
        """The NLL term (cpo_alpha > 0) is the micro-batch's chosen-token mean, TRL's (base.couples_micro_batch)."""
        return self.cpo_alpha != 0

    @property
    def gamma(self) -> float:
        return self.beta * self.gamma_beta_ratio if self.gamma_beta_ratio is not None else self.simpo_gamma

    def validate(self):
        super().validate()
        name, default_gamma = type(self).__name__, self.__dataclass_fields__["simpo_gamma"].default
        if self.gamma_beta_ratio is not None and not isinstance(self.gamma_beta_ratio, (int, float)):
            raise ConfigError(f"{name}: gamma_beta_ratio must be None or a number, got {self.gamma_beta_ratio!r}.")
        if self.gamma_beta_ratio is not None and self.simpo_gamma != default_gamma:
            raise ConfigError(f"{name}: give either simpo_gamma or gamma_beta_ratio, not both.")
        if not 0 <= self.label_smoothing < 0.5 or self.cpo_alpha < 0:
            raise ConfigError(f"{name}: label_smoothing must be in [0, 0.5) and cpo_alpha >= 0.")

    def rewards(self, batch: PairBatch) -> tuple[Tensor, Tensor]:
        """Per-response reward before beta: A(y) for SimPO."""
        return as_loss_dtype(batch.policy_chosen.mean), as_loss_dtype(batch.policy_rejected.mean)

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        x_w, x_l = self.rewards(batch)
        losses = smoothed(self.beta * (x_w - x_l) - self.gamma, self.label_smoothing)
        # TRL's CPOTrainer logs nll_loss 0.0 when cpo_alpha is 0, and logps/* the mean log-probs A (AlphaPO's shaped
        # reward only in rewards/*)
        nll = batch_token_nll(batch.policy_chosen) if self.cpo_alpha else x_w.new_zeros(())
        if self.cpo_alpha:
            losses = losses + self.cpo_alpha * nll
        logps = SimPO.rewards(self, batch)
        return ObjectiveOutput(losses.mean(), losses, policy_metrics(batch, self.beta, x_w, x_l, nll, logps))


OBJECTIVE = SimPO
