"""GRPO from Python: a thin wrapper over the online run (preflab.online.run.OnlineRun, trainer grpo family).

    from preflab.loops.grpo import grpo_train
    summary = grpo_train(policy, tokenizer, prompts, reward_funcs=[true_reward_fn], num_generations=8,
                         max_steps=20, learning_rate=1e-5, loss_type="dapo", output_dir="runs/grpo")

The same run as `preflab train` with task: online and trainer: grpo | bnpo | dapo | dr_grpo | gspo (README,
"Online, self-play and Nash runs"). Options keep TRL's names; prompts_per_step x steps_per_generation prompts make
one generation round (prompts_per_step -> per_device_train_batch_size, groups per micro-batch
-> gradient accumulation), `loss_type` names the recipe. Any other key is a TrainConfig option.
"""
from __future__ import annotations

import tempfile
from typing import Any, Sequence


def grpo_train(policy, tokenizer, prompts: Sequence[Any], reward_funcs, ref=None,
               reward_weights: Sequence[float] | None = None, **options) -> dict:
    """Run GRPO-family training as an online run; returns its summary dict."""
    from preflab.loops.online import run_online

    opts = dict(options)
    per_step = opts.pop("prompts_per_step", 4)
    per_micro = opts.pop("groups_per_micro_batch", per_step)
    if per_step % per_micro:
        per_micro = per_step
    spg = opts.get("steps_per_generation", 1)
    raw = {"task": "online", "online_task": "dataset", "trainer": opts.pop("loss_type", "dapo"),
           "per_device_train_batch_size": per_micro, "gradient_accumulation_steps": per_step // per_micro,
           "prompts_per_generation": per_step * spg, "max_steps": opts.pop("max_steps", 10),
           "learning_rate": 1e-6, "lr_scheduler_type": "constant", "beta": 0.0, "num_generations": 8,
           "max_completion_length": 256, "seed": 0, "logging_steps": 1, "disable_tqdm": True, **opts}
    if raw.get("output_dir") is None:
        raw["output_dir"] = tempfile.mkdtemp(prefix="preflab-grpo-")
    return run_online(policy, tokenizer, prompts, reward_funcs, ref, reward_weights, raw)
