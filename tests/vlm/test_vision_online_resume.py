"""Exact mid-round resume of the vision online run (online_task: vision_dataset) for the group trainers besides
grpo (tests/vlm/test_vision_r1_online.py's resume test): rloo (its leave-one-out advantages of the KL-penalised
rewards), gspo (sequence ratios) and tpo (ranked groups). docs/guarantees.md's matrix names these."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_vision_r1_online import _cfg, _run  # noqa: E402
from resume_mid_run import logged_losses, resume_mid_run  # noqa: E402  tests/, on sys.path beside conftest


@pytest.mark.parametrize("over", [dict(trainer="rloo", beta=0.05, num_iterations=2),
                                  dict(trainer="gspo"),
                                  dict(trainer="tpo", beta=0.1)],
                         ids=lambda over: over["trainer"])
def test_vision_group_trainer_resumed_mid_round_equals_the_uninterrupted_run(tmp_path, over, stop_at_step):
    """4 steps in rounds of 2, a checkpoint at step 3 (mid-round), stopped when step 4 asks for its batch, resumed: the
    weights equal the uninterrupted run's to 1e-6, the logged losses too, and the weights moved."""
    over = {"max_steps": 4, "steps_per_generation": 2, "per_device_train_batch_size": 1, **over}
    full, _ = resume_mid_run(lambda folder, **extra: _run(_cfg(folder, **over, **extra)), tmp_path, stop_at_step,
                             stop=3)
    a = full.policy.state_dict()
    assert len(logged_losses(tmp_path / "full")) == 4
    assert logged_losses(tmp_path / "cut") == pytest.approx(logged_losses(tmp_path / "full"), abs=1e-6)
    start = _run(_cfg(tmp_path / "start", **over)).policy.state_dict()
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4     # and the weights did move
