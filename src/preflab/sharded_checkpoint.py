"""Sharded checkpoints under FSDP2: every rank writes its own shards through torch.distributed.checkpoint (DCP).

checkpoint-<step>/ (sharded) holds
    model/            the trainable parameters (get_state_dict with ignore_frozen_params: LoRA saves only adapters),
                      written by all ranks with DCP's HuggingFaceStorageWriter: safetensors files whose headers
                      carry each shard's offsets in the full tensor (DCP's default FileSystemWriter would pickle its
                      metadata; this one writes none)
    optimizer/        the optimizer state tensors, keyed "<parameter name>.<state key>" (exp_avg, exp_avg_sq, step)
    optimizer.json    param_groups (hyper-parameters and parameter names) and any non-tensor state
    rng.safetensors, rng.json, trainer_state.json, COMPLETE   as in preflab.checkpoint (the main rank's RNG)
    rng-rank<r>.safetensors / .json   every rank's own RNG states (dropout draws differ between ranks): restored
                      rank by rank on the same world size; on another world size every rank takes the main's
The folder is written under .tmp-checkpoint-<step>-sharded (every rank writes into it), the main rank then writes
the rest, fsyncs, writes COMPLETE (every file's size and sha256, subfolders included) and renames it into place,
exactly as preflab.checkpoint does for one process.

Resharding: DCP reads a saved shard layout into whatever layout the loading run has (each rank reads the byte
ranges of its own shard), so a checkpoint written by FSDP2 on N ranks resumes under FSDP2 on M ranks, or in one
plain process (torch.distributed not initialised: DCP loads in that single process). A checkpoint written
without sharding (model.safetensors holding full tensors) resumes only without sharding (see preflab.loops.driver).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError

from preflab.checkpoint import (WEIGHT_DECAY_GROUPS, _write_json, apply_save_total_limit, commit_checkpoint,
                                restore_rng, what_is_kept, whole_file_reads, widen_scheduler_state, write_failure,
                                write_rng, write_training_state)
from preflab.errors import ConfigError, PreflabError, WriteFailed
from preflab.rank_agreement import RankFailure, ranks_agree

MODEL_DIR, OPTIMIZER_DIR = "model", "optimizer"


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether checkpoint `path` was written by save_sharded_checkpoint (a model/ folder, not model.safetensors)."""
    return (Path(path) / MODEL_DIR).is_dir()


TORCH_FOR_SHARDED = "2.9"  # torch.distributed.checkpoint.HuggingFaceStorageWriter(save_distributed=...) is 2.9's


def check_sharded_storage() -> None:
    """Refuse sharded checkpoints on a torch whose distributed checkpointing cannot write them: every rank writes
    its own safetensors shards through HuggingFaceStorageWriter(save_distributed=True), which torch 2.9 added
    (torch 2.8 has the writer without it; torch 2.7 and older have none). Called before the first step."""
    import inspect

    try:
        from torch.distributed.checkpoint import HuggingFaceStorageWriter
    except ImportError:
        writer_args = ()
    else:
        writer_args = tuple(inspect.signature(HuggingFaceStorageWriter).parameters)
    if "save_distributed" not in writer_args:
        raise ConfigError(
            f"sharded checkpoints under FSDP2 (save_steps / resume_from_checkpoint) need torch>={TORCH_FOR_SHARDED} "
            f"(torch.distributed.checkpoint.HuggingFaceStorageWriter with save_distributed); this is torch "
            f"{torch.__version__}. Upgrade torch (pip install 'torch>={TORCH_FOR_SHARDED}'), or set save_steps: 0 "
            "and no resume_from_checkpoint (the final model is still gathered and saved).")


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def _options(loading: bool = False):
    """Trainable parameters only. Loading: the frozen ones (a LoRA base) stay as loaded (strict=False); every
    trainable one is read, since DCP refuses a requested key the checkpoint lacks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=not loading)


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the real one


def _split_optimizer(osd: dict) -> tuple[dict, dict]:
    """(tensors keyed "<fqn>.<key>", the JSON rest: param_groups and non-tensor state values)."""
    tensors, meta = {}, {"param_groups": osd["param_groups"], "state": {}}
    for fqn, state in osd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{fqn}.{key}"] = value
            else:
                meta["state"].setdefault(fqn, {})[key] = value
    return tensors, meta


def save_sharded_checkpoint(output_dir: str | Path, step: int, model, optimizer, scheduler, state: dict,
                            is_main: bool, save_total_limit: int | None = None) -> Path:
    """Write checkpoint-<step> from every rank (collective: all ranks call it with the same arguments); returns
    its path. model: the module whose parameters the optimizer updates (FSDP2-sharded or plain)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import get_state_dict

    def write_shards(tmp: Path) -> None:
        model_sd, optim_sd = get_state_dict(model, _inner(optimizer), options=_options())
        opt_tensors, opt_meta = _split_optimizer(optim_sd)
        dcp.save(model_sd, storage_writer=HuggingFaceStorageWriter(str(tmp / MODEL_DIR), save_distributed=True))
        dcp.save(opt_tensors, storage_writer=HuggingFaceStorageWriter(str(tmp / OPTIMIZER_DIR),
                                                                      save_distributed=True))
        if is_main:
            _write_json(tmp / "optimizer.json", {**opt_meta, WEIGHT_DECAY_GROUPS: True})

    return save_rank_checkpoint(output_dir, step, write_shards, scheduler, {**state, "checkpoint_format": "sharded"},
                                is_main, save_total_limit)


def save_rank_checkpoint(output_dir: str | Path, step: int, write_shards, scheduler, state: dict, is_main: bool,
                         save_total_limit: int | None = None) -> Path:
    """The collective save every per-rank format shares (FSDP2 here, DeepSpeed in preflab.deepspeed_checkpoint):
    the main rank makes .tmp-checkpoint-<step>-<state's checkpoint_format>, every rank runs write_shards(tmp) and
    writes its own RNG (rng-rank<r>), then the main rank writes its RNG and trainer_state.json (state, world_size)
    and commits: every file fsynced, COMPLETE with sizes and sha256, renamed into place (preflab.checkpoint).
    A failure on any rank leaves earlier checkpoints untouched. The ranks meet twice, after the main makes the
    folder and after every rank wrote its part, each time through preflab.rank_agreement.ranks_agree (not a
    barrier): a rank whose part failed (a full disk) tells the others, and every rank raises the same PreflabError
    naming the failed ranks and their errors, instead of the others waiting at a barrier until the launcher kills
    them."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}-{state.get('checkpoint_format', 'sharded')}"
    failed = f"could not write sharded checkpoint {final}"
    try:
        with ranks_agree(failed):  # the folder exists before any rank writes into it
            if is_main:
                output_dir.mkdir(parents=True, exist_ok=True)
                if tmp.exists():
                    shutil.rmtree(tmp)
                tmp.mkdir()
        with ranks_agree(failed):  # every rank's part is written before the main commits
            write_shards(tmp)
            rank, world = _rank_world()
            write_rng(tmp, f"rng-rank{rank}")
        if is_main:
            write_training_state(tmp, step, scheduler, {**state, "world_size": world})
            commit_checkpoint(tmp, final, step)
    except RankFailure as err:  # several ranks: a failure on any of them, said alike on every rank
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        failure = PreflabError(f"{err}. " + what_is_kept(
            output_dir, True, " (every rank writes into it: it must be one shared folder)"))
        failure.write_failed = err.write_failed  # the exit status of a failed write (preflab.errors.exit_status)
        raise failure from err
    except PreflabError:  # write_shards refused what it was given
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (OSError, RuntimeError, SafetensorError) as err:  # DCP reports a failed write on any rank as a
        # CheckpointException; safetensors (a DeepSpeed partition, the RNG files) a full disk as a SafetensorError
        failure = write_failure(err) if isinstance(err, SafetensorError) else err
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if failure is None:  # not a failed write: safetensors refused what it was given
            raise
        raise WriteFailed(f"{failed}: {failure}. " + what_is_kept(
            output_dir, True, " (every rank writes into it: it must be one shared folder)")) from err
    if is_main:
        apply_save_total_limit(output_dir, final, state.get("timeline"), save_total_limit,
                               state.get("best_model_checkpoint"))
    return final


def load_sharded_checkpoint(path: str | Path, model, optimizer, scheduler) -> dict:
    """Restore the model's trainable parameters, the optimizer, the scheduler and the RNG from a sharded
    checkpoint into this run's layout, whatever the world size it was written with (collective under FSDP2);
    returns trainer_state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = Path(path)
    inner = _inner(optimizer)
    model_sd, opt_tensors, groups = _destination(model, optimizer)
    try:
        dcp.load(model_sd, storage_reader=HuggingFaceStorageReader(str(path / MODEL_DIR)))
        dcp.load(opt_tensors, storage_reader=HuggingFaceStorageReader(str(path / OPTIMIZER_DIR)))
    except (RuntimeError, KeyError, ValueError) as err:
        raise PreflabError(
            f"checkpoint {path}: its sharded weights or optimizer state do not fit this run's model and optimizer "
            f"({' '.join(str(err).split())[:400]}); resume with the model, use_peft/LoRA settings and objective it "
            "was written with.") from err
    meta = json.loads((path / "optimizer.json").read_text())
    state: dict = {fqn: dict(values) for fqn, values in meta["state"].items()}
    for key, value in opt_tensors.items():
        fqn, _, name = key.rpartition(".")
        state.setdefault(fqn, {})[name] = value
    param_groups = regroup_named(path, meta["param_groups"], groups, optimizer, WEIGHT_DECAY_GROUPS not in meta)
    set_state_dict(model, inner, model_state_dict=model_sd,
                   optim_state_dict={"state": state, "param_groups": param_groups},
                   options=_options(loading=True))
    return load_rank_training_state(path, scheduler, len(meta["param_groups"]), len(param_groups))


def regroup_named(path, saved: list[dict], current: list[dict], optimizer, legacy: bool) -> list[dict]:
    """The saved param_groups (parameters named by fully qualified names) in this run's layout `current`
    (`optimizer`'s groups, by fqn): unchanged unless `legacy`; the one group of a preflab before the weight-decay
    groups becomes the groups this run builds (preflab.loops.optimizer.weight_decay_groups), with the saved settings
    and weight_decay 0.0 on the group that is not the weight-decay one, as preflab.checkpoint.regroup_state does
    (the state, keyed by name, needs no move; a note says so when a parameter stops decaying)."""
    if not legacy:
        return saved
    decays = getattr(_inner(optimizer), "preflab_group_decays", None)
    if len(saved) != 1 or decays is None or len(decays) != len(current) or sorted(saved[0]["params"]) != sorted(
            name for group in current for name in group["params"]):
        raise ConfigError(
            f"resume_from_checkpoint: {path} holds optimizer state of {len(saved)} parameter group(s), written by an "
            f"earlier preflab, that does not map onto this run's {len(current)} group(s). Resume with the model, "
            "use_peft/LoRA settings and objective it was written with, or start a new run in another output_dir.")
    decay = saved[0]["weight_decay"]
    kept = sum(len(group["params"]) for group, decayed in zip(current, decays) if not decayed)
    if kept and _rank_world()[0] == 0:
        print(f"preflab: note: {path} was written by a preflab that put every trainable parameter in one "
              "weight-decay group; its optimizer state is read into the groups transformers' Trainer builds "
              f"({kept} biases and norm weights now at weight_decay 0.0), so the run continues with the new "
              "grouping.", flush=True)
    return [{**saved[0], "weight_decay": decay if decayed else 0.0, "params": list(group["params"])}
            for group, decayed in zip(current, decays, strict=True)]


def _destination(model, optimizer) -> tuple[dict, dict, list]:
    """This run's layout DCP loads into: (the model's trainable state dict, the optimizer's state tensors keyed
    "<fqn>.<key>", its param_groups naming the parameters by fqn). Getting it also gives a fresh optimizer its
    state tensors."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, _inner(optimizer), options=_options())
    return model_sd, _split_optimizer(optim_sd)[0], optim_sd["param_groups"]


def rng_to_restore(path: Path, trainer_state: dict) -> str:
    """The RNG files (<name>.safetensors / .json) this rank restores from a per-rank checkpoint: its own
    rng-rank<r> on the world size the checkpoint was written on, the main rank's rng otherwise."""
    rank, world = _rank_world()
    own = f"rng-rank{rank}"
    same_world = trainer_state.get("world_size") == world and (Path(path) / f"{own}.safetensors").is_file()
    return own if same_world else "rng"


def load_rank_training_state(path: Path, scheduler, saved_groups: int = 1, groups: int = 1) -> dict:
    """Restore the scheduler and this rank's RNG (rng_to_restore) from a per-rank checkpoint; returns
    trainer_state.json. A scheduler saved over saved_groups param groups is widened to `groups`
    (preflab.checkpoint.widen_scheduler_state)."""
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    if scheduler is not None and trainer_state.get("scheduler"):
        scheduler.load_state_dict(widen_scheduler_state(trainer_state["scheduler"], saved_groups, groups))
    restore_rng(path, rng_to_restore(path, trainer_state))
    return trainer_state


def rank_training_state_reads(path: Path) -> dict[str, int]:
    """{file: bytes} that load_rank_training_state reads on this rank: trainer_state.json and its RNG files."""
    path = Path(path)
    rng = rng_to_restore(path, json.loads((path / "trainer_state.json").read_text()))
    return whole_file_reads(path, ["trainer_state.json", f"{rng}.safetensors", f"{rng}.json"])


def sharded_reads(path: str | Path, model, optimizer) -> dict[str, int]:
    """{file of checkpoint `path`: bytes this rank reads from it} when load_sharded_checkpoint loads it into this
    run's model and optimizer: the safetensors files of model/ and optimizer/ that DCP's load plan for this rank
    touches (its own shards on the same world size, plus the files holding the small replicated tensors it is
    assigned, e.g. optimizer steps; other shards' byte ranges when resharding), optimizer.json, trainer_state.json
    and this rank's RNG files. The plan is made as dcp.load makes it: DefaultLoadPlanner over this run's layout and
    the checkpoint's metadata (the safetensors headers)."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    path = Path(path)
    model_sd, opt_tensors, _ = _destination(model, optimizer)
    rank, _ = _rank_world()
    reads: dict[str, int] = {}
    for folder, state_dict in ((MODEL_DIR, model_sd), (OPTIMIZER_DIR, opt_tensors)):
        reader = HuggingFaceStorageReader(str(path / folder))
        metadata = reader.read_metadata()
        planner = DefaultLoadPlanner()
        planner.set_up_planner(state_dict, metadata, rank == 0)
        reader.set_up_storage_reader(metadata, rank == 0)
        for item in reader.prepare_local_plan(planner.create_local_plan()).items:
            name = f"{folder}/{Path(metadata.storage_data[item.storage_index].relative_path).name}"
            dtype = metadata.state_dict_metadata[item.storage_index.fqn].properties.dtype
            reads[name] = reads.get(name, 0) + math.prod(item.lengths) * dtype.itemsize
    return {**reads, **whole_file_reads(path, ["optimizer.json"]), **rank_training_state_reads(path)}
