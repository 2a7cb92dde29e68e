"""PRO (Preference Orchestrator): a prompt-aware adapter that maps prompt features to weights over K reward models.

"Preference Orchestrator: Prompt-Aware Multi-Objective Alignment for Large Language Models" (arXiv:2511.10656,
ICLR 2026 submission); spec methods/models-and-loops.md #12 (architecture details there are unverified).
An adapter g_psi(x) in the simplex Delta^{K-1} replaces hand-set weights in multi-objective RLHF:

    R(x, y) = sum_k g_psi(x)_k r_k(x, y)                        (the combined, per-prompt reward)

Two ways to train it, on pairs (x, y_w, y_l) with the K rewards of both responses:
    "bt"  Bradley-Terry on the combined reward:  L = -log sigmoid(s * sum_k g(x)_k (r_k(x, y_w) - r_k(x, y_l)))
    "kl"  the summary's target form: z_k = (r_k(x, y_w) - mu_k) / s_k, w*(x) = softmax(z / T),
          L = KL(w* || g(x))   (cross-entropy with soft targets, minus the targets' entropy)
s is a fixed (or learned) inverse temperature; with weights on the simplex, the weights are identified once s is.

Deviation from the paper: the adapter is linear or a one-hidden-layer MLP over given prompt features (the paper's
encoder is not known here); the BT form is the library's, the KL form follows the third-party summary.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from preflab.errors import ConfigError, PreflabError
from preflab.reward_models.protocols import RewardModel, fit_full_batch


class PreferenceWeightAdapter(nn.Module):
    """g(x) = softmax(MLP(features)) over `num_rewards` reward models; `hidden=0` is a linear map."""

    def __init__(self, feature_dim: int, num_rewards: int, hidden: int = 0, learn_scale: bool = False):
        super().__init__()
        if num_rewards < 1:
            raise ConfigError(f"num_rewards must be >= 1, got {num_rewards}.")
        self.net = (nn.Linear(feature_dim, num_rewards) if hidden == 0 else
                    nn.Sequential(nn.Linear(feature_dim, hidden), nn.Tanh(), nn.Linear(hidden, num_rewards)))
        self.log_scale = nn.Parameter(torch.zeros(()), requires_grad=learn_scale)

    def logits(self, features: Tensor) -> Tensor:
        return self.net(features)

    def forward(self, features: Tensor) -> Tensor:
        """[N, K] weights on the simplex."""
        return torch.softmax(self.logits(features), -1)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp()


def combined_reward(weights: Tensor, rewards: Tensor) -> Tensor:
    """[N] sum_k w_k r_k from [N, K] (or [K]) weights and [N, K] rewards."""
    if rewards.dim() != 2 or weights.shape[-1] != rewards.shape[-1]:
        raise PreflabError(f"weights {tuple(weights.shape)} and rewards {tuple(rewards.shape)} must be [N, K].")
    return (weights * rewards).sum(-1)


def pro_targets(chosen_rewards: Tensor, mean: Tensor, std: Tensor, temperature: float = 1.0) -> Tensor:
    """w*(x) = softmax(((r(x, y_w) - mu) / s) / T) from [N, K] rewards of the preferred response."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}.")
    return torch.softmax((chosen_rewards - mean) / std / temperature, -1)


def bt_loss(adapter: PreferenceWeightAdapter, features: Tensor, chosen_rewards: Tensor,
            rejected_rewards: Tensor) -> Tensor:
    """Mean -log sigmoid(s * R(x, y_w) - s * R(x, y_l)) with R the adapter-weighted reward."""
    margin = combined_reward(adapter(features), chosen_rewards - rejected_rewards)
    return -F.logsigmoid(adapter.scale * margin).mean()


def kl_loss(adapter: PreferenceWeightAdapter, features: Tensor, targets: Tensor) -> Tensor:
    """Mean KL(w* || g(x)) over rows."""
    log_g = torch.log_softmax(adapter.logits(features), -1)
    return (targets * (targets.clamp_min(1e-30).log() - log_g)).sum(-1).mean()


def fit_adapter(adapter: PreferenceWeightAdapter, features: Tensor, *, chosen_rewards: Tensor,
                rejected_rewards: Tensor | None = None, targets: Tensor | None = None, loss: str = "bt",
                steps: int = 500, lr: float = 0.05, weight_decay: float = 0.0) -> float:
    """Train the adapter full-batch by "bt" (needs rejected_rewards) or "kl" (needs targets); returns the loss."""
    if loss == "bt":
        if rejected_rewards is None:
            raise ConfigError("loss='bt' needs rejected_rewards (the K rewards of each rejected response).")
        fn = lambda: bt_loss(adapter, features, chosen_rewards, rejected_rewards)  # noqa: E731
    elif loss == "kl":
        if targets is None:
            raise ConfigError("loss='kl' needs targets; build them with pro_targets(chosen_rewards, mean, std).")
        fn = lambda: kl_loss(adapter, features, targets)  # noqa: E731
    else:
        raise ConfigError(f"loss must be 'bt' or 'kl', got {loss!r}.")
    return fit_full_batch(fn, adapter.parameters(), steps=steps, lr=lr, weight_decay=weight_decay)


class OrchestratedReward:
    """A `RewardModel`: R(x, y) = sum_k g(phi(x))_k r_k(x, y), phi = `featurize(prompts) -> [N, F]`."""

    def __init__(self, models: Sequence[RewardModel], adapter: PreferenceWeightAdapter,
                 featurize: Callable[[Sequence], Tensor]):
        if not models:
            raise PreflabError("OrchestratedReward needs at least one reward model.")
        self.models, self.adapter, self.featurize = list(models), adapter, featurize

    def weights(self, prompts: Sequence) -> Tensor:
        with torch.no_grad():
            return self.adapter(self.featurize(prompts))

    def score(self, prompts: Sequence, responses: Sequence) -> Tensor:
        rewards = torch.stack([torch.as_tensor(m.score(prompts, responses)).float().reshape(-1)
                               for m in self.models], -1)
        return combined_reward(self.weights(prompts), rewards)
