"""`preflab eval RUN --task distill --data ROWS`: a distillation run's own evaluation (preflab.loops.distill:
DistillTrainer.evaluate) on held-out rows: eval_loss (the generalized JSD to the teacher, token mean over the rows'
completion tokens, at the run's beta and temperature), eval_nll_loss, eval_mean_token_accuracy and eval_entropy of
the trained student (a final run directory, a checkpoint-N or LoRA adapters, loaded once, as every `preflab eval`
loads a policy: preflab.eval.loading.load_for_eval, in the dtype the run loaded its policy in), written to eval.json.
The rows are read, tokenized and truncated as the run read its own (task: sft's forms, its max_length and
completion_only_loss); the teacher is the run's teacher_model_name_or_path (with its teacher_model_init_kwargs,
loaded as the run loaded it: preflab.models.load.load_named_reference), or --reference. The dataset's completions
are scored (no sampling: lmbda and seq_kd are training-time), so the numbers equal the run's eval_* metrics on the
same rows. As every eval task it says when --data is the run's training data (eval.run.training_data_note) and
counts the evaluated rows the run trained on (eval.json overlap_with_training, by eval.run.SFT_ROWS: the same text /
prompt + completion / messages, or the same prompt), or why it could not (eval.json missing).
"""
from __future__ import annotations

import sys
import tempfile
from preflab.errors import ConfigError

# the run's options that concern training only, reset so the evaluation's config is valid and samples nothing
TRAINING_ONLY = {"lmbda": 0.0, "seq_kd": False, "max_completion_length": None, "top_p": 1.0, "top_k": 0,
                 "min_p": None, "repetition_penalty": 1.0, "resume_from_checkpoint": None, "eval_fraction": 0.0,
                 "eval_dataset_name": None, "streaming": False, "max_steps": 1, "use_peft": False,
                 "eval_steps": 0, "eval_on_start": False, "load_best_model_at_end": False,
                 "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1}  # the rows are scored in
# per_device_eval_batch_size batches: a file of fewer rows than the run's global batch is no training set here


def distill_run_config(checkpoint: str) -> dict:
    """The saved config of the distillation run at `checkpoint`, else a ConfigError naming what it is."""
    from preflab.models.run_config import run_config

    saved = run_config(checkpoint)
    if not saved:
        raise ConfigError(f"{checkpoint} has no saved run config (config.yaml): --task distill needs the run's "
                          "teacher and options; evaluate a directory written by `preflab train`.")
    if saved.get("task") != "sft" or not saved.get("teacher_model_name_or_path"):
        raise ConfigError(f"{checkpoint} is a task: {saved.get('task')} run without teacher_model_name_or_path; "
                          "--task distill evaluates distillation runs (task: sft with a teacher). Evaluate it with "
                          f"`preflab eval {checkpoint} --data ...`.")
    return saved


# the model_init_kwargs that shape the loaded model (not where its files are): passed on to the student's load
SHAPING_INIT_KWARGS = ("dtype", "torch_dtype", "attn_implementation")


def evaluate_distill_run(checkpoint: str, data, *, teacher: str | None = None, batch_size: int = 8,
                         split: str | None = None, limit: int | None = None) -> dict:
    """eval.json's content: the run's eval_* metrics of the student at `checkpoint` against its teacher (or
    `teacher`) on the rows of `data` (a name, or a ConfiguredSource from --data-config)."""
    from preflab.config import config_from_dict
    from preflab.data.columns import columns_of, unmapped
    from preflab.data.configured_source import ConfiguredSource
    from preflab.loops.distill import DistillTrainer

    saved = distill_run_config(checkpoint)
    columns, given = columns_of(data), unmapped(data)  # read by the run's reader as dataset_columns
    name, data_config = (given.name, given.config) if isinstance(given, ConfiguredSource) else (str(given), None)
    from preflab.eval.run import open_eval_split, training_data_note

    split, said, _ = open_eval_split(data, split)  # as every eval task: --split, else 'test' where there is one
    notes = [said] if said else []
    from preflab.eval.loading import LORA_OPTIONS, load_for_eval
    from preflab.models.run_config import run_seed
    from preflab.models.load import load_named_reference, policy_load_dtype

    with tempfile.TemporaryDirectory(prefix="preflab-distill-eval-") as scratch:
        trained = {k: v for k, v in saved.items() if k not in LORA_OPTIONS}  # use_peft off: the adapters are merged
        options = {**trained, **TRAINING_ONLY, "dataset_name": name,
                   "dataset_config": data_config, "dataset_columns": columns, "dataset_split": split,
                   "per_device_eval_batch_size": batch_size,
                   "output_dir": scratch, "report_to": "none"}
        if teacher:
            options["teacher_model_name_or_path"] = teacher
        cfg = config_from_dict(options)
        # the student, the one load of it, as every eval loads it (a final run directory, a checkpoint-N: the run's
        # base + its weights, or LoRA adapters, merged; safetensors only, remote code only when the run allowed it),
        # in the dtype and attention the run loaded its policy with (load_models), as the run evaluated it
        shaping = {k: v for k, v in cfg.model_kwargs().items() if k in SHAPING_INIT_KWARGS}
        student, tokenizer = load_for_eval(str(checkpoint), trust_remote_code=bool(saved.get("trust_remote_code")),
                                           seed=run_seed(saved), dtype=policy_load_dtype(cfg),
                                           init_kwargs=shaping or None)
        trainer = DistillTrainer(cfg, policy=student, ref=load_named_reference(cfg, tokenizer, student),
                                 tokenizer=tokenizer)  # the run's teacher (or --reference), loaded as the run did
        rows = trainer.train_data if limit is None else trainer.train_data[:limit]
        trainer.eval_data = rows
        metrics, tokens = trainer.eval_totals()  # tokens: the divergence's, counted from the batches scored
        cfg = trainer.cfg
        evaluated = {x.row_id for x in rows}
    overlap, overlap_note, why = distill_training_overlap(saved, data, split, evaluated)
    trained_on = training_data_note(data, saved, split)  # the metrics are then not held-out
    notes += [n for n in (trained_on, overlap_note) if n]
    return {"task": "distill", "checkpoint": str(checkpoint), "data": name, "split": split,
            "teacher": cfg.teacher_model_name_or_path, "beta": cfg.distillation_beta(),
            "temperature": cfg.distillation_temperature(), "num_rows": len(rows), "num_tokens": tokens,
            "metrics": metrics, **({"overlap_with_training": overlap} if overlap is not None else {}),
            "notes": notes, "missing": {"overlap_with_training": why} if why else {}}


def distill_training_overlap(saved: dict, data, split: str, evaluated: set) -> tuple:
    """overlap_with_training's (record, note, why not) for the eval rows of `data` / `split` whose row ids are
    `evaluated` (those the run's reader kept, within --limit) against the run's own SFT rows (its dataset_name less
    the eval_fraction it held out: eval.run.policy_training_rows), both read as text; no note where
    training_data_note already says --data is the training data."""
    from preflab.eval.run import (SFT_ROWS, _sft_sequences, overlap_with_training, policy_training_rows,
                                  training_data_note)

    evals = [s for s in _sft_sequences(data, split, saved)[0] if s.row_id in evaluated]
    return overlap_with_training(evals, policy_training_rows(saved), SFT_ROWS,
                                 training_data_note(data, saved, split) is not None)


def eval_task(args) -> int:
    """`preflab eval RUN --task distill` (routed here by preflab.cli): written to eval.json."""
    from preflab.eval.cli import refuse_unread_options
    from preflab.eval.run import eval_columns, eval_data, eval_json_path, write_json
    from preflab.eval.run_files import note_saved_run

    refuse_unread_options(args, "distill")
    note_saved_run(args.checkpoint)  # options this preflab does not know, another preflab version
    if args.no_reference:
        raise ConfigError("--no-reference with --task distill: the divergence needs the teacher; leave it out (the "
                          "run's teacher is used) or name one with --reference.")
    data = eval_data(args.data, getattr(args, "data_config", None), eval_columns(args))
    result = evaluate_distill_run(args.checkpoint, data,
                                  teacher=args.reference, batch_size=args.batch_size, split=args.split,
                                  limit=args.limit)
    path = write_json(eval_json_path(args.checkpoint, args.out), result)
    lines = [f"preflab eval: {result['num_rows']} rows, {result['num_tokens']} completion tokens, teacher "
             f"{result['teacher']}, beta={result['beta']}, temperature={result['temperature']}"]
    lines += [f"  {k:38s} {v:.4f}" for k, v in result["metrics"].items()]
    lines += [f"  note: {n}" for n in result["notes"]]
    lines += [f"  skipped {k}: {v}" for k, v in result["missing"].items()] + [f"  wrote {path}"]
    print("\n".join(lines), file=sys.stdout)
    return 0
