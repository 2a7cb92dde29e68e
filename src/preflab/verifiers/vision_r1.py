"""Vision-R1 rule rewards for object localization: format, precision and recall (TRL GRPO reward functions).

Zhan, Zhu, Zheng, Zhao, Yang, Tang, Wang, 2025, "Vision-R1: Evolving Human-Free Alignment in Large
Vision-Language Models via Vision-Guided Reinforcement Learning", arXiv:2503.18013. Definitions follow the
released code (jefferyZhan/Griffon@9866875 `Vision-R1/vision_r1/visionr1_qwen.py`: `dual_format_reward`,
`precision_reward`, `recall_reward`), as summarised in preflab's methods notes §18.

Completion: a JSON list of {"bbox_2d": [x1, y1, x2, y2], "label": str} in the model-input pixel frame, rescaled
to the original frame by width/input_width and height/input_height (when the input size columns are given).
Matching (see `preflab.verifiers.boxes`) pairs predictions with ground truth and yields GIoU values u_1..u_K,
K = min(#pred, #gt). With the threshold map φ_{lo,hi}(u) = 0 if u < lo, 1 if u > hi, u otherwise:

    R_fmt = 1 if the text parses as JSON and every {bbox_2d, label} item has a 4-element list, else 0;
            1 − R_fmt when the image has no instances.
    R_P   = (1/K) Σ_k φ_P(u_k)                             (precision: mean over matched pairs only)
    R_R   = ψ( Σ_k φ_{θ,θ}(u_k) / num_instances )     (recall; counts u_k > θ, and a u_k equal to θ adds θ)

Progressive rule refinement (`adaptive=True`, the code's `--adaptive`; the released run script does not pass it),
with `step` = the optimizer's global step: step < 1500: φ_P = (0.5, 0.75), θ = 0.5; step ≥ 1500: φ_P = (0.75, 0.9),
θ = 0.75; ψ = (0.5, 0.75) throughout. Non-adaptive: φ_P = (0, 1) (a clip to [0, 1]), θ = 0.5, ψ = (0, 1).
Vision-R1 trains on R = R_P + R_fmt + R_R ∈ [0, 3] (pass the three functions to GRPOTrainer with weight 1 each).

Dataset columns (one entry per completion, as TRL passes them): `solution` (JSON list of [label, [x1, y1, x2, y2]]
in original pixels), optional `num_instances` (default: len(solution)), `target_id_maps` (JSON {label: id ≥ 1};
default: ids in sorted label order), `width`, `height`, `input_widths`, `input_heights` (all four or none), and
`trainer_state` (TRL passes it; `.global_step`) or `step`, needed only with adaptive=True.

Deviations from the released code (all preflab options default to the code's behaviour except where the code
would crash): labels unknown to `target_id_maps` get class 0 (as in the code); an image with no instances scores
1 when nothing is predicted and 0 otherwise (the code crashes when it predicts something); `matcher="giou"` and
`penalize_extra_boxes=True` (precision divides by #pred when there are more predictions than instances, so extra
boxes are no longer free) are preflab options; `strict_format=True` requires a list of well-formed items.
"""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from preflab.errors import DataError, MissingExtraError
from preflab.verifiers._columns import RewardFn, column, completion_text, maybe_json, named
from preflab.verifiers.boxes import Matcher, as_array, match_boxes, parse_boxes

SWITCH_STEP = 1500
_FENCES = re.compile(r"```json\n|\n```")


def threshold_map(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """φ_{lo,hi}(u) = 0 if u < lo; 1 if u > hi; u otherwise (values exactly at lo or hi are kept)."""
    u = np.asarray(u, dtype=np.float64)
    return np.where(u < lo, 0.0, np.where(u > hi, 1.0, u))


def schedule(adaptive: bool, step: int | None) -> dict[str, tuple[float, float]]:
    """The thresholds in force: {"precision": φ_P, "match": (θ, θ), "recall": ψ}."""
    if not adaptive:
        return {"precision": (0.0, 1.0), "match": (0.5, 0.5), "recall": (0.0, 1.0)}
    if step is None:
        raise MissingExtraError("adaptive Vision-R1 rewards need the training step: TRL passes trainer_state "
                                "(its .global_step); otherwise pass step=[...].")
    late = step >= SWITCH_STEP
    return {"precision": (0.75, 0.9) if late else (0.5, 0.75), "match": (0.75, 0.75) if late else (0.5, 0.5),
            "recall": (0.5, 0.75)}


def _format_one(text: str, strict: bool) -> float:
    try:
        data = json.loads(_FENCES.sub("", text).strip())
    except (ValueError, RecursionError):
        return 0.0
    if strict:
        ok = isinstance(data, list) and all(
            isinstance(it, dict) and isinstance(it.get("label"), str) and isinstance(it.get("bbox_2d"), list)
            and len(it["bbox_2d"]) == 4 and all(isinstance(c, (int, float)) for c in it["bbox_2d"]) for it in data)
        return float(ok)
    if isinstance(data, list):
        for item in data:
            if isinstance(item, dict) and "bbox_2d" in item and "label" in item:
                if not (isinstance(item["bbox_2d"], list) and len(item["bbox_2d"]) == 4):
                    return 0.0
    return 1.0


def vision_r1_format(prompts: list, completions: list, *, strict_format: bool = False, **kwargs: Any) -> list[float]:
    """R_fmt per completion (`dual_format_reward`): 1 for parseable JSON with well-formed boxes, else 0; inverted
    for images with no instances (`num_instances` column, or len(solution))."""
    n = len(completions)
    counts = _num_instances(kwargs, n, "vision_r1_format")
    out = []
    for completion, count in zip(completions, counts):
        r = _format_one(completion_text(completion), strict_format)
        out.append(r if count > 0 else 1.0 - r)
    return out


def vision_r1_precision(prompts: list, completions: list, *, adaptive: bool = False, matcher: Matcher = "code",
                        penalize_extra_boxes: bool = False, **kwargs: Any) -> list[float]:
    """R_P per completion: mean of φ_P over the matched pairs' GIoU."""
    return _box_rewards(completions, kwargs, "precision", adaptive, matcher, penalize_extra_boxes)


def vision_r1_recall(prompts: list, completions: list, *, adaptive: bool = False, matcher: Matcher = "code",
                     **kwargs: Any) -> list[float]:
    """R_R per completion: ψ(#matched pairs with GIoU above θ / num_instances)."""
    return _box_rewards(completions, kwargs, "recall", adaptive, matcher, False)


def vision_r1_rewards(*, adaptive: bool = False, matcher: Matcher = "code", penalize_extra_boxes: bool = False,
                      strict_format: bool = False) -> list[RewardFn]:
    """[format, precision, recall] configured, named for TRL logging (`reward_funcs=vision_r1_rewards(...)`)."""
    return [
        named(lambda prompts, completions, **kw: vision_r1_format(prompts, completions, strict_format=strict_format,
                                                                  **kw), "vision_r1_format"),
        named(lambda prompts, completions, **kw: vision_r1_precision(
            prompts, completions, adaptive=adaptive, matcher=matcher, penalize_extra_boxes=penalize_extra_boxes,
            **kw), "vision_r1_precision"),
        named(lambda prompts, completions, **kw: vision_r1_recall(prompts, completions, adaptive=adaptive,
                                                                  matcher=matcher, **kw), "vision_r1_recall"),
    ]


def _num_instances(kwargs: dict, n: int, reward: str) -> list[int]:
    counts = column(kwargs, "num_instances", n, required=False, reward=reward)
    if counts is not None:
        return [int(c) for c in counts]
    solutions = column(kwargs, "solution", n, reward=reward)
    return [len(maybe_json(s)) for s in solutions]


def _step(kwargs: dict) -> int | None:
    state = kwargs.get("trainer_state")
    if state is not None and getattr(state, "global_step", None) is not None:
        return int(state.global_step)
    step = kwargs.get("step")
    if isinstance(step, (list, tuple)):
        step = step[0] if step else None
    return None if step is None else int(step)


def _box_rewards(completions: list, kwargs: dict, kind: str, adaptive: bool, matcher: Matcher,
                 penalize_extra: bool) -> list[float]:
    name = f"vision_r1_{kind}"
    n = len(completions)
    thresholds = schedule(adaptive, _step(kwargs))
    solutions = [maybe_json(s) for s in column(kwargs, "solution", n, reward=name)]
    counts = _num_instances(kwargs, n, name)
    id_maps = column(kwargs, "target_id_maps", n, required=False, reward=name)
    sizes = [column(kwargs, c, n, required=False, reward=name)
             for c in ("width", "height", "input_widths", "input_heights")]
    if any(s is None for s in sizes[2:]) and not all(s is None for s in sizes[2:]):
        raise MissingExtraError(f"{name}: pass both input_widths and input_heights, or neither.")
    rescale = sizes[2] is not None
    if rescale and (sizes[0] is None or sizes[1] is None):
        raise MissingExtraError(f"{name}: rescaling from the model-input frame needs the width and height columns.")
    out = []
    for i, (completion, solution, count) in enumerate(zip(completions, solutions, counts)):
        id_map = _id_map(maybe_json(id_maps[i]) if id_maps is not None else None, solution, name, i)
        preds = parse_boxes(completion_text(completion))
        if not preds:
            out.append(0.0 if count > 0 else 1.0)
            continue
        if count == 0 or not solution:
            out.append(0.0)  # boxes where there is nothing (the released code crashes here)
            continue
        pred = as_array([b.xyxy for b in preds])
        if rescale:
            pred[:, 0::2] *= float(sizes[0][i]) / float(sizes[2][i])
            pred[:, 1::2] *= float(sizes[1][i]) / float(sizes[3][i])
        pred_cls = [id_map.get(b.label.strip().lower(), 0) for b in preds]
        gt = as_array([box for _, box in solution])
        gt_cls = [id_map[str(label).lower()] for label, _ in solution]
        _, u = match_boxes(pred, pred_cls, gt, gt_cls, matcher)
        if kind == "precision":
            scores = threshold_map(u, *thresholds["precision"])
            out.append(float(scores.sum() / (len(preds) if penalize_extra else len(u))))
        else:
            tp = threshold_map(u, *thresholds["match"]).sum()
            out.append(float(threshold_map(np.array([tp / count]), *thresholds["recall"])[0]))
    return out


def _id_map(raw: dict | None, solution: list, name: str, row: int) -> dict[str, int]:
    if raw is None:
        labels = sorted({str(label).lower() for label, _ in solution})
        return {label: i + 1 for i, label in enumerate(labels)}
    id_map = {str(k).lower(): int(v) for k, v in raw.items()}
    missing = {str(label).lower() for label, _ in solution} - set(id_map)
    if missing:
        raise DataError(f"{name}: row {row}: ground-truth labels {sorted(missing)} are not in target_id_maps.")
    return id_map
