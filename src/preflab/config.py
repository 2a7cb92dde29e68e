"""Typed training config: YAML file + `key=value` overrides, strict, saved with the run.

Option names follow TRL's DPOConfig where TRL has the same option. Keys the config does not know but the chosen
objective does (e.g. `label_smoothing` for `robust`, `gamma` for `simpo`) are passed to the objective; anything
else is an error that names the nearest valid key. Everything is checked before a model is loaded.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from preflab.errors import ConfigError, nearest


@dataclass
class TrainConfig:
    # what to train
    task: str = "dpo"                          # dpo (any pairwise/unpaired objective) | reward | online
    model_name_or_path: str = ""               # hub name, local directory, or builtin:tiny-llama|tiny-qwen2|tiny-gpt2
    ref_model_name_or_path: str | None = None  # default: a frozen copy of the policy (LoRA: adapters disabled)
    dataset_name: str = ""                     # hub name, save_to_disk directory, or .jsonl/.json/.parquet/.csv file
    dataset_split: str = "train"
    eval_dataset_name: str | None = None       # default: hold out eval_fraction of the training rows
    eval_split: str = "test"
    eval_fraction: float = 0.0
    loss_type: Any = "sigmoid"                 # objective name or TRL alias, or a list (weighted by loss_weights)
    loss_weights: list | None = None
    beta: float = 0.1
    objective_params: dict = field(default_factory=dict)  # further objective parameters
    center_rewards_coefficient: float | None = None  # task: reward; adds c * mean((r_w + r_l)^2) (TRL)
    # optimisation
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "linear"          # linear | cosine | constant
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_steps: int = -1                        # > 0 overrides num_train_epochs
    num_train_epochs: float = 1.0
    seed: int = 42
    dtype: str = "float32"                     # float32 | bfloat16 | float16 (autocast where the device allows)
    bf16: bool = False                         # TRL spelling of dtype: bfloat16
    fp16: bool = False
    max_nonfinite_steps: int = 3               # stop after this many non-finite steps in a row
    disable_dropout: bool = True
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    # data
    max_length: int | None = 1024
    max_prompt_length: int | None = None
    truncation_mode: str = "keep_end"          # how an over-long prompt is cut: keep_end | keep_start
    on_bad_row: str = "error"                  # error | skip (skipped rows are counted in summary.json)
    layout: str = "prefix_shared"              # prefix_shared | padded | packed | prefix_packed (preflab.data.prefix)
    precompute_ref_log_probs: bool = False
    chunk_tokens: int | None = None            # LM-head chunk (positions); default from a 64 MiB logits budget
    # models
    use_peft: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: Any = "all-linear"
    trust_remote_code: bool = False
    allow_pickle: bool = False                 # allow .bin/.pt weights (pickle); off: safetensors only
    # output
    output_dir: str = "outputs/preflab-run"
    logging_steps: int = 10
    eval_steps: int = 0                        # 0: evaluate only at the end (when there is an eval set)
    save_steps: int = 0                        # 0: no intermediate checkpoints
    save_total_limit: int | None = None
    resume_from_checkpoint: Any = None         # true (latest in output_dir) or a checkpoint path
    report_to: Any = "none"                    # none | tensorboard | wandb | a list
    disable_tqdm: bool = False
    use_cpu: bool = False
    # online runs (task: online)
    trainer: str = "online_dpo"                # online recipe (preflab.online.trainers): online_dpo, grpo, sppo, ...
    online_task: str = "dataset"               # prompts + judge: dataset (dataset_name prompts) | demo (loud echo) | game
    reward_funcs: Any = None                   # judge(s): demo_true_reward | verifier:<name> | module:attr | model dir
    reward_weights: list | None = None         # one weight per judge in reward_funcs (TRL); default 1 each
    num_generations: int = 4                   # K completions sampled per prompt per generation round
    prompts_per_generation: int = 32           # prompts per generation round (all processes together)
    steps_per_generation: int = 1              # optimizer steps on one generation round's slices (TRL GRPO)
    num_iterations: int = 1                    # passes over each generation round (TRL GRPO's mu)
    max_completion_length: int = 16            # max new tokens per sampled completion (TRL)
    temperature: float = 1.0                   # sampling temperature (log-probs are at temperature 1)
    top_p: float = 1.0                         # nucleus sampling (1: the full distribution)
    generation_batch_size: int = 64            # prompts per generate() call; each call is seeded on its own
    generation_backend: str = "transformers"   # transformers | vllm (optional extra: pip install preflab[vllm])
    pair_builder: str = "best_vs_worst"        # pairs from a judged group: best_vs_worst | all_pairs | rso
    rso_beta: float = 0.5                      # rso pairs: temperature of pi_ref exp(r / rso_beta)
    rso_num_samples: int = 4                   # rso pairs: accepted samples per prompt
    refresh_reference_every: int = 0           # 0: reference pi_0 throughout; n: reference <- policy every n rounds
    missing_eos_penalty: float | None = None   # subtracted from the score of a completion without eos (TRL)
    preference_temperature: float = 0.0        # reward -> P(a>b): 0 gives 1[r_a>r_b] (1/2 ties), t>0 sigmoid(dr/t)
    max_judge_failure_fraction: float = 0.1    # stop when more of a round's completions than this fail to be judged
    epsilon: float = 0.2                       # GRPO family: clip range (TRL)
    epsilon_high: float | None = None          # GRPO family: upper clip range (DAPO clip-higher); None: epsilon
    scale_rewards: str = "group"               # GRPO family: advantage scale group | batch | none (TRL)
    game_preferences: list | None = None       # online_task game: K x K P[i][j] = P(answer i beats j), P + P^T = 1
    game_eta: float = 0.5                      # online_task game: inpo / nash_md step, eta * beta (in (0, 1])
    apo_alpha: float = 0.3                     # online_task game, trainer apo: extrapolation (momentum) on the iterates
    heldout_prompts: int = 64                  # online_task demo: held-out prompts for true_reward_before/after

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Impossible values -> ConfigError (the objective checks its own parameters in objective())."""
        positive = ["learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
                    "gradient_accumulation_steps", "max_nonfinite_steps"]
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}.")
        choices = {"task": ("dpo", "reward", "online"), "lr_scheduler_type": ("linear", "cosine", "constant"),
                   "dtype": ("float32", "bfloat16", "float16"), "truncation_mode": ("keep_end", "keep_start"),
                   "on_bad_row": ("error", "skip"),
                   "layout": ("padded", "prefix_shared", "packed", "prefix_packed")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}.")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {self.max_length}.")
        if self.bf16 and self.fp16:
            raise ConfigError("bf16 and fp16 are both set; choose one.")
        if self.task == "online":
            from preflab.online.options import check_online

            check_online(self)

    @property
    def torch_dtype(self) -> str:
        return "bfloat16" if self.bf16 else "float16" if self.fp16 else self.dtype

    def objective_kwargs(self) -> dict:
        """Parameters for get_objective: beta where the objective has it, plus objective_params."""
        return {"beta": self.beta, **self.objective_params}

    def objective(self):
        """Build (and so validate) the objective this config names."""
        from preflab.objectives import get_objective

        return get_objective(self.loss_type, **_params_for(self.loss_type, self.objective_kwargs()),
                             **({"loss_weights": self.loss_weights} if self.loss_weights else {}))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _params_for(loss_type, params: dict) -> dict:
    """Drop `beta` for objectives without a beta field (e.g. `sft`), keep everything else (unknowns then raise)."""
    from preflab.objectives import objective_class, resolve_name

    names = loss_type if isinstance(loss_type, (list, tuple)) else [loss_type]
    fields = set()
    for name in names:
        if ":" in str(name):
            return params
        fields |= {f.name for f in dataclasses.fields(objective_class(resolve_name(name)))}
    return {k: v for k, v in params.items() if k != "beta" or "beta" in fields}


def _check_type(name: str, value: Any, hint) -> Any:
    """Coerce ints to floats where a float is expected; anything else of the wrong type is a ConfigError."""
    if value is None:
        if type(None) in typing.get_args(hint) or hint is Any:
            return value
        raise ConfigError(f"{name} may not be null.")
    if hint is Any:
        return value
    allowed = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
    origins = [typing.get_origin(a) or a for a in allowed]
    if float in origins and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if float in origins and isinstance(value, str):  # YAML 1.1 reads "1e-6" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if any(isinstance(value, o) and not (o is int and isinstance(value, bool)) for o in origins):
        return value
    wanted = " or ".join(getattr(o, "__name__", str(o)) for o in origins)
    raise ConfigError(f"{name} must be {wanted}, got {value!r} ({type(value).__name__}).")


def config_from_dict(raw: dict) -> TrainConfig:
    """A TrainConfig from a flat dict; unknown keys go to the objective if it has them, else ConfigError."""
    hints = typing.get_type_hints(TrainConfig)
    known, extra = {}, {}
    for key, value in raw.items():
        if key in hints:
            known[key] = _check_type(key, value, hints[key])
        else:
            extra[key] = value
    cfg = TrainConfig(**known)
    if extra:
        from preflab.objectives import objective_class, resolve_name

        names = cfg.loss_type if isinstance(cfg.loss_type, (list, tuple)) else [cfg.loss_type]
        objective_fields = set()
        for name in names:
            objective_fields |= {f.name for f in dataclasses.fields(objective_class(resolve_name(name)))}
        for key, value in extra.items():
            if key not in objective_fields:
                raise ConfigError(
                    f"unknown config key {key!r}.{nearest(key, list(hints) + sorted(objective_fields))} "
                    "Run `preflab train --help` for the options."
                )
            cfg.objective_params[key] = value
    cfg.objective()  # validates objective parameters before any model is loaded
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    """'key=value' -> (key, value parsed as YAML: numbers, booleans, null and lists work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value.")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.strip(), value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config (safe loader) and apply key=value overrides (`objective_params.x=1` sets a nested key)."""
    raw: dict = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as err:
            raise ConfigError(f"config file {path} does not exist.") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of options, got {type(raw).__name__}.")
    for item in overrides:
        key, value = parse_override(item)
        if key.startswith("objective_params."):
            raw.setdefault("objective_params", {})[key.split(".", 1)[1]] = value
        else:
            raw[key] = value
    return config_from_dict(raw)


def describe_options() -> str:
    """Every option with its default, for --help."""
    lines = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = repr(default) if isinstance(default, str) else json.dumps(default)
        lines.append(f"  {f.name} = {text}")
    return "\n".join(lines)
