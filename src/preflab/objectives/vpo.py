"""VPO: value-incentivized preference optimization; DPO plus a signed log-ratio term on calibration responses.

Paper: Cen, Mei, Goshvadi, Dai, Yang, Yang, Schuurmans, Chi, Dai, 2024, "Value-Incentivized Preference Optimization:
A Unified Approach to Online and Offline RLHF" (arXiv:2405.19320). Derived from the paper's calibration argument as
recalled in methods/objectives.md §C #24 (no VPO code or full text reachable).

    min_r  L_BT(r) - s * alpha * J*(r),   J*(r) = -beta E_{y~pi_cal}[log pi_theta(y|x) - log pi_ref(y|x)]
    =>  L = -log sigmoid(beta * Delta) + s * lam * (S_theta(y_cal) - S_ref(y_cal)),   lam = alpha * beta
    s = +1  mode="online"  (optimism: pushes pi_cal samples down, explores; unbounded below, keep lam small)
    s = -1  mode="offline" (pessimism: an SFT-like pull on pi_cal samples, cf. RPO)

Audit 2026-12 (3rd-party): the same derivation, online sign and reduction are those of SELM (Zhang et al. 2024,
"Self-Exploring Language Models", arXiv:2405.19332, Eq. 4.2), which names VPO as a concurrent method of the same
kind (a likelihood term beside the DPO loss, optimistic online / pessimistic offline). SELM's released trainer,
shenao-zhang/SELM@0ba546a `scripts/selm_trainer.py::optimistic_dpo_loss`, adds alpha * beta * (S_theta(y) - S_ref(y))
on summed log-probs of a reference-policy response y to the sigmoid DPO loss (recipe
`recipes/zephyr-selm/selm_config_full.yaml`: beta 0.01, alpha 0.001). That is mode="online" here with
lam = alpha * beta and pi_cal = pi_ref (`tests/objectives/test_vpo.py`). The S_ref term is constant in theta (same
gradient); it is kept so the value term is 0 at theta = ref and the logged loss is the derivation's.

calibration="chosen": y_cal = y_w (the dataset's chosen responses, the offline choice); the term is s * lam * h(y_w).
calibration="extra":  extras["calibration_logps"] = [B] or [B, n] policy sequence log-probs S_theta(y_cal) of
                      responses sampled from pi_cal (e.g. pi_ref), carrying gradient; [B, n] is averaged over n.
                      extras["calibration_ref_logps"] (same shape, optional) = S_ref(y_cal); without it the
                      reference term is taken as 0, which moves the logged loss by a constant, not the gradient.

Audit 2026-12 (paper-audit-2, 3rd-party): a later paper that builds on VPO's regularizer, "Provably Mitigating
Corruption, Overoptimization, and Verbosity Simultaneously in Offline and Online RLHF/DPO Alignment" (DPO-COV;
anonymous ICML submission, its text in the code index), derives both signs: the offline objective adds
+eta max_pi V (pessimism; its Eq. 9 cites Cen et al.), which becomes -beta eta log pi(y) on pi_base samples, taken
as the chosen responses (Algorithm 1, Eq. 19); the online one flips the sign "inspired by (Cen et al., 2024)" and,
with pi_base = pi_ref samples y', adds +beta eta log pi(y') (Algorithm 2, Eq. 25). With its noise and length terms
off these are mode="offline", calibration="chosen" and mode="online", calibration="extra" here with lam = beta * eta
(`tests/objectives/test_vpo.py::test_both_modes_are_the_dpo_cov_objectives_without_noise_or_length_terms`). Its eta
is a theoretical rate (~1/sqrt(N)), not a recipe value.

Deviations: VPO's own text and code are unread (SELM's code and DPO-COV's equations are); `lam` is given
directly rather than as alpha * beta; the default lam is unverified.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError, PreflabError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, logratios, reward_metrics


@dataclass(frozen=True)
class VPO(Objective):
    beta: float = 0.1             # DPO inverse temperature
    lam: float = 0.01             # weight of the value term (alpha * beta); 0 gives DPO (unverified default)
    mode: str = "offline"         # offline (pessimism, s=-1) | online (optimism, s=+1)
    calibration: str = "chosen"   # chosen (y_cal = y_w) | extra (extras["calibration_logps"])

    gradient_extras_hint = ("Use calibration=chosen (y_cal = the chosen responses, scored in the training forward), "
                            "or an online loop that samples and scores calibration responses with the policy.")
    paper = "Cen et al. 2024, Value-Incentivized Preference Optimization (arXiv:2405.19320)"
    checked_against = ("3rd-party: derived from the paper's calibration argument (no VPO code or full text "
                       "reachable, 2026-12); online form equal to the concurrent SELM's released loss, "
                       "shenao-zhang/SELM@0ba546a scripts/selm_trainer.py optimistic_dpo_loss (lam = alpha * beta); "
                       "both signs equal DPO-COV's Eqs. 19 and 25 (a later paper building on VPO)")
    tags = {"data": ("pair-wise",), "framework": ("online", "offline"), "constraint": ("reference",),
            "property": ("likelihood",)}

    def validate(self):
        super().validate()
        if self.mode not in ("offline", "online"):
            raise ConfigError(f"VPO: mode must be 'offline' or 'online', got {self.mode!r}.")
        if self.calibration not in ("chosen", "extra"):
            raise ConfigError(f"VPO: calibration must be 'chosen' or 'extra', got {self.calibration!r}.")

    @property
    def gradient_extras(self) -> tuple:
        """calibration=extra reads the policy's log-probs of calibration samples, which must carry gradient."""
        return ("calibration_logps",) if self.calibration == "extra" else ()

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        if self.calibration == "chosen":
            cal, cal_ref = as_loss_dtype(batch.policy_chosen.sum), as_loss_dtype(batch.ref_chosen.sum)
        else:
            cal = as_loss_dtype(torch.as_tensor(batch.extra("calibration_logps", "VPO", gradient=True))).to(h_w.device)
            cal_ref = self._calibration_reference(batch, cal)
            cal = cal.mean(-1) if cal.dim() == 2 else cal
        sign = 1.0 if self.mode == "online" else -1.0
        losses = -F.logsigmoid(self.beta * (h_w - h_l)) + sign * self.lam * (cal - cal_ref)
        metrics = reward_metrics(batch, self.beta)
        metrics["vpo/calibration_logps"] = cal.detach().mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)

    @staticmethod
    def _calibration_reference(batch: PairBatch, cal):
        """S_ref(y_cal) from extras["calibration_ref_logps"] (the shape of calibration_logps, averaged the same way),
        or 0 when not given (a constant: the gradient is the same)."""
        ref = batch.extras.get("calibration_ref_logps")
        if ref is None:
            return torch.zeros((), dtype=cal.dtype, device=cal.device)
        ref = as_loss_dtype(torch.as_tensor(ref)).to(cal.device).detach()
        if ref.shape != cal.shape:
            raise PreflabError(f"VPO: calibration_ref_logps has shape {tuple(ref.shape)}, calibration_logps "
                               f"{tuple(cal.shape)}; give the reference log-probs of the same calibration responses.")
        return ref.mean(-1) if ref.dim() == 2 else ref


OBJECTIVE = VPO
