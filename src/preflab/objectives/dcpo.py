"""DCPO: Diffusion-DPO with a separate caption for each image of the pair.

"Dual Caption Preference Optimization for Diffusion Models" (Saeidi et al., 2025; released sahsaeedi/DCPO-T2I
src/dcpo_trainer.py; methods/reasoning-multimodal-diffusion.md §45). With a shared (t, eps) per pair:

    e^theta_w = mean((eps - f_theta(x^w_t, t, c_w))^2),   e^theta_l = mean((eps - f_theta(x^l_t, t, c_l))^2)
    L = -log sigmoid( -(beta/2) * (Delta_theta - Delta_ref) )          (reference likewise)

The per-image captions reach the denoiser through `DiffusionPairs.cond` (c_w) and `cond_rejected` (c_l); the loss is
Diffusion-DPO's, so c_w = c_l is exactly `diffusion_dpo`. Caption builders (captioning, perturbation, hybrid) are data
side.

Deviation from the paper: none in the loss. From the released code: the target follows the scheduler's
prediction_type (the release forces the eps target on v-prediction SD 2.1; the paper's numbers come from that
setup). beta = 500 is run.sh's default.
"""
from dataclasses import dataclass

from preflab.objectives.diffusion_dpo import DiffusionDPO


@dataclass(frozen=True)
class DCPO(DiffusionDPO):
    beta: float = 500.0  # SD 2.1 default (run.sh), salesforce convention

    modality = "diffusion"  # scored by preflab.scoring.diffusion (-MSE), not LM log-probs
    paper = "Saeidi et al. 2025, Dual Caption Preference Optimization for Diffusion Models (DCPO)"
    checked_against = ("official code: sahsaeedi/DCPO-T2I@62335bb src/dcpo_trainer.py (-0.5*beta_dpo, two captions; "
                       "run.sh beta 500), re-read 2026-12")


OBJECTIVE = DCPO
