"""Best-model bookkeeping, as transformers 5.25's Trainer keeps it (TrainingArguments load_best_model_at_end,
metric_for_best_model, greater_is_better; Trainer._determine_best_metric, _save_checkpoint, _load_best_model).

- The options: metric_for_best_model defaults to "loss" when load_best_model_at_end is set; greater_is_better
  defaults to `not metric.endswith("loss")`; load_best_model_at_end needs evaluation and checkpoints on the same
  steps schedule (save_steps a multiple of eval_steps) -> best_model_option_errors / resolve_best_model_options.
- At each evaluation of the loop (the last step's included: transformers' DefaultFlowCallback evaluates it under
  eval_strategy steps and saves it under save_strategy steps, so with load_best_model_at_end the driver evaluates and
  checkpoints the last step too, and it competes for the best) the metric
  (`eval_` prefixed when the name lacks it) is compared with the best so far: strictly greater (greater_is_better) or
  strictly less replaces it and records the step (BestModel.update). A name missing from the metrics is a
  ConfigError naming the available keys (transformers raises KeyError there).
- At each checkpoint, checkpoint-<best_global_step> becomes best_model_checkpoint once it exists; save_total_limit
  never deletes it (preflab.checkpoint.apply_save_total_limit).
- The state (best_metric, best_global_step, best_model_checkpoint) goes into each checkpoint's trainer_state.json
  and comes back on resume, so a resumed run continues it exactly.
- save_strategy "best" (Trainer._maybe_log_save_evaluate): at each evaluation the checkpoint is saved exactly when
  the metric is a new best (a callback's should_save at that step is replaced by that answer); save_steps is not
  read; the evaluation transformers adds at the last step (eval_strategy steps, the last step not an eval step) is
  one of them. It needs metric_for_best_model (transformers' ValueError) and, beyond transformers (which would save
  nothing without a word), an evaluation schedule and an eval set; load_best_model_at_end then needs no matching
  strategies -> `saves_best`, best_model_option_errors.
"""
from __future__ import annotations

import math
from pathlib import Path

from preflab.errors import ConfigError


def resolve_best_model_options(cfg) -> None:
    """transformers' TrainingArguments.__post_init__ defaults: metric_for_best_model "loss" under
    load_best_model_at_end; greater_is_better from the metric's name (False when it ends in "loss")."""
    if cfg.load_best_model_at_end and cfg.metric_for_best_model is None:
        cfg.metric_for_best_model = "loss"
    if cfg.greater_is_better is None and cfg.metric_for_best_model is not None:
        cfg.greater_is_better = not cfg.metric_for_best_model.endswith("loss")


def saves_best(cfg) -> bool:
    """save_strategy "best": a checkpoint at each evaluation that improves metric_for_best_model."""
    return getattr(cfg, "save_strategy", None) == "best"


def writes_checkpoints(cfg) -> bool:
    """The run writes intermediate checkpoints (save_steps > 0, or save_strategy best)."""
    return bool(cfg.save_steps) or saves_best(cfg)


def _save_best_errors(cfg) -> list[str]:
    if cfg.metric_for_best_model is None:
        return [("metric_for_best_model must be provided when using save_strategy: best (as transformers requires); "
                 "set it, e.g. metric_for_best_model: loss.")]
    if not (cfg.eval_steps or cfg.eval_strategy in ("steps", "epoch")):  # the eval set: data.eval_set
        return [(f"save_strategy: best saves a checkpoint at each evaluation that improves "
                 f"{cfg.metric_for_best_model}, but this run has no evaluation during training (it would save "
                 "nothing). Set eval_strategy: steps with eval_steps and an eval set (eval_dataset_name or "
                 "eval_fraction), or use save_strategy: steps with save_steps.")]
    if cfg.save_steps:
        return [(f"save_steps={cfg.save_steps} is not used with save_strategy: best (a checkpoint at each new best "
                 "evaluation); remove it.")]
    return []


def best_model_option_errors(cfg) -> list[str]:
    """transformers' rules for load_best_model_at_end and save_strategy best, in preflab's terms (save_strategy steps
    is save_steps > 0; eval_strategy steps is eval_steps > 0; save_strategy epoch is not supported)."""
    if saves_best(cfg):
        return _save_best_errors(cfg)  # load_best_model_at_end: no strategy to match (transformers)
    if not cfg.load_best_model_at_end:
        return []
    eval_strategy = cfg.eval_strategy or ("steps" if cfg.eval_steps else "no")
    save_strategy = "steps" if cfg.save_steps else "no"
    if eval_strategy != save_strategy:
        return [(f"load_best_model_at_end requires the save and eval strategy to match, but found evaluation "
                 f"strategy {eval_strategy!r} (eval_steps={cfg.eval_steps}) and save strategy {save_strategy!r} "
                 f"(save_steps={cfg.save_steps}). Set eval_strategy: steps with eval_steps, save_steps a multiple of "
                 "eval_steps, and an eval set (eval_dataset_name or eval_fraction); or remove load_best_model_at_end.")]
    if cfg.eval_steps and cfg.save_steps % cfg.eval_steps:
        return [(f"load_best_model_at_end requires the saving steps to be a round multiple of the evaluation steps, "
                 f"but found save_steps={cfg.save_steps}, which is not a round multiple of eval_steps="
                 f"{cfg.eval_steps}.")]
    return []


class BestModel:
    """The best evaluation so far: best_metric, best_global_step, best_model_checkpoint (transformers' TrainerState
    fields of the same names). Idle (update does nothing) when metric_for_best_model is not set."""

    def __init__(self, metric_for_best_model: str | None, greater_is_better: bool | None):
        self.metric = metric_for_best_model
        self.greater = bool(greater_is_better)
        self.best_metric: float | None = None
        self.best_global_step: int | None = None
        self.best_model_checkpoint: str | None = None

    @property
    def key(self) -> str | None:
        """The eval metric's name as it appears in the eval metrics (transformers adds `eval_` when missing)."""
        if self.metric is None:
            return None
        return self.metric if self.metric.startswith("eval_") else f"eval_{self.metric}"

    def update(self, metrics: dict, step: int) -> bool:
        """transformers' _determine_best_metric: True when `metrics` at `step` is a new best."""
        if self.metric is None or not metrics:
            return False
        if self.key not in metrics:
            raise ConfigError(f"metric_for_best_model is set to {self.key!r}, which is not found in the evaluation "
                              f"metrics (step {step}). The available evaluation metrics are: {sorted(metrics)}. "
                              "Set metric_for_best_model to one of them.")
        value = float(metrics[self.key])
        best = self.best_metric
        if best is None:
            best = -math.inf if self.greater else math.inf
        if (value > best) if self.greater else (value < best):
            self.best_metric, self.best_global_step = value, step
            return True
        return False

    def note_checkpoint(self, output_dir: Path, step: int) -> None:
        """At the save of checkpoint-<step>: checkpoint-<best_global_step> becomes best_model_checkpoint when it is
        that one or already exists (transformers' _save_checkpoint)."""
        if self.best_global_step is None:
            return
        path = Path(output_dir) / f"checkpoint-{self.best_global_step}"
        if self.best_global_step == step or path.is_dir():
            self.best_model_checkpoint = str(path)

    def loaded_note(self) -> str:
        """What load_best_model_at_end loaded. best_metric is the best evaluation's, and that step may have no
        checkpoint (eval_steps finer than save_steps): transformers then keeps the last best step that was saved,
        whose metric is another; the note says so instead of giving it the unsaved step's number."""
        path = Path(self.best_model_checkpoint)
        step = path.name.rpartition("-")[2]
        if step == str(self.best_global_step):
            return (f"loaded the best model from {path} ({self.key} {self.best_metric:.6g}); the final model is its "
                    "weights.")
        return (f"loaded the best saved model from {path} (step {step}); the best {self.key}, "
                f"{self.best_metric:.6g}, was at step {self.best_global_step}, which has no checkpoint (as transformers, "
                f"the last best step that was saved is loaded; save_steps equal to eval_steps saves every candidate). "
                "The final model is its weights.")

    def state_dict(self) -> dict:
        return {"best_metric": self.best_metric, "best_global_step": self.best_global_step,
                "best_model_checkpoint": self.best_model_checkpoint}

    def load_state_dict(self, state: dict) -> None:
        """From a resumed checkpoint's trainer_state; a recorded best checkpoint that no longer exists is dropped
        (as transformers does)."""
        self.best_metric = state.get("best_metric")
        self.best_global_step = state.get("best_global_step")
        path = state.get("best_model_checkpoint")
        self.best_model_checkpoint = path if path and Path(path).is_dir() else None


def load_best_weights(checkpoint: str | Path, model, extra_tensors: dict | None = None) -> None:
    """transformers' _load_best_model: copy the best checkpoint's saved weights (its model.safetensors: every
    trainable parameter; with LoRA the adapters) into `model`, and its extra.safetensors into `extra_tensors` (the
    run's checkpoint_extras: an objective's learned masks, an extras producer's head), in place, after checking the
    checkpoint's files (preflab.checkpoint.load_checkpoint_weights: a missing, incomplete or damaged checkpoint, or
    one lacking an extra, is a PreflabError). So the final model and everything trained with it are one step's."""
    from preflab.checkpoint import load_checkpoint_weights

    load_checkpoint_weights(checkpoint, model, extra_tensors)


def remove_all_but_best(output_dir: str | Path, timeline, best_model_checkpoint: str) -> None:
    """transformers at the end of a load_best_model_at_end run with save_total_limit 1: every checkpoint but the best
    one is deleted."""
    from preflab.checkpoint import _remove_atomically, list_checkpoints

    best = Path(best_model_checkpoint).resolve()
    for path in list_checkpoints(output_dir, timeline):
        if path.resolve() != best:
            _remove_atomically(path)
