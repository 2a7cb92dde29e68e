"""TRL's `use_weighting` (WPO) as a wrapper around any pairwise objective (a helper module, not an objective)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from preflab.errors import ConfigError
from preflab.objectives.base import ObjectiveOutput


@dataclass(frozen=True)
class WPOWeighted:
    """TRL 1.16's `use_weighting` (WPO: Zhou et al., 2024, "WPO: Enhancing RLHF with Weighted Preference
    Optimization", arXiv:2406.11827, Eq. 2): each pair's loss times

        w = exp(mean_t[log p(y^w_t) - log sum_v p(v)^2]) * exp(mean_t[log p(y^l_t) - log sum_v p(v)^2])

    computed from the policy without gradient (means over each response's tokens, as TRL does). Not clamped: TRL
    1.16's DPOTrainer multiplies by the weights as they are, which exceed 1 once the policy puts more mass on the
    response's tokens than its own expected probability sum_v p(v)^2 (TRL 0.x clamped them at 1, min(1, w); preflab
    did too, so a run's loss left TRL 1.16's as soon as a weight passed 1). The scorer supplies the per-token terms
    as the `wpo` token need (extras `chosen_wpo` / `rejected_wpo`)."""

    inner: object

    def __getattr__(self, name):  # batch_type, needs_reference, modality, extras, ... are the inner objective's
        return getattr(self.inner, name)

    @property
    def token_needs(self) -> tuple:
        return tuple(dict.fromkeys(tuple(self.inner.token_needs) + ("wpo",)))

    def row_extras(self) -> dict:
        return self.inner.row_extras()

    def __call__(self, batch) -> ObjectiveOutput:
        out = self.inner(batch)
        if "chosen_wpo" not in batch.extras:
            raise ConfigError("use_weighting needs the scorer's `wpo` token terms (chosen_wpo / rejected_wpo); this "
                              "run's scorer does not provide them.")

        def mean(values, side):
            mask = side.mask.to(values.dtype)
            return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)

        weights = torch.exp(mean(batch.extras["chosen_wpo"], batch.policy_chosen)
                            + mean(batch.extras["rejected_wpo"], batch.policy_rejected)).detach()
        losses = out.losses * weights.to(out.losses.dtype)
        return ObjectiveOutput(loss=losses.mean(), losses=losses,
                               metrics={**out.metrics, "policy_weights": weights.mean()})
