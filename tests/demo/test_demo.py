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
    # `preflab eval dpo/` compares with the SFT model DPO started from (the old config named builtin:tiny-llama,
    # so the reference metrics came from a random model)
    from preflab.eval.loading import run_reference

    assert run_reference(str(tmp_path / "dpo")) == (str((tmp_path / "sft").resolve()), "ref_model_name_or_path")
    # the demo's report shows its result and both stages, and `preflab report` on the folder rewrites the same one
    from preflab.cli import main

    first = (tmp_path / "report.html").read_text()
    assert saved["about"].startswith("What this demo shows")
    for text in ('<p class="about">What this demo shows', "true_reward_before", f"{summary['true_reward_after']:.4g}",
                 "<b>sft</b>", "<b>dpo</b>", summary["examples_after"][0]["response"]):
        assert text in first, text
    assert main(["report", str(tmp_path)]) == 0
    again = (tmp_path / "report.html").read_text()
    assert again.split("</p>", 1)[1] == first.split("</p>", 1)[1]  # the same report, but for its time stamp
