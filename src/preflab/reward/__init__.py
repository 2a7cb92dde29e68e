"""Reward and preference models: heads, training, evaluation and the judge interface for online loops.

- `preflab.reward.train.train_reward(cfg, head=...)`: `preflab train` with `task: reward` (BT by default).
- Heads: `bt.BTHead` (Bradley-Terry, margin, centering), `gpm.GPMHead` (skew-symmetric preference embeddings),
  `multi_objective.MultiObjectiveHead` (DPA attribute regression); `context` renders per-row contexts.
- `eval.evaluate_reward_model(model_dir_or_model, data)`: accuracy overall / per subset / per context.
- `interface`: `RewardFunction.score(prompts, responses)`, `PreferenceModel.prefer(prompts, a, b)` and
  `win_rate_matrix`; `load_judge(path)`.
"""
from preflab.reward.bt import BTHead, bt_losses
from preflab.reward.eval import evaluate_reward_model
from preflab.reward.gpm import GPMHead, score_matrix, skew_score
from preflab.reward.interface import (BTPreference, GPMPreference, MatrixPreference, PreferenceModel, RewardFunction,
                                      RewardModel, SymmetrizedPreference, load_judge)
from preflab.reward.multi_objective import MultiObjectiveHead, directional_best_of_n

__all__ = ["BTHead", "bt_losses", "GPMHead", "skew_score", "score_matrix", "MultiObjectiveHead",
           "directional_best_of_n", "evaluate_reward_model", "RewardFunction", "PreferenceModel", "RewardModel",
           "BTPreference", "GPMPreference", "SymmetrizedPreference", "MatrixPreference", "load_judge"]
