"""A diffusion run's checkpoint-N as a denoiser to sample: its trained parameters on the run's base pipeline.

A checkpoint holds what the run trains (preflab.loops.diffusion.Trainables: every UNet weight, or its LoRA adapters
with use_peft, ppd's user branch and learned user table, self_npo's EMA teacher), not a pipeline. It is read back on
the run's model_name_or_path, with the module built as the trainer builds it (mark_trained_unet, ema_teacher,
install_user_branch), through preflab.checkpoint.load_checkpoint_weights, which refuses a checkpoint that lacks a
trained parameter or holds a tensor the module does not have. A ppd checkpoint's user table is the one its
trainer_state.json describes (preflab.loops.ppd_eval.checkpoint_user_table: which user is which row, and the
precomputed table's sha256), as `preflab eval --task diffusion` reads it.

    components = checkpoint_components("runs/dpo/checkpoint-200", cfg)
    module = checkpoint_denoiser("runs/dpo/checkpoint-200", cfg, components)     # ppd: table=checkpoint_user_table(..)
    images = sample_images(components, module.unet.eval(), prompts, seeds, steps, guidance)

With full fine-tuning the trained UNet is the final pipeline's (at the checkpoint's step); with LoRA the adapters are
applied unfused, where the final directory holds them fused (the same function, up to float rounding).
"""
from __future__ import annotations

from torch import nn

from preflab.errors import ConfigError


def checkpoint_components(run_dir: str, cfg, device: str | None = None):
    """The run's base pipeline (its config.yaml's model_name_or_path) as DiffusionComponents, set up as the run
    sampled (flux_guidance, resolution), on `device`. A base model that is a local path missing here is refused:
    the checkpoint's parameters are only a difference from it."""
    from preflab.diffusion.pipeline import components_of, load_pipeline
    from preflab.loops.diffusion_eval import run_base_model

    try:
        base = run_base_model(run_dir, cfg.model_name_or_path)
    except ConfigError:
        raise ConfigError(f"{run_dir} is a checkpoint: its trained parameters load on the run's base model "
                          f"{cfg.model_name_or_path!r} (config.yaml's model_name_or_path), which is not a directory "
                          "here (relative to another working directory, or moved). Run from where the run was "
                          "trained, or use the run's final directory (a whole pipeline).") from None
    components = components_of(load_pipeline(base, cfg.allow_pickle, seed=cfg.seed))
    components.flux_guidance, components.resolution = cfg.flux_guidance, cfg.resolution
    if device is not None:
        components.pipeline.to(device)
    return components


def checkpoint_denoiser(run_dir: str, cfg, components, table=None):
    """The run's DenoiserModule on components' UNet (float32) with checkpoint `run_dir`'s trained parameters loaded:
    ppd (table: its UserTable) with the user branch installed and the table's rows (learned: trained, so read from
    the checkpoint; precomputed: frozen, rebuilt by the table's reader), else the UNet marked as the run trains it
    (LoRA adapters or every weight), plus self_npo's teacher so its tensors have a place. Returns the module."""
    from preflab.checkpoint import load_checkpoint_weights
    from preflab.errors import PreflabError
    from preflab.loops.diffusion import DenoiserModule, Trainables, ema_teacher, mark_trained_unet
    from preflab.objectives.base import UnpairedBatch

    unet = components.denoiser.float()
    branch = users = None
    tokens = cfg.user_embedding_tokens
    if table is not None:
        from preflab.diffusion.user_branch import install_user_branch

        # a learned table is trained (in the checkpoint: must be read), a precomputed one frozen (not saved)
        users = nn.Embedding.from_pretrained(table.weight.float(), freeze=bool(cfg.user_embeddings))
        users = users.to(unet.device)
        tokens = table.tokens
        branch = install_user_branch(unet, users.weight.shape[1] // tokens).to(unet.device)
    else:
        mark_trained_unet(cfg, unet, components.is_flow)
    module = DenoiserModule(unet, branch, users, tokens)
    teacher = ema_teacher(unet) if cfg.objective().batch_type is UnpairedBatch else None  # self_npo, as training
    try:
        load_checkpoint_weights(run_dir, Trainables(module, teacher))
    except PreflabError as err:
        raise ConfigError(f"{err} (read on the run's base model {cfg.model_name_or_path!r} with its config.yaml's "
                          "use_peft / LoRA settings and loss_type)") from err
    return module.requires_grad_(False).eval()
