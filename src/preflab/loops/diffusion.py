"""`preflab train` with `task: diffusion`: preference training of a text-to-image diffusion model on TrainingRun.

    rows (image pairs) --load_image_pairs--> examples --VAE / text encoder (frozen; cached once)--> latents, text
      --per-pair (t, eps) drawn from (seed, step, dataset position)--> PairNoiser (the objective's `diffusion_noising`)
      --DiffusionPairScorer: policy on [2B], reference without grad--> PairBatch of -MSE --> objective

One optimizer step is preflab.step.optimizer_step, the loop is preflab.loops.driver.TrainingRun; this module only
says what a micro-batch is, how it is scored, and how the model is saved. The reference is a frozen copy (full
fine-tuning), the same UNet with its LoRA adapters disabled (use_peft), or the base UNet without the user branch
(ppd). `self_npo` trains from image + caption rows (no preference) against an EMA teacher kept in the checkpoint.

Randomness: the timestep and noise of a pair depend only on (seed, step, the pair's dataset position), never on
the process count, the micro-batch split or a resume, so a resumed run equals the uninterrupted one and two processes
equal one. So do DDIM inversion's jitter (diffusion_inpo, smpo_diffusion: one generator per pair from (seed, step,
"invert", position), drawn for the winner's inversion, then the loser's) and Self-NPO's draws (self_npo_draws).

Flow-matching models (SD3, preflab.diffusion.flow): the same run with x_t = (1 - sigma) x_0 + sigma eps, the velocity
target eps - x_0 and SD3's logit-normal t per pair; `check_flow_objective` says which objectives are defined there.
Flux (preflab.diffusion.flux): the same flow with Flux's uniform t draw on its unshifted training grid, latents kept
unpacked (the transformer call packs them) and the guidance embedding set to flux_guidance (Flux-dev).
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from preflab.errors import ConfigError, nearest
from preflab.loops.batches import make_plan
from preflab.loops.driver import TrainingRun
from preflab.loops.launch import make_accelerator
from preflab.loops.optimizer import make_optimizer
from preflab.objectives.base import MODALITY_OBJECTIVES, UnpairedBatch, objective_parts

if TYPE_CHECKING:
    from preflab.scoring.diffusion import DiffusionPairs

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the diffusers Diffusion-DPO script's LoRA targets
# diffusers' SD3 LoRA DreamBooth script's targets: the joint attention's image and text (add_*) projections
SD3_LORA_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                    "attn.add_v_proj", "attn.to_add_out"]


def _rows_text(report) -> str:
    """'5 of 7 rows kept (1 skipped (bad_image: 1), 1 tie dropped)' for the data line of a run: the kept rows are those
    that became pairs (report.kept counts the read ties too, which said '7 of 7 rows kept' beside '1 ties dropped')."""
    ties = report.ties_dropped
    return (f"{report.kept - ties} of {report.total} rows kept ({report._skip_text()}, {ties} "
            f"{'tie' if ties == 1 else 'ties'} dropped)")


def is_diffusion_objective(objective) -> bool:
    """True for the diffusion objectives (their `modality`, or the "diffusion" data tag)."""
    if getattr(objective, "modality", "text") == "diffusion":
        return True
    return all("diffusion" in getattr(p, "tags", {}).get("data", ()) for p in objective_parts(objective))


def check_diffusion_objective(cfg, objective) -> None:
    """A text objective in a diffusion run is refused before any model is loaded."""
    if not is_diffusion_objective(objective):
        raise ConfigError(
            f"loss_type {cfg.loss_type!r} is a language-model objective; task: diffusion trains "
            f"{', '.join(MODALITY_OBJECTIVES['diffusion'][:-1])} or {MODALITY_OBJECTIVES['diffusion'][-1]}. Use task: "
            "dpo for language models.")


def check_flow_objective(cfg, objective) -> None:
    """On a flow-matching model (SD3) the objectives on forward-noised pairs are defined as they are (their losses read
    only per-sample MSEs, whatever the regression target): diffusion_dpo, dcpo, and smpo_diffusion with
    diffusion_noising mode forward. The rest depend on the DDPM parametrisation and are refused."""
    from preflab.objectives.diffusion_inpo import DiffusionInPO
    from preflab.objectives.ppd import PPD

    name = cfg.loss_type
    if objective.batch_type is UnpairedBatch:
        raise ConfigError(f"loss_type {name!r} (Self-NPO) rolls out DDIM steps and takes x0/eps from an "
                          "alphas_cumprod schedule; it is not defined for a flow-matching model (SD3) in preflab. "
                          "Use diffusion_dpo or dcpo, or an SD 1.x/2.x/SDXL pipeline.")
    if isinstance(objective, PPD):
        raise ConfigError("loss_type 'ppd' installs its user branch into a UNet's cross-attention processors; SD3's "
                          "joint-attention transformer has none. Use diffusion_dpo or dcpo on SD3.")
    if isinstance(objective, DiffusionInPO):
        raise ConfigError("loss_type 'diffusion_inpo' is Diffusion-DPO on DDIM-inverted latents; DDIM inversion needs "
                          "a DDPM schedule, and with forward noising it is diffusion_dpo: use loss_type diffusion_dpo "
                          "on a flow-matching model (SD3).")
    mode = {**(getattr(objective, "diffusion_noising", {}) or {}), **cfg.diffusion_noising}.get("mode", "forward")
    if mode != "forward":
        raise ConfigError(f"loss_type {name!r} noises its pairs by DDIM inversion (diffusion_noising mode {mode!r}), "
                          "which needs a DDPM schedule; on a flow-matching model (SD3) set diffusion_noising: "
                          "{mode: forward} to train its loss on forward-noised pairs.")


def check_resolution(resolution: int, components) -> None:
    """The VAE maps resolution x resolution pixels to (resolution / f)^2 latents, f = 2^(VAE levels - 1) (8 for SD):
    another size was floored silently (the trained pixels and the latents no longer line up) and the saved pipeline
    refuses to generate at it (diffusers: height and width divisible by 8), so it is refused here."""
    vae = components.vae
    factor = getattr(components.pipeline, "vae_scale_factor", None) or \
        2 ** (len(getattr(vae.config, "block_out_channels", [0])) - 1)
    if resolution % factor:
        lower, upper = resolution // factor * factor, (resolution // factor + 1) * factor
        raise ConfigError(f"resolution={resolution} is not a multiple of the VAE's scale factor {factor} (its "
                          f"latents would be {resolution / factor:g} wide); use {lower or upper} or {upper}.")
    patch = int(getattr(components.denoiser.config, "patch_size", 1) or 1) if components.is_flow else 1
    if components.is_flux:
        patch = 2  # FluxPipeline packs 2x2 latent patches into one token
    if (resolution // factor) % patch:
        step = factor * patch
        raise ConfigError(f"resolution={resolution}: the transformer cuts its {resolution // factor}-wide latents into "
                          f"{patch}x{patch} patches; use a multiple of {step} ({resolution // step * step or step} or "
                          f"{(resolution // step + 1) * step}).")


def check_diffusion_options(cfg) -> None:
    """The diffusion block of TrainConfig: impossible values -> ConfigError (before any model loads)."""
    from preflab.diffusion.captions import STRENGTHS

    positive = ("resolution", "user_embedding_tokens", "user_embedding_dim", "self_npo_num_ddim_steps")
    for name in positive:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)!r}.")
    if cfg.self_npo_rollout_steps < 0 or cfg.sample_steps < 0:
        raise ConfigError("self_npo_rollout_steps and sample_steps must be >= 0.")
    if not 0 <= cfg.self_npo_ema_decay <= 1:
        raise ConfigError(f"self_npo_ema_decay must be in [0, 1], got {cfg.self_npo_ema_decay}.")
    if cfg.caption_perturbation not in ("none", *STRENGTHS):
        raise ConfigError(f"caption_perturbation must be one of none, {', '.join(STRENGTHS)}; got "
                          f"{cfg.caption_perturbation!r}.")
    known = {"mode", "num_inversion_steps", "inversion_eta", "renoise_iters", "grid_snap", "steps_offset",
             "min_timestep", "max_timestep"}
    unknown = sorted(set(cfg.diffusion_noising) - known)
    if unknown:
        hints = "".join(nearest(k, known) for k in unknown)
        raise ConfigError(f"diffusion_noising has unknown keys {unknown}; the keys are {sorted(known)}.{hints}")
    check_noising_choices(cfg.diffusion_noising)


def check_noising_choices(noising: dict) -> None:
    """diffusion_noising's word-valued keys (mode, grid_snap) checked with the config, naming the option: a misspelt
    value stopped the run only when the pair noiser was built, after every training image was read and encoded, and
    the error named PairNoiser's field ("PairNoiser mode must be one of ...") instead of the option."""
    from preflab.diffusion.inversion import GRID_SNAPS
    from preflab.diffusion.noising import MODES

    for key, allowed in (("mode", MODES), ("grid_snap", GRID_SNAPS)):
        value = noising.get(key, allowed[0])
        if value not in allowed:
            raise ConfigError(f"diffusion_noising.{key} must be one of {', '.join(allowed)}; got {value!r}."
                              f"{nearest(str(value), allowed)}")


def draw_seed(*parts) -> int:
    """A 63-bit seed from the given parts (stable across processes and Python runs)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def self_npo_draws(seed: int, step, index: list[int], shape: tuple, num_ddim_steps: int):
    """Self-NPO's draws (start index j, noise, re-noising u, noise2) per sample from a generator seeded by (seed,
    step, "npo", dataset position), so a sample's draws do not depend on its micro-batch (two processes equal one)."""
    j, eps, u, eps2 = [], [], [], []
    for i in index:
        g = torch.Generator().manual_seed(draw_seed(seed, step, "npo", i))
        j.append(torch.randint(0, num_ddim_steps, (1,), generator=g))
        eps.append(torch.randn(shape, generator=g))
        u.append(torch.rand(1, generator=g, dtype=torch.float64))
        eps2.append(torch.randn(shape, generator=g))
    return torch.cat(j), torch.stack(eps), torch.cat(u), torch.stack(eps2)


def check_user_stacks(path, table: dict) -> dict:
    """{user: [S, L_u, d_u]} from a user_embeddings file's {user: [L_u, d_u] or [S, L_u, d_u]} (a 2-D value is one
    subset). Refused (ConfigError naming the file, the users and their shapes): no tensor, a value of another rank,
    a stack of S = 0 subsets or an empty embedding, users whose [L_u, d_u] differ (one table holds them all, and the
    user branch has one width), non-finite values (naming the user's subset)."""
    if not table:
        raise ConfigError(f"user_embeddings {path} holds no tensor; save one [L_u, d_u] embedding (or a [S, L_u, d_u] "
                          "stack of few-shot subsets) per user id.")
    stacks, shapes = {}, {}
    for user in sorted(table):
        value = table[user]
        if value.dim() not in (2, 3):
            raise ConfigError(f"user_embeddings {path}: user {user!r} has a tensor of shape {tuple(value.shape)}; each "
                              "user needs one [L_u, d_u] embedding or a [S, L_u, d_u] stack of its subsets' "
                              "embeddings.")
        stack = value if value.dim() == 3 else value.unsqueeze(0)
        if 0 in stack.shape:
            raise ConfigError(f"user_embeddings {path}: user {user!r} has an empty tensor of shape "
                              f"{tuple(value.shape)} (S = 0 subsets, or L_u or d_u = 0); give it at least one "
                              "[L_u, d_u] embedding or drop the user's rows.")
        bad = [k for k in range(stack.shape[0]) if not torch.isfinite(stack[k]).all()]
        if bad:
            raise ConfigError(f"user_embeddings {path}: user {user!r} has non-finite values in subset(s) {bad[:5]} of "
                              f"its {stack.shape[0]} (shape {tuple(value.shape)}); recompute or drop them.")
        stacks[user] = stack
        shapes.setdefault(tuple(stack.shape[1:]), []).append(f"{user!r} {tuple(value.shape)}")
    if len(shapes) > 1:
        said = "; ".join(f"[L_u, d_u] = {list(s)}: {', '.join(users[:3])}" + (f" and {len(users) - 3} more"
                                                                              if len(users) > 3 else "")
                         for s, users in sorted(shapes.items()))
        raise ConfigError(f"user_embeddings {path}: every user's embeddings need the same [L_u, d_u] (one table, one "
                          f"user-branch width); got {said}. Save every user from the same embedder layers.")
    return stacks


def sample_seeds(seed: int, count: int) -> list[int]:
    """The seeds of `count` sampled prompts (seed * 100003 + i): samples.png, `preflab eval --reward-fn`'s two sides
    and PPDSampler draw the same noise for the same prompt position."""
    return [seed * 100003 + i for i in range(count)]


def stacked_user_rows(stacks: dict, first: int = 0) -> tuple[torch.Tensor, dict]:
    """(table rows [sum S, L_u * d_u], {user: (first row, S)}) of checked {user: [S, L_u, d_u]} stacks in their
    order, starting at row `first`: each [L_u, d_u] standardised per token (normalize_user_embeddings; VLM states
    vary widely in scale), every subset its own row."""
    from preflab.diffusion.user_branch import normalize_user_embeddings

    rows = {}
    for user, stack in stacks.items():
        rows[user] = (first, stack.shape[0])
        first += stack.shape[0]
    return torch.cat([normalize_user_embeddings(stack.float()).flatten(1) for stack in stacks.values()]), rows


def table_sha256(weight: torch.Tensor) -> str:
    """sha256 of a user table's rows as float32 bytes (row-major): what a checkpoint records of a precomputed table
    it does not hold (DiffusionRun.checkpoint_record), so `preflab eval` of the checkpoint can check that the table it
    rebuilds from the user_embeddings file is the one trained with (preflab.loops.ppd_eval)."""
    return hashlib.sha256(weight.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def ppd_subset(seed: int, epoch: int, position: int, count: int) -> int:
    """The few-shot subset a training pair's user embedding comes from in epoch `epoch`: draw_seed(seed, "ppd-subset",
    epoch, position) mod count (position = the pair's dataset position; count = its user's S). PPD (methods §28)
    resamples the few-shot subset each epoch as augmentation; the draw depends on nothing else, so a resumed run and
    two processes pick what one uninterrupted process picks. count 1: subset 0."""
    return 0 if count == 1 else draw_seed(seed, "ppd-subset", epoch, position) % count


def ppd_user_dropped(seed: int, epoch: int, position: int, p: float) -> bool:
    """Whether a training pair's user embedding is dropped (replaced by zeros) in epoch `epoch`:
    draw_seed(seed, "ppd-user-dropout", epoch, position) / 2^63 < p. The form is IP-Adapter's condition dropout
    (Ye et al. 2023, arXiv:2308.06721: the image embedding zeroed when its condition is dropped); the PPD paper note
    names user-embedding dropout without a rate or a form. p = 0 (the default) never drops."""
    return p > 0 and draw_seed(seed, "ppd-user-dropout", epoch, position) / 2 ** 63 < p


@dataclass
class UserTable:
    """A ppd run's user table as it saved it (`preflab eval`, preflab.loops.diffusion_eval.saved_user_table): weight
    [rows, L_u * d_u] (users.weight of user_branch.safetensors), user_rows {user: (first row, S)} (users.json's
    subsets), tokens L_u. file: a user_embeddings file that supplies the users the saved table lacks (None: none);
    source / remedy: where the table and such users come from, and what to do about a user in neither (said in the
    refusal)."""

    weight: torch.Tensor
    user_rows: dict
    tokens: int
    source: str
    file: str | None = None
    remedy: str = ""

    def including(self, users) -> "UserTable":
        """This table with `users` it lacks appended from self.file (read lazily, those users' tensors only):
        each one's subsets checked (check_user_stacks), of the saved [L_u, d_u], and standardised per token as the
        run standardised its own (normalize_user_embeddings). A user in the saved table keeps its saved rows (the
        ones the run trained and evaluated with); users in neither stay missing (DiffusionRun refuses them)."""
        wanted = sorted(set(users) - set(self.user_rows))
        if not wanted or self.file is None:
            return self
        from safetensors import safe_open

        try:
            with safe_open(self.file, framework="pt") as f:
                found = {u: f.get_tensor(u) for u in wanted if u in f.keys()}
        except Exception as err:
            raise ConfigError(f"user_embeddings {self.file!r} is not a readable safetensors file: {err}") from err
        if not found:
            return self
        stacks = check_user_stacks(self.file, found)
        width = self.weight.shape[1] // self.tokens
        for u, stack in stacks.items():
            if tuple(stack.shape[1:]) != (self.tokens, width):
                raise ConfigError(f"user_embeddings {self.file}: user {u!r} has [L_u, d_u] = {list(stack.shape[1:])}, "
                                  f"but the run's user branch reads [L_u, d_u] = [{self.tokens}, {width}] "
                                  f"({self.source}); give embeddings from the embedder and layers the run trained on.")
        weight, rows = stacked_user_rows(stacks, first=self.weight.shape[0])
        return UserTable(torch.cat([self.weight, weight]), {**self.user_rows, **rows}, self.tokens, self.source,
                         self.file, self.remedy)


# ppd's samples.png: the base model's row, then one per user for at most this many training users (ppd_sampled_users)
PPD_SAMPLE_USERS = 4
# the on-disk encodings cache's format: raise it when an encoding (text states, latents, own samples) changes, so
# that entries an older preflab wrote are not read (DiffusionRun._cached; the release version is in the key too)
ENCODINGS_FORMAT = 1


class DenoiserModule(nn.Module):
    """The trainable module (the one DDP wraps): forward(x_t, t, cond) -> the UNet's prediction.

    cond: text states [B, L, D], or a dict {"encoder_hidden_states": ..., "user_index": [B] long} for PPD: rows of
    the user table (learned, or a precomputed user's few-shot subsets; -1: a zero embedding, user_embedding_dropout),
    whose embeddings [B, L_u, d_u] go through the user branch (preflab.diffusion.user_branch)."""

    def __init__(self, unet: nn.Module, user_branch: nn.Module | None = None, users: nn.Embedding | None = None,
                 user_tokens: int = 0):
        super().__init__()
        self.unet, self.user_branch, self.users, self.user_tokens = unet, user_branch, users, user_tokens

    def forward(self, x_t, t, cond, use_user: bool = True):
        kwargs = {}
        if isinstance(cond, dict):
            cond = dict(cond)
            index = cond.pop("user_index", None)
            if index is not None and use_user and self.user_branch is not None:
                e = self.users(index.clamp(min=0)).reshape(index.shape[0], self.user_tokens, -1)
                # user_embedding_dropout: row -1 is the zero embedding (a mask, not `if (index < 0).any()`: no host
                # sync per forward; a kept row is multiplied by 1, exactly itself)
                e = e * (index >= 0).to(e.dtype)[:, None, None]
                kwargs["cross_attention_kwargs"] = {"user_embeds": self.user_branch.proj(e)}
            kwargs.update(cond)
        else:
            kwargs["encoder_hidden_states"] = cond
        if type(self.unet).__name__ == "FluxTransformer2DModel":
            from preflab.diffusion.flux import call_flux

            return call_flux(self.unet, x_t, t, kwargs)
        return self.unet(x_t, timestep=t, return_dict=False, **kwargs)[0]

    def user_embeddings(self, rows: list[int]) -> torch.Tensor:
        """[N, L_u, d_u]: the user table's rows `rows` (as forward reads a cond's user_index, without the -1 row)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.users.weight.device)
        return self.users(index).reshape(len(rows), self.user_tokens, -1)

    def user_attention_kwargs(self, embeddings: torch.Tensor | None, count: int) -> dict | None:
        """The UNet's cross_attention_kwargs for `embeddings` [count, L_u, d_u] (one per prompt), fed through P as
        forward feeds a cond's users: {"user_embeds": P e}; None for None (the branch off: the base model)."""
        if embeddings is None:
            return None
        if self.user_branch is None:
            raise ConfigError("user embeddings given to a denoiser without a user branch (not a ppd run).")
        if embeddings.shape[0] != count:
            raise ConfigError(f"{embeddings.shape[0]} user embeddings for {count} prompts; give one each.")
        proj = self.user_branch.proj
        with torch.no_grad():
            return {"user_embeds": proj(embeddings.to(proj.weight.device, proj.weight.dtype))}

    def sample_user_latents(self, components, prompts: list[str], seeds: list[int], embeddings: torch.Tensor | None,
                            num_steps: int, guidance_scale: float) -> torch.Tensor:
        """[N, C, h, w]: preflab.diffusion.pipeline.sample_latents of this UNet with the user branch fed `embeddings`
        (user_attention_kwargs), or with the branch off (None: the base model, PPD's reference). Same seeds, same
        sampler, so the two differ only by the user stream."""
        from preflab.diffusion.pipeline import sample_latents

        return sample_latents(components, self.unet.eval(), prompts, seeds, num_steps, guidance_scale,
                              cross_attention_kwargs=self.user_attention_kwargs(embeddings, len(prompts)))

    def sample_user_images(self, components, prompts: list[str], seeds: list[int], embeddings: torch.Tensor | None,
                           num_steps: int, guidance_scale: float) -> torch.Tensor:
        """uint8 [N, 3, S, S]: sample_user_latents' latents decoded (preflab.diffusion.pipeline.sample_images)."""
        from preflab.diffusion.pipeline import sample_images

        return sample_images(components, self.unet.eval(), prompts, seeds, num_steps, guidance_scale,
                             cross_attention_kwargs=self.user_attention_kwargs(embeddings, len(prompts)))


def mark_trained_unet(cfg, unet: nn.Module, is_flow: bool) -> bool:
    """What a non-ppd run trains on `unet`, marked requires_grad (what its checkpoints hold): LoRA adapters with the
    run's settings on a frozen UNet when use_peft (the diffusers Diffusion-DPO script's targets, SD3's on a flow
    model, else lora_target_modules; returns True), else every weight (False). The run's trainer and a checkpoint's
    reader (preflab.loops.diffusion_checkpoint) build it the same way."""
    if not cfg.use_peft:
        unet.requires_grad_(True)
        return False
    from peft import LoraConfig

    from preflab.models.load import check_lora_targets

    default = SD3_LORA_TARGETS if is_flow else LORA_TARGETS
    targets = default if cfg.lora_target_modules in ("all-linear", None) else cfg.lora_target_modules
    if targets is not default:  # the user's names: each must match (peft raised only when none did)
        check_lora_targets(unet, targets)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                init_lora_weights="gaussian", target_modules=targets))
    return True


def ema_teacher(unet: nn.Module) -> nn.Module:
    """self_npo's EMA teacher: a copy of `unet` whose parameters are marked requires_grad as the student's, so the
    checkpoint keeps them (the optimizer never sees them: Trainables)."""
    teacher = copy.deepcopy(unet)
    for t_param, s_param in zip(teacher.parameters(), unet.parameters()):
        t_param.requires_grad_(s_param.requires_grad)
    return teacher


class Trainables(nn.Module):
    """What a checkpoint holds: the denoiser module's trainable parameters and, for self_npo, the EMA teacher's
    (marked requires_grad so the checkpoint keeps them; the optimizer never sees them)."""

    def __init__(self, module: DenoiserModule, teacher: nn.Module | None = None):
        super().__init__()
        self.module, self.teacher = module, teacher


@dataclass
class DiffusionMicroBatch:
    index: list[int]      # dataset positions
    row_ids: list[int]    # source rows (the step's example count)
    step: int
    num_tokens: int       # images in the micro-batch: the step's throughput count (logged as num_images)


class DiffusionRun(TrainingRun):
    """A preference run on a diffusers text-to-image pipeline (see the module docstring)."""

    throughput_unit = "images"  # num_images / images_per_second: a micro-batch counts its images, not tokens

    def __init__(self, cfg, pipeline=None, train_data=None, eval_data=None, scores_held_out: bool = False,
                 reader=None, user_table: "UserTable | None" = None):
        """scores_held_out: the run only scores dataset_name as held-out pairs (`preflab eval --task diffusion`);
        the data banner says so instead of counting train / eval examples. reader: a RowReader already opened on
        dataset_name's split (that eval's), read instead of opening the data again. user_table: ppd's user table as
        a saved run left it (`preflab eval`: users.json + user_branch.safetensors, preflab.loops.diffusion_eval),
        used instead of building one; every pair's user must be in it."""
        from preflab.diffusion.pipeline import components_of, load_pipeline
        from preflab.diffusion.schedule import NoiseSchedule
        from preflab.objectives.dcpo import DCPO
        from preflab.objectives.ppd import PPD
        from preflab.scoring.diffusion import DiffusionPairScorer, noiser_for

        self.cfg = cfg
        self.given_users = user_table
        self.objective = cfg.objective()
        check_diffusion_objective(cfg, self.objective)
        check_diffusion_options(cfg)
        self.self_npo = self.objective.batch_type is UnpairedBatch
        self.ppd = isinstance(self.objective, PPD)
        self.dcpo = isinstance(self.objective, DCPO)
        if self.ppd and cfg.use_peft:
            raise ConfigError("ppd trains only the user branch (the UNet stays frozen); set use_peft: false.")
        if cfg.caption_perturbation != "none" and not self.dcpo:
            raise ConfigError("caption_perturbation builds DCPO's rejected captions; set loss_type: dcpo or "
                              "caption_perturbation: none.")
        if self.self_npo and cfg.diffusion_noising:
            raise ConfigError("diffusion_noising configures pair noising; self_npo draws its own (self_npo_* options).")
        self.accelerator = make_accelerator(cfg, whole_weights="the pipeline and samples.png are written from "
                                            "the UNet on the main process")
        self.main = self.accelerator.is_main_process
        if not self.main:  # diffusers' import of bitsandbytes logs its warnings once per launch, not once per process
            from preflab.quiet import quiet_bitsandbytes

            quiet_bitsandbytes()
        self.scores_held_out = scores_held_out
        self.data_report = {}
        self.eval_notes: list[str] = []  # what `preflab eval --task diffusion` records in eval.json's notes
        if pipeline is not None:  # loading options beside a pipeline given from Python: refused (models.given)
            from preflab.models.given import DIFFUSION_OPTIONS, check_given_models

            # tokenizer: the pipeline carries its own tokenizers, so trust_remote_code loads nothing either
            check_given_models(cfg, pipeline, tokenizer=pipeline, what="pipeline", options=DIFFUSION_OPTIONS)
        if pipeline is None:  # a wrong model_name_or_path stops before the data's images are decoded
            from preflab.diffusion.pipeline import check_pipeline_files

            check_pipeline_files(cfg.model_name_or_path, cfg.allow_pickle)
        if train_data is None:
            train_data, eval_data, self.data_report = self._prepare_data(reader)
        self.train_data, self.eval_data = train_data, eval_data or []
        self.components = components_of(pipeline if pipeline is not None else load_pipeline(
            cfg.model_name_or_path, cfg.allow_pickle, cfg.trust_remote_code, cfg.seed))
        check_resolution(cfg.resolution, self.components)
        if cfg.flux_guidance != 3.5 and not self.components.is_flux:  # was accepted and dropped
            raise ConfigError(f"flux_guidance={cfg.flux_guidance} sets a Flux transformer's guidance embedding; "
                              f"{cfg.model_name_or_path} is not a Flux pipeline. Remove it (guidance_scale sets "
                              "classifier-free guidance when sampling).")
        self.components.flux_guidance, self.components.resolution = cfg.flux_guidance, cfg.resolution
        if self.components.is_flux:
            from preflab.diffusion.flow import FlowMatchSchedule

            check_flow_objective(cfg, self.objective)
            self.schedule = FlowMatchSchedule.for_flux(self.components.scheduler)
        elif self.components.is_flow:
            from preflab.diffusion.flow import FlowMatchSchedule

            check_flow_objective(cfg, self.objective)
            self.schedule = FlowMatchSchedule.from_scheduler(self.components.scheduler)
        else:
            self.schedule = NoiseSchedule.from_scheduler(self.components.scheduler)
        self.scorer = None if self.self_npo else DiffusionPairScorer(
            noiser_for(self.objective, self.schedule, **cfg.diffusion_noising))
        self._build_models()
        self._encode_all()
        self.plan, self.total_steps = make_plan(cfg, len(self.train_data), self.accelerator.num_processes)
        from preflab.config import resolve_epoch_eval

        resolve_epoch_eval(cfg, self.plan.steps_per_epoch, self.main)  # eval / save_strategy: epoch (they went unread)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        # weight_decay on every trainable parameter, as diffusers' training scripts (train_diffusion_dpo.py, the
        # Diffusion-DPO release) build AdamW; text runs follow transformers' groups (loops.optimizer)
        self.optimizer, self.scheduler = make_optimizer(cfg, self.params, self.total_steps)
        self.sync_module, self.optimizer = self.accelerator.prepare(self.module, self.optimizer)
        self.params = [p for p in self.module.parameters() if p.requires_grad]  # FSDP2 replaces them (DTensor)
        self.checkpoint_module = self.trainables
        self._ema_step = None

    # ------------------------------------------------------------------ setup
    def _prepare_data(self, reader=None):
        from preflab.data.eval_set import train_and_eval
        from preflab.diffusion.data import load_image_pairs, repeated_image_pairs

        cfg = self.cfg
        if not cfg.dataset_name:
            raise ConfigError("dataset_name is empty; give a .jsonl/.parquet file of image pairs, a directory or a "
                              "hub dataset (Pick-a-Pic style or prompt/chosen_image/rejected_image).")
        if cfg.score_range is not None and (len(cfg.score_range) != 2 or not cfg.score_range[1] > cfg.score_range[0]):
            raise ConfigError(f"score_range must be [s_min, s_max] with s_max > s_min, got {cfg.score_range}.")
        kwargs = self.image_pair_options()
        from preflab.data.configured_source import training_source

        # an empty source is refused naming what the user gave: preflab eval's --data, else dataset_name / eval_...
        train, report = load_image_pairs(training_source(cfg) if reader is None else reader, split=cfg.dataset_split,
                                         option="--data" if self.scores_held_out else "dataset_name",
                                         name=cfg.dataset_name, **kwargs)
        train, evals, eval_report = train_and_eval(cfg, train, lambda source, split: load_image_pairs(
            source, split=split, option="eval_dataset_name", name=cfg.eval_dataset_name, **kwargs))
        out = {"train_rows": report.to_dict(), "skipped": dict(report.skipped),
               "duplicate_train_pairs": repeated_image_pairs(train)}
        if eval_report is not None:
            out["eval_rows"] = eval_report.to_dict()
        if self.main:
            counts = (f"{len(train)} held-out pairs to score" if self.scores_held_out
                      else f"{len(train)} train, {len(evals)} eval examples")
            print(f"preflab: data: {_rows_text(report)}; {counts}"
                  + (f"; eval data: {_rows_text(eval_report)}" if eval_report is not None else ""))
            if out["duplicate_train_pairs"] and not self.scores_held_out:  # as the text and vision rows' note
                from preflab.data.overlap import repeats_note

                print("preflab: note: data: " + repeats_note(out["duplicate_train_pairs"], "pair(s)",
                                                             "caption and image pixels"))
        for read in (report, eval_report):
            note = read.scores_note() if read is not None and self.main else None
            if note:
                print(f"preflab: note: data: {note}", flush=True)
        if self.self_npo:
            out["rejected_images_unused"] = self._note_unused_rejected(train)
        if self.dcpo and self.cfg.caption_perturbation != "none":
            self._perturb_captions(train + evals)
        if self.dcpo:
            self._check_dual_captions(train)
        return train, evals, out

    def image_pair_options(self) -> dict:
        """How this run reads its image pairs (load_image_pairs' options: resolution, resize, on_bad_row, ...): its
        training and eval data, and `preflab eval --task diffusion`'s reading of a run's training data."""
        cfg = self.cfg
        return dict(resolution=cfg.resolution, resize=cfg.image_resize, on_bad_row=cfg.on_bad_row,
                    image_only=self.self_npo, user_column=cfg.user_column if self.ppd else None,
                    needs_preference_prob="preference_prob" in getattr(self.objective, "required_extras", ()),
                    score_range=tuple(cfg.score_range) if cfg.score_range else None)

    def _check_dual_captions(self, train) -> None:
        """DCPO's point is a caption per image; a pair whose two captions are the same text is a Diffusion-DPO pair.
        All such: refused (the run would be diffusion_dpo under another name); some: said with their count. Held-out
        pairs (`preflab eval --task diffusion`, which applies no caption_perturbation) are scored as they are: their
        count is said, never refused."""
        same = sum(1 for x in train if x.cond_chosen == x.cond_rejected)
        if same and self.scores_held_out:  # printed, and kept for eval.json (its loss differs from the run's)
            self.eval_notes.append(f"dcpo: {same} of {len(train)} held-out pairs have no caption_chosen / "
                                   "caption_rejected: they are scored with the prompt for both images (eval applies "
                                   "no caption_perturbation)")
            if self.main:
                print(f"preflab: note: {self.eval_notes[-1]}.", flush=True)
            return
        if same == len(train):
            raise ConfigError(
                f"loss_type dcpo: none of the {len(train)} training pairs has two different captions (no "
                "caption_chosen / caption_rejected columns, caption_perturbation: none), so it would train exactly "
                "diffusion_dpo. Give the captions, set caption_perturbation: weak | medium | strong, or use "
                "loss_type: diffusion_dpo.")
        if same and self.main:
            print(f"preflab: note: dcpo: {same} of {len(train)} training pairs have the same caption for both "
                  "images (Diffusion-DPO pairs).", flush=True)

    def _perturb_captions(self, examples) -> None:
        from preflab.diffusion.captions import caption_vocabulary, perturb_caption

        vocab = caption_vocabulary([x.prompt for x in examples] + [x.cond_chosen for x in examples])
        for x in examples:
            if x.caption_rejected is None:
                x.caption_rejected = perturb_caption(x.cond_rejected, self.cfg.caption_perturbation, vocab,
                                                     draw_seed(self.cfg.seed, "caption", x.row_id))

    def _build_models(self) -> None:
        cfg, comps, device = self.cfg, self.components, self.accelerator.device
        for frozen in (comps.vae, *comps.text_encoders):
            frozen.requires_grad_(False).eval().to(device)
        unet = comps.denoiser.float().to(device)
        if cfg.disable_dropout:  # as the text tasks (TRL's disable_dropout): every dropout rate of the denoiser to 0
            from preflab.models.dropout import disable_dropout

            disable_dropout(unet)
        self.lora = False
        branch = users = None
        self.reference = None
        if self.ppd:
            from preflab.diffusion.user_branch import install_user_branch

            if self.given_users is not None:
                users, self.user_tokens = self._given_user_table(self.given_users)
                users = users.to(device)
            elif cfg.user_embeddings:
                users, self.user_tokens = self._user_table(cfg.user_embeddings)
                users = users.to(device)
            else:
                self.user_ids, self.user_tokens = sorted({x.user for x in self.train_data}), cfg.user_embedding_tokens
                self.user_rows = {u: (i, 1) for i, u in enumerate(self.user_ids)}  # one learned embedding per user
                users = nn.Embedding(len(self.user_ids), cfg.user_embedding_tokens * cfg.user_embedding_dim).to(device)
                nn.init.normal_(users.weight, std=1.0, generator=torch.Generator().manual_seed(cfg.seed))
                unknown = sorted({x.user for x in self.eval_data} - set(self.user_ids))
                if unknown:
                    raise ConfigError(f"eval users {unknown[:5]} have no training rows; ppd learns one embedding per "
                                      "training user: evaluate on users seen in training, or give precomputed "
                                      "embeddings of every user (user_embeddings).")
            branch = install_user_branch(unet, users.weight.shape[1] // self.user_tokens).to(device)
        else:
            self.lora = mark_trained_unet(cfg, unet, comps.is_flow)
            if not self.lora and self.objective.needs_reference and not self.self_npo:
                self.reference = copy.deepcopy(unet).requires_grad_(False).eval()
        if cfg.gradient_checkpointing:  # diffusers' default is checkpoint(module, *args, use_reentrant=False)
            import functools

            from torch.utils.checkpoint import checkpoint

            from preflab.checkpointing_options import checkpoint_kwargs

            unet.enable_gradient_checkpointing(functools.partial(checkpoint, **checkpoint_kwargs(cfg)))
        self.module = DenoiserModule(unet, branch, users, getattr(self, "user_tokens", cfg.user_embedding_tokens))
        teacher = ema_teacher(unet) if self.self_npo else None
        self.teacher = teacher
        self.trainables = Trainables(self.module, teacher)

    def _given_user_table(self, table: "UserTable") -> tuple[nn.Embedding, int]:
        """(the frozen table of a saved run's users, L_u): self.user_ids / user_rows from `table`. A pair whose user
        has no row is refused, naming the row, the user and where the table came from (table.source)."""
        examples = self.train_data + self.eval_data
        table = table.including({x.user for x in examples})
        missing = {}
        for x in examples:
            if x.user not in table.user_rows:
                missing.setdefault(x.user, x.row_id)
        if missing:
            said = ", ".join(f"{u!r} (row {r})" for u, r in sorted(missing.items(), key=lambda kv: kv[1])[:5])
            raise ConfigError(f"data {self.cfg.dataset_name}: {len(missing)} user(s) have no embedding in "
                              f"{table.source}: {said} (column {self.cfg.user_column!r}). {table.remedy}")
        self.user_ids, self.user_rows = sorted(table.user_rows), dict(table.user_rows)
        return nn.Embedding.from_pretrained(table.weight.float(), freeze=True), table.tokens

    def _user_table(self, path: str) -> tuple[nn.Embedding, int]:
        """(a frozen embedding table of the file's users, L_u). A user's value is one [L_u, d_u] embedding or a
        [S, L_u, d_u] stack of S few-shot subsets' embeddings (the PPD release writes one per (user, 4-pair subset));
        the table holds every subset as a row, user by user in sorted order, and self.user_rows[user] = (first row,
        S) (_user_rows draws one per pair and epoch). Each [L_u, d_u] is standardised per token (stacked_user_rows)."""
        from safetensors.torch import load_file

        from preflab.errors import DataError

        try:
            table = load_file(path)
        except Exception as err:
            raise ConfigError(f"user_embeddings {path!r} is not a readable safetensors file: {err}") from err
        stacks = check_user_stacks(path, table)
        missing = sorted({x.user for x in self.train_data + self.eval_data} - set(table))
        if missing:
            raise DataError(f"user_embeddings {path} has no embedding for users {missing[:5]} (column "
                            f"{self.cfg.user_column!r}); add them or drop their rows.")
        self.user_ids = sorted(table)
        weight, self.user_rows = stacked_user_rows({u: stacks[u] for u in self.user_ids})
        tokens = stacks[self.user_ids[0]].shape[1]
        return nn.Embedding.from_pretrained(weight, freeze=True), tokens

    def _encode_all(self) -> None:
        """Text states of every distinct caption and (cache_encodings) latents of every image, computed once and
        kept on disk under a fingerprint of the frozen encoder's weights and the inputs ($PREFLAB_CACHE_DIR, else
        ~/.cache/preflab, /diffusion-encodings), so a second run on the same data and model encodes nothing."""
        from preflab.diffusion.pipeline import encode_text

        examples = self.train_data + self.eval_data
        texts = sorted({x.cond_chosen for x in examples} | {x.cond_rejected for x in examples} | {""})
        comps = self.components
        self._note_truncated_captions(texts)
        if not self.cfg.cache_encodings:  # encoded per micro-batch (_text_of); only the empty prompt is kept
            texts = [""]

        def encode_texts():
            parts = [encode_text(comps, texts[i:i + 64]) for i in range(0, len(texts), 64)]
            return {k: torch.cat([p[k].cpu() for p in parts]) for k in parts[0]}

        encoders = nn.ModuleList(comps.text_encoders)
        states = self._cached("text", encoders, [repr(texts), comps.tokenizer.model_max_length], encode_texts)
        self.text = {t: {k: v[i] for k, v in states.items()} for i, t in enumerate(texts)}
        self.latents = {}
        sides = [(x, s) for x in examples for s in self._trained_sides() if getattr(x, f"{s}_ref") is not None]
        if self.cfg.cache_encodings and sides:

            def encode_latents():
                from preflab.diffusion.pipeline import encode_images

                return torch.cat([encode_images(comps, torch.stack([getattr(x, s) for x, s in sides[i:i + 32]]))
                                  .cpu() for i in range(0, len(sides), 32)])

            digests = [hashlib.sha256(getattr(x, s).numpy().tobytes()).hexdigest() for x, s in sides]
            latents = self._cached("latents", comps.vae, [comps.scaling_factor, comps.shift_factor, *digests],
                                   lambda: {"values": encode_latents()})["values"]
            self.latents = {(id(x), s): z for (x, s), z in zip(sides, latents)}
        own = [x for x in examples if x.chosen_ref is None]
        if own:  # self_npo from prompts alone: x0 = the base model's own DDIM sample of each prompt
            from preflab.diffusion.pipeline import sample_latents

            steps = self.cfg.sample_steps or 20

            def sample():
                unet = self.module.unet
                return torch.cat([sample_latents(comps, unet, [x.prompt for x in own[i:i + 32]],
                                                 [draw_seed(self.cfg.seed, "x0", x.row_id) for x in own[i:i + 32]],
                                                 steps, self.cfg.guidance_scale).cpu()
                                  for i in range(0, len(own), 32)])

            samples = self._cached("own-samples", self.module.unet, [steps, self.cfg.guidance_scale, self.cfg.seed,
                                                                     *[(x.prompt, x.row_id) for x in own]],
                                   lambda: {"values": sample()})["values"]
            self.latents.update({(id(x), "chosen"): z for x, z in zip(own, samples)})

    def _note_truncated_captions(self, texts: list[str]) -> None:
        """Captions longer than a text tokenizer's limit (CLIP: 77 tokens) are cut to it by encode_text, as diffusers
        does without a word; counted in summary.json data.captions_truncated and said, since the end of such a
        caption never conditions the model."""
        from preflab.diffusion.pipeline import truncated_captions

        cut = truncated_captions(self.components, texts)
        if not cut:
            return
        self.data_report["captions_truncated"] = cut
        if self.main:
            parts = "; ".join(f"{v['captions']} by {name} (max {v['max_tokens']} tokens)" for name, v in cut.items())
            print(f"preflab: note: data: of the {len(texts) - 1} distinct captions, some are longer than a text "
                  f"encoder's limit and are cut to their first tokens: {parts}. The rest of such a caption does not "
                  "condition the model (diffusers cuts them the same way); shorten the captions to use all of "
                  "them. Counted in summary.json data.captions_truncated.", flush=True)

    def _cached(self, kind: str, model: nn.Module, inputs: list, compute) -> dict[str, torch.Tensor]:
        """compute() -> {name: tensor}, read from / written to the on-disk cache under sha256(ENCODINGS_FORMAT,
        preflab's version, kind, model weights, inputs): a preflab that computes encodings differently (a fix in
        preflab.diffusion.pipeline) does not read the entries an older one wrote."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file, save_file

        from preflab.atomic_file import write_atomically
        from preflab.checkpoint import write_failure
        from preflab.scoring.ref_cache import default_cache_dir, model_fingerprint

        from preflab import __version__

        key = hashlib.sha256("|".join([f"format {ENCODINGS_FORMAT}", __version__, kind, model_fingerprint(model),
                                       *map(str, inputs)]).encode()).hexdigest()
        path = default_cache_dir() / "diffusion-encodings" / f"{kind}-{key[:32]}.safetensors"
        if path.is_file():
            try:
                return load_file(str(path))
            except Exception:  # a damaged cache file is recomputed and replaced
                pass
        values = {k: v.float().contiguous() for k, v in compute().items()}
        if self.main:
            try:  # whole or not at all; a failed write removes its temp file (.tmp files piled up in the cache)
                write_atomically(path, lambda tmp: save_file(values, tmp))
            except (OSError, SafetensorError) as err:  # the run goes on without a cache: safetensors says a full
                # disk as its own SafetensorError, which stopped the run (preflab.checkpoint.write_failure)
                failure = write_failure(err, path)
                print(f"preflab: note: could not write the encoding cache {path} "
                      f"({failure.strerror if failure is not None else err}); the run goes on without it.")
        self.encodings_cache = str(path.parent)
        return values

    def _trained_sides(self) -> tuple[str, ...]:
        """The images of a row the run trains on: both sides of a pair, or for self_npo (one image per row) the
        chosen one alone (a pair row's rejected image is never encoded; _note_unused_rejected says so)."""
        return ("chosen",) if self.self_npo else ("chosen", "rejected")

    def _note_unused_rejected(self, train) -> int:
        """self_npo on preference pairs: the count of training rows whose rejected image it does not use (Self-NPO
        needs no preference data: it distils the model's own negative from image + caption rows), said in a note.
        Before, a pair file given to self_npo (examples/diffusion/self_npo.yaml's) trained on the chosen images and
        set the rejected ones aside without a word."""
        unused = sum(1 for x in train if x.rejected_ref is not None) if self.self_npo else 0
        if unused and self.main and not self.scores_held_out:
            print(f"preflab: note: data: self_npo trains on one image per row: {unused} of the {len(train)} training "
                  "rows are preference pairs, of which it uses the chosen image (with its caption) and not the "
                  f"rejected one ({unused} rejected images unused). Self-NPO needs no preferences: rows {{prompt, "
                  "image}, or prompts alone, train it the same way.", flush=True)
        return unused

    def _latents_of(self, examples, store: bool = False):
        from preflab.diffusion.pipeline import encode_images

        key = lambda x, side: (id(x), side)  # noqa: E731
        missing = [(x, s) for x in examples for s in self._trained_sides()
                   if getattr(x, f"{s}_ref") is not None and key(x, s) not in self.latents]
        fresh = {}
        if missing:
            images = torch.stack([getattr(x, s) for x, s in missing])
            for (x, s), z in zip(missing, encode_images(self.components, images)):
                fresh[key(x, s)] = z.cpu()
            if store:
                self.latents.update(fresh)
        get = lambda x, s: self.latents.get(key(x, s), fresh.get(key(x, s)))  # noqa: E731
        chosen = torch.stack([get(x, "chosen") for x in examples])
        rejected = None if self.self_npo else torch.stack([get(x, "rejected") for x in examples])
        return chosen, rejected

    # ------------------------------------------------------------------ batches and scoring
    def micro_batches(self, step: int) -> list[DiffusionMicroBatch]:
        self._ema_catch_up(step)
        out = []
        for index in self.plan.indices(step, self.accelerator.process_index):
            items = [self.train_data[i] for i in index]
            out.append(DiffusionMicroBatch(list(index), [x.row_id for x in items], step,
                                           len(items) * (1 if self.self_npo else 2)))
        return out

    def _ema_catch_up(self, step: int) -> None:
        """Self-NPO: the EMA update after optimizer step s runs before step s + 1's forward (and so, after a
        resume at step s, from the restored student), never twice."""
        if self.teacher is None or step == 0 or self._ema_step == step:
            return
        from preflab.diffusion.self_npo import ema_update

        ema_update(self.teacher, self.module.unet, self.cfg.self_npo_ema_decay)
        self._ema_step = step

    def _text_of(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """{"states": [B, L, D] (, "pooled": [B, P])} on the device: cached, or (cache_encodings: false) encoded
        now."""
        from preflab.diffusion.pipeline import encode_text

        missing = sorted({t for t in texts if t not in self.text})
        fresh = {}
        if missing:
            new = encode_text(self.components, missing)
            fresh = {t: {k: v[i].cpu() for k, v in new.items()} for i, t in enumerate(missing)}
        rows = [self.text[t] if t in self.text else fresh[t] for t in texts]
        return {k: torch.stack([r[k] for r in rows]).to(self.accelerator.device) for k in rows[0]}

    def _user_rows(self, index: list[int], data, step) -> list[int]:
        """ppd: the user-table row of each pair at `index` of `data`. Training pairs (a step of train_data): the
        subset ppd_subset(seed, epoch of the step, position, S) of the pair's user. Evaluation (step "eval", or other
        data): subset 0 of each user, a fixed choice so eval numbers repeat; it is one few-shot subset's embedding,
        as in training, where the mean over subsets is an input the branch never saw (it is not standardised).
        user_embedding_dropout p: a training pair with ppd_user_dropped(seed, epoch, position, p) gets row -1, the
        zero embedding (never in evaluation)."""
        rows, p = [], self.cfg.user_embedding_dropout
        training = data is self.train_data and isinstance(step, int)
        epoch = step // self.plan.steps_per_epoch if training else None
        for i in index:
            first, count = self.user_rows[data[i].user]
            if training and ppd_user_dropped(self.cfg.seed, epoch, i, p):
                first = -1  # DenoiserModule: a zero embedding
            elif training and count > 1:
                first += ppd_subset(self.cfg.seed, epoch, i, count)
            rows.append(first)
        return rows

    def _cond(self, texts, user_rows=None):
        """The UNet conditioning of these captions (SDXL: with pooled embeddings and time_ids; ppd: user_index, the
        rows of the user table)."""
        from preflab.diffusion.pipeline import unet_cond

        cond = unet_cond(self._text_of(texts), self.cfg.resolution)
        if self.components.is_flux and self.components.denoiser.config.guidance_embeds:
            cond["guidance"] = torch.full((len(texts),), float(self.cfg.flux_guidance), device=self.accelerator.device)
        if not self.ppd:
            return cond
        users = torch.tensor(user_rows, device=self.accelerator.device)
        cond = dict(cond) if isinstance(cond, dict) else {"encoder_hidden_states": cond}
        return {**cond, "user_index": users}

    def pairs(self, index: list[int], data, step="eval") -> "DiffusionPairs":
        """The DiffusionPairs of the examples at `index` of `data` (latents, conditioning, extras) on the device; `step`
        picks ppd's few-shot subsets (_user_rows)."""
        from preflab.scoring.diffusion import DiffusionPairs

        items = [data[i] for i in index]
        device = self.accelerator.device
        chosen, rejected = self._latents_of(items)
        users = self._user_rows(index, data, step) if self.ppd else None
        cond = self._cond([x.cond_chosen if self.dcpo else x.prompt for x in items], users)
        cond_rejected = self._cond([x.cond_rejected for x in items], users) if self.dcpo else None
        extras = {}
        if any(x.preference_prob is not None for x in items):
            extras["preference_prob"] = torch.tensor([x.preference_prob for x in items], dtype=torch.float64,
                                                     device=device)
        return DiffusionPairs(chosen.to(device), None if rejected is None else rejected.to(device), cond,
                              cond_rejected, [x.row_id for x in items], extras)

    def _draws(self, index: list[int], step, shape):
        """(t [B], eps [B, ...]) from one generator per pair seeded by (seed, step, dataset position)."""
        ts, noise = [], []
        for i in index:
            g = torch.Generator().manual_seed(draw_seed(self.cfg.seed, step, i))
            ts.append(self.scorer.noiser.sample_timesteps(1, g))
            noise.append(torch.randn(shape, generator=g))
        return torch.cat(ts), torch.stack(noise)

    def _policy(self, x, t, cond):
        return self.sync_module(x, t, cond)

    def _inverting_policy(self, x, t, cond):
        return self.module(x, t, cond)

    def _reference(self, x, t, cond):
        if self.reference is not None:
            from preflab.diffusion.pipeline import call_unet

            return call_unet(self.reference, x, t, cond)
        if self.lora:
            self.module.unet.disable_adapters()
            try:
                return self.module(x, t, cond)
            finally:
                self.module.unet.enable_adapters()
        return self.module(x, t, cond, use_user=False)  # ppd: the base UNet without the user branch

    def _teacher(self, x, t, cond):
        from preflab.diffusion.pipeline import call_unet

        return call_unet(self.teacher, x, t, cond)

    def score(self, index: list[int], step, data=None, policy=None):
        """The objective's batch for the examples at `index` (train data unless `data`), with the draws of `step`."""
        data = self.train_data if data is None else data
        pairs = self.pairs(index, data, step)
        generator = None  # every draw is per pair, from (seed, step, dataset position): below
        policy = policy or self._policy
        with self.accelerator.autocast():
            if self.self_npo:
                from preflab.diffusion.self_npo import self_npo_batch

                uncond = self._cond([""] * len(index))
                x0 = pairs.chosen
                j, eps, u, eps2 = self_npo_draws(self.cfg.seed, step, index, tuple(x0.shape[1:]),
                                                 self.cfg.self_npo_num_ddim_steps)
                return self_npo_batch(policy, self._teacher, x0, pairs.cond, uncond, self.schedule,
                                      num_ddim_steps=self.cfg.self_npo_num_ddim_steps,
                                      rollout_steps=self.cfg.self_npo_rollout_steps,
                                      teacher_guidance=self.cfg.self_npo_teacher_guidance, start_index=j,
                                      noise=eps.to(x0), u=u, noise2=eps2.to(x0))
            t, eps = self._draws(index, step, tuple(pairs.chosen.shape[1:]))
            cond_l = pairs.cond if pairs.cond_rejected is None else pairs.cond_rejected
            if self.scorer.noiser.mode != "forward":  # the inversion jitter per pair, as t and eps
                generator = [torch.Generator().manual_seed(draw_seed(self.cfg.seed, step, "invert", i)) for i in index]
            noised = self.scorer.noiser(pairs.chosen, pairs.rejected, generator, self._inverting_policy, pairs.cond,
                                        cond_l, timesteps=t, noise=eps.to(pairs.chosen))
            reference = self._reference if self.objective.needs_reference else None
            return self.scorer(policy, pairs, reference, noised=noised)

    def forward(self, mb: DiffusionMicroBatch):
        return self.objective(self.score(mb.index, mb.step))

    # ------------------------------------------------------------------ evaluation and saving
    def evaluate(self, on_batch=None) -> dict:
        """Eval loss and metrics (eval_ prefix; implicit accuracy for the pair objectives) on fixed draws.
        on_batch(index, batch): called with each eval batch's objective input (`preflab eval`'s per-pair scores)."""
        if not self.eval_data:
            return {}
        self.module.eval()
        sums, n = {}, 0
        with torch.no_grad():
            size = self.cfg.per_device_eval_batch_size
            for i in range(0, len(self.eval_data), size):
                index = list(range(i, min(i + size, len(self.eval_data))))
                batch = self.score(index, "eval", self.eval_data, self._inverting_policy)
                out = self.objective(batch)
                if on_batch is not None:
                    on_batch(index, batch)
                for key, value in {"loss": out.loss, **out.metrics}.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * len(index)
                n += len(index)
        self.module.train()
        return {f"eval_{k}": v / n for k, v in sums.items()}

    def user_layout(self) -> dict:
        """ppd: which user is which row of the user table (users.json; in every checkpoint, checkpoint_record):
        users, tokens L_u, subsets: user -> [first row of users.weight, S]; eval and sampling read the first row
        (_user_rows)."""
        return {"users": self.user_ids, "tokens": self.module.user_tokens,
                "subsets": {u: list(self.user_rows[u]) for u in self.user_ids}}

    def checkpoint_record(self) -> dict:
        """ppd: {"ppd_users": user_layout() + how to rebuild users.weight} in every checkpoint's trainer_state.json,
        so `preflab eval` reads a checkpoint-N as the final directory's users.json (preflab.loops.ppd_eval). A learned
        table is a trained parameter (module.users.weight in model.safetensors); a precomputed one is frozen and not
        in the checkpoint (it may be large): its sha256 (of the float32 rows) lets the eval rebuild it from the
        user_embeddings file and refuse a file that changed. Resume reads none of it."""
        if not self.ppd:
            return {}
        if not hasattr(self, "_table_sha256"):  # a frozen table: hashed once (every rank builds the state)
            weight = self.module.users.weight
            if weight.requires_grad:  # learned: in model.safetensors
                self._table_sha256 = None
            else:  # FSDP2 shards it as a DTensor: gathered first (a collective)
                self._table_sha256 = table_sha256(weight.full_tensor() if hasattr(weight, "full_tensor") else weight)
        return {"ppd_users": {**self.user_layout(), "table_sha256": self._table_sha256}}

    def write_model(self) -> None:
        """The trained pipeline in output_dir (diffusers.DiffusionPipeline.from_pretrained loads it); LoRA fused.
        ppd: the base pipeline plus user_branch.safetensors (P, W_K^u, W_V^u, the user table: one row per user, or per
        few-shot subset of a precomputed user) and users.json (users, tokens, subsets: user -> [first row, S])."""
        from preflab.diffusion.pipeline import save_pipeline

        unet = self.accelerator.unwrap_model(self.module).unet
        if self.ppd:
            import json

            from safetensors.torch import save_file

            from diffusers.models.attention_processor import AttnProcessor2_0

            plain = copy.deepcopy(unet)
            plain.set_attn_processor(AttnProcessor2_0())  # the base UNet's processors, without the user stream
            save_pipeline(self.components, plain, self.out)
            state = {f"branch.{k}": v.contiguous().cpu() for k, v in self.module.user_branch.state_dict().items()}
            state["users.weight"] = self.module.users.weight.detach().contiguous().cpu()
            save_file(state, str(self.out / "user_branch.safetensors"))
            (self.out / "users.json").write_text(json.dumps(self.user_layout()))
            return
        save_pipeline(self.components, unet, self.out)

    def summary_extras(self) -> dict:
        return {"task": "diffusion", "model_dir": str(self.out), "prediction_type": self.schedule.prediction_type,
                "noising": None if self.scorer is None else self.scorer.noiser.mode, "lora": self.lora}

    def write_samples(self, count: int = 8) -> Path | None:
        """samples.png in output_dir: the reference's (top row) and the trained model's (bottom row) samples of the
        first `count` eval (else train) prompts, same seeds (sample_steps DDIM steps; 0 = none; self_npo: the trained
        negative model's row alone; ppd: ppd_sample_rows)."""
        from preflab.diffusion.pipeline import sample_images, save_grid

        if self.cfg.sample_steps <= 0:
            return None
        prompts = self.sample_prompts(count)
        seeds = sample_seeds(self.cfg.seed, len(prompts))
        if self.ppd:
            return save_grid(self.ppd_sample_rows(prompts, seeds), self.out / "samples.png")
        unet = self.accelerator.unwrap_model(self.module).unet.eval()
        sample = lambda model: sample_images(self.components, model, prompts, seeds, self.cfg.sample_steps,  # noqa
                                             self.cfg.guidance_scale)
        if self.reference is not None:
            before = sample(self.reference)
        elif self.lora:
            unet.disable_adapters()
            try:
                before = sample(unet)
            finally:
                unet.enable_adapters()
        else:  # self_npo keeps no frozen base (its EMA teacher moves): one row, the negative model (the report says so)
            before = None
        after = sample(unet)
        rows = [after] if before is None else [before, after]
        return save_grid(rows, self.out / "samples.png")

    def sample_prompts(self, count: int = 8) -> list[str]:
        """The prompts of samples.png: the first `count` eval (else train) examples' prompts."""
        return [x.prompt for x in (self.eval_data or self.train_data)][:count]

    def ppd_sampled_users(self) -> list[str]:
        """ppd: the users of samples.png's rows, the first PPD_SAMPLE_USERS training users in sorted order."""
        return sorted({x.user for x in self.train_data})[:PPD_SAMPLE_USERS]

    def ppd_sample_rows(self, prompts: list[str], seeds: list[int]) -> list[torch.Tensor]:
        """ppd's samples.png rows, uint8 [N, 3, S, S] each: the base model (the user branch off, PPD's reference),
        then one row per ppd_sampled_users user through the branch with subset 0 of its rows (the embedding eval and
        PPDSampler read), the same seeds, sample_steps and guidance_scale: what `preflab sample RUN --base --user U1
        --user U2 ...` draws for these prompts."""
        module = self.accelerator.unwrap_model(self.module)
        draw = lambda e: module.sample_user_images(self.components, prompts, seeds, e,  # noqa: E731
                                                   self.cfg.sample_steps, self.cfg.guidance_scale)
        rows = [draw(None)]
        for user in self.ppd_sampled_users():
            rows.append(draw(module.user_embeddings([self.user_rows[user][0]]).expand(len(prompts), -1, -1)))
        return rows

    def ppd_samples_note(self) -> str:
        """The README line saying whose rows samples.png holds and the `preflab sample` command that draws them."""
        import shlex

        users = self.ppd_sampled_users()
        command = " ".join(["preflab sample", shlex.quote(str(self.out)), "--base",
                            *[f"--user {shlex.quote(u)}" for u in users],
                            *[f"--prompt {shlex.quote(p)}" for p in self.sample_prompts()]])
        return (f"`samples.png`: the base model (the user branch off, top row), then users {', '.join(users)}, one "
                f"row each; `{command}` draws the same images.")

    def write_card(self, summary: dict) -> None:
        grid = self.write_samples()
        lines = [f"# {Path(self.cfg.output_dir).name}", "",
                 f"A diffusers text-to-image pipeline preference-trained by preflab with `{self.cfg.loss_type}` "
                 f"from `{self.cfg.model_name_or_path}` ({summary['global_step']} steps).", "",
                 "```python", "from diffusers import DiffusionPipeline",
                 f"pipe = DiffusionPipeline.from_pretrained({str(self.out)!r})", "```", ""]
        if self.self_npo:
            lines += ["This is Self-NPO's *negative* model: use it only in the negative branch of classifier-free "
                      "guidance (preflab.diffusion.guidance.npo_guidance).", ""]
        if self.ppd and grid is not None:
            lines += [self.ppd_samples_note(), ""]
        (self.out / "README.md").write_text("\n".join(lines))


def train_diffusion(cfg) -> dict:
    return DiffusionRun(cfg).train()
