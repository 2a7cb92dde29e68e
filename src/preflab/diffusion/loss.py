"""Diffusion-DPO's loss on per-sample denoising errors and Self-NPO's pseudo-Huber distance.

The formulas live in preflab.objectives._diffusion_loss (objectives are pure functions of scores and import nothing
from preflab.diffusion; this module keeps the public names where they were).
"""
from preflab.objectives._diffusion_loss import (CONVENTIONS, diffusion_dpo_loss, dpo_scale,  # noqa: F401
                                                implicit_accuracy, per_sample_mse, pseudo_huber)
