"""The values inside a DeepSpeed config (a deepspeed_config_file's json, or the accelerate config's deepspeed_config)
against the run config (preflab.deepspeed_options): each disagreeing value stops `preflab train` before anything
loads (launch.check_deepspeed_settings, reading the settings as accelerate's DeepSpeedPlugin forms them from the
launcher's variables) and `preflab plan --accelerate-config` with the same text; "auto" and absent values are filled
from the run config and reach DeepSpeed's own config parser; a config whose concrete values match is accepted and
planned at the json's ZeRO stage. No DeepSpeed engine starts (DeepSpeedConfig parses a dict)."""
import copy
import importlib.util
import json

import pytest
from test_plan import P, _cfg, model_dir  # noqa: F401  (model_dir: the fixture)

from preflab.deepspeed_options import deepspeed_values_problem, fill_deepspeed_auto, read_deepspeed_settings
from preflab.errors import ConfigError
from preflab.loops import launch
from preflab.plan import memory_plan, model_config_of, sharding_from_accelerate

WORLD = 4
LAUNCHER_VARIABLES = ("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "ACCELERATE_GRADIENT_CLIPPING",
                      "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_ZERO3_INIT",
                      "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
                      "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "ACCELERATE_CONFIG_DS_FIELDS")


def _launch_with_file(monkeypatch, ds_json, world=WORLD):
    """The variables accelerate's launcher sets for an accelerate config holding only a deepspeed_config_file."""
    for variable in LAUNCHER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(ds_json))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def _accelerate_config(tmp_path, ds_json, world=WORLD):
    path = tmp_path / "accelerate_ds_file.yaml"
    path.write_text(f"distributed_type: DEEPSPEED\nnum_processes: {world}\ndeepspeed_config:\n"
                    f"  deepspeed_config_file: {ds_json}\n  zero3_init_flag: false\n")
    return path


def _run_refusal(cfg):
    try:
        launch.check_deepspeed_settings(cfg)
    except ConfigError as err:
        return str(err)
    return None


def _plan(capsys, model_dir, overrides, accelerate_config):  # noqa: F811
    from preflab.cli import main

    code = main(["plan", f"model_name_or_path={model_dir}", "dataset_name=x.jsonl", "max_length=16",
                 *(f"{k}={v}" for k, v in overrides.items()), "--accelerate-config", str(accelerate_config)])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()[-1] if captured.err.strip() else None, captured.out


ZERO2 = {"zero_optimization": {"stage": 2}}
# (the json, the run config's overrides, words the refusal must hold: the key, both values, what to change)
MISMATCHES = [
    ({**ZERO2, "train_micro_batch_size_per_gpu": 2}, {"per_device_train_batch_size": 4},
     ["train_micro_batch_size_per_gpu is 2 but per_device_train_batch_size is 4",
      'set train_micro_batch_size_per_gpu to 4 or "auto"', "per_device_train_batch_size: 2 in the run config"]),
    ({**ZERO2, "train_batch_size": 64}, {"per_device_train_batch_size": 4},
     ["train_batch_size is 64 but per_device_train_batch_size x gradient_accumulation_steps x processes is "
      "4 x 1 x 4 = 16", 'set train_batch_size to 16 or "auto"']),
    ({**ZERO2, "gradient_accumulation_steps": 4}, {},
     ["gradient_accumulation_steps is 4; preflab runs DeepSpeed with 1 (set it to 1)"]),
    ({**ZERO2, "gradient_clipping": 0.5}, {"max_grad_norm": 1.0},
     ["gradient_clipping is 0.5 but max_grad_norm is 1.0", 'gradient_clipping: 1.0 or "auto"',
      "max_grad_norm: 0.5 in the run config"]),
    ({**ZERO2, "gradient_clipping": 1.0}, {"max_grad_norm": 0},  # max_grad_norm 0: no clipping, DeepSpeed's 0.0
     ["gradient_clipping is 1.0 but max_grad_norm is 0", 'gradient_clipping: 0.0 or "auto"']),
    ({**ZERO2, "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}, {},
     ["optimizer is set (AdamW), but preflab builds the optimizer itself", "Remove the optimizer section"]),
    ({**ZERO2, "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}}}, {},
     ["scheduler is set (WarmupLR), but preflab steps its own learning-rate schedule",
      "Remove the scheduler section"]),
    ({**ZERO2, "bf16": {"enabled": True}}, {},
     ["bf16.enabled is True but the run config trains in float32", 'set bf16.enabled to false or "auto"']),
    ({**ZERO2, "bf16": {"enabled": False}}, {"bf16": True},
     ["bf16.enabled is False but the run config trains in bfloat16", 'set bf16.enabled to true or "auto"']),
    ({**ZERO2, "bfloat16": {"enabled": True}}, {},  # DeepSpeed's older name of the section
     ["bfloat16.enabled is True but the run config trains in float32"]),
    ({**ZERO2, "fp16": {"enabled": True}}, {"bf16": True},
     ["fp16.enabled is True but the run config trains in bfloat16", 'set fp16.enabled to false or "auto"']),
    ({"zero_optimization": {"stage": 3}}, {},
     ["DeepSpeed ZeRO-3 without zero3_save_16bit_model: true"]),
    ({"train_micro_batch_size_per_gpu": "auto"}, {},  # accelerate's own refusal, now before loading, naming the file
     ["accelerate cannot read this DeepSpeed config: Please specify the ZeRO optimization config"]),
]


@pytest.mark.parametrize("settings,overrides,words", MISMATCHES,
                         ids=[next(iter(set(m[0]) - {"zero_optimization"}), "zero") for m in MISMATCHES])
def test_each_disagreeing_value_is_refused_by_the_run_and_the_plan_with_one_text(  # noqa: F811
        tmp_path, model_dir, capsys, monkeypatch, settings, overrides, words):  # noqa: F811
    """The run (check_deepspeed_settings, before anything loads) refuses the json naming the file, the key and both
    values, and `preflab plan` of the same accelerate config stops with exactly that text (exit 2)."""
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps(settings))
    _launch_with_file(monkeypatch, ds_json)
    said = _run_refusal(_cfg(model_dir, **overrides))
    assert said is not None
    if "zero3_save_16bit_model" not in said:
        assert said.startswith(f"the deepspeed_config_file {ds_json}: "), said
    for word in words:
        assert word in said, (word, said)
    for variable in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_CONFIG_FILE", "WORLD_SIZE"):
        monkeypatch.delenv(variable)  # the plan reads the accelerate config, not the launcher's variables
    assert _plan(capsys, model_dir, overrides, _accelerate_config(tmp_path, ds_json))[:2] == \
        (2, f"preflab: error: {said}")


def test_a_matching_concrete_config_is_accepted_and_planned_at_the_json_s_stage(  # noqa: F811
        tmp_path, model_dir, capsys, monkeypatch):  # noqa: F811
    """Every key concrete and equal to the run config's (batch 4 on 4 processes, bf16, max_grad_norm 0.5, ZeRO-3
    gathering the final model with the parameters offloaded): the run goes on and the plan plans ZeRO-3 from the
    json (before, the plan read only the accelerate config and planned a deepspeed_config_file as ZeRO-2 on the
    GPU): weights offloaded (0), gradients and AdamW state bf16 / 4."""
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": 4, "train_batch_size": 16, "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.5, "bf16": {"enabled": True}, "fp16": {"enabled": False},
        "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"},
                              "stage3_gather_16bit_weights_on_model_save": True}}))
    overrides = {"per_device_train_batch_size": 4, "bf16": True, "max_grad_norm": 0.5, "load_dtype": "bfloat16"}
    _launch_with_file(monkeypatch, ds_json)
    assert _run_refusal(_cfg(model_dir, **overrides)) is None
    monkeypatch.delenv("WORLD_SIZE")  # the plan runs in one process
    sharding = sharding_from_accelerate(str(_accelerate_config(tmp_path, ds_json)))
    assert (sharding.engine, sharding.world, sharding.offload_params, sharding.offload_optimizer) == \
        ("zero3", WORLD, True, False)
    plan = memory_plan(_cfg(model_dir, **overrides), model_config_of(model_dir), sharding)
    assert (plan["weights"], plan["gradients"], plan["optimizer"]) == (0.0, P * 2 / WORLD, P * 2 * 2 / WORLD)
    code, last, out = _plan(capsys, model_dir, overrides, _accelerate_config(tmp_path, ds_json))
    assert code == 0 and "zero3 over 4 rank(s)" in out, last


def test_the_accelerate_config_s_own_deepspeed_config_is_checked_by_the_plan_as_by_the_run(  # noqa: F811
        tmp_path, model_dir, capsys, monkeypatch):  # noqa: F811
    """Without a file: the launcher's ACCELERATE_GRADIENT_CLIPPING (the accelerate config's gradient_clipping) 0.5
    against max_grad_norm 1.0 is refused by the run and by the plan of that accelerate config with one text; 1.0
    passes both."""
    from test_plan_engines import ROOT

    for clipping, refused in ((0.5, True), (1.0, False)):
        path = tmp_path / "zero2.yaml"
        path.write_text((ROOT / "examples/accelerate/zero2.yaml").read_text()
                        .replace("gradient_clipping: 1.0", f"gradient_clipping: {clipping}"))
        for variable in LAUNCHER_VARIABLES + ("ACCELERATE_DEEPSPEED_CONFIG_FILE",):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
        monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
        monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", str(clipping))
        monkeypatch.setenv("WORLD_SIZE", "8")
        said = _run_refusal(_cfg(model_dir))
        monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
        monkeypatch.delenv("WORLD_SIZE")
        code, last, _ = _plan(capsys, model_dir, {}, path)
        if refused:
            assert said == ("the accelerate config's deepspeed_config.gradient_clipping is 0.5 but max_grad_norm is "
                            '1.0: DeepSpeed clips with its own setting; make them equal (gradient_clipping: 1.0 or '
                            '"auto", or max_grad_norm: 0.5 in the run config).')
            assert (code, last) == (2, f"preflab: error: {said}")
        else:
            assert said is None and code == 0


def test_auto_and_absent_values_are_filled_from_the_run_config_and_reach_deepspeed(tmp_path, monkeypatch):
    """"auto" (and a left-out gradient_clipping / micro-batch) takes the run config's value, as transformers'
    HfTrainerDeepSpeedConfig fills it: the micro-batch, 1 step of accumulation, micro x 1 x processes, max_grad_norm,
    bf16.enabled from bf16: true. accelerate's prepare() fills only what is still "auto" afterwards (its own
    gradient_clipping 1.0 whatever max_grad_norm says: the value a run got before), so preflab's values reach
    DeepSpeed's config parser. A left-out gradient_clipping is filled too: DeepSpeed's default is 1.0."""
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
        "zero_optimization": {"stage": 2}}))
    cfg = _cfg("builtin:tiny-llama", per_device_train_batch_size=3, max_grad_norm=0.25, bf16=True)
    settings = read_deepspeed_settings(str(ds_json))
    assert deepspeed_values_problem(cfg, settings, 2) is None
    ds = settings.config
    # what accelerate's prepare() does without preflab: every "auto" gradient_clipping becomes 1.0
    unfilled = copy.deepcopy(ds)
    _accelerate_prepare_fill(unfilled, micro=3, world=2)
    assert unfilled["gradient_clipping"] == 1.0
    assert fill_deepspeed_auto(cfg, ds, 2) == {
        "train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 1, "train_batch_size": 6,
        "gradient_clipping": 0.25, "bf16.enabled": True, "fp16.enabled": False}
    _accelerate_prepare_fill(ds, micro=3, world=2)
    assert (ds["gradient_clipping"], ds["train_batch_size"], ds["bf16"], ds["fp16"]) == \
        (0.25, 6, {"enabled": True}, {"enabled": False})
    left_out = {"zero_optimization": {"stage": 2}}
    assert fill_deepspeed_auto(_cfg("builtin:tiny-llama", max_grad_norm=0.0), left_out, 1)["gradient_clipping"] == 0.0
    unclipped = _cfg("builtin:tiny-llama", max_grad_norm=float("inf"))  # torch measures and clips nothing: 0.0
    assert fill_deepspeed_auto(unclipped, {"gradient_clipping": "auto"}, 1)["gradient_clipping"] == 0.0
    assert deepspeed_values_problem(unclipped, read_deepspeed_settings(
        None, gradient_clipping=0.0, gradient_accumulation_steps=1, zero_stage=2), 1) is None
    concrete = {"gradient_clipping": 0.25, "train_micro_batch_size_per_gpu": 3, "zero_optimization": {"stage": 2}}
    assert "gradient_clipping" not in fill_deepspeed_auto(cfg, concrete, 2)  # a concrete value is left alone
    if importlib.util.find_spec("deepspeed") is None:
        return
    from deepspeed.runtime.config import DeepSpeedConfig

    one = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 3}
    assert DeepSpeedConfig(dict(one)).gradient_clipping == 1.0  # left out, DeepSpeed would clip at 1.0
    fill_deepspeed_auto(cfg, one, 1)
    parsed = DeepSpeedConfig(one)
    assert (parsed.gradient_clipping, parsed.train_batch_size, parsed.train_micro_batch_size_per_gpu,
            parsed.gradient_accumulation_steps) == (0.25, 3, 3, 1)


def _accelerate_prepare_fill(ds, micro, world):
    """accelerate 1.x on a bf16 run: set_mixed_precision("bf16") when its state forms, then _prepare_deepspeed for
    a model and a torch optimizer without a dataloader (accumulation 1: preflab's Accelerator has no
    gradient_accumulation_steps): the "auto" keys it still finds get its values (fill_match /
    deepspeed_config_process with must_match=False)."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(hf_ds_config={"zero_optimization": {"stage": 2}})
    plugin.hf_ds_config.config = ds
    plugin.deepspeed_config = ds
    plugin.deepspeed_config_process(must_match=False, **{
        "gradient_clipping": 1.0, "zero_optimization.stage3_gather_16bit_weights_on_model_save": False,
        "train_micro_batch_size_per_gpu": micro, "train_batch_size": micro * world,
        "gradient_accumulation_steps": 1, "bf16.enabled": True, "fp16.enabled": False})


@pytest.mark.parametrize("beside", [{"gradient_clipping": 1.0}, {"zero_stage": 3}, {"mixed_precision": "'no'"}])
def test_accelerate_keys_beside_a_deepspeed_config_file_are_refused_by_the_run_and_the_plan(
        tmp_path, model_dir, capsys, monkeypatch, beside):  # noqa: F811
    """accelerate refuses accelerate-config keys that the json decides (and mixed_precision) beside a
    deepspeed_config_file (its DeepSpeedPlugin reads the names from the launcher's ACCELERATE_CONFIG_DS_FIELDS). The
    run stops with that refusal before loading, naming the file; the plan, which planned such a config as ZeRO-2
    before, stops with the same text."""
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps(ZERO2))
    key, value = next(iter(beside.items()))
    path = tmp_path / "mixed.yaml"
    lines = ["distributed_type: DEEPSPEED", "num_processes: 4", "deepspeed_config:",
             f"  deepspeed_config_file: {ds_json}", "  zero3_init_flag: false"]
    lines += [f"mixed_precision: {value}"] if key == "mixed_precision" else [f"  {key}: {value}"]
    path.write_text("\n".join(lines) + "\n")
    _launch_with_file(monkeypatch, ds_json)  # as accelerate launch sets them for this config
    fields = ["deepspeed_config_file", "zero3_init_flag"] + ([key] if key != "mixed_precision" else [])
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", ",".join(fields + (["mixed_precision"] if key ==
                                                                         "mixed_precision" else [])))
    said = _run_refusal(_cfg(model_dir))
    assert said.startswith(f"the deepspeed_config_file {ds_json}: accelerate cannot read this DeepSpeed config: "
                           "When using `deepspeed_config_file`, the following accelerate config variables will be "
                           "ignored"), said
    for variable in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_CONFIG_FILE", "WORLD_SIZE",
                     "ACCELERATE_CONFIG_DS_FIELDS"):
        monkeypatch.delenv(variable)
    with pytest.raises(ConfigError) as planned:
        memory_plan(_cfg(model_dir), model_config_of(model_dir), sharding_from_accelerate(str(path)))
    assert str(planned.value) == said
    assert _plan(capsys, model_dir, {}, path)[:2] == (2, said.splitlines()[-1])
    import os

    assert "ACCELERATE_CONFIG_DS_FIELDS" not in os.environ  # the plan put the launcher's variable back
