"""examples/vlm/*.yaml run offline on the tiny VLMs (one step each)."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpo", "rrpo", "pami_vdpo", "cat_adpo"])
def test_example_config_runs(name, tmp_path, monkeypatch):
    from preflab.cli import main

    monkeypatch.chdir(ROOT)
    out = tmp_path / name
    assert main(["train", f"examples/vlm/{name}.yaml", f"output_dir={out}", "max_steps=1",
                 "disable_tqdm=true"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 1 and summary["data"]["train_tokenize"]["pairs"] == 8
