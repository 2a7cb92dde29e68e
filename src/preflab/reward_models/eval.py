"""Pairwise accuracy of a reward or preference model, overall and per subset / context (RewardBench rows).

    result = evaluate_reward_model("outputs/rm", "rewardbench.jsonl", batch_size=16)
    result["accuracy"], result["per_subset"]["chat"]["accuracy"]

Rows: RewardBench's {prompt, chosen, rejected, subset, id, ...} (any TRL preference row works). A pair is right when
the model's log-odds of P(chosen > rejected) is > 0, i.e. r_w > r_l for a BT model and s(y_w > y_l) > 0 for a GPM
(ties count as wrong, as in RewardBench and TRL). Rows with a `context` are rendered with the template stored in
the model config (a model trained without contexts sees the prompt alone unless `context_template` is given);
groups of rows that differ only in context and label also give `reversal_accuracy` (`preflab.reward_models.context`).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from torch import Tensor, nn

from preflab.loops.batches import collate_pairs

AUTO = "auto"


def pair_outputs(model: nn.Module, pairs: list, pad_id: int, batch_size: int = 8) -> tuple[Tensor, Tensor]:
    """Head outputs of the chosen and rejected sides of tokenized pairs: ([N, D], [N, D]), no gradient."""
    from preflab.reward_models.heads import sequence_outputs

    device = next(model.parameters()).device
    chosen, rejected = [], []
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            layout = collate_pairs(chunk, pad_id, "padded").to(device)
            out = sequence_outputs(model, layout.input_ids, layout.attention_mask)
            chosen.append(out[:len(chunk)].cpu())
            rejected.append(out[len(chunk):].cpu())
    return torch.cat(chosen), torch.cat(rejected)


def batch_extrema(metrics: dict, out_c: Tensor, out_r: Tensor, batch_size: int) -> dict:
    """`metrics` with its min_reward / max_reward (a BT head's, over the whole set) replaced by TRL RewardTrainer's
    eval values: each eval batch's min / max over both sides' rewards (compute_loss per batch), averaged over the
    batches equally by log() (trl/trainer/reward_trainer.py). batch_size: the pairs of one eval batch on all
    processes (per_device_eval_batch_size x processes: TRL gathers the batch's logits). A metric without
    them (GPM) is returned as is."""
    from preflab.reward_models.bt import EXTREMA

    if not any(name in metrics for name in EXTREMA):
        return metrics
    rewards = [torch.cat([out_c[i:i + batch_size, 0], out_r[i:i + batch_size, 0]])
               for i in range(0, out_c.shape[0], batch_size)]
    picks = {"min": torch.amin, "max": torch.amax}
    return {**metrics, **{name: float(sum(float(picks[kind](r)) for r in rewards) / len(rewards))
                          for name, kind in EXTREMA.items() if name in metrics}}


def capped_max_length(model: nn.Module, max_length: int | None) -> int | None:
    """`max_length` capped to the model's positions: a longer sequence would index past a learned position table
    (GPT-2's 512 / 1024) and end in an IndexError inside the model's forward. The pairs it cuts are counted (the
    eval's `truncated`, said with the `max_length` it returns)."""
    from preflab.models.load import max_positions

    positions = max_positions(model)
    if positions is None or (max_length is not None and max_length <= positions):
        return max_length
    return positions


def _groups(examples, correct: Tensor, field: str) -> dict:
    index: dict = defaultdict(list)
    for i, ex in enumerate(examples):
        value = ex.extras.get(field)
        if value is not None and value != "":
            index[str(value)].append(i)
    return {name: {"accuracy": float(correct[idx].float().mean()), "num_pairs": len(idx)}
            for name, idx in sorted(index.items())}


def load_reward_dir(path) -> tuple[nn.Module, object]:
    """(model, tokenizer) of a reward model directory (preflab.reward_models.heads.load_reward_model and
    reward_tokenizer: a run's output_dir, its checkpoint-<step>, a transformers sequence-classification folder); a
    ConfigError when `path` is not a directory."""
    from preflab.reward_models.heads import load_reward_model, reward_tokenizer

    if not Path(path).is_dir():
        from preflab.errors import ConfigError

        raise ConfigError(f"{path} is not a directory; give a reward model directory saved by preflab (a run's "
                          "output_dir or its checkpoint-<step>) or by transformers.")
    return load_reward_model(str(path)), reward_tokenizer(str(path))


def evaluate_reward_model(model_dir_or_model, data, tokenizer=None, batch_size: int = 8,
                          max_length: int | None = 1024, group_fields: tuple[str, ...] = ("subset", "context"),
                          head=None, context_template: str | None = AUTO, on_bad_row: str = "error",
                          scored: list | None = None) -> dict:
    """Accuracy overall and per value of each `group_fields` column, plus mean log-odds and reversal accuracy.

    model_dir_or_model: a directory saved by preflab (or any sequence-classification reward model directory), or
        an in-memory model (then pass `tokenizer`).
    data: a data file, directory, hub dataset name, `datasets.Dataset`, list of row dicts, or a RowReader opened on
        one (its split and limit: `preflab eval --task reward` reads the split the policy eval reads).
    head: the pairwise head (default: from the model config; a plain classifier is a BT model).
    context_template: "auto" uses the template stored with the model (none: contexts are not shown).
    scored: a list to receive the rows scored (PairwiseExamples, as load_rows made them; `preflab eval --task
        reward` compares them with the run's training rows).
    Returns {"accuracy", "num_pairs", "mean_logit", the head's training metrics on the pairs ("loss" with the rows'
    margins, and for BT TRL RewardTrainer's "margin", "min_reward", "mean_reward", "max_reward"; for GPM "margin"
    (mean s) and "prob"), "ece", "brier" and "calibration_bins" of P(chosen > rejected) = sigmoid(logit)
    (`preflab.reward_models.calibration`), "per_<field>": {value: {"accuracy", "num_pairs"}},
    "reversal_accuracy" (when the data has reversal groups), "skipped" (rows by reason; a pair longer than
    max_length is dropped, as TRL's RewardTrainer does, under `longer_than_max_length`), "truncated" (pairs whose
    prompt / a response was cut: 0 here, since max_length drops rather than cuts), "max_length" (the one used:
    capped to the model's positions),
    "context_not_shown" (rows whose `context` the model did not see: no template stored, none given)}.
    Raises DataError when no pair is left to score.
    """
    from preflab.data.rows import load_rows
    from preflab.reward_models.context import reversal_accuracy
    from preflab.reward_models.data import tokenize_reward_pairs
    from preflab.reward_models.heads import head_from_config, reward_config

    model = model_dir_or_model
    if isinstance(model, (str, Path)):
        model, loaded = load_reward_dir(model)
        tokenizer = loaded if tokenizer is None else tokenizer
    if tokenizer is None:
        from preflab.errors import ConfigError

        raise ConfigError("evaluate_reward_model got an in-memory model without a tokenizer; pass tokenizer=.")
    max_length = capped_max_length(model, max_length)
    info = reward_config(model)
    head = head or head_from_config(info)
    template = info.get("context_template") if context_template == AUTO else context_template
    examples, row_report = load_rows(data, kind="pairwise", on_bad_row=on_bad_row, prompt_optional=True)
    from preflab.data.report import refuse_empty

    refuse_empty(row_report, "--data")  # no row at all: named with its split and file(s), not "no pair left to score"
    pairs, tok_report = tokenize_reward_pairs(examples, tokenizer, max_length=max_length, on_bad_row=on_bad_row,
                                              source=row_report.source, context_template=template)
    if not pairs:
        from preflab.errors import DataError

        skipped = {k: row_report.skipped.get(k, 0) + tok_report.skipped.get(k, 0)
                   for k in {**row_report.skipped, **tok_report.skipped}}
        from preflab.data.report import first_skipped_note

        raise DataError(f"{row_report.source or 'the eval data'}: no pair left to score ({row_report.total} rows; "
                        f"skipped: {skipped or 'none'}).{first_skipped_note(row_report, tok_report)} A reward model "
                        "is evaluated on preference pairs (prompt, chosen, rejected; a pair needs a non-empty chosen "
                        "and rejected that differ): fix the rows or point --data at other rows.")
    by_id = {ex.row_id: ex for ex in examples}
    kept = [by_id[p.row_id] for p in pairs]
    if scored is not None:
        scored.extend(kept)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    out_c, out_r = pair_outputs(model, pairs, pad_id, batch_size)
    model.train(was_training)
    logit = head.logit(out_c, out_r)
    correct = logit > 0
    result = {"accuracy": float(correct.float().mean()) if len(pairs) else float("nan"), "num_pairs": len(pairs),
              "mean_logit": float(logit.mean()) if len(pairs) else float("nan")}
    from preflab.loops.batches import stack_extras

    from preflab.reward_models.calibration import calibration

    result.update(calibration(logit))  # ece, brier and the reliability bins of P(chosen > rejected)
    trained = head.loss(out_c, out_r, stack_extras(pairs))  # the training run's eval_loss, eval_margin, ... (TRL's)
    result["loss"] = float(trained.loss)
    result.update({k: float(v) for k, v in batch_extrema(trained.metrics, out_c, out_r, batch_size).items()
                   if k != "accuracy"})
    for field in group_fields:
        groups = _groups(kept, correct, field)
        if groups:
            result[f"per_{field}"] = groups
    reversal = reversal_accuracy(kept, correct)
    if reversal is not None:
        result["reversal_accuracy"] = reversal
    skipped = dict(row_report.skipped)
    for reason, count in tok_report.skipped.items():
        skipped[reason] = skipped.get(reason, 0) + count
    result["skipped"] = skipped
    from preflab.reward_models.data import missing_margins

    result["margin_missing"] = missing_margins(examples)
    result["truncated"] = {"prompt": tok_report.prompt_truncated, "response": tok_report.response_truncated}
    result["max_length"] = max_length  # capped to the model's positions
    if not template:  # rows with a context the model does not see (it was trained without contexts)
        unseen = sum(1 for ex in kept if ex.extras.get("context"))
        if unseen:
            result["context_not_shown"] = unseen
    return result
