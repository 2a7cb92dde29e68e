"""A mid-run checkpoint of a `task: reward` run (reward_models/heads.py load_reward_checkpoint), built by hand
beside its run's config.yaml: the head a killed run's checkpoint is scored with, the refusals (a wider head without
config.json, another task's checkpoint) and a causal LM folder refused as a reward model (no trained score head)."""
import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from preflab.errors import ConfigError
from preflab.models.load import load_causal_lm, load_tokenizer
from preflab.reward_models.heads import build_reward_model, load_reward_model, reward_config

BASE = "builtin:tiny-llama"


def _checkpoint(tmp_path, num_outputs=1, **cfg):
    """run/config.yaml + run/checkpoint-2/{model.safetensors, trainer_state.json}: a run killed before its end."""
    run = tmp_path / "run"
    ckpt = run / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "reward", "model_name_or_path": BASE, **cfg}))
    model = build_reward_model(BASE, num_outputs, load_tokenizer(BASE), seed=3)
    with torch.no_grad():
        model.score.weight.fill_(0.125)
    save_file({k: v.detach().contiguous() for k, v in model.named_parameters()}, str(ckpt / "model.safetensors"))
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    return ckpt, model


def test_a_killed_runs_checkpoint_is_its_weights_with_the_runs_bt_head(tmp_path):
    ckpt, saved = _checkpoint(tmp_path, reward_head_params={"tau": 0.5}, center_rewards_coefficient=0.25)
    model = load_reward_model(str(ckpt))
    assert reward_config(model) == {"head": "bt", "tau": 0.5, "center_rewards_coefficient": 0.25}
    assert torch.equal(model.score.weight, saved.score.weight)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(model(input_ids=ids).logits, saved.eval()(input_ids=ids).logits)


def test_a_wider_head_without_the_runs_config_json_is_refused(tmp_path):
    ckpt, _ = _checkpoint(tmp_path, num_outputs=2, reward_head="gpm")
    with pytest.raises(ConfigError, match="2-output head and the run has no config.json"):
        load_reward_model(str(ckpt))


def test_a_checkpoint_whose_config_names_no_reward_task_is_not_loaded_as_a_reward_model(tmp_path):
    """A task the eval knows is refused by name before (_refuse_other_run); a config without `task: reward` (here:
    none) reaches the checkpoint loader, which must not build a reward model over a policy's weights."""
    ckpt, _ = _checkpoint(tmp_path)
    (ckpt.parent / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": BASE}))
    with pytest.raises(ConfigError, match="without a saved task: reward config"):
        load_reward_model(str(ckpt))


def test_a_causal_lm_folder_is_refused_for_its_untrained_score_head(tmp_path):
    load_causal_lm(BASE, tokenizer=load_tokenizer(BASE)).save_pretrained(tmp_path / "policy")
    with pytest.raises(ConfigError, match="no trained reward head"):
        load_reward_model(str(tmp_path / "policy"))
