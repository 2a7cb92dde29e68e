"""Online preference loops on the built-in "loud echo" task, end to end on CPU (a minute or two on 2 cores).

    python examples/online_dpo_demo.py [output_dir]

1. SFT a tiny char-level Llama on the task (preflab.demo, stage 1): greedy answers are mostly lower case.
2. From that starting policy, three online methods, each judged by the task's true reward (a reward function in
   TRL's signature, cached by (prompt, completion)):
     - iterative DPO: 3 iterations, k = 4 samples per prompt, best-vs-worst pairs, reference refreshed to the
       previous iterate (refresh_reference_every=1)
     - RSO: the same loop with pairs from statistical rejection sampling (pi_ref exp(r / 0.5)) and the hinge-norm loss
     - GRPO: 10 steps, 8 prompts x 8 completions per step, dapo loss
3. Print the mean true reward of greedy answers on 64 unseen prompts before and after each.
Every run writes metrics.jsonl, summary.json and a safetensors model under output_dir/<method>.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from preflab.config import config_from_dict
from preflab.demo.run import SFT, heldout_reward
from preflab.demo.task import make_splits, true_reward
from preflab.online.api import grpo_train
from preflab.loops.offline import Trainer
from preflab.online.api import online_dpo
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer


def true_reward_fn(prompts, completions, **kwargs):
    """The task's true reward as a TRL-style reward function."""
    return [true_reward(p, c) for p, c in zip(prompts, completions)]


def sft_policy(out: Path, tokenizer):
    sft_rows, _, _ = make_splits(0)
    data = out / "sft.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in sft_rows))
    model = tiny_causal_lm(tokenizer, arch="llama", hidden_size=64, num_layers=2, num_heads=4, seed=0)
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "max_length": 64, "seed": 0,
                            "logging_steps": 50, "disable_tqdm": True, "use_cpu": True, **SFT,
                            "dataset_name": str(data), "output_dir": str(out / "sft")})
    Trainer(cfg, policy=model, ref=None, tokenizer=tokenizer).train()
    return model


def main(output_dir: str = "outputs/online_demo") -> dict:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = Path(output_dir)
    tokenizer = tiny_tokenizer("char")
    _, pair_rows, heldout = make_splits(0)
    prompts = [r["prompt"] for r in pair_rows[:64]]
    start = sft_policy(out, tokenizer)
    state = {k: v.clone() for k, v in start.state_dict().items()}
    before, _ = heldout_reward(start, tokenizer, heldout)
    print(f"after SFT: true reward of greedy answers on {len(heldout)} unseen prompts = {before:.3f}")

    def fresh():
        model = tiny_causal_lm(tokenizer, arch="llama", hidden_size=64, num_layers=2, num_heads=4, seed=0)
        model.load_state_dict(state)
        return model

    common = dict(num_iterations=3, num_generations=4, beta=0.5, learning_rate=3e-4, max_new_tokens=16,
                  temperature=1.0, per_device_train_batch_size=16, epochs_per_iteration=2)
    runs = {
        "iterative_dpo": lambda m: online_dpo(m, tokenizer, prompts, true_reward_fn, refresh_reference_every=1,
                                              output_dir=str(out / "iterative_dpo"), **common),
        "rso_hinge": lambda m: online_dpo(m, tokenizer, prompts, true_reward_fn, pair_builder="rso", rso_beta=0.5,
                                          rso_num_samples=4, loss_type="hinge", output_dir=str(out / "rso_hinge"),
                                          **common),
        "grpo": lambda m: grpo_train(m, tokenizer, pair_rows[:80], true_reward_fn, num_generations=8,
                                     prompts_per_step=8, max_steps=10, learning_rate=3e-4, max_completion_length=16,
                                     output_dir=str(out / "grpo")),
    }
    results = {"sft": before}
    for name, run in runs.items():
        model, started = fresh(), time.perf_counter()
        run(model)
        after, examples = heldout_reward(model, tokenizer, heldout)
        results[name] = after
        print(f"{name:14s} true reward {before:.3f} -> {after:.3f} in {time.perf_counter() - started:.1f}s; "
              f"e.g. {examples[0]['prompt']!r} -> {examples[0]['response']!r}")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(*sys.argv[1:])
