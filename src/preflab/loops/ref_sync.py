"""TR-DPO reference syncing (TRL's sync_ref_model): the reference model follows the policy during offline training.

Gorbatovski et al., 2024, "Learn Your Reference Model for Real Good Alignment" (arXiv:2404.09656): every tau optimizer
steps the reference is updated by the soft rule

    theta_ref  <-  alpha * theta  +  (1 - alpha) * theta_ref          (alpha = 1: the hard update, theta_ref <- theta)

with alpha = ref_model_mixup_alpha (TRL default 0.6) and tau = ref_model_sync_steps (TRL default 512).

    ref = sync_reference_of(cfg, policy, ref)   # a LoRA policy's separate base copy (as the trainer is built)
    sync = install_ref_sync(trainer)      # None unless cfg.sync_ref_model; the first of trainer.callbacks
    reference_tensors(sync)               # {"reference.<name>": tensor}: kept in every checkpoint (extra.safetensors)

When (TRL 1.16 SyncRefModelCallback.on_step_end): after optimizer step `global_step` when global_step % tau == 0, so
step tau's own loss is against the old reference and step tau + 1's against the new one; the checkpoint and the
evaluation of step tau (which follow on_step_end in both loops) see the new reference. A skipped (non-finite) step
counts as a step, as TRL's global_step does.

Every parameter of the reference is mixed with the policy parameter of the same name (TRL zips parameters() in
order; here names and shapes must match, checked when the trainer is built). Buffers are not mixed (TRL neither).

LoRA (TRL 1.16 refuses sync_ref_model with PEFT, huggingface/trl#3108): the policy's weight is its merged weight,
base + LoRA delta (peft's get_delta_weight, what merge_and_unload adds), and the reference is a separate full model:
the given ref_model_name_or_path, or, where a LoRA run's reference is the base with the adapters off, a frozen copy
of that base made when the trainer is built (`separate_base_reference`; the base is not changed, so until the first
sync the two references score alike). That copy costs one more model in memory, in reference_dtype.

Deviation from TRL (mixed precision): TRL mixes in place in the reference's dtype (ref.mul_(1 - alpha) rounds to it,
then .add_(policy, alpha=alpha) rounds again); preflab computes alpha * policy + (1 - alpha) * ref in float32 (or
the wider dtype of the two) and rounds once into the reference's dtype. With a float32 reference and policy the two
differ only in float32 rounding; with a bfloat16 reference (preflab's default on a CUDA GPU, reference_dtype) the
mix keeps the bits a 16-bit reference can hold after one rounding, not two. alpha = 1 copies the policy exactly.
Deviation from the paper: none beyond TRL's schedule (the paper also syncs every tau steps).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from preflab.errors import ConfigError
from preflab.loops.launch import is_sharded, sharding_engine
from preflab.models.adapters import is_lora
from preflab.ref_sync_options import ref_sync_reference_problem, sharded_ref_sync_problem

PREFIX = "reference."  # the reference's tensors in a checkpoint's extra.safetensors


def check_ref_sync(cfg, objective, accelerator) -> None:
    """ConfigError for what the config alone cannot tell (preflab.ref_sync_options has the rest): a reference-free
    objective, a sharding engine. Run before the models load."""
    if not cfg.sync_ref_model:
        return
    refusal = (ref_sync_reference_problem(cfg, objective.needs_reference)
               or sharded_ref_sync_problem(cfg, sharding_engine(accelerator) if is_sharded(accelerator) else None))
    if refusal:
        raise ConfigError(refusal)


class MergedWeight:
    """A LoRA layer's merged weight, base + delta (peft's get_delta_weight for each active adapter, as
    merge_and_unload adds it), computed when read; `shape` / `dtype` are the base weight's."""

    def __init__(self, base: torch.Tensor, layer):
        self.base, self.layer = base, layer
        self.shape, self.dtype = base.shape, base.dtype

    def is_floating_point(self) -> bool:
        return self.base.is_floating_point()

    def value(self) -> torch.Tensor:
        out = self.base
        for adapter in self.layer.active_adapters:
            if adapter in self.layer.lora_A:
                out = out + self.layer.get_delta_weight(adapter).to(self.base.dtype)
        return out


def policy_weights(policy: nn.Module) -> dict:
    """The policy's weights by the plain model's parameter names: its parameters; for a LoRA (peft) policy, the
    base model's, with each LoRA layer's weight as a MergedWeight and the adapters' own tensors left out."""
    if not is_lora(policy):
        return dict(policy.named_parameters())
    from peft.tuners.lora import LoraLayer

    base = policy.get_base_model()
    layers = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    out = {}
    for name, p in base.named_parameters():
        owner, _, leaf = name.rpartition(".base_layer.")
        if owner in layers:
            out[f"{owner}.{leaf}"] = MergedWeight(p, layers[owner]) if leaf == "weight" else p
        elif not any(owner_name and name.startswith(owner_name + ".") for owner_name in layers):
            out[name] = p
    return out


def _read(weight) -> torch.Tensor:
    return weight.value() if isinstance(weight, MergedWeight) else weight


def separate_base_reference(policy: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A frozen plain copy of a LoRA policy's base (what its adapters-off reference was), in `dtype`: a copy of the
    policy with its LoRA modules removed unmerged (peft's unload); the policy is not touched."""
    import copy

    return copy.deepcopy(policy).unload().to(dtype).requires_grad_(False).eval()


def reference_pairs(policy: nn.Module, ref: nn.Module) -> list[tuple[str, torch.Tensor, object]]:
    """(name, reference parameter, policy weight) for every parameter (a LoRA policy's merged weights:
    policy_weights); ConfigError when the two models' parameter names or shapes differ, or a reference parameter is
    not floating point (a quantized reference)."""
    mine, theirs = policy_weights(policy), dict(ref.named_parameters())
    if set(mine) != set(theirs):
        odd = sorted(set(mine) ^ set(theirs))
        raise ConfigError(f"sync_ref_model: the reference model's parameters are not the policy's ({len(odd)} name(s) "
                          f"in one model only, e.g. {odd[0]!r}); the reference is mixed with the policy parameter by "
                          "parameter, so it must be the same architecture (ref_model_name_or_path: a checkpoint of "
                          "the policy's model, or unset: a copy of the policy).")
    pairs = []
    for name, r in theirs.items():
        p = mine[name]
        if r.shape != p.shape or not r.is_floating_point():
            what = f"shape {tuple(r.shape)} vs the policy's {tuple(p.shape)}" if r.shape != p.shape else \
                f"dtype {r.dtype} (quantized?)"
            raise ConfigError(f"sync_ref_model: reference parameter {name!r} has {what}; the reference must be the "
                              "policy's architecture in a floating-point dtype to be mixed with it.")
        pairs.append((name, r, p))
    return pairs


@torch.no_grad()
def mix_into_reference(pairs, alpha: float) -> None:
    """ref <- alpha * policy + (1 - alpha) * ref for every (name, ref, policy), computed in float32 (or the wider
    dtype of the two) and rounded once into the reference's dtype; alpha == 1 copies the policy."""
    for _, ref, weight in pairs:
        policy = _read(weight)
        if alpha == 1:
            ref.copy_(policy)
            continue
        dtype = torch.promote_types(torch.promote_types(ref.dtype, policy.dtype), torch.float32)
        ref.copy_(policy.to(dtype) * alpha + ref.to(dtype) * (1 - alpha))


class ReferenceSync:
    """A transformers TrainerCallback in shape (TrainingRun.emit calls on_step_end(args, state, control) after every
    optimizer step, as TRL's SyncRefModelCallback is called): mixes the policy into the reference after every
    `every`-th step. `say` prints the first sync's note (the main process's print, or nothing)."""

    def __init__(self, policy: nn.Module, ref: nn.Module, alpha: float, every: int, say=None):
        self.ref, self.alpha, self.every, self.say = ref, float(alpha), int(every), say
        self.pairs = reference_pairs(policy, ref)
        self.syncs, self.last_step = 0, None  # in this process's run (a resumed run counts from its start)

    def on_step_end(self, args, state, control, **kwargs) -> None:
        step = state.global_step
        if step % self.every:
            return
        mix_into_reference(self.pairs, self.alpha)
        self.syncs, self.last_step = self.syncs + 1, step
        if self.syncs == 1 and self.say is not None:
            self.say(f"preflab: step {step}: TR-DPO reference sync: reference <- {self.alpha:g} * policy + "
                     f"{1 - self.alpha:g} * reference (after every {self.every} steps; summary.json's ref_model_sync "
                     "counts them).")

    def summary(self) -> dict:
        return {"alpha": self.alpha, "every": self.every, "syncs": self.syncs, "last_sync_step": self.last_step}


def install_ref_sync(trainer) -> ReferenceSync | None:
    """The trainer's ReferenceSync, first among its callbacks (a user's on_step_end sees the synced reference), or
    None without sync_ref_model. A LoRA policy's reference is the separate copy of its base that the trainer made in
    place of the adapters-off base (sync_reference_of). Refuses a reference that is not the policy's architecture."""
    cfg = trainer.cfg
    if not cfg.sync_ref_model:
        return None
    if trainer.ref is None:  # needs_reference always has one here (the Trainer refuses otherwise)
        raise ConfigError("sync_ref_model: true needs a separate reference model; none was given.")
    say = print if trainer.accelerator.is_main_process else None
    sync = ReferenceSync(trainer.policy, trainer.ref, cfg.ref_model_mixup_alpha, cfg.ref_model_sync_steps, say)
    trainer.callbacks.insert(0, sync)
    return sync


def sync_reference_of(cfg, policy: nn.Module, ref: nn.Module | None) -> nn.Module | None:
    """The reference a run trains against: `ref`; with sync_ref_model, a LoRA policy without a reference model (whose
    reference would be its base with the adapters off, which the sync cannot move) gets a frozen copy of its base
    in the reference's dtype (separate_base_reference), made before the trainer sets its reference up (device,
    attention, scorer, torch.compile) as any given reference."""
    if cfg.sync_ref_model and ref is None and is_lora(policy):
        return separate_base_reference(policy, reference_torch_dtype(cfg))
    return ref


def reference_torch_dtype(cfg) -> torch.dtype:
    from preflab.models.load import DTYPES, reference_dtype

    return DTYPES[reference_dtype(cfg)]


def reference_tensors(sync: ReferenceSync | None) -> dict:
    """{"reference.<name>": parameter} of a syncing run's reference (checkpoint_extras), {} without one."""
    return {} if sync is None else {PREFIX + name: ref for name, ref, _ in sync.pairs}


def present_in_checkpoint(extras: dict, path: Path, step: int, sync: ReferenceSync | None, note=None) -> dict:
    """`extras` (checkpoint_extras) less the reference's tensors when checkpoint `path` holds none of them: written
    by a run without sync_ref_model (a resume that turned it on needs allow_config_change), whose reference was the
    starting one all along, so the reference continues from the starting reference (said through `note`). A
    checkpoint with only some of them is left to load_checkpoint's error."""
    names = [k for k in extras if k.startswith(PREFIX)]
    if not names:
        return extras
    file = Path(path) / "extra.safetensors"
    stored: set = set()
    if file.is_file():
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            stored = set(f.keys())
    if any(n in stored for n in names):
        return extras
    if note is not None and sync is not None:
        nxt = (step // sync.every + 1) * sync.every
        note(f"preflab: note: {path} holds no synced reference (written without sync_ref_model): the reference "
             f"continues from the starting reference, the one that run trained against; the first sync is after "
             f"step {nxt}.")
    return {k: v for k, v in extras.items() if not k.startswith(PREFIX)}
