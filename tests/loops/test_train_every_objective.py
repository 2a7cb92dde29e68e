"""`preflab train` runs every pairwise objective by name for a few steps on the quickstart config."""
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from preflab.cli import main
from preflab.objectives import PairBatch, list_objectives, objective_class

ROOT = Path(__file__).resolve().parents[2]
PAIRWISE = [n for n in list_objectives()
            if objective_class(n).batch_type is PairBatch and not objective_class(n).required_extras
            and objective_class(n).modality == "text"]


def test_most_objectives_are_trainable_from_the_cli():
    assert len(PAIRWISE) >= 30, PAIRWISE


@pytest.mark.parametrize("name", PAIRWISE)
def test_train_runs_objective(name, tmp_path):
    out = tmp_path / name
    code = main(["train", str(ROOT / "examples" / "quickstart.yaml"), f"loss_type={name}", f"output_dir={out}",
                 "max_steps=2", "per_device_train_batch_size=2", "eval_fraction=0", "eval_steps=0", "save_steps=0",
                 "logging_steps=1", "disable_tqdm=true", "learning_rate=3e-3", "max_length=64"])
    assert code == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["loss"] is not None for r in rows), rows
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 2 and not summary["nonfinite_steps"]
    # the policy moved: the saved weights differ from a fresh builtin model's
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    fresh = tiny_causal_lm(tiny_tokenizer(), seed=0).state_dict()
    saved = load_file(str(out / "model.safetensors"))
    assert any((saved[k] - fresh[k]).abs().max() > 0 for k in saved if k in fresh)
    # and it moved the right way: the mean chosen-minus-rejected log-prob margin on the quickstart pairs grew
    # (swapped chosen/rejected anywhere on the data -> objective path makes it fall)
    if name not in NOT_MARGIN_FIRST:
        assert mean_margin(saved) > mean_margin(fresh) + 1e-3, name


NOT_MARGIN_FIRST = {  # first steps that need not raise the margin (see tests/lab/test_population.py for the maths)
    "discopop": "rises with the margin at zero (tau = 0.05 gate)",
    "aot": "matches sorted log-ratios across the batch, not pair by pair",
    "apo_down": "lowers the chosen likelihood by design (APO-down, D'Oosterlinck et al. 2024)",
}
_MARGIN_PAIRS = []


def mean_margin(state_dict) -> float:
    """mean over 32 quickstart pairs of S(chosen) - S(rejected), from full logits (not the training path)."""
    import torch

    from preflab.data.layout import padded
    from preflab.data.rows import load_rows
    from preflab.data.tokenize import tokenize_pairs
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.scoring.lm import naive_token_logps

    tok = tiny_tokenizer()
    if not _MARGIN_PAIRS:
        rows = load_rows(str(ROOT / "examples" / "data" / "loud_echo_pairs.jsonl"), limit=32)[0]
        _MARGIN_PAIRS.extend(tokenize_pairs(rows, tok, max_length=64)[0])
    model = tiny_causal_lm(tok, seed=0)
    model.load_state_dict(state_dict, strict=False)
    with torch.no_grad():
        sides = [naive_token_logps(model, padded([(p.prompt_ids, getattr(p, side)) for p in _MARGIN_PAIRS], 0)).sum(-1)
                 for side in ("chosen_ids", "rejected_ids")]
    return float((sides[0] - sides[1]).mean())


@pytest.mark.parametrize("name", ["kto", "apo_zero_unpaired"])
def test_train_runs_unpaired_objective_from_pairwise_rows(name, tmp_path):
    """Pairs are split into a desirable and an undesirable example (TRL's KTO convention); at step 1 the policy is
    the reference, so r = z0 = 0 and every example's loss is 1 - sigmoid(0) = 0.5 exactly."""
    out = tmp_path / name
    code = main(["train", str(ROOT / "examples" / "quickstart.yaml"), f"loss_type={name}", f"output_dir={out}",
                 "max_steps=2", "per_device_train_batch_size=4", "eval_fraction=0.1", "eval_steps=0",
                 "save_steps=0", "logging_steps=1", "disable_tqdm=true", "learning_rate=1e-2", "max_length=64",
                 "warmup_steps=0"])  # quickstart's warmup 2: step 1 at rate 0 (transformers'), nothing moved at step 2
    assert code == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r and "eval_loss" not in r]
    assert train_rows[0]["loss"] == pytest.approx(0.5, abs=1e-6)
    assert train_rows[1]["loss"] != pytest.approx(0.5, abs=1e-4)  # the policy moved
    assert any("eval_loss" in r for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["train_rows"]["kind"] == "unpaired"


def test_unpaired_collate_pairs_each_prompt_with_the_previous_completion():
    from types import SimpleNamespace

    from preflab.loops.kinds import UnpairedKind

    items = [SimpleNamespace(row_id=i, prompt_ids=[1, 10 + i], completion_ids=[20 + i, 2], label=i % 2 == 0,
                             extras={}) for i in range(3)]
    layout = UnpairedKind.collate(items, pad_id=0, layout="padded")
    targets = [layout.target_ids[n][layout.response_mask[n]].tolist() for n in range(6)]
    assert targets[:3] == [[20, 2], [21, 2], [22, 2]]
    assert targets[3:] == [[22, 2], [20, 2], [21, 2]]  # x_i with y_{i-1}
    assert layout.input_ids[4, :2].tolist() == [1, 11]
    assert layout.extras["label"].tolist() == [True, False, True]
