"""DPA: multi-objective reward model, directional scoring, and the directional rejection-sampling data builder.

Wang, H., Lin, Y., Xiong, W., Yang, R., Diao, S., Qiu, S., Zhao, H., Zhang, T. (2024), "Arithmetic Control of
LLMs for Diverse User Preferences: Directional Preference Alignment with Multi-Objective Rewards",
arXiv:2402.18571 (ACL 2024), Sec. 3:

    reward model   r(x, y) in R^d, a linear head on the last hidden state, trained by regression
                   L = mean over observed attributes a of (r_a(x, y) - rating_a)^2
    direction      a unit vector v in R^d; in the (helpfulness, verbosity) plane v = (cos t, sin t), shown to the
                   policy as integer weights (round(100 cos t), round(100 sin t)) in the system prompt
    directional    R(x, y | v) = v^T r(x, y)
    RSF data       for each prompt and direction: n candidates, keep y* = argmax_y v^T r(x, y); the SFT row is
                   (system prompt of v, x) -> y*  (best-of-n under the direction; iterate to refine the policy)

Rows for the regression: {prompt, response, ratings: {attribute: value}} (or the attributes as top-level columns);
a missing or null attribute is not trained on. The head is `AutoModelForSequenceClassification` with
num_labels = d, so the saved model loads with plain transformers and `RewardModel(direction=v)` scores along v.
The system prompt is the DPA README's template verbatim (before: a shortened wording with a trailing period).
Deviation from the paper: ratings are regressed on the scale given (the paper's RM maps HelpSteer 0-4 to 0-100 by
20 s + 10; rescale the rows to do the same); RSF iteration counts and the direction law are the caller's choice.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from preflab.data.examples import Text, UnpairedExample
from preflab.errors import ConfigError, DataError
from preflab.objectives.base import ObjectiveOutput

# The exact system prompt the released DPA model was trained with (RLHFlow/Directional-Preference-Alignment README,
# "System Prompt: Template"): no trailing period; a direction-conditioned checkpoint expects it verbatim.
DPA_SYSTEM = ("You are a helpful, respectful, and honest assistant who always responds to the user in a harmless way. "
              "Your response should maximize weighted rating = {terms}")


@dataclass(frozen=True)
class MultiObjectiveHead:
    """Regression head over named attributes (D = number of attributes)."""

    attributes: tuple[str, ...]
    kind = "multi_objective"

    @property
    def num_outputs(self) -> int:
        return len(self.attributes)

    def loss(self, outputs: Tensor, targets: Tensor, observed: Tensor) -> ObjectiveOutput:
        """outputs, targets [B, d]; observed bool [B, d]. Per-example mean squared error over observed attributes."""
        sq = torch.where(observed, (outputs - targets.to(outputs.dtype)) ** 2, torch.zeros_like(outputs))
        losses = sq.sum(-1) / observed.sum(-1).clamp_min(1)
        counts = observed.sum(0).clamp_min(1)
        metrics = {"mse": losses.detach().mean()}
        metrics.update({f"mse/{a}": (sq[:, i].detach().sum() / counts[i]) for i, a in enumerate(self.attributes)})
        return ObjectiveOutput(losses.mean(), losses, metrics)

    def to_config(self) -> dict:
        return {"head": self.kind, "attributes": list(self.attributes)}


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

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def tokenize_rated(rows: Sequence[dict], tokenizer, attributes: Sequence[str], max_length: int | None = 1024,
                   response_field: str = "response") -> list[RatedItem]:
    """Rows {prompt, response, ratings: {attr: value}} -> RatedItems (tokenized as preflab tokenizes responses)."""
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
    if unrated:  # its head output would be trained on nothing (and report mse 0)
        seen = sorted({k for row in rows for k in row.get("ratings", row)} - {"prompt", response_field})
        raise DataError(f"no row rates {unrated} (of the attributes {list(attributes)}); the rows rate {seen}. "
                        "Fix the attribute names or the rows.")
    items, _ = tokenize_unpaired(examples, tokenizer, max_length=max_length)
    return [RatedItem(it.row_id, it.prompt_ids, it.completion_ids,
                      [float(v) if v is not None else 0.0 for v in targets[it.row_id]],
                      [v is not None for v in targets[it.row_id]]) for it in items]


def collate_rated(items: Sequence[RatedItem], pad_id: int) -> RatedBatch:
    from preflab.data.layout import padded

    layout = padded([(it.prompt_ids, it.response_ids) for it in items], pad_id)
    return RatedBatch(layout.input_ids, layout.attention_mask, torch.tensor([it.ratings for it in items]),
                      torch.tensor([it.observed for it in items]), [it.row_id for it in items])


def train_multi_objective(cfg, rows: Sequence[dict], attributes: Sequence[str], model=None, tokenizer=None,
                          eval_rows: Sequence[dict] = ()) -> dict:
    """Train a d-attribute regression reward model with the shared reward loop; returns the summary dict."""
    from preflab.reward_models.heads import build_reward_model, sequence_outputs
    from preflab.reward_models.train import RewardRun

    head = MultiObjectiveHead(tuple(attributes))
    if tokenizer is None:
        from preflab.models.load import load_tokenizer

        tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code)
    if model is None:
        model = build_reward_model(cfg.model_name_or_path, head.num_outputs, tokenizer, seed=cfg.seed,
                                   trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    model.config.problem_type = "regression"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    items = tokenize_rated(rows, tokenizer, attributes, cfg.max_length)
    evals = tokenize_rated(eval_rows, tokenizer, attributes, cfg.max_length) if eval_rows else []

    def loss_fn(model, batch: RatedBatch) -> ObjectiveOutput:
        device = next(model.parameters()).device
        out = sequence_outputs(model, batch.input_ids.to(device), batch.attention_mask.to(device))
        return head.loss(out, batch.targets.to(device), batch.observed.to(device))

    def evaluate(model) -> dict:
        result = loss_fn(model, collate_rated(evals, pad_id))
        return {k: float(v) for k, v in result.metrics.items()}

    run = RewardRun(cfg, model, tokenizer, items, lambda chunk: collate_rated(chunk, pad_id), loss_fn,
                    evaluate if evals else None, head.to_config())
    return run.train()


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
