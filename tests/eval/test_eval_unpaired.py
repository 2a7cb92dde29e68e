"""`preflab eval` on unpaired rows (prompt, completion, label): the implicit reward's separation of desirable and
undesirable completions (preflab.eval.unpaired). Such a file was refused as holding no pairs."""
import json

import pytest
import torch

from preflab.data.rows import load_rows
from preflab.data.tokenize import tokenize_indexed
from preflab.eval.run import evaluate_models
from preflab.eval.unpaired import unpaired_metrics
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

KTO_ROWS = [{"prompt": "the cat sat on", "completion": " the mat", "label": True},
            {"prompt": "hello world ,", "completion": " preference", "label": True},
            {"prompt": "the cat sat on", "completion": " a dog", "label": False},
            {"prompt": "hello world ,", "completion": " the cat", "label": False},
            {"prompt": "rewards are", "completion": " numbers", "label": False}]


def test_unpaired_metrics_equal_a_hand_computation():
    """r = 0.5 (policy - ref) = [0.5, 0.25 | -0.25, 0.5, -1.0]; AUROC: of the 6 (desirable, undesirable) pairs,
    0.5 beats -0.25 and -1.0 and ties 0.5, 0.25 beats -0.25 and -1.0: (4 + 0.5) / 6 = 0.75."""
    policy = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0])
    ref = torch.tensor([-2.0, -2.5, -2.5, -5.0, -3.0])
    labels = torch.tensor([True, True, False, False, False])
    assert unpaired_metrics(policy, labels, 0.5, ref) == {
        "logps/chosen": -1.5, "logps/rejected": -4.0, "rewards/chosen": 0.375, "rewards/rejected": -0.25,
        "rewards/margins": 0.625, "unpaired/auroc": 0.75}
    assert unpaired_metrics(policy, labels, 0.5) == {"logps/chosen": -1.5, "logps/rejected": -4.0}  # no reference


def _naive_logps(model, tokenized) -> list[float]:
    """Each completion's summed log-prob from one unpadded forward of prompt + completion."""
    out = []
    with torch.no_grad():
        for t in tokenized:
            ids = torch.tensor([t.prompt_ids + t.completion_ids])
            logps = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            p = len(t.prompt_ids)
            out.append(sum(float(logps[p + i - 1, tok]) for i, tok in enumerate(t.completion_ids)))
    return out


def test_eval_of_unpaired_rows_gives_the_implicit_reward_auroc_of_a_hand_computation(tmp_path):
    tok = tiny_tokenizer("bytelevel")
    policy, ref = tiny_causal_lm(tok, seed=1), tiny_causal_lm(tok, seed=2)
    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in KTO_ROWS))
    result = evaluate_models(policy, tok, str(path), ref=ref, beta=0.5)
    examples, _ = load_rows(KTO_ROWS, kind="unpaired")
    tokenized, _, _ = tokenize_indexed("unpaired", examples, tok, max_length=1024)
    r = [0.5 * (a - b) for a, b in zip(_naive_logps(policy, tokenized), _naive_logps(ref, tokenized))]
    good, bad = r[:2], r[2:]
    auroc = sum((g > b) + 0.5 * (g == b) for g in good for b in bad) / (len(good) * len(bad))
    metrics = result["metrics"]
    assert metrics["unpaired/auroc"] == pytest.approx(auroc, abs=1e-12)
    assert metrics["rewards/chosen"] == pytest.approx(sum(good) / 2, abs=1e-6)
    assert metrics["rewards/rejected"] == pytest.approx(sum(bad) / 3, abs=1e-6)
    assert metrics["rewards/margins"] == pytest.approx(sum(good) / 2 - sum(bad) / 3, abs=1e-6)
    assert (result["num_completions"], result["num_desirable"], result["num_pairs"]) == (5, 2, 0)
    assert result["per_completion"]["label"] == [True, True, False, False, False]
    assert "pairs" in result["missing"]


def test_eval_of_unpaired_rows_of_one_label_says_why_there_is_no_auroc():
    tok = tiny_tokenizer("bytelevel")
    policy, ref = tiny_causal_lm(tok, seed=1), tiny_causal_lm(tok, seed=2)
    result = evaluate_models(policy, tok, KTO_ROWS[:2], ref=ref)
    assert "unpaired/auroc" not in result["metrics"] and "rewards/margins" not in result["metrics"]
    assert result["missing"]["unpaired/auroc"].startswith("every one of the 2 completions is desirable")
