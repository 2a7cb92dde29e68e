"""recipe_params.sft_lr_scale: the learning rate of a recipe's SFT stage before its preference stage, scaled.

Wang et al. 2025 ("Implicit Reward as the Bridge", arXiv:2507.00018; methods/objectives.md §C #10) lower the learning
rate of the SFT stage that precedes DPO (claimed up to +6 points win rate after DPO; the factor is unverified: sweep
{1, 0.5, 0.2, 0.1}). The recipes whose warm-up SFT precedes a DPO-family stage take it (raft_ladder, dstc, itool):
lr_sft = scale x the recipe's SFT learning rate, nothing else changes (the preference stages, and SFT controls that
stand in for a preference stage, keep theirs). 1.0, the default, is the recipe as before, byte for byte: the same
stage configs (x * 1.0 == x), and the state file and summary without the option (states written before resume).
"""
from __future__ import annotations

import math

from preflab.errors import ConfigError
from preflab.option_types import is_number

OPTION = "sft_lr_scale"
TASKS = ("raft_ladder", "dstc", "itool")  # the recipes that take it (a parameter of their functions)
# why the others do not: their SFT precedes no DPO-family stage (the paper's setting), or they have no SFT stage
NOT_TAKEN = {"otc": "its SFT stage precedes GRPO, not a DPO-family stage",
             "pro_orchestrator": "its SFT stage precedes GRPO, not a DPO-family stage",
             "icpl": "it trains no model", "themis": "it has no SFT stage (two reward models)",
             "fspo": "it has no SFT stage (DPO / IPO from the start)"}


def refusal_hint(task: str) -> str:
    """The sentence preflab.recipes adds when recipe_params.sft_lr_scale is given to a recipe without it."""
    why = NOT_TAKEN.get(task, "it has no SFT stage before a DPO-family stage")
    return (f" sft_lr_scale scales the learning rate of the SFT stage before DPO (Wang et al. 2025) in "
            f"{', '.join(TASKS)}; task {task} does not take it: {why}.")


def check_sft_lr_scale(task: str, scale, sft_learning_rate: float) -> None:
    """A scale that is not a finite number > 0: ConfigError naming the recipe and its SFT learning rate."""
    if not (is_number(scale) and 0 < scale and math.isfinite(scale)):
        raise ConfigError(f"task {task}: recipe_params.sft_lr_scale must be a number > 0 (it multiplies the SFT "
                          f"stage's learning rate {sft_learning_rate}; e.g. 1, 0.5, 0.2, 0.1), got {scale!r}.")


def scaled_sft_lr(sft_learning_rate: float, scale: float) -> float:
    """The SFT stage's learning rate: the recipe's x scale (exactly the recipe's at 1.0)."""
    return sft_learning_rate * scale


def sft_lr_params(scale: float) -> dict:
    """The option as the recipe's state file records it: absent at 1.0 (a state written before the option resumes;
    a resume with another scale is refused by preflab.recipe_state)."""
    return {OPTION: scale} if scale != 1 else {}


def sft_lr_summary(scale: float, sft_learning_rate: float) -> dict:
    """summary.json's fields: the scale and the SFT learning rate used, absent at 1.0 (the summary as before)."""
    return {OPTION: scale, "sft_learning_rate": scaled_sft_lr(sft_learning_rate, scale)} if scale != 1 else {}
