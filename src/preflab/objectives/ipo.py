"""IPO: identity preference optimisation, a squared loss on the margin (TRL `loss_type="ipo"`).

Paper: Azar et al., 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences"
(arXiv:2310.12036), Eq. 17, with tau = `beta`:

    L = (D - 1/(2 beta))^2,   D = s(h_w)/n_w - s(h_l)/n_l   (token_agg="mean", TRL 1.x; n = response length >= 1)
                              D = s(h_w) - s(h_l)           (token_agg="sum", the paper's sequence sums)

h = S_theta - S_ref, s = the f-divergence score map (identity by default). The per-pair optimum is the finite margin
D* = 1/(2 beta).

Deviation from the paper: the default token_agg="mean" is TRL's per-token average (the TRL code says the IPO authors
confirmed it); token_agg="sum" is the paper's Eq. 17. beta plays tau and sets the target margin, unlike in DPO.
"""
from dataclasses import dataclass

from preflab.errors import ConfigError
from preflab.objectives._fdiv import check_fdiv, fdiv_scores
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, reward_metrics


@dataclass(frozen=True)
class IPO(Objective):
    beta: float = 0.1                 # tau: the target margin is 1/(2 beta)
    token_agg: str = "mean"           # "mean" (TRL) divides each score by its response length; "sum" (paper)
    f_divergence: str = "reverse_kl"  # TRL's f_divergence_type
    f_alpha: float = 0.5              # TRL's f_alpha_divergence_coef

    paper = ("Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences "
             "(arXiv:2310.12036)")
    checked_against = ("reference code: TRL 1.16 DPOTrainer loss_type='ipo' (token_agg=mean; sum = paper Eq. 17, not "
                       "code-tested) (tests/objectives/test_trl_parity.py, 1e-9)")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def validate(self):
        super().validate()
        check_fdiv("IPO", self.f_divergence)
        if self.token_agg not in ("mean", "sum"):
            raise ConfigError(f"IPO: token_agg must be 'mean' (TRL) or 'sum' (paper), got {self.token_agg!r}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        s_w, s_l = fdiv_scores(batch, self.f_divergence, self.f_alpha)  # [B]
        if self.token_agg == "mean":
            s_w = s_w / as_loss_dtype(batch.policy_chosen.length).clamp_min(1)
            s_l = s_l / as_loss_dtype(batch.policy_rejected.length).clamp_min(1)
        losses = (s_w - s_l - 1 / (2 * self.beta)) ** 2
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


OBJECTIVE = IPO
