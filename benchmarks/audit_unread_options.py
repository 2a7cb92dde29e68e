"""Audit: which TrainConfig fields a task's run never reads, and whether the config check refuses them.

python benchmarks/audit_unread_options.py [name ...]

For each task (an example config cut to one step), TrainConfig attribute reads are recorded during the whole run
(config checks, dataclasses.asdict / saving and resume fingerprints left out); for every field never read, the same
config with the field set away from its default is built: accepted -> a candidate silent drop (printed).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from preflab.config import TrainConfig, config_from_dict, load_yaml  # noqa: E402
from preflab.errors import ConfigError  # noqa: E402

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# readers that only validate, copy or save a config: a read there is not the run acting on the option
SKIP_FILES = ("dataclasses.py", "config_owners.py", "config_options.py", "recipe_options.py", "resume_check.py",
              "online/options.py", "config_trl.py", "copy.py")
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
               "upo_uncertainty": "mc_dropout", "mcts_value": "self_eval", "torch_compile_backend": "eager",
               "torch_compile_mode": "default", "score_range": [0.0, 1.0], "processor_name_or_path": "x",
               "ref_model_name_or_path": "builtin:tiny-llama", "eval_dataset_name": "x.jsonl",
               "eval_split": "test", "user_embeddings": "x.safetensors", "reward_aggregator": "x",
               "reward_funcs": "x", "reward_weights": [1.0], "loss_weights": [1.0], "lora_target_modules": ["q_proj"],
               "game_preferences": [[0.5, 0.5], [0.5, 0.5]], "model_init_kwargs": {"dtype": "float32"},
               "ref_model_init_kwargs": {"dtype": "float32"}, "objective_params": {}, "diffusion_noising":
               {"mode": "forward"}, "vision_pair_params": {"x": 1}, "recipe_params": {"x": 1},
               "reward_head_params": {"x": 1}, "resume_from_checkpoint": True, "mcts_step_delimiter": " ",
               "tpo_step_delimiter": " ", "user_column": "u", "greater_is_better": True, "data_seed": 7,
               "max_prompt_length": 64, "max_completion_length": 64, "chunk_tokens": 64, "pad_to_multiple_of": 8,
               "save_total_limit": 2, "dataset_num_proc": 2, "rpo_alpha": 1.0, "router_aux_loss_coef": 0.01,
               "center_rewards_coefficient": 0.01, "missing_eos_penalty": 1.0, "epsilon_high": 0.3,
               "eval_fraction": 0.1, "warmup_ratio": 0.1, "num_train_epochs": 2.0, "max_length": 256,
               "dataset_split": "train[:50%]", "model_name_or_path": "builtin:tiny-qwen2", "dataset_name": "y.jsonl",
               "output_dir": "elsewhere", "task": None}
    if name in special:
        return special[name]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default * 0.5 if default else 0.05
    return None


def audit(name: str) -> dict:
    from preflab.cli import main

    READS.clear()
    with tempfile.TemporaryDirectory() as tmp:
        raw = _raw(name, str(Path(tmp) / "run"))
        cfg_path = Path(tmp) / "cfg.json"
        cfg_path.write_text(json.dumps(raw))
        TrainConfig.__getattribute__ = _recording_getattribute
        try:
            rc = main(["train", str(cfg_path)])
        finally:
            del TrainConfig.__getattribute__
        reads = dict(READS)
        base = config_from_dict(dict(raw))
    unread = sorted(n for n in FIELDS if n not in reads)
    accepted, refused, untried = [], [], []
    for field in unread:
        f = FIELDS[field]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = _other_value(field, getattr(base, field) if default is None else default)
        if value is None or value == getattr(base, field):
            untried.append(field)
            continue
        try:
            config_from_dict({**raw, field: value})
            accepted.append(f"{field}={value!r}")
        except ConfigError as err:
            refused.append(f"{field}: {str(err).splitlines()[-1][:110]}")
        except Exception as err:  # noqa: BLE001 - an audit lists everything
            refused.append(f"{field}: ({type(err).__name__}) {str(err)[:100]}")
    return {"rc": rc, "accepted_unread": accepted, "refused_unread": refused, "untried": untried}


if __name__ == "__main__":
    import io
    import contextlib

    names = sys.argv[1:] or list(TASKS)
    report = {}
    for name in names:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                report[name] = audit(name)
            except BaseException as err:  # noqa: BLE001
                report[name] = {"error": f"{type(err).__name__}: {err}", "log": buf.getvalue()[-2000:]}
        if report[name].get("rc"):
            report[name]["log"] = buf.getvalue()[-1500:]
        shown = {k: v for k, v in report[name].items() if k != "refused_unread"}
        print(name, json.dumps(shown, indent=1), f"({len(report[name].get('refused_unread', []))} refused)",
              flush=True)
