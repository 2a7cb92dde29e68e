"""`preflab demo vlm` in a reduced setting: DPO raises held-out colour accuracy; the model reloads in transformers."""
import json

import pytest
import torch


@pytest.mark.slow
def test_demo_vlm_improves_and_reloads(tmp_path):
    from transformers import AutoModelForImageTextToText

    from preflab.demo.vlm import evaluate, make_data, run_vlm_demo
    from preflab.models.tiny_vlm import tiny_vlm_processor

    summary = run_vlm_demo(str(tmp_path), quiet=True, n_train=128, n_heldout=32)
    assert summary["true_reward_after"] >= summary["true_reward_before"] + 0.2
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["true_reward_after"] == summary["true_reward_after"]
    assert "<img src='data:image/png;base64," in (tmp_path / "report.html").read_text()
    import yaml  # the DPO stage records its reference, the SFT model (`preflab eval dpo/ --task vlm` compares with it)

    saved_cfg = yaml.safe_load((tmp_path / "dpo" / "config.yaml").read_text())
    assert saved_cfg["ref_model_name_or_path"] == str((tmp_path / "sft").resolve())
    model = AutoModelForImageTextToText.from_pretrained(summary["model_dir"])
    _, _, heldout = make_data(tmp_path / "again", 0, 128, 32)  # the same held-out images (same seed)
    score, _ = evaluate(model, tiny_vlm_processor("qwen2_vl"), heldout)
    assert score == pytest.approx(summary["true_reward_after"])
    torch.set_num_threads(1)
