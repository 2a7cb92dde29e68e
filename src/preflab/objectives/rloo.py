"""RLOO: REINFORCE with a leave-one-out baseline, as TRL 1.16's RLOOTrainer computes it.

Paper: Ahmadian et al., 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
Feedback in LLMs" (arXiv:2402.14740), Eq. 5 (the leave-one-out baseline) and §3 (the KL penalty in the reward);
Kool et al., 2019, "Buy 4 REINFORCE samples, get a baseline for free!". On a ListBatch: B prompts, G completions
each, judge scores s = batch.scores [B, G], token log-probs lp (policy), lp_old (sampling policy), lp_ref:

    r_i    = clip(s_i, lo, hi)                          reward_clip_range (lo, hi); none: no clipping
    r_i   -= beta * sum_t m_t (lp_old_t - lp_ref_t)     the KL penalty in the reward (beta > 0): the first-order log
                                                        ratio of the sampling policy, summed over the completion
    b_i    = (sum_j r_j - r_i) / (n - 1)                the leave-one-out baseline over the n scored completions of
                                                        the prompt (an unscored one is in no baseline)
    A_i    = r_i - b_i  (= n / (n - 1) (r_i - mean_j r_j))
    A      = (A - mean A) / (std A + 1e-4)              normalize_advantages: over all the scored completions of
                                                        the batch (std with Bessel's correction, its factor
                                                        n / (n - 1) rounded to float32: TRL's nanstd, grpo.nan_std)
    A_i    = 0 for an unscored completion, and for every completion of a prompt with one scored completion
    rho_i  = exp(sum_t m_t lp_t - sum_t m_t lp_old_t)   one sequence-level importance ratio per completion
    l_i    = -min(rho_i A_i, clip(rho_i, 1 - epsilon, 1 + epsilon_high) A_i)
    loss   = mean over the batch's completions of l_i   (TRL: per_sequence_loss.mean())

The KL term is not in the loss: the policy is regularised only through the reward (TRL's RLOOTrainer; unlike
GRPOTrainer's per-token k3 term). With num_iterations 1 lp_old = lp (rho = 1 in value); num_iterations > 1 reuses a
round's completions and the clip bounds the update. losses[b] is prompt b's share: sum over its completions of l_i
divided by the batch's completions per prompt, so that loss = losses.mean().

Extras (all optional): "old_logps" [B, G, T] sampling-policy token log-probs (default: lp detached); "advantages"
[B, G] precomputed (the online run computes them over the whole generation round, where TRL normalises over its
generation batch; default: from the scores as above, over this batch); "scored" [B, G] bool, the completions a
reward function scored (default: valid). needs_reference is True iff beta > 0 (the KL penalty needs lp_ref).
Metrics (TRL names): reward (mean unclipped score of the scored completions), reward_std (their std over the batch,
Bessel), frac_reward_zero_std (groups whose shaped rewards tie), kl (token mean of lp_old - lp_ref over the completion
tokens, when a reference is given), clip_ratio/{low,high,region}_mean (over completions), clip_ratio/low_min and
clip_ratio/high_max (the min / max over the micro-batch's completions of its clipped flag).

Deviation from the paper: none in the estimator; the loss is TRL 1.16's (PPO-style clip on a sequence-level ratio,
which the paper's vanilla REINFORCE does not have: with num_iterations 1 the two have the same gradient).
"""
from dataclasses import dataclass
from typing import ClassVar

import torch

from preflab.errors import ConfigError
from preflab.objectives.base import ListBatch, Objective, ObjectiveOutput, as_loss_dtype
from preflab.objectives.grpo import nan_extremum, nan_std  # nan_std: TRL's nanstd (float32 Bessel factor)

NORMALIZE_EPS = 1e-4  # TRL 1.16 RLOOTrainer: (A - mean) / (std + 1e-4)


def shaped_rewards(scores: torch.Tensor, scored: torch.Tensor, sequence_kl: torch.Tensor | None = None,
                   beta: float = 0.0, reward_clip_range=None) -> torch.Tensor:
    """[B, G] the rewards RLOO's baseline reads: scores clipped to reward_clip_range, minus beta x the completion's
    summed KL when beta != 0; NaN where unscored."""
    r = torch.where(scored, scores, torch.nan)
    if reward_clip_range is not None:
        r = r.clamp(min=reward_clip_range[0], max=reward_clip_range[1])
    if beta != 0.0:
        if sequence_kl is None:
            raise ConfigError("RLOO: beta > 0 puts beta x KL(sampling policy || reference) into the reward; the "
                              "batch has no reference log-probs. Give a reference or set beta: 0.")
        r = r - beta * sequence_kl.to(r.dtype)
    return r


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """[B, G] A_i = r_i - (sum_{j != i} r_j) / (n - 1), n the prompt's non-NaN rewards; NaN rewards are in no
    baseline and keep a NaN advantage, as does every completion of a prompt with n = 1 (0 / 0)."""
    n = (~rewards.isnan()).sum(-1, keepdim=True).to(rewards.dtype)
    baseline = (torch.nansum(rewards, -1, keepdim=True) - rewards) / (n - 1)
    return rewards - baseline


def rloo_advantages(rewards: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """[B, G] RLOO advantages of shaped rewards [B, G] (NaN: unscored; module docstring): leave-one-out,
    optionally normalised over all the batch's scored completions; 0 where a completion is unscored or alone."""
    adv = leave_one_out_advantages(rewards)
    if normalize:
        adv = (adv - torch.nanmean(adv)) / (nan_std(adv) + NORMALIZE_EPS)
    return torch.nan_to_num(adv, nan=0.0)


@dataclass(frozen=True)
class RLOO(Objective):
    beta: float = 0.05                    # KL coefficient in the reward (TRL 1.16 RLOOConfig's default)
    epsilon: float = 0.2                  # clip range, lower side (and upper when epsilon_high is None)
    epsilon_high: float | None = None     # upper clip range (TRL epsilon_high)
    normalize_advantages: bool = False    # A -> (A - mean) / (std + 1e-4) over the batch (TRL's option)
    reward_clip_range: tuple | None = None  # (lo, hi) clamp of the rewards before the KL and the baseline (TRL)

    batch_type = ListBatch
    needs_reference = True                # per instance: True when beta > 0
    paper = "Ahmadian et al. 2024, Back to Basics (arXiv:2402.14740), RLOO"
    checked_against = ("reference code: TRL 1.16 RLOOTrainer._generate_and_score_completions (advantages, KL in the "
                       "reward, reward_clip_range, normalize_advantages, unscorable completions, metrics) and "
                       "_compute_loss (loss, gradient, clip ratios) (tests/objectives/test_rloo.py, 1e-12; 1e-6 "
                       "where TRL's float32 Bessel factor or clip flags enter)")
    tags = {"data": ("list-wise",), "framework": ("online",), "constraint": ("reference",), "property": ()}
    online_trainer = "rloo"  # a policy gradient on sampled completions: task: online only (check_online_only)

    def __post_init__(self):
        self.validate()
        object.__setattr__(self, "needs_reference", self.beta > 0)

    @property
    def micro_batch_statistic(self) -> bool:
        """normalize_advantages on a batch without the online run's round advantages (offline lists) takes the mean
        and std over the micro-batch (base.couples_micro_batch)."""
        return bool(self.normalize_advantages)

    # online the round's advantages are normalised over the round, not the micro-batch (base.online_micro_batch_
    # statistic_parts; tests/objectives/test_micro_batch_coupling.py's online check)
    online_micro_batch_statistic: ClassVar[bool] = False

    def validate(self):  # beta = 0 is valid here (no reference), unlike the base class's check
        if self.beta < 0 or self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ConfigError(f"RLOO: beta, epsilon and epsilon_high must be >= 0, got {self.beta}, {self.epsilon}, "
                              f"{self.epsilon_high}.")
        clip = self.reward_clip_range
        if clip is not None and (len(clip) != 2 or not clip[0] <= clip[1]):
            raise ConfigError(f"RLOO: reward_clip_range must be [min, max] with min <= max, got {list(clip)}.")

    def compute(self, batch: ListBatch) -> ObjectiveOutput:
        lp = as_loss_dtype(batch.policy.masked())                                  # [B, G, T]
        mask = batch.policy.mask & batch.valid.unsqueeze(-1)
        m = mask.to(lp.dtype)
        scored = batch.valid & torch.as_tensor(batch.extras.get("scored", batch.valid), device=lp.device).bool()
        scores = torch.where(scored, batch.scores.to(lp.dtype), 0.0)
        old = batch.extras.get("old_logps")
        old = lp.detach() if old is None else torch.where(mask, torch.as_tensor(old).to(lp), 0.0)
        token_kl = None
        if batch.ref is not None:  # first-order log ratio of the sampling policy to the reference (TRL's RLOO)
            token_kl = (old - torch.where(mask, as_loss_dtype(batch.ref.masked()), 0.0)) * m
        rewards = shaped_rewards(scores, scored, None if token_kl is None else token_kl.sum(-1), self.beta,
                                 self.reward_clip_range)
        if "advantages" in batch.extras:
            adv = torch.as_tensor(batch.extras["advantages"], dtype=lp.dtype, device=lp.device)
        else:
            adv = rloo_advantages(rewards, self.normalize_advantages)
        ratio = torch.exp((lp * m).sum(-1) - (old * m).sum(-1))                    # [B, G]
        high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        per_sequence = -torch.minimum(ratio * adv, ratio.clamp(1 - self.epsilon, 1 + high) * adv)
        valid = batch.valid.to(lp.dtype)
        completions = valid.sum().clamp_min(1)
        B = lp.shape[0]
        losses = (per_sequence * valid).sum(-1) / (completions / B)

        group_std = nan_std(rewards, dim=-1)  # TRL: of the shaped rewards (clipped, KL in)
        metrics = {"reward": scores.sum() / scored.sum().clamp_min(1),
                   "reward_std": torch.nan_to_num(nan_std(torch.where(scored, scores, torch.nan)), nan=0.0),
                   "frac_reward_zero_std": torch.isclose(group_std, torch.zeros_like(group_std)).to(lp.dtype).mean()}
        counts = {"reward": scored.sum().to(lp.dtype)}
        if token_kl is not None:
            metrics["kl"] = token_kl.sum() / m.sum().clamp_min(1)
            counts["kl"] = m.sum()
        low_clip = (ratio < 1 - self.epsilon) & (adv < 0)
        high_clip = (ratio > 1 + high) & (adv > 0)
        for name, flag in (("low", low_clip), ("high", high_clip), ("region", low_clip | high_clip)):
            metrics[f"clip_ratio/{name}_mean"] = (flag.to(lp.dtype) * valid).sum() / completions
            counts[f"clip_ratio/{name}_mean"] = valid.sum()
        metrics["clip_ratio/low_min"] = nan_extremum(torch.where(batch.valid, low_clip.to(lp.dtype), torch.nan), "min")
        metrics["clip_ratio/high_max"] = nan_extremum(torch.where(batch.valid, high_clip.to(lp.dtype), torch.nan),
                                                      "max")
        return ObjectiveOutput(losses.mean(), losses, {k: v.detach() for k, v in metrics.items()}, counts,
                               metric_extrema={"clip_ratio/low_min": "min", "clip_ratio/high_max": "max"})

    @classmethod
    def example_extras(cls, batch) -> dict:
        # fixed sampling-policy log-probs, as GRPO's: the surrogate's value does not move with lp otherwise
        return {"old_logps": batch.policy.token_logps.detach().clone()}


OBJECTIVE = RLOO
