"""Best-model bookkeeping, as transformers 5.25's Trainer keeps it (TrainingArguments load_best_model_at_end,
metric_for_best_model, greater_is_better; Trainer._determine_best_metric, _save_checkpoint, _load_best_model).

- The options: metric_for_best_model defaults to "loss" when load_best_model_at_end is set; greater_is_better
  defaults to `not metric.endswith("loss")`; load_best_model_at_end needs evaluation and checkpoints on the same
  steps schedule (save_steps a multiple of eval_steps) -> preflab.best_model_options (the config layer's checks).
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
  strategies -> preflab.best_model_options' `saves_best`, best_model_option_errors.
"""
from __future__ import annotations

import math
from pathlib import Path

from preflab.errors import ConfigError


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
            from preflab.eval.names import renamed_metric

            new = renamed_metric(self.key)
            renamed = (f" {self.key!r} is an earlier preflab's name of {new!r}: set metric_for_best_model: {new}."
                       if new in metrics else "")
            raise ConfigError(f"metric_for_best_model is set to {self.key!r}, which is not found in the evaluation "
                              f"metrics (step {step}). The available evaluation metrics are: {sorted(metrics)}. "
                              f"Set metric_for_best_model to one of them.{renamed}")
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
