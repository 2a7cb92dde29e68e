"""MaxMin-RLHF, part 2: the egalitarian (max-min) aggregation of K group reward models.

Chakraborty et al. 2024, "MaxMin-RLHF: Alignment with Diverse Human Preferences" (arXiv:2402.08925); spec
methods/models-and-loops.md #35. The policy objective is

    max_pi min_k F_k(pi),   F_k(pi) = E_x E_{y ~ pi}[r_k(x, y)] - beta KL(pi || pi_ref).

Two rules turn it into a per-sample reward for an RL / online loop, and they differ (E[min_k r_k] <= min_k E[r_k]):
    "group"     (the paper's Algorithm, per summaries of arXiv:2402.08925; not read in its text): estimate each
                group's utility on the batch, U_k = mean_i r_k(x_i, y_i), and reward every sample with the worst
                group's model r_{k_min}, k_min = argmin_k U_k;
    "pointwise" (the released code's rule): reward(x, y) = min_k r_k(x, y) of the raw group rewards.

Released code (josephxu1234/MaxMinRLHF@ec74f15, commits by co-author Jiahao Qiu; `training/robust_rlhf.py` L351-353:
`rewards = [min(rewards1[i], rewards2[i]) ...]` on the two reward models' raw logits minus `reward_baseline` (0),
then TRL PPO with `use_score_scaling` + `use_score_norm`, a running z-score of that min across batches, which keeps
the order of the rewards; `jobrrlhf.slurm` runs PPO with `--batch_size 1`, where the group rule and the pointwise
rule are the same reward). The code does not standardise the groups before the min, so `load_maxmin_judge(...,
"pointwise")` uses the raw rewards. Standardising each r_k on a shared reference set before the group rule's argmin
(`Standardizer`) is the library's choice (utilities of separately trained models are on different scales; the paper's
own normalisation, if any, was not found). `maxmin_objective` is the exact tabular objective, for checks and the lab.

Why the online judge `maxmin:<dir>` (= `maxmin_group:<dir>`) is the group rule and the released rule is opt-in
(`maxmin_pointwise:<dir>`): a Bradley-Terry reward model is identified only up to an additive constant, so the min
of two separately trained models' raw rewards depends on offsets no training signal fixes; the z-scored group rule
does not. Measured on the loud/quiet toy (docs/online.md, seeds 0/1/2) the raw pointwise min left the minority group at
0.00 / 0.00 / 0.00 (a pooled BT judge: 0.01 / 0.00 / 0.00), the group rule at 0.38 / 0.38 / 0.29.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from preflab.errors import ConfigError, PreflabError
from preflab.reward_models.protocols import RewardModel

RULES = ("group", "pointwise")


@dataclass(frozen=True)
class Standardizer:
    """Per-group z-score: (r_k - mean_k) / std_k. Fit it on one shared reference set of responses."""

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, rewards: Tensor, eps: float = 1e-8) -> "Standardizer":
        """From [K, N] rewards of every group's model on the same N reference (prompt, response) rows."""
        if rewards.dim() != 2 or rewards.shape[1] < 2:
            raise PreflabError(f"Standardizer.fit needs [K, N>=2] rewards, got {tuple(rewards.shape)}.")
        return cls(rewards.mean(1), rewards.std(1).clamp_min(eps))

    def __call__(self, rewards: Tensor) -> Tensor:
        return (rewards - self.mean.unsqueeze(1)) / self.std.unsqueeze(1)


def pointwise_min(rewards: Tensor) -> Tensor:
    """[N] min_k r_k(x_i, y_i) from [K, N] group rewards."""
    return rewards.min(0).values


def group_min(rewards: Tensor) -> tuple[Tensor, int, Tensor]:
    """(the worst group's rewards [N], k_min, group utilities U [K]) from [K, N] rewards of one batch. A sample with
    a NaN reward (a judge failure) is left out of U and keeps its NaN."""
    scored = ~rewards.isnan().any(0)
    utilities = rewards[:, scored].mean(1)
    k_min = int(utilities.argmin())
    return rewards[k_min], k_min, utilities


def maxmin_rewards(rewards: Tensor, rule: str = "group") -> Tensor:
    """[N] per-sample max-min reward from [K, N] (already standardised) group rewards, by `rule`."""
    if rule not in RULES:
        raise ConfigError(f"rule must be one of {RULES}, got {rule!r}.")
    if rewards.dim() != 2:
        raise PreflabError(f"group rewards must be [K, N], got {tuple(rewards.shape)}.")
    return group_min(rewards)[0] if rule == "group" else pointwise_min(rewards)


def maxmin_objective(policy: Tensor, rewards: Tensor, ref: Tensor, beta: float, rule: str = "group") -> Tensor:
    """Tabular max-min objective for one prompt, differentiable in `policy` [Y] (a distribution).

    rewards: [K, Y] group rewards of each response; ref: [Y] pi_ref.
    "group":     min_k (pi . r_k) - beta KL(pi || ref)           (the paper's objective)
    "pointwise": pi . min_k r_k - beta KL(pi || ref)             (what a pointwise-min reward optimises)
    """
    kl = (policy * (policy.clamp_min(1e-30).log() - ref.log())).sum()
    if rule == "group":
        value = (rewards @ policy).min()
    elif rule == "pointwise":
        value = pointwise_min(rewards) @ policy
    else:
        raise ConfigError(f"rule must be one of {RULES}, got {rule!r}.")
    return value - beta * kl


class MaxMinReward:
    """A `RewardModel` over K group reward models: standardise, then aggregate by `rule`.

    `score(prompts, responses)` returns [N]; with rule="group" the batch passed in is the batch whose worst
    group is chosen, and `last_utilities` / `last_group` record U_k and k_min for logging.
    """

    def __init__(self, models: Sequence[RewardModel], rule: str = "group", standardizer: Standardizer | None = None):
        if rule not in RULES:
            raise ConfigError(f"rule must be one of {RULES}, got {rule!r}.")
        if not models:
            raise PreflabError("MaxMinReward needs at least one group reward model.")
        self.models, self.rule, self.standardizer = list(models), rule, standardizer
        self.last_utilities: Tensor | None = None
        self.last_group: int | None = None

    def group_rewards(self, prompts: Sequence, responses: Sequence) -> Tensor:
        """[K, N] standardised rewards of each group's model. A model that raises on the batch scores it one sample
        at a time; a sample it still raises on is NaN (counted in `failed`), so the group rule keeps seeing the whole
        batch (an online loop's judge would otherwise retry sample by sample, which turns the group rule into the
        pointwise one) and the loop drops the NaN sample (judge/dropped)."""
        rewards = torch.stack([self._scores(m, list(prompts), list(responses)) for m in self.models])
        return self.standardizer(rewards) if self.standardizer is not None else rewards

    failed = 0

    def _scores(self, model, prompts: list, responses: list) -> Tensor:
        try:
            return torch.as_tensor(model.score(prompts, responses)).float().reshape(-1)
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 - a sample the model cannot score (e.g. a special token) is NaN, counted
            out = []
            for prompt, response in zip(prompts, responses):
                try:
                    out.append(float(torch.as_tensor(model.score([prompt], [response])).reshape(-1)[0]))
                except ConfigError:
                    raise
                except Exception:  # noqa: BLE001
                    out.append(float("nan"))
                    self.failed += 1
            return torch.tensor(out)

    def fit_standardizer(self, prompts: Sequence, responses: Sequence) -> Standardizer:
        """Fit and keep the z-score statistics on a shared reference set."""
        self.standardizer = None
        self.standardizer = Standardizer.fit(self.group_rewards(prompts, responses))
        return self.standardizer

    def score(self, prompts: Sequence, responses: Sequence) -> Tensor:
        rewards = self.group_rewards(prompts, responses)
        _, self.last_group, self.last_utilities = group_min(rewards)
        return maxmin_rewards(rewards, self.rule)


def load_maxmin_judge(path: str, rule: str = "group", standardize: bool | None = None) -> MaxMinReward:
    """The judge `maxmin:<dir>` (rule "group", alias `maxmin_group:<dir>`) / `maxmin_pointwise:<dir>` of online
    runs: the K components of an em_mixture run (`task: reward`, `reward_head: em_mixture`, its mixture.json), aggregated by `rule`.

    standardize: z-score each component with the statistics saved in mixture.json (every training response) before
    the rule. Default: True for "group" (the library's choice), False for "pointwise", which is then the released
    code's reward min_k r_k(x, y) of the raw component rewards (josephxu1234/MaxMinRLHF `training/robust_rlhf.py`).

    As an online judge the "group" rule sees one round's distinct (prompt, completion) pairs at a time (the loop's
    judge scores each distinct pair once per call), so U_k is their mean; it is never cached (`batch_dependent`): a
    completion's reward depends on the batch it was judged in."""
    from preflab.reward_models.interface import load_judge
    from preflab.reward_models.maxmin_train import load_mixture

    if rule not in RULES:
        raise ConfigError(f"rule must be one of {RULES}, got {rule!r}.")
    mixture = load_mixture(path)
    stats = mixture["standardizer"]
    if standardize is None:
        standardize = rule == "group"
    standardizer = Standardizer(torch.tensor(stats["mean"]), torch.tensor(stats["std"])) if standardize else None
    judge = MaxMinReward([load_judge(c) for c in mixture["components"]], rule, standardizer)
    judge.batch_dependent = rule == "group"
    judge.__name__ = f"maxmin_{rule}"
    return judge
