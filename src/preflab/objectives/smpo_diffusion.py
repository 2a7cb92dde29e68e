"""SmPO-Diffusion: Diffusion-DPO with a smoothed, per-pair preference weight, on DDIM(ReNoise)-inverted latents.

"Smoothed Preference Optimization via ReNoise Inversion for Aligning Diffusion Models with Varied Human Preferences"
(Lu et al., 2025; released JaydenLyh/SmPO train.py; methods/reasoning-multimodal-diffusion.md §5):

    L = -log sigmoid( -(beta/2) * kappa(p) * (Delta_theta - Delta_ref) ),   kappa(p) = kappa_scale * (2p - 1)

Delta as in Diffusion-DPO, on latents inverted with the current policy (declared in `diffusion_noising`: K = 5,
one ReNoise iteration; use K = 10 for SDXL). p = batch.extras["preference_prob"] [B], the smoothed preference
sigmoid(s~_w - s~_l) of a reward model (preflab.diffusion.smoothing.smoothed_preference). p = 0.5 gives log 2 and zero
gradient; kappa = 1 (p = 0.55) is Diffusion-DPO; p = 1 with kappa_scale = 1 (a hard label) is Diffusion-DPO.

Audit 2026-12, JaydenLyh/SmPO@8922d54 train.py: scale_term = -0.5 * beta_dpo * (2 * probs[0] - 1) * 10, probs =
exp(n_w) / (exp(n_w) + exp(n_l)) of min-max-normalised PickScores n, i.e. sigmoid(n_w - n_l): the loss above with
kappa_scale = 10 (examples/sd15.sh: beta_dpo 2000, sdxl.sh: 5000).

Deviation from the paper: none in the loss. From the released code: p (and t) are per pair; the code used probs[0]
for the whole device batch. Reading (2p - 1) as preference-likelihood averaging is an interpretation (the formula
itself is the code's); kappa_scale = 10 is the code's constant.
"""
from dataclasses import dataclass

import torch

from preflab.errors import ConfigError, PreflabError
from preflab.objectives.base import ObjectiveOutput, PairBatch
from preflab.objectives.diffusion_dpo import DiffusionDPO, diffusion_dpo_output


@dataclass(frozen=True)
class SmPODiffusion(DiffusionDPO):
    beta: float = 2000.0        # SD1.5 (SDXL: 5000), salesforce convention
    kappa_scale: float = 10.0   # kappa(p) = kappa_scale * (2p - 1)

    required_extras = ("preference_prob",)
    diffusion_noising = {"mode": "ddim_invert", "num_inversion_steps": 5, "renoise_iters": 1}
    modality = "diffusion"  # scored by preflab.scoring.diffusion (-MSE), not LM log-probs
    paper = ("Lu et al. 2025, Smoothed Preference Optimization via ReNoise Inversion for Aligning Diffusion Models "
             "with Varied Human Preferences (SmPO-Diffusion)")
    checked_against = ("official code: JaydenLyh/SmPO@8922d54 train.py (scale -0.5*beta_dpo*(2p-1)*10, p = softmax "
                       "of min-max-normalised PickScores; sd15.sh beta 2000), re-read 2026-12")

    def validate(self):
        super().validate()
        if self.loss_type != "sigmoid" or not self.kappa_scale > 0:
            raise ConfigError("SmPODiffusion: loss_type must be 'sigmoid' and kappa_scale > 0.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        p = torch.as_tensor(batch.extra("preference_prob", "SmPODiffusion"))
        if ((p < 0) | (p > 1)).any():
            raise PreflabError("SmPODiffusion: extras['preference_prob'] must lie in [0, 1]; build it with "
                               "preflab.diffusion.smoothing.smoothed_preference.")
        kappa = self.kappa_scale * (2 * p - 1)
        out = diffusion_dpo_output(batch, self.scale, weight=kappa)
        out.metrics["kappa"] = kappa.detach().to(out.loss.dtype).mean()
        return out

    @classmethod
    def example_extras(cls, batch) -> dict:
        return {"preference_prob": torch.linspace(0.5, 0.73, batch.size, dtype=torch.float64)}


OBJECTIVE = SmPODiffusion
