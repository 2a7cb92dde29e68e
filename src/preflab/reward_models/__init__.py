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
from __future__ import annotations

from preflab._lazy import lazy_exports

# name -> submodule, imported on first use (preflab._lazy): `import preflab.reward_models.fspo` (the FSPO toy rows,
# the episode builders) no longer imports torch through this package's heads
_EXPORTS = {
    "BTHead": "bt", "bt_losses": "bt",
    "GPMHead": "gpm", "skew_score": "gpm", "score_matrix": "gpm",
    "MultiObjectiveHead": "multi_objective", "directional_best_of_n": "multi_objective",
    "evaluate_reward_model": "eval",
    "RewardFunction": "interface", "PreferenceModel": "interface", "RewardModel": "interface",
    "BTPreference": "interface", "GPMPreference": "interface", "SymmetrizedPreference": "interface",
    "MatrixPreference": "interface", "load_judge": "interface",
    "fit_reward_mixture": "maxmin", "RewardMixture": "maxmin", "cluster_purity": "maxmin",
    "MaxMinReward": "maxmin_aggregate", "Standardizer": "maxmin_aggregate", "maxmin_rewards": "maxmin_aggregate",
    "mc_dropout_probs": "uncertainty", "bald": "uncertainty", "select_reliable_pairs": "uncertainty",
    "build_episodes": "fewshot_episodes", "plan_episodes": "fewshot_episodes",
    "PreferenceWeightAdapter": "orchestrator", "fit_adapter": "orchestrator", "pro_targets": "orchestrator",
    "OrchestratedReward": "orchestrator",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
