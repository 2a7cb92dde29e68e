"""The state of stateful transformers callbacks (ExportableState: `state()` -> {"args": ..., "attributes": ...}, as
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


def _stateful(callbacks) -> list:
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
