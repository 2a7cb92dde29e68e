"""Synthetic run directories in the exact format the Trainer writes (shared by the report tests)."""
import json
import math

import yaml

ENVIRONMENT = {"preflab": "0.1.0", "torch": "2.13.0+cpu", "transformers": "5.24.0", "python": "3.11.7",
               "platform": "Linux", "cuda": False, "cpu_count": 2}


def make_run(path, loss_type="sigmoid", steps=12, eval_every=4, slope=0.02, margins=False, eval_json=False,
             config_extra=None):
    """metrics.jsonl (train rows every step, eval rows every `eval_every` steps plus the final eval repeated at
    the last step, as the Trainer does), summary.json, config.yaml; optionally pair_margins.jsonl and eval.json."""
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    for step in range(1, steps + 1):
        rows.append({"step": step, "epoch": step / steps, "learning_rate": 1e-3 * (1 - step / steps),
                     "num_tokens": 100 * step, "loss": math.log(2) - slope * step, "grad_norm": 0.5,
                     "logps/chosen": -20 - 0.1 * step, "logps/rejected": -21 - 0.5 * step,
                     "rewards/accuracies": min(1.0, 0.5 + 0.04 * step), "rewards/chosen": -0.01 * step,
                     "rewards/rejected": -0.05 * step, "rewards/margins": 0.04 * step,
                     "tokens_per_second": 1000.0})
        if step % eval_every == 0 or step == steps:
            ev = {"step": step, "eval_loss": math.log(2) - slope * step / 2, "eval_rewards/margins": 0.03 * step,
                  "eval_rewards/accuracies": 0.6, "eval_logps/chosen": -20.0, "eval_logps/rejected": -22.0,
                  "eval_ranking_accuracy": 0.4, "eval_ranking_accuracy_norm": 0.5,
                  "eval_logps_drift/chosen": -0.1 * step, "eval_logps_drift/rejected": -0.4 * step}
            rows.append(ev)
            if step == steps:
                rows.append(dict(ev, eval_ranking_accuracy=0.45))          # the final eval, logged again
    rows.append({"step": steps, "nonfinite": True, "row_ids": [1, 2]})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"task": "dpo", "model_name_or_path": "builtin:tiny-llama", "loss_type": loss_type, "beta": 0.1,
              "learning_rate": 1e-3, **(config_extra or {})}
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summary = {"global_step": steps, "final_metrics": {k: v for k, v in rows[-2].items() if k != "step"},
               "runtime_s": 3.5, "environment": ENVIRONMENT}
    (path / "summary.json").write_text(json.dumps(summary))
    if margins:
        (path / "pair_margins.jsonl").write_text(json.dumps({"step": 0, "margins": [0.0] * 8}) + "\n"
                                                 + json.dumps({"step": steps, "margins": [0.1 * i for i in range(8)]})
                                                 + "\n")
    if eval_json:
        per_pair = {"policy_chosen": [-10.0, -12.0, -9.0], "policy_rejected": [-12.0, -11.0, -9.5],
                    "ref_chosen": [-11.0, -11.0, -10.0], "ref_rejected": [-11.5, -11.0, -9.0],
                    "chosen_length": [5.0, 3.0, 4.0], "rejected_length": [8.0, 3.0, 4.0]}
        result = {"num_pairs": 3, "beta": 0.1, "metrics": {"ranking_accuracy": 2 / 3, "idealized_ranking_accuracy":
                                                           0.987654, "win_rate": 0.625},
                  "win_rate": {"win_rate": 0.625, "ci_low": 0.3, "ci_high": 0.86, "wins": 2, "ties": 1, "losses": 1,
                               "n": 4, "confidence": 0.95},
                  "notes": ["no 'alpha' column: assumed unanimous"], "missing": {"dispersion": "no extra_responses"},
                  "per_pair": per_pair,
                  "generation_examples": [{"prompt": "say <b>hi</b>", "policy": "HI", "reference": "hi"}]}
        (path / "eval.json").write_text(json.dumps(result))
    return path
