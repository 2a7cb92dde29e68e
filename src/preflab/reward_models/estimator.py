"""A feature-level pairwise estimator with dropout, for UPO's MC-dropout selection (`uncertainty.py`).

UPO (Wang et al. 2025, AAAI; spec methods/models-and-loops.md #26) trains an estimator f_psi that reads a pair and
predicts "Response #1 is better" (class 0), then runs it with dropout on. Over features the estimator here is

    logit_0(first, second) = g(first) - g(second),   g = MLP with dropout,   P(first better) = sigmoid(logit_0),

which is antisymmetric by construction, so it cannot learn the position shortcut the paper's chosen-first text
template invites (spec gotcha d). For a language-model estimator use `PooledHead(backbone, out_dim=2)` on the
rendered pair text, with the order randomised when training.

Deviation from the paper: the paper's estimator is the policy backbone with a 2-way head on the template text; this
is the same classifier over precomputed features (what the selection logic needs to be tested exactly).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from preflab.errors import PreflabError
from preflab.reward_models.protocols import fit_full_batch


class DropoutPairClassifier(nn.Module):
    """P(first > second) = sigmoid(g(first) - g(second)); inputs {"first": [N, D], "second": [N, D]}."""

    def __init__(self, dim: int, hidden: int = 32, dropout: float = 0.2):
        super().__init__()
        self.g = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        first, second = inputs["first"], inputs["second"]
        if first.shape != second.shape:
            raise PreflabError(f"first {tuple(first.shape)} and second {tuple(second.shape)} must match.")
        n = first.shape[0]
        scores = self.g(torch.cat([first, second])).squeeze(-1)
        return scores[:n] - scores[n:]  # [N] logit of class 0 ("first is better")


def pair_inputs(chosen: Tensor, rejected: Tensor) -> dict[str, Tensor]:
    """Estimator inputs with the labelled-better response first (class 0 means: agrees with the label)."""
    return {"first": chosen, "second": rejected}


def fit_pair_estimator(model: nn.Module, chosen: Tensor, rejected: Tensor, *, steps: int = 300, lr: float = 0.01,
                       weight_decay: float = 0.0, seed: int = 0) -> float:
    """Train on labelled pairs with cross-entropy; each pair is shown in a random order (label follows it).

    Trains in train mode (dropout on, as MC dropout later assumes) and leaves the model in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    swap = torch.rand(chosen.shape[0], generator=gen) < 0.5
    first = torch.where(swap[:, None], rejected, chosen)
    second = torch.where(swap[:, None], chosen, rejected)
    target = (~swap).float()  # 1 where the better response is first (class 0)
    inputs = {"first": first, "second": second}
    model.train()

    def loss_fn():
        out = model(inputs)
        logit = out if out.dim() == 1 else out[:, 0] - out[:, 1]
        return F.binary_cross_entropy_with_logits(logit, target)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loss = fit_full_batch(loss_fn, model.parameters(), steps=steps, lr=lr, weight_decay=weight_decay)
    model.eval()
    return loss
