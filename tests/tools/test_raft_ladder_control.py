"""task: raft_ladder's control (`control: true`, the default): the SFT model trained with as many more SFT steps as
the DPO stage took (same SFT data; the DPO stage's batch, learning rate and schedule), recorded in summary.json
beside the DPO result, as dstc, otc, pro_orchestrator and itool record theirs. Before, the recipe had no control and
docs/tools.md gave a number measured by hand."""
import json

import pytest
import torch
from safetensors.torch import load_file

from preflab.ladder import recipe as ladder_recipe

pytestmark = pytest.mark.slow

PARAMS = dict(seed=0, n_train=24, n_test=3, sft_steps=3, dpo_steps=2, quiet=True)


def test_raft_ladder_control_is_more_sft_from_the_sft_weights_and_is_in_the_summary(tmp_path):
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.recipe_state import load_safetensors_into

    out = tmp_path / "run"
    summary = ladder_recipe.run_raft_ladder(str(out), **PARAMS)
    # the control by its definition: the SFT stage's weights, then dpo_steps SFT steps on the SFT data with the DPO
    # stage's learning rate, warm-up and schedule
    tokenizer = tiny_tokenizer("char")
    model = tiny_causal_lm(tokenizer, arch="llama", hidden_size=96, num_layers=2, num_heads=4, seed=0)
    load_safetensors_into(model, out / "sft" / "model.safetensors")
    cfg = config_from_dict({"task": "dpo", "loss_type": "sft", "model_name_or_path": "builtin:tiny-llama",
                            "dataset_name": str(out / "data" / "sft.jsonl"), "output_dir": str(tmp_path / "by_hand"),
                            "learning_rate": 3e-4, "warmup_steps": 5, "lr_scheduler_type": "cosine", "max_steps": 2,
                            "per_device_train_batch_size": 16, "max_length": 192, "seed": 0, "logging_steps": 10,
                            "disable_tqdm": True, "use_cpu": True})
    Trainer(cfg, policy=model, ref=None, tokenizer=tokenizer).train()
    recipe_weights = load_file(str(out / "control" / "model.safetensors"))
    assert recipe_weights.keys() == model.state_dict().keys()
    assert all(torch.equal(recipe_weights[k], v) for k, v in model.state_dict().items())
    accuracy, valid, _ = ladder_recipe.program_accuracy(model, tokenizer, _heldout_rows(out))
    assert summary["control_program_accuracy_after"] == accuracy
    assert summary["control_valid_program_rate_after"] == valid and summary["control_sft_steps"] == 2
    assert json.loads((out / "summary.json").read_text())["control_program_accuracy_after"] == accuracy
    assert "control" in json.loads((out / ladder_recipe.STATE_FILE).read_text())["stages"]


def test_raft_ladder_control_false_runs_no_control(tmp_path):
    summary = ladder_recipe.run_raft_ladder(str(tmp_path), control=False, **PARAMS)
    assert not any(k.startswith("control") for k in summary) and not (tmp_path / "control").exists()
    assert json.loads((tmp_path / ladder_recipe.STATE_FILE).read_text())["params"]["control"] is False


def _heldout_rows(out):
    """The recipe's held-out prompts (its test rows with their retrieved examples), rebuilt as the recipe does."""
    from preflab.ladder.builders import raft_rows
    from preflab.ladder.synthetic import make_ladder_rows

    rows = make_ladder_rows(PARAMS["n_train"] + PARAMS["n_test"], seed=0)
    train, test = rows[:PARAMS["n_train"]], rows[PARAMS["n_train"]:]
    return raft_rows(train, test, 1, same_split=False)
