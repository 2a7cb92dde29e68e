"""The optimizer and learning-rate schedule of every trainer: the optimizer `optim` names (AdamW with TRL's option
names, transformers' Adafactor, torch SGD / Adagrad / RMSprop, bitsandbytes' 8-bit / paged ones;
preflab.optimizer_options), transformers' schedules (linear warmup from 0, then linear / cosine decay or
constant_with_warmup; constant without warmup; and get_scheduler's cosine_with_restarts, polynomial, inverse_sqrt,
cosine_with_min_lr, cosine_warmup_with_min_lr, warmup_stable_decay with lr_scheduler_kwargs; reduce_lr_on_plateau,
stepped by the eval metric: EvalPlateau), and the schedule re-applied after a resume."""
from __future__ import annotations

import math
import re

import torch

from preflab.lr_schedule_options import PLATEAU, schedule_kwargs


class EvalPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """lr_scheduler_type reduce_lr_on_plateau, as transformers' Trainer runs torch's ReduceLROnPlateau: the per-step
    scheduler.step() of the optimizer step (preflab.step) leaves the rate alone; after each evaluation during training
    step_on_evaluation passes the eval metric (metric_for_best_model), and after `patience` evaluations in a row that
    do not improve on the best by `threshold` (rel: best * (1 - threshold) for mode min) the next one sets
    lr <- max(lr * factor, min_lr) (then `cooldown` evaluations without counting). No warmup (config refuses one)."""

    def step(self, metrics=None, epoch=None) -> None:  # noqa: D102 - see the class
        if metrics is not None:
            super().step(metrics)


def step_on_evaluation(scheduler, metrics: dict, key: str | None) -> None:
    """After an evaluation during training: a reduce_lr_on_plateau scheduler steps with metrics[key] (key: the
    eval_-prefixed metric_for_best_model, whose presence preflab.loops.best_model.BestModel.update has checked in
    metrics that are not empty); other schedules ignore evaluations."""
    inner = getattr(scheduler, "scheduler", scheduler)
    if not isinstance(inner, EvalPlateau):
        return
    if not metrics or key not in metrics:  # an eval set given in code that evaluates nothing (no_eval_set_for_plateau)
        from preflab.data.eval_set import no_eval_set_for_plateau

        raise no_eval_set_for_plateau(f"an evaluation gave no {key or 'eval'} metric")
    inner.step(float(metrics[key]))


def make_scheduler(optimizer, kind: str, total: int, warmup: int, kwargs: dict | None = None):
    """LambdaLR of factor(step), step 0 the first optimizer step's: transformers' get_scheduler factor of the same
    name (transformer_factor), so every optimizer step's rate equals transformers' (warmup from 0: the first step
    at rate 0; constant without warmup, as get_scheduler builds it). reduce_lr_on_plateau: EvalPlateau."""
    kw = schedule_kwargs(kind, kwargs)
    if kind == PLATEAU:
        return EvalPlateau(optimizer, **kw)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, transformer_factor(
        kind, total, warmup, kw, optimizer.defaults["lr"]))


def transformer_factor(kind: str, total: int, warmup: int, kw: dict, base_lr: float):
    """factor(step) of transformers' get_scheduler(kind, num_warmup_steps=warmup, num_training_steps=total,
    scheduler_specific_kwargs=kw) (transformers 5 optimization.py), warmup step / warmup from 0 (except
    cosine_warmup_with_min_lr), p = (step - warmup) / (total - warmup):
    - linear, cosine, constant_with_warmup (get_linear / get_cosine / get_constant_schedule_with_warmup): then
      linear max(0, (total - step) / (total - warmup)), cosine max(0, 0.5 (1 + cos(2 pi num_cycles p))) (not
      clamped: past `total` the wave rises, as transformers'), or 1;
    - constant: 1 at every step (get_scheduler passes it no warmup; the config refuses one:
      lr_schedule_options.constant_warmup_conflicts);
    - cosine_with_restarts: 0.5 (1 + cos(pi ((num_cycles p) mod 1))), 0 from p >= 1 (hard restarts);
    - polynomial: ((lr0 - lr_end) (1 - p)^power + lr_end) / lr0, lr_end / lr0 after total (lr0 = learning_rate);
    - inverse_sqrt: 1 / sqrt((step + timescale - warmup) / timescale), timescale = warmup (or 10000 without);
    - cosine_with_min_lr: c + (1 - c) 0.5 (1 + cos(2 pi num_cycles p)), c = min_lr_rate or min_lr / lr0;
    - cosine_warmup_with_min_lr: the same with p counted from step + 1, warmup (step + 1) / warmup (or
      warmup_lr_rate + (1 - warmup_lr_rate) step / (warmup - 1));
    - warmup_stable_decay: warmup of warmup_type from min_lr_ratio, 1 for num_stable_steps (default total - warmup
      - num_decay_steps), decay of decay_type to min_lr_ratio over num_decay_steps, then min_lr_ratio."""
    def ramp(step: int) -> float:
        return step / max(1, warmup)

    def decayed(step: int) -> float:
        return (step - warmup) / max(1, total - warmup)

    if kind in ("linear", "cosine", "constant_with_warmup"):
        def factor(step):
            if step < warmup:
                return ramp(step)
            if kind == "linear":
                return max(0.0, (total - step) / max(1, total - warmup))
            if kind == "cosine":
                return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(kw["num_cycles"]) * 2.0 * decayed(step))))
            return 1.0
    elif kind == "constant":
        def factor(step):
            return 1.0
    elif kind == "cosine_with_restarts":
        def factor(step):
            if step < warmup:
                return ramp(step)
            progress = decayed(step)
            return 0.0 if progress >= 1.0 else max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((kw["num_cycles"] *
                                                                                          progress) % 1.0))))
    elif kind == "polynomial":
        def factor(step):
            if step < warmup:
                return ramp(step)
            if step > total:
                return kw["lr_end"] / base_lr
            remaining = 1 - (step - warmup) / (total - warmup)
            return ((base_lr - kw["lr_end"]) * remaining ** kw["power"] + kw["lr_end"]) / base_lr
    elif kind == "inverse_sqrt":
        timescale = kw["timescale"] or warmup or 10_000

        def factor(step):
            return ramp(step) if step < warmup else 1.0 / math.sqrt((step + timescale - warmup) / timescale)
    elif kind in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        floor = kw["min_lr_rate"] if kw["min_lr"] is None else kw["min_lr"] / base_lr
        shifted = kind == "cosine_warmup_with_min_lr"

        def factor(step):
            if step < warmup and not shifted:
                return ramp(step)
            if step < warmup:
                if kw["warmup_lr_rate"] is None:
                    return (step + 1.0) / max(1.0, warmup)
                start = kw["warmup_lr_rate"]
                return start + (1.0 - start) * step / max(1, warmup - 1)
            progress = (step - warmup + (1.0 if shifted else 0.0)) / max(1, total - warmup)
            wave = 0.5 * (1.0 + math.cos(math.pi * kw["num_cycles"] * 2.0 * progress))
            return max(0, wave * (1 - floor) + floor)
    elif kind == "warmup_stable_decay":
        factor = _wsd_factor(total, warmup, kw)
    else:
        raise ValueError(f"no schedule {kind!r}")  # the config check refuses it first
    return factor


def _shape(kind: str, progress: float, rising: bool, num_cycles: float) -> float:
    """warmup_stable_decay's warmup (rising) / decay shapes at progress in [0, 1]."""
    if kind == "linear":
        return progress if rising else 1.0 - progress
    if kind == "cosine":
        return (0.5 * (1.0 - math.cos(math.pi * progress)) if rising
                else 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))
    return 1.0 - math.sqrt(1.0 - progress) if rising else 1.0 - math.sqrt(progress)  # 1-sqrt


def _wsd_factor(total: int, warmup: int, kw: dict):
    """warmup_stable_decay (transformers' get_wsd_schedule): each phase's shape scaled to [min_lr_ratio, 1]."""
    low, decay = kw["min_lr_ratio"], kw["num_decay_steps"]
    stable = kw["num_stable_steps"] if kw["num_stable_steps"] is not None else total - warmup - decay

    def factor(step):
        if step < warmup:
            value = _shape(kw["warmup_type"], step / max(1, warmup), True, kw["num_cycles"])
            return max(0.0, value * (1.0 - low) + low)
        if step < warmup + stable:
            return 1.0
        if step < warmup + stable + decay:
            value = _shape(kw["decay_type"], (step - warmup - stable) / max(1, decay), False, kw["num_cycles"])
            return max(0.0, value * (1.0 - low) + low)
        return low

    return factor


def follow_schedule(scheduler) -> tuple[float, float] | None:
    """Set every param group's learning rate to the schedule's value at the scheduler's step (LambdaLR: base_lr x
    factor(last_epoch), the value its own step() sets). After a resume this is the rate the checkpoint holds, unless
    the schedule's length changed (max_steps / num_train_epochs): the optimizer state then holds the old schedule's
    rate, which the first resumed step would use. Returns (old, new) rate of the first group when they differ."""
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler wraps the LambdaLR
    factors = getattr(inner, "lr_lambdas", None)
    if not factors:
        return None
    groups = inner.optimizer.param_groups
    old = groups[0]["lr"]
    for group, base_lr, factor in zip(groups, inner.base_lrs, factors):
        group["lr"] = base_lr * factor(inner.last_epoch)
    inner._last_lr = [group["lr"] for group in groups]
    return None if groups[0]["lr"] == old else (old, groups[0]["lr"])


NO_DECAY_NAME_PATTERNS = tuple(re.compile(p) for p in (
    r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"))
"""transformers 5 Trainer.get_decay_parameter_names's name patterns, searched in the lower-cased parameter name."""


def decays_weight(model: torch.nn.Module, name: str) -> bool:
    """Whether transformers' Trainer.create_optimizer puts parameter `name` of `model` in its weight-decay group
    (Trainer.get_decay_parameter_names through trainer_pt_utils.get_parameter_names): not when the lower-cased name
    contains "bias", "layernorm" or "rmsnorm", has a dotted component "norm" or one ending in "_norm" (Llama's
    input_layernorm / model.norm, Qwen3's q_norm), and not when any module on its path is a torch.nn.LayerNorm
    (transformers' ALL_LAYERNORM_LAYERS); every other parameter decays. (Searching the whole name equals
    get_parameter_names' search at every level: a pattern anchored at ^ there starts after a '.' of the name.)"""
    if any(pattern.search(name.lower()) for pattern in NO_DECAY_NAME_PATTERNS):
        return False
    module = model
    for part in name.split(".")[:-1]:
        module = module.get_submodule(part)
        if isinstance(module, torch.nn.LayerNorm):
            return False
    return True


def weight_decay_groups(params: list, owners, weight_decay: float) -> tuple[list[dict], list[bool]]:
    """transformers' two parameter groups over `params` (each a parameter of one of the modules `owners`, named by
    the first owner that holds it, as named_parameters names a shared tensor once): [{params that decays_weight,
    weight_decay}, {the others (biases, norm weights), weight_decay 0.0}], each in the order of `params`, as
    Trainer.create_optimizer builds them, except that an empty group is left out (a LoRA model has no bias or norm
    among its trainable parameters): DeepSpeed's engine drops empty groups, which would leave the schedule one rate
    too many, and the one group left is the layout of a preflab before these groups. owners None: `params` has no
    names, and every parameter decays (a bare parameter list, as get_parameter_names leaves a module's own
    parameters without bias / norm names). Returns (the groups, per group: whether it is the weight-decay one)."""
    params = list(params)
    if owners is None:
        decayed = {id(p) for p in params}
    else:
        named, decayed = set(), set()
        for owner in owners:
            for name, p in owner.named_parameters():
                if id(p) not in named:
                    named.add(id(p))
                    if decays_weight(owner, name):
                        decayed.add(id(p))
        unnamed = sum(id(p) not in named for p in params)
        if unnamed:
            raise ValueError(f"{unnamed} of the {len(params)} parameters to optimize belong to none of the modules "
                             "given to name them; their weight-decay group is unknown")
    groups = [{"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
              {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]
    kept = [group for group in groups if group["params"]] or groups[:1]
    return kept, [group is groups[0] for group in kept]


def single_group_order(groups: list[dict], params: list) -> list[int]:
    """For each parameter in the groups' order (the optimizer state_dict's indices), its position in `params`: the
    index an earlier preflab, which put `params` in one group, gave its state (preflab.checkpoint.regroup_state)."""
    position = {id(p): i for i, p in enumerate(params)}
    return [position[id(p)] for group in groups for p in group["params"]]


def make_optimizer(cfg, params: list, total_steps: int, owners=None):
    """The optimizer cfg.optim names over transformers' two weight-decay groups of `params` (build_optimizer;
    owners: the modules that name them) and its schedule."""
    optimizer = build_optimizer(cfg, params, owners)
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)  # transformers: ceil
    return optimizer, make_scheduler(optimizer, cfg.lr_scheduler_type, total_steps, warmup,
                                     getattr(cfg, "lr_scheduler_kwargs", None))


def build_optimizer(cfg, params: list, owners=None) -> torch.optim.Optimizer:
    """cfg.optim over transformers' two parameter groups of `params` (weight_decay_groups: cfg.weight_decay on all
    but biases and norm weights, 0.0 on those; owners: the modules naming `params`), with the classes and keyword
    arguments transformers' Trainer.get_optimizer_cls_and_kwargs gives (preflab.optimizer_options):
    - adamw_torch_fused (default), adamw_hf: torch AdamW(lr, betas=(adam_beta1, adam_beta2), eps=adam_epsilon), the
      fused kernel where the tensors allow (transformers asks for fused=True);
    - adamw_torch: the same AdamW without fused (torch's default kernel, as transformers builds it);
    - adafactor: transformers.optimization.Adafactor(lr, scale_parameter=False, relative_step=False): the step is
      learning_rate times the clipped update g / sqrt(v_hat), v_hat factored into row and column means for matrices
      (Shazeer & Stern 2018, arXiv:1804.04235), decay 1 - t^-0.8, no first moment;
    - sgd, adagrad, rmsprop: torch's, with the optim_args keys each reads;
    - bitsandbytes' adamw_8bit, paged_adamw_8bit, lion_8bit, rmsprop_bnb, ademamix, ... (preflab.loops.bnb_optimizers):
      transformers' classes and kwargs, nn.Embedding weights in 32-bit state for the 8-bit ones.
    weight_decay sits on each parameter group, as Trainer.create_optimizer puts it (it overrides the class default).
    The optimizer carries preflab_single_group_order (single_group_order) and preflab_group_decays (per group:
    the weight-decay group or not) for a resume from a one-group checkpoint (preflab.checkpoint.regroup_state)."""
    from preflab.optimizer_options import ADAMW, BNB_OPTIMIZERS, optim_arg_values

    params = list(params)
    optim = getattr(cfg, "optim", "adamw_torch_fused")
    lr = cfg.learning_rate
    groups, decays = weight_decay_groups(params, owners, cfg.weight_decay)
    if optim in ADAMW:
        fused = optim != "adamw_torch" and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                               for p in params)
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
                                      fused=fused or None)
    elif optim == "adafactor":
        from transformers.optimization import Adafactor

        optimizer = Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False)
    elif optim in BNB_OPTIMIZERS:
        from preflab.loops.bnb_optimizers import build_bnb_optimizer

        optimizer = build_bnb_optimizer(cfg, optim, groups, params, owners)
    else:
        kwargs = optim_arg_values(optim, getattr(cfg, "optim_args", None))
        classes = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop}
        optimizer = classes[optim](groups, lr=lr, **kwargs)
    optimizer.preflab_single_group_order = single_group_order(groups, params)
    optimizer.preflab_group_decays = decays
    return optimizer
