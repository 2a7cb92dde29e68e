"""`preflab eval`: every diagnostic of preflab.eval on held-out pairs, as the eval.json dict.

    result = evaluate_models(policy, tokenizer, rows, ref=reference)                        # in memory

(Loading a run and writing eval.json: preflab.eval_cli.checkpoint.evaluate_checkpoint, above the rooms whose models
it loads; the pieces every eval task shares stay here: open_eval_split, eval_beta, training_data_note, write_json,
eval_json_path.)

eval.json holds: "metrics" (flat {name: value}; names in preflab.eval.METRIC_DOCS), "win_rate" and
"generation_examples" when a reward function / reward model / judge was given, "per_pair" (the per-pair log-prob
sums and lengths the report draws histograms from), "token_rewards" with --token-rewards N (the first N pairs'
per-token implicit rewards beta (log pi - log pi_ref) of each response token, which sum to the pair's sequence
reward; Wang et al. 2025, methods/objectives.md §C #10), "notes" (assumptions made, e.g. alpha = 1), "missing"
({metric group: why it was not computed}), the data report (rows read, kept, skipped by reason), and, for a run whose
training data is on disk, "overlap_with_training" ({prompts, pairs, rows, checked_against, split, training_pairs}:
the scored pairs whose prompt / whole pair the run's training rows hold; an online run's prompt rows: pairs None and
training_prompts; training_overlap), else "missing" says why it was not checked. --task reward, vlm and diffusion
count theirs with the same pieces (run_training_rows, overlap_with_training, an OverlapRule per kind of row).

Unpaired rows (prompt, completion, label: TRL's KTO form) get the implicit reward's separation of the labels
instead (preflab.eval.unpaired: rewards/*, logps/*, unpaired/auroc; per_completion instead of per_pair).

Columns read from the data besides prompt/chosen/rejected (both optional):
    alpha            rater proportion P(y_w > y_l) for the idealized ranking accuracy; absent: 1 (-> 1 - 1e-3)
    extra_responses  a list of further responses to the same prompt, never used in training: the dispersion
                     metrics measure how much likelihood the policy moved onto them (3D properties)
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from preflab.data.overlap import (content_key, prompt_key, sft_overlap_counts,
                                  sft_row_overlap_counts)
from preflab.errors import ConfigError, DataError, PreflabError, WriteFailed
from preflab.eval.metrics import pair_diagnostics, unseen_log_mass_drift
from preflab.eval.ranking import ranking_accuracy_with_ties, ranking_report
from preflab.eval.score import score_pairs, score_responses
from preflab.eval.winrate import win_rate_caveats
from preflab.models.run_config import run_seed
from preflab.option_types import is_number


@dataclass
class EvalOptions:
    beta: float | None = None              # None: the run's config.yaml beta, else 0.1
    batch_size: int = 8                    # pairs per forward
    max_length: int | None = 1024
    max_prompt_length: int | None = None
    truncation_mode: str | None = None     # the training option's: None keeps a sequence's start (a prompt cut
                                           # to max_prompt_length its end), as a run with it unset
    max_completion_length: int | None = None
    split: str | None = None               # split of a hub dataset / DatasetDict / directory; None: 'test' where
                                           # the data has one (as a run's eval_split), else 'train' (said in a note)
    limit: int | None = None               # evaluate at most this many rows
    alpha_column: str = "alpha"
    extra_responses_column: str = "extra_responses"
    hard_margin: float = 1.0               # Thm 4.1 "hard" cut-off, in reward units (see preflab.eval.ranking)
    win_rate_prompts: int = 64             # distinct prompts generated for the win rate
    judge: str | None = None               # what judged the win rate, as given ("--reward-model DIR", ...):
                                           # eval.json's win_rate "judge", so two runs' win rates say their judges
    max_new_tokens: int = 64
    confidence: float = 0.95
    keep_per_pair: bool = True             # store per-pair sums in eval.json (the report's histograms)
    token_rewards: int = 0                 # per-token implicit rewards of the first N pairs -> eval.json
                                           # "token_rewards" (needs a reference; 0: none)
    device: str | None = None              # None: cuda when available, else cpu


def _is_number(value) -> bool:
    return is_number(value) and math.isfinite(value)


def _row_place(source: str, example) -> str:
    """'data.jsonl row 0 (line 1)': where a loaded example's row is, as the data report names it
    (data.report.where: its file's 1-based line where the row came from a file; rows given as a list have none)."""
    from preflab.data.report import place_of, where

    file, line = place_of(example)
    return where(file or source, example.row_id, line)


def _alphas(pairs, origins, column: str, notes: list[str], source: str = "the data") -> torch.Tensor:
    """[N] rater proportions from the `column` extra; 1.0 where absent (the paper's unanimous case). A value that is
    not a number in [0, 1] (a percentage, a label, a string) is a DataError naming the row (and its file's line,
    from `origins`: the loaded example each pair was tokenized from, _row_place): clipping it to [eps, 1 - eps] would
    change R* silently. (preflab.eval.ranking.proportion_logit, given alphas from Python, names an index instead.)"""
    values = [p.extras.get(column) for p in pairs]
    for k, value in enumerate(values):
        if value is not None and not (_is_number(value) and 0.0 <= value <= 1.0):
            raise DataError(f"{_row_place(source, origins[k])}, field {column!r}: {value!r} is not a rater "
                            "proportion in [0, 1] (P(chosen preferred over rejected); e.g. 0.75, not 75). Fix the "
                            "column, or pass --alpha-column with the right one.")
    found = sum(_is_number(v) for v in values)
    if not found:
        notes.append(f"no '{column}' column: rater proportions assumed unanimous (alpha = 1, used as 1 - 1e-3, as "
                     "in Chen et al. 2024 App. C.4), so the idealized ranking accuracy is an upper bound")
    elif found < len(values):
        notes.append(f"{len(values) - found} pairs lack '{column}'; alpha = 1 assumed for them")
    return torch.tensor([float(v) if _is_number(v) else 1.0 for v in values], dtype=torch.float64)


def _dispersion(policy, ref, tokenizer, examples, pairs, indices, opts: EvalOptions, pad_id: int,
                notes: list[str], source: str = "the data") -> dict:
    """Likelihood moved onto each prompt's extra (unseen) responses, policy vs reference."""
    from preflab.data.examples import UnpairedExample
    from preflab.data.tokenize import tokenize_indexed

    column = opts.extra_responses_column
    items, owner, empty = [], [], 0
    for k, (pair, i) in enumerate(zip(pairs, indices)):
        extra = pair.extras.get(column)
        if extra is not None and not isinstance(extra, list):
            raise DataError(f"{_row_place(source, examples[i])}, field {column!r}: a list of further responses to "
                            f"the prompt is expected, got {type(extra).__name__} {str(extra)[:60]!r}; write "
                            "[\"...\"] (a one-item list for one response).")
        for response in extra or []:
            if not isinstance(response, (str, list)):
                raise DataError(f"{_row_place(source, examples[i])}, field {column!r}: each further response is a "
                                "string (or, with conversational prompts, a list of messages), got "
                                f"{type(response).__name__} {str(response)[:60]!r}.")
            if not response or (isinstance(response, str) and not response.strip()):
                empty += 1  # an empty response is no response (the pairs refuse it too)
                continue
            prompt = examples[i].prompt
            if isinstance(prompt, list) and isinstance(response, str):  # a conversation's reply, as TRL's completions
                response = [{"role": "assistant", "content": response}]
            items.append(UnpairedExample(pair.row_id, prompt, response, True, {}))
            owner.append(k)
    if empty:
        notes.append(f"dispersion: {empty} empty '{column}' responses were left out")
    if not items:
        return {}
    tokenized, report, kept = tokenize_indexed("unpaired", items, tokenizer, on_bad_row="skip", **_cuts(opts))
    if len(tokenized) < len(items):
        notes.append(f"dispersion: {len(items) - len(tokenized)} of {len(items)} '{column}' responses could not be "
                     f"scored and were left out ({report.summary()})")
    if report.response_truncated:
        notes.append(f"dispersion: {report.response_truncated} '{column}' responses were truncated to max_length")
    if not tokenized:
        return {}
    seqs = [(t.prompt_ids, t.completion_ids) for t in tokenized]
    pol, _ = score_responses(policy, seqs, pad_id, opts.batch_size)
    ref_sums, _ = score_responses(ref, seqs, pad_id, opts.batch_size)
    # one row per pair with scored extras: grid [prompts, max extras per prompt] + validity mask
    columns: dict[int, list[int]] = {}
    for position, j in enumerate(kept):
        columns.setdefault(owner[j], []).append(position)
    width = max(len(v) for v in columns.values())
    grid_p = torch.zeros(len(columns), width, dtype=torch.float64)
    grid_r, valid = torch.zeros_like(grid_p), torch.zeros(len(columns), width, dtype=torch.bool)
    for row, positions in enumerate(columns.values()):
        grid_p[row, :len(positions)] = pol[positions]
        grid_r[row, :len(positions)] = ref_sums[positions]
        valid[row, :len(positions)] = True
    mass = unseen_log_mass_drift(grid_p, grid_r, valid)
    return {"dispersion/unseen_logps_drift": float((pol - ref_sums).mean()),
            "dispersion/unseen_log_mass_drift": float(mass.mean()),
            "dispersion/unseen_mass_increased_fraction": float((mass > 0).double().mean()),
            "dispersion/num_unseen_responses": float(len(seqs))}


TRUNCATION_KEYS = ("max_length", "max_prompt_length", "truncation_mode", "max_completion_length")


def _cuts(opts: EvalOptions) -> dict:
    """The truncation settings of `opts` (TRUNCATION_KEYS), as tokenize_indexed takes them."""
    return {k: getattr(opts, k) for k in TRUNCATION_KEYS}


def run_truncation(checkpoint: str, max_length: int | None = None,
                   max_prompt_length: int | None = None, task: str = "dpo") -> tuple[dict, str | None]:
    """(EvalOptions truncation fields, a note or None) for `preflab eval CHECKPOINT`: the run's own max_length,
    max_prompt_length, truncation_mode and max_completion_length (config.yaml), so that its pairs are cut as the
    run's eval_* metrics cut them; --max-length / --max-prompt-length override. Without a run config (or one of
    another `task` than the eval's: dpo, or reward for a DPA attribute model): 1024 and no prompt limit."""
    from preflab.models.run_config import run_config

    cfg = run_config(checkpoint) if Path(checkpoint).is_dir() else {}
    if cfg.get("task", "dpo") != task:
        cfg = {}
    out = {"max_length": cfg.get("max_length", 1024), "max_prompt_length": cfg.get("max_prompt_length"),
           "truncation_mode": cfg.get("truncation_mode"),  # unset: as the run cut (not keep_end)
           "max_completion_length": cfg.get("max_completion_length")}
    if max_length is not None:
        out["max_length"] = max_length
    if max_prompt_length is not None:
        out["max_prompt_length"] = max_prompt_length
    from_run = [k for k in TRUNCATION_KEYS if cfg.get(k) is not None
                and not (k == "max_length" and max_length is not None)
                and not (k == "max_prompt_length" and max_prompt_length is not None)]
    cuts = ", ".join(f"{k}={out[k]}" for k in from_run)
    rows, options = (("rated rows and pairs", "--max-length changes") if task == "reward" else
                     ("pairs, or unpaired completions", "--max-length / --max-prompt-length change"))
    note = (f"the eval rows ({rows}) are cut as the run's eval set was ({cuts}, from its config.yaml); {options} "
            "it") if from_run else None
    return out, note


DEFAULT_MAX_NEW_TOKENS = 64  # the win rate's answer length when neither --max-new-tokens nor the run sets one


def run_generation_length(checkpoint: str, given: int | None) -> tuple[int, str | None]:
    """(max_new_tokens of the win rate's answers, a note or None) for `preflab eval CHECKPOINT`: --max-new-tokens as
    given; else the run's max_completion_length (config.yaml: an online run's generation length, a preference run's
    response cut), so the judge compares answers as long as the ones the run trained on, said in a note; else
    DEFAULT_MAX_NEW_TOKENS."""
    from preflab.models.run_config import run_config

    if given is not None:
        return given, None
    length = (run_config(checkpoint) if Path(checkpoint).is_dir() else {}).get("max_completion_length")
    if isinstance(length, int) and not isinstance(length, bool) and length > 0:
        return length, (f"win-rate answers are generated greedily up to the run's max_completion_length={length} new "
                        "tokens (its config.yaml); --max-new-tokens changes it")
    return DEFAULT_MAX_NEW_TOKENS, None


def _within_positions(opts: EvalOptions, policy, ref) -> tuple[EvalOptions, str | None]:
    """(opts with max_length capped at the positions of the policy and reference, a note saying so or None): a
    longer sequence would index past a learned position table (an IndexError mid-evaluation), as training caps it
    (models.load.cap_max_length)."""
    from preflab.models.load import max_positions

    limits = [n for n in (max_positions(policy), max_positions(ref) if ref is not None else None) if n]
    if not limits or (opts.max_length is not None and opts.max_length <= min(limits)):
        return opts, None
    given = "no max_length (no limit)" if opts.max_length is None else f"max_length {opts.max_length}"
    return (replace(opts, max_length=min(limits)),
            f"{given} is above the model's {min(limits)} positions; used max_length {min(limits)}")


def eval_data(data, config: str | None, columns: tuple[dict, str] | None = None):
    """What `preflab eval --data DATA [--data-config NAME]` reads, for every eval task: DATA as given, or with
    --data-config a ConfiguredSource (preflab.data.configured_source.data_source, the one place training's
    dataset_config goes through too) whose refusals name --data-config and --data: a configuration of a single data
    file, a glob, a save_to_disk folder or a folder whose README.md declares no `configs:`; an undeclared one names
    the declared ones. columns: ({preflab field: dataset column}, the option that gave it) from eval_columns, read
    with preflab.data.columns.MappedColumns."""
    from preflab.data.columns import with_columns
    from preflab.data.configured_source import data_source

    mapping, option = columns or ({}, "--data-columns")
    return with_columns(data_source(data, config, "--data-config", "--data"), mapping, option)


def eval_columns(args) -> tuple[dict, str]:
    """({preflab field: dataset column}, the option that says so) that `preflab eval` reads --data with: --data-columns
    as given ('prompt=question,chosen=good' or a JSON object; 'none' for the data's own names), else the
    dataset_columns of the run CHECKPOINT's saved config.yaml (a run trained on renamed columns is evaluated on data
    named as its training data was), said in a note. Checked as the config checks dataset_columns."""
    import json
    import sys

    from preflab.dataset_columns_options import READER_FIELDS, columns_problems
    from preflab.models.run_config import run_config

    given = getattr(args, "data_columns", None)
    if given is None:
        run = getattr(args, "checkpoint", None) or getattr(args, "model", None)  # `eval-reward --model DIR`
        saved = run_config(run).get("dataset_columns") or {} if run else {}
        if saved:
            print(f"preflab: note: --data is read with the run's dataset_columns {saved} (preflab field: dataset "
                  "column, from its config.yaml); pass --data-columns for other names, or --data-columns none for "
                  "the data's own.", file=sys.stderr)
        return dict(saved), f"dataset_columns (from {run}'s config.yaml; --data-columns overrides it)"
    text = given.strip()
    if text.lower() in ("none", "{}", ""):
        return {}, "--data-columns"
    if text.startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--data-columns {given!r} is not a JSON object ({err.msg}); write FIELD=COLUMN[,"
                              "FIELD=COLUMN...], e.g. prompt=question,chosen=good,rejected=bad.") from None
    else:
        pairs = [part.split("=", 1) for part in text.split(",")]
        if any(len(p) != 2 for p in pairs):
            raise ConfigError(f"--data-columns {given!r}: write FIELD=COLUMN[,FIELD=COLUMN...] (preflab field = your "
                              "dataset's column), e.g. prompt=question,chosen=good,rejected=bad.")
        mapping = {field.strip(): column.strip() for field, column in pairs}
    problems = columns_problems(mapping, READER_FIELDS, "--data-columns")
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else "\n".join(problems))
    return mapping, "--data-columns"


def data_fields(data) -> dict:
    """eval.json's record of the data read: {"data": the --data value} and, with --data-config, "data_config"; read
    with a column mapping (eval_columns), "data_columns"."""
    from preflab.data.columns import columns_of, unmapped
    from preflab.data.configured_source import ConfiguredSource

    columns, data = columns_of(data), unmapped(data)
    out = {"data": data.name, "data_config": data.config} if isinstance(data, ConfiguredSource) else \
        {"data": str(data)}
    return {**out, "data_columns": columns} if columns else out


def data_name(data) -> str:
    """The name --data gave (a ConfiguredSource's name, without its configuration or column mapping; a path as
    text)."""
    from preflab.data.columns import unmapped
    from preflab.data.configured_source import ConfiguredSource

    data = unmapped(data)
    return data.name if isinstance(data, ConfiguredSource) else str(data)


def held_out_run_overrides(data, split: str, output_dir, batch_size: int) -> list[str]:
    """The preflab overrides that turn a saved run's config into the config of an evaluation of it (`preflab eval
    --task vlm` and `--task diffusion`, which evaluate through the run's own trainer): the training data is `data`'s
    split `split` (open_eval_split's; the run is given its reader, which reads --data-config's configuration, so
    dataset_name is only its name) with no eval set of its own and none held out of it (nor its eval_split, which
    would name a split of no eval set: data.eval_set.eval_split_unused), output_dir a throwaway
    folder, one step that is never taken (no resume, no trackers), and a training batch plan of one example that a
    small held-out set cannot fail."""
    return [f"dataset_name={data_name(data)}", "dataset_config=null", f"dataset_split={split}",
            "eval_dataset_name=null", "eval_dataset_config=null", "eval_fraction=0", "eval_split=null",
            f"output_dir={output_dir}", "max_steps=1", "resume_from_checkpoint=null",
            f"per_device_eval_batch_size={batch_size}", "report_to=none",
            "per_device_train_batch_size=1", "gradient_accumulation_steps=1"]


def open_eval_split(data, split: str | None, limit: int | None = None):
    """(the split read, a note saying which split of `data` that is, the RowReader of it), for every `preflab eval`
    task that reads pairs (the policy eval, `--task reward`, `--task vlm` and `--task diffusion`: the last two record
    the split in the dataset_split of the run config they build and give the run this reader, so the data is opened
    once).
    No split given: 'test' where the data has one, as a
    run's eval_split defaults to (TRL's dataset_test_split), else 'train', found by the reader that reads it
    (data.sources.eval_default_reader: the source is loaded once). Rows in memory (a list, a Dataset) and a plain
    data file have no split to name: no note."""
    from preflab.data.columns import unmapped
    from preflab.data.configured_source import ConfiguredSource
    from preflab.data.sources import RowReader, eval_default_reader, file_splits

    given = unmapped(data)  # a column mapping renames the rows the reader gives; the split is the data's
    named = isinstance(given, (str, os.PathLike, ConfiguredSource)) or type(given).__name__ == "DatasetDict"
    if named and isinstance(given, (str, os.PathLike)) and Path(given).is_file() and len(file_splits(Path(given))) < 2:
        named = False  # a plain data file: its rows, no split to name
    if split is not None:
        return split, (f"read split {split!r} of {data} (--split)" if named else None), \
            RowReader(data, split=split, limit=limit)
    reader = eval_default_reader(data, limit=limit)
    if not named:
        return reader.split, None, reader
    why = ("it has a split 'test', read by default as a run's eval_split is" if reader.split == "test" else
           "it has no split 'test' (a single file or a folder without one reads as 'train')")
    return reader.split, f"read split {reader.split!r} of {data}: no --split was given and {why}; pass --split " \
                         "to read another", reader


def evaluate_models(policy, tokenizer, data, ref=None, options: EvalOptions | None = None,
                    beta: float | None = None, reward_fn=None, judge=None, training_run: dict | None = None,
                    training_rows: TrainingRows | None = None) -> dict:
    """Every diagnostic on `data` (a file, directory, hub name or list of row dicts) -> the eval.json dict.
    beta: the implicit reward's; else options.beta; else 0.1 (two different values are a ConfigError).
    training_run: the config of the run evaluated (models.run_config.run_config): its training rows are compared
    with the pairs scored (training_overlap -> "overlap_with_training", a note, or "missing" saying why not);
    training_rows: those rows where the caller read them (policy_training_rows reads them from training_run)."""
    from preflab.data.rows import load_rows
    from preflab.data.tokenize import tokenize_indexed

    opts = options or EvalOptions()
    if beta is not None and opts.beta is not None and float(beta) != float(opts.beta):
        raise ConfigError(f"beta={beta} and options.beta={opts.beta} disagree; give one.")
    beta = float(beta if beta is not None else opts.beta if opts.beta is not None else 0.1)
    if not beta > 0:
        raise ConfigError(f"beta must be > 0 (the KL coefficient of the implicit reward), got {beta}.")
    notes: list[str] = []
    missing: dict[str, str] = {}
    opts, capped = _within_positions(opts, policy, ref)
    split, said, reader = open_eval_split(data, opts.split, opts.limit)
    opts = replace(opts, split=split)
    notes += [said] if said else []
    examples, row_report = load_rows(reader, kind="pairwise", on_bad_row="skip")
    from preflab.data.report import refuse_empty

    refuse_empty(row_report, "--data")  # no row at all: not "no usable pairs ... Check the columns"
    mixed = row_report.mixed_forms_note("evaluated on")  # the metrics average over two formats: said, as in training
    notes += [mixed] if mixed else []
    pairs, tok_report, indices = tokenize_indexed("pairs", examples, tokenizer, on_bad_row="skip",
                                                  source=row_report.source, **_cuts(opts))
    if not pairs:
        unpaired = _unpaired_rows(data, opts)
        if unpaired is not None:  # TRL's KTO form: the implicit reward's separation of the labels
            from preflab.eval.unpaired import evaluate_unpaired

            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            out = evaluate_unpaired(policy, tokenizer, *unpaired, ref, beta, _cuts(opts), opts.batch_size, pad_id,
                                    opts.keep_per_pair)
            out["notes"] = notes + ([capped] if capped else []) + out["notes"]
            if reward_fn is not None or judge is not None:
                out["missing"]["win_rate"] = "a win rate needs pairs' prompts and a reference; the data is unpaired"
            if training_run is not None:
                out["missing"]["overlap_with_training"] = ("unpaired eval rows: the overlap with the run's training "
                                                           "data is counted for preference pairs only")
            if opts.token_rewards:
                out["missing"]["token_rewards"] = "--token-rewards writes the tokens of preference pairs (chosen and " \
                                                  "rejected); the data is unpaired"
            return {**out, "split": opts.split}
        from preflab.data.report import first_skipped_note

        where = first_skipped_note(row_report, tok_report)
        raise PreflabError(f"no usable pairs in {row_report.source}: {row_report.summary()}; "
                           f"{tok_report.summary()}.{where} preflab eval needs preference pairs: prompt, chosen, "
                           "rejected (text or messages), or chosen and rejected conversations sharing their first "
                           "turns (implicit prompt), or unpaired rows: prompt, completion, label (TRL's KTO form); "
                           "a 'messages' (SFT) file has neither. Check the columns and --max-length.")
    if row_report.skipped or tok_report.skipped or tok_report.prompt_truncated or tok_report.response_truncated:
        notes += [capped] if capped else []  # the cap matters only where a row reached it
        notes.append(f"data: {row_report.summary()}; {tok_report.summary()} (the rows are listed under data_report "
                     "in eval.json); the metrics cover the pairs kept")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = score_pairs(policy, pairs, pad_id, ref=ref, batch_size=opts.batch_size)
    metrics = {k: float(v) for k, v in pair_diagnostics(scores, beta).items()}
    # without a reference there is no R*: the alpha notes (R* an upper bound) would speak of a metric not computed
    alpha = _alphas(pairs, [examples[i] for i in indices], opts.alpha_column, notes if ref is not None else [],
                    row_report.source)
    if bool((alpha == 0.5).any()):
        metrics["ranking_accuracy_with_ties"] = ranking_accuracy_with_ties(scores.policy_chosen,
                                                                           scores.policy_rejected, alpha)
    out: dict = {"num_pairs": scores.size, "beta": beta, "truncation": _cuts(opts), "split": opts.split}
    if training_run is not None:
        overlap, said, why = training_overlap([examples[i] for i in indices], training_run, data, opts.split,
                                              training_rows)
        out.update({"overlap_with_training": overlap} if overlap is not None else {})
        notes += [said] if said else []
        missing.update({"overlap_with_training": why} if why else {})
    if ref is not None:
        metrics.update(ranking_report(scores.ref_chosen, scores.ref_rejected, scores.chosen_length,
                                      scores.rejected_length, alpha, beta, scores.policy_chosen,
                                      scores.policy_rejected, opts.hard_margin))
        metrics.update(_dispersion(policy, ref, tokenizer, examples, pairs, indices, opts, pad_id, notes,
                                   row_report.source))
        if not any(k.startswith("dispersion/") for k in metrics):
            column = opts.extra_responses_column
            present = any(p.extras.get(column) is not None for p in pairs)
            missing["dispersion"] = (f"no '{column}' response could be scored (see the notes)" if present else
                                     f"the data has no '{column}' column (a list of further responses per prompt), "
                                     "so mass on unseen responses was not measured")
    else:
        missing["reference"] = ("no --reference: implicit-reward accuracy, idealized ranking accuracy, Thm 4.1 "
                                "difficulty, log-prob drift and dispersion need the reference model")
    if reward_fn is not None or judge is not None:
        if ref is None:
            missing["win_rate"] = "a win rate compares against the reference model's answers; give --reference"
        else:
            out.update(_win_rate(policy, ref, tokenizer, examples, pairs, indices, opts, reward_fn, judge, metrics))
            win = out["win_rate"]
            clipped = clipped_note(metrics, win["n"] + win.get("failed", 0), opts.max_new_tokens)
            notes += [clipped] if clipped else []
            if win.get("failed"):
                notes.append(f"win rate: no verdict on {win['failed']} of {win['n'] + win['failed']} prompts (the "
                             "judge returned -1, None or NaN, or a reward was None or not finite); the win rate and "
                             f"its interval cover the other {win['n']}")
            notes += win_rate_caveats(win)
            asked, judged = opts.win_rate_prompts, win["n"] + win.get("failed", 0)
            if judged < asked:  # said: the interval is the width of `judged` prompts, not of the number asked for
                notes.append(f"win rate: the evaluated pairs hold {judged} distinct prompts, fewer than "
                             f"--win-rate-prompts {asked}: the win rate and its interval are over those {judged}")
    else:
        missing["win_rate"] = "no --reward-fn, --reward-model or --judge given"
    if opts.token_rewards and ref is None:
        missing["token_rewards"] = "per-token implicit rewards beta (log pi - log pi_ref) need the reference model"
    elif opts.token_rewards:
        out["token_rewards"] = _token_rewards(policy, ref, tokenizer, pairs, scores, opts, pad_id, beta)
    out["metrics"] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    out.update(notes=notes, missing=missing,
               data_report={"rows": row_report.to_dict(), "tokenize": tok_report.to_dict()})
    if opts.keep_per_pair:
        out["per_pair"] = {**scores.to_lists(), "alpha": alpha.tolist(), "row_id": [p.row_id for p in pairs]}
    return out


def _token_rewards(policy, ref, tokenizer, pairs, scores, opts: EvalOptions, pad_id: int, beta: float) -> list:
    """eval.json's "token_rewards": the first opts.token_rewards pairs' per-token implicit rewards
    (score.score_token_rewards), each side with its tokens as text and its sequence reward beta h(y) from the pair
    scores (the metrics' path; the per-token rewards sum to it)."""
    from preflab.eval.score import score_token_rewards

    entries = score_token_rewards(policy, ref, pairs[:opts.token_rewards], pad_id, beta, opts.batch_size)
    for k, entry in enumerate(entries):
        for side in ("chosen", "rejected"):
            h = getattr(scores, f"policy_{side}")[k] - getattr(scores, f"ref_{side}")[k]
            entry[side] = {"tokens": tokenizer.convert_ids_to_tokens(entry[side]["token_ids"]), **entry[side],
                           "sequence_reward": float(beta * h)}
    return entries


def _unpaired_rows(data, opts: EvalOptions):
    """(UnpairedExamples, their DataReport) when `data` holds unpaired rows (prompt, completion, label) and no pair
    row, else None (the pairs' error then stands)."""
    from preflab.data.rows import load_rows

    examples, report = load_rows(data, split=opts.split, kind="unpaired", on_bad_row="skip", limit=opts.limit)
    if not examples or any(form.startswith("pairwise") for form in report.forms):
        return None
    return examples, report


def clipped_note(metrics: dict, prompts: int, max_new_tokens: int) -> str | None:
    """The note saying how many of the win rate's answers were cut at max_new_tokens without EOS (the judge scored
    unfinished text), or None when none was."""
    cut = {who: round(metrics.get(f"clipped_ratio/{who}_generation", 0.0) * prompts)
           for who in ("policy", "reference")}
    if not any(cut.values()):
        return None
    return (f"win rate: {cut['policy']} of the policy's and {cut['reference']} of the reference's {prompts} answers "
            f"reached max_new_tokens={max_new_tokens} without EOS, so the judge scored cut-off text "
            "(clipped_ratio/*_generation); raise --max-new-tokens to let them finish")


def _win_rate(policy, ref, tokenizer, examples, pairs, indices, opts, reward_fn, judge, metrics) -> dict:
    from preflab.eval.winrate import compare_generations

    seen, prompt_ids, prompts = set(), [], []
    for pair, i in zip(pairs, indices):
        key = tuple(pair.prompt_ids)
        if key not in seen and len(prompt_ids) < opts.win_rate_prompts:
            seen.add(key)
            prompt_ids.append(pair.prompt_ids)
            prompts.append(examples[i].prompt)
    result = compare_generations(policy, ref, tokenizer, prompt_ids, prompts, reward_fn=reward_fn, judge=judge,
                                 max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size,
                                 confidence=opts.confidence)
    examples_out = result.pop("examples")
    win = {**result.pop("win_rate"), "max_new_tokens": opts.max_new_tokens, "decoding": "greedy",
           **({"judge": opts.judge} if opts.judge else {})}
    metrics.update(result)
    metrics.update({"win_rate": win["win_rate"], "win_rate/ci_low": win["ci_low"],
                    "win_rate/ci_high": win["ci_high"]})
    return {"win_rate": win, "generation_examples": examples_out}


# objectives whose optimum is the KL-regularized one, pi_ref exp(r / beta) / Z, with the run's beta as the KL
# coefficient: R*, the implicit reward beta h and Thm 4.1's l(beta c) are theirs (Chen et al. 2024, Sec. 3)
KL_OPTIMUM_OBJECTIVES = ("dpo",)


def eval_beta(given: float | None, cfg: dict, unpaired: bool = False) -> tuple[float, list[str]]:
    """(beta of the implicit reward and of R*, notes) for `preflab eval`: --beta, else the run's beta, else 0.1.
    A run beta of 0 (e.g. GRPO without a KL term) has no implicit reward: 0.1 is used and said. A run whose
    objective is not DPO's (IPO, SimPO, KTO, ...) gets a note that beta there is that objective's own parameter.
    unpaired: the eval data is unpaired (prompt, completion, label; preflab.eval.unpaired), where beta sets
    rewards/* and unpaired/auroc only; R* and the difficulty need pairs and are not computed, so no note names
    them."""
    notes: list[str] = []
    if given is not None:
        return float(given), notes
    uses = "rewards/* and unpaired/auroc" if unpaired else "rewards/*, R* and the difficulty"
    run_beta = cfg.get("beta")
    if cfg.get("task") == "sft" and cfg.get("teacher_model_name_or_path"):  # beta: the JSD's, not a KL weight
        notes.append(f"the run is a distillation (task: sft with a teacher; its beta={run_beta} weighs the "
                     "generalized JSD, no KL coefficient): beta = 0.1 is used for rewards/*, R* and the difficulty, "
                     "DPO's quantities against the reference; pass --beta to choose it. Its own metrics (the "
                     "divergence to the teacher) on task: sft rows: `preflab eval RUN --task distill --data ROWS`")
        return 0.1, notes
    if cfg.get("task") == "sft":  # its config.yaml holds beta's default, which maximum likelihood never read
        notes.append("the run is task: sft (maximum likelihood, no beta; its config.yaml's beta is the option's "
                     f"default, unread): beta = 0.1 is used for {uses}, DPO's quantities against the reference; "
                     "pass --beta to choose it")
        return 0.1, notes
    if isinstance(run_beta, bool) or not isinstance(run_beta, (int, float)) or not run_beta > 0:
        if run_beta is not None:
            notes.append(f"the run's beta is {run_beta!r} (no KL term), which defines no implicit reward: beta = 0.1 "
                         f"is used for {uses}; pass --beta to choose it")
        return 0.1, notes
    if cfg.get("task", "dpo") == "dpo" and "loss_type" in cfg:
        other = _objectives_without_kl_optimum(cfg["loss_type"])
        if other and unpaired:
            notes.append(unpaired_beta_note(other, run_beta))
        elif other:
            notes.append(f"the run trained with loss_type {', '.join(other)}, whose beta={run_beta} is that "
                         "objective's own parameter: rewards/*, the idealized ranking accuracy R* and the difficulty "
                         f"are DPO's quantities (KL-regularized optimum) at beta={run_beta}, not that objective's "
                         "optimum; compare R and R~ across runs, and read R* as DPO's ceiling")
    return float(run_beta), notes


def _objectives_without_kl_optimum(loss_type) -> list[str]:
    """The names in a run's loss_type (one name or a list) whose objective is not in KL_OPTIMUM_OBJECTIVES."""
    from preflab.objectives import resolve_name

    names = loss_type if isinstance(loss_type, (list, tuple)) else [loss_type]
    try:
        return [str(n) for n in names if resolve_name(str(n)) not in KL_OPTIMUM_OBJECTIVES]
    except PreflabError:
        return [str(n) for n in names]


def unpaired_beta_note(names: list[str], run_beta: float) -> str:
    """The beta note of an unpaired eval of a run whose loss_type `names` are not DPO's: what beta sets there
    (rewards/* = beta (log pi - log pi_ref), and unpaired/auroc ranks by it); for kto that is KTO's own reward, the
    one TRL's KTOTrainer logs as rewards/* (Ethayarajh et al. 2024, Eq. 7: r scaled by beta)."""
    from preflab.objectives import resolve_name

    def is_kto(name: str) -> bool:
        try:
            return resolve_name(name) == "kto"
        except PreflabError:
            return False

    whose = ("KTO's implicit reward, the rewards/* TRL's KTOTrainer logs" if all(is_kto(n) for n in names)
             else "DPO's implicit reward at the run's beta, that objective's own parameter")
    return (f"the run trained with loss_type {', '.join(names)}: rewards/* and unpaired/auroc are beta (log pi - "
            f"log pi_ref) at beta={run_beta}, {whose}; these unpaired rows give no R* or difficulty (they need "
            "pairs)")


def training_data_note(data, cfg: dict, split: str) -> str | None:
    """A note when --data (and --split, --data-config) is the run's own training data (its dataset_name,
    dataset_split and dataset_config): the metrics are then not held-out, which nothing else in eval.json would say.
    None otherwise. Two configurations differ only when both are named (no configuration reads a one-configuration
    folder's, or a hub dataset's default, which may be the run's)."""
    from preflab.data.columns import unmapped
    from preflab.data.configured_source import ConfiguredSource

    name = cfg.get("dataset_name")
    data = unmapped(data)
    config = data.config if isinstance(data, ConfiguredSource) else None
    data = data.name if isinstance(data, ConfiguredSource) else data
    if not name or not isinstance(data, (str, Path)) or split != cfg.get("dataset_split", "train"):
        return None
    if not _same_data(data, name):
        return None
    trained_config = cfg.get("dataset_config")
    if config is not None and trained_config is not None and str(config) != str(trained_config):
        return None
    fraction = cfg.get("eval_fraction") or 0
    # --held-out rebuilds a DPO-family run's held-out pairs only (preflab.eval.held_out): the other tasks refuse it
    exactly = " (--held-out instead of --data evaluates exactly those)" if cfg.get("task") in (None, "dpo") else ""
    held = (f"only the eval_fraction={fraction} of its rows the run held out (seed {run_seed(cfg)}) were not "
            f"trained on{exactly}" if fraction and not cfg.get("eval_dataset_name") else "every row was trained on")
    held_split = cfg.get("eval_split") if cfg.get("eval_dataset_name") and _same_data(data, cfg["eval_dataset_name"]) \
        else None  # the run's eval set is another split of this data (TRL's dataset_test_split)
    instead = (f"give --split {held_split}, the split the run evaluated on" if held_split and held_split != split
               else "evaluate a held-out file for generalization")
    configured = f", configuration {config}" if config is not None else ""
    return (f"--data {data} (split {split}{configured}) is the run's training data (dataset_name): {held}, so "
            "these metrics "
            f"are not held-out; {instead}")


@dataclass(frozen=True)
class OverlapRule:
    """What makes an evaluated row one the run trained on, for one kind of row (overlap_with_training): two rows
    share a prompt when their prompt_key values are equal, and are the same row when their row_key values are
    (data.overlap.training_overlap_counts, which holds the training side as digests). rows: what a row is in the
    note ("pairs"); prompt: the note's words for the shared part ("a prompt"); same_row: what the row key compares,
    said in the note. The rules: TEXT_PAIRS (the policy eval and --task reward: prompt; prompt, chosen and rejected
    as load_rows made them), data.vision's keys (--task vlm: prompt messages and image pixels), diffusion.data's
    image_pair_key (--task diffusion: caption; captions and the two images' pixels)."""

    rows: str = "pairs"
    prompt: str = "a prompt"
    same_row: str = "same prompt, chosen and rejected"
    prompt_key: Callable = prompt_key
    row_key: Callable | None = content_key
    counts: Callable | None = None   # (training rows, examples) -> the record's counts, instead of the two keys
    trained_rows: str | None = None  # the note's words for the row count; None: "are training <rows>"
    size: str = "training_pairs"     # the record's key for how many training rows were compared


TEXT_PAIRS = OverlapRule()
# a task: sft run's rows (text, messages, prompt + completion) against eval pairs: data.overlap.sft_overlap_counts
SFT_SEQUENCES = OverlapRule(
    same_row="prompt + chosen or prompt + rejected is one of its SFT sequences: a text, a prompt + completion or a "
             "messages row", counts=sft_overlap_counts,
    trained_rows="have a response the run trained on by maximum likelihood", size="training_sequences")
# a distillation run's SFT rows against eval SFT rows (preflab eval --task distill): data.overlap.sft_row_overlap_counts
SFT_ROWS = OverlapRule(
    rows="rows", same_row="the same text, prompt + completion or messages", counts=sft_row_overlap_counts,
    trained_rows="are rows the run trained on", size="training_sequences")


@dataclass
class TrainingRows:
    """A run's training rows as `preflab eval` compares its eval rows with them (run_training_rows), or, with rows
    None, `why` they could not be read. whose: how the notes name them ("the run's training data X (dataset_name,
    split S)"); held_out: the note's words for the rows eval_fraction held out ("" when none); prompts_only: the
    rows are prompts (an online run's), so only the prompts are compared."""

    whose: str
    rows: list | None = None
    why: str | None = None
    name: str | None = None
    split: str | None = None
    held_out: str = ""
    prompts_only: bool = False


def _no_training_data_why(cfg: dict) -> str:
    if not cfg:
        return ("the model evaluated has no saved run config (config.yaml) naming its training data, so whether the "
                "eval rows were trained on was not checked")
    if cfg.get("task") == "online" and cfg.get("online_task") == "game":
        return ("the run (task: online, online_task: game) trained on the preference game's answers, not on data "
                "rows, so there are no training rows to compare the eval rows with")
    return ("the run's config.yaml names no dataset_name (its training data), so whether the eval rows were trained "
            "on was not checked")


def run_training_rows(cfg: dict, read, hold_out=None, holds: str = "preference pairs",
                      prompts_only: bool = False) -> TrainingRows:
    """The rows the run of config `cfg` trained on, read as it read them: `read(dataset_name with its
    dataset_config (configured_source.data_source) and dataset_columns, dataset_split)` ->
    (rows, report), less the rows eval_fraction held out with the run's seed when it had no eval_dataset_name
    (`hold_out(rows, fraction, seed)` -> the rows kept; default data.holdout.split_eval_fraction, as
    data.eval_set.train_and_eval holds them out for VLM, diffusion and online runs). Not read, with the reason
    (TrainingRows.why): no dataset_name (or no run config), a dataset_name that is no file or folder here (a hub
    name: eval downloads no training data), unreadable, or holding no `holds`."""
    name = cfg.get("dataset_name")
    if not name or not isinstance(name, (str, Path)):
        return TrainingRows("the run's training data", why=_no_training_data_why(cfg))
    train_split = cfg.get("dataset_split") or "train"
    config = cfg.get("dataset_config")
    whose = (f"the run's training data {name} (dataset_name, " +
             (f"dataset_config {config}, " if config is not None else "") + f"split {train_split})")
    found = TrainingRows(whose, name=str(name), split=train_split, prompts_only=prompts_only)
    if not Path(str(name)).exists():
        # an absolute path (as written, or launch.json's record of a relative one) is no hub name: it was moved
        what = ("is gone (an absolute path: the file or folder was moved or deleted since the run)"
                if Path(str(name)).is_absolute() else
                "is no file or folder here (a hub dataset name, or a path relative to the directory the run was "
                "started in)")
        found.why = (f"{whose} {what}, and eval downloads no training data, so whether the eval rows were "
                     "trained on was not checked")
        return found
    try:
        from preflab.data.columns import with_columns
        from preflab.data.configured_source import data_source

        # renamed by the run's dataset_columns, as the run read them
        rows, report = read(with_columns(data_source(str(name), config), cfg.get("dataset_columns")), train_split)
    except (PreflabError, OSError, ValueError) as err:
        found.why = f"{whose} could not be read ({err}), so whether the eval rows were trained on was not checked"
        return found
    if not rows:
        summary = report.summary() if callable(getattr(report, "summary", None)) else "no rows"
        found.why = f"{whose} holds no {holds} ({summary}), so whether the eval rows were trained on was not checked"
        return found
    fraction = cfg.get("eval_fraction") or 0
    if fraction and not cfg.get("eval_dataset_name"):
        seed = run_seed(cfg)  # the run's, else TrainConfig's default
        if hold_out is None:
            from preflab.data.holdout import split_eval_fraction

            rows = split_eval_fraction(rows, float(fraction), seed)[0]
        else:
            rows = hold_out(rows, float(fraction), seed)
        found.held_out = f", less the eval_fraction={fraction} of its rows the run held out (seed {seed})"
    found.rows = rows
    return found


def _hold_out_pairs(train, fraction: float, seed: int) -> list:
    """The pairs a DPO run kept for training: data.holdout.hold_out_rows, as loops.prepare.prepare_examples holds
    them out."""
    from preflab.data.holdout import hold_out_rows

    train, _, _ = hold_out_rows(train, fraction, seed)
    return train


def policy_training_rows(cfg: dict, hold_out=None, keep_raw: dict | None = None) -> TrainingRows:
    """The training rows of a run the policy eval evaluates: a DPO-family run's preference pairs (load_rows of
    dataset_name / dataset_split, less the rows eval_fraction held out: _hold_out_pairs), or an online run's
    prompts (task: online, online_task: dataset: its prompt rows, less those eval_fraction held out as
    train_and_eval does; online_task: demo's built-in prompts are read by preflab.eval_cli, which may import the
    demo). hold_out: what keeps a DPO-family run's training rows instead of _hold_out_pairs (preflab.eval.held_out
    passes the same data.holdout.hold_out_rows and also keeps the rows it holds out). keep_raw: a dict that gets a
    DPO-family run's rows as its data holds them, by row id (RowReader's keep), from this one read."""
    from preflab.data.rows import load_rows
    from preflab.data.sources import RowReader

    if cfg.get("task") == "sft":
        return run_training_rows(cfg, lambda name, split: _sft_sequences(name, split, cfg),
                                 holds="SFT rows of text (text, messages, prompt + completion)")
    if cfg.get("task") == "online":
        return run_training_rows(cfg, lambda name, split: load_rows(name, split=split, kind="prompt",
                                                                    on_bad_row="skip"),
                                 holds="prompt rows", prompts_only=True)
    return run_training_rows(cfg, lambda name, split: load_rows(RowReader(name, split=split, keep=keep_raw),
                                                                kind="pairwise", on_bad_row="skip"),
                             hold_out=hold_out or _hold_out_pairs)


def _sft_sequences(source, split: str, cfg: dict):
    """(data.overlap.SFTSequence list, a report) of a task: sft run's rows, read as text (no tokenizer): one per row
    of a text form, in order, so eval_fraction holds out the rows the run held out (it holds out by position among
    the rows it kept; a row the run skipped when tokenizing, which its summary.json counts, would shift them)."""
    from preflab.data.overlap import sft_sequence
    from preflab.data.sources import RowReader

    reader = RowReader(source, split=split)
    text_field = str(cfg.get("dataset_text_field") or "text")
    out, total = [], 0
    for raw in reader:
        total += 1
        found = sft_sequence(raw.row_id, raw.data, text_field) if raw.problem is None and raw.data else None
        out += [found] if found is not None else []
    from types import SimpleNamespace

    said = f"{total} rows, {len(out)} of a text form (text, messages, prompt + completion)"
    return out, SimpleNamespace(summary=lambda: said)  # run_training_rows says report.summary() when none is kept


def overlap_with_training(examples, training: TrainingRows, rule: OverlapRule = TEXT_PAIRS,
                          said_elsewhere: bool = False) -> tuple[dict | None, str | None, str | None]:
    """(eval.json's "overlap_with_training", a note, why it was not checked) for the evaluated `examples` and the
    run's `training` rows, by `rule` (data.overlap.training_overlap_counts). The record: {"prompts", "pairs",
    "rows", "checked_against", "split", "training_pairs"}; for prompt-only training rows "pairs" is None and the
    training rows are counted as "training_prompts". Rule for the note: none at zero overlap (the zeros are still
    recorded), and none when `said_elsewhere` (training_data_note already says --data is the training data);
    otherwise the counts with their fractions, and that the metrics are partly on training data, or, with shared
    prompts only, that the rows are held-out but their prompts are not. Rows not read: only the reason (eval.json
    "missing", printed as "skipped overlap_with_training: ...")."""
    from preflab.data.overlap import training_overlap_counts

    if training.rows is None:
        return None, None, training.why
    counts = rule.counts(training.rows, examples) if rule.counts is not None else training_overlap_counts(
        training.rows, examples, rule.prompt_key, None if training.prompts_only else rule.row_key)
    size = "training_prompts" if training.prompts_only else rule.size
    record = {**counts, "checked_against": training.name, "split": training.split, size: len(training.rows)}
    if not (counts["prompts"] or counts["pairs"]) or said_elsewhere:
        return record, None, None
    n, rows = counts["rows"], rule.rows
    trained = rule.trained_rows or f"are training {rows}"
    shared = f"{counts['prompts']} of {n} eval {rows} ({counts['prompts'] / n:.1%}) have {rule.prompt} the run trained on"
    if training.prompts_only:
        note = (f"{shared} (its training rows are prompts: {training.whose}{training.held_out}): these metrics are "
                f"partly on training prompts, not held-out; evaluate {rows} whose prompts the run did not train on "
                "for generalization")
    elif counts["pairs"]:
        note = (f"{shared}, and {counts['pairs']} ({counts['pairs'] / n:.1%}) {trained} ({rule.same_row}), "
                f"compared with {training.whose}{training.held_out}: these metrics are partly on training data, not "
                f"held-out; evaluate {rows} whose prompts the run did not train on for generalization")
    else:  # shared prompts only: the rows are held-out, their prompts are not
        note = (f"{shared}, and 0 (0.0%) {trained} ({rule.same_row}), compared with "
                f"{training.whose}{training.held_out}: the {rows} are held-out but their prompts are not; evaluate "
                f"{rows} whose prompts the run did not train on for generalization to new prompts")
    return record, note, None


def training_overlap(examples, cfg: dict, data=None, split: str | None = None,
                     training: TrainingRows | None = None) -> tuple[dict | None, str | None, str | None]:
    """overlap_with_training for the policy eval: the evaluated pair `examples` against the training rows of the
    run of config `cfg` (policy_training_rows, or `training` where the caller read them: the online demo's
    prompts), by TEXT_PAIRS; no note where training_data_note already says --data (`data`, `split`) is the
    training data."""
    training = policy_training_rows(cfg) if training is None else training
    said = data is not None and training_data_note(data, cfg, split) is not None
    rule = SFT_SEQUENCES if cfg.get("task") == "sft" and training_rows_are_own(training, cfg) else TEXT_PAIRS
    return overlap_with_training(examples, training, rule, said)


def training_rows_are_own(training: TrainingRows, cfg: dict) -> bool:
    """Whether `training` was read from `cfg`'s dataset_name (not rows a caller passed, e.g. the online demo's)."""
    return training.name == str(cfg.get("dataset_name"))


def _same_data(data, name) -> bool:
    """Whether --data names the same data as a run's dataset_name / eval_dataset_name (paths resolved)."""
    given, trained = Path(str(data)), Path(str(name))
    return (given.resolve() == trained.resolve()) if given.exists() and trained.exists() else str(data) == str(name)


def write_json(path: Path, data: dict) -> Path:
    """Write `data` to `path` (eval.json) whole or not at all, with a plain file's mode (atomic_file.write_json_file:
    before, a fixed eval.json.tmp was left behind when the write or the rename failed), fsynced (durable: whole
    or absent after a power loss, never empty)."""
    from preflab.atomic_file import write_json_file

    try:
        return write_json_file(path, data, durable=True, indent=1)
    except OSError as err:  # a full disk, a read-only folder: the results are computed, say where they could not go
        raise WriteFailed(f"could not write {path}: {err.strerror or err}. Free disk space or fix the folder's "
                          "permissions, or write it elsewhere with --out PATH.") from err


def eval_json_path(checkpoint: str, out: str | None) -> Path:
    if out:
        target = Path(out)
        return target if target.suffix == ".json" else target / "eval.json"
    if not Path(checkpoint).is_dir():
        raise PreflabError(f"{checkpoint} is not a directory, so eval.json has nowhere to go; pass --out PATH.")
    return Path(checkpoint) / "eval.json"
