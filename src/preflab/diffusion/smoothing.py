"""SmPO's smoothed preference: a reward model's scores of the two images -> p(y_w > y_l) in [0.5, sigma(1)].

"Smoothed Preference Optimization via ReNoise Inversion for Aligning Diffusion Models with Varied Human Preferences"
(Lu et al., 2025; released JaydenLyh/SmPO train.py, preprocessing.py; methods §5):

    s~ = (s - s_min) / (s_max - s_min),     p = exp(s~_w) / (exp(s~_w) + exp(s~_l)) = sigmoid(s~_w - s~_l)

with s the PickScore image-text cosine (no x100 logit scale) and the Pick-a-Pic v2 constants below. The pair order
comes from the scores (`order_by_score`), not the human label. Scores outside [s_min, s_max] are not clamped (as
released). Recompute s_min / s_max for other data.
"""
from __future__ import annotations

import torch
from torch import Tensor

from preflab.errors import ConfigError

PICKSCORE_MIN = 0.11543526500463486  # Pick-a-Pic v2, PickScore cosine, SmPO's preprocessing
PICKSCORE_MAX = 0.28201571106910706


def smoothed_preference(score_chosen: Tensor, score_rejected: Tensor, s_min: float = PICKSCORE_MIN,
                        s_max: float = PICKSCORE_MAX) -> Tensor:
    """p [B] = sigmoid(s~_w - s~_l) from raw scores [B]."""
    if not s_max > s_min:
        raise ConfigError(f"smoothed_preference needs s_max > s_min, got s_min={s_min}, s_max={s_max}.")
    norm = lambda s: (torch.as_tensor(s, dtype=torch.float64) - s_min) / (s_max - s_min)  # noqa: E731
    return torch.sigmoid(norm(score_chosen) - norm(score_rejected))


def order_by_score(score_0: Tensor, score_1: Tensor) -> Tensor:
    """[B] bool: True where image 0 is the winner (ps_label_0 = 1[score_0 > score_1]); swap the others."""
    return torch.as_tensor(score_0) > torch.as_tensor(score_1)
