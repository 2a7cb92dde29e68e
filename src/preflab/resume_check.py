"""Resuming with a changed config: which changes keep the run's meaning and which do not.

compare_configs(saved, current) -> (harmless changes, meaning changes), each {key: (saved value, current value)}.
A key in HARMLESS only changes how long the run goes on, what it logs or saves, or where it runs; every other key
(the objective and its parameters, beta, data, model, batch sizes, seed, gradient_accumulation_steps, layout,
optimizer settings, ...) changes what the resumed run computes, so check_resume_config refuses it unless
`allow_config_change: true`. Unknown keys count as meaning changes (refuse rather than guess).
On another number of processes the global batch (per_device_train_batch_size x processes) and
gradient_accumulation_steps must stay (check_global_batch; for an objective with a statistic of each micro-batch,
KTO's, the per-device batch and processes x gradient_accumulation_steps), and the saved per-device batch (or
accumulation) is read as this world's (saved_config_on_this_world); check_saved_config runs both config checks of a
checkpoint. A max_length the checkpoint's run capped at its model's positions is compared after the same cap
(capped_at_positions).
"""
from __future__ import annotations

from preflab.errors import ConfigError
from preflab.home_paths import home_expanded

HARMLESS = frozenset({
    "max_steps", "num_train_epochs", "logging_steps", "save_steps", "eval_steps", "eval_delay", "save_total_limit", "save_strategy",
    "save_only_model",
    "output_dir", "report_to", "logging_first_step", "eval_on_start",
    "disable_tqdm", "max_nonfinite_steps", "per_device_eval_batch_size", "use_cpu", "torch_compile",
    "torch_compile_backend", "torch_compile_mode",
    "gradient_checkpointing", "activation_offloading", "chunk_tokens", "pad_to_multiple_of", "attention",
    "gradient_checkpointing_kwargs", "torch_empty_cache_steps",  # the same gradients; only memory and speed change
    "judge_timeout_s",  # a judge call that returns in time computes the same; one that does not stops the run
    "push_to_hub", "hub_model_id", "hub_strategy", "hub_private_repo", "hub_revision",  # where uploads go
})


# options that steer this start of the run itself, never compared
# (hub_token: saved masked as "<HUB_TOKEN>", and a token is never printed in a note)
_NOT_COMPARED = frozenset({"resume_from_checkpoint", "allow_config_change", "overwrite_output_dir", "hub_token"})

# (key, saved value, current value) that tokenize alike: preflab before truncation_mode followed TRL 1.16 wrote its
# default keep_end out, which cut sequences as an unset truncation_mode does now. Harmless as a config change; the
# training data's fingerprint (check_resume_data) still refuses the resume if any row's tokens differ.
_SAME_MEANING = frozenset({("truncation_mode", "keep_end", None),
                           # preflab before optim was an option popped a TRL config's adamw_torch / adamw_hf and saved
                           # none; the checkpoint's AdamW param groups (fused) are what the resumed run steps with
                           ("optim", None, "adamw_torch"), ("optim", None, "adamw_hf")})


def _same_meaning(key: str, before, after) -> bool:
    """(key, before, after) is one of _SAME_MEANING, compared by equality: the values may be dicts or lists
    (objective_params, reward_funcs, ...), which a set lookup cannot hash."""
    return any(key == k and before == b and after == a for k, b, a in _SAME_MEANING)


def compare_configs(saved: dict, current: dict, defaults: dict | None = None,
                    launch: dict | None = None, run_dir: str | None = None) -> tuple[dict, dict]:
    """defaults: the current option defaults; a key the saved config lacks (an option added since) that is at its
    default is no change. Values are compared with a leading "~" expanded on both sides (home_expanded): a config.yaml
    saved before preflab expanded it holds "~/data.jsonl" where the current config holds "/home/me/data.jsonl".
    launch: the run's launch record (preflab.launch_paths; the checkpoint's "launch"): a path option whose saved
    value, relative to where the run was started, and current value, relative to this directory, name the same
    existing file or folder is no change (a resume from another directory names the run's files another way).
    run_dir: a recipe stage's run folder now (preflab.launch_paths.RECIPE_RUN_DIR): a path the launch record holds
    relative to the run folder it had then, at the same place in run_dir now, is no change (a moved recipe run)."""
    from preflab.launch_paths import same_path, same_run_path

    harmless, meaning = {}, {}
    for key in sorted(set(saved) | set(current)):
        if key in _NOT_COMPARED:
            continue
        before, after = saved.get(key), current.get(key)
        if home_expanded(before) == home_expanded(after) or (key not in saved and defaults is not None and key in defaults
                               and defaults[key] == after):
            continue
        if same_path(key, before, after, launch):  # the run's file, named from another directory
            continue
        if same_run_path(key, before, after, launch, run_dir):  # the recipe's own file, its run folder moved
            continue
        (harmless if key in HARMLESS or _same_meaning(key, before, after) else meaning)[key] = (before, after)
    return harmless, meaning


def _show(changes: dict) -> str:
    return ", ".join(f"{k} ({before!r} -> {after!r})" for k, (before, after) in changes.items())


def refuse_unless_allowed(cfg, refusal: str, allowed_note: str, note=print) -> None:
    """The rule of every resume check: a change of what the resumed run computes is a ConfigError (`refusal`, which
    says what to do) unless cfg.allow_config_change: true, which continues and says `allowed_note` through `note`
    (None: said nowhere)."""
    if not getattr(cfg, "allow_config_change", False):
        raise ConfigError(refusal)
    if note is not None:
        note(allowed_note)


def capped_at_positions(current: dict, positions) -> dict:
    """The config `current` as a run on a model of `positions` positions uses it: max_length unset (no limit) or
    above them is the positions (preflab.models.load.cap_max_length). A run caps max_length once its model is read
    and saves the capped config in its checkpoints, with the positions ("model_positions"); the resumed run's
    config is compared after the same cap, so an unset max_length (default 1024) on a model of 512 positions is the
    512 its checkpoint holds, and a max_length the user changed below the positions is still a change.
    positions None (a checkpoint of an older preflab, or a run that read no positions): `current` unchanged."""
    if not isinstance(positions, int) or positions <= 0 or "max_length" not in current:
        return current
    limit = current["max_length"]
    return current if limit is not None and limit <= positions else {**current, "max_length": positions}


def check_resume_config(saved: dict | None, cfg, checkpoint, note=print, launch: dict | None = None,
                        positions: int | None = None) -> None:
    """ConfigError listing the keys that change the run's meaning (unless cfg.allow_config_change); a note for
    the rest. cfg: the current config (a dataclass); launch: the checkpoint's launch record (compare_configs);
    positions: the checkpoint's "model_positions", the cap applied to cfg's max_length first (capped_at_positions)."""
    import dataclasses

    current = capped_at_positions(dataclasses.asdict(cfg), positions)
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(cfg)}
    if not isinstance(saved, dict):
        note(f"preflab: note: {checkpoint} holds no saved config (an older preflab); config changes cannot be "
             "checked.")
        return
    from preflab.launch_paths import RECIPE_RUN_DIR

    harmless, meaning = compare_configs(saved, current, defaults, launch, getattr(cfg, RECIPE_RUN_DIR, None))
    if meaning:
        refuse_unless_allowed(
            cfg, f"resume_from_checkpoint: the config differs from the one {checkpoint} was trained with in key(s) "
            f"that change what the run computes: {_show(meaning)}. Resume with the original values, set "
            "allow_config_change: true to continue with the new ones anyway, or start a new run in another "
            "output_dir.",
            f"preflab: note: resuming with changed config (allow_config_change: true): {_show(meaning)}.", note)
    if harmless:
        note(f"preflab: note: resuming with changed option(s): {_show(harmless)}.")


# The layout of checkpoint-N this preflab writes (files and trainer_state.json keys); a checkpoint with a higher
# number was written by a newer preflab, whose files this one may misread: refused.
CHECKPOINT_FORMAT = 1


def checkpoint_identity() -> dict:
    """The keys every checkpoint's trainer_state.json gets: the preflab version and CHECKPOINT_FORMAT."""
    from preflab import __version__

    return {"preflab_version": __version__, "preflab_checkpoint_format": CHECKPOINT_FORMAT}


def check_checkpoint_version(saved: dict, checkpoint, note=print) -> None:
    """ConfigError for a checkpoint of a newer checkpoint format; a note when another preflab version wrote it
    (or an older one that recorded none): the resume is not checked to be exact across versions."""
    from preflab import __version__

    version, fmt = saved.get("preflab_version"), saved.get("preflab_checkpoint_format")
    if isinstance(fmt, int) and fmt > CHECKPOINT_FORMAT:
        raise ConfigError(
            f"resume_from_checkpoint: {checkpoint} was written by preflab {version} in checkpoint format {fmt}; "
            f"this preflab {__version__} reads format {CHECKPOINT_FORMAT} or older. Resume it with preflab "
            f"{version} or newer, or start a new run in another output_dir.")
    if version is None:
        note(f"preflab: note: {checkpoint} records no preflab version (written by an older preflab); "
             f"resuming with preflab {__version__}: the continuation may differ from an uninterrupted run.")
    elif version != __version__:
        note(f"preflab: note: {checkpoint} was written by preflab {version}; resuming with preflab {__version__}: "
             "the continuation may differ from an uninterrupted run of either version.")


def check_resume_data(saved: dict, current: str | None, cfg, checkpoint, note=print) -> None:
    """ConfigError when the training examples now differ from those checkpoint was trained on (the
    "data_fingerprint" saved with it, see preflab.data.fingerprint), unless cfg.allow_config_change."""
    before = saved.get("data_fingerprint")
    if before is None or current is None or before == current:
        return
    where = (f"the data file(s) ({getattr(cfg, 'dataset_name', None)!r}), the tokenizer "
             f"(of {getattr(cfg, 'model_name_or_path', None)!r}) or how the rows are tokenized (max_length, "
             "truncation_mode: keep_end cuts each sequence's start as TRL 1.16 since preflab followed it, where it "
             "used to keep the whole prompt) changed since it was saved")
    refuse_unless_allowed(
        cfg, f"resume_from_checkpoint: the training examples differ from those {checkpoint} was trained on "
        f"(fingerprint {before[:19]}... -> {current[:19]}...): {where}. The resumed run would continue its data "
        "order over other rows. Put the original data and tokenizer back, set allow_config_change: true to "
        "continue on the new data anyway, or start a new run in another output_dir.",
        f"preflab: note: resuming on changed training examples (allow_config_change: true): {where}.", note)


def check_resume_code(saved: dict, checkpoint, cfg, note=print) -> None:
    """ConfigError when user code the checkpoint's run loaded (an objective, reward function or pair builder named
    as 'file.py:name' or 'module:name': trainer_state.json "user_code", preflab.plugins.user_code) was edited or
    removed since, unless cfg.allow_config_change (then a note). The config names the same spec, so the config
    comparison cannot see the change; the resumed run would continue with another objective or reward than the one
    its first steps trained with. A whitespace or comment edit counts too (the bytes are compared)."""
    from preflab.plugins import user_file_sha256

    changed = []
    for module, entry in sorted((saved.get("user_code") or {}).items()):
        now = user_file_sha256(entry.get("file", ""))
        if now is None:
            changed.append(f"{module} ({entry.get('file')}: no longer readable)")
        elif now != entry.get("sha256"):
            changed.append(f"{module} ({entry.get('file')}: edited)")
    if not changed:
        return
    what = f"user code the run trained with changed since {checkpoint} was saved: {', '.join(changed)}"
    refuse_unless_allowed(
        cfg, f"resume_from_checkpoint: {what}. The resumed run would continue with other code than its first steps. "
        "Restore the file, set allow_config_change: true to continue with the new code anyway, or start a new run "
        "in another output_dir.", f"preflab: note: resuming with changed code (allow_config_change: true): {what}.",
        note)


def saved_config_on_this_world(saved: dict, trainer_state: dict, cfg, world: int) -> dict:
    """The checkpoint's saved config as this run would spell it: a checkpoint written on another number of
    processes with the same global batch (per_device_train_batch_size x processes) had another
    per_device_train_batch_size for the same run (BatchPlan reads the same rows in the same order), so that key
    is taken as this run's. Other keys are left for check_resume_config to compare."""
    saved_world = trainer_state.get("world_size")
    if not isinstance(saved, dict) or not isinstance(saved_world, int) or saved_world == world:
        return saved
    if couples_micro_batches(cfg):  # the same micro-batches: processes x accumulation is what stays
        accumulation = saved.get("gradient_accumulation_steps")
        if isinstance(accumulation, int) and accumulation * saved_world == cfg.gradient_accumulation_steps * world:
            return {**saved, "gradient_accumulation_steps": cfg.gradient_accumulation_steps}
        return saved
    batch = saved.get("per_device_train_batch_size")
    if isinstance(batch, int) and batch * saved_world == cfg.per_device_train_batch_size * world:
        return {**saved, "per_device_train_batch_size": cfg.per_device_train_batch_size}
    return saved


def couples_micro_batches(cfg) -> bool:
    """Whether cfg's offline objective holds a statistic of each micro-batch (preflab.objectives.base.
    couples_micro_batch: KTO's reference point, a token mean of the micro-batch, AOT's sorted margins). False for the
    other tasks (task: sft normalises over the optimizer step) and for a config whose objective does not build (the
    run itself reports that error)."""
    return bool(_statistic_parts(cfg))


def _statistic_parts(cfg, online: bool = False) -> list[str]:
    """The class names of cfg's objective parts that declare a micro-batch statistic (base.micro_batch_statistic_
    parts; online: as a task: online run reads them); [] for the other tasks and for a config whose objective does
    not build (the run itself reports that error)."""
    if getattr(cfg, "task", "dpo") != ("online" if online else "dpo") or not hasattr(cfg, "objective"):
        return []
    from preflab.errors import PreflabError
    from preflab.objectives.base import micro_batch_statistic_parts

    try:
        return micro_batch_statistic_parts(cfg.objective(), online)
    except PreflabError:
        return []


def check_global_batch(saved: dict, trainer_state: dict, cfg, world: int, path, note=None) -> None:
    """A checkpoint resumed on another number of processes must keep its batch layout: the global batch
    (per_device_train_batch_size x processes) and gradient_accumulation_steps. The same YAML launched on 1 process
    instead of 2 halves every step's batch and moves the data order, a change of what the run computes that the
    config comparison cannot see (its per-device value is the same). Refused, naming processes, per-device batch and
    accumulation old -> new and the values that keep the run on this number of processes, unless
    allow_config_change (then said in a note). task: online (_check_online_processes) takes the round's examples
    (prompts_per_generation over steps_per_generation) on any number of processes: per_device_train_batch_size
    only bounds its micro-batches (docs/online.md), so the same YAML on another number of processes is the same
    run, unless its objective holds a statistic of each micro-batch."""
    saved_world = trainer_state.get("world_size")
    if getattr(cfg, "task", None) == "online":
        if isinstance(saved_world, int) and saved_world != world:
            _check_online_processes(saved_world, cfg, world, path, note)
        return
    batch = saved.get("per_device_train_batch_size") if isinstance(saved, dict) else None
    if not isinstance(saved_world, int) or saved_world == world or not isinstance(batch, int):
        return
    accumulation = getattr(cfg, "gradient_accumulation_steps", 1)
    saved_accumulation = saved.get("gradient_accumulation_steps", accumulation)
    if not isinstance(saved_accumulation, int):
        saved_accumulation = accumulation
    before, now = batch * saved_world, cfg.per_device_train_batch_size * world
    if _over_processes_parts(cfg):
        _refuse_other_processes(batch, saved_world, saved_accumulation, cfg, world, path, note)
        return
    if couples_micro_batches(cfg):
        _check_micro_batches(batch, saved_world, saved_accumulation, cfg, world, path, note)
        return
    if before == now and saved_accumulation == accumulation:
        return
    what = (f"resume_from_checkpoint: {path} was trained with a global batch of {before} (per_device_train_batch_size "
            f"{batch} x {saved_world} processes) and gradient_accumulation_steps {saved_accumulation}, "
            f"{before * saved_accumulation} examples an optimizer step; this run has {now} "
            f"({cfg.per_device_train_batch_size} x {world}) and {accumulation}, {now * accumulation} (processes "
            f"{saved_world} -> {world}, per_device_train_batch_size {batch} -> {cfg.per_device_train_batch_size}, "
            f"gradient_accumulation_steps {saved_accumulation} -> {accumulation}), so every step's batch and the data "
            "order from here on would differ.")
    keep = (f"per_device_train_batch_size: {before // world}" if before % world == 0 else
            f"a per_device_train_batch_size x processes of {before}")
    refuse_unless_allowed(
        cfg, f"{what} Keep the run with {keep} and gradient_accumulation_steps: {saved_accumulation} on {world} "
        f"process{'es' if world > 1 else ''}, launch {saved_world} processes with per_device_train_batch_size: "
        f"{batch} and gradient_accumulation_steps: {saved_accumulation}, or set allow_config_change: true to "
        "continue with the new batch anyway.", f"preflab: note: {what} Continuing (allow_config_change: true).", note)


def _check_online_processes(saved_world: int, cfg, world: int, path, note) -> None:
    """check_global_batch for task: online on another number of processes: OnlineRun.micro_batches deals a step's
    examples over processes x micro-batches (and top_entropy_quantile's cut gathers a micro-batch over processes),
    so an objective part that reads each micro-batch online (base.micro_batch_statistic_parts online: GRPO's bnpo
    normaliser, its entropy bonus and top_entropy_quantile, as TRL's) trains another objective from the next step on.
    Refused unless allow_config_change (then a note); the default GRPO loss types, RLOO and plain online DPO split
    over micro-batches online and resume on any number of processes."""
    parts = _statistic_parts(cfg, online=True)
    if not parts:
        return
    what = (f"resume_from_checkpoint: {path} was trained on {saved_world} process{'es' if saved_world > 1 else ''} "
            f"and this run has {world}. The online objective ({', '.join(parts)}) holds a statistic of each "
            "micro-batch (as GRPO's bnpo normaliser, the micro-batch's completion tokens; its entropy bonus "
            "(entropy_coef, use_adaptive_entropy) or top_entropy_quantile < 1, the micro-batch's token entropies, as "
            "TRL's), and a step's micro-batches are dealt over the processes, so another number of processes "
            "trains another objective from the next step on.")
    refuse_unless_allowed(
        cfg, f"{what} Launch {saved_world} process{'es' if saved_world > 1 else ''} to continue this run, or set "
        "allow_config_change: true to continue on this number anyway (a loss type that splits over micro-batches, "
        "such as GRPO's default dapo, with entropy_coef: 0 and top_entropy_quantile: 1, resumes on any number).",
        f"preflab: note: {what} Continuing (allow_config_change: true).", note)


def _over_processes_parts(cfg) -> list[str]:
    """cfg's offline objective parts whose micro-batch statistic is taken over the processes (base.
    statistic_over_processes_parts: KTO's reference point); [] for the other tasks and a config whose objective does
    not build (the run itself reports that error)."""
    if getattr(cfg, "task", "dpo") != "dpo" or not hasattr(cfg, "objective"):
        return []
    from preflab.errors import PreflabError
    from preflab.objectives.base import statistic_over_processes_parts

    try:
        return statistic_over_processes_parts(cfg.objective())
    except PreflabError:
        return []


def _refuse_other_processes(batch: int, saved_world: int, saved_accumulation: int, cfg, world: int, path,
                            note) -> None:
    """check_global_batch for an objective whose statistic is taken over the processes (KTO's z0: the mean of every
    process's micro-batch KL estimate, as TRL gathers it, over KL pairs formed inside each process's micro-batch):
    no split on another number of processes computes the same loss (1 x P b rows forms other KL pairs, 1 x b rows x
    P micro-batches takes another mean), so a resume on another number of processes is refused unless
    allow_config_change (then a note). Before, a 2-process KTO checkpoint resumed on 1 process x b x accumulation 2
    as the same run, which it was while z0 was each process's own mean."""
    what = (f"resume_from_checkpoint: {path} was trained on {saved_world} process{'es' if saved_world > 1 else ''} "
            f"and this run has {world}. The objective ({', '.join(_over_processes_parts(cfg))}) takes its reference "
            "point over the processes (the mean of every process's micro-batch KL estimate, as TRL's KTOTrainer "
            "gathers it) and forms its KL pairs inside each process's micro-batch, so no split on another number "
            "of processes computes the same loss from here on.")
    refuse_unless_allowed(
        cfg, f"{what} Launch {saved_world} process{'es' if saved_world > 1 else ''} with "
        f"per_device_train_batch_size: {batch} and gradient_accumulation_steps: {saved_accumulation} to continue "
        "this run, or set allow_config_change: true to continue on this number anyway.",
        f"preflab: note: {what} Continuing (allow_config_change: true).", note)


def _check_micro_batches(batch: int, saved_world: int, saved_accumulation: int, cfg, world: int, path,
                         note) -> None:
    """check_global_batch for an objective with a statistic of each micro-batch (couples_micro_batches): 2
    processes x b rows equal 1 process x b rows x 2 accumulation micro-batches, not 1 x 2b, so the run a checkpoint
    continues on another number of processes keeps per_device_train_batch_size and processes x
    gradient_accumulation_steps (the micro-batches of an optimizer step). Before, only the global batch was kept: a
    KTO checkpoint of 2 x 2 rows resumed on 1 x 4 rows trained on with another reference point, told only that the
    number of processes had changed, and 1 x 2 x accumulation 2, the same run, was refused."""
    accumulation = cfg.gradient_accumulation_steps
    micro, now = saved_world * saved_accumulation, world * accumulation
    if batch == cfg.per_device_train_batch_size and micro == now:
        return
    what = (f"resume_from_checkpoint: {path} was trained with micro-batches of {batch} rows "
            f"(per_device_train_batch_size), {micro} an optimizer step ({saved_world} processes x "
            f"gradient_accumulation_steps {saved_accumulation}); this run has {cfg.per_device_train_batch_size} rows "
            f"and {now} ({world} x {accumulation}). The objective ({', '.join(_statistic_parts(cfg))}) holds a "
            "statistic of each micro-batch (as KTO's reference point, a token mean of the micro-batch or AOT's sorted "
            "margins do), so the same run on another number of "
            "processes keeps the micro-batch and processes x gradient_accumulation_steps; another split trains "
            "another objective from here on.")
    if micro % world == 0:
        here = (f"Keep the run with per_device_train_batch_size: {batch} and gradient_accumulation_steps: "
                f"{micro // world} on {world} process{'es' if world > 1 else ''}, launch")
    else:
        here = (f"{micro} micro-batches do not split over {world} processes: launch a number of processes that "
                f"divides {micro}, or")
    refuse_unless_allowed(
        cfg, f"{what} {here} {saved_world} processes with per_device_train_batch_size: {batch} and "
        f"gradient_accumulation_steps: {saved_accumulation}, or set allow_config_change: true to continue with the "
        "new split anyway.", f"preflab: note: {what} Continuing (allow_config_change: true).", note)


def check_saved_config(trainer_state: dict, cfg, checkpoint, world: int, note=print) -> None:
    """The checkpoint's saved config (trainer_state["config"]) against this run's on `world` processes:
    check_global_batch first (on another number of processes its message names the processes with the per-device
    batch and accumulation; check_resume_config's would name gradient_accumulation_steps alone), then
    check_resume_config on the saved config as this world would spell it (saved_config_on_this_world)."""
    saved = trainer_state.get("config")
    check_global_batch(saved, trainer_state, cfg, world, checkpoint, note=note)
    launch = trainer_state.get("launch") if isinstance(trainer_state.get("launch"), dict) else None
    check_resume_config(saved_config_on_this_world(saved, trainer_state, cfg, world), cfg, checkpoint, note=note,
                        launch=launch, positions=trainer_state.get("model_positions"))
