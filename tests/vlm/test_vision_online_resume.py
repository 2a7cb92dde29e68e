"""Exact mid-round resume of the vision online run (online_task: vision_dataset) for the group trainers besides
grpo (tests/vlm/test_vision_r1_online.py's resume test): rloo (its leave-one-out advantages of the KL-penalised
rewards), gspo (sequence ratios) and tpo (ranked groups). docs/guarantees.md's matrix names these."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_vision_r1_online import _cfg, _run  # noqa: E402


@pytest.mark.parametrize("over", [dict(trainer="rloo", beta=0.05, num_iterations=2),
                                  dict(trainer="gspo"),
                                  dict(trainer="tpo", beta=0.1)],
                         ids=lambda over: over["trainer"])
def test_vision_group_trainer_resumed_mid_round_equals_the_uninterrupted_run(tmp_path, over, stop_at_step):
    """4 steps in rounds of 2, a checkpoint at step 3 (mid-round), stopped when step 4 asks for its batch, resumed: the
    weights equal the uninterrupted run's to 1e-6, the logged losses too, and the weights moved."""
    import json

    over = {"max_steps": 4, "steps_per_generation": 2, "per_device_train_batch_size": 1, **over}
    full = _run(_cfg(tmp_path / "full", **over))
    full.train()
    cut = _run(_cfg(tmp_path / "cut", save_steps=3, **over))
    with stop_at_step(cut, 3):
        cut.train()
    assert (tmp_path / "cut" / "online-state" / "step-3").is_dir()
    resumed = _run(_cfg(tmp_path / "cut", save_steps=3, resume_from_checkpoint=True, **over))
    assert resumed.train()["resumed_from_step"] == 3
    a, b = full.policy.state_dict(), resumed.policy.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    losses = lambda p: {r["step"]: r["loss"] for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())  # noqa: E731,E501
                        if "loss" in r}
    assert len(losses(tmp_path / "full")) == 4
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "full"), abs=1e-6)
    start = _run(_cfg(tmp_path / "start", **over)).policy.state_dict()
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4     # and the weights did move
