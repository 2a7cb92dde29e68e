"""`preflab eval --task reward` pieces: arguments and the run function, for the `preflab eval` command to call.

    from preflab.reward_models.cli import add_reward_eval_arguments, run_reward_eval
    add_reward_eval_arguments(parser)            # --model --data --batch-size --max-length --output
    parser.set_defaults(func=run_reward_eval)    # prints (and optionally writes) the JSON result

`register_reward_eval(subparsers)` adds a standalone `eval-reward` subcommand with the same options.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_reward_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="reward model directory saved by preflab or transformers")
    parser.add_argument("--data", required=True, help="pairwise rows (RewardBench format: prompt, chosen, "
                        "rejected, subset): a file, directory or hub dataset name")
    parser.add_argument("--split", default="train", help="split of a hub dataset or directory")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--on-bad-row", choices=("error", "skip"), default="error")
    parser.add_argument("--output", default=None, help="also write the JSON result to this file")


def run_reward_eval(args) -> int:
    from preflab.data.rows import load_rows
    from preflab.reward_models.eval import evaluate_reward_model

    data = args.data
    if getattr(args, "split", "train") != "train":  # pass rows of the chosen split through as a list
        examples, _ = load_rows(data, split=args.split, kind="pairwise", on_bad_row=args.on_bad_row)
        data = [{"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected, **ex.extras} for ex in examples]
    result = evaluate_reward_model(args.model, data, batch_size=args.batch_size, max_length=args.max_length,
                                   on_bad_row=args.on_bad_row)
    text = json.dumps(result, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


def register_reward_eval(subparsers, name: str = "eval-reward") -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help="pairwise accuracy of a reward model, overall and per subset")
    add_reward_eval_arguments(parser)
    parser.set_defaults(func=run_reward_eval)
    return parser
