"""`preflab demo`: SFT a tiny model on the loud-echo task, build preference pairs, run DPO, compare true reward.

Everything is built in code (char tokenizer, 2-layer Llama, synthetic data), so it runs with no network and no
files. The data goes through the real path (jsonl -> rows -> tokens -> trainer) like a user's run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from statistics import mean

import torch

from preflab.config import config_from_dict
from preflab.demo.task import LOUD_FRACTION, make_splits, true_reward
from preflab.generate import generate_text
from preflab.loops.offline import Trainer
from preflab.loops.sft import SFTTrainer
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.runlog import write_summary

SFT = dict(task="sft", learning_rate=3e-3, per_device_train_batch_size=16, max_steps=300, warmup_steps=10,
           lr_scheduler_type="cosine")
DPO = dict(loss_type="sigmoid", beta=0.5, learning_rate=3e-4, per_device_train_batch_size=16, max_steps=60,
           warmup_steps=5, lr_scheduler_type="cosine", eval_steps=20)


# What the demo is for, at the top of its summary.json and report.html (a reader of the report alone sees why the
# numbers below it matter).
ABOUT = ("What this demo shows: preference optimization moves a model toward what the preference pairs reward, "
         "measured by a true reward known in code. The task, loud echo: a prompt lists a few words "
         "(\"echo: sun cat map\"); the true reward of an answer is the share of those words echoed in capitals "
         "(\"SUN CAT MAP\" 1, \"sun cat map\" 0). Stage 1 supervised-tunes a tiny model (2-layer Llama, "
         f"character tokenizer) on echoes written in capitals only {LOUD_FRACTION:.0%} of the time, so it mostly "
         "answers in lower case. Stage 2 runs DPO on pairs that prefer the capitalised echo, starting from (and "
         "referenced to) the SFT model. Stage 3 scores greedy answers to held-out prompts, never trained on, "
         "with the true reward: true_reward_before (after SFT) against true_reward_after (after DPO).")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def heldout_reward(model, tokenizer, prompts: list[str]) -> tuple[float, list[dict]]:
    ids = [[tokenizer.bos_token_id] + tokenizer(p + "\n", add_special_tokens=False).input_ids for p in prompts]
    outs = generate_text(model, tokenizer, ids, max_new_tokens=16)
    rewards = [true_reward(p, o) for p, o in zip(prompts, outs)]
    return mean(rewards), [{"prompt": p, "response": o, "true_reward": r} for p, o, r in zip(prompts, outs, rewards)]


def run_demo(output_dir: str = "outputs/demo", seed: int = 0, quiet: bool = False) -> dict:
    torch.set_num_threads(1)  # a tiny model runs faster on one thread, and OpenMP spinning on a busy core is costly
    out = Path(output_dir)
    started = time.perf_counter()
    sft_rows, pair_rows, heldout = make_splits(seed)
    sft_file = _write_jsonl(out / "data" / "sft.jsonl",  # TRL's prompt-completion SFT rows (task: sft)
                            [{"prompt": r["prompt"], "completion": r["chosen"]} for r in sft_rows])
    pair_file = _write_jsonl(out / "data" / "pairs.jsonl", pair_rows)
    tokenizer = tiny_tokenizer("char")
    model = tiny_causal_lm(tokenizer, arch="llama", hidden_size=64, num_layers=2, num_heads=4, seed=seed)
    common = dict(model_name_or_path="builtin:tiny-llama", max_length=64, seed=seed, logging_steps=5,
                  disable_tqdm=quiet, use_cpu=True)

    say = (lambda *a: None) if quiet else print
    say(f"preflab demo: stage 1/3, supervised tuning on the loud-echo task (capitals only {LOUD_FRACTION:.0%} of the "
        "time)")
    sft_cfg = config_from_dict({**common, **SFT, "dataset_name": str(sft_file), "output_dir": str(out / "sft")})
    SFTTrainer(sft_cfg, policy=model, ref=None, tokenizer=tokenizer).train()
    before, before_examples = heldout_reward(model, tokenizer, heldout)
    say(f"preflab demo: true reward on {len(heldout)} held-out prompts after SFT: {before:.3f}")

    say("preflab demo: stage 2/3, DPO on pairs that prefer capitals")
    # the reference is the SFT model (saved in sft/): recorded, so that `preflab eval dpo/` compares with it
    dpo_cfg = config_from_dict({**common, **DPO, "dataset_name": str(pair_file), "output_dir": str(out / "dpo"),
                                "eval_fraction": 0.1, "ref_model_name_or_path": str((out / "sft").resolve())})
    Trainer(dpo_cfg, policy=model, ref=frozen_copy(model), tokenizer=tokenizer).train()
    after, after_examples = heldout_reward(model, tokenizer, heldout)
    say(f"preflab demo: stage 3/3, true reward on held-out prompts after DPO: {after:.3f} (before {before:.3f})")

    summary = {"title": "preflab demo: SFT then DPO on the loud-echo task", "about": ABOUT, "task": "loud-echo",
               "true_reward_before": before, "true_reward_after": after,
               "improvement": after - before, "heldout_prompts": len(heldout), "seed": seed,
               "runtime_s": time.perf_counter() - started, "sft_dir": str(out / "sft"), "dpo_dir": str(out / "dpo"),
               "examples_before": before_examples[:8], "examples_after": after_examples[:8]}
    plot = plot_curves(out)
    if plot:
        summary["plot"] = str(plot)
    write_summary(out, summary)
    try:
        from preflab.report.html import write_report

        summary["report"] = str(write_report([out], out / "report.html"))
        write_summary(out, summary)
    except ImportError:
        pass
    return summary


def plot_curves(out: Path) -> Path | None:
    """training_curves.png: SFT loss, DPO loss, reward margins and accuracies over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rows(stage):
        path = out / stage / "metrics.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []

    sft, dpo = [r for r in rows("sft") if "loss" in r], [r for r in rows("dpo") if "loss" in r]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([r["step"] for r in sft], [r["loss"] for r in sft], color="tab:gray")
    axes[0].set(title="Stage 1: SFT loss (token NLL)", xlabel="step", ylabel="loss")
    axes[1].plot([r["step"] for r in dpo], [r["loss"] for r in dpo], label="train")
    ev = [r for r in rows("dpo") if "eval_loss" in r]
    axes[1].plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o--", label="held-out pairs")
    axes[1].set(title="Stage 2: DPO loss", xlabel="step", ylabel="loss")
    axes[1].legend()
    axes[2].plot([r["step"] for r in dpo], [r["rewards/margins"] for r in dpo], label="reward margin")
    axes[2].plot([r["step"] for r in dpo], [r["rewards/accuracies"] for r in dpo], label="reward accuracy")
    axes[2].set(title="Stage 2: implicit reward", xlabel="step")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "training_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
