"""preflab.loops.rollout's Rollout and completion_metrics (its public sampling API): completions group-major, and
TRL's completion statistics by hand."""
import pytest

from preflab.loops.rollout import PromptRow, Rollout, completion_metrics


def test_rollout_completions_are_group_major_and_their_metrics_are_trls():
    """Completion i belongs to prompt row i // G (2 rows, G = 3); the metrics: lengths 2 4 1 3 1 2 (mean 13/6),
    three end with eos (2, 1, 3: terminated mean 2, not the mean of all six), three were cut (clipped_ratio 1/2)."""
    rows = [PromptRow(0, "p0", [1], {"id": 0}), PromptRow(1, "p1", [1], {"id": 1})]
    ids = [[5, 2], [5, 5, 5, 5], [2], [7, 7, 2], [7], [7, 7]]
    rollout = Rollout(rows, 3, ids, ["x"] * 6, [c[-1] == 2 for c in ids])
    assert rollout.prompt_index == [0, 0, 0, 1, 1, 1]
    assert rollout.prompts() == ["p0"] * 3 + ["p1"] * 3 and rollout.columns() == [{"id": 0}] * 3 + [{"id": 1}] * 3
    assert completion_metrics(rollout) == pytest.approx({
        "completions/mean_length": 13 / 6, "completions/min_length": 1.0, "completions/max_length": 4.0,
        "completions/clipped_ratio": 0.5, "completions/mean_terminated_length": 2.0, "val/contain_eos_token": 0.5})
