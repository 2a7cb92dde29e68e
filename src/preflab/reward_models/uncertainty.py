"""UPO's uncertainty-based pair selection: an MC-dropout estimator over pairs, BALD, and reliable-pair sampling.

Wang et al. 2025 (AAAI), "Self-Evolutionary Large Language Models through Uncertainty-Enhanced Preference
Optimization" (UPO); spec methods/models-and-loops.md #26. BALD: Houlsby, Huszar, Ghahramani, Lengyel 2011,
"Bayesian Active Learning for Classification and Preference Learning" (arXiv:1112.5745); MC dropout: Gal and
Ghahramani 2016 (arXiv:1506.02142).

An estimator classifies a pair (first, second) into C classes (class 0 = "first is better"). With dropout kept on,
T stochastic passes give probabilities p^t in the simplex; then

    BALD  B = H[(1/T) sum_t p^t] - (1/T) sum_t H[p^t]          (natural log; 0 <= B <= ln C)
    vote  the majority of the T argmax predictions; a tie is undecided (-1), never class 0
    keep  pairs whose vote is 0 (the estimator agrees with the label: chosen placed first)
    draw  fraction * #kept pairs without replacement, P_j = (1 - B_j)^mu / sum_k (1 - B_k)^mu  ("sample"),
          or the lowest-B pairs ("lowest").

The UPO objective's per-pair smoothing alpha is `preflab.objectives.upo.alpha_from_bald(B)`.

Checked (2026-12) against wjn1996/Uncertainty-Preference-Optimization@29a1c21 `src/alignment/inference/estimating/`:
`sampler.py::get_BALD_acquisition` (H[mean] - mean H, natural log, +1e-10 inside the log) and
`sample_by_bald_easiness` (weights (1 - B)/sum(1 - B), np.random.choice without replacement = mu 1 here);
`mc_evaluation.py` (model.train(), T softmax passes, y_pred = np.argmax(np.bincount(argmax per pass)));
`main.py` (keep pairs with y_pred == 0, draw int(bald_rate x #kept), bald_rate in (0, 0.5], T = 10): match, except
the two points below.

Deviation from the paper / reference code: the count drawn is ceil(fraction x #kept) (the code floors, which draws
nothing from a round with one kept pair); ties in the vote count as undecided (the code's argmax sends a maximally
unsure estimator to class 0, so it passes the filter); dropout is switched on by `model.train()` for the T passes and
each submodule's mode is restored afterwards; a model with no dropout raises unless `require_dropout=False`
(otherwise every B would be 0 without warning).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from preflab.errors import ConfigError, PreflabError
from preflab.reward_models.protocols import PairInputs, num_rows, take


def dropout_sources(model: nn.Module) -> list[str]:
    """Where `model` applies dropout in train mode: nn.Dropout* modules with p > 0, and float attributes named
    *dropout* > 0 that attention modules apply functionally (e.g. transformers' `attention_dropout`).

    Reads the modules, not the config: a config edited after the model was built changes nothing."""
    found = []
    for name, m in model.named_modules():
        where = name or type(model).__name__
        if isinstance(m, nn.modules.dropout._DropoutNd):
            if m.p > 0:
                found.append(f"{where}(p={m.p})")
            continue
        for attr, value in vars(m).items():
            if "dropout" in attr and isinstance(value, float) and value > 0:
                found.append(f"{where}.{attr}={value}")
    return found


@contextlib.contextmanager
def dropout_on(model: nn.Module):
    """`model.train()` inside the block (dropout active, no gradients), each submodule's mode restored after."""
    modes = {m: m.training for m in model.modules()}
    model.train()
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)


def mc_dropout_probs(model: nn.Module, inputs: PairInputs, passes: int = 10, *, seed: int | None = None,
                     require_dropout: bool = True, batch_size: int | None = None) -> Tensor:
    """[T, N, C] class probabilities from T = `passes` forward passes with dropout on.

    inputs: one row per pair, in the estimator's own form (a {"first", "second"} dict of features, or the token
    ids of a rendered pair text). `model(inputs)` returns [N, C] logits (C >= 2) or [N] logits of class 0
    (binary: p0 = sigmoid(logit)). batch_size: rows per forward (None: all at once).
    """
    if passes < 1:
        raise ConfigError(f"passes must be >= 1, got {passes}.")
    if require_dropout and not dropout_sources(model):
        raise PreflabError(
            "MC dropout needs dropout in the estimator, and this model has none active (every BALD score would be "
            "0). Build it with a dropout probability (e.g. config.attention_dropout=0.1, or a Dropout in the head), "
            "or pass "
            "require_dropout=False to accept zero uncertainty.")
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng, dropout_on(model):
        if seed is not None:
            torch.manual_seed(seed)
        n = num_rows(inputs)
        step = batch_size or n
        chunks = [take(inputs, torch.arange(i, min(i + step, n))) for i in range(0, n, step)]
        return torch.stack([torch.cat([_probs(model(c)) for c in chunks]) for _ in range(passes)])


def _probs(logits: Tensor) -> Tensor:
    if logits.dim() == 1 or logits.shape[-1] == 1:
        p0 = torch.sigmoid(logits.reshape(-1).float())
        return torch.stack([p0, 1 - p0], -1)
    return torch.softmax(logits.float(), -1)


def entropy(probs: Tensor) -> Tensor:
    """H[p] = -sum_c p_c ln p_c over the last axis (0 ln 0 = 0)."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


def bald(probs: Tensor) -> Tensor:
    """[N] BALD mutual information from [T, N, C] MC probabilities: H[mean_t p] - mean_t H[p]; exactly 0 where
    every pass gives the same probabilities (rounding would leave ~1e-17 there, which reorders a lowest-B choice)."""
    if probs.dim() != 3:
        raise PreflabError(f"bald takes [T, N, C] probabilities, got {tuple(probs.shape)}.")
    agree = (probs == probs[:1]).all(0).all(-1)
    return (entropy(probs.mean(0)) - entropy(probs).mean(0)).clamp_min(0).masked_fill(agree, 0.0)


def majority_vote(probs: Tensor) -> tuple[Tensor, Tensor]:
    """([N] majority class of the T argmax predictions, -1 on a tie; [N] fraction of passes voting for it)."""
    num_classes = probs.shape[-1]
    counts = torch.nn.functional.one_hot(probs.argmax(-1), num_classes).sum(0)  # [N, C]
    top = counts.max(-1)
    tied = (counts == top.values.unsqueeze(-1)).sum(-1) > 1
    return torch.where(tied, torch.full_like(top.indices, -1), top.indices), top.values.float() / probs.shape[0]


def reliable_weights(bald_scores: Tensor, mu: float = 1.0) -> Tensor:
    """P_j = (1 - B_j)^mu / sum_k (1 - B_k)^mu (UPO's reliable-pair sampling weights)."""
    if mu <= 0:
        raise ConfigError(f"mu must be > 0, got {mu}.")
    w = (1 - bald_scores).clamp_min(0) ** mu
    if w.sum() <= 0:
        raise PreflabError("every pair has BALD >= 1, so no pair has positive weight; use more passes or mu.")
    return w / w.sum()


@dataclass
class PairSelection:
    """Selected pair indices and what decided them. bald, vote, agreement, mean_probs cover all N pairs."""

    index: Tensor
    bald: Tensor
    vote: Tensor
    agreement: Tensor
    mean_probs: Tensor
    counts: dict[str, int] = field(default_factory=dict)


def select_reliable_pairs(probs: Tensor, fraction: float = 0.5, *, mu: float = 1.0, rule: str = "sample",
                          filter_disagreements: bool = True, seed: int = 0) -> PairSelection:
    """Choose pairs from [T, N, C] MC probabilities of (chosen first, rejected second) inputs.

    filter_disagreements: drop pairs whose majority vote is not class 0 (estimator disagrees with the label).
    fraction: share of the remaining pairs to keep; rule "sample" draws by `reliable_weights`, "lowest" takes
    the lowest-BALD pairs.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}.")
    if rule not in ("sample", "lowest"):
        raise ConfigError(f"rule must be 'sample' or 'lowest', got {rule!r}.")
    scores = bald(probs)
    vote, agreement = majority_vote(probs)
    candidates = torch.nonzero(vote == 0).flatten() if filter_disagreements else torch.arange(len(vote))
    take_n = min(len(candidates), int(math.ceil(fraction * len(candidates))))
    if take_n == 0:
        index = candidates
    elif rule == "lowest":
        index = candidates[scores[candidates].argsort(stable=True)[:take_n]]
    else:
        gen = torch.Generator().manual_seed(seed)
        index = candidates[torch.multinomial(reliable_weights(scores[candidates], mu), take_n, generator=gen)]
    counts = {"pairs": len(vote), "disagree": int((vote > 0).sum()), "undecided": int((vote < 0).sum()),
              "candidates": len(candidates), "selected": len(index)}
    return PairSelection(index, scores, vote, agreement, probs.mean(0), counts)
