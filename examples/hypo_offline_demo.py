"""HyPO with the paper's data split vs plain DPO on the same offline pairs, on the built-in "loud echo" task (CPU).

    python examples/hypo_offline_demo.py [output_dir] [seed]

Starting policy: the demo's SFT model (`builtin:demo-sft`, built once in about 30 s and cached). Offline pairs: the
demo's 600 preference pairs (10% held out for eval). Each run: 60 steps of 16 pairs, beta 0.5; HyPO adds
lam * KL(pi_theta || pi_ref) on k = 4 fresh samples of the policy per pair's prompt (preflab.online.hypo_offline).
lam = 0 is plain DPO (bit for bit). Printed per lam: the greedy true reward on 64 unseen prompts before and after,
and the KL estimate on fresh samples of the eval prompts at the end.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from preflab.config import config_from_dict
from preflab.demo.run import _write_jsonl, heldout_reward
from preflab.demo.sft_model import demo_sft_model
from preflab.demo.task import make_splits
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_tokenizer
from preflab.online.hypo_offline import HyPOTrainer


def main(out: Path, seed: int = 0) -> list[dict]:
    torch.set_num_threads(1)
    _, pairs, heldout = make_splits(0)
    data = _write_jsonl(out / "pairs.jsonl", pairs)
    tokenizer = tiny_tokenizer("char")
    common = dict(model_name_or_path="builtin:tiny-llama", dataset_name=str(data), eval_fraction=0.1,
                  loss_type="hypo", beta=0.5, hypo_online_samples=4, max_completion_length=16, learning_rate=3e-4,
                  per_device_train_batch_size=16, max_steps=60, warmup_steps=5, lr_scheduler_type="cosine",
                  max_length=64, logging_steps=10, disable_tqdm=True, use_cpu=True)
    start = demo_sft_model(config_from_dict({**common, "seed": 0, "output_dir": str(out / "sft")}), tokenizer)
    state = {k: v.clone() for k, v in start.state_dict().items()}
    before, _ = heldout_reward(start, tokenizer, heldout)
    rows = []
    for lam in (0.0, 0.05, 0.5):
        start.load_state_dict(state)
        cfg = config_from_dict({**common, "lam": lam, "seed": seed, "output_dir": str(out / f"lam-{lam}")})
        run = HyPOTrainer(cfg, policy=start, ref=frozen_copy(start), tokenizer=tokenizer)
        final = run.train()["final_metrics"]
        after, _ = heldout_reward(run.policy, tokenizer, heldout)
        rows.append({"lam": lam, "true_reward_before": round(before, 3), "true_reward_after": round(after, 3),
                     "eval_kl_online": round(final["eval_kl/online"], 3)})
        print(json.dumps(rows[-1]))
    return rows


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/hypo_offline_demo"),
         int(sys.argv[2]) if len(sys.argv) > 2 else 0)
