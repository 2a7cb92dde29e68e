"""Every TrainConfig option, set away from its default, is either read by the task's run or refused by the config
check ("refuse rather than degrade"): an option accepted and never read was silently ignored.

For each task (an example config cut to one step on the CPU), TrainConfig attribute reads are recorded during the
whole run (the config checks, dataclasses.asdict / saving and resume fingerprints left out); every field the run
never read is then set to a non-default value in the same config: the config check must refuse it, or the field is
in READ_LATER (read only in a branch a one-step run does not take) or ALSO_FINE (its reason given).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from preflab.config import TrainConfig, config_from_dict, load_yaml
from preflab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# readers that only validate, copy or save a config: a read there is not the run acting on the option
SKIP_FILES = ("dataclasses.py", "config_owners.py", "config_defaults.py", "config_options.py", "recipe_options.py",
              "recipe_stages.py", "resume_check.py", "online_options.py", "config_trl.py", "copy.py",
              "ref_sync_options.py")
SKIP_FUNCS = {"check", "_conflicts", "__post_init__", "compile_conflicts", "streaming_conflicts",
              "quantization_conflicts", "best_model_option_errors", "resolve_best_model_options", "to_dict", "save",
              "config_from_dict", "check_explicit_loss_type", "lora_off_overrides", "_check_file_splits"}
READS: dict[str, set] = defaultdict(set)


def _recording_getattribute(self, name):
    if name in FIELDS:
        frame = sys._getframe(1)
        while frame.f_code.co_name in ("<dictcomp>", "<listcomp>", "<setcomp>", "<genexpr>", "<lambda>"):
            frame = frame.f_back  # a comprehension or lambda: the function it is in
        file, func = frame.f_code.co_filename, frame.f_code.co_name
        if not file.endswith(SKIP_FILES) and func not in SKIP_FUNCS:
            READS[name].add(f"{Path(file).name}:{func}")
    return object.__getattribute__(self, name)


TASKS = {  # name -> (example config, overrides for a one-step run)
    "dpo": ("examples/quickstart.yaml", {}),
    "kto": ("examples/quickstart.yaml", {"loss_type": "kto"}),
    "sft": ("examples/sft.yaml", {}),
    "distill": ("examples/distill.yaml", {}),
    "reward": ("examples/quickstart.yaml", {"task": "reward", "loss_type": "sigmoid"}),
    "online": ("examples/online/grpo.yaml", {"max_steps": 1}),
    "online_dpo": ("examples/online/iterative_dpo.yaml", {"max_steps": 1}),
    "game": ("examples/online/nash_game.yaml", {"max_steps": 2, "steps_per_generation": 1}),
    "vlm": ("examples/vlm/dpo.yaml", {}),
    "diffusion": ("examples/diffusion/diffusion_dpo.yaml", {}),
}
COMMON = {"max_steps": 1, "logging_steps": 1, "use_cpu": True, "disable_tqdm": True, "save_steps": 0}


def _raw(name: str, out: str) -> dict:
    path, over = TASKS[name]
    raw = load_yaml((ROOT / path).read_text())
    raw.update(COMMON, output_dir=out, **over)
    for key in ("eval_steps", "save_steps"):
        raw.pop(key, None)
    if raw.get("task") == "reward":
        for key in ("beta", "loss_type"):
            raw.pop(key, None)
    return raw


def _other_value(name: str, default):
    """A valid-looking non-default value of field `name` (None: none found)."""
    special = {"lr_scheduler_type": "cosine", "truncation_mode": "keep_start", "on_bad_row": "skip",
               "layout": "padded", "attention": "dense", "dtype": "bfloat16", "load_dtype": "bfloat16",
               "ref_load_dtype": "bfloat16", "report_to": "tensorboard", "eval_strategy": "no",
               "save_strategy": "best", "metric_for_best_model": "loss", "bnb_4bit_quant_type": "fp4",
               "bnb_4bit_compute_dtype": "float16", "vision_pairs": "pami_vdpo", "caption_perturbation": "weak",
               "reward_head": "gpm", "trainer": "grpo", "online_task": "demo", "generation_backend": "vllm",
               "pair_builder": "all_pairs", "scale_rewards": "batch", "upo_selection": "lowest",
               "multi_objective_aggregation": "normalize_then_sum", "num_generations_eval": 2,
               "upo_uncertainty": "mc_dropout", "mcts_value": "self_eval", "torch_compile_backend": "eager",
               "torch_compile_mode": "default", "score_range": [0.0, 1.0], "processor_name_or_path": "x",
               "ref_model_name_or_path": "builtin:tiny-llama", "eval_dataset_name": "x.jsonl",
               "dataset_columns": {"prompt": "question"},
               "eval_split": "test", "user_embeddings": "x.safetensors", "reward_aggregator": "x",
               "reward_funcs": "x", "reward_weights": [1.0], "loss_weights": [1.0], "lora_target_modules": ["q_proj"],
               "reward_clip_range": [0.0, 1.0],
               "lora_modules_to_save": ["lm_head"],
               "game_preferences": [[0.5, 0.5], [0.5, 0.5]], "model_init_kwargs": {"attn_implementation": "eager"},
               "ref_model_init_kwargs": {"dtype": "float32"}, "teacher_model_init_kwargs": {"dtype": "float32"},
               "teacher_model_name_or_path": "builtin:tiny-gpt2", "objective_params": {"label_smoothing": 0.1},
               "diffusion_noising": {"mode": "forward"}, "vision_pair_params": {"x": 1}, "recipe_params": {"x": 1},
               "reward_head_params": {"x": 1}, "resume_from_checkpoint": True, "mcts_step_delimiter": " ",
               "tpo_step_delimiter": " ", "user_column": "u", "greater_is_better": True, "data_seed": 7,
               "max_prompt_length": 64, "max_completion_length": 64, "chunk_tokens": 64, "pad_to_multiple_of": 8,
               "save_total_limit": 2, "dataset_num_proc": 2, "rpo_alpha": 1.0, "router_aux_loss_coef": 0.01,
               "center_rewards_coefficient": 0.01, "missing_eos_penalty": 1.0, "epsilon_high": 0.3,
               "judge_timeout_s": 5.0, "min_p": 0.1, "dataset_text_field": "content", "packing_strategy": "wrapped",
               "divergence_temperature": 0.5,
               "eos_token": "<|user|>", "chat_template_path": "chat.jinja",
               "chat_template_kwargs": {"enable_thinking": False},
               "tools": ["calculator"], "max_tool_calling_iterations": 2,
               "eval_fraction": 0.1, "warmup_ratio": 0.1, "num_train_epochs": 2.0, "max_length": 256,
               "dataset_split": "train[:50%]", "model_name_or_path": "builtin:tiny-qwen2", "dataset_name": "y.jsonl",
               "output_dir": "elsewhere", "task": None, "hub_model_id": "org/x", "hub_strategy": "end",
               "hub_private_repo": True, "hub_token": "hf_x", "hub_revision": "dev",
               "gradient_checkpointing_kwargs": {"use_reentrant": True}, "torch_empty_cache_steps": 2}
    if name in special:
        return special[name]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default * 0.5 if default else 0.05
    return None


def audit(name: str, tmp_path: Path) -> tuple[int, list[str]]:
    """(the one-step run's exit code, the fields it never read that the config check accepts away from their
    default)."""
    from preflab.cli import main

    READS.clear()
    raw = _raw(name, str(tmp_path / "run"))
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(raw))
    TrainConfig.__getattribute__ = _recording_getattribute
    try:
        rc = main(["train", str(cfg_path)])
    finally:
        del TrainConfig.__getattribute__
    base = config_from_dict(dict(raw))
    accepted = []
    for field in sorted(n for n in FIELDS if n not in READS):
        f = FIELDS[field]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = _other_value(field, getattr(base, field) if default is None else default)
        assert value is not None and value != getattr(base, field), f"no other value to try for {field}"
        try:
            config_from_dict({**raw, field: value})
            accepted.append(field)
        except ConfigError as err:  # the refusal names the option (not another problem of the value tried)
            assert field in str(err), f"{field}={value!r} was refused for another reason: {err}"
    return rc, accepted


# accepted and not read by a one-step run: read only in a branch such a run does not take
READ_LATER = {
    "allow_config_change": "read when resuming (resume_from_checkpoint)",
    "logging_first_step": "read after the first step of a run with logging_steps > 1",
    "max_nonfinite_steps": "read when a step's loss or gradient is not finite",
    "save_only_model": "read when a checkpoint is saved (save_steps, save_strategy)",
    "save_total_limit": "read when a checkpoint is saved",
    "hub_model_id": "read with push_to_hub: true (without it, one set is noted when training starts)",
    "hub_strategy": "read with push_to_hub: true (without it, one set is noted when training starts)",
    "hub_private_repo": "read with push_to_hub: true (without it, one set is noted when training starts)",
    "hub_token": "read with push_to_hub: true (without it, one set is noted when training starts)",
    "hub_revision": "read with push_to_hub: true (without it, one set is noted when training starts)",
    "torch_compile_backend": "read when the scorer is compiled (setting it turns torch_compile on)",
    "torch_compile_mode": "read when the scorer is compiled (setting it turns torch_compile on)",
    "per_device_eval_batch_size": "task: online: the batch of the reference / round-start scoring (grpo with beta 0 "
                                  "and the game score none); offline: of the evaluation",
}
# accepted and not read, for a reason given
ALSO_FINE = {
    "num_train_epochs": "max_steps > 0 overrides it (TRL's and transformers' rule, documented in its table row)",
    "eval_strategy": "'no' is applied to the raw options before the config is built (config._resolve_eval)",
    "layout": "task: reward: 'padded' is the layout it uses (packed layouts are refused)",
    "truncation_mode": "task: sft and task: vlm keep a long row's start: keep_start (TRL's default, which its saved "
                       "configs carry) is what they do, keep_end is refused there",
    "shuffle_dataset": "task: sft: TRL SFTConfig's (default false) is taken off before the config is built (its batches "
                       "are drawn in seeded random order either way; true gets a note); task: online reads it",
    "eval_split": "without an eval set nothing is evaluated (TRL's dataset_test_split with eval_strategy no), said in "
                  "a note (data.eval_set.eval_split_unused); beside eval_fraction it is refused",
}
ALLOWED = {**READ_LATER, **ALSO_FINE}


@pytest.mark.parametrize("name", list(TASKS))
def test_every_option_is_read_by_the_tasks_run_or_refused(name, tmp_path, capsys):
    rc, accepted = audit(name, tmp_path)
    assert rc == 0, capsys.readouterr().err[-2000:]
    unexplained = [f for f in accepted if f not in ALLOWED]
    assert not unexplained, (f"task {name}: {unexplained} are accepted away from their default and never read by "
                             "the run: read them, or refuse them (preflab.config_owners.OWNERS)")
