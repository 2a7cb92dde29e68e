"""KTO from the shipped quickstart (docs/guarantees.md's example column): `preflab train examples/quickstart.yaml
loss_type=kto` reads the loud-echo pairs as one desirable and one undesirable completion each and trains. At the
first step the policy is the reference (dropout off, the warm-up's rate 0 before it), so every log-ratio and the
reference point z0 are 0 and KTO's loss is w (1 - sigmoid(beta (0 - 0))) = 1/2 for both kinds (Ethayarajh et al.
2024, weights 1): the logged loss is exactly 0.5; after a step at a positive rate the policy has moved."""
import json
from pathlib import Path

import pytest

from preflab.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about 17 s here (the whole pair file read and tokenized, an eval)
def test_quickstart_with_loss_type_kto_starts_at_one_half_and_moves(tmp_path):
    out = tmp_path / "kto"
    assert main(["train", str(ROOT / "examples" / "quickstart.yaml"), "loss_type=kto", "max_steps=3",
                 "logging_steps=1", "eval_steps=3", "save_steps=0", "disable_tqdm=true", f"output_dir={out}"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if "loss" in r}
    assert train[1]["loss"] == 0.5 and train[1]["kl"] == 0.0 and train[1]["learning_rate"] == 0.0
    assert abs(train[3]["loss"] - 0.5) > 1e-5                        # trained: no longer the reference
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 3
