"""preflab.model_part_options: the options a task: vlm checkpoint's model is rebuilt with (preflab.models.vlm_run),
read from the run's config.yaml below the config layer, with TrainConfig's defaults where the file leaves one out."""
import dataclasses

import pytest
import yaml

from preflab.config import TrainConfig, config_from_dict
from preflab.errors import ConfigError
from preflab.model_part_options import ModelPartOptions, model_part_options

NAMES = [f.name for f in dataclasses.fields(ModelPartOptions)]


def test_model_part_options_left_out_are_train_configs_defaults():
    """A config.yaml without the options rebuilds the model as TrainConfig's defaults would (value equality: a default
    that drifts on either side fails), and the eleven are the ones vlm_run, freeze_vision and add_vlm_lora read."""
    assert sorted(NAMES) == sorted(["use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                                    "use_rslora", "use_dora", "lora_modules_to_save",
                                    "freeze_vision_tower", "freeze_multi_modal_projector", "clue_aggregator"])
    train = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in NAMES}
    assert dataclasses.asdict(model_part_options({}, "run/config.yaml")) == train
    assert train == {"use_peft": False, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
                     "lora_target_modules": "all-linear", "use_rslora": False, "use_dora": False,
                     "lora_modules_to_save": None, "freeze_vision_tower": True,
                     "freeze_multi_modal_projector": False, "clue_aggregator": False}


def test_model_part_options_of_a_saved_config_equal_config_from_dicts(tmp_path):
    """A run's config.yaml (TrainConfig.save) read here gives the values config_from_dict gives (what vlm_run called
    before), text values converted as the config layer converts them."""
    cfg = TrainConfig(task="vlm", model_name_or_path="builtin:tiny-llava", dataset_name="d.jsonl", use_peft=True,
                      lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"],
                      use_rslora=True, use_dora=True, lora_modules_to_save=["lm_head"],
                      freeze_vision_tower=False, freeze_multi_modal_projector=True, clue_aggregator=True)
    cfg.save(tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    for raw in (saved, {**saved, "lora_r": "4", "use_peft": "yes", "lora_alpha": "8"}):
        old = config_from_dict(dict(raw))
        assert dataclasses.asdict(model_part_options(raw, tmp_path / "config.yaml")) == \
            {n: getattr(old, n) for n in NAMES}


def test_model_part_options_refuses_a_bad_value_naming_the_file():
    with pytest.raises(ConfigError, match=r"^run/config\.yaml: use_peft must be bool, got 'maybe' \(str\).* lora_r=0 "
                                          r"is not allowed: lora_r must be > 0 \(LoRA rank\)\. Rebuilding the run's"):
        model_part_options({"use_peft": "maybe", "lora_r": 0}, "run/config.yaml")
