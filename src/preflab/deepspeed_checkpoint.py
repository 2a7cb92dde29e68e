"""Checkpoints under DeepSpeed ZeRO (stages 1-3): every rank writes its own ZeRO partition as safetensors + JSON.

DeepSpeed's engine.save_checkpoint writes torch.save pickles; preflab never calls it. Each rank instead takes its
ZeRO optimizer's state_dict() (what DeepSpeed's save_checkpoint pickles into zero_pp_rank_<r>_..._optim_states.pt),
splits it into tensors and plain values, and on resume hands it back to the optimizer's own load_state_dict, as
engine.load_checkpoint does.

checkpoint-<step>/ (DeepSpeed) holds
    zero/rank<r>.safetensors   rank r's partition: the fp32 master weights of its slice of the trainable parameters
                               ("single_partition_of_fp32_groups.<i>" under ZeRO-1/2, "fp32_flat_groups.<i>" under
                               ZeRO-3) and the base optimizer's state of that slice ("base_optimizer_state.<i>.<key>"
                               / "optimizer_state_dict.<i>.<key>": AdamW's exp_avg, exp_avg_sq and step)
    zero/rank<r>.json          the rest of that state_dict: the base optimizer's param_groups (lr, betas, eps, ...),
                               the loss scaler's values (cur_scale; under fp16 also cur_iter, last_overflow_iter,
                               cur_hysteresis, ...), dynamic_loss_scale, overflow, clip_grad, zero_stage, partition
                               counts and paddings, ds_version; and the engine's counters (global_steps,
                               global_samples, micro_steps, skipped_steps)
    rng.*, rng-rank<r>.*, trainer_state.json (checkpoint_format "deepspeed", zero_stage, world_size), COMPLETE
                               written by preflab.sharded_checkpoint.save_rank_checkpoint (atomic, sha256-sealed)

The module's weights are not stored a second time: DeepSpeed makes them from the fp32 masters after every step (the
compute-dtype copy is the master cast, then gathered), and resume does the same (ZeRO-1/2: update_lp_params;
ZeRO-3: the optimizer's load_state_dict refills the partitions from the masters). Frozen parameters (a LoRA base)
are not in the optimizer and come from the model as loaded, as in every preflab checkpoint. DeepSpeed's
param_slice_mappings (parameter name -> offset in the flat partition) is not written: the engine rebuilds it.

Not possible, refused (check_deepspeed_resume, check_checkpointable): resuming on another ZeRO stage or another
number of processes (the partition layout depends on both; DeepSpeed converts layouts only through its universal
checkpoints, made from the pickled ones), a DeepSpeed checkpoint without DeepSpeed and any other checkpoint under
DeepSpeed, ZeRO stage 0, NVMe offload (the optimizer state lives in swap files), ZeRO's elastic_checkpoint (its state
spans every rank's file) and mixture-of-experts engines.
"""
from __future__ import annotations

import enum
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from preflab.checkpoint import _write_json, join_optimizer_state, split_optimizer_state, whole_file_reads
from preflab.errors import ConfigError, PreflabError
from preflab.sharded_checkpoint import load_rank_training_state, rank_training_state_reads, save_rank_checkpoint

FORMAT = "deepspeed"
ZERO_DIR = "zero"
ENGINE_COUNTERS = ("global_steps", "global_samples", "micro_steps", "skipped_steps")
LOSS_SCALER = "loss_scaler"
REBUILT_BY_THE_ENGINE = ("param_slice_mappings",)


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    """Whether checkpoint `path` was written by save_deepspeed_checkpoint (a zero/ folder)."""
    return (Path(path) / ZERO_DIR).is_dir()


def check_checkpointable(engine) -> None:
    """ConfigError naming the setting when preflab cannot write or read this engine's state exactly."""
    stage = engine.zero_optimization_stage()
    if stage not in (1, 2, 3):
        raise ConfigError(
            f"save_steps / resume_from_checkpoint under DeepSpeed ZeRO stage {stage}: preflab checkpoints DeepSpeed's "
            "ZeRO optimizers (zero_stage 1, 2 or 3, as examples/accelerate/zero2.yaml / zero3.yaml); set zero_stage, "
            "or save_steps: 0 and no resume_from_checkpoint.")
    for what, offload in (("offload_optimizer_device", engine.zero_offload_optimizer()),
                          ("offload_param_device", engine.zero_offload_param())):
        if offload is not None and str(getattr(offload, "device", "")).rsplit(".", 1)[-1].lower() == "nvme":
            raise ConfigError(
                f"save_steps / resume_from_checkpoint with DeepSpeed {what}: nvme: that state lives in DeepSpeed's "
                "swap files, which preflab's checkpoints do not hold. Use offload to cpu or none, or save_steps: 0.")
    if engine.zero_elastic_checkpoint():
        raise ConfigError(
            "save_steps / resume_from_checkpoint with DeepSpeed's zero_optimization.elastic_checkpoint: true: its "
            "optimizer state spans every rank's file; preflab writes each rank's own partition. Set it to false.")
    if getattr(engine, "has_moe_layers", False):
        raise ConfigError("save_steps / resume_from_checkpoint under DeepSpeed with mixture-of-experts layers: "
                          "preflab does not checkpoint DeepSpeed's expert-parallel state; set save_steps: 0.")


def check_deepspeed_resume(trainer_state: dict, path, engine: str, stage: int | None, world: int) -> None:
    """Refuse a resume DeepSpeed's partition layout cannot give exactly: a DeepSpeed checkpoint outside DeepSpeed or
    on another ZeRO stage / number of processes, and another kind of checkpoint under DeepSpeed."""
    written = trainer_state.get("checkpoint_format") == FORMAT
    saved_stage, saved_world = trainer_state.get("zero_stage"), trainer_state.get("world_size")
    if written and engine != "DEEPSPEED":
        raise ConfigError(
            f"resume_from_checkpoint: {path} was written under DeepSpeed ZeRO-{saved_stage} on {saved_world} "
            f"process(es) (each rank's ZeRO partition); this run is not DeepSpeed ({_engine_words(engine)} on "
            f"{world} process(es)). A DeepSpeed checkpoint resumes only under DeepSpeed with the same zero_stage and "
            "number of processes: launch with the accelerate config it was written with, or start again without "
            "resume_from_checkpoint.")
    if engine == "DEEPSPEED" and not written:
        how = _engine_words(trainer_state.get("engine"))
        fmt = trainer_state.get("checkpoint_format", "full tensors")
        raise ConfigError(
            f"resume_from_checkpoint: {path} was written without DeepSpeed ({how} on {saved_world or 'an unrecorded'}"
            f" process(es), {fmt}); under DeepSpeed preflab resumes only checkpoints written under DeepSpeed (ZeRO "
            "partitions). Resume it with the engine it was written with, or start this run again without "
            "resume_from_checkpoint.")
    if written and (saved_stage != stage or saved_world != world):
        raise ConfigError(
            f"resume_from_checkpoint: {path} was written under DeepSpeed ZeRO-{saved_stage} on {saved_world} "
            f"process(es); this run is ZeRO-{stage} on {world}. ZeRO's partitions are laid out by stage and number "
            "of processes, and DeepSpeed changes that layout only through its universal checkpoints (made from its "
            "pickled ones), which preflab does not write. Resume with the same zero_stage and --num_processes, or "
            "start again without resume_from_checkpoint.")


def _engine_words(engine: str | None) -> str:
    """accelerate's distributed_type as a reader would say it."""
    return {None: "one process or DDP", "NO": "one process", "MULTI_CPU": "DDP on CPU",
            "MULTI_GPU": "DDP"}.get(engine, engine)


def _plain(value) -> bool:
    """JSON holds it as it is (tuples become lists)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _refuse(key: str, value) -> PreflabError:
    return PreflabError(
        f"DeepSpeed's ZeRO optimizer state holds {key!r} of type {type(value).__name__}, which preflab cannot write "
        "as safetensors or JSON (a DeepSpeed version or setting preflab does not know). Set save_steps: 0 and no "
        "resume_from_checkpoint under DeepSpeed, or use examples/accelerate/fsdp2.yaml.")


def split_zero_state(sd: dict) -> tuple[dict, dict]:
    """A ZeRO optimizer's state_dict() as (tensors, the JSON rest); join_zero_state inverts it. The base optimizer's
    state goes through preflab.checkpoint.split_optimizer_state, tensor lists (the fp32 masters) by position, the loss
    scaler by its attributes; anything else that is neither plain nor known is refused, never dropped."""
    tensors, meta = {}, {}
    for key, value in sd.items():
        if key in REBUILT_BY_THE_ENGINE:
            continue
        if key == LOSS_SCALER:
            values = {}
            for name, attr in vars(value).items():
                if isinstance(attr, torch.dtype):  # the scaler's dtype: the run's configuration, set up again
                    continue
                if torch.is_tensor(attr):
                    tensors[f"{key}.{name}"] = attr
                elif _plain(attr):
                    values[name] = attr
                else:
                    raise _refuse(f"{key}.{name}", attr)
            meta[key] = {"loss_scaler": values, "class": type(value).__name__}
        elif isinstance(value, dict) and {"state", "param_groups"} <= set(value):
            part, rest = split_optimizer_state(value)
            tensors.update({f"{key}.{name}": t for name, t in part.items()})
            meta[key] = {"optimizer_state": rest}
        elif isinstance(value, (list, tuple)) and value and all(torch.is_tensor(v) for v in value):
            tensors.update({f"{key}.{i}": t for i, t in enumerate(value)})
            meta[key] = {"tensors": len(value)}
        elif isinstance(value, enum.Enum) and _plain(value.value):
            meta[key] = {"value": value.value}
        elif _plain(value):
            meta[key] = {"value": value}
        else:
            raise _refuse(key, value)
    # copies: the masters are views into DeepSpeed's flat buffers, which safetensors will not write as they are
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}, meta


def join_zero_state(tensors: dict, meta: dict, loss_scaler) -> dict:
    """The state_dict split_zero_state split, with `loss_scaler` (the running optimizer's own) set to the saved
    values in place."""
    sd = {}
    for key, entry in meta.items():
        prefix = f"{key}."
        if "loss_scaler" in entry:
            if type(loss_scaler).__name__ != entry["class"]:
                raise PreflabError(
                    f"the checkpoint's DeepSpeed loss scaler is a {entry['class']}, this run's a "
                    f"{type(loss_scaler).__name__} (fp16 on one side only?); resume with the precision it was "
                    "written with.")
            for name, value in entry["loss_scaler"].items():
                setattr(loss_scaler, name, value)
            for name, value in tensors.items():
                if name.startswith(prefix):
                    current = getattr(loss_scaler, name[len(prefix):])
                    setattr(loss_scaler, name[len(prefix):], value.to(current.device))
            sd[key] = loss_scaler
        elif "optimizer_state" in entry:
            part = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
            sd[key] = join_optimizer_state(part, entry["optimizer_state"])
        elif "tensors" in entry:
            sd[key] = [tensors[f"{prefix}{i}"] for i in range(entry["tensors"])]
        else:
            sd[key] = entry["value"]
    return sd


def _rank_file(path: Path, rank: int) -> Path:
    return Path(path) / ZERO_DIR / f"rank{rank}"


def deepspeed_reads(path: str | Path, rank: int) -> dict[str, int]:
    """{file of checkpoint `path`: bytes} that load_deepspeed_checkpoint reads on rank `rank`: its own ZeRO
    partition (zero/rank<r>.safetensors and .json), trainer_state.json and its RNG files."""
    path = Path(path)
    own = [f"{ZERO_DIR}/rank{rank}.safetensors", f"{ZERO_DIR}/rank{rank}.json"]
    return {**whole_file_reads(path, own), **rank_training_state_reads(path)}


def save_deepspeed_checkpoint(output_dir: str | Path, step: int, engine, scheduler, state: dict, is_main: bool,
                              save_total_limit: int | None = None) -> Path:
    """Write checkpoint-<step> from every rank (collective); returns its path. engine: the DeepSpeedEngine
    (accelerator.deepspeed_engine_wrapped.engine)."""
    check_checkpointable(engine)
    optimizer = engine.optimizer

    def write_shards(tmp: Path) -> None:
        if hasattr(optimizer, "checkpoint_event_prologue"):  # as engine.save_checkpoint: ZeRO-3 partitions all
            optimizer.checkpoint_event_prologue()
        try:
            tensors, meta = split_zero_state(optimizer.state_dict())
        finally:
            if hasattr(optimizer, "checkpoint_event_epilogue"):
                optimizer.checkpoint_event_epilogue()
        (tmp / ZERO_DIR).mkdir(exist_ok=True)
        base = _rank_file(tmp, engine.global_rank)
        save_file(tensors, f"{base}.safetensors")
        _write_json(Path(f"{base}.json"), {"zero": meta, "engine": {k: getattr(engine, k) for k in ENGINE_COUNTERS}})

    import deepspeed

    return save_rank_checkpoint(output_dir, step, write_shards, scheduler,
                                {**state, "checkpoint_format": FORMAT, "zero_stage": engine.zero_optimization_stage(),
                                 "deepspeed_version": deepspeed.__version__},
                                is_main, save_total_limit)


def load_deepspeed_checkpoint(path: str | Path, engine, scheduler) -> dict:
    """Restore this rank's ZeRO partition (fp32 masters, optimizer state, loss scaler), the module's weights made
    from the masters, the engine's counters, the scheduler and this rank's RNG (collective: every rank calls it);
    returns trainer_state.json. The caller has checked stage and world size (check_deepspeed_resume)."""
    from deepspeed import comm

    check_checkpointable(engine)
    path = Path(path)
    optimizer = engine.optimizer
    base = _rank_file(path, engine.global_rank)
    if not Path(f"{base}.safetensors").is_file():
        raise PreflabError(f"checkpoint {path} has no ZeRO partition of rank {engine.global_rank} ({base}"
                           ".safetensors); resume on the number of processes it was written on.")
    saved = json.loads(Path(f"{base}.json").read_text())
    sd = join_zero_state(load_file(f"{base}.safetensors"), saved["zero"], optimizer.loss_scaler)
    group = optimizer.dp_process_group
    per_rank = [None] * comm.get_world_size(group=group)
    per_rank[comm.get_rank(group=group)] = sd  # each rank reads only its own entry (same stage and world size)
    base_optimizer = optimizer.optimizer
    check_group_count(path, sd, base_optimizer)
    # torch's load_state_dict puts new param_group dicts in place; under offload_optimizer_device: cpu accelerate's
    # DeepSpeedCPUAdam was built on the dicts of the AdamW that preflab's scheduler steps, so those dicts (their lr
    # is the schedule) must stay the ones the optimizer reads: kept, and given the loaded values
    groups = list(base_optimizer.param_groups)
    if hasattr(optimizer, "checkpoint_event_prologue"):  # as engine.load_checkpoint
        optimizer.checkpoint_event_prologue()
    try:
        optimizer.load_state_dict(per_rank, load_optimizer_states=True, load_from_fp32_weights=True)
    except (RuntimeError, ValueError, KeyError, IndexError, AssertionError) as err:
        raise PreflabError(
            f"checkpoint {path}: its ZeRO partition does not fit this run's model and optimizer "
            f"({' '.join(str(err).split())[:400]}); resume with the model, use_peft/LoRA settings, objective and "
            "DeepSpeed settings it was written with.") from err
    if hasattr(optimizer, "checkpoint_event_epilogue"):
        optimizer.checkpoint_event_epilogue()
    for kept, loaded in zip(groups, base_optimizer.param_groups):
        kept.update(loaded)
    base_optimizer.param_groups = groups
    if engine.zero_optimization_stage() < 3:  # ZeRO-1/2: the module's weights from the restored masters
        optimizer.update_lp_params()
    replay_cpu_adam_steps(base_optimizer)
    for key in ENGINE_COUNTERS:
        setattr(engine, key, saved["engine"][key])
    return load_rank_training_state(path, scheduler)


def check_group_count(path, sd: dict, base_optimizer) -> None:
    """ConfigError when the ZeRO partition `sd` holds the base optimizer's state in another number of param groups
    than this run's optimizer: a checkpoint of a preflab before the weight-decay groups (one group; this run has the
    weights and the biases / norm weights apart, preflab.loops.optimizer.weight_decay_groups). ZeRO flattens each
    group into its own partition, so that state cannot be re-cut into the groups here."""
    saved = next((len(value["param_groups"]) for value in sd.values()
                  if isinstance(value, dict) and "param_groups" in value), None)
    if saved is not None and saved != len(base_optimizer.param_groups):
        raise ConfigError(
            f"resume_from_checkpoint: {path} holds ZeRO optimizer state in {saved} parameter group(s) and this run "
            f"has {len(base_optimizer.param_groups)}: written by a preflab that put every trainable parameter in "
            "one weight-decay group (this preflab keeps biases and norm weights in a group of their own, as "
            "transformers' Trainer does), or for another model or use_peft setting. DeepSpeed flattens each group "
            "into its own partition, so that state cannot be re-cut. Start the run again without "
            "resume_from_checkpoint, or resume with the preflab and settings that wrote it.")


def replay_cpu_adam_steps(base_optimizer) -> None:
    """Rebuild DeepSpeedCPUAdam's kernel state (offload_optimizer_device: cpu) after its state_dict was loaded.

    The C++ kernel keeps beta1^t and beta2^t as running products, multiplied by beta once per step (DeepSpeed's
    csrc/includes/cpu_adam.h, IncrementStep); a fresh kernel asked for step t+1 computes pow(beta, t+1) instead,
    which rounds differently, so the first update after a resume would differ in its last bits (measured, tiny
    GPT-2 on ZeRO-3: the next loss by 1e-7, the final weights by 2e-7). Calling the kernel's own update for steps
    1..t on empty tensors (no element is touched; only IncrementStep runs) gives it the running products of the
    uninterrupted run. No-op for any other optimizer."""
    kernel = getattr(base_optimizer, "ds_opt_adam", None)
    if kernel is None:
        return
    steps = {int(state["step"]) for state in base_optimizer.state.values() if "step" in state}
    if len(steps) > 1:
        raise PreflabError(f"DeepSpeedCPUAdam's partitions are at different steps {sorted(steps)}; preflab cannot "
                           "restore its kernel's state exactly. Resume without offload_optimizer_device: cpu.")
    group = base_optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    empty = torch.empty(0, dtype=torch.float32)
    for step in range(1, (steps.pop() if steps else 0) + 1):
        kernel.adam_update(base_optimizer.opt_id, step, group["lr"], beta1, beta2, group["eps"],
                           group["weight_decay"], group["bias_correction"], empty, empty, empty, empty)
