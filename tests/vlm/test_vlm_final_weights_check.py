"""A task: vlm run's final model reloads only whole: a model.safetensors with a tensor removed is refused naming the
key (transformers would leave it at random values with a log line); the intact folder, whose frozen vision tower was
saved with the rest, reloads equal to the trained weights (preflab.models.vlm_run._full, check_loading_info)."""
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from preflab.config import config_from_dict
from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs
from preflab.errors import ConfigError
from preflab.loops.vlm import VisionTrainer
from preflab.models.vlm_run import load_vlm_model, load_vlm_run

from vlm_helpers import pair_row, tiny

_, PROCESSOR = tiny("llava")
ROWS = [pair_row("what colour?", f"it is c{i}", f"it is d{i}", (60 * i, 100, 20), seed=i) for i in range(2)]
PAIRS = tokenize_vision_pairs(read_vision_pairs(ROWS)[0], PROCESSOR)[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("vlm") / "run"
    cfg = config_from_dict(dict(task="vlm", model_name_or_path="builtin:tiny-llava", dataset_name="unused",
                                output_dir=str(out), per_device_train_batch_size=2, learning_rate=2e-2, max_steps=1,
                                save_steps=0, logging_steps=1, disable_tqdm=True, report_to="none", use_cpu=True,
                                seed=0, freeze_vision_tower=True))
    trainer = VisionTrainer(cfg, processor=PROCESSOR, train_data=PAIRS)
    trainer.train()
    live = {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}
    return out, live


def test_intact_final_model_loads_equal_to_the_trained_weights(trained):
    out, live = trained
    model, _ = load_vlm_run(out, PROCESSOR)
    loaded = model.state_dict()
    assert set(loaded) == set(live)
    assert all(torch.equal(loaded[k], live[k]) for k in live)
    assert any("vision" in k for k in live)  # the frozen tower is among them, saved and loaded in full


def test_a_removed_weight_is_refused_naming_the_key(trained, tmp_path):
    import shutil

    out, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    weights = copy / "model.safetensors"
    state = load_file(str(weights))
    key = sorted(k for k in state if "vision" in k and k.endswith("weight"))[0]  # a frozen vision tower tensor
    save_file({k: v for k, v in state.items() if k != key}, str(weights), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=rf"CHECKPOINT='{copy}'.*missing keys: 1, e\.g\. (model\.)?{re.escape(key)}\)"):
        load_vlm_run(copy, PROCESSOR)
    cfg = config_from_dict(dict(task="vlm", model_name_or_path=str(copy), dataset_name="unused", use_cpu=True))
    with pytest.raises(ConfigError, match=rf"model_name_or_path='{copy}'.*{re.escape(key)}"):  # as a base to train on
        load_vlm_model(str(copy), cfg, PROCESSOR)


def test_a_lora_runs_adapter_file_missing_a_tensor_is_refused_naming_it(tmp_path):
    """A task: vlm LoRA run's final folder (adapter_config.json + adapter_model.safetensors) reloads through
    preflab.models.adapter_load: intact, its merged model equals the trained one merged; with a lora_B removed from the
    file (which peft alone would leave at zero, dropping that module's update) it is refused naming the file and key."""
    out = tmp_path / "lora"
    cfg = config_from_dict(dict(task="vlm", model_name_or_path="builtin:tiny-llava", dataset_name="unused",
                                output_dir=str(out), per_device_train_batch_size=2, learning_rate=2e-2, max_steps=1,
                                save_steps=0, logging_steps=1, disable_tqdm=True, report_to="none", use_cpu=True,
                                seed=0, use_peft=True, lora_r=2, lora_alpha=4, lora_dropout=0.0))
    trainer = VisionTrainer(cfg, processor=PROCESSOR, train_data=PAIRS)
    trainer.train()
    live = {k: v.detach().clone() for k, v in trainer.policy.merge_and_unload().state_dict().items()}
    model, _ = load_vlm_run(out, PROCESSOR)
    loaded = model.state_dict()
    assert set(loaded) == set(live) and all(torch.equal(loaded[k], live[k]) for k in live)
    file = out / "adapter_model.safetensors"
    state = load_file(str(file))
    key = sorted(k for k in state if "lora_B" in k)[0]
    save_file({k: v for k, v in state.items() if k != key}, str(file), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=rf"{re.escape(str(file))}: LoRA tensor\(s\) .* are 1 missing "
                                          rf"\({re.escape(key)}\)"):
        load_vlm_run(out, PROCESSOR)
