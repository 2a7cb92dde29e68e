"""The built-in demo end to end: DPO must raise the true reward of greedy generations on unseen prompts."""
import json

import pytest

from preflab.demo.task import make_splits, true_reward


def test_true_reward_by_hand():
    assert true_reward("echo: sun cat", "SUN CAT") == 1.0
    assert true_reward("echo: sun cat", "SUN cat") == 0.5
    assert true_reward("echo: sun cat", "sun cat") == 0.0
    assert true_reward("echo: sun cat map", "SUN CAT") == 0.0  # wrong word count


def test_splits_are_disjoint_and_pairs_prefer_loud():
    sft, pairs, heldout = make_splits(0)
    train_prompts = {r["prompt"].strip() for r in pairs}
    assert not train_prompts & set(heldout)
    assert all(true_reward(r["prompt"], r["chosen"]) == 1.0 for r in pairs)
    assert all(true_reward(r["prompt"], r["rejected"]) < 1.0 for r in pairs)


@pytest.mark.slow
def test_demo_improves_true_reward(tmp_path):
    from preflab.demo.run import run_demo

    summary = run_demo(str(tmp_path), quiet=True)
    assert summary["true_reward_after"] >= summary["true_reward_before"] + 0.4, summary
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["true_reward_after"] == summary["true_reward_after"]
    assert (tmp_path / "training_curves.png").stat().st_size > 10_000
