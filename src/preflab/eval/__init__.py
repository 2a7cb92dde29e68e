"""Diagnostics that say whether preference tuning worked (DESIGN.md, "eval/").

    preflab eval CHECKPOINT --data heldout.jsonl --reference REF      # -> CHECKPOINT/eval.json

Modules (each a set of pure functions except `run`, `score` and `loading`):
    metrics   ranking accuracy R / R~, implicit-reward accuracy, 3D drifts, lengths, token implicit rewards
    ranking   idealized ranking accuracy R*, Thm 4.1 difficulty, ties, listwise ranking accuracy
    winrate   win rate of policy vs reference generations with Wilson's interval; reward model / judge hooks
    score     sequence log-prob sums through the trainer's scoring path
    loading   run directories, checkpoints and builtin models for evaluation
    run       evaluate_models -> the eval.json dict (loading a run and writing eval.json:
              preflab.eval_cli.checkpoint.evaluate_checkpoint, the `preflab eval` command's, above this room)
    names     METRIC_DOCS: what each metric name means
"""
from __future__ import annotations

from preflab._lazy import lazy_exports

from preflab.eval.names import METRIC_DOCS

_EXPORTS = {
    "PairScores": "metrics", "pair_diagnostics": "metrics", "ranking_accuracy": "metrics",
    "implicit_reward_accuracy": "metrics", "token_implicit_rewards": "metrics",
    "idealized_ranking_accuracy": "ranking", "idealized_ranking_accuracy_range": "ranking",
    "ranking_loss_threshold": "ranking", "difficulty_summary": "ranking", "listwise_ranking_accuracy": "ranking",
    "win_rate": "winrate", "wilson_interval": "winrate", "compare_generations": "winrate",
    "EvalOptions": "run", "evaluate_models": "run",
}
__all__ = ["METRIC_DOCS", *_EXPORTS]


__getattr__ = lazy_exports(__name__, _EXPORTS)
