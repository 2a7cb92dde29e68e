"""evaluate_reward_model: overall and per-subset accuracy equal a by-hand count from the raw head outputs, for a
BT and a GPM head, and the `eval-reward` CLI helper prints the same result."""
import argparse
import json

import pytest

from preflab.data.rows import load_rows
from preflab.models.tiny import tiny_tokenizer
from preflab.reward_models.data import tokenize_reward_pairs
from preflab.reward_models.eval import evaluate_reward_model, pair_outputs
from preflab.reward_models.gpm import GPMHead
from preflab.reward_models.heads import build_reward_model, set_reward_config

ROWS = [{"prompt": f"question {i}", "chosen": f" answer {i} " + "the cat " * (i % 3),
         "rejected": f" reply {i} " + "dog " * (i % 4), "subset": ["chat", "safety", "reasoning"][i % 3], "id": i}
        for i in range(12)]


def _by_hand(model, tok, logit):
    pairs, _ = tokenize_reward_pairs(load_rows(ROWS)[0], tok)
    out_c, out_r = pair_outputs(model, pairs, tok.pad_token_id, batch_size=5)
    correct = logit(out_c, out_r) > 0
    per = {}
    for row, ok in zip(ROWS, correct.tolist()):
        per.setdefault(row["subset"], []).append(ok)
    return correct.float().mean().item(), {k: sum(v) / len(v) for k, v in per.items()}


@pytest.mark.parametrize("head", [None, GPMHead(dim=4)])
def test_accuracy_overall_and_per_subset_match_a_count_by_hand(tmp_path, head):
    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-gpt2", head.num_outputs if head else 1, tok, seed=1).eval()
    if head is not None:
        set_reward_config(model, head.to_config())
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    logit = head.logit if head else (lambda a, b: a[:, 0] - b[:, 0])
    overall, per_subset = _by_hand(model, tok, logit)
    result = evaluate_reward_model(str(tmp_path), ROWS, batch_size=4)
    assert result["num_pairs"] == 12 and result["accuracy"] == pytest.approx(overall, abs=1e-7)
    assert {k: v["accuracy"] for k, v in result["per_subset"].items()} == pytest.approx(per_subset)
    assert all(v["num_pairs"] == 4 for v in result["per_subset"].values())
    assert "reversal_accuracy" not in result
    in_memory = evaluate_reward_model(model, ROWS, tokenizer=tok, batch_size=12)
    assert in_memory["accuracy"] == result["accuracy"]


def test_cli_helper_prints_the_result_and_counts_bad_rows(tmp_path, capsys):
    from preflab.reward_models.cli import register_reward_eval

    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-llama", 1, tok, seed=2)
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    data = tmp_path / "bench.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    parser = argparse.ArgumentParser()
    register_reward_eval(parser.add_subparsers())
    args = parser.parse_args(["eval-reward", "--model", str(tmp_path / "rm"), "--data", str(data),
                              "--on-bad-row", "skip", "--output", str(tmp_path / "out.json")])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "out.json").read_text()) == printed
    expected = evaluate_reward_model(str(tmp_path / "rm"), ROWS)
    assert printed["accuracy"] == expected["accuracy"] and printed["num_pairs"] == 12
    assert printed["skipped"] == {"missing_field": 1}


def test_pair_outputs_are_each_sides_own_sequence_score():
    """pair_outputs' chosen rows score prompt + chosen and its rejected rows prompt + rejected: each equals the model
    run on that one sequence alone (batches of 5 with padding give the same numbers)."""
    import torch

    from preflab.reward_models.heads import sequence_outputs

    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-gpt2", 1, tok, seed=1).eval()
    pairs, _ = tokenize_reward_pairs(load_rows(ROWS[:7])[0], tok)
    out_c, out_r = pair_outputs(model, pairs, tok.pad_token_id, batch_size=5)
    with torch.no_grad():
        def alone(ids):
            return sequence_outputs(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))

        want_c = torch.cat([alone(p.prompt_ids + p.chosen_ids) for p in pairs])
        want_r = torch.cat([alone(p.prompt_ids + p.rejected_ids) for p in pairs])
    torch.testing.assert_close(out_c, want_c, rtol=0, atol=1e-5)
    torch.testing.assert_close(out_r, want_r, rtol=0, atol=1e-5)
    assert not torch.allclose(want_c, want_r, atol=1e-3)
