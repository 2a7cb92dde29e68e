"""The optimizer and learning-rate schedule of every trainer: AdamW with TRL's option names, transformers'
schedules (linear warmup, then linear / cosine decay or constant), and the schedule re-applied after a resume."""
from __future__ import annotations

import math

import torch


def make_scheduler(optimizer, kind: str, total: int, warmup: int):
    """LambdaLR: linear warmup over `warmup` steps, then linear decay to 0, cosine to 0, or constant."""
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


def make_optimizer(cfg, params: list, total_steps: int):
    """AdamW with TRL's option names (the fused kernel where the tensors allow, transformers' default
    "adamw_torch_fused"), and its schedule."""
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay, fused=fused or None)
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)  # transformers: ceil
    return optimizer, make_scheduler(optimizer, cfg.lr_scheduler_type, total_steps, warmup)
