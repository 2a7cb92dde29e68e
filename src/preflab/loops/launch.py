"""The processes and the distributed engine a run trains on: make_accelerator and what it checks first.

What the launcher started (WORLD_SIZE, accelerate's simple launcher, mpirun), the engine the accelerate config asks
for (DDP, FSDP version 1 or 2, DeepSpeed ZeRO) and whether it can run here (an accelerator device or CPU with gloo,
bf16 support, DeepSpeed's settings), the switch of accelerate to FSDP2 / DeepSpeed on a CPU process group, and the
questions the loop asks of the engine afterwards (sharding_engine, deepspeed_stage, is_sharded, parameter_sharding,
gather_full_state). What an engine cannot do for this run is refused here, before any model is loaded (what
needs the built run, such as an objective's own parameters under a sharding engine, is refused by
TrainingRun._check_engine_can_save before the first step).
"""
from __future__ import annotations

import os

import torch

from preflab.loops.accelerate_reuse import match_accelerate_state
from preflab.checkpoint import clean_interrupted_saves
from preflab.deepspeed_device import quiet_deepspeed_cpu_detection
from preflab.deepspeed_options import (deepspeed_values_problem, fill_deepspeed_auto, launcher_config_file,
                                       read_deepspeed_settings)
from preflab.errors import ConfigError, PreflabError
from preflab.launch_env import env_flag, fsdp_version_asked, launched_world_size
from preflab.best_model_options import checkpoint_uses, fsdp1_checkpoint_problem
from preflab.loops.resume import (check_resume_early, refuse_fresh_start_over_unfinished_run, resolve_auto_resume,
                                  resume_requested)
from preflab.rank_agreement import ranks_agree
from preflab.rundir import claim_output_dir
from preflab.sharded_checkpoint import check_sharded_storage
from preflab.sharding_options import deepspeed_accumulation_problem, sharded_generation_problem


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
    if env_flag("ACCELERATE_USE_DEEPSPEED"):
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


def check_deepspeed_settings(cfg, note=None) -> None:
    """DeepSpeed takes the optimizer step inside accelerator.backward (accelerate's DeepSpeedEngineWrapper), with
    its own gradient clipping: one micro-batch per optimizer step (preflab's accumulation would make it step after
    every micro-batch), and the DeepSpeed config's values equal to the run config's where they are not "auto"
    (preflab.deepspeed_options: micro-batch, train_batch_size, clipping, precision; no optimizer or scheduler
    section). Refused before loading, with the text `preflab plan` gives.

    The DeepSpeed settings are read as accelerate forms them (its DeepSpeedPlugin): from the accelerate config's
    deepspeed_config (the launcher's ACCELERATE_* variables) or from a deepspeed_config_file on disk, whose
    gradient_accumulation_steps and gradient_clipping the launcher's variables do not carry (accelerate refuses them
    beside a file), so a file's values are checked too. zero3_init_flag: see zero3_init_note."""
    if not env_flag("ACCELERATE_USE_DEEPSPEED"):
        return
    refusal = deepspeed_accumulation_problem(cfg, "DEEPSPEED")
    if refusal:
        raise ConfigError(refusal)
    settings = read_deepspeed_settings(launcher_config_file())
    refusal = deepspeed_values_problem(cfg, settings, launched_world_size())
    if refusal:
        raise ConfigError(refusal)
    zero = settings.config.get("zero_optimization") or {}
    said = zero3_init_note(zero.get("stage"), os.environ.get("ACCELERATE_DEEPSPEED_ZERO3_INIT"))
    if said:
        from preflab.runlog import is_main_process

        if is_main_process():
            (note or print)(said)


def zero3_init_note(stage, asked: str | None) -> str | None:
    """A note when the accelerate config's zero3_init_flag (ACCELERATE_DEEPSPEED_ZERO3_INIT) asks for what the run
    will not do. Once accelerate's DeepSpeed plugin is selected (make_accelerator, before any model loads) under
    ZeRO-3, transformers builds every model loaded with from_pretrained inside DeepSpeed's zero.Init, already
    partitioned over the processes, whatever the flag says (accelerate 1.x sets transformers' HfDeepSpeedConfig for
    any stage; the flag only switches accelerate's own GatheredParameters helper); under ZeRO-1/2 accelerate turns
    a true flag off. Either way the weights trained are the same: only where the model is first built differs
    (whole on each process, or partitioned), so a note says so rather than a refusal. None when the flag fits the
    stage or is not set (accelerate then follows the stage)."""
    if asked is None:
        return None
    on, zero3 = asked.lower() in ("true", "1"), str(stage) == "3"
    if zero3 and not on:
        return ("preflab: note: zero3_init_flag: false (the accelerate config's deepspeed_config) does not apply: "
                "under DeepSpeed ZeRO-3 transformers builds every model preflab loads with from_pretrained inside "
                "DeepSpeed's zero.Init (partitioned over the processes as it is built) whatever the flag says; the "
                "trained weights are the same. Set zero3_init_flag: true (as examples/accelerate/zero3.yaml) to say "
                "what happens.")
    if on and not zero3:
        return (f"preflab: note: zero3_init_flag: true (the accelerate config's deepspeed_config) applies to "
                f"DeepSpeed ZeRO-3 only; this run is ZeRO-{stage}, which builds each model whole on every process "
                "(accelerate turns the flag off). Set zero3_init_flag: false (as examples/accelerate/zero2.yaml).")
    return None


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


def check_fp16_on_cpu(cfg, on_cpu: bool) -> None:
    """float16 mixed precision (fp16: true, dtype: float16) on a CPU run: refused before anything loads. accelerate
    turns on autocast and its GradScaler for fp16 on accelerator devices only (Accelerator.native_amp is false on
    the CPU), so the run trained in float32 without a word while config.yaml said fp16 (as transformers'
    TrainingArguments does, which refuses --fp16 on a CPU). bfloat16 autocast runs on the CPU, and load_dtype:
    float16 (weights stored in float16, no autocast) is another option and is not touched here."""
    if on_cpu and cfg.torch_dtype == "float16":
        asked = "fp16: true" if cfg.fp16 else "dtype: float16"
        raise ConfigError(
            f"{asked}: float16 mixed precision runs on a GPU only; on the CPU accelerate turns no float16 autocast "
            "on, so this run would train in float32. Use bf16: true (bfloat16 autocast runs on the CPU), "
            "load_dtype: float16 to store the weights in float16, or remove it for float32.")


# the environment transformers' enable_full_determinism sets (see enable_full_determinism)
DETERMINISM_ENVIRONMENT = {"CUDA_LAUNCH_BLOCKING": "1", "CUBLAS_WORKSPACE_CONFIG": ":16:8",
                           "ASCEND_LAUNCH_BLOCKING": "1", "HCCL_DETERMINISTIC": "1",
                           "FLASH_ATTENTION_DETERMINISTIC": "1"}


def enable_full_determinism(seed: int) -> None:
    """transformers' TrainingArguments.full_determinism, as its Trainer applies it (transformers 5's
    trainer_utils.enable_full_determinism, written out here: importing transformers.trainer_utils imports peft, and
    with it bitsandbytes where installed, into a run that uses neither; tests/test_lazy_peft_imports.py): the seed
    set first (random, numpy, torch and every device's generator: accelerate's set_seed, which seeds what
    transformers' set_seed seeds), the environment variables CUDA_LAUNCH_BLOCKING=1, CUBLAS_WORKSPACE_CONFIG=:16:8
    (cuBLAS needs one of the two for deterministic matmuls), ASCEND_LAUNCH_BLOCKING=1, HCCL_DETERMINISTIC=1 (Ascend
    NPUs), FLASH_ATTENTION_DETERMINISTIC=1, then torch.use_deterministic_algorithms(True) (not warn-only) and cuDNN
    deterministic without benchmarking. Process-wide, as in transformers: a later run in the same Python process
    keeps it. An op without a deterministic implementation then raises (torch's RuntimeError names it), as under
    TRL. tests/loops/test_full_determinism.py checks the state it leaves against transformers' own function."""
    from accelerate.utils import set_seed

    set_seed(seed)
    os.environ.update(DETERMINISM_ENVIRONMENT)
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def inherited_determinism_note() -> str:
    """A run without full_determinism in a process where torch's deterministic algorithms are on: an earlier run's
    full_determinism (process-wide, as transformers' enable_full_determinism leaves it) or the user's code. The run
    keeps the setting, said rather than silently slower (a notebook's second run)."""
    return ("preflab: note: torch.use_deterministic_algorithms is on in this Python process (an earlier run's "
            "full_determinism: true, which is process-wide as in transformers, or your code), so this run "
            "(full_determinism: false) runs with it too: slower on a GPU, and an op without a deterministic "
            "implementation raises. Call torch.use_deterministic_algorithms(False) before the run to turn it off.")


def make_accelerator(cfg, whole_weights: str | None = None):
    """accelerate owns devices, processes and mixed precision; the seed is set here.

    A multi-process launch on a machine without an accelerator device (`accelerate launch --multi_gpu
    --num_processes 2` on CPU) gets a gloo process group: accelerate would otherwise give every process its own
    one-process training into the same output_dir. A launch that still forms no process group is an error.
    whole_weights: why this run kind needs every rank to hold the whole weights (it calls the model outside the
    engine's wrapper); an engine that shards parameters (FSDP2, ZeRO-3) is then refused before anything loads.
    DS_ACCELERATOR=cpu is set first where DeepSpeed would detect no device (preflab.deepspeed_device: its warning
    that it found none is then not printed; a DS_ACCELERATOR already set is kept).
    """
    quiet_deepspeed_cpu_detection()
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from preflab.runlog import is_main_process

    # resume_from_checkpoint: auto -> true or null, on every rank, before anything reads it
    resolve_auto_resume(cfg, note=print if is_main_process() else None)

    launched = launched_world_size()
    check_launch_started_processes()
    use_cpu = cfg.use_cpu or env_flag("ACCELERATE_USE_CPU")  # accelerate's --cpu: its state would take the CPU anyway
    cpu = use_cpu or (launched > 1 and not _has_accelerator_device())
    _check_fsdp(cpu or not _has_accelerator_device(), launched, use_cpu)
    check_bf16(cfg, on_cuda=not cpu and torch.cuda.is_available())
    check_fp16_on_cpu(cfg, on_cpu=cpu or not _has_accelerator_device())
    check_deepspeed_settings(cfg)
    precision = {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.torch_dtype, "no")
    fsdp_on_cpu = cpu and launched > 1 and fsdp_version_asked() == 2
    deepspeed_on_cpu = cpu and env_flag("ACCELERATE_USE_DEEPSPEED")
    reset = match_accelerate_state(precision, cpu or not _has_accelerator_device())  # an earlier run's settings
    if reset:
        print(reset)
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
    if ds_plugin is not None:  # "auto" (or left out) from the run config; the micro-batch: accelerate's prepare()
        fill_deepspeed_auto(cfg, ds_plugin.deepspeed_config, accelerator.num_processes)  # needs it (no dataloader)
    if launched > 1 and accelerator.num_processes != launched:
        raise ConfigError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}) but they formed no process group "
            f"(accelerate: {accelerator.distributed_type}, {accelerator.num_processes} process); each would train "
            "alone into the same output_dir. Check the accelerate config / launch flags (on CPU: use_cpu: true).")
    check_sharded_checkpoints(cfg, sharding_engine(accelerator))
    refusal = sharded_generation_problem(cfg, sharding_engine(accelerator) if is_sharded(accelerator) else None)
    if refusal:
        raise ConfigError(refusal)
    check_whole_weights(cfg, accelerator, whole_weights)
    if getattr(cfg, "full_determinism", False):
        enable_full_determinism(cfg.seed)
    elif torch.are_deterministic_algorithms_enabled() and accelerator.is_main_process:
        print(inherited_determinism_note(), flush=True)
    set_seed(cfg.seed)
    # every rank, before the main process writes anything: the same files read, so a refused resume stops every
    # rank with the same ConfigError (none goes on to wait for the main process in a collective)
    check_resume_early(cfg, sharding_engine(accelerator), deepspeed_stage(accelerator), accelerator.num_processes,
                       launched_world_size())
    if resume_requested(cfg):
        accelerator.wait_for_everyone()  # every rank has read output_dir before clean_interrupted_saves tidies it
    # before any model is loaded: the main process refuses a bad output_dir, locks it, tidies it. Agreed (one
    # all-reduce per run; preflab.rank_agreement): a refusal or a failed write stops every rank with the main's
    # error, where the others went on to load the model and waited in DDP's first broadcast
    with ranks_agree(f"the main process could not take output_dir {cfg.output_dir}"):
        if accelerator.is_main_process:
            claim_output_dir(cfg.output_dir, getattr(cfg, "overwrite_output_dir", False))
            refuse_fresh_start_over_unfinished_run(cfg)  # its note is said when train() starts the run
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
    resumes = resume_requested(cfg)
    refusal = fsdp1_checkpoint_problem(cfg, engine, resumes)
    if refusal:
        raise ConfigError(refusal)
    if engine == "FSDP2" and checkpoint_uses(cfg, resumes):
        check_sharded_storage()


def gather_full_state(accelerator, sync_module, checkpoint_module) -> dict | None:
    """The full state dict of checkpoint_module gathered through accelerate (FSDP2 full state dict / DeepSpeed's
    16-bit gather), keyed as checkpoint_module's own state_dict. Collective: every rank calls it; the main process
    gets the tensors (others may get an empty dict)."""
    return gather_full_states(accelerator, sync_module, [checkpoint_module])[0]


def gather_full_states(accelerator, sync_module, modules: list) -> list[dict]:
    """gather_full_state of each of `modules` (submodules of sync_module: the policy, the extra modules of
    preflab.loops.engine_extras), from one gather."""
    state = accelerator.get_state_dict(sync_module) or {}
    unwrapped = accelerator.unwrap_model(sync_module)
    states = []
    for module in modules:
        prefix = ""
        for name, sub in unwrapped.named_modules():
            if sub is module or sub is accelerator.unwrap_model(module):
                prefix = f"{name}." if name else ""
                break
        states.append({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return states
