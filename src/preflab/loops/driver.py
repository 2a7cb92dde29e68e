"""The training loop every offline trainer shares: order, step, log, evaluate, checkpoint, resume, summary.

A subclass says what a step is made of and what to save; the loop itself is written once:

    class MyRun(TrainingRun):
        def micro_batches(self, step) -> list        # this rank's micro-batches (each with row_ids, num_tokens)
        def forward(self, mb) -> ObjectiveOutput     # loss of one micro-batch
        def evaluate(self) -> dict                   # eval_* metrics ({} when there is no eval data)
        def save_model(self)                         # final weights (safetensors) + tokenizer
        def write_card(self, summary)                # README.md beside the weights
    and sets: cfg, accelerator, plan, total_steps, params, extra_params, optimizer, scheduler, sync_module
    (the DDP-wrapped module), checkpoint_module (whose trainable parameters a checkpoint holds), data_report.

Used by preflab.loops.offline.Trainer (policies) and preflab.reward_models.train.RewardRun (reward models).
"""
from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError

from preflab.checkpoint import (MODEL_ONLY_KEPT, clean_interrupted_saves, is_model_only, latest_checkpoint,
                                load_checkpoint, read_marker, refuse_model_only, resume_checkpoint, save_checkpoint,
                                share_run_files, write_failure, write_timeline)
from preflab.data.eval_set import no_eval_set_for_best
from preflab.deepspeed_checkpoint import (check_checkpointable, check_deepspeed_resume, deepspeed_reads,
                                          is_deepspeed_checkpoint, load_deepspeed_checkpoint,
                                          save_deepspeed_checkpoint)
from preflab.errors import ConfigError, DataError, NonFiniteError, PreflabError
from preflab.loops.batches import BatchPlan, order_seed
from preflab.loops.best_model import (BestModel, load_best_weights, remove_all_but_best, saves_best,
                                      writes_checkpoints)
from preflab.loops.callback_state import callback_states, restore_callback_states
from preflab.resume_check import (check_checkpoint_version, check_resume_config, check_resume_data,
                                  checkpoint_identity)
from preflab.resume_verify import plain_reads, verify_rank_reads
from preflab.rundir import claim_output_dir, release_output_dir
from preflab.runlog import (MetricsLog, Progress, distributed_environment, environment, is_main_process,
                            write_summary)
from preflab.sharded_checkpoint import (check_sharded_storage, is_sharded_checkpoint, load_sharded_checkpoint,
                                        save_sharded_checkpoint, sharded_reads)
from preflab.step import optimizer_step


def make_scheduler(optimizer, kind: str, total: int, warmup: int):
    """LambdaLR: linear warmup over `warmup` steps, then linear decay to 0, cosine to 0, or constant."""
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def follow_schedule(scheduler) -> tuple[float, float] | None:
    """Set every param group's learning rate to the schedule's value at the scheduler's step (LambdaLR: base_lr x
    factor(last_epoch), the value its own step() sets). After a resume this is the rate the checkpoint holds, unless
    the schedule's length changed (max_steps / num_train_epochs): the optimizer state then holds the old schedule's
    rate, which the first resumed step would use. Returns (old, new) rate of the first group when they differ."""
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler wraps the LambdaLR
    factors = getattr(inner, "lr_lambdas", None)
    if not factors:
        return None
    groups = inner.optimizer.param_groups
    old = groups[0]["lr"]
    for group, base_lr, factor in zip(groups, inner.base_lrs, factors):
        group["lr"] = base_lr * factor(inner.last_epoch)
    inner._last_lr = [group["lr"] for group in groups]
    return None if groups[0]["lr"] == old else (old, groups[0]["lr"])


def tracker_start_error(names: list[str], err: Exception) -> str:
    """report_to's trackers did not start (wandb without a login or without network, ...): what failed and what
    to do, in one message."""
    text = " ".join(str(err).split())[:400]
    what = f"report_to: {', '.join(names) or 'the trackers'} could not start ({type(err).__name__}: {text})."
    if "wandb" in names:
        what += (" For wandb without network or login, set WANDB_MODE=offline (the run is logged under output_dir/"
                 "wandb; `wandb sync` uploads it later), or run `wandb login`.")
    return what + " Or remove it from report_to (report_to: none); metrics.jsonl holds every logged row either way."


def launched_world_size() -> int:
    """Processes the launcher started (accelerate launch / torchrun set WORLD_SIZE), 1 for a plain run."""
    import os

    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")  # mpirun's ranks (accelerate CPU)


def check_launch_started_processes() -> None:
    """`accelerate launch --num_processes N` (N > 1) without --multi_gpu, a config file or mpirun runs accelerate's
    simple launcher: ONE process, with MASTER_ADDR set for the N asked for but no WORLD_SIZE (on a CPU machine,
    where accelerate does not switch to multi-GPU itself). That run would train one process with 1/N of the global
    batch, so it is refused, saying how to launch N."""
    import os

    env = os.environ
    if ("ACCELERATE_USE_CPU" not in env or "MASTER_ADDR" not in env or "WORLD_SIZE" in env
            or any(name in env for name in MPI_SIZE_VARIABLES)):
        return
    raise ConfigError(
        "accelerate launch started one process: with --num_processes above 1 and neither --multi_gpu nor a config "
        "file (examples/accelerate/ddp.yaml), accelerate runs its single-process launcher, so this run would train "
        "on one process with 1/N of the global batch. Launch N processes with `accelerate launch --multi_gpu "
        "--num_processes N` (a gloo process group on CPU) or `--config_file examples/accelerate/ddp.yaml`; for one "
        "process, drop --num_processes (or unset MASTER_ADDR).")


def _has_accelerator_device() -> bool:
    """A device with a distributed backend (cuda, xpu, ...), as accelerate decides it; False on a CPU machine."""
    try:
        from accelerate.utils.imports import get_distributed_backend, get_torch_accelerator_backend
    except ImportError:  # accelerate < 1.16: any accelerator torch sees (they all have a distributed backend)
        import torch

        accel = getattr(torch, "accelerator", None)
        return bool(accel.is_available()) if accel is not None else torch.cuda.is_available()
    device_type, _ = get_torch_accelerator_backend()
    return device_type is not None and get_distributed_backend(device_type) is not None


def _flag(name: str) -> bool:
    import os

    return os.environ.get(name, "false").lower() in ("true", "1")


def fsdp_version_asked() -> int | None:
    """The FSDP version the accelerate config asks for (`distributed_type: FSDP`, fsdp_version), None without."""
    import os

    if not _flag("ACCELERATE_USE_FSDP"):
        return None
    try:
        return int(os.environ.get("FSDP_VERSION", "1"))
    except ValueError:
        return 1


def _check_fsdp(on_cpu: bool, launched: int = 1, use_cpu: bool = False) -> None:
    """Refuse a distributed engine the launch asks for but that cannot run here: FSDP version 1 on CPU (torch's
    FSDP1 needs an accelerator device; FSDP2 runs on CPU, see enable_fsdp2_on_cpu), DeepSpeed without its package,
    DeepSpeed on the CPU path (use_cpu, or several processes without a device: see enable_deepspeed_on_cpu) in a
    process no launcher started (no LOCAL_RANK: accelerate forms no process group for it)."""
    import importlib.util
    import os

    version = fsdp_version_asked()
    if version is not None and version != 2 and on_cpu:
        raise ConfigError(
            f"the accelerate config asks for FSDP version {version} (`distributed_type: FSDP`, fsdp_version: "
            f"{version}) but this run is on CPU, where FSDP version 1 does not run. Set fsdp_version: 2 (as "
            "examples/accelerate/fsdp2.yaml: torch's fully_shard runs on CPU with gloo), or use "
            "examples/accelerate/ddp.yaml.")
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(
                "the accelerate config asks for DeepSpeed (`distributed_type: DEEPSPEED`) but the deepspeed package "
                "is not installed: pip install deepspeed, or use examples/accelerate/fsdp2.yaml / ddp.yaml.")
        if (use_cpu or (on_cpu and launched > 1)) and "LOCAL_RANK" not in os.environ:
            raise ConfigError(
                "the environment asks for DeepSpeed (ACCELERATE_USE_DEEPSPEED) on CPU (use_cpu: true, accelerate's "
                "--cpu, or WORLD_SIZE > 1 without an accelerator device), but this process "
                "was not started by a launcher (no LOCAL_RANK), so no process group forms for DeepSpeed. Start it "
                "with `accelerate launch --config_file examples/accelerate/zero2.yaml --num_processes N $(which "
                "preflab) train CONFIG.yaml`, or unset ACCELERATE_USE_DEEPSPEED.")


def check_deepspeed_settings(cfg) -> None:
    """DeepSpeed takes the optimizer step inside accelerator.backward (accelerate's DeepSpeedEngineWrapper), with
    its own gradient clipping: one micro-batch per optimizer step (preflab's accumulation would make it step after
    every micro-batch), and the config's gradient_clipping equal to max_grad_norm. Refused before loading."""
    import os

    if not _flag("ACCELERATE_USE_DEEPSPEED"):
        return
    if cfg.gradient_accumulation_steps != 1:
        raise ConfigError(
            f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} under DeepSpeed (`distributed_type: "
            "DEEPSPEED`): DeepSpeed steps the optimizer inside every backward through accelerate, so preflab runs it "
            "with one micro-batch per step. Set gradient_accumulation_steps: 1 and raise "
            "per_device_train_batch_size, or use examples/accelerate/fsdp2.yaml.")
    ds_accumulation = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "auto")
    if ds_accumulation not in ("auto", "1"):
        raise ConfigError(
            f"the accelerate config's deepspeed_config.gradient_accumulation_steps is {ds_accumulation}; preflab runs "
            "DeepSpeed with 1 (set it to 1).")
    clipping = os.environ.get("ACCELERATE_GRADIENT_CLIPPING", "auto")
    if clipping not in ("auto", "none") and float(clipping) != float(cfg.max_grad_norm or 0.0):
        raise ConfigError(
            f"the accelerate config's deepspeed_config.gradient_clipping is {clipping} but max_grad_norm is "
            f"{cfg.max_grad_norm}: DeepSpeed clips with its own setting; make them equal.")


def check_bf16(cfg, on_cuda: bool) -> None:
    """bfloat16 asked (bf16: true, dtype / load_dtype / ref_load_dtype: bfloat16) on a CUDA GPU without bfloat16
    (before Ampere): refused before anything loads, naming the setting. CPUs run bfloat16 (autocast, and FSDP2's
    mixed precision over gloo)."""
    asked = [name for name, on in (("bf16: true", cfg.bf16), ("dtype: bfloat16", cfg.dtype == "bfloat16"),
                                   ("load_dtype: bfloat16", cfg.load_dtype == "bfloat16"),
                                   ("ref_load_dtype: bfloat16", getattr(cfg, "ref_load_dtype", None) == "bfloat16"))
             if on]
    if asked and on_cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"{', '.join(asked)}: this GPU ({torch.cuda.get_device_name()}) does not support bfloat16. Use "
            "dtype: float16 (fp16: true) or float32, or run on a GPU with bfloat16 (Ampere or newer).")


def make_accelerator(cfg, whole_weights: str | None = None):
    """accelerate owns devices, processes and mixed precision; the seed is set here.

    A multi-process launch on a machine without an accelerator device (`accelerate launch --multi_gpu
    --num_processes 2` on CPU) gets a gloo process group: accelerate would otherwise give every process its own
    one-process training into the same output_dir. A launch that still forms no process group is an error.
    whole_weights: why this run kind needs every rank to hold the whole weights (it calls the model outside the
    engine's wrapper); an engine that shards parameters (FSDP2, ZeRO-3) is then refused before anything loads.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    launched = launched_world_size()
    check_launch_started_processes()
    use_cpu = cfg.use_cpu or _flag("ACCELERATE_USE_CPU")  # accelerate's --cpu: its state would take the CPU anyway
    cpu = use_cpu or (launched > 1 and not _has_accelerator_device())
    _check_fsdp(cpu or not _has_accelerator_device(), launched, use_cpu)
    check_bf16(cfg, on_cuda=not cpu and torch.cuda.is_available())
    check_deepspeed_settings(cfg)
    precision = {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.torch_dtype, "no")
    fsdp_on_cpu = cpu and launched > 1 and fsdp_version_asked() == 2
    deepspeed_on_cpu = cpu and _flag("ACCELERATE_USE_DEEPSPEED")
    plugin = ds_cpu_plugin = None
    if fsdp_on_cpu:
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(fsdp_version=2)  # the rest from the config's FSDP_* settings
    if deepspeed_on_cpu and not _deepspeed_state_started():  # a second run in the process reuses the first's
        from accelerate.utils import DeepSpeedPlugin

        deepspeed_accelerator_to_cpu()
        ds_cpu_plugin = DeepSpeedPlugin()  # from the config's ACCELERATE_DEEPSPEED_* settings
    # a process group formed before this run (a recipe's, preflab.recipe_state.start_processes) outlives it
    group_before = torch.distributed.is_available() and torch.distributed.is_initialized()
    accelerator = Accelerator(cpu=cpu, mixed_precision="no" if deepspeed_on_cpu else precision,
                              log_with=None if cfg.report_to in ("none", None, []) else cfg.report_to,
                              project_dir=cfg.output_dir, fsdp_plugin=plugin, deepspeed_plugin=ds_cpu_plugin)
    accelerator.preflab_keeps_process_group = group_before
    if fsdp_on_cpu:
        enable_fsdp2_on_cpu(accelerator, plugin)
    if ds_cpu_plugin is not None:
        enable_deepspeed_on_cpu(accelerator, ds_cpu_plugin, precision)
    ds_plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if ds_plugin is not None:  # accelerate's prepare() needs it without a dataloader (its documented setting)
        ds_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.per_device_train_batch_size
    if launched > 1 and accelerator.num_processes != launched:
        raise ConfigError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}) but they formed no process group "
            f"(accelerate: {accelerator.distributed_type}, {accelerator.num_processes} process); each would train "
            "alone into the same output_dir. Check the accelerate config / launch flags (on CPU: use_cpu: true).")
    check_sharded_checkpoints(cfg, sharding_engine(accelerator))
    if getattr(cfg, "generate_during_eval", False) and is_sharded(accelerator):
        raise ConfigError(
            f"generate_during_eval: preflab generates eval samples on the main process from the unwrapped policy, "
            f"whose weights are sharded under {sharding_engine(accelerator)}; set generate_during_eval: false (or "
            "use examples/accelerate/ddp.yaml).")
    check_whole_weights(cfg, accelerator, whole_weights)
    set_seed(cfg.seed)
    # every rank, before the main process writes anything: the same files read, so a refused resume stops every
    # rank with the same ConfigError (none goes on to wait for the main process in a collective)
    _check_resume_config_early(cfg, accelerator)
    if resume_requested(cfg):
        accelerator.wait_for_everyone()  # every rank has read output_dir before clean_interrupted_saves tidies it
    if accelerator.is_main_process:  # before any model is loaded: refuse a bad output_dir, lock it, tidy it
        claim_output_dir(cfg.output_dir, getattr(cfg, "overwrite_output_dir", False))
        note_earlier_run(cfg)
        clean_interrupted_saves(cfg.output_dir)
    return accelerator


def parameter_sharding(accelerator) -> str | None:
    """The engine that leaves no rank with the whole weights: "FSDP2" / "FSDP" or "DeepSpeed ZeRO-3"; None under
    DDP and ZeRO-1/2 (parameters replicated, only optimizer state or gradients partitioned)."""
    engine = sharding_engine(accelerator)
    if engine.startswith("FSDP"):
        return engine
    stage = deepspeed_stage(accelerator)
    return f"DeepSpeed ZeRO-{stage}" if engine == "DEEPSPEED" and (stage or 0) >= 3 else None


def check_whole_weights(cfg, accelerator, why: str | None) -> None:
    """Refuse an engine that shards parameters for a run kind that needs whole weights on every rank (why: the
    reason, from the run kind), naming the engine and the launches that work."""
    engine = parameter_sharding(accelerator) if why else None
    if engine:
        raise ConfigError(
            f"task: {cfg.task} under {engine}: {why}, and {engine} leaves each rank only a shard of the weights. "
            "Launch it with examples/accelerate/ddp.yaml or zero2.yaml (parameters replicated).")


def enable_fsdp2_on_cpu(accelerator, plugin) -> None:
    """Let accelerate's own FSDP2 path run on a CPU process group (gloo).

    accelerate 1.16 sets distributed_type FSDP only for accelerator device types (AcceleratorState.__init__ checks
    MULTI_GPU, MULTI_XPU, ...); on MULTI_CPU it drops the FSDP plugin and runs plain DDP. torch's FSDP2
    (fully_shard, DTensor) and distributed checkpointing run on CPU with gloo, so after the gloo group is formed
    preflab sets the two fields accelerate would have set on a GPU (state.distributed_type = FSDP,
    state.fsdp_plugin); everything after that is accelerate's code unchanged: prepare() -> fsdp2_prepare_model
    (fully_shard per decoder layer + the root), no_sync -> set_requires_gradient_sync, get_state_dict -> torch's
    full state dict. Only FSDP version 2 (version 1 does not run on CPU: _check_fsdp refuses it)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState does
    if not accelerator.is_fsdp2:
        raise PreflabError("preflab could not switch accelerate to FSDP2 on CPU (accelerate's state did not take "
                           "the FSDP plugin); use examples/accelerate/ddp.yaml on CPU.")


def _deepspeed_state_started() -> bool:
    """accelerate's shared state already runs DeepSpeed (an earlier Accelerator in this process set it up)."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    return AcceleratorState._shared_state.get("distributed_type") == DistributedType.DEEPSPEED


def deepspeed_accelerator_to_cpu() -> None:
    """DeepSpeed picks its own device (deepspeed.accelerator.get_accelerator: DS_ACCELERATOR, else the first it
    detects, cuda on a GPU machine) once per process; on the CPU path it must be its CPU accelerator, or the engine
    would move the model to the GPU that use_cpu asked not to use. Sets DS_ACCELERATOR=cpu before DeepSpeed reads it,
    and refuses when another accelerator was asked for or already chosen."""
    import os

    asked = os.environ.get("DS_ACCELERATOR", "cpu")
    if asked != "cpu":
        raise ConfigError(
            f"DS_ACCELERATOR={asked} but this DeepSpeed run is on CPU (use_cpu: true, or several processes on a "
            "machine without an accelerator device); unset DS_ACCELERATOR or set it to cpu, or remove use_cpu.")
    os.environ["DS_ACCELERATOR"] = "cpu"
    from deepspeed.accelerator import get_accelerator

    chosen = get_accelerator().device_name()
    if chosen != "cpu":
        raise ConfigError(
            f"this DeepSpeed run is on CPU (use_cpu: true) but DeepSpeed already chose its {chosen} accelerator in "
            "this process; start the run with DS_ACCELERATOR=cpu in the environment, or remove use_cpu.")


def enable_deepspeed_on_cpu(accelerator, plugin, precision: str) -> None:
    """Let accelerate's own DeepSpeed path run on a CPU process group (gloo).

    accelerate 1.16 applies DeepSpeed only when not told to use the CPU (AcceleratorState.__init__: `elif
    ACCELERATE_USE_DEEPSPEED and not cpu`), and without cpu on a machine with no accelerator device its PartialState
    finds no backend: DeepSpeed's own init_distributed forms the group but accelerate records distributed_type NO,
    1 process, so every rank would train alone as rank 0 of 1. DeepSpeed itself runs on CPU (its CPU accelerator,
    gloo when oneCCL is not installed). So preflab starts accelerate with cpu=True (the gloo group forms, MULTI_CPU),
    then sets what AcceleratorState sets on a GPU: state.distributed_type = DEEPSPEED, state.deepspeed_plugins (the
    plugin selected, its config's precision from the run config: bf16 / fp16 enabled in the DeepSpeed config, as
    accelerate does; accelerate's own mixed precision stays "no"), and DeepSpeed's comm layer over the existing
    torch group (deepspeed.comm.init_distributed(dist_backend="gloo"): it adopts an initialised group). Everything
    after that is accelerate's code unchanged: prepare() -> deepspeed.initialize, backward -> engine.backward +
    engine.step, get_state_dict -> the engine's gathered weights."""
    import deepspeed.comm
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = accelerator.state
    if not torch.distributed.is_initialized() or torch.distributed.get_backend() != "gloo":
        raise PreflabError("preflab could not start DeepSpeed on CPU: accelerate formed no gloo process group "
                           f"({state.distributed_type}); start the run with accelerate launch, or use "
                           "examples/accelerate/ddp.yaml or fsdp2.yaml on CPU.")
    plugin.set_mixed_precision(precision)
    plugin.select(_from_accelerator_state=True)
    state.deepspeed_plugins = plugin
    state.distributed_type = DistributedType.DEEPSPEED
    PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED  # as AcceleratorState does
    deepspeed.comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    if accelerator.state.deepspeed_plugin is not plugin or deepspeed.comm.get_world_size() != state.num_processes:
        raise PreflabError("preflab could not switch accelerate to DeepSpeed on CPU (accelerate's state did not take "
                           "the DeepSpeed plugin, or DeepSpeed's process group differs from accelerate's); use "
                           "examples/accelerate/ddp.yaml or fsdp2.yaml on CPU.")


def sharding_engine(accelerator) -> str:
    """accelerate's distributed_type name, with FSDP spelt FSDP2 for version 2 (FSDP for version 1)."""
    engine = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    return "FSDP2" if engine == "FSDP" and getattr(accelerator, "is_fsdp2", False) else engine


def resume_requested(cfg) -> bool:
    """resume_from_checkpoint asks for a resume (true / latest / a path); unset, false or "" does not."""
    return cfg.resume_from_checkpoint not in (None, False, "", "false")


def note_earlier_run(cfg) -> None:
    """A fresh start in a folder that holds an earlier run replaces that run's model, metrics.jsonl and
    summary.json: say so (a forgotten output_dir override otherwise loses a finished run without a word). A run
    that did not finish and has checkpoints (a killed or preempted job restarted without resume_from_checkpoint)
    is refused unless overwrite_output_dir: its checkpoints would be replaced one by one."""
    if resume_requested(cfg):
        return
    out = Path(cfg.output_dir)
    if not ((out / "metrics.jsonl").is_file() or (out / "summary.json").is_file()):
        return
    try:
        step = json.loads((out / "summary.json").read_text()).get("global_step")
    except (OSError, ValueError, AttributeError):
        step = None
    latest = latest_checkpoint(out)
    if not isinstance(step, int) and latest is not None and not getattr(cfg, "overwrite_output_dir", False):
        raise ConfigError(
            f"output_dir {cfg.output_dir} holds a run that did not finish, with checkpoints up to {latest.name}; a "
            "fresh start would replace its metrics.jsonl, and each of its checkpoints once this run saves the same "
            "step. Set resume_from_checkpoint: true to continue it, overwrite_output_dir: true to start afresh "
            "anyway, or choose another output_dir.")
    ended = f"it ended at step {step}" if isinstance(step, int) else "it did not finish"
    print(f"preflab: note: output_dir {cfg.output_dir} holds an earlier run ({ended}); this run starts afresh and "
          "replaces its model, metrics.jsonl and summary.json; its checkpoint-* folders stay on the old timeline "
          "until this run saves a checkpoint of the same step, which replaces it. To continue it instead, set "
          "resume_from_checkpoint: true; to keep it, choose another output_dir.", flush=True)


def no_checkpoint_to_resume(output_dir) -> str:
    return (f"resume_from_checkpoint is true but {output_dir} holds no complete checkpoint of its current run "
            "(checkpoints of a run that was later rolled back or restarted are not resumed by `true`; give the "
            "checkpoint's path to resume one of them).")


def _check_resume_config_early(cfg, accelerator) -> None:
    """Refuse a resume whose config changes the run's meaning, or that DeepSpeed's partition layout cannot give
    exactly, before any model is loaded (the full check, with notes and checksums, runs again at resume). Read-only
    and run on every rank: each reads the same checkpoint files and raises the same ConfigError."""
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
        check_deepspeed_resume(saved, path, sharding_engine(accelerator), deepspeed_stage(accelerator),
                               accelerator.num_processes)
        check_resume_config(saved_config_on_this_world(saved.get("config"), saved, cfg, launched_world_size()),
                            cfg, path, note=lambda *a, **k: None)
        check_global_batch(saved.get("config"), saved, cfg, launched_world_size(), path)


def deepspeed_stage(accelerator) -> int | None:
    """The ZeRO stage of a DeepSpeed run (its config's zero_optimization.stage), None without DeepSpeed."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return None
    stage = (plugin.deepspeed_config.get("zero_optimization") or {}).get("stage", plugin.zero_stage)
    return int(stage) if stage is not None else None


SHARDED_ENGINES = ("FSDP", "DEEPSPEED")


def is_sharded(accelerator) -> bool:
    """True when accelerate shards parameters over ranks (FSDP, DeepSpeed): no rank holds the whole model."""
    return str(accelerator.distributed_type).rsplit(".", 1)[-1] in SHARDED_ENGINES


def check_sharded_checkpoints(cfg, engine: str) -> None:
    """Sharded checkpoints are written and resumed under FSDP2 (preflab.sharded_checkpoint, torch distributed
    checkpointing) and DeepSpeed ZeRO (preflab.deepspeed_checkpoint, each rank's partition); under FSDP version 1
    intermediate checkpoints and resume are refused rather than written wrong (each rank would hold only its
    shards). The final model is gathered to one save_pretrained directory under every engine (gather_full_state)."""
    used = [k for k, bad in (("save_steps", cfg.save_steps), ("save_strategy: best", saves_best(cfg)),
                             ("resume_from_checkpoint", resume_requested(cfg))) if bad]
    if engine == "FSDP" and used:
        raise ConfigError(
            f"{', '.join(used)}: preflab writes and resumes sharded checkpoints under FSDP version 2 and DeepSpeed, "
            f"not under {engine} version 1 (the accelerate config's fsdp_version); use "
            "examples/accelerate/fsdp2.yaml, or set save_steps: 0 and no resume_from_checkpoint (the final model is "
            "still gathered and saved).")
    if engine == "FSDP2" and used:
        check_sharded_storage()


def saved_config_on_this_world(saved: dict, trainer_state: dict, cfg, world: int) -> dict:
    """The checkpoint's saved config as this run would spell it: a checkpoint written on another number of
    processes with the same global batch (per_device_train_batch_size x processes) had another
    per_device_train_batch_size for the same run (BatchPlan reads the same rows in the same order), so that key
    is taken as this run's. Other keys are left for check_resume_config to compare."""
    saved_world = trainer_state.get("world_size")
    if not isinstance(saved, dict) or not isinstance(saved_world, int) or saved_world == world:
        return saved
    batch = saved.get("per_device_train_batch_size")
    if isinstance(batch, int) and batch * saved_world == cfg.per_device_train_batch_size * world:
        return {**saved, "per_device_train_batch_size": cfg.per_device_train_batch_size}
    return saved


def check_global_batch(saved: dict, trainer_state: dict, cfg, world: int, path, note=None) -> None:
    """A checkpoint resumed on another number of processes must keep its global batch (per_device_train_batch_size
    x processes): the same YAML launched on 1 process instead of 2 halves every step's batch and moves the data
    order, a change of what the run computes that the config comparison cannot see (its per-device value is the
    same). Refused unless allow_config_change (then said in a note)."""
    saved_world = trainer_state.get("world_size")
    batch = saved.get("per_device_train_batch_size") if isinstance(saved, dict) else None
    if not isinstance(saved_world, int) or saved_world == world or not isinstance(batch, int):
        return
    before, now = batch * saved_world, cfg.per_device_train_batch_size * world
    if before == now:
        return
    what = (f"resume_from_checkpoint: {path} was trained with a global batch of {before} (per_device_train_batch_size "
            f"{batch} x {saved_world} processes); this run has {now} ({cfg.per_device_train_batch_size} x {world}), "
            "so every step's batch and the data order from here on would differ.")
    if getattr(cfg, "allow_config_change", False):
        if note is not None:
            note(f"preflab: note: {what} Continuing (allow_config_change: true).")
        return
    keep = (f"per_device_train_batch_size: {before // world}" if before % world == 0 else
            f"a per_device_train_batch_size x processes of {before}")
    raise ConfigError(f"{what} Keep the run with {keep}, launch {saved_world} processes, or set "
                      "allow_config_change: true to continue with the new batch anyway.")


def gather_full_state(accelerator, sync_module, checkpoint_module) -> dict | None:
    """The full state dict of checkpoint_module gathered through accelerate (FSDP2 full state dict / DeepSpeed's
    16-bit gather), keyed as checkpoint_module's own state_dict. Collective: every rank calls it; the main process
    gets the tensors (others may get an empty dict)."""
    state = accelerator.get_state_dict(sync_module)
    prefix = ""
    for name, sub in accelerator.unwrap_model(sync_module).named_modules():
        if sub is checkpoint_module or sub is accelerator.unwrap_model(checkpoint_module):
            prefix = f"{name}." if name else ""
            break
    return {k[len(prefix):]: v for k, v in (state or {}).items() if k.startswith(prefix)}


def make_plan(cfg, num_rows: int, world: int) -> tuple[BatchPlan, int]:
    """(the deterministic batch order, the number of optimizer steps)."""
    if num_rows == 0:  # every row was skipped or too long: a smaller batch would not help
        raise DataError(f"no training rows are left in {cfg.dataset_name}: every row was skipped (see the "
                        "`preflab: data:` line and summary.json data); fix the rows, max_length / max_prompt_length, "
                        "or the columns.")
    plan = BatchPlan(num_rows, cfg.per_device_train_batch_size, world, cfg.gradient_accumulation_steps,
                     order_seed(cfg))
    if plan.steps_per_epoch == 0:
        raise PreflabError(
            f"{num_rows} training rows are fewer than one global batch ({plan.global_batch} = "
            "per_device_train_batch_size x processes x gradient_accumulation_steps); lower the batch size.")
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * plan.steps_per_epoch)
    if plan.unused_rows_per_epoch and total >= plan.steps_per_epoch and is_main_process():
        print(f"preflab: note: data: {num_rows} training examples make {plan.steps_per_epoch} steps of "
              f"{plan.global_batch} per epoch; the {plan.unused_rows_per_epoch} left over in each epoch's shuffled "
              "order are not trained on in that epoch (every step takes a full global batch; TRL trains a smaller "
              "last one). Counted as unused_rows_per_epoch in summary.json.")
    return plan, total


def make_optimizer(cfg, params: list, total_steps: int):
    """AdamW with TRL's option names (the fused kernel where the tensors allow, transformers' default
    "adamw_torch_fused"), and its schedule."""
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay, fused=fused or None)
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)  # transformers: ceil
    return optimizer, make_scheduler(optimizer, cfg.lr_scheduler_type, total_steps, warmup)


class TrainingRun:
    extra_params: list = []
    final_state_dict: dict | None = None  # the gathered full weights under FSDP / DeepSpeed (see gather_full_state)
    data_report: dict = {}
    step: int = 0  # the global step just finished (evaluate() reads it)
    # what a micro-batch's num_tokens counts: the throughput metrics are num_<unit> and <unit>_per_second (TRL's
    # num_tokens / tokens_per_second for text; a diffusion run counts images)
    throughput_unit: str = "tokens"
    # False (the Python API's save_model=False, preflab.online.api): the final weights are not written; summary.json,
    # metrics and checkpoints are. summary.json's final_model_saved says which.
    save_final_model: bool = True

    # ------------------------------------------------------------------ hooks (see the module docstring)
    def before_train(self) -> None:
        """Work after resume and before the first step (e.g. precomputing reference log-probs)."""

    def summary_extras(self) -> dict:
        return {}

    def data_position(self) -> dict | None:
        """Where the training data stands after the steps done, saved with every checkpoint (a streaming run's
        stream position, preflab.loops.streaming); None when the order is a function of (seed, step) alone."""
        return None

    def restore_data_position(self, saved: dict | None, step: int) -> None:
        """Continue the training data from `saved` (data_position() of the checkpoint at `step`)."""

    def training_examples(self) -> list | None:
        """The examples the steps draw from (train_data), fingerprinted into every checkpoint and compared at
        resume (preflab.data.fingerprint); None where the run reads its data as it goes (a stream)."""
        return getattr(self, "train_data", None)

    def data_fingerprint(self) -> str | None:
        if not hasattr(self, "_data_fingerprint"):
            from preflab.data.fingerprint import training_data_fingerprint

            self._data_fingerprint = training_data_fingerprint(self.training_examples())
        return self._data_fingerprint

    def write_card(self, summary: dict) -> None:
        pass

    # ------------------------------------------------------------------ callbacks
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

    def _same_on_every_rank(self, metrics: dict) -> dict:
        """`metrics` with metric_for_best_model's value the main process's on every rank, so every rank takes the
        same best-model (and early-stopping) decisions."""
        key, acc = self.best.key, self.accelerator
        if key is None or key not in metrics or acc.num_processes == 1:
            return metrics
        from accelerate.utils import broadcast

        value = broadcast(torch.tensor([float(metrics[key])], dtype=torch.float64, device=acc.device), from_process=0)
        return {**metrics, key: float(value.item())}

    def checkpoint_extras(self) -> dict:
        """Tensors the step updates outside checkpoint_module, by name: the objective's state (parameters and
        buffers) when it is a module, else extra_params by position. Saved with every checkpoint, restored on
        resume."""
        objective = getattr(self, "objective", None)
        if isinstance(objective, torch.nn.Module) and list(objective.state_dict()):
            return {f"objective.{k}": v for k, v in objective.state_dict().items()}
        return {f"extra_params.{i}": p for i, p in enumerate(self.extra_params)}

    # ------------------------------------------------------------------ the loop
    def train(self, resume_from_checkpoint=None) -> dict:
        """Run the loop; output_dir's lock (taken by make_accelerator) is released at the end, error or not. An
        interrupt (KeyboardInterrupt, the CLI's SIGTERM) leaves with `preflab_output_dir` set on it.
        resume_from_checkpoint (TRL's trainer.train argument) must be the config's: the run was set up for it (the
        output folder's note, the checks of sharded engines) when it was built."""
        try:
            if resume_from_checkpoint is not None and resume_from_checkpoint != self.cfg.resume_from_checkpoint:
                raise ConfigError(
                    f"train(resume_from_checkpoint={resume_from_checkpoint!r}): preflab reads resume_from_checkpoint "
                    f"from the config (this one has {self.cfg.resume_from_checkpoint!r}), which sets the run up for "
                    "it. Set it there (resume_from_checkpoint: true, or a checkpoint-N path), build the trainer "
                    "again and call train().")
            return self._train()
        except KeyboardInterrupt as err:  # Ctrl-C / SIGTERM: the CLI names this folder's latest checkpoint
            err.preflab_output_dir = Path(self.cfg.output_dir)
            raise
        except (OSError, SafetensorError) as err:  # a full disk or a read-only folder while writing metrics, the
            failure = write_failure(err)          # model (safetensors' own error type), the summary
            if failure is None:
                raise
            raise PreflabError(f"{failure.filename or self.cfg.output_dir}: {failure.strerror or failure}. "
                               f"{what_is_kept(self.cfg.output_dir)} Free disk space or fix the folder's "
                               "permissions, then run again.") from err
        finally:
            if self.accelerator.is_main_process:
                release_output_dir(self.cfg.output_dir)

    def _train(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        self.out, self.main = Path(cfg.output_dir), acc.is_main_process
        if cfg.load_best_model_at_end and is_sharded(acc):
            raise ConfigError(f"load_best_model_at_end is not supported under {sharding_engine(acc)} (preflab loads "
                              "the best checkpoint's full weights only without sharding); train with "
                              "examples/accelerate/ddp.yaml or one process, or remove load_best_model_at_end.")
        self.best = BestModel(cfg.metric_for_best_model, cfg.greater_is_better)
        if is_sharded(acc) and (writes_checkpoints(cfg) or resume_requested(cfg)):
            self._check_sharded_extras()  # before the first step, not at the first save
            self._check_sharded_model_only()
            if self._deepspeed_engine() is not None:
                check_checkpointable(self._deepspeed_engine())
        start_step = self._maybe_resume()
        acc.wait_for_everyone()  # every rank has read timeline.json before the main process replaces it
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_timeline(self.out, self.timeline)
        self.before_train()
        if self.main:
            cfg.save(self.out / "config.yaml")
        log = MetricsLog(self.out, self.main, resume_step=start_step or None,
                         tracker=self._start_trackers() if self.main else None)
        bar = Progress(self.total_steps, start_step, self.main and not cfg.disable_tqdm, self.throughput_unit)
        self.checkpoint_module.train()
        self.step = start_step
        self.emit("on_train_begin")
        # num_tokens (TRL: cumulative over the run) and the non-finite steps continue from a resumed checkpoint's
        bad_in_row, window, last = 0, [], {}
        tokens_total, nonfinite = self.resumed_totals["num_tokens"], list(self.resumed_totals["nonfinite"])
        tokens_this_run = 0  # tokens_per_second: of this process's run only
        overflow_steps = 0  # fp16 GradScaler overflows (the scaler skipped the update and lowered its scale)
        evaluated = (None, {})  # (step, metrics) of the latest evaluation
        stopped_early = None  # {"step", "max_steps"} when a callback's control.should_training_stop ended the run
        started = time.perf_counter()
        for step in range(start_step, self.total_steps):
            mbs = self.micro_batches(step)
            # the rate this step's update uses: what transformers' Trainer logs (read before the scheduler advances)
            learning_rate = self.scheduler.get_last_lr()[0]
            result = optimizer_step(mbs, self.forward, self.params, self.optimizer, self.scheduler, acc,
                                    cfg.max_grad_norm, sync_module=self.sync_module, extra_params=self.extra_params)
            tokens = result.num_tokens  # all ranks' tokens, summed in the step's own all-reduce (no read of its own)
            if tokens is None:
                tokens = sum(mb.num_tokens for mb in mbs)
                if acc.num_processes > 1:
                    tokens = int(acc.reduce(torch.tensor(tokens, device=acc.device), reduction="sum").item())
            tokens_total += tokens
            tokens_this_run += tokens
            bar.update(result, tokens)
            if result.skipped:
                bad_in_row += 1
                what = "weights" if result.nonfinite_weights else "loss_or_grad"
                nonfinite.append({"step": step + 1, "row_ids": result.row_ids, "nonfinite": what})
                log.write({"step": step + 1, "nonfinite": True, "nonfinite_what": what, "row_ids": result.row_ids})
                if bad_in_row >= cfg.max_nonfinite_steps:
                    path = self._save(step + 1, {"nonfinite": nonfinite, "num_tokens": tokens_total})
                    cause = ("the update would have made the weights inf/NaN (rolled back; is learning_rate "
                             f"{cfg.learning_rate:g} far too large?)" if result.nonfinite_weights else
                             "the loss or gradient norm was inf/NaN")
                    raise NonFiniteError(
                        f"{bad_in_row} non-finite steps in a row (last: {cause}; rows {result.row_ids}); the weights "
                        f"are those from before the first bad step, saved in {path}. Lower the learning rate or "
                        "check the data.")
            else:
                bad_in_row = 0
                overflow_steps += result.overflow
            window.append(result)
            self.step = step + 1
            self.emit("on_step_end")
            asked = self.control_flags()
            if self._log_due(step + 1) or asked["should_log"]:
                last = {"step": step + 1, "learning_rate": learning_rate,
                        f"num_{self.throughput_unit}": tokens_total, **average_results(window),
                        **self.progress(step + 1),
                        f"{self.throughput_unit}_per_second": tokens_this_run / max(time.perf_counter() - started,
                                                                                    1e-9)}
                log.write(last)
                self.emit("on_log", logs=dict(last))
                window = []
            # transformers' DefaultFlowCallback at the last step: evaluate (eval_strategy steps) and save (save_strategy
            # steps); here where the best model depends on it, so the last step's evaluation competes for the best
            best_at_end = step + 1 == self.total_steps and (saves_best(cfg) or cfg.load_best_model_at_end)
            save = ((cfg.save_steps and ((step + 1) % cfg.save_steps == 0 or best_at_end))
                    or asked["should_save"])
            if ((cfg.eval_steps and (step + 1) % cfg.eval_steps == 0) or asked["should_evaluate"]
                    or (best_at_end and (cfg.eval_steps or saves_best(cfg)))):
                metrics = self.evaluate()
                evaluated = (step + 1, metrics)
                new_best = False
                if metrics:  # with `epoch`, as transformers' log() adds it to every row (eval rows too)
                    log.write({"step": step + 1, **self.progress(step + 1), **metrics})
                    self.emit("on_evaluate", metrics=dict(metrics))
                    # after on_evaluate (transformers)
                    new_best = self.best.update(self._same_on_every_rank(metrics), step + 1)
                if saves_best(cfg):  # transformers: should_save = is_new_best_metric at an evaluation
                    if not metrics:
                        raise no_eval_set_for_best(f"the evaluation at step {step + 1} gave no metrics (no eval set)")
                    save = new_best
            if save:
                self.best.note_checkpoint(self.out, step + 1)
                path = self._save(step + 1, {"nonfinite": nonfinite, "num_tokens": tokens_total})
                self.emit("on_save", checkpoint=path)
            acc.wait_for_everyone()
            if asked["should_training_stop"] or self.control_flags()["should_training_stop"]:
                stopped_early = {"step": step + 1, "max_steps": self.total_steps}
                if self.main:
                    print(f"preflab: note: a callback set control.should_training_stop at step {step + 1} of "
                          f"{self.total_steps}: training stops there (the final model is step {step + 1}'s).")
                break
        bar.close()
        end = self.step  # total_steps, or the step a callback stopped the run at
        if evaluated[0] == end:  # the last step was just evaluated: do not run it twice
            final_eval = evaluated[1]
        else:
            final_eval = self.evaluate()
            if final_eval:
                log.write({"step": end, **self.progress(end), **final_eval})
                self.emit("on_evaluate", metrics=dict(final_eval))
        if cfg.load_best_model_at_end and self.best.best_model_checkpoint is not None:
            acc.wait_for_everyone()  # the best checkpoint is written
            load_best_weights(self.best.best_model_checkpoint, acc.unwrap_model(self.checkpoint_module))
            if self.main:
                print(f"preflab: {self.best.loaded_note()}")
                if cfg.save_total_limit == 1:  # transformers: only the best checkpoint is left
                    remove_all_but_best(self.out, self.timeline, self.best.best_model_checkpoint)
        best = {**self.best.state_dict(), "metric_for_best_model": self.best.key} if self.best.key else {}
        summary = {"global_step": end, **({"stopped_early": stopped_early} if stopped_early else {}), **best,
                   "train_examples_seen": (end - start_step) * self.plan.global_batch,
                   "resumed_from_step": start_step or None, "final_metrics": {**last, **final_eval},
                   "nonfinite_steps": nonfinite, "fp16_overflow_steps": overflow_steps,
                   "unused_rows_per_epoch": self.plan.unused_rows_per_epoch,
                   "data": self.data_report, **self.summary_extras(),
                   "runtime_s": time.perf_counter() - started,
                   "environment": {**environment(), **distributed_environment(acc)}}
        # sharded engines: every rank takes part in gathering the full weights; save_model may read them
        self.final_state_dict = (gather_full_state(acc, self.sync_module, self.checkpoint_module)
                                 if is_sharded(acc) else None)
        if not self.save_final_model:
            summary["final_model_saved"] = False
        if self.main:
            if self.save_final_model:
                self.save_model()
            share_run_files(self.out)  # safetensors writes 0600; the model is read like the run's other files
            write_summary(self.out, summary)
            self.write_card(summary)
        self.emit("on_train_end")
        if getattr(acc, "preflab_keeps_process_group", False):  # the next stage of a recipe uses it
            for tracker in acc.trackers:
                tracker.finish()
        else:
            acc.end_training()
        return summary

    def progress(self, step: int) -> dict:
        """Where the run is after `step` optimizer steps, in each metrics row: TRL's `epoch` (passes over the data)."""
        return {"epoch": step / self.plan.steps_per_epoch}

    def _log_due(self, step: int) -> bool:
        """A metrics row after optimizer step `step` (1-based): every logging_steps, at the last step, and after the
        first step with logging_first_step (transformers' DefaultFlowCallback: global_step == 1; a resumed run
        past step 1 does not log its first step again)."""
        cfg = self.cfg
        return (step % cfg.logging_steps == 0 or step == self.total_steps
                or (step == 1 and cfg.logging_first_step))

    def _start_trackers(self):
        """accelerate trackers (report_to: tensorboard, wandb, ...): every metrics.jsonl row also goes there."""
        if self.cfg.report_to in ("none", None, [], ""):
            return None
        flat = {k: v for k, v in self.cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
        names = [str(getattr(kind, "value", kind)) for kind in (self.accelerator.log_with or [])]
        init_kwargs = {}
        if "wandb" in names and not os.environ.get("WANDB_DIR"):  # wandb writes ./wandb in the working directory
            init_kwargs["wandb"] = {"dir": str(self.out)}       # by default; the run's files belong under output_dir
        try:
            self.accelerator.init_trackers("preflab", config=flat, init_kwargs=init_kwargs)
        except Exception as err:  # noqa: BLE001 - every tracker's own error types (login, network, ...)
            raise ConfigError(tracker_start_error(names, err)) from err

        def track(row: dict) -> None:
            values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(values, step=int(row.get("step", 0)))

        return track

    # ------------------------------------------------------------------ persistence
    def _save(self, step: int, state: dict) -> Path | None:
        """checkpoint-<step>: under FSDP2 every rank writes its shards (preflab.sharded_checkpoint), under DeepSpeed
        its ZeRO partition (preflab.deepspeed_checkpoint); otherwise the main process writes the full tensors
        (returns None on the other ranks)."""
        acc = self.accelerator
        position = self.data_position()  # streaming: where the data stream stands
        if position is not None:
            state = {**state, "data_position": position}
        state = {**state, "stateful_callbacks": callback_states(self.callbacks)}  # EarlyStopping's patience counter
        state = {**state, **self.best.state_dict(), "config": self.cfg.to_dict(), "timeline": self.timeline,
                 "world_size": acc.num_processes, "engine": sharding_engine(acc),
                 "data_fingerprint": self.data_fingerprint(), **checkpoint_identity()}
        if is_sharded(acc):
            self._check_sharded_extras()
            self._check_sharded_model_only()
            if self._deepspeed_engine() is not None:
                return save_deepspeed_checkpoint(self.out, step, self._deepspeed_engine(), self.scheduler, state,
                                                 self.main, acc.wait_for_everyone, self.cfg.save_total_limit)
            return save_sharded_checkpoint(self.out, step, self.sync_module, self.optimizer, self.scheduler, state,
                                           self.main, acc.wait_for_everyone, self.cfg.save_total_limit)
        if not self.main:
            return None
        return save_checkpoint(self.out, step, acc.unwrap_model(self.checkpoint_module),
                               self.optimizer, self.scheduler, state,
                               self.cfg.save_total_limit, extra_tensors=self.checkpoint_extras(),
                               model_only=bool(self.cfg.save_only_model))

    def _deepspeed_engine(self):
        """The DeepSpeedEngine accelerate prepared, None without DeepSpeed."""
        wrapped = getattr(self.accelerator, "deepspeed_engine_wrapped", None)
        return wrapped.engine if wrapped is not None else None

    def _check_sharded_extras(self) -> None:
        if self.checkpoint_extras():
            engine = sharding_engine(self.accelerator)
            raise ConfigError(
                f"objective {getattr(self.cfg, 'loss_type', '?')!r} has parameters of its own (outside the model); "
                "preflab's sharded checkpoints (FSDP2, DeepSpeed) hold the model and its optimizer state only. Set "
                f"save_steps: 0 and no resume_from_checkpoint under {engine}, or train with "
                "examples/accelerate/ddp.yaml.")

    def _check_sharded_model_only(self) -> None:
        if self.cfg.save_only_model and writes_checkpoints(self.cfg):
            raise ConfigError(
                f"save_only_model: true is not supported under {sharding_engine(self.accelerator)}: preflab's "
                "sharded checkpoints (FSDP2, DeepSpeed) always hold the optimizer state. Set save_only_model: "
                "false, or train with examples/accelerate/ddp.yaml or one process.")

    def _verify_for_resume(self, path: Path) -> None:
        """Check the files of checkpoint `path` this rank will read against its COMPLETE marker, each file hashed
        by one rank only (preflab.resume_verify); collective, every rank raises the same PreflabError naming the
        damaged file. Where this rank's reads cannot be worked out (a checkpoint this run will refuse, a broken
        safetensors header) it counts as reading every file, which the ranks then share."""
        try:
            if is_deepspeed_checkpoint(path):
                reads = deepspeed_reads(path, self.accelerator.process_index)
            elif is_sharded_checkpoint(path):
                reads = sharded_reads(path, self.sync_module, self.optimizer)
            else:
                reads = plain_reads(path)
        except Exception:  # noqa: BLE001 - only the choice of files to check; the load reports its own errors
            reads = plain_reads(path)
        verify_rank_reads(path, reads)

    def _maybe_resume(self) -> int:
        """Restore the checkpoint resume_from_checkpoint names (true: the newest intact one of output_dir's
        timeline, see preflab.checkpoint) and set this run's timeline; returns the step to start from."""
        run_id = uuid.uuid4().hex[:12]
        self.timeline = [[run_id, 0]]
        self.resumed_totals = {"num_tokens": 0, "nonfinite": []}
        if not resume_requested(self.cfg):
            return 0
        spec = self.cfg.resume_from_checkpoint
        say = print if self.main else (lambda *a, **k: None)
        if spec in (True, "true", "latest"):
            path = resume_checkpoint(self.out, warn=say, verify=self._verify_for_resume)
            if path is None:
                raise PreflabError(no_checkpoint_to_resume(self.out))
        else:
            path = Path(spec)
            self._verify_for_resume(path)
        saved = json.loads((path / "trainer_state.json").read_text())
        refuse_model_only(path, saved)
        step = int(saved["global_step"])
        if step > self.total_steps:
            raise ConfigError(f"resume_from_checkpoint: {path} is at step {step}, beyond this run's last step "
                              f"{self.total_steps} (max_steps / num_train_epochs); raise max_steps above {step}.")
        acc = self.accelerator
        check_deepspeed_resume(saved, path, sharding_engine(acc), deepspeed_stage(acc), acc.num_processes)
        check_checkpoint_version(saved, path, note=say)
        check_resume_config(saved_config_on_this_world(saved.get("config"), saved, self.cfg, acc.num_processes),
                            self.cfg, path, note=say)
        check_global_batch(saved.get("config"), saved, self.cfg, acc.num_processes, path, note=say)
        check_resume_data(saved, self.data_fingerprint(), self.cfg, path, note=say)
        saved_world = saved.get("world_size", "an unrecorded number of")
        if saved.get("world_size", acc.num_processes) != acc.num_processes:
            say(f"preflab: note: {path} was written on {saved_world} process(es); resuming on "
                f"{acc.num_processes}.")
        if is_deepspeed_checkpoint(path):  # the same ZeRO stage and world size (checked above)
            if self.checkpoint_extras():
                self._check_sharded_extras()
            state = load_deepspeed_checkpoint(path, self._deepspeed_engine(), self.scheduler)
        elif is_sharded_checkpoint(path):  # any world size: DCP reshards
            if self.checkpoint_extras():
                self._check_sharded_extras()
            state = load_sharded_checkpoint(path, self.sync_module, self.optimizer, self.scheduler)
        elif is_sharded(acc):
            raise ConfigError(
                f"resume_from_checkpoint: {path} holds full tensors written on {saved_world} process(es) without "
                f"sharding ({saved.get('engine', 'one process or DDP')}); this run shards them with "
                f"{sharding_engine(acc)} on {acc.num_processes} processes, and preflab resumes a full-tensor "
                "checkpoint only without sharding. Resume it with examples/accelerate/ddp.yaml or one process, or "
                "start this run again without resume_from_checkpoint.")
        else:
            state = load_checkpoint(path, acc.unwrap_model(self.checkpoint_module), self.optimizer,
                                    self.scheduler, extra_tensors=self.checkpoint_extras(), verify=False)
        moved = follow_schedule(self.scheduler)
        if moved is not None:  # max_steps / num_train_epochs changed: the checkpoint's rate was another schedule's
            say(f"preflab: note: the learning-rate schedule follows this run's length ({self.total_steps} steps): "
                f"step {step + 1} trains at {moved[1]:.4g}, not at the checkpoint's {moved[0]:.4g}.")
        self.restore_data_position(state.get("data_position"), step)
        self.best.load_state_dict(state)  # best_metric / best_global_step / best_model_checkpoint continue
        restore_callback_states(self.callbacks, state.get("stateful_callbacks"), note=say)
        self.resumed_totals = {"num_tokens": int(state.get("num_tokens") or 0),
                               "nonfinite": [r for r in state.get("nonfinite") or [] if r.get("step", 0) <= step]}
        parent = state.get("timeline") if isinstance(state.get("timeline"), list) else [["legacy", 0]]
        self.timeline = [*parent, [run_id, step]]
        self.resumed_from = path  # runs that keep state beside their checkpoints read it from path's run folder
        say(f"preflab: resumed from {path} at step {step}")
        return step


def what_is_kept(output_dir) -> str:
    """One sentence: the latest finished checkpoint of output_dir's current timeline and how to resume it, or that
    there is none."""
    latest = latest_checkpoint(output_dir)
    if latest is None:
        return f"{output_dir} holds no finished checkpoint of this run."
    if is_model_only(latest):
        return f"The latest finished checkpoint is {latest}; {MODEL_ONLY_KEPT}"
    return (f"The latest finished checkpoint is {latest}; resume_from_checkpoint: true continues from it.")


def average_results(results) -> dict:
    """Mean of a logging window's step metrics (skipped and fp16-overflow steps left out; grad_norm is the last
    kept step's, as in transformers), each step weighted by
    what the metric averages in it (StepResult.metric_counts: its examples, or the objective's own count such as
    KTO's desirable examples or the response tokens), so the value is the exact mean over the window; a metric only
    some steps have (TRL's token metrics: computed on logged steps only; KTO's rewards/chosen in a step without
    desirable examples) is averaged over those steps. A metric defined as a difference (StepResult.
    metric_differences: KTO's rewards/margins) is the difference of the window's means."""
    kept = [r for r in results if not r.skipped and not getattr(r, "overflow", False)]
    if not kept:
        return {"loss": float("nan")}
    n = sum(r.num_examples for r in kept)
    # grad_norm: the last step's, as transformers' Trainer logs it (a snapshot, not a window mean)
    out = {"loss": sum(r.loss * r.num_examples for r in kept) / n, "grad_norm": kept[-1].grad_norm}
    differences = {k: v for r in kept for k, v in getattr(r, "metric_differences", {}).items()}
    for key in dict.fromkeys(k for r in kept for k in r.metrics):
        if key in differences:
            continue
        having = [(r.metrics[key], getattr(r, "metric_counts", {}).get(key, r.num_examples)) for r in kept
                  if key in r.metrics]
        out[key] = sum(value * weight for value, weight in having) / sum(weight for _, weight in having)
    for key, (a, b) in differences.items():
        if a in out and b in out:
            out[key] = out[a] - out[b]
    return out
