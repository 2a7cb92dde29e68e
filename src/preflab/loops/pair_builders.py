"""Scored groups -> preference pairs, for online preference loops (models-and-loops.md D3).

Input: scores [P, K], K judged completions per prompt (NaN = not scorable, never paired). Output: a list of
(prompt, chosen, rejected) index triples and the number of candidate pairs dropped as ties.

    best_vs_worst  one pair per prompt: a highest- vs a lowest-scored completion (Dong et al., 2024, "RLHF
                   Workflow: From Reward Modeling to Online RLHF", arXiv:2405.07863, after Xiong et al., 2024,
                   arXiv:2312.11456). Completions sharing the top (or bottom) score: one is picked uniformly.
                   All scores equal: no pair (a tie, counted), unlike TRL's Online DPO, which keeps it.
    all_pairs      every (i, j) with s_i > s_j; equal scores are counted as ties
    rso            statistical rejection sampling of `rso_num_samples` completions from
                   pi_ref exp(r / rso_beta) among the K, then a random matching labelled by score (preflab.loops.rso)
    module:function or path/to/file.py:function   a user's builder f(scores, generator) -> [(prompt, chosen,
                   rejected), ...] index triples; scores is the float64 [P, K] tensor (NaN: not scorable), generator
                   the round's seeded torch.Generator (draw from it for a reproducible, resumable run). Every triple is
                   checked: indices in range, chosen != rejected, both scored; those whose chosen scored below its
                   rejected are trained as given and counted (PairPlan.against_scores). Under the online run's
                   judge_timeout_s (timeout_s here; None: no limit, called inline) the builder is user code of the
                   round as a judge is: it must return (and its triples be listed) within that many seconds, or the
                   run stops with JudgeTimeoutError naming the builder and the limit (preflab.loops.time_limit).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from preflab.errors import ConfigError, JudgeTimeoutError
from preflab.loops.rso import rank_pairs, rso_sample
from preflab.loops.time_limit import call_within
from preflab.online_recipes import BUILDERS, user_builder


@dataclass
class PairPlan:
    triples: list[tuple[int, int, int]]  # (prompt index, chosen completion index, rejected completion index)
    ties_dropped: int
    unscorable: int  # completions with a NaN score
    rso: dict[str, int] | None = None  # builder rso: {"prompts", "accepted", "scanned", "rounds"} summed over prompts
    against_scores: int = 0  # a user builder's triples whose chosen scored below its rejected (trained as given)


def _pick(candidates: Tensor, generator: torch.Generator) -> int:
    return int(candidates[torch.randint(len(candidates), (1,), generator=generator)])


def build_pairs(scores: Tensor, builder: str = "best_vs_worst", generator: torch.Generator | None = None,
                rso_beta: float = 0.5, rso_num_samples: int = 2, timeout_s: float | None = None,
                where: str = "") -> PairPlan:
    """Pairs from scores [P, K] (see the module docstring); timeout_s: a user builder's time limit, where: what the
    run is doing, for its error ("round 3 (optimizer step 5)")."""
    if builder not in BUILDERS and ":" not in builder:
        raise ConfigError(f"pair_builder must be one of {BUILDERS} or module:function / path/to/file.py:function, "
                          f"got {builder!r}.")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if builder not in BUILDERS:
        return _user_pairs(user_builder(builder), builder, scores, generator, timeout_s, where)
    triples, ties = [], 0
    rso = {"prompts": 0, "accepted": 0, "scanned": 0, "rounds": 0} if builder == "rso" else None
    for p, row in enumerate(scores):
        valid = torch.nonzero(~row.isnan()).flatten()
        if len(valid) < 2:
            continue
        s = row[valid]
        if builder == "best_vs_worst":
            top, bottom = s.max(), s.min()
            if top == bottom:
                ties += 1
                continue
            chosen = _pick(valid[s == top], generator)
            rejected = _pick(valid[s == bottom], generator)
            triples.append((p, chosen, rejected))
        elif builder == "all_pairs":
            for a in range(len(valid)):
                for b in range(a + 1, len(valid)):
                    i, j = int(valid[a]), int(valid[b])
                    if row[i] == row[j]:
                        ties += 1
                    else:
                        triples.append((p, i, j) if row[i] > row[j] else (p, j, i))
        else:
            sample = rso_sample(s, rso_beta, rso_num_samples, generator)
            accepted = sample.accepted
            for key, value in (("prompts", 1), ("accepted", len(accepted)), ("scanned", sample.scanned),
                               ("rounds", sample.rounds)):
                rso[key] += value
            labelled = rank_pairs([int(valid[a]) for a in accepted], row, generator=generator)
            ties += labelled.ties_dropped
            triples.extend((p, c, r) for c, r in labelled.pairs)
    return PairPlan(triples, ties, int(scores.isnan().sum()), rso)


def _listed(fn, spec: str, scores: Tensor, generator: torch.Generator, at: str) -> list:
    """list(fn(scores, generator)); a ConfigError naming the builder when it returns None (a missing `return`) or
    something that is not a list of triples, or when it raises (the exception and the builder's line quoted)."""
    from preflab.plugins import where_raised

    try:
        given = fn(scores, generator)
        if given is None:
            raise ConfigError(f"pair_builder {spec!r} returned None{at}; it must return a list of (prompt, chosen, "
                              "rejected) index triples ([] when a round gives no pair): is its `return` missing?")
        return list(given)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's builder raised: a bug in user code, named with its line
        raise ConfigError(f"pair_builder {spec!r} raised {where_raised(err)}{type(err).__name__}: {err}{at} (called "
                          f"as f(scores, generator) with scores of shape {tuple(scores.shape)}). Fix the builder.") \
            from err


def _user_pairs(fn, spec: str, scores: Tensor, generator: torch.Generator, timeout_s: float | None = None,
                where: str = "") -> PairPlan:
    """The triples of a user's builder, each checked: a wrong index would train on another completion, a NaN-scored
    one on a completion the judge could not score. They are listed inside the time limit (a generator function's
    work happens while it is iterated)."""
    triples = []
    P, K = scores.shape
    at = f" in {where}" if where else ""
    given = call_within(lambda: _listed(fn, spec, scores.clone(), generator, at), timeout_s, lambda: JudgeTimeoutError(
        f"pair_builder {spec!r} did not return within judge_timeout_s = {timeout_s:g} s{at} (one call on scores of "
        f"shape {(P, K)}); the run stops (the call is abandoned in a background thread: Python cannot stop it). Fix "
        "the builder so that it returns, or raise judge_timeout_s (null: no limit) if a call this long is expected."))
    for triple in given:
        try:
            p, c, r = (int(v) for v in triple)
        except (TypeError, ValueError):
            raise ConfigError(f"pair_builder {spec!r} gave {triple!r}; each pair is a (prompt, chosen, rejected) "
                              "triple of indices into scores [P, K].") from None
        if not (0 <= p < P and 0 <= c < K and 0 <= r < K) or c == r:
            raise ConfigError(f"pair_builder {spec!r} gave {(p, c, r)} for scores of shape {(P, K)}; indices must be "
                              "in range and chosen != rejected.")
        if scores[p, c].isnan() or scores[p, r].isnan():
            raise ConfigError(f"pair_builder {spec!r} paired completion {c if scores[p, c].isnan() else r} of prompt "
                              f"{p}, which the judge could not score (NaN); pair scored completions only.")
        triples.append((p, c, r))
    # a chosen the judge scored below its rejected is the builder's choice (a label-noise experiment flips pairs on
    # purpose), not an error: counted, so a builder whose comparison is reversed shows in metrics.jsonl
    against = sum(bool(scores[p, c] < scores[p, r]) for p, c, r in triples)
    return PairPlan(triples, 0, int(scores.isnan().sum()), against_scores=against)
