"""Reward and preference models, part 2: mixtures over users, uncertainty, personalization.

Everything here works on tensors and features, so it composes with any backbone (synthetic features, or a
transformer with `backbone_head.PooledHead`), and with any object that has `score(prompts, responses)` (a reward
model) or `prefer(prompts, a, b)` (a preference model); see `common.py`.

    maxmin.py            MaxMin-RLHF EM mixture of K reward models over latent user groups (fit_reward_mixture)
    maxmin_aggregate.py  max-min aggregation of group rewards: group-min / pointwise-min, MaxMinReward
    uncertainty.py       UPO: MC-dropout probabilities, BALD, majority-vote filter, reliable-pair selection
    estimator.py         an antisymmetric dropout pair classifier over features, for UPO
    fewshot_episodes.py  FSPO: per-user labelled pairs -> episode rows {prompt, chosen, rejected, user_id, ...}
    fewshot_scorer.py    a feature-level few-shot conditioned preference scorer (FSPO's idea, testable)
    orchestrator.py      PRO: prompt-aware weights over K reward models (BT or KL training), OrchestratedReward
    directional.py       RPS: directional neighbourhood consensus selection (inference time)
"""
from preflab.preference.common import PreferenceModel, RewardModel
from preflab.preference.fewshot_episodes import build_episodes, plan_episodes
from preflab.preference.maxmin import RewardMixture, cluster_purity, fit_reward_mixture
from preflab.preference.maxmin_aggregate import MaxMinReward, Standardizer, maxmin_rewards
from preflab.preference.orchestrator import OrchestratedReward, PreferenceWeightAdapter, fit_adapter, pro_targets
from preflab.preference.uncertainty import bald, mc_dropout_probs, select_reliable_pairs

__all__ = [
    "RewardModel", "PreferenceModel", "fit_reward_mixture", "RewardMixture", "cluster_purity", "MaxMinReward",
    "Standardizer", "maxmin_rewards", "mc_dropout_probs", "bald", "select_reliable_pairs", "build_episodes",
    "plan_episodes", "PreferenceWeightAdapter", "fit_adapter", "pro_targets", "OrchestratedReward",
]
