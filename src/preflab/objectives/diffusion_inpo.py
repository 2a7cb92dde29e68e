"""DDIM-InPO: Diffusion-DPO on latents obtained by DDIM inversion with the current policy.

"InPO: Inversion Preference Optimization with Reparametrized DDIM for Efficient Diffusion Model Alignment"
(Lu et al., 2025; released JaydenLyh/InPO train.py; methods/reasoning-multimodal-diffusion.md §27). The sampler is
treated as a one-step generator; DDIM reparametrisation gives any latent an implicit reward, and inversion picks the
latents tied to the preference images:

    x^w_t, eps^w = DDIM-invert(x_w -> t),  x^l_t, eps^l = DDIM-invert(x_l -> t)   (K = 10 steps, jitter eta = 0.1)
    L = -log sigmoid( -(beta/2) * (Delta_theta - Delta_ref) )                    (Delta on those latents/targets)

The loss is Diffusion-DPO's; what makes it InPO is the declared noising (`diffusion_noising`), which the scorer
(preflab.scoring.diffusion.noiser_for) turns into PairNoiser(mode="ddim_invert", ...). With mode="forward" it is
exactly `diffusion_dpo`.

Deviation from the paper: none in the loss. From the released code: per-pair t (not timesteps[0]); inversion ends
exactly at t (grid_snap="exact"; "floor" reproduces the release); the jitter variance index tau + T/K is clamped to
T - 1 (the release reads 1001).
"""
from dataclasses import dataclass

from preflab.objectives.diffusion_dpo import DiffusionDPO


@dataclass(frozen=True)
class DiffusionInPO(DiffusionDPO):
    beta: float = 2000.0  # SD1.5 from an SFT UNet (SDXL: 5000), salesforce convention

    diffusion_noising = {"mode": "ddim_invert", "num_inversion_steps": 10, "inversion_eta": 0.1}
    modality = "diffusion"  # scored by preflab.scoring.diffusion (-MSE), not LM log-probs
    paper = ("Lu et al. 2025, InPO: Inversion Preference Optimization with Reparametrized DDIM for Efficient "
             "Diffusion Model Alignment (DDIM-InPO)")
    checked_against = ("official code: JaydenLyh/InPO@a9cfc4d train.py (-0.5*beta_dpo; sd15.sh beta 2000), "
                       "re-read 2026-12")


OBJECTIVE = DiffusionInPO
