"""Sampling a trained ppd run for one user, or for an interpolation of two users.

PPD (Dang et al., 2025, "Personalized Preference Fine-tuning of Diffusion Models"; methods §28): at inference the
user embedding e_u conditions the UNet through the trained user branch (decoupled cross-attention,
preflab.diffusion.user_branch), and users are interpolated with e = (1 - gamma) e_a + gamma e_b. A user's e_u is
subset 0 of its rows in the saved table (users.json, user_branch.safetensors), the embedding `preflab eval` scores
the user with; users the table lacks come from a user_embeddings file (saved_user_table's rule). The sampler is the
pipeline's own (preflab.diffusion.pipeline.sample_images: DDIM, the run's sample_steps / guidance_scale), the same
one `preflab eval --reward-fn` uses for the win rate; user=None samples the base model (the branch off).

    from preflab.loops.ppd_sample import PPDSampler
    sampler = PPDSampler("runs/ppd")
    images = sampler.sample(["a red circle"], user="alice", other_user="bob", gamma=0.5)  # uint8 [1, 3, S, S]
"""
from __future__ import annotations

import math

import torch

from preflab.errors import ConfigError


def user_embedding(table, user: str) -> torch.Tensor:
    """[L_u, d_u]: subset 0 of `user`'s rows in a ppd run's UserTable (preflab.loops.diffusion), as eval reads it.
    A user the table lacks is refused, naming where the table came from and what to do (table.remedy)."""
    if user not in table.user_rows:
        raise ConfigError(f"user {user!r} has no embedding in {table.source}. {table.remedy}")
    first = table.user_rows[user][0]
    return table.weight[first].float().reshape(table.tokens, -1)


def check_gamma(other_user: str | None, gamma: float | None) -> None:
    """Interpolation needs both a second user and gamma in [0, 1] (methods §28's e = (1 - gamma) e_a + gamma e_b;
    outside [0, 1] it is an extrapolation the method does not define), and neither alone means anything."""
    if (other_user is None) != (gamma is None):
        raise ConfigError("interpolating users needs both other_user and gamma (e = (1 - gamma) e_user + gamma "
                          "e_other); give both or neither.")
    if gamma is not None and not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and 0 <= gamma <= 1):
        raise ConfigError(f"gamma {gamma!r} is not in [0, 1]; e = (1 - gamma) e_user + gamma e_other interpolates "
                          "between the two users (0: user, 1: other_user).")


class PPDSampler:
    """A finished ppd run's pipeline (its final directory) with its user branch and user table, ready to sample; or
    one of its checkpoint-N folders: the branch (and a learned table) at step N on the run's base pipeline, the user
    table as its trainer_state.json describes it (preflab.loops.diffusion_checkpoint). user_embeddings: a file of
    users the saved table lacks (default: the run's own user_embeddings file; for a checkpoint of a run on
    precomputed embeddings, the file it trained with, checked against the recorded sha256); device: where the
    pipeline samples (default: where it loads, the CPU)."""

    def __init__(self, run_dir: str, user_embeddings: str | None = None, device: str | None = None):
        from safetensors import safe_open

        from preflab.config import config_with_overrides
        from preflab.diffusion.pipeline import components_of, load_pipeline
        from preflab.diffusion.user_branch import install_user_branch
        from preflab.loops.diffusion import DenoiserModule
        from preflab.loops.diffusion_eval import is_diffusion_checkpoint, load_user_branch, saved_user_table
        from preflab.models.run_config import require_run_config

        saved = require_run_config(run_dir, "preflab.loops.ppd_sample.PPDSampler")[1]
        if saved.get("loss_type") != "ppd":
            raise ConfigError(f"{run_dir} is a {saved.get('loss_type')} run; PPDSampler samples ppd runs (a user "
                              "branch and a user table). Sample other pipelines with diffusers directly.")
        from pathlib import Path

        self.cfg = config_with_overrides(saved, preflab_overrides=[])
        if is_diffusion_checkpoint(Path(run_dir)):  # the branch (and a learned table) at step N on the base pipeline
            from preflab.loops.diffusion_checkpoint import checkpoint_components, checkpoint_denoiser
            from preflab.loops.ppd_eval import checkpoint_user_table

            self.table = checkpoint_user_table(run_dir, saved, user_embeddings)
            self.components = checkpoint_components(run_dir, self.cfg, device)
            self.module = checkpoint_denoiser(run_dir, self.cfg, self.components, self.table)
            return
        self.table = saved_user_table(run_dir, saved, user_embeddings)
        with safe_open(str(Path(run_dir) / "user_branch.safetensors"), framework="pt") as f:
            user_dim = f.get_slice("branch.proj.weight").get_shape()[1]  # d_u, the width P reads
        self.components = components_of(load_pipeline(str(run_dir), self.cfg.allow_pickle, seed=self.cfg.seed))
        if device is not None:  # before the branch goes in, which then follows the UNet (P lives outside it)
            self.components.pipeline.to(device)
        unet = self.components.denoiser.float()
        branch = install_user_branch(unet, user_dim)
        load_user_branch(run_dir, branch, "the pipeline's UNet")
        self.module = DenoiserModule(unet, branch.to(unet.device), None, self.table.tokens).eval()

    def embedding(self, user: str, other_user: str | None = None, gamma: float | None = None) -> torch.Tensor:
        """[L_u, d_u]: e_user, or (1 - gamma) e_user + gamma e_other (preflab.diffusion.user_branch.interpolate_users;
        gamma 0 and 1 give the endpoints exactly). Users the saved table lacks are read from the user_embeddings
        file (UserTable.including: checked and standardised as in training)."""
        from preflab.diffusion.user_branch import interpolate_users

        check_gamma(other_user, gamma)
        wanted = [u for u in (user, other_user) if u is not None]
        self.table = self.table.including(wanted)
        e = user_embedding(self.table, user)
        return e if other_user is None else interpolate_users(e, user_embedding(self.table, other_user), gamma)

    def sample(self, prompts: list[str], user: str | None, seeds: list[int] | None = None,
               other_user: str | None = None, gamma: float | None = None, num_steps: int | None = None,
               guidance_scale: float | None = None) -> torch.Tensor:
        """uint8 [N, 3, S, S] of `prompts` conditioned on `user` (interpolated towards `other_user` by `gamma`), or
        the base model's (user None: the branch off, PPD's reference). seeds: one per prompt (default the run's
        eval seeds, seed * 100003 + i); num_steps / guidance_scale: default the run's sample_steps / guidance_scale."""
        from preflab.loops.diffusion import sample_seeds

        seeds = sample_seeds(self.cfg.seed, len(prompts)) if seeds is None else list(seeds)
        if len(seeds) != len(prompts):
            raise ConfigError(f"{len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt.")
        if user is None:
            if other_user is not None or gamma is not None:
                raise ConfigError("other_user / gamma without a user: the base model (user None) has no user to "
                                  "interpolate from.")
            e = None
        else:
            e = self.embedding(user, other_user, gamma).expand(len(prompts), -1, -1)
        steps = self.cfg.sample_steps if num_steps is None else num_steps
        if steps < 1:
            raise ConfigError(f"num_steps {steps} (the run's sample_steps when not given): sampling needs >= 1 step.")
        return self.module.sample_user_images(self.components, prompts, seeds, e, steps,
                                              self.cfg.guidance_scale if guidance_scale is None else guidance_scale)
