"""`preflab train CONFIG.yaml [key=value ...]`: train with a YAML config plus overrides."""
from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    from preflab.config import describe_options

    p = sub.add_parser(
        "train", help="train a model with a YAML config and key=value overrides",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train with a YAML config plus key=value overrides (TRL's option names).\n"
                    "Example: preflab train examples/dpo.yaml model_name_or_path=Qwen/Qwen2.5-0.5B-Instruct "
                    "dataset_name=trl-lib/ultrafeedback_binarized beta=0.1\n"
                    "Several processes: accelerate launch --multi_gpu --num_processes 2 $(which preflab) train ...\n"
                    "Objective parameters (label_smoothing, gamma, ...) may be given as top-level keys.",
        epilog="options (key = default):\n" + describe_options(),
    )
    p.add_argument("config", nargs="?", help="YAML config file (optional if every option is given as key=value)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. beta=0.2 loss_type=ipo")
    p.set_defaults(func=run)


def run(args) -> int:
    from preflab.config import load_config

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides
    cfg = load_config(config, overrides)
    if cfg.task == "reward":
        from preflab.reward_models.train import train_reward

        summary = train_reward(cfg)
    elif cfg.task == "online":
        from preflab.online.run import OnlineRun

        summary = OnlineRun(cfg).train()
    else:
        from preflab.loops.offline import Trainer

        summary = Trainer(cfg).train()
    final = {k: v for k, v in summary.get("final_metrics", {}).items() if isinstance(v, (int, float))}
    print(json.dumps({"output_dir": cfg.output_dir, **final}, indent=1))
    return 0
