"""Diffusion-DPO: DPO on denoising errors (Wallace et al., 2024, "Diffusion Model Alignment Using Direct Preference
Optimization", arXiv:2311.12908; methods/reasoning-multimodal-diffusion.md §0.2).

Scores are s = -e, e the per-sample MSE of the denoiser at a shared (t, eps) per pair (preflab.scoring.diffusion), so
h_w - h_l = -(Delta_theta - Delta_ref) with Delta = e_w - e_l, and

    sigmoid: L = -log sigmoid(b z)        z = Delta_ref - Delta_theta,  b = beta/2 (salesforce) or beta (diffusers)
    hinge:   L = relu(1 - b z)
    ipo:     L = (z - 1/(2b))^2

`sigmoid` is exactly `dpo` with beta_dpo = b (RELIABILITY.md K2). Metrics: TRL's rewards/* with b, and the diffusers
script's implicit accuracy (ties count 0.5; it logs `implicit_acc`), logged as `implicit_accuracy`: the name
`preflab eval --task diffusion` writes to eval.json (runs logged before the rename: preflab.eval.names.RENAMED_METRICS).

Deviation from the paper: none for sigmoid (the weighting T*omega(lambda_t) is folded into beta, as in both released
trainers). `beta` follows `convention` (default salesforce, beta = 5000); diffusers' beta' = 2500 is the same loss.
hinge and ipo are the diffusers script's options; its ipo branch reads an undefined `args.beta` (methods §A2) --
here every branch uses the one beta.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.objectives._diffusion_loss import dpo_scale, implicit_accuracy
from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, logratios, reward_metrics

LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def diffusion_dpo_output(batch: PairBatch, scale: float, loss_type: str = "sigmoid",
                         weight: torch.Tensor | None = None) -> ObjectiveOutput:
    """The loss on -MSE scores with inverse temperature `scale` (= b) and an optional per-pair weight on z."""
    h_w, h_l = logratios(batch)
    z = h_w - h_l if weight is None else weight.to(h_w) * (h_w - h_l)  # (weighted) Delta_ref - Delta_theta
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(scale * z)
    elif loss_type == "hinge":
        losses = torch.relu(1 - scale * z)
    else:
        losses = (z - 1 / (2 * scale)) ** 2
    metrics = reward_metrics(batch, scale)
    e = lambda side: -side.sum.detach()  # noqa: E731
    metrics["implicit_accuracy"] = implicit_accuracy(e(batch.policy_chosen), e(batch.policy_rejected),
                                                     e(batch.ref_chosen), e(batch.ref_rejected))
    metrics["mse/chosen"], metrics["mse/rejected"] = e(batch.policy_chosen).mean(), e(batch.policy_rejected).mean()
    return ObjectiveOutput(losses.mean(), losses, metrics)


@dataclass(frozen=True)
class DiffusionDPO(Objective):
    beta: float = 5000.0            # in `convention` units: salesforce uses beta/2 in the loss, diffusers beta
    convention: str = "salesforce"  # "salesforce" (beta = 5000) | "diffusers" (beta' = 2500 is the same loss)
    loss_type: str = "sigmoid"      # sigmoid | hinge | ipo (diffusers script options)

    diffusion_noising = {"mode": "forward"}
    example_score_scale = 1e-4      # contract fixtures in -MSE units (beta = 5000 saturates on log-prob-sized gaps)
    modality = "diffusion"  # scored by preflab.scoring.diffusion (-MSE), not LM log-probs
    paper = "Wallace et al. 2024, Diffusion Model Alignment Using Direct Preference Optimization (arXiv:2311.12908)"
    checked_against = ("official code: SalesforceAIResearch/DiffusionDPO@5233e75 train.py (-0.5*beta_dpo*(model_diff - "
                       "ref_diff), beta 5000), re-read 2026-12; diffusers research script per the spec")
    tags = {"data": ("pair-wise", "diffusion"), "framework": ("offline",), "constraint": ("reference",),
            "property": ()}

    def validate(self):
        super().validate()
        dpo_scale(self.beta, self.convention)
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"{type(self).__name__}: loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}.")

    @property
    def scale(self) -> float:
        """b, the DPO inverse temperature on -MSE scores."""
        return dpo_scale(self.beta, self.convention)

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        return diffusion_dpo_output(batch, self.scale, self.loss_type)


OBJECTIVE = DiffusionDPO
