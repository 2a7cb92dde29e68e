"""Boxes for the Vision-R1 rewards: parse predicted boxes from text, IoU/GIoU, and one-to-one matching.

Boxes are [x1, y1, x2, y2] in pixels with x1 < x2, y1 < y2.

    IoU(a, b)  = |a ∩ b| / |a ∪ b|
    GIoU(a, b) = IoU(a, b) − (|C| − |a ∪ b|) / |C|,  C = the smallest box enclosing a and b   (∈ (−1, 1])
    (Rezatofighi et al., 2019, "Generalized Intersection over Union", arXiv:1902.09630, Alg. 1)

Matching (Vision-R1 released code, `BoxPriorMatcher`, jefferyZhan/Griffon@9866875 `Vision-R1/vision_r1/
visionr1_qwen.py`; the DETR matcher of Carion et al., 2020, arXiv:2005.12872, without probabilities):

    C_ij = ‖b_i − g_j‖₁ (pixels) − 1[cls_i = cls_j] − GIoU(b_i, g_j)

solved by the Hungarian algorithm (scipy `linear_sum_assignment`), giving min(#pred, #gt) pairs. The pixel L1
term dominates, so the code's matching can prefer a far-off pair with smaller coordinates (see the Vision-R1
tests); `matcher="giou"` uses C_ij = −GIoU(b_i, g_j) instead (a preflab option, not the paper's).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Matcher = Literal["code", "giou"]
_FENCE_START = "```json"
# The released code's regex fallback: exact `{"bbox_2d": [a, b, c, d], "label": "..."}` with integers 0..1000.
_BOX_RE = re.compile(r'\{"bbox_2d": \[(\d{1,3}|1000), (\d{1,3}|1000), (\d{1,3}|1000), (\d{1,3}|1000)\], '
                     r'"label": "([^"]+)"\}')


@dataclass(frozen=True)
class Box:
    """One predicted or ground-truth box and its label (the label text as written)."""

    xyxy: tuple[float, float, float, float]
    label: str


def _strip_fences(text: str) -> str:
    """The released `parse_json`: drop a leading ```json line, then keep the text before the next ```."""
    lines = text.strip().splitlines()
    if lines and lines[0].startswith(_FENCE_START):
        text = "\n".join(lines[1:])
    if "```" in text:
        text = text.split("```")[0]
    return text


def parse_boxes(text: str) -> list[Box]:
    """Boxes from a completion: a JSON list of {"bbox_2d": [x1, y1, x2, y2], "label": str}, else the regex.

    Items whose box is not 4 integers (floats are truncated by int(), as in the released code) or is not
    x1 < x2, y1 < y2 are dropped; a malformed item never fails the whole parse."""
    boxes: list[Box] = []
    try:
        data = json.loads(_strip_fences(text))
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, list):
        for item in data:
            try:
                bbox, label = item.get("bbox_2d"), item.get("label")
                if isinstance(bbox, list) and len(bbox) == 4:
                    x1, y1, x2, y2 = (int(c) for c in bbox)
                    if x1 < x2 and y1 < y2:
                        boxes.append(Box((x1, y1, x2, y2), str(label) if label is not None else ""))
            except (AttributeError, TypeError, ValueError, OverflowError):
                continue
    if not boxes:
        for m in _BOX_RE.finditer(text):
            x1, y1, x2, y2 = (int(g) for g in m.groups()[:4])
            if x1 < x2 and y1 < y2:
                boxes.append(Box((x1, y1, x2, y2), m.group(5)))
    return boxes


def pairwise_giou(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IoU, GIoU) matrices [P, G] for boxes pred [P, 4] and gt [G, 4] (float64)."""
    p, g = pred[:, None, :], gt[None, :, :]
    area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
    area_g = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    iw = np.clip(np.minimum(p[..., 2], g[..., 2]) - np.maximum(p[..., 0], g[..., 0]), 0, None)
    ih = np.clip(np.minimum(p[..., 3], g[..., 3]) - np.maximum(p[..., 1], g[..., 1]), 0, None)
    inter = iw * ih
    union = area_p + area_g - inter
    iou = inter / union
    hull = ((np.maximum(p[..., 2], g[..., 2]) - np.minimum(p[..., 0], g[..., 0]))
            * (np.maximum(p[..., 3], g[..., 3]) - np.minimum(p[..., 1], g[..., 1])))
    return iou, iou - (hull - union) / hull


def match_boxes(pred: np.ndarray, pred_cls: list[int], gt: np.ndarray, gt_cls: list[int],
                matcher: Matcher = "code") -> tuple[list[tuple[int, int]], np.ndarray]:
    """Hungarian matching; returns the (pred, gt) index pairs and their GIoU values u_k (float64, [K]).

    matcher="code": C = L1 − 1[same class] − GIoU (the released Vision-R1 cost). "giou": C = −GIoU."""
    if len(pred) == 0 or len(gt) == 0:
        return [], np.zeros(0)
    _, giou = pairwise_giou(pred, gt)
    if matcher == "code":
        l1 = np.abs(pred[:, None, :] - gt[None, :, :]).sum(-1)
        same = np.asarray(pred_cls)[:, None] == np.asarray(gt_cls)[None, :]
        cost = l1 - same.astype(np.float64) - giou
    elif matcher == "giou":
        cost = -giou
    else:
        raise ValueError(f"matcher={matcher!r}: use 'code' or 'giou'.")
    from scipy.optimize import linear_sum_assignment  # imported here: scipy.optimize takes ~0.3 s to import

    rows, cols = linear_sum_assignment(cost)
    return list(zip(rows.tolist(), cols.tolist())), giou[rows, cols]


def as_array(boxes: Any) -> np.ndarray:
    """[N, 4] float64 array from a list of 4-sequences (empty -> shape [0, 4])."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
