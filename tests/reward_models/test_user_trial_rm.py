"""Regressions from a reward-model user's trial: what a user saw silently wrong, each now loud or right."""
import json

import pytest
import torch

from reward_synthetic import marker_rows


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory):
    """An untrained tiny BT reward model saved as preflab saves one (weights, tokenizer, head config)."""
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.heads import build_reward_model, set_reward_config

    path = tmp_path_factory.mktemp("rm")
    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-llama", 1, tok, seed=0)
    set_reward_config(model, {"head": "bt", "tau": 1.0})
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def _eval_args(checkpoint, data, out, **kw):
    import argparse

    return argparse.Namespace(checkpoint=str(checkpoint), data=str(data), out=str(out), split="train", limit=None,
                              batch_size=8, max_length=1024, task="reward", **kw)


def test_eval_reward_says_how_many_rows_it_skipped_and_refuses_when_none_is_left(tiny_rm_dir, tmp_path, capsys):
    """`preflab eval --task reward` skipped bad rows (ties, empty sides, bad JSON) with the count only inside
    eval.json, and a file of ties alone ended in a raw `torch.cat(): expected a non-empty list` traceback."""
    from preflab.cli import main
    from preflab.errors import DataError

    rows = marker_rows(4, seed=0)
    data = tmp_path / "mix.jsonl"
    lines = [json.dumps(r) for r in rows] + [json.dumps({"prompt": "a", "chosen": " x", "rejected": " x"})] * 2
    data.write_text("\n".join(lines + ["not json"]) + "\n")
    assert main(["eval", str(tiny_rm_dir), "--task", "reward", "--data", str(data), "--out",
                 str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert "3 rows skipped and not scored (identical 2, invalid_json 1)" in printed
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["num_pairs"] == 4 and result["reward_eval"]["skipped"] == {"identical": 2, "invalid_json": 1}

    ties = tmp_path / "ties.jsonl"
    ties.write_text("\n".join(lines[4:6]) + "\n")
    from preflab.reward_models.eval import evaluate_reward_model

    with pytest.raises(DataError, match="no pair left to score.*identical"):
        evaluate_reward_model(str(tiny_rm_dir), str(ties), on_bad_row="skip")


def test_eval_reward_reports_pairs_cut_to_max_length(tiny_rm_dir, tmp_path, capsys):
    """A response cut to --max-length is scored at its cut (the reward head reads the last kept token); the
    eval said nothing about it."""
    from preflab.cli import main

    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "the cat", "chosen": " sat on the mat " * 6, "rejected": " ran"}) + "\n"
                    + json.dumps({"prompt": "a", "chosen": " good", "rejected": " bad"}) + "\n")
    assert main(["eval", str(tiny_rm_dir), "--task", "reward", "--data", str(data), "--max-length", "16",
                 "--out", str(tmp_path / "e.json")]) == 0
    assert "cut 0 prompts and 1 pairs' responses" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text())["reward_eval"]["truncated"] == {"prompt": 0, "response": 1}
