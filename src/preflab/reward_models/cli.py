"""`preflab eval --task reward` pieces: arguments and the run function, for the `preflab eval` command to call.

    from preflab.reward_models.cli import add_reward_eval_arguments, run_reward_eval
    add_reward_eval_arguments(parser)            # --model --data --data-config --batch-size --max-length --output
    parser.set_defaults(func=run_reward_eval)    # prints (and optionally writes) the JSON result

`register_reward_eval(subparsers)` adds a standalone `eval-reward` subcommand with the same options. Both read the
split `preflab eval --task reward` reads (evaluate_reward_split): --split, else 'test' where the data has one, else
'train', said in a note; the JSON result records `split` and `notes`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_reward_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="reward model directory saved by preflab or transformers")
    parser.add_argument("--data", required=True, help="pairwise rows (RewardBench format: prompt, chosen, "
                        "rejected, subset): a file, directory or hub dataset name")
    parser.add_argument("--data-config", metavar="NAME", default=None,
                        help="configuration of --data (TRL's dataset_config: load_dataset(DATA, NAME))")
    parser.add_argument("--data-columns", metavar="FIELD=COLUMN,...", default=None,
                        help="which column of --data each preflab field is read from (preflab field = your column, "
                             "e.g. prompt=question,chosen=good,rejected=bad); default: the dataset_columns of the "
                             "model's run (its config.yaml); 'none': the data's own names")
    parser.add_argument("--split", default=None, help="split of a hub dataset, DatasetDict or data folder (default: "
                        "'test' where the data has one, as `preflab eval --task reward`; else 'train'; the result's "
                        "split and notes say which)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--on-bad-row", choices=("error", "skip"), default="error")
    parser.add_argument("--output", default=None, help="also write the JSON result to this file")


def evaluate_reward_split(model, data, split: str | None, limit: int | None = None, batch_size: int = 8,
                          max_length: int | None = 1024, on_bad_row: str = "skip",
                          scored: list | None = None) -> tuple[dict, str, list[str]]:
    """(the eval's result, the split read, the notes) for every reward-model eval entry point (`preflab eval --task
    reward`, `eval-reward`): the split is the policy eval's (preflab.eval.run.open_eval_split: `split`, else 'test'
    where the data has one, else 'train', with its note), opened once; the notes are that one and what the metrics
    do not cover. A pairwise model (BT, GPM) gets evaluate_reward_model's result (max_length None: 1024); a DPA
    attribute model (reward_head: multi_objective) attribute_eval.evaluate_attribute_model's, its rows cut as its
    run cut them (max_length None: the run's, said in a note). scored: a list to receive the rows scored."""
    from preflab.eval.run import open_eval_split
    from preflab.eval.run_files import note_saved_run, refuse_other_task
    from preflab.reward_models.eval import evaluate_reward_model, load_reward_dir
    from preflab.reward_models.heads import reward_config

    refuse_other_task(model, "reward")  # a policy, VLM or diffusion run: named with its command, before any load
    note_saved_run(model)  # options this preflab does not know, another preflab version
    split, said, reader = open_eval_split(data, split, limit)
    loaded, tokenizer = load_reward_dir(model)
    notes = [said] if said else []
    if reward_config(loaded).get("head") == "multi_objective":
        result, more = _evaluate_attribute_split(model, loaded, tokenizer, reader, batch_size, max_length, on_bad_row,
                                                 scored)
        return result, split, notes + more
    max_length = 1024 if max_length is None else max_length
    result = evaluate_reward_model(loaded, reader, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                                   on_bad_row=on_bad_row, scored=scored)
    return result, split, notes + reward_eval_notes(result, max_length)


def _evaluate_attribute_split(path, model, tokenizer, reader, batch_size: int, max_length: int | None,
                              on_bad_row: str, scored: list | None) -> tuple[dict, list[str]]:
    """(attribute_eval.evaluate_attribute_model's result, its notes) for the DPA model at `path`: the rows cut with
    the run's max_length, max_prompt_length, max_completion_length and truncation_mode (its config.yaml;
    max_length given: that one), the response column its reward_head_params.response_field."""
    from preflab.eval.run import run_truncation
    from preflab.models.run_config import run_config
    from preflab.reward_models.attribute_eval import attribute_eval_notes, evaluate_attribute_model

    cuts, said = run_truncation(str(path), max_length, task="reward")
    cfg = run_config(str(path))
    params = dict(cfg.get("reward_head_params") or {}) if cfg.get("task") == "reward" else {}
    response_field = params.get("response_field", "response")
    result = evaluate_attribute_model(model, reader, tokenizer, batch_size=batch_size, **cuts,
                                      response_field=response_field, on_bad_row=on_bad_row, scored=scored)
    return result, ([said] if said else []) + attribute_eval_notes(result, cuts["max_length"])


def run_reward_eval(args) -> int:
    """`eval-reward`: evaluate_reward_model's result with the split read and the notes, printed as JSON (the notes
    also to stderr) and written to --output."""
    import sys

    from preflab.eval.run import eval_columns, eval_data

    data = eval_data(args.data, getattr(args, "data_config", None), eval_columns(args))
    result, split, notes = evaluate_reward_split(args.model, data, args.split, batch_size=args.batch_size,
                                                 max_length=args.max_length, on_bad_row=args.on_bad_row)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    text = json.dumps({**result, "split": split, "notes": notes}, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


def register_reward_eval(subparsers, name: str = "eval-reward") -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help="pairwise accuracy of a reward model, overall and per subset")
    add_reward_eval_arguments(parser)
    parser.set_defaults(func=run_reward_eval)
    return parser


def eval_task(args) -> int:
    """`preflab eval CHECKPOINT --data ... --task reward`: pairwise accuracy of a reward model
    (preflab.reward_models.eval), or a DPA attribute model's rating error, ranking and direction accuracy
    (preflab.reward_models.attribute_eval), written to eval.json like a policy eval. Routed here by preflab.cli, so that
    preflab.eval never imports preflab.reward_models (which builds on preflab.loops, which uses preflab.eval)."""
    from preflab.eval.cli import format_summary, refuse_unread_options
    from preflab.models.run_config import run_config
    from preflab.eval.run import (TEXT_PAIRS, data_fields, eval_columns, eval_data, eval_json_path,
                                  overlap_with_training,
                                  training_data_note, write_json)
    from preflab.reward_models.attribute_eval import (attribute_overlap_rule, attribute_training_rows,
                                                      per_direction_lines, per_direction_metrics)
    from preflab.reward_models.data import reward_training_rows

    refuse_unread_options(args, "reward")  # --max-length not given: 1024 for BT / GPM, a DPA model's run's
    # the split the policy eval reads: --split, else 'test' where the data has one, else 'train' (said in a note)
    scored: list = []
    data = eval_data(args.data, getattr(args, "data_config", None), eval_columns(args))
    batch_size, batch_said = run_eval_batch(args.checkpoint,
                                            args.batch_size if getattr(args, "batch_size_given", False) else None)
    result, split, notes = evaluate_reward_split(args.checkpoint, data, args.split, args.limit,
                                                 batch_size=batch_size, max_length=args.max_length,
                                                 scored=scored)
    notes += [batch_said] if batch_said and "min_reward" in result else []  # BT's batch extrema only
    metrics = {f"reward_model/{k}": v for k, v in result.items()
               if isinstance(v, (int, float)) and k not in ("num_pairs", "num_rated_rows", "context_not_shown",
                                                            "max_length", "margin_missing")}
    for field in ("subset", "context"):  # per-group accuracies on the terminal and in the report, not only the JSON
        for name, group in result.get(f"per_{field}", {}).items():
            metrics[f"reward_model/{field}/{name}/accuracy"] = group["accuracy"]
    # a DPA model's per-direction accuracies: in the report's table by name, on the terminal on one line
    directions = per_direction_metrics(result.get("per_direction", {}))
    metrics.update({f"reward_model/{k}": v for k, v in directions.items()})
    cfg = run_config(args.checkpoint)
    trained_on = training_data_note(data, cfg, split)
    if trained_on:  # the accuracy is then not held-out, as the policy, VLM and diffusion evals say
        notes.append(trained_on)
    # the scored pairs against the run's training pairs: same prompt; same prompt, chosen and rejected
    if result.get("head") == "multi_objective":  # a DPA model's rows: its rated rows' (prompt, response)
        training, rule = attribute_training_rows(cfg), attribute_overlap_rule()
    else:
        training, rule = reward_training_rows(cfg), TEXT_PAIRS
    overlap, said, why = overlap_with_training(scored, training, rule, trained_on is not None)
    notes += [said] if said else []
    rated = {"num_rated_rows": result["num_rated_rows"]} if "num_rated_rows" in result else {}
    out = {"task": "reward", "checkpoint": str(args.checkpoint), **data_fields(data), "split": split,
           "num_pairs": result.get("num_pairs"), **rated, "metrics": metrics, "reward_eval": result,
           **({"overlap_with_training": overlap} if overlap is not None else {}),
           "notes": notes, "missing": {"overlap_with_training": why} if why else {}}
    path = write_json(eval_json_path(args.checkpoint, args.out), out)
    per_line = {k: v for k, v in metrics.items() if k[len("reward_model/"):] not in directions}
    print(format_summary({**out, "metrics": per_line, "path": str(path)},
                         more=tuple(per_direction_lines(result.get("per_direction", {})))))
    return 0


DEFAULT_EVAL_BATCH = 8  # pairs per forward pass for a model saved without a run's config.yaml


def run_eval_batch(checkpoint, given: int | None) -> tuple[int, str | None]:
    """(pairs per eval batch, a note or None) for `preflab eval RUN --task reward`: `given` (--batch-size) when set,
    else the run's own eval batch, per_device_eval_batch_size x its processes (summary.json's
    environment.world_size beside its config.yaml; 1 when not recorded), so that min_reward / max_reward, TRL's
    mean over eval batches of each batch's min / max (preflab.reward_models.eval.batch_extrema), are the run's final
    eval_min_reward / eval_max_reward on the same pairs. Before, the default was 8 pairs whatever the run used, so a
    run with per_device_eval_batch_size: 16 printed other values than its own eval (the other metrics do not
    depend on the batch). A model without a run config: 8."""
    from preflab.models.run_config import run_config, run_config_file

    if given is not None:
        return given, None
    cfg = run_config(checkpoint)
    if "per_device_eval_batch_size" not in cfg:
        return DEFAULT_EVAL_BATCH, None
    saved = run_config_file(checkpoint)  # None for a checkpoint moved out of its run (its trainer_state's config)
    try:
        processes = int(json.loads((saved.parent / "summary.json").read_text())["environment"]["world_size"])
    except (AttributeError, OSError, ValueError, KeyError, TypeError):
        processes = 1
    batch = int(cfg["per_device_eval_batch_size"]) * processes
    return batch, (f"min_reward / max_reward average the minimum / maximum of each batch of {batch} pairs, the run's "
                   f"eval batch (per_device_eval_batch_size {cfg['per_device_eval_batch_size']} x {processes} "
                   f"process{'es' if processes > 1 else ''}), as its eval_min_reward / eval_max_reward; "
                   f"--batch-size sets another")


def reward_eval_notes(result: dict, max_length) -> list[str]:
    """Terminal notes for what the accuracy does not cover: rows skipped (by reason), pairs longer than max_length
    (dropped), pairs cut."""
    from preflab.reward_models.data import LONGER_THAN_MAX_LENGTH, dropped_note

    notes = []
    if result.get("skipped"):
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(result["skipped"].items()))
        notes.append(f"{sum(result['skipped'].values())} rows skipped and not scored ({reasons}); the accuracy is "
                     f"over the {result.get('num_pairs')} pairs left")
    used = result.get("max_length", max_length)
    capped = f" (--max-length {max_length} capped to the model's positions)" if used != max_length else ""
    dropped = dropped_note(result.get("skipped", {}).get(LONGER_THAN_MAX_LENGTH, 0), f"{used}{capped}",
                           option="--max-length")
    if dropped:
        notes.append(dropped.rstrip("."))
    cut = result.get("truncated", {})
    if cut.get("prompt") or cut.get("response"):
        notes.append(f"max_length={used}{capped} cut {cut.get('prompt', 0)} prompts and {cut.get('response', 0)} "
                     "pairs' responses (a cut response is scored at its cut, not its end); raise --max-length")
    from preflab.reward_models.data import missing_margins_note

    missing = missing_margins_note(result.get("margin_missing", 0), "--data")
    if missing:
        notes.append(missing.rstrip("."))
    if result.get("context_not_shown"):
        notes.append(f"{result['context_not_shown']} rows carry a `context` this model was not trained with (no "
                     "context template in its config): it scored the prompt alone, so per_context and "
                     "reversal_accuracy compare context-blind scores")
    return notes


def train_task(args) -> int:
    """`preflab train CONFIG` with `task: reward`: train a reward model (routed here by preflab.cli)."""
    from preflab.config import preflight
    from preflab.loops.cli import config_from_args, print_summary, quiet_third_party_warnings
    from preflab.reward_models.train import train_reward

    quiet_third_party_warnings()
    cfg = config_from_args(args)
    preflight(cfg)
    return print_summary(cfg, train_reward(cfg))
