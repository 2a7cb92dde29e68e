"""f-SFT: a reference-anchored SFT family on the chosen response; preflab's own, inspired by #10, unverified.

Inspired by: Wang, Cheng et al., 2025, "Implicit Reward as the Bridge: A Unified View of SFT and DPO Connections"
(arXiv:2507.00018). Only the abstract was read: plain SFT's KL term is constant in the policy, and "alternative SFT
objectives from various f-divergence functions preserve the KL term". The paper's own objectives are NOT reproduced;
this family is derived in methods/objectives.md §C #10 from the f-DPO score maps s_f (see _fdiv.py):

    L = -s_f(beta * h(y_w)) / beta,    h = S_theta - S_ref (token sum), or h / |y_w| with token_agg="mean"
    reverse_kl: s = z              -> L = -h: the SFT gradient exactly (SFT up to a constant in theta)
    forward_kl: s = 1 - e^{-z}     -> dL/dh = e^{-beta h}        (saturates once pi_theta >> pi_ref)
    js:         s = ln 2 + log sigmoid(z)   -> dL/dh = sigmoid(-beta h)
    alpha:      s = (e^{(alpha-1) z} - 1)/(alpha - 1)
Every map gives L = 0 at theta = ref. The rejected side of the PairBatch is ignored (SFT targets are `chosen`, as in
TRL's `sft`), so it composes with pair losses: get_objective(["dpo", "f_sft"], loss_weights=[1, w]).

Deviation from the paper: not the paper's objective (see above); exponents are clamped as in _fdiv.score_map.
"""
from dataclasses import dataclass

from preflab.errors import ConfigError
from preflab.objectives._fdiv import FDIV_TYPES, score_map
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype


@dataclass(frozen=True)
class FSFT(Objective):
    beta: float = 1.0                 # scale of the implicit reward beta * h inside s_f (1/beta outside)
    f_divergence: str = "js_divergence"  # reverse_kl | forward_kl | js_divergence | alpha_divergence
    f_alpha: float = 0.5              # alpha of alpha_divergence
    token_agg: str = "sum"            # sum: h = S_theta - S_ref; mean: h / |y_w|

    paper = "inspired by Wang et al. 2025, Implicit Reward as the Bridge (arXiv:2507.00018); unverified"
    checked_against = ("unverified: preflab's own f-divergence SFT family derived from the abstract of "
                       "arXiv:2507.00018 (no released code found under the authors' org OpenMOSS or by search, "
                       "2026-12; only abstracts and a NeurIPS review page reachable)")
    tags = {"data": ("point-wise",), "framework": ("offline",), "constraint": ("reference", "divergence"),
            "property": ("likelihood",)}

    def validate(self):
        super().validate()
        if self.f_divergence not in FDIV_TYPES:
            raise ConfigError(f"FSFT: f_divergence must be one of {FDIV_TYPES}, got {self.f_divergence!r}.")
        if self.token_agg not in ("sum", "mean"):
            raise ConfigError(f"FSFT: token_agg must be 'sum' or 'mean', got {self.token_agg!r}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h = as_loss_dtype(batch.policy_chosen.sum) - as_loss_dtype(batch.ref_chosen.sum)
        if self.token_agg == "mean":
            h = h / batch.policy_chosen.length.to(h.dtype).clamp_min(1)
        losses = -score_map(self.beta * h, self.f_divergence, self.f_alpha) / self.beta
        metrics = {"f_sft/logratio": h.detach().mean(), "logps/chosen": batch.policy_chosen.sum.detach().mean()}
        return ObjectiveOutput(losses.mean(), losses, metrics)


OBJECTIVE = FSFT
