"""Resume or fresh start: what resume_from_checkpoint asks for, and what is said or refused about output_dir
before anything loads.

resume_requested reads the option; check_resume_early refuses a resume the checkpoint cannot give (a newer format,
another DeepSpeed layout, a config or global batch that changes the run's meaning: preflab.resume_check) on every
rank before any model is loaded; refuse_fresh_start_over_unfinished_run (at the build) and earlier_run_note (when
train() starts) refuse or say what a fresh start replaces of an earlier run in the same folder (what an interrupted or failed run ends with: preflab.checkpoint.what_is_kept). The checkpoint itself is
restored by TrainingRun._maybe_resume (preflab.loops.driver), which runs the same checks again with their notes.
"""
from __future__ import annotations

import json
from pathlib import Path

from preflab.checkpoint import latest_checkpoint, read_marker
from preflab.deepspeed_checkpoint import check_deepspeed_resume
from preflab.errors import ConfigError, PreflabError
from preflab.resume_check import check_checkpoint_version, check_saved_config


def resolve_auto_resume(cfg, note=print) -> None:
    """`resume_from_checkpoint: auto`: the one setting a scheduler's restarted job can keep in its config (Slurm's
    requeue, a Kubernetes pod restarted with the same command). Resolved once per run, before output_dir is claimed,
    on every rank from the same files: `true` (resume the newest intact checkpoint of output_dir's current timeline)
    when there is one, or a save killed between its renames that the start puts back (`.old-checkpoint-*`); else
    null (a fresh start; a finished run without checkpoints is started afresh, as earlier_run_note says). With
    `true` a first start is refused (nothing to resume) and with null a restart is refused (checkpoints would be
    replaced), so neither can be left in a config that must both start and restart. Lightning's `ckpt_path="last"`
    behaves alike (no checkpoint: a warning, a fresh start). note: where the choice is said (the main process)."""
    if cfg.resume_from_checkpoint != "auto":
        return
    out = Path(cfg.output_dir)
    latest = latest_checkpoint(out) if out.is_dir() else None
    if latest is not None or (out.is_dir() and any(out.glob(".old-checkpoint-*"))):
        cfg.resume_from_checkpoint = True
        if note:
            note(f"preflab: resume_from_checkpoint: auto: {out} holds checkpoints of this run, resuming the newest "
                 "intact one.", flush=True)
        return
    cfg.resume_from_checkpoint = None
    if note:
        note(f"preflab: resume_from_checkpoint: auto: {out} holds no checkpoint of a run to continue, starting at "
             "step 0.", flush=True)


def resume_requested(cfg) -> bool:
    """resume_from_checkpoint asks for a resume (true / latest / a path); unset, false or "" does not."""
    return cfg.resume_from_checkpoint not in (None, False, "", "false")


def _earlier_run(cfg) -> tuple[int | None, Path | None] | None:
    """(the step summary.json says the earlier run ended at or None, its latest checkpoint or None) when a fresh
    start (no resume asked) is about to replace an earlier run in output_dir (its metrics.jsonl or summary.json);
    None otherwise."""
    if resume_requested(cfg):
        return None
    out = Path(cfg.output_dir)
    if not ((out / "metrics.jsonl").is_file() or (out / "summary.json").is_file()):
        return None
    try:
        step = json.loads((out / "summary.json").read_text()).get("global_step")
    except (OSError, ValueError, AttributeError):
        step = None
    return (step if isinstance(step, int) else None), latest_checkpoint(out)


def refuse_fresh_start_over_unfinished_run(cfg) -> None:
    """A run that did not finish and has checkpoints (a killed or preempted job restarted without
    resume_from_checkpoint) is refused unless overwrite_output_dir: its checkpoints would be replaced one by one.
    Checked when the run is built, before any model loads (preflab.loops.launch)."""
    earlier = _earlier_run(cfg)
    if earlier is None:
        return
    step, latest = earlier
    if step is None and latest is not None and not getattr(cfg, "overwrite_output_dir", False):
        raise ConfigError(
            f"output_dir {cfg.output_dir} holds a run that did not finish, with checkpoints up to {latest.name}; a "
            "fresh start would replace its metrics.jsonl, and each of its checkpoints once this run saves the same "
            "step. Set resume_from_checkpoint: true to continue it, overwrite_output_dir: true to start afresh "
            "anyway, or choose another output_dir.")


def earlier_run_note(cfg) -> str | None:
    """The note a fresh start in a folder that holds an earlier run prints: it replaces that run's model,
    metrics.jsonl and summary.json (a forgotten output_dir override otherwise loses a finished run without a word).
    None when no earlier run is replaced. Said when train() starts the run (preflab.loops.driver), not when it is
    built: a trainer built from Python whose train(resume_from_checkpoint=...) is then refused starts nothing, and a
    note printed at its build said it "starts afresh and replaces" a run it never touched."""
    earlier = _earlier_run(cfg)
    if earlier is None:
        return None
    ended = "it did not finish" if earlier[0] is None else f"it ended at step {earlier[0]}"
    return (f"preflab: note: output_dir {cfg.output_dir} holds an earlier run ({ended}); this run starts afresh and "
            "replaces its model, metrics.jsonl and summary.json; its checkpoint-* folders stay on the old timeline "
            "until this run saves a checkpoint of the same step, which replaces it. To continue it instead, set "
            "resume_from_checkpoint: true; to keep it, choose another output_dir.")


def no_checkpoint_to_resume(output_dir) -> str:
    """Why `resume_from_checkpoint: true` found nothing: a folder with no `checkpoint-*` at all (a new folder, or a
    run with save_steps 0) is said as such; the timeline rule is named only where there are checkpoints to skip."""
    if not any(p.is_dir() for p in Path(output_dir).glob("checkpoint-*")):
        return (f"resume_from_checkpoint is true but {output_dir} holds no checkpoint-* folder (a run saves them "
                "every save_steps steps; with save_steps 0 it saves none): start without resume_from_checkpoint, "
                "or point output_dir at the run to continue.")
    return (f"resume_from_checkpoint is true but {output_dir} holds no complete checkpoint of its current run "
            "(checkpoints of a run that was later rolled back or restarted are not resumed by `true`; give the "
            "checkpoint's path to resume one of them).")


def check_resume_early(cfg, engine: str, stage: int | None, processes: int, launched: int) -> None:
    """Refuse a resume whose config changes the run's meaning, or that DeepSpeed's partition layout cannot give
    exactly, before any model is loaded (the full check, with notes and checksums, runs again at resume). Read-only
    and run on every rank: each reads the same checkpoint files and raises the same ConfigError. engine, stage,
    processes: the accelerator's (preflab.loops.launch.sharding_engine, deepspeed_stage, num_processes); launched:
    the processes the launcher started (launched_world_size)."""
    if not resume_requested(cfg):
        return
    spec = cfg.resume_from_checkpoint
    path = latest_checkpoint(cfg.output_dir) if spec in (True, "true", "latest") else Path(spec)
    # nothing to resume: said now, not after the data is read and tokenized (a save killed between its renames
    # is put back at the start, so a folder holding one is left to the resume itself)
    if path is None and not any(Path(cfg.output_dir).glob(".old-checkpoint-*")):
        raise PreflabError(no_checkpoint_to_resume(cfg.output_dir))
    if path is not None and not path.exists():
        read_marker(path)  # raises: the folder does not exist, and which checkpoints its run folder holds
    try:
        saved = json.loads((path / "trainer_state.json").read_text()) if path is not None else None
    except (OSError, ValueError):
        return  # a missing or damaged checkpoint is reported, with its file, at resume
    if isinstance(saved, dict):
        check_checkpoint_version(saved, path, note=lambda *a, **k: None)
        check_deepspeed_resume(saved, path, engine, stage, processes)
        check_saved_config(saved, cfg, path, launched, note=lambda *a, **k: None)
