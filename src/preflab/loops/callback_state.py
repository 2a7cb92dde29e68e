"""transformers callbacks in preflab's loop: their events, and their state in each checkpoint.

CallbackEvents (a base of preflab.loops.driver.TrainingRun) calls each callback's on_* events as transformers'
Trainer does and reads back the control flags they set (emit, control_flags).

The state of stateful transformers callbacks (ExportableState: `state()` -> {"args": ..., "attributes": ...}, as
EarlyStoppingCallback's early_stopping_patience_counter) in each checkpoint, restored on resume.

    state["stateful_callbacks"] = callback_states(callbacks)           # saved with the checkpoint
    restore_callback_states(callbacks, state.get("stateful_callbacks"), note=print)   # at resume

The layout is transformers' TrainerState.stateful_callbacks (class name -> state, or a list of states for several
callbacks of one class, matched in order). transformers restores them only with
restore_callback_states_from_checkpoint: true (its default false starts them afresh, so a resumed run with
EarlyStoppingCallback stops later than the uninterrupted one); preflab always restores them, so a resumed run
continues as the uninterrupted one would. The callback objects passed in are kept (their attributes are set), so
the caller's references stay valid; saved args that differ from the current callback's are said in a note and the
current args are kept.
"""
from __future__ import annotations

import torch

from preflab.errors import PreflabError


def _stateful(callbacks) -> list:
    """The callbacks that are transformers ExportableState. No callbacks (every `preflab train` run): nothing is
    imported. transformers.trainer_callback imports its trainer_utils, which imports peft, which imports
    bitsandbytes where it is installed: at a run's first checkpoint that cost about 10 s on a 2-core CPU machine and
    printed bitsandbytes' kernel warning once per process."""
    if not callbacks:
        return []
    from transformers.trainer_callback import ExportableState

    return [cb for cb in callbacks or [] if isinstance(cb, ExportableState)]


def callback_states(callbacks) -> dict:
    """{class name: state() (a list when several callbacks share the class)} of the stateful callbacks."""
    out: dict = {}
    for cb in _stateful(callbacks):
        name = type(cb).__name__
        state = cb.state()
        if name in out:
            out[name] = (out[name] if isinstance(out[name], list) else [out[name]]) + [state]
        else:
            out[name] = state
    return out


def restore_callback_states(callbacks, saved: dict | None, note=None) -> int:
    """Set the saved attributes on the stateful callbacks of the same class (in order); returns how many were
    restored. A saved class with no such callback now, or a callback with no saved state, starts as given (noted)."""
    saved = dict(saved or {})
    restored, fresh = 0, []
    by_class: dict = {}
    for cb in _stateful(callbacks):
        by_class.setdefault(type(cb).__name__, []).append(cb)
    for name, cbs in by_class.items():
        states = saved.pop(name, [])
        states = states if isinstance(states, list) else [states]
        for i, cb in enumerate(cbs):
            if i >= len(states):
                fresh.append(name)
                continue
            args, current = states[i].get("args", {}), cb.state().get("args", {})
            if note is not None and args != current:
                note(f"preflab: note: {name} was saved with {args}, now given {current}: its saved state "
                     f"{states[i].get('attributes', {})} continues with the current args.")
            for attribute, value in (states[i].get("attributes") or {}).items():
                setattr(cb, attribute, value)
            restored += 1
    if note is not None and (fresh or saved):
        parts = ([f"{', '.join(fresh)} start afresh (the checkpoint holds no state for them)"] if fresh else []) + (
            [f"the checkpoint's state of {', '.join(saved)} is not used (no such callback now)"] if saved else [])
        note("preflab: note: callbacks at resume: " + "; ".join(parts) + ".")
    return restored


class CallbackEvents:
    """emit and control_flags of a run with `callbacks` (transformers TrainerCallback objects); reads the run's
    cfg, accelerator, step, total_steps, progress(step) and best (a preflab.loops.best_model.BestModel)."""
    callbacks: list = []

    def emit(self, event: str, **kwargs) -> None:
        """Call `event` (on_train_begin, on_step_end, on_log, on_evaluate, on_save, on_train_end) on every callback
        that has it, on every rank, as transformers' Trainer does: `(args, state, control, **kwargs)` with args the
        TrainConfig, state a transformers TrainerState (global_step, max_steps, epoch, is_world_process_zero,
        log_history) and control a TrainerControl; on_log gets `logs=`, on_evaluate `metrics=`, on_save
        `checkpoint=` (the directory). The control flags a callback sets are acted on after the step as
        transformers does (control_flags): should_training_stop ends the run there, should_log / should_evaluate /
        should_save add a metrics row / an evaluation / a checkpoint at that step."""
        if not self.callbacks:
            return
        if getattr(self, "_cb_state", None) is None:
            from transformers import TrainerControl, TrainerState

            self._cb_state = TrainerState(max_steps=self.total_steps,
                                          is_world_process_zero=self.accelerator.is_main_process)
            self._cb_control = TrainerControl()
        state = self._cb_state
        state.global_step = self.step
        best = getattr(self, "best", None)
        if best is not None:  # transformers' TrainerState fields (EarlyStoppingCallback reads best_metric)
            state.best_metric, state.best_global_step = best.best_metric, best.best_global_step
            state.best_model_checkpoint = best.best_model_checkpoint
        state.epoch = self.progress(self.step)["epoch"]
        if event in ("on_log", "on_evaluate"):
            state.log_history.append(dict(kwargs.get("logs") or kwargs.get("metrics") or {}, step=self.step))
        for callback in self.callbacks:
            hook = getattr(callback, event, None)
            if hook is not None:
                try:
                    hook(self.cfg, state, self._cb_control, **kwargs)
                except AttributeError as err:  # a transformers TrainingArguments field the config does not have
                    if getattr(err, "obj", None) is not self.cfg:
                        raise
                    raise PreflabError(
                        f"callback {type(callback).__name__}.{event} reads args.{err.name}, a transformers "
                        "TrainingArguments field preflab's config does not have (args is the preflab TrainConfig; "
                        "it has load_best_model_at_end, metric_for_best_model, greater_is_better and eval_strategy, "
                        "so transformers' EarlyStoppingCallback works). To stop early from your own callback, set "
                        "control.should_training_stop = True in its on_evaluate (acted on after the step); "
                        "preflab's metrics come as `metrics=`.") from err

    def control_flags(self) -> dict:
        """The flags the callbacks set during this step (should_log, should_evaluate, should_save,
        should_training_stop), the same on every rank (any rank's flag counts: evaluation and saving are collective),
        then cleared except should_training_stop; all False without callbacks (no synchronisation then)."""
        names = ("should_log", "should_evaluate", "should_save", "should_training_stop")
        control = getattr(self, "_cb_control", None)
        if not self.callbacks or control is None:
            return dict.fromkeys(names, False)
        flags = [bool(getattr(control, n)) for n in names]
        acc = self.accelerator
        if acc.num_processes > 1:
            flags = [bool(v) for v in acc.reduce(torch.tensor(flags, dtype=torch.long, device=acc.device),
                                                 reduction="sum").tolist()]
        control.should_log = control.should_evaluate = control.should_save = False  # transformers' _new_step
        return dict(zip(names, flags))
