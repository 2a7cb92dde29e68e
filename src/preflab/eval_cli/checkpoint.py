"""What `preflab eval` loads and runs for a policy: the run (builtin:demo-sft included) and its reference, a
--reward-model, and evaluate_checkpoint, which evaluates them on held-out pairs and writes eval.json.

    result = evaluate_checkpoint("outputs/run", "heldout.jsonl", reference="outputs/sft")   # also writes eval.json

The diagnostics are preflab.eval.run.evaluate_models (in memory, on models already loaded); this module adds the
loading, the run's beta and training data notes, and eval.json.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from preflab.errors import ConfigError
from preflab.eval.run import (EvalOptions, data_fields, eval_beta, eval_json_path, evaluate_models,
                              training_data_note, write_json)


def load_policy(name: str, tokenizer=None, allow_pickle: bool = False, trust_remote_code: bool = False,
                seed: int | None = None):
    """preflab.eval.loading.load_for_eval with builtin:demo-sft built by the demo (preflab.demo.sft_model): a run
    directory, a checkpoint (of a run from builtin:demo-sft too) or a builtin name -> (model in eval mode,
    tokenizer). seed: a builtin model's (preflab.models.run_config.run_seed; None: TrainConfig's default)."""
    from preflab.demo.sft_model import demo_sft
    from preflab.eval.loading import load_for_eval

    return load_for_eval(name, tokenizer=tokenizer, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                         seed=seed, demo_sft=demo_sft)


def reward_model_fn(path: str, allow_pickle: bool = False, batch_size: int = 16, max_length: int = 1024):
    """A TRL-style reward function backed by a local reward model in path: a `task: reward` run's output_dir (or
    checkpoint-<step>) or any sequence-classification checkpoint with a trained head.

    It scores exactly as the reward model is trained and evaluated
    (`preflab.reward_models.interface.reward_function`: bos + prompt, response + eos, read at the last real token;
    conversational prompts through the chat template). A directory without a trained reward head (a policy, a base
    model) is a ConfigError: its head would be random."""
    from preflab.reward_models.interface import reward_function

    if not Path(path).is_dir():
        raise ConfigError(f"--reward-model {path!r} is not a directory holding a saved reward model.")
    return reward_function(path, allow_pickle=allow_pickle, batch_size=batch_size, max_length=max_length)


def demo_training_prompts(cfg: dict):
    """The training rows of an online run on the demo task (task: online, online_task: demo): the demo's training
    prompts (preflab.demo.task.make_splits(0), as preflab.online.tasks.load_task gives them to the run), as prompt
    rows for the policy eval's overlap count; None for any other run (the eval reads those from its config:
    preflab.eval.run.policy_training_rows)."""
    if cfg.get("task") != "online" or cfg.get("online_task") != "demo":
        return None
    from preflab.data.rows import load_rows
    from preflab.demo.task import make_splits
    from preflab.eval.run import TrainingRows

    rows = load_rows([{"prompt": row["prompt"]} for row in make_splits(0)[1]], kind="prompt")[0]
    return TrainingRows("the demo task's training prompts (online_task: demo)", rows=rows, name="online_task: demo",
                        split="train", prompts_only=True)


def not_the_starting_model(checkpoint: str, reference: str | None, reference_source: str | None, policy,
                           ref) -> str | None:
    """Why the default reference of `checkpoint` is dropped, or None. A run trains against its starting policy
    (run config's model_name_or_path, where no ref_model_name_or_path is named: preflab.eval.loading.run_reference);
    when that name builds another architecture than the model the run trained (preflab.checkpoint.
    architecture_differences: a recipe stage trains a model it built itself, e.g. fspo's tiny_causal_lm with its own
    num_layers, under builtin:tiny-llama), it is not the model the run started from, and its log-probs would give
    reference metrics of a model the run never saw. The eval then runs without a reference (eval.json "missing"
    says which metrics), as with --no-reference."""
    from preflab.checkpoint import architecture_differences, model_architecture

    if ref is None or reference_source != "run config (model_name_or_path)":
        return None
    trained, start = model_architecture(policy), model_architecture(ref)
    differences = architecture_differences(start, trained) if trained and start else []
    if not differences:
        return None
    return (f"no reference: the run's model_name_or_path {reference} builds another architecture than the model "
            f"{checkpoint} holds ({'; '.join(differences[:4])}), so it is not the model the run started from (a "
            "recipe stage trains a model it built itself); its reference metrics are left out. Pass --reference DIR "
            "(the starting model) for them.")


def evaluate_checkpoint(checkpoint: str, data, reference: str | None = None, out: str | None = None,
                        options: EvalOptions | None = None, reward_fn=None, judge=None, allow_pickle: bool = False,
                        trust_remote_code: bool = False, reference_source: str | None = None,
                        seed: int | None = None, data_record: dict | None = None) -> dict:
    """Load `checkpoint` (and `reference`), evaluate on `data` (with --data-config: a ConfiguredSource,
    preflab.eval.run.eval_data), write eval.json (into the checkpoint directory, or
    to `out`: a .json path or a directory). Returns the eval.json dict with its "path". reference_source: where
    the reference came from, recorded in eval.json (the CLI: "--reference" or "run config (<key>)"). seed: the seed
    of the builtin models built here (a builtin reference, a builtin policy or base): `preflab eval --seed`; None:
    the run's saved seed, else TrainConfig's default, the seed `preflab train` built them with
    (preflab.models.run_config.run_seed). data_record: eval.json's record of the data where `data` is rows
    the caller rebuilt (--held-out), instead of data_fields(data)."""
    from preflab import __version__
    from preflab.models.run_config import run_seed
    from preflab.models.run_config import run_config

    opts = options or EvalOptions()
    cfg = run_config(checkpoint) if Path(checkpoint).is_dir() else {}
    beta, run_notes = eval_beta(opts.beta, cfg)
    seed = run_seed(cfg, seed)
    policy, tokenizer = load_policy(checkpoint, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                                    seed=seed)
    ref = None
    if reference:
        ref, _ = load_policy(reference, tokenizer=tokenizer, allow_pickle=allow_pickle,
                             trust_remote_code=trust_remote_code, seed=seed)
    not_the_start = not_the_starting_model(checkpoint, reference, reference_source, policy, ref)
    if not_the_start:
        print(f"preflab: note: {not_the_start}", file=sys.stderr)
        ref, reference = None, None
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = policy.to(device)
    ref = ref.to(device) if ref is not None else None
    started = time.perf_counter()
    result = evaluate_models(policy, tokenizer, data, ref, opts, beta, reward_fn, judge, training_run=cfg,
                             training_rows=demo_training_prompts(cfg))
    if "num_completions" in result:  # unpaired rows (preflab.eval.unpaired): the beta notes name what they measure
        run_notes = eval_beta(opts.beta, cfg, unpaired=True)[1]
    trained_on = training_data_note(data, cfg, result.get("split") or "train")
    result["notes"] = run_notes + ([trained_on] if trained_on else []) + ([not_the_start] if not_the_start else []) \
        + result["notes"]
    result = {"checkpoint": str(checkpoint), "reference": reference,
              "reference_source": reference_source if reference else None, **(data_record or data_fields(data)), "device": str(device),
              "beta_source": "--beta" if opts.beta is not None else ("run config" if beta == cfg.get("beta")
                                                                     and cfg.get("task") != "sft" else "default"),
              **result, "runtime_s": time.perf_counter() - started, "preflab": __version__}
    result["path"] = str(write_json(eval_json_path(checkpoint, out), result))
    return result
