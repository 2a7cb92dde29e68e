"""Held-out evaluation of a DPA attribute reward model (`reward_head: multi_objective`; Wang et al. 2024,
arXiv:2402.18571), for `preflab eval RUN --task reward` (preflab.reward_models.cli.evaluate_reward_split).

Two kinds of rows, told apart row by row (a file may hold both):

    rated row        {prompt, response, ratings: {attribute: value}} (or the attributes as top-level columns; the
                     run's reward_head_params.response_field), the training rows' form, checked as training checks
                     them (multi_objective.rated_row)
    direction pair   {prompt, chosen, rejected, direction}: `direction` is one weight per attribute, a list in the
                     model's attribute order or {attribute: weight} (absent attributes weigh 0); or
                     {prompt, chosen, rejected, direction_angle}: an angle t in degrees, for a model of two
                     attributes, v = (cos t, sin t) as the paper parameterises its (helpfulness, verbosity)
                     directions (multi_objective.direction; the same floats as the list [cos t, sin t])

A row with a `context` (a criterion, scenario or profile, as preflab.reward_models.context's rows carry) is a bad
row: the attribute model scores r(x, y) from the prompt and response alone and its training rows have no context
(multi_objective.refuse_context, the rule training applies too), so its score could not follow the context.

Metrics, with r(x, y) in R^d the head's outputs and o_ia = 1 where row i rates attribute a:

    mse/<a>  = sum_i o_ia (r_a(x_i, y_i) - rating_ia)^2 / sum_i o_ia      (the training run's eval_mse/<a>)
    mse      = sum_ia o_ia (r_a - rating_a)^2 / sum_ia o_ia              (the training run's eval_mse: pooled)
    mae/<a>, mae: the same with |r_a - rating_a|
    ranking_accuracy/<a>: over the pairs of rated rows with the same prompt that both rate a with different values,
                     the fraction whose outputs r_a order them as the ratings do (equal outputs count as wrong, as
                     the pairwise eval counts a tie); ranking_accuracy pools the pairs of every attribute
    direction_accuracy: over the direction pairs, the fraction with v^T r(x, chosen) > v^T r(x, rejected), the
                     score RewardModel(direction=v) and directional_best_of_n rank by (ties wrong); direction_margin
                     is the mean of v^T r(x, chosen) - v^T r(x, rejected); per_direction: the accuracy and count
                     of each direction given (the same vector, however given, is one direction), with a short
                     label (direction_labels) that names its metric reward_model/direction/<label>/accuracy

Responses are tokenized as the run tokenized its rows (prompt + response as one text, cut by max_length /
max_prompt_length / max_completion_length, the cuts counted), so on the rows of the run's eval set the mse numbers
equal its final eval_mse and eval_mse/<a>.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from preflab.data.report import BadRowPolicy, DataReport, RowProblem
from preflab.errors import DataError

EVAL_ROW_KIND = "rated rows / direction pairs"
ANGLE_FIELD = "direction_angle"  # a pair's direction as an angle in degrees (angle_direction)


@dataclass
class DirectionPair:
    """One held-out pair judged along `direction` (one weight per attribute)."""

    row_id: int
    prompt: object
    chosen: object
    rejected: object
    direction: list[float]


def _finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def direction_weights(value, attributes: Sequence[str]) -> list[float]:
    """A row's `direction` as one weight per attribute: a list of len(attributes) finite numbers (the model's
    attribute order) or {attribute: number} (absent attributes 0). A RowProblem naming the field otherwise, or when
    every weight is 0 (no score to rank by)."""
    names = list(attributes)
    how = (f"Give one weight per attribute, a list in the model's order {names} or an object "
           f"{{attribute: weight}} (e.g. {{{names[0]!r}: 1.0}})"
           + (f", or {ANGLE_FIELD}: t in degrees for (cos t, sin t)." if len(names) == 2 else "."))
    if value is None:
        raise RowProblem("missing_direction", "direction", "a pair row needs the direction it is judged along, and "
                         "the field 'direction' is missing", how)
    if isinstance(value, dict):
        unknown = [str(k) for k in value if k not in names]
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], names, n=1, cutoff=0.8)
            raise RowProblem("bad_direction", f"direction.{unknown[0]}", f"{unknown[0]!r} is not an attribute of the "
                             f"model ({names})" + (f"; a misspelt {close[0]!r}?" if close else ""), how)
        weights = [value.get(a, 0) for a in names]
        fields = [f"direction.{a}" for a in names]
    elif isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise RowProblem("bad_direction", "direction", f"the direction has {len(value)} weights; the model has "
                             f"{len(names)} attributes {names}", how)
        weights, fields = list(value), [f"direction[{i}]" for i in range(len(names))]
    else:
        raise RowProblem("bad_direction", "direction", f"the direction is a {type(value).__name__}, not a list or "
                         "an object", how)
    for name, weight in zip(fields, weights):
        if not _finite(weight):
            raise RowProblem("bad_direction", name, f"the weight {weight!r} is not a finite number", how)
    if not any(weights):
        raise RowProblem("bad_direction", "direction", "every weight is 0, so the direction scores every response "
                         "0", how)
    return [float(w) for w in weights]


def angle_direction(value, attributes: Sequence[str]) -> list[float]:
    """The unit vector v = (cos t, sin t) of a row's `direction_angle` t (degrees), DPA's parameterisation of
    directions in the plane of two attributes (Wang et al. 2024, Sec. 3; multi_objective.direction), in the model's
    attribute order. A RowProblem naming the field when the model has other than two attributes (an angle names no
    direction among three or more) or t is not a finite number."""
    names = list(attributes)
    if len(names) != 2:
        raise RowProblem("angle_needs_two_attributes", ANGLE_FIELD, f"an angle gives a direction (cos t, sin t) in "
                         f"the plane of two attributes; the model has {len(names)} attributes {names}",
                         "Give `direction` instead: one weight per attribute, a list in the model's order or "
                         "{attribute: weight}.")
    if not _finite(value):
        raise RowProblem("bad_direction", ANGLE_FIELD, f"the angle {value!r} is not a finite number of degrees",
                         f"Give the angle in degrees, e.g. 30 for v = (cos 30, sin 30) over {names}.")
    from preflab.reward_models.multi_objective import direction

    return direction(float(value), 2).tolist()


def row_direction(row: dict, attributes: Sequence[str]) -> list[float]:
    """A pair row's direction, one weight per attribute: from `direction` (direction_weights) or `direction_angle`
    (angle_direction), a null one counting as absent (a file whose rows give either has both columns); a
    RowProblem naming `direction_angle` when the row gives both (which would it be judged along?)."""
    weights, angle = row.get("direction"), row.get(ANGLE_FIELD)
    if angle is None:
        return direction_weights(weights, attributes)
    if weights is not None:
        raise RowProblem("two_directions", ANGLE_FIELD, f"the row gives both direction={weights!r} and "
                         f"{ANGLE_FIELD}={angle!r}", "Give one of the two.")
    return angle_direction(angle, attributes)


def direction_pair(row: dict, row_id: int, attributes: Sequence[str]) -> DirectionPair:
    """The DirectionPair of a row with `chosen` / `rejected`: prompt, chosen and rejected present and not empty, the
    two responses different, no context (multi_objective.refuse_context), and a direction (row_direction); a
    RowProblem naming the field otherwise."""
    from preflab.reward_models.multi_objective import refuse_context

    for name in ("prompt", "chosen", "rejected"):
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()) or value == []:
            raise RowProblem("missing_field" if value is None else "empty_field", name,
                             f"the field {name!r} is {'missing' if value is None else 'empty'}",
                             "A direction pair holds prompt, chosen, rejected and direction.")
    if row["chosen"] == row["rejected"]:
        raise RowProblem("identical", "rejected", "chosen and rejected are the same response",
                         "Give two different responses.")
    refuse_context(row)
    return DirectionPair(row_id, row["prompt"], row["chosen"], row["rejected"], row_direction(row, attributes))


def load_attribute_eval_rows(source, attributes: Sequence[str], *, split: str = "train",
                             response_field: str = "response", on_bad_row: str = "error"):
    """(rated rows, direction pairs, DataReport, {rating key not among attributes: rows}) of `source` (a RowReader
    preflab eval opened, a file, folder, hub name or list of rows). A row with `chosen` or `rejected` is a direction
    pair (direction_pair), any other a rated row (multi_objective.rated_row); a bad row is a DataError naming file,
    row and field, or skipped and counted under on_bad_row "skip"."""
    from preflab.data.sources import open_reader
    from preflab.reward_models.multi_objective import rated_row

    reader = open_reader(source, split=split)
    report = DataReport(source=reader.name, kind=EVAL_ROW_KIND)
    policy = BadRowPolicy(on_bad_row, report)
    unused: dict[str, int] = {}
    rated, pairs = [], []

    def build(raw):
        row = raw.data
        if "chosen" in row or "rejected" in row:
            return direction_pair(row, raw.row_id, attributes)
        return rated_row(row, attributes, response_field, unused)

    for _, built in policy.accepted(reader, build):
        (pairs if isinstance(built, DirectionPair) else rated).append(built)
    report.examples = len(rated) + len(pairs)
    return rated, pairs, report, unused


def rating_errors(outputs: Tensor, targets: Tensor, observed: Tensor, attributes: Sequence[str]) -> dict:
    """{"mse", "mae", "mse/<a>", "mae/<a>"} over the observed ratings (see the module docstring; an attribute no row
    rates has no per-attribute entry); outputs, targets [N, d], observed bool [N, d]."""
    outputs, targets = outputs.double(), targets.double()
    diff = torch.where(observed, outputs - targets, torch.zeros_like(outputs))
    counts = observed.sum(0)
    total = int(counts.sum())
    result = {}
    if total:
        result["mse"] = float((diff ** 2).sum() / total)
        result["mae"] = float(diff.abs().sum() / total)
    for i, name in enumerate(attributes):
        if counts[i]:
            result[f"mse/{name}"] = float((diff[:, i] ** 2).sum() / counts[i])
            result[f"mae/{name}"] = float(diff[:, i].abs().sum() / counts[i])
    return result


def ranking_pairs(outputs: Tensor, targets: Tensor, observed: Tensor, prompts: Sequence,
                  attributes: Sequence[str]) -> tuple[dict, dict]:
    """({"ranking_accuracy", "ranking_accuracy/<a>"}, {"ranking_pairs/<a>": formed, "ranking_tied_ratings/<a>":
    pairs not formed because the two ratings are equal}): every two rated rows with the same prompt (compared as
    loaded: text or messages) that both rate a; a formed pair is right when (r_a(i) - r_a(j)) (rating_i - rating_j)
    > 0. Counted over ordered pairs (each unordered one twice) in blocks of rows, so a prompt with many responses
    costs memory of a block, not of its square."""
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(json.dumps(prompt, sort_keys=True, default=repr), []).append(i)
    outputs, targets = outputs.double(), targets.double()
    metrics, counts = {}, {}
    right_all = formed_all = 0
    for a, name in enumerate(attributes):
        right = formed = tied = 0  # ordered pairs i != j
        for rows in groups.values():
            index = torch.tensor(rows)[observed[rows, a]]
            score, rating = outputs[index, a], targets[index, a]
            for start in range(0, len(index), RANKING_BLOCK):
                d_rating = rating[start:start + RANKING_BLOCK, None] - rating[None, :]
                d_score = score[start:start + RANKING_BLOCK, None] - score[None, :]
                formed += int((d_rating != 0).sum())
                tied += int((d_rating == 0).sum())
                right += int((d_rating * d_score > 0).sum())
            tied -= len(index)  # the diagonal (a row with itself)
        formed, tied, right = formed // 2, tied // 2, right // 2
        counts[f"ranking_pairs/{name}"], counts[f"ranking_tied_ratings/{name}"] = formed, tied
        if formed:
            metrics[f"ranking_accuracy/{name}"] = right / formed
        right_all, formed_all = right_all + right, formed_all + formed
    if formed_all:
        metrics["ranking_accuracy"] = right_all / formed_all
    return metrics, counts


RANKING_BLOCK = 1024  # rows per block of ranking_pairs' pairwise differences


def direction_scores(out_chosen: Tensor, out_rejected: Tensor, directions: Tensor) -> dict:
    """{"direction_accuracy", "direction_margin"} of direction pairs: v^T r(chosen) > v^T r(rejected) (ties wrong),
    and the mean of the difference; rows [P, d] each."""
    directions = directions.double()
    margin = (out_chosen.double() * directions).sum(-1) - (out_rejected.double() * directions).sum(-1)
    return {"direction_accuracy": float((margin > 0).double().mean()), "direction_margin": float(margin.mean())}


def direction_label(direction: Sequence[float]) -> str:
    """A short name of a direction for the terminal and the report: a unit vector of two attributes by its angle
    t = atan2(v_2, v_1) in degrees ("30deg", 6 significant digits, as DPA names its directions), any other by its
    weights to 4 significant digits ("[0.5,0.5]")."""
    if len(direction) == 2 and abs(math.hypot(*direction) - 1) < 1e-9:
        return f"{math.degrees(math.atan2(direction[1], direction[0])) + 0.0:.6g}deg"
    return "[" + ",".join(f"{w:.4g}" for w in direction) + "]"


def direction_labels(keys: Sequence[str]) -> dict[str, str]:
    """{per_direction key (a direction as a JSON list): its direction_label}; directions whose short labels
    coincide (weights equal to 4 significant digits) are labelled by their whole key, so that no two directions'
    metrics share a name."""
    short = {key: direction_label(json.loads(key)) for key in keys}
    seen: dict[str, int] = {}
    for label in short.values():
        seen[label] = seen.get(label, 0) + 1
    return {key: label if seen[label] == 1 else key for key, label in short.items()}


def per_direction(pairs: Sequence[DirectionPair], out_chosen: Tensor, out_rejected: Tensor) -> dict:
    """{direction as a JSON list: {"accuracy", "num_pairs", "label"}} for every direction the pairs give, in the
    order first given (label: direction_labels)."""
    index: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        index.setdefault(json.dumps(pair.direction), []).append(i)
    labels = direction_labels(list(index))
    out = {}
    for key, rows in index.items():
        v = torch.tensor([pairs[i].direction for i in rows])
        scores = direction_scores(out_chosen[rows], out_rejected[rows], v)
        out[key] = {"accuracy": scores["direction_accuracy"], "num_pairs": len(rows), "label": labels[key]}
    return out


def per_direction_metrics(per_direction: dict) -> dict:
    """{"direction/<label>/accuracy": accuracy} of per_direction's entries, the names preflab eval's metrics (and so
    its terminal summary and `preflab report`'s eval table) give them, as the pairwise eval's per-subset ones."""
    return {f"direction/{entry['label']}/accuracy": entry["accuracy"] for entry in per_direction.values()}


def per_direction_lines(per_direction: dict, width: int = 110) -> list[str]:
    """The terminal's compact form of per_direction: one line "per direction (accuracy, pairs): 0deg 1.0000 (2),
    [0.5,0.5] 0.5000 (4), ..." (wrapped at `width`) in place of a line per direction; [] without pairs."""
    if not per_direction:
        return []
    import textwrap

    items = ", ".join(f"{e['label']} {e['accuracy']:.4f} ({e['num_pairs']})" for e in per_direction.values())
    return textwrap.wrap(f"per direction (accuracy, pairs): {items}", width, initial_indent="  ",
                         subsequent_indent="    ", break_on_hyphens=False)


def score_items(model, items, pad_id: int, batch_size: int) -> Tensor:
    """[N, d] head outputs of tokenized (prompt, response) items (RatedItems), batched and padded as the training
    run's eval (multi_objective.collate_rated), no gradient, in float32 or float64, on the CPU."""
    from preflab.reward_models.heads import sequence_outputs
    from preflab.reward_models.multi_objective import collate_rated

    device = next(model.parameters()).device
    chunks = []
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = collate_rated(items[start:start + batch_size], pad_id)
            chunks.append(sequence_outputs(model, batch.input_ids.to(device), batch.attention_mask.to(device)).cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def _side_items(pairs: Sequence[DirectionPair], tokenizer, attributes, settings: dict, source: str):
    """RatedItems (no ratings) of each pair's chosen (2i) and rejected (2i + 1) side, and their TokenizeReport."""
    from preflab.data.examples import UnpairedExample
    from preflab.data.tokenize import tokenize_unpaired
    from preflab.reward_models.multi_objective import RatedItem

    examples = [UnpairedExample(2 * i + side, p.prompt, p.rejected if side else p.chosen, not side)
                for i, p in enumerate(pairs) for side in (0, 1)]
    items, report = tokenize_unpaired(examples, tokenizer, source=source, joint_only=True, **settings)
    d = len(attributes)
    return [RatedItem(it.row_id, it.prompt_ids, it.completion_ids, [0.0] * d, [False] * d) for it in items], report


def evaluate_attribute_model(model, data, tokenizer, *, batch_size: int = 8, max_length: int | None = 1024,
                             max_prompt_length: int | None = None, max_completion_length: int | None = None,
                             truncation_mode: str | None = None, response_field: str = "response",
                             on_bad_row: str = "error", scored: list | None = None) -> dict:
    """The held-out metrics of a DPA attribute model (module docstring) on `data`'s rated rows and direction pairs.

    model: the loaded model (its config's preflab_reward names the attributes); data: a RowReader, file, folder, hub
    name or list of rows; the length limits cut as training cuts (max_length capped to the model's positions).
    scored: a list to receive (prompt, [responses]) of each row scored (rated: its response; pair: both), for the
    count of rows the run trained on. Returns {"head", "attributes", "num_rated_rows", "num_pairs", the metrics,
    "counts": {"ratings/<a>", "ranking_pairs/<a>", "ranking_tied_ratings/<a>"}, "per_direction", "skipped",
    "truncated": {"prompt", "response"}, "max_length", "ratings_not_scored": {key: rows}}. A DataError when no row
    is left to score."""
    from preflab.data.report import first_skipped_note
    from preflab.reward_models.eval import capped_max_length
    from preflab.reward_models.heads import reward_config
    from preflab.reward_models.multi_objective import tokenize_rated_report

    attributes = list(reward_config(model).get("attributes") or [])
    rated, pairs, report, unused = load_attribute_eval_rows(data, attributes, response_field=response_field,
                                                            on_bad_row=on_bad_row)
    from preflab.data.report import refuse_empty

    refuse_empty(report, "--data")  # no row at all: named with its split and file(s), not "no pair left to score"
    if not rated and not pairs:
        raise DataError(f"{report.source or 'the eval data'}: no row left to score ({report.total} rows; skipped: "
                        f"{dict(report.skipped) or 'none'}).{first_skipped_note(report)} A DPA attribute reward model "
                        f"({attributes}) is evaluated on rated rows {{prompt, {response_field}, ratings: {{attribute: "
                        "value}}} and on pairs {prompt, chosen, rejected, direction or direction_angle}: fix the rows "
                        "or point --data at other rows.")
    max_length = capped_max_length(model, max_length)
    settings = dict(max_length=max_length, max_prompt_length=max_prompt_length,
                    max_completion_length=max_completion_length, truncation_mode=truncation_mode)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    result = {"head": "multi_objective", "attributes": attributes, "num_rated_rows": len(rated),
              "num_pairs": len(pairs)}
    counts, cut = {}, {"prompt": 0, "response": 0}
    if rated:
        items, tok = tokenize_rated_report(rated, tokenizer, attributes, response_field=response_field,
                                           source=report.source, every_attribute_rated=False, **settings)
        outputs = score_items(model, items, pad_id, batch_size)
        targets, observed = torch.tensor([it.ratings for it in items]), torch.tensor([it.observed for it in items])
        result.update(rating_errors(outputs, targets, observed, attributes))
        ranking, ranked = ranking_pairs(outputs, targets, observed, [rated[it.row_id]["prompt"] for it in items],
                                        attributes)
        result.update(ranking)
        counts.update({f"ratings/{a}": int(observed[:, i].sum()) for i, a in enumerate(attributes)}, **ranked)
        cut = {"prompt": tok.prompt_truncated, "response": tok.response_truncated}
    if pairs:
        items, tok = _side_items(pairs, tokenizer, attributes, settings, report.source)
        outputs = score_items(model, items, pad_id, batch_size)
        directions = torch.tensor([p.direction for p in pairs])
        result.update(direction_scores(outputs[0::2], outputs[1::2], directions))
        result["per_direction"] = per_direction(pairs, outputs[0::2], outputs[1::2])
        cut = {"prompt": cut["prompt"] + tok.prompt_truncated, "response": cut["response"] + tok.response_truncated}
    model.train(was_training)
    if scored is not None:
        scored.extend([(r["prompt"], [r[response_field]]) for r in rated] +
                      [(p.prompt, [p.chosen, p.rejected]) for p in pairs])
    result.update({"counts": counts, "skipped": dict(report.skipped), "truncated": cut, "max_length": max_length,
                   "ratings_not_scored": unused})
    if report.skipped_examples:
        result["first_skipped"] = first_skipped_note(report).strip()
    return result


def attribute_eval_notes(result: dict, max_length) -> list[str]:
    """Terminal notes for what the DPA metrics do not cover: rows skipped (by reason, the first named), responses
    cut by the length limits, rating keys that are not attributes, and attributes with no rating or no ranking
    pair."""
    notes = []
    if result.get("skipped"):
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(result["skipped"].items()))
        notes.append(f"{sum(result['skipped'].values())} rows skipped and not scored ({reasons}); the metrics are "
                     f"over the {result['num_rated_rows']} rated rows and {result['num_pairs']} pairs left. "
                     f"{result.get('first_skipped', '')}".rstrip())
    used = result.get("max_length", max_length)
    capped = f" (--max-length {max_length} capped to the model's positions)" if used != max_length else ""
    cut = result.get("truncated", {})
    if cut.get("prompt") or cut.get("response"):
        notes.append(f"max_length={used}{capped} cut {cut.get('prompt', 0)} prompts and {cut.get('response', 0)} "
                     "responses (a cut response is scored at its cut, as the run cut its rows); raise --max-length")
    if result.get("ratings_not_scored"):
        from preflab.reward_models.multi_objective import unused_ratings_note

        notes.append(unused_ratings_note(result["ratings_not_scored"], result["attributes"], "--data", used="scored",
                                         or_else="train a model with that attribute").rstrip("."))
    counts = result.get("counts", {})
    if result.get("num_rated_rows"):
        unrated = [a for a in result["attributes"] if not counts.get(f"ratings/{a}")]
        if unrated:
            notes.append(f"no rated row rates {unrated}: those attributes have no mse, mae or ranking accuracy")
        unranked = [a for a in result["attributes"] if counts.get(f"ratings/{a}") and
                    not counts.get(f"ranking_pairs/{a}")]
        if unranked:
            notes.append(f"no two rated rows of one prompt rate {unranked} differently, so those attributes have no "
                         "ranking_accuracy (it compares responses to the same prompt)")
    return notes


def attribute_training_rows(cfg: dict):
    """The (prompt, response) rows the DPA run of config `cfg` (its saved config.yaml) trained on, for `preflab eval
    --task reward`'s overlap count (preflab.eval.run.run_training_rows): its dataset_name's rated rows (its
    reward_head_params' attributes and response_field) read as train_attribute_reward reads them (bad rows skipped),
    less the rows eval_fraction held out with its seed (data.holdout.split_eval_fraction, as
    data.eval_set.train_and_eval holds them out)."""
    from preflab.eval.run import run_training_rows
    from preflab.reward_models.multi_objective import load_rated

    params = dict(cfg.get("reward_head_params") or {})
    attributes, response_field = list(params.get("attributes") or []), params.get("response_field", "response")

    def read(name, split):
        rows, report = load_rated(name, attributes, split=split, response_field=response_field, on_bad_row="skip")
        return [(r["prompt"], r[response_field]) for r in rows], report

    return run_training_rows(cfg, read, holds="rated rows")


def attribute_overlap_rule():
    """The OverlapRule (preflab.eval.run) of a DPA eval: rows share a prompt, or have a response the run trained on
    ((prompt, response) of a training row; data.overlap.response_overlap_counts)."""
    from preflab.data.overlap import response_overlap_counts
    from preflab.eval.run import OverlapRule

    return OverlapRule(rows="rows", same_row="a rated row's response, or a pair's chosen or rejected, with its prompt "
                       "is a training row's", counts=response_overlap_counts,
                       trained_rows="have a response the run trained on", size="training_rows")
