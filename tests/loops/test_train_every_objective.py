"""`preflab train` runs every pairwise objective by name for a few steps on the quickstart config."""
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from preflab.cli import main
from preflab.objectives import PairBatch, list_objectives, objective_class

ROOT = Path(__file__).resolve().parents[2]
PAIRWISE = [n for n in list_objectives()
            if objective_class(n).batch_type is PairBatch and not objective_class(n).required_extras]


def test_most_objectives_are_trainable_from_the_cli():
    assert len(PAIRWISE) >= 30, PAIRWISE


@pytest.mark.parametrize("name", PAIRWISE)
def test_train_runs_objective(name, tmp_path):
    out = tmp_path / name
    code = main(["train", str(ROOT / "examples" / "quickstart.yaml"), f"loss_type={name}", f"output_dir={out}",
                 "max_steps=2", "per_device_train_batch_size=2", "eval_fraction=0", "eval_steps=0", "save_steps=0",
                 "logging_steps=1", "disable_tqdm=true", "learning_rate=1e-2", "max_length=64"])
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
