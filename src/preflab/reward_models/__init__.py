"""Reward and preference models: the whole family in one place.

Training and scoring (`preflab train` with `task: reward`, `preflab eval --task reward`):
    train.py             train_reward(cfg, head=...): Bradley-Terry by default
    bt.py gpm.py         heads: BTHead (BT, margin, centering), GPMHead (skew-symmetric preference embeddings)
    multi_objective.py   DPA attribute-regression head and directional best-of-n
    context.py           context-aware rows (per-row contexts rendered into the prompt)
    heads.py data.py     value heads on a causal LM; pairwise reward rows
    eval.py cli.py       accuracy overall / per subset / per context; the eval command's pieces
    interface.py         RewardFunction.score, PreferenceModel.prefer, BT/GPM/matrix preferences, load_judge
Mixtures over users, uncertainty, personalization (tensor/feature level, any backbone):
    protocols.py         the RewardModel / PreferenceModel protocols these compose with, small tensor helpers
    maxmin.py            MaxMin-RLHF EM mixture of K reward models over latent user groups
    maxmin_train.py      the same EM as `preflab train` (reward_head: em_mixture); maxmin_toy.py: its loud/quiet toy
    maxmin_aggregate.py  max-min aggregation of group rewards
    uncertainty.py       UPO: MC-dropout probabilities, BALD, reliable-pair selection (estimator.py: its classifier)
    fewshot_episodes.py  FSPO episodes; fewshot_scorer.py: a few-shot conditioned preference scorer
    orchestrator.py      PRO: prompt-aware weights over K reward models
    directional.py       RPS: directional neighbourhood consensus selection (inference time)
    backbone_head.py     a pooled head over a transformer backbone

Until 0.2 this room was three: `preflab.reward`, `preflab.preference` (and `preflab.rewards`, now
`preflab.verifiers`); those names still import, with a DeprecationWarning, for one release.
"""
from preflab.reward_models.bt import BTHead, bt_losses
from preflab.reward_models.eval import evaluate_reward_model
from preflab.reward_models.fewshot_episodes import build_episodes, plan_episodes
from preflab.reward_models.gpm import GPMHead, score_matrix, skew_score
from preflab.reward_models.interface import (BTPreference, GPMPreference, MatrixPreference, PreferenceModel,
                                             RewardFunction, RewardModel, SymmetrizedPreference, load_judge)
from preflab.reward_models.maxmin import RewardMixture, cluster_purity, fit_reward_mixture
from preflab.reward_models.maxmin_aggregate import MaxMinReward, Standardizer, maxmin_rewards
from preflab.reward_models.multi_objective import MultiObjectiveHead, directional_best_of_n
from preflab.reward_models.orchestrator import (OrchestratedReward, PreferenceWeightAdapter, fit_adapter,
                                                pro_targets)
from preflab.reward_models.uncertainty import bald, mc_dropout_probs, select_reliable_pairs

__all__ = ["BTHead", "bt_losses", "GPMHead", "skew_score", "score_matrix", "MultiObjectiveHead",
           "directional_best_of_n", "evaluate_reward_model", "RewardFunction", "PreferenceModel", "RewardModel",
           "BTPreference", "GPMPreference", "SymmetrizedPreference", "MatrixPreference", "load_judge",
           "fit_reward_mixture", "RewardMixture", "cluster_purity", "MaxMinReward", "Standardizer",
           "maxmin_rewards", "mc_dropout_probs", "bald", "select_reliable_pairs", "build_episodes",
           "plan_episodes", "PreferenceWeightAdapter", "fit_adapter", "pro_targets", "OrchestratedReward"]
