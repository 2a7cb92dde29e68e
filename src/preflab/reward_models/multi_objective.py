"""DPA: multi-objective reward model, directional scoring, and the directional rejection-sampling data builder.

Wang, H., Lin, Y., Xiong, W., Yang, R., Diao, S., Qiu, S., Zhao, H., Zhang, T. (2024), "Arithmetic Control of
LLMs for Diverse User Preferences: Directional Preference Alignment with Multi-Objective Rewards",
arXiv:2402.18571 (ACL 2024), Sec. 3:

    reward model   r(x, y) in R^d, a linear head on the last hidden state, trained by regression
                   L = mean over observed attributes a of (r_a(x, y) - rating_a)^2   (then the mean over rows;
                   attribute_reduction "attribute": per attribute over the rows rating it, then over attributes)
    direction      a unit vector v in R^d; in the (helpfulness, verbosity) plane v = (cos t, sin t), shown to the
                   policy as integer weights (round(100 cos t), round(100 sin t)) in the system prompt
    directional    R(x, y | v) = v^T r(x, y)
    RSF data       for each prompt and direction: n candidates, keep y* = argmax_y v^T r(x, y); the SFT row is
                   (system prompt of v, x) -> y*  (best-of-n under the direction; iterate to refine the policy)

Rows for the regression: {prompt, response, ratings: {attribute: value}} (or the attributes as top-level columns);
a missing or null attribute is not trained on. The head is `AutoModelForSequenceClassification` with
num_labels = d, so the saved model loads with plain transformers and `RewardModel(direction=v)` scores along v.
The system prompt is the DPA README's template verbatim (before: a shortened wording with a trailing period).
Audit 2026-12 (paper-audit-4): the DPA README (RLHFlow/Directional-Preference-Alignment@bb19318) now names
RLHFlow/RLHF-Reward-Modeling `armo-rm` as its multi-objective reward-model training code: @fc39179
`armo-rm/stage-1_prepare.py` takes the last token's last hidden state of a frozen BT reward model
(FsfairX-LLaMA3-RM-v0.1) with None ratings as NaN; `stage-1_train.py` fits one Ridge(fit_intercept=False) per
attribute on the rows that rate it (80/20 split, alpha from 1e-4..1e4 by validation MSE). preflab trains the model
end to end (or LoRA) without ridge; `attribute_reduction="attribute"` weights the attributes as those fits do.
Deviation from the paper: ratings are regressed on the scale given (the paper's RM maps HelpSteer 0-4 to 0-100 by
20 s + 10; rescale the rows to do the same); RSF iteration counts and the direction law are the caller's choice.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from preflab.data.examples import Text, UnpairedExample
from preflab.data.report import BadRowPolicy, DataReport, RowProblem
from preflab.errors import ConfigError, DataError
from preflab.objectives.base import ObjectiveOutput
from preflab.reward_models.context import CONTEXT_FIELD

# The exact system prompt the released DPA model was trained with (RLHFlow/Directional-Preference-Alignment README,
# "System Prompt: Template"): no trailing period; a direction-conditioned checkpoint expects it verbatim.
DPA_SYSTEM = ("You are a helpful, respectful, and honest assistant who always responds to the user in a harmless way. "
              "Your response should maximize weighted rating = {terms}")


ATTRIBUTE_REDUCTIONS = ("row", "attribute")


def check_attribute_reduction(value) -> str:
    """`value` if it is one of ATTRIBUTE_REDUCTIONS; otherwise a ConfigError naming the option and the choices."""
    if value not in ATTRIBUTE_REDUCTIONS:
        raise ConfigError(f"reward_head_params.attribute_reduction={value!r}: use one of {list(ATTRIBUTE_REDUCTIONS)} "
                          "(row: each row's mean over its rated attributes; attribute: each attribute's mean over the "
                          "rows that rate it).")
    return value


def check_attribute_reduction_batches(cfg, reduction: str) -> None:
    """Refuse `attribute` when one optimizer step sums several micro-batches (gradient accumulation or several
    ranks): its per-attribute means are over one micro-batch's rows, so a split batch would train a different
    weighting than the whole batch (the run would not equal its one-process, one-micro-batch form)."""
    from preflab.launch_env import launched_world_size

    accumulation, world = int(cfg.gradient_accumulation_steps or 1), launched_world_size()
    if reduction == "attribute" and (accumulation > 1 or world > 1):
        raise ConfigError(f"reward_head_params.attribute_reduction='attribute' averages each attribute over one "
                          f"micro-batch's rows; this run splits each step over gradient_accumulation_steps="
                          f"{accumulation} and {world} process(es), which would weight the attributes by each part's "
                          "counts instead of the whole batch's. Use one process and gradient_accumulation_steps: 1 "
                          "(raise per_device_train_batch_size instead), or attribute_reduction: row.")


@dataclass(frozen=True)
class MultiObjectiveHead:
    """Regression head over named attributes (D = number of attributes).

    reduction "row" (the default): each row's mean squared error over the attributes it rates, then the mean over
    the rows. reduction "attribute": each attribute's mean squared error over the rows of the batch that rate it,
    then the mean over the attributes rated in the batch; a linear head on fixed features then has each attribute's
    unweighted least-squares minimiser, as RLHFlow/RLHF-Reward-Modeling@fc39179 `armo-rm/stage-1_train.py` fits one
    regression per attribute on the rows that rate it (the training code the DPA README, RLHFlow/Directional-
    Preference-Alignment@bb19318, points to). The two agree when every row rates the same attributes."""

    attributes: tuple[str, ...]
    reduction: str = "row"
    kind = "multi_objective"

    def __post_init__(self):
        check_attribute_reduction(self.reduction)

    @property
    def num_outputs(self) -> int:
        return len(self.attributes)

    @staticmethod
    def squared_errors(outputs: Tensor, targets: Tensor, observed: Tensor) -> Tensor:
        """[B, d] (r_a(x, y) - rating_a)^2 where the rating is observed, 0 elsewhere."""
        return torch.where(observed, (outputs - targets.to(outputs.dtype)) ** 2, torch.zeros_like(outputs))

    def loss(self, outputs: Tensor, targets: Tensor, observed: Tensor) -> ObjectiveOutput:
        """outputs, targets [B, d]; observed bool [B, d]. `losses` [B] are the rows' shares, whose mean is the loss:
        row: sum_a o_ia e_ia / n_i (n_i = attributes row i rates); attribute: B sum_a o_ia e_ia / (m_a d') (m_a = rows
        rating a, d' = attributes rated in the batch), e = squared error, o = observed."""
        sq = self.squared_errors(outputs, targets, observed)
        observed_counts = observed.sum(0)  # mse/<attribute>: a mean over the rows that rate it (its count)
        counts = observed_counts.clamp_min(1)
        if self.reduction == "row":
            losses = sq.sum(-1) / observed.sum(-1).clamp_min(1)
        else:
            rated = (observed_counts > 0).sum().clamp_min(1)
            losses = (sq / counts.to(sq.dtype)).sum(-1) * (sq.shape[0] / rated.to(sq.dtype))
        metrics = {"mse": losses.detach().mean()}
        metrics.update({f"mse/{a}": (sq[:, i].detach().sum() / counts[i]) for i, a in enumerate(self.attributes)})
        return ObjectiveOutput(losses.mean(), losses, metrics,
                               {f"mse/{a}": observed_counts[i] for i, a in enumerate(self.attributes)})

    def to_config(self) -> dict:
        return {"head": self.kind, "attributes": list(self.attributes), "attribute_reduction": self.reduction}


@dataclass
class RatedItem:
    """One tokenized (prompt, response) with its attribute ratings [d] and which of them are observed [d]."""

    row_id: int
    prompt_ids: list[int]
    response_ids: list[int]
    ratings: list[float]
    observed: list[bool]
    extras: dict = field(default_factory=dict)


@dataclass
class RatedBatch:
    input_ids: Tensor
    attention_mask: Tensor
    targets: Tensor
    observed: Tensor
    row_ids: list[int]
    causal_only: bool = False  # right padding only (LayoutBatch.causal_only): the step may drop the mask

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def tokenize_rated(rows: Sequence[dict], tokenizer, attributes: Sequence[str], max_length: int | None = 1024,
                   response_field: str = "response") -> list[RatedItem]:
    """Rows {prompt, response, ratings: {attr: value}} -> RatedItems (tokenized as preflab tokenizes responses)."""
    return tokenize_rated_report(rows, tokenizer, attributes, max_length=max_length,
                                 response_field=response_field)[0]


def tokenize_rated_report(rows: Sequence[dict], tokenizer, attributes: Sequence[str], *,
                          max_length: int | None = 1024, response_field: str = "response",
                          max_prompt_length: int | None = None, max_completion_length: int | None = None,
                          truncation_mode: str | None = None, source: str = "", every_attribute_rated: bool = True):
    """`tokenize_rated` and its TokenizeReport (prompts / responses cut to the length limits, counted).
    every_attribute_rated: an attribute no row rates is a DataError (training: its output would learn nothing);
    False for an eval set (preflab.reward_models.attribute_eval), which reports the attributes it has ratings of."""
    from preflab.data.tokenize import tokenize_unpaired

    examples, targets = [], []
    for i, row in enumerate(rows):
        if "prompt" not in row or response_field not in row:
            raise DataError(f"row {i}: a rated row needs 'prompt' and {response_field!r}. Fix the row.")
        ratings = row.get("ratings", row)
        values = [ratings.get(a) for a in attributes]
        if all(v is None for v in values):
            raise DataError(f"row {i}: none of the attributes {list(attributes)} is rated. Fix the row.")
        for name, v in zip(attributes, values):
            if v is not None and not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)):
                raise DataError(f"row {i}, field {name!r}: the rating {v!r} is not a finite number. Give a number, "
                                "or null when the row does not rate this attribute.")
        examples.append(UnpairedExample(i, row["prompt"], row[response_field], True))
        targets.append(values)
    unrated = [a for j, a in enumerate(attributes) if all(t[j] is None for t in targets)]
    if unrated and every_attribute_rated:  # its head output would be trained on nothing (and report mse 0)
        # the columns some row gives a value (load_rated's rows carry every attribute, None where not rated)
        seen = sorted({k for row in rows for k, v in row.get("ratings", row).items() if v is not None}
                      - {"prompt", response_field})
        raise DataError(f"{source + ': ' if source else ''}no row rates {unrated} (of the attributes "
                        f"{list(attributes)}); the rows rate {seen}. Fix the attribute names or the rows.")
    items, report = tokenize_unpaired(examples, tokenizer, max_length=max_length,
                                      max_prompt_length=max_prompt_length, truncation_mode=truncation_mode,
                                      max_completion_length=max_completion_length, source=source,
                                      joint_only=True)
    return [RatedItem(it.row_id, it.prompt_ids, it.completion_ids,
                      [float(v) if v is not None else 0.0 for v in targets[it.row_id]],
                      [v is not None for v in targets[it.row_id]]) for it in items], report


def collate_rated(items: Sequence[RatedItem], pad_id: int, pad_to_multiple_of: int | None = None) -> RatedBatch:
    from preflab.data.layout import padded

    layout = padded([(it.prompt_ids, it.response_ids) for it in items], pad_id,
                    pad_to_multiple_of=pad_to_multiple_of or 1)
    return RatedBatch(layout.input_ids, layout.attention_mask, torch.tensor([it.ratings for it in items]),
                      torch.tensor([it.observed for it in items]), [it.row_id for it in items], layout.causal_only)


def train_multi_objective(cfg, rows: Sequence[dict], attributes: Sequence[str], model=None, tokenizer=None,
                          eval_rows: Sequence[dict] = (), data_report: dict | None = None,
                          response_field: str = "response", attribute_reduction: str = "row") -> dict:
    """Train a d-attribute regression reward model with the shared reward loop; returns the summary dict.
    The model is `cfg.model_name_or_path` with d outputs, in `load_dtype`, with `model_init_kwargs`, LoRA under
    `use_peft` (merged at save), unless `model` is given. `attribute_reduction`: MultiObjectiveHead's reduction."""
    from preflab.reward_models.heads import sequence_outputs
    from preflab.reward_models.reward_run import (RewardRun, check_given_reward_model, reward_model_for_run,
                                                  step_outputs)

    head = MultiObjectiveHead(tuple(attributes), attribute_reduction)
    check_attribute_reduction_batches(cfg, attribute_reduction)
    check_given_reward_model(cfg, model, tokenizer)
    if tokenizer is None:
        from preflab.models.load import load_tokenizer

        tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code)
    model = reward_model_for_run(cfg, head.num_outputs, tokenizer, model)
    model.config.problem_type = "regression"
    model.config.id2label = dict(enumerate(attributes))  # AutoModelForSequenceClassification users see the names
    model.config.label2id = {a: i for i, a in enumerate(attributes)}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                    max_completion_length=cfg.max_completion_length, truncation_mode=cfg.truncation_mode,
                    response_field=response_field)
    items, tok_report = tokenize_rated_report(rows, tokenizer, attributes, source=cfg.dataset_name or "", **settings)
    print(f"preflab: tokenized: {tok_report.summary()}")
    data_report = {**(data_report or {}), "train_tokenize": tok_report.to_dict()}
    evals = []
    if eval_rows:
        evals, eval_tok = tokenize_rated_report(eval_rows, tokenizer, attributes,
                                                source=cfg.eval_dataset_name or cfg.dataset_name or "", **settings)
        print(f"preflab: eval tokenized: {eval_tok.summary()}")
        data_report["eval_tokenize"] = eval_tok.to_dict()

    def loss_fn(model, batch: RatedBatch) -> ObjectiveOutput:
        device = next(model.parameters()).device
        out = step_outputs(model, batch, batch.input_ids.to(device), batch.attention_mask.to(device))
        return head.loss(out, batch.targets.to(device), batch.observed.to(device))

    def evaluate(model) -> dict:
        """Squared errors and observed counts summed over the whole eval set (batches of per_device_eval_batch_size)
        before dividing: the means do not depend on the batch size."""
        total = None
        for start in range(0, len(evals), cfg.per_device_eval_batch_size):
            batch = collate_rated(evals[start:start + cfg.per_device_eval_batch_size], pad_id)
            device = next(model.parameters()).device
            out = sequence_outputs(model, batch.input_ids.to(device), batch.attention_mask.to(device)).float()
            observed = batch.observed.to(device)
            sq = head.squared_errors(out, batch.targets.to(device), observed)
            part = torch.stack([sq.sum(0), observed.sum(0).to(sq.dtype)])
            total = part if total is None else total + part
        per_attribute = total[0] / total[1].clamp_min(1)
        metrics = {"mse": float(total[0].sum() / total[1].sum().clamp_min(1))}
        metrics.update({f"mse/{a}": float(per_attribute[i]) for i, a in enumerate(attributes)})
        return metrics

    run = RewardRun(cfg, model, tokenizer, items, lambda chunk: collate_rated(chunk, pad_id, cfg.pad_to_multiple_of),
                    loss_fn,
                    evaluate if evals else None, head.to_config(), data_report)
    return run.train()


ATTRIBUTE_HEAD_FIELDS = ("attributes", "response_field", "attribute_reduction")


def attribute_head_params(cfg) -> tuple[tuple[str, ...], str]:
    """(attributes, response_field) from `reward_head_params` of a `reward_head: multi_objective` config
    (`attribute_reduction`: `attribute_reduction(cfg)`)."""
    params = dict(cfg.reward_head_params or {})
    unknown = sorted(set(params) - set(ATTRIBUTE_HEAD_FIELDS))
    if unknown:
        raise ConfigError(f"reward_head_params: {unknown} are not fields of reward_head: multi_objective (it has "
                          f"{list(ATTRIBUTE_HEAD_FIELDS)}).")
    attributes = params.get("attributes")
    if (not isinstance(attributes, (list, tuple)) or not attributes
            or not all(isinstance(a, str) and a for a in attributes)):
        raise ConfigError("reward_head: multi_objective needs reward_head_params.attributes, a non-empty list of the "
                          "rated columns, e.g. {attributes: [helpfulness, verbosity]}; got "
                          f"{attributes!r}.")
    if len(set(attributes)) != len(attributes):
        raise ConfigError(f"reward_head_params.attributes {list(attributes)} names an attribute twice.")
    response_field = params.get("response_field", "response")
    if not isinstance(response_field, str) or not response_field:
        raise ConfigError(f"reward_head_params.response_field={response_field!r} must be a column name.")
    return tuple(attributes), response_field


def attribute_reduction(cfg) -> str:
    """`reward_head_params.attribute_reduction` of a `reward_head: multi_objective` config (default "row"),
    checked (MultiObjectiveHead's reductions)."""
    return check_attribute_reduction(dict(cfg.reward_head_params or {}).get("attribute_reduction", "row"))


def refuse_context(row: dict) -> None:
    """A RowProblem naming the field when the row gives a `context` (not null or empty: the rule
    preflab.reward_models.context.has_context applies to a context-aware model's rows). The attribute model scores
    r(x, y) from the prompt and response alone and no rated row trains it with a context, so a context would be
    ignored, and its ratings or direction (given under that context) compared with context-blind outputs."""
    context = row.get(CONTEXT_FIELD)
    if context:
        shown = repr(context) if len(repr(context)) <= 60 else repr(context)[:57] + "..."
        raise RowProblem("context_not_scored", CONTEXT_FIELD, f"the row gives the context {shown}, which a DPA "
                         "attribute reward model cannot read: it scores r(x, y) from the prompt and response alone "
                         "(its rows have no context), so the context would be ignored",
                         "Drop the field (or set it to null) to score the row without its context, or train and "
                         "evaluate a context-aware reward model (reward_head: bt on rows with a `context`; "
                         "preflab.reward_models.context) on such rows.")


def rated_row(row: dict, attributes: Sequence[str], response_field: str, unused: dict[str, int]) -> dict:
    """{prompt, response_field, ratings: {attribute: value or None}} of one rated row, checked (load_rated's rule,
    also the DPA eval's, preflab.reward_models.attribute_eval): a missing or empty prompt / response, ratings that are
    not an object, a row rating none of `attributes`, a rating that is not a finite number and a context
    (refuse_context) raise a RowProblem naming the field. Keys of a nested `ratings` object that are not attributes
    are counted in `unused`."""
    for name in ("prompt", response_field):
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()) or value == []:
            raise RowProblem("missing_field" if value is None else "empty_field", name,
                             f"the field {name!r} is {'missing' if value is None else 'empty'}",
                             f"Give the {name} (rated rows hold prompt, {response_field} and the ratings).")
    refuse_context(row)
    ratings = row.get("ratings", row)
    if not isinstance(ratings, dict):
        raise RowProblem("bad_ratings", "ratings", f"ratings is a {type(ratings).__name__}, not an object",
                         "Give {attribute: number} or the attributes as top-level columns.")
    values = {a: ratings.get(a) for a in attributes}
    if all(v is None for v in values.values()):
        raise RowProblem("unrated", "ratings", f"the row rates none of {list(attributes)}",
                         "Rate at least one attribute, or fix the attribute names in reward_head_params.")
    for name, v in values.items():
        if v is not None and not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)):
            raise RowProblem("bad_rating", name, f"the rating {v!r} is not a finite number",
                             "Give a number, or null when the row does not rate this attribute.")
    if isinstance(row.get("ratings"), dict):  # a nested object's other keys are ratings too, not trained on
        for key, value in ratings.items():
            if key not in values and value is not None:
                unused[str(key)] = unused.get(str(key), 0) + 1
    return {"prompt": row["prompt"], response_field: row[response_field], "ratings": values}


def load_rated(source, attributes: Sequence[str], *, split: str = "train", response_field: str = "response",
               on_bad_row: str = "error") -> tuple[list[dict], DataReport]:
    """Rated rows {prompt, <response_field>, ratings: {attr: value}} (or the attributes as top-level columns) of a
    file, directory, hub dataset or list, checked row by row: a missing prompt / response, a row rating none of
    `attributes` and a rating that is not a finite number are errors naming the file, row and field (or skipped
    and counted under `on_bad_row: skip`). Returns ({prompt, response_field, ratings} dicts, report)."""
    from preflab.data.sources import open_reader

    reader = open_reader(source, split=split)  # one preflab eval opened on its split is read as opened
    report = DataReport(source=reader.name, kind="rated")
    policy = BadRowPolicy(on_bad_row, report)
    unused: dict[str, int] = {}
    rows = [built for _, built in policy.accepted(reader, lambda raw: rated_row(raw.data, attributes, response_field,
                                                                                  unused))]
    report.examples = len(rows)
    report.ratings_not_trained = unused  # read by unused_ratings_note (not a DataReport field: only rated rows)
    return rows, report


def unused_ratings_note(unused: dict[str, int], attributes: Sequence[str], source: str, used: str = "trained on",
                        or_else: str = "add the attribute to reward_head_params.attributes") -> str | None:
    """The note for the keys of kept rows' `ratings` objects that are not among `attributes` ({key: rows}): their
    values are not `used` (trained on; the held-out eval: scored). A key close to an attribute's name is most likely
    that attribute misspelt (before, a row rating {"helpfulnes": 2, "verbosity": 1} trained verbosity alone without a
    word); other keys (HelpSteer's five attributes with two chosen) are said once; `or_else`: the other fix. None
    when every key is an attribute."""
    if not unused:
        return None
    import difflib

    def said(key: str, rows: int) -> str:
        close = difflib.get_close_matches(key, list(attributes), n=1, cutoff=0.8)
        return f"{key!r} in {rows} row(s)" + (f" (a misspelt {close[0]!r}?)" if close else "")

    keys = ", ".join(said(key, n) for key, n in sorted(unused.items()))
    return (f"{source}: ratings not among reward_head_params.attributes {list(attributes)} are not {used}: "
            f"{keys}. Fix a misspelt name in the rows, or {or_else}.")


def rated_overlap_report(rows: Sequence[dict], eval_rows: Sequence[dict]) -> dict:
    """data.overlap.overlap_report of a DPA run's rated rows ({prompt, response, ratings} dicts, load_rated):
    {"duplicate_train_examples": train rows repeating an earlier one (prompt, response and ratings),
    "eval_prompts_in_train": eval rows whose prompt is a training row's prompt}, kept in summary.json's data report as
    the pairwise reward runs keep theirs, so the report's headline does not call an eval set of training prompts
    held-out (report.headline.eval_set_seen_clause)."""
    from preflab.data.overlap import overlap_report

    return overlap_report(rows, eval_rows, prompt_of=lambda row: row["prompt"],
                          content_of=lambda row: json.dumps(row, sort_keys=True, ensure_ascii=False, default=repr))


def train_attribute_reward(cfg, model=None, tokenizer=None) -> dict:
    """`preflab train` with `task: reward` and `reward_head: multi_objective`: the DPA attribute reward model
    trained by regression on `dataset_name`'s rated rows (eval: `eval_dataset_name` or `eval_fraction`, logged as
    eval_mse and eval_mse/<attribute>). Options as for the pairwise heads; `reward_head_params` gives the
    attributes (and the response column, default `response`)."""
    from preflab.data.eval_set import train_and_eval
    from preflab.data.overlap import overlap_notes
    from preflab.data.report import refuse_empty
    from preflab.models.load import cap_max_length, max_positions

    attributes, response_field = attribute_head_params(cfg)
    reduction = attribute_reduction(cfg)
    if not cfg.dataset_name:
        raise ConfigError("dataset_name is empty; give the rated rows' file, directory or hub name.")
    cap_max_length(cfg, max_positions(model if model is not None else cfg.model_name_or_path,
                                      cfg.trust_remote_code))
    settings = dict(response_field=response_field, on_bad_row=cfg.on_bad_row)
    from preflab.data.configured_source import training_source

    rows, row_report = load_rated(training_source(cfg), attributes, split=cfg.dataset_split, **settings)
    refuse_empty(row_report, "dataset_name", cfg.dataset_name)
    rows, eval_rows, eval_report = train_and_eval(cfg, rows, lambda name, split: load_rated(name, attributes,
                                                                                            split=split, **settings))
    print(f"preflab: data: {row_report.summary()}")
    if eval_report is not None:
        print(f"preflab: data (eval): {eval_report.summary()}")
    report = {"train_rows": row_report.to_dict(), "skipped": dict(row_report.to_dict().get("skipped", {}))}
    for name, read in (("train", row_report), ("eval", eval_report)):
        unused = getattr(read, "ratings_not_trained", None)
        note = unused_ratings_note(unused, attributes, read.source) if read is not None else None
        if note:
            print(f"preflab: note: data{' (eval)' if name == 'eval' else ''}: {note}")
            report[f"{name}_ratings_not_trained"] = unused
    if eval_report is not None:
        report["eval_rows"] = eval_report.to_dict()
    # eval rows whose prompt is a training prompt, counted and said as the pairwise reward runs do
    # (reward_models.data.load_reward_pairs): the report's headline then does not call the eval set held-out
    report["overlap"] = rated_overlap_report(rows, eval_rows)
    for said in overlap_notes(report["overlap"], len(eval_rows), model="the reward model"):
        print(f"preflab: note: data: {said}")
    return train_multi_objective(cfg, rows, attributes, model=model, tokenizer=tokenizer, eval_rows=eval_rows,
                                 data_report=report, response_field=response_field, attribute_reduction=reduction)


def direction(theta_degrees: float, dims: int = 2, plane: tuple[int, int] = (0, 1)) -> Tensor:
    """Unit vector v in R^dims with v[plane[0]] = cos t, v[plane[1]] = sin t (t in degrees), zeros elsewhere."""
    v = torch.zeros(dims, dtype=torch.float64)
    t = math.radians(theta_degrees)
    v[plane[0]], v[plane[1]] = math.cos(t), math.sin(t)
    return v


def angle_to_weights(theta_degrees: float) -> tuple[int, int]:
    """The integer weights shown to the policy: (round(100 cos t), round(100 sin t))."""
    t = math.radians(theta_degrees)
    return round(100 * math.cos(t)), round(100 * math.sin(t))


def direction_system_prompt(theta_degrees: float, names: tuple[str, str] = ("helpfulness", "verbosity")) -> str:
    w = angle_to_weights(theta_degrees)
    return DPA_SYSTEM.format(terms=" + ".join(f"{n}*{x}" for n, x in zip(names, w)))


def condition_prompt(prompt: Text, system: str) -> Text:
    """The prompt a direction-conditioned policy sees: a system message (chat) or a text prefix."""
    if isinstance(prompt, list):
        return [{"role": "system", "content": system}, *prompt]
    return f"{system}\n\n{prompt}"


def directional_best_of_n(prompts: Sequence[Text], angles: Sequence[float],
                          ratings_fn: Callable[[list, list], Tensor],
                          candidates: Sequence[Sequence[Text]] | None = None,
                          generate: Callable[[Text, int], list] | None = None, n: int = 8,
                          plane: tuple[int, int] = (0, 1),
                          names: tuple[str, str] = ("helpfulness", "verbosity")) -> list[dict]:
    """SFT rows for direction-conditioned rejection sampling: one per (prompt, angle), the best of n under v^T r.

    ratings_fn(prompts, responses) -> [N, d] attribute ratings (e.g. `RewardModel(...).outputs`).
    candidates[i]: fixed responses for prompts[i], or generate(conditioned prompt, n) -> n responses.
    Rows: {prompt (conditioned), completion, source_prompt, angle, direction, score, ratings, n}; ties -> first.
    """
    if (candidates is None) == (generate is None):
        raise ConfigError("give exactly one of candidates= (responses per prompt) or generate= (a sampler).")
    rows = []
    for i, prompt in enumerate(prompts):
        for angle in angles:
            system = direction_system_prompt(angle, names)
            conditioned = condition_prompt(prompt, system)
            pool = list(candidates[i]) if candidates is not None else list(generate(conditioned, n))
            ratings = torch.as_tensor(ratings_fn([prompt] * len(pool), pool), dtype=torch.float64)
            v = direction(angle, ratings.shape[1], plane)
            scores = ratings @ v
            best = int(torch.argmax(scores))
            rows.append({"prompt": conditioned, "completion": pool[best], "source_prompt": prompt, "angle": angle,
                         "direction": v.tolist(), "score": float(scores[best]), "ratings": ratings[best].tolist(),
                         "n": len(pool)})
    return rows
