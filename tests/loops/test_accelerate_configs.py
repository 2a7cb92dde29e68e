"""examples/accelerate/: the shipped configs load, DDP on CPU equals one process (that test,
test_ddp_config_two_processes_equal_one_process_with_the_same_global_batch, runs in tests/loops/test_ddp_cli_launch.py's
shared launch), and DeepSpeed without its package
stops before any model loads, naming the setting (FSDP2 on CPU and the other refusals: test_fsdp2.py)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops import launch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "examples/accelerate"


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("fsdp2", "FSDP"), ("zero2", "DEEPSPEED"),
                                       ("zero3", "DEEPSPEED")])
def test_shipped_accelerate_configs_load_in_accelerate(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert str(config.distributed_type).endswith(kind)
    if name == "fsdp2":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_reshard_after_forward"] is True  # full shard
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


def _cfg(tmp_path):
    return config_from_dict({"output_dir": str(tmp_path), "use_cpu": True, "model_name_or_path": "builtin:tiny-llama",
                             "dataset_name": "examples/data/loud_echo_sft.jsonl", "task": "sft"})


def test_deepspeed_without_the_package_names_the_setting(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match=r"distributed_type: DEEPSPEED.*pip install deepspeed"):
        launch.make_accelerator(_cfg(tmp_path))


def _deepspeed_env(monkeypatch, name, **changes):
    """The variables accelerate launch sets for examples/accelerate/<name>.yaml (accelerate.utils.launch), with
    `changes` to its deepspeed_config."""
    from accelerate.commands.config.config_args import load_config_from_file

    ds = {**load_config_from_file(str(CONFIGS / f"{name}.yaml")).deepspeed_config, **changes}
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", str(ds["zero_stage"]))
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", str(ds["gradient_accumulation_steps"]))
    monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", str(ds["gradient_clipping"]).lower())
    for key, variable in (("zero3_save_16bit_model", "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"),
                          ("zero3_init_flag", "ACCELERATE_DEEPSPEED_ZERO3_INIT")):
        if key in ds:
            monkeypatch.setenv(variable, str(ds[key]).lower())
        else:
            monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", raising=False)


def test_zero3_without_the_gathered_16bit_save_is_refused_before_training(tmp_path, monkeypatch):
    """Under ZeRO-3 the final model is gathered by accelerate's get_state_dict, which DeepSpeed allows only with
    zero3_save_16bit_model (stage3_gather_16bit_weights_on_model_save, false by default: `accelerate config`'s
    answer "no", or a zero3 config without the line). Before, such a run trained to its end and then stopped with
    accelerate's ValueError at the final save; now it is refused before anything loads. No DeepSpeed engine starts
    here (the settings are read through accelerate's DeepSpeedPlugin)."""
    cfg = _cfg(tmp_path)
    _deepspeed_env(monkeypatch, "zero3")  # the shipped config: fine
    launch.check_deepspeed_settings(cfg)
    _deepspeed_env(monkeypatch, "zero2", zero3_save_16bit_model=False)  # ZeRO-2 holds whole weights: fine
    launch.check_deepspeed_settings(cfg)
    refused = r"ZeRO-3 without zero3_save_16bit_model: true .*train to its end and then fail to save the model"
    _deepspeed_env(monkeypatch, "zero3", zero3_save_16bit_model=False)
    with pytest.raises(ConfigError, match=refused):
        launch.check_deepspeed_settings(cfg)
    _deepspeed_env(monkeypatch, "zero3")
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL")  # the line left out: accelerate's false
    with pytest.raises(ConfigError, match=refused):
        launch.check_deepspeed_settings(cfg)
    ds_json = tmp_path / "ds.json"  # a deepspeed_config_file: its own key, as DeepSpeed spells it
    for gather, ok in ((False, False), (True, True)):
        ds_json.write_text(json.dumps({"zero_optimization": {"stage": 3,
                                                             "stage3_gather_16bit_weights_on_model_save": gather}}))
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(ds_json))
        monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", raising=False)
        if ok:
            launch.check_deepspeed_settings(cfg)
        else:
            with pytest.raises(ConfigError, match=refused):
                launch.check_deepspeed_settings(cfg)



def test_a_deepspeed_config_file_s_accumulation_and_clipping_are_checked_and_named(tmp_path, monkeypatch):
    """With a deepspeed_config_file the launcher sets no ACCELERATE_GRADIENT_ACCUMULATION_STEPS / _CLIPPING (accelerate
    refuses them beside a file), and preflab read only those variables: a file with gradient_accumulation_steps 4
    (DeepSpeed then steps once every 4 of preflab's steps) or gradient_clipping 0.5 beside max_grad_norm 1.0 went on
    unchecked. Now they are read as accelerate reads them and refused naming the file. No DeepSpeed engine starts."""
    cfg = _cfg(tmp_path)  # max_grad_norm 1.0
    _deepspeed_env(monkeypatch, "zero2")
    for variable in ("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "ACCELERATE_GRADIENT_CLIPPING",
                     "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(variable, raising=False)
    ds_json = tmp_path / "ds.json"
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(ds_json))
    for settings, refused in (
            ({"gradient_accumulation_steps": 4}, rf"the deepspeed_config_file {ds_json}: gradient_accumulation_steps "
                                                 r"is 4; preflab runs DeepSpeed with 1 \(set it to 1\)"),
            ({"gradient_clipping": 0.5}, rf"the deepspeed_config_file {ds_json}: gradient_clipping is 0.5 but "
                                         r"max_grad_norm is 1.0"),
            ({"gradient_accumulation_steps": 1, "gradient_clipping": 1.0}, None),
            ({"gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}, None)):
        ds_json.write_text(json.dumps({"zero_optimization": {"stage": 2}, **settings}))
        if refused is None:
            launch.check_deepspeed_settings(cfg)
        else:
            with pytest.raises(ConfigError, match=refused):
                launch.check_deepspeed_settings(cfg)


def test_zero3_init_flag_that_does_not_fit_the_stage_is_said(tmp_path, monkeypatch):
    """zero3_init_flag changed nothing preflab loads (transformers builds from_pretrained models inside zero.Init
    whenever ZeRO-3's plugin is selected, and accelerate turns the flag off below ZeRO-3), silently. A flag that
    says otherwise is now said in a note naming it and the value that says what happens; the shipped configs get
    none."""
    cfg, notes = _cfg(tmp_path), []
    for name in ("zero2", "zero3"):
        _deepspeed_env(monkeypatch, name)
        launch.check_deepspeed_settings(cfg, note=notes.append)
    assert notes == []
    _deepspeed_env(monkeypatch, "zero3", zero3_init_flag=False)
    launch.check_deepspeed_settings(cfg, note=notes.append)
    _deepspeed_env(monkeypatch, "zero2", zero3_init_flag=True)
    launch.check_deepspeed_settings(cfg, note=notes.append)
    assert len(notes) == 2
    assert notes[0].startswith("preflab: note: zero3_init_flag: false (the accelerate config's deepspeed_config) "
                               "does not apply: under DeepSpeed ZeRO-3") and "Set zero3_init_flag: true" in notes[0]
    assert "applies to DeepSpeed ZeRO-3 only; this run is ZeRO-2" in notes[1] and \
        "Set zero3_init_flag: false" in notes[1]


@pytest.mark.parametrize("lora", [False, True])
def test_gathered_state_saves_the_same_directory_as_the_model_itself(tmp_path, lora):
    """The final-model path used under FSDP/DeepSpeed (accelerate's get_state_dict of the wrapped scorer, the
    wrapper's prefix stripped, save_pretrained(state_dict=...)) writes the same weights as a plain save, and plain
    transformers (peft for LoRA) reloads them."""
    from accelerate import Accelerator
    from safetensors.torch import load_file

    from preflab.models.load import add_lora
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.scoring.lm import LogProbScorer

    model = tiny_causal_lm(tiny_tokenizer(), arch="llama", seed=0)
    if lora:
        model = add_lora(model, 4, 8, 0.0, "all-linear")
    acc = Accelerator(cpu=True)
    scorer = acc.prepare(LogProbScorer(model))
    state = launch.gather_full_state(acc, scorer, model)
    model.save_pretrained(tmp_path / "plain", safe_serialization=True)
    model.save_pretrained(tmp_path / "gathered", safe_serialization=True, state_dict=state)
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    a, b = load_file(tmp_path / "plain" / name), load_file(tmp_path / "gathered" / name)
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key])
    if not lora:
        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "gathered")
        assert torch.equal(reloaded.state_dict()["model.norm.weight"], model.state_dict()["model.norm.weight"])
