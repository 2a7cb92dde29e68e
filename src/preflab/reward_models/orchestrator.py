"""PRO (Preference Orchestrator): a prompt-aware adapter that maps prompt features to weights over K reward models.

"Preference Orchestrator: Prompt-Aware Multi-Objective Alignment for Large Language Models" (arXiv:2511.10656,
ICLR 2026 submission); spec methods/models-and-loops.md #12 (architecture details there are unverified).
An adapter g_psi(x) in the simplex Delta^{K-1} replaces hand-set weights in multi-objective RLHF:

    R(x, y) = sum_k g_psi(x)_k r_k(x, y)                        (the combined, per-prompt reward)

Two ways to train it (`fit_adapter(loss=...)`):
    "kl"  (default) the paper's form: the adapter learns from the K normalised rewards of the *preferred* response
          (abstract: "training on normalized reward scores from multiple reward models for preferred responses";
          the sciencestack summary: a KL objective against softmax targets w*):
          z_k = (r_k(x, y_w) - mu_k) / s_k, w*(x) = softmax(z / T),  L = KL(w* || g(x))
          (cross-entropy with soft targets, minus the targets' entropy); mu_k, s_k over the training rows.
    "bt"  the library's alternative on pairs (x, y_w, y_l) with the K rewards of both responses:
          L = -log sigmoid(s * sum_k g(x)_k (r_k(x, y_w) - r_k(x, y_l)))
s is a fixed (or learned) inverse temperature; with weights on the simplex, the weights are identified once s is.

Deviation from the paper: the adapter is linear or a one-hidden-layer MLP over given prompt features (the paper's
encoder is not known here); z-scores are the normalisation (the paper's exact normalisation was not reachable) and
T = 1 by default; the "bt" form is not the paper's.
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


def reward_stats(chosen_rewards: Tensor) -> tuple[Tensor, Tensor]:
    """(mu, s): per-objective mean and standard deviation (population, over rows) of [N, K] rewards; a constant
    objective (s = 0) cannot be normalised and raises."""
    if chosen_rewards.dim() != 2 or len(chosen_rewards) < 2:
        raise PreflabError(f"chosen_rewards must be [N, K] with N >= 2 rows, got {tuple(chosen_rewards.shape)}.")
    mean, std = chosen_rewards.mean(0), chosen_rewards.std(0, correction=0)
    if (std <= 0).any():
        flat = [int(k) for k in torch.nonzero(std <= 0).flatten()]
        raise PreflabError(f"reward model(s) {flat} give the same reward to every preferred response, so their "
                           "z-scores are undefined; drop them or pass targets built with pro_targets(..., std=...).")
    return mean, std


def fit_adapter(adapter: PreferenceWeightAdapter, features: Tensor, *, chosen_rewards: Tensor,
                rejected_rewards: Tensor | None = None, targets: Tensor | None = None, loss: str = "kl",
                temperature: float = 1.0, steps: int = 500, lr: float = 0.05, weight_decay: float = 0.0) -> float:
    """Train the adapter full-batch; returns the final loss.

    loss "kl" (the paper's form, default): targets w* = pro_targets(chosen_rewards, mu, s, temperature) with
    (mu, s) = reward_stats(chosen_rewards), unless `targets` are given; rejected_rewards are not used and are refused.
    loss "bt" (the library's form): Bradley-Terry on the combined reward; needs rejected_rewards.
    """
    if loss == "bt":
        if rejected_rewards is None:
            raise ConfigError("loss='bt' needs rejected_rewards (the K rewards of each rejected response).")
        fn = lambda: bt_loss(adapter, features, chosen_rewards, rejected_rewards)  # noqa: E731
    elif loss == "kl":
        if rejected_rewards is not None:
            raise ConfigError("rejected_rewards are read only by loss='bt'; PRO's loss (the default, 'kl') learns "
                              "from the preferred responses' rewards alone. Pass loss='bt' for the Bradley-Terry "
                              "form, or drop rejected_rewards.")
        if targets is None:
            targets = pro_targets(chosen_rewards, *reward_stats(chosen_rewards), temperature)
        fn = lambda: kl_loss(adapter, features, targets)  # noqa: E731
    else:
        raise ConfigError(f"loss must be 'kl' or 'bt', got {loss!r}.")
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
