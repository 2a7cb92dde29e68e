"""What a run's rewards/* and logps/* are, from its objective's declaration, so that runs of different objectives
are never drawn or tabled as one quantity.

TRL's names are shared by every objective, with the objective's own meaning (preflab.objectives.base.Objective
.reward_meaning / logps_meaning): DPO and the reference objectives log the implicit reward beta (log pi - log pi_ref)
and summed log-probs, SimPO and ORPO beta * the mean token log-prob and mean log-probs (TRL's CPOTrainer and
ORPOTrainer), CPO beta * the summed log-prob, ASFT the mean log-prob with no beta, SparsePO its mask-weighted token
reward. Beside DPO, SimPO's eval_rewards/margins of 0.01 and DPO's of 0.12 are not a comparison of two methods, so:

    meaning(run, "rewards") / meaning(run, "logps")   # the declared meaning; None where the report has no
                                                      # objective to read (SFT, reward, diffusion, online runs)
    meaning_note(runs)                                # the report's note when runs disagree, naming each meaning

plots.panel_groups gives each meaning its own axis on the panels of those metrics (REWARD_PANELS_BY_MEANING,
LOGPS_PANELS_BY_MEANING), and their y label is the meaning where all runs drawn share one.
"""
from __future__ import annotations

from preflab.objectives.base import IMPLICIT_REWARD
from preflab.report.runs import RunData

# the report's panels of rewards/* (implicit-reward panels) and of logps/*
REWARD_PANELS_BY_MEANING = {"Reward margin", "Implicit rewards"}
LOGPS_PANELS_BY_MEANING = {"Log-probs"}
# the tasks whose rewards/* and logps/* are their loss_type's own (an offline pair run, text or image-text)
OBJECTIVE_TASKS = ("dpo", "vlm")


def meaning(run: RunData, which: str) -> str | None:
    """The declared meaning of `run`'s rewards/* (which="rewards") or logps/* ("logps"): its loss_type's, or of a
    weighted list the first part's (a list logs its first part's metrics, docs/objectives.md); None for a run of
    another task, a user's objective ('file.py:Class', never imported by the report) or a name this preflab does not
    have (a newer or older version's)."""
    from preflab.objectives import _class_for

    if not run.config or str(run.config.get("task", "dpo")) not in OBJECTIVE_TASKS:
        return None
    loss_type = run.config.get("loss_type", "sigmoid")
    first = loss_type[0] if isinstance(loss_type, list) and loss_type else loss_type
    if not isinstance(first, str) or ":" in first:
        return None
    try:
        cls = _class_for(first)
    except Exception:  # an objective this preflab does not have
        return None
    return cls.reward_meaning if which == "rewards" else cls.logps_meaning


def panel_meaning(title: str, run: RunData) -> str | None:
    """The meaning `run`'s values have on the panel `title`, where that panel is split by meaning; else None."""
    if title in REWARD_PANELS_BY_MEANING:
        return meaning(run, "rewards")
    if title in LOGPS_PANELS_BY_MEANING:
        return meaning(run, "logps")
    return None


def reward_accuracy_meaning(run: RunData, said: str) -> str:
    """The headline's words for `run`'s eval_rewards/accuracies: `said` ("implicit reward accuracy, held-out") where
    its objective logs the implicit reward (or declares nothing), else the share of pairs its own reward ranks
    right, named (SimPO: beta * the mean token log-prob, with no reference: not an implicit reward)."""
    own = meaning(run, "rewards")
    if own in (None, IMPLICIT_REWARD):
        return said
    return said.replace("implicit reward accuracy", f"reward accuracy of {run.config.get('loss_type')}'s own "
                                                     f"reward ({own}), not an implicit reward")


def meaning_note(runs: list[RunData]) -> str | None:
    """The report's note when runs' rewards/* (or logps/*) mean different things: which run logs what, that their
    panels get one axis per meaning, and that eval.json's rewards/* are DPO's implicit reward for every run (so they
    compare across runs where the logged ones do not). None when every run that has one shares it."""
    parts = []
    for which, names in (("rewards", "rewards/* (and eval_rewards/*)"), ("logps", "logps/* (and eval_logps/*)")):
        said: dict[str, list[str]] = {}
        for run in runs:
            m = meaning(run, which)
            if m is not None:
                said.setdefault(m, []).append(run.name)
        if len(said) > 1:
            parts.append(f"{names} are " + "; ".join(f"{m} for {', '.join(who)}" for m, who in said.items()))
    unknown = [run.name for run in runs if run.config and str(run.config.get("task", "dpo")) in OBJECTIVE_TASKS
               and meaning(run, "rewards") is None]   # a user's objective, or one this preflab does not have
    if unknown and len(runs) > len(unknown):
        parts.append(f"{', '.join(unknown)}: the objective is not one this preflab declares (a user's objective, or "
                     "another version's), so what its rewards/* and logps/* are is unknown here and they are drawn "
                     "beside the others'")
    if not parts:
        return None
    return ("the runs' objectives log different quantities under one name: " + ". ".join(parts) + ". Their panels "
            "give each its own axis, and the final-metrics table's rows of those names do not compare across "
            "these runs; eval.json's rewards/* (`preflab eval`) are DPO's implicit reward against the run's reference "
            "for every run, and ranking accuracy R compares across all of them.")
