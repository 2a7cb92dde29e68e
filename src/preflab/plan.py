"""`preflab plan CONFIG [key=value ...]`: GPU memory per rank of a run, estimated from the model config alone.

No weights are loaded: the model is built on the `meta` device from its config (AutoConfig, or a builtin), which
gives the exact parameter count P and, with LoRA, the trainable count P_t = sum over adapted Linear(in, out) of
r * (in + out) (peft's A [r, in] and B [out, r]; `all-linear` adapts every Linear but the LM head). N ranks.

    weights      P   * bytes(load_dtype)      / s_w
    reference    P   * bytes(load_dtype)      / s_r   (only when the objective needs one, without LoRA (the
                                                       adapter-disabled policy is the reference) and without
                                                       precompute_ref_log_probs; s_r = N under FSDP2, which shards
                                                       it like the policy (0 with its parameter offload); a full
                                                       frozen copy on every rank (s_r = 1) under DDP, ZeRO, FSDP1)
    gradients    P_t * bytes(load_dtype)      / s_g
    optimizer    P_t * 2 * bytes(load_dtype)  / s_o   (AdamW's exp_avg and exp_avg_sq, kept in the parameter dtype;
                                                       another optim: the values it keeps, preflab.optimizer_options
                                                       .optimizer_state_values, e.g. Adafactor's row and column
                                                       means of each matrix, in float32 whatever the parameter
                                                       dtype; SGD's momentum buffer or nothing; bitsandbytes'
                                                       8-bit optimizers 1 byte a state value + a float32 per 256,
                                                       e.g. adamw_8bit ~2 bytes a parameter, float32 for tensors
                                                       under 4096 values and embeddings; their 32-bit ones float32:
                                                       optimizer_options.bnb_state_bytes)
    activations  L * S * b * h * 34 * bytes(compute) / 2            (no checkpointing)
                 L * S * b * h * bytes(compute) + S * b * h * 34 * bytes(compute) / 2   (gradient_checkpointing)

QLoRA (load_in_4bit / load_in_8bit): weights are preflab.models.quantize.quantized_weight_bytes (every Linear but
the head at 4 bits + a float32 constant per 64 weights, or 8 bits + a float32 scale per row; the rest in float32
after peft's prepare_model_for_kbit_training), and the LoRA gradients and AdamW state are float32 (4 bytes).

where S = max_length tokens per sequence, b = per_device_train_batch_size x sequences per example (2 for pairs:
chosen and rejected; 1 for sft; 2 for reward pairs), h = hidden size, L = layers. 34 s b h bytes per layer is
Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models" (arXiv:2205.05198), eq. 1
for 16-bit activations with a memory-efficient attention kernel (no a * s^2 score term: sdpa / flash); with
checkpointing a layer keeps only its input (s b h values) and one layer is recomputed at a time. The reference's
forward runs without gradient and keeps no activations. Logits are chunked by preflab (chunk_tokens) and omitted.

Sharding (s = 1 unless listed): DDP none; ZeRO-1 s_o = N; ZeRO-2 and FSDP SHARD_GRAD_OP (reshard_after_forward:
false) s_g = s_o = N; ZeRO-3 and FSDP full shard s_w = s_g = s_o = N. CPU offload of the optimizer (params) moves
that term (the weights) off the GPU. Estimates exclude
the CUDA context, allocator fragmentation, communication buffers and FSDP's one gathered layer; keep ~10-20% spare.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch

from preflab.errors import ConfigError
from preflab.optimizer_options import (BNB_OPTIMIZERS, bnb_state_bytes, optimizer_state_values,
                                       sharded_optimizer_problem)

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ENGINES = ("ddp", "zero1", "zero2", "zero3", "fsdp", "fsdp_grad_op")
GiB = 1024 ** 3


@dataclass
class Sharding:
    engine: str = "ddp"
    world: int = 1
    offload_optimizer: bool = False
    offload_params: bool = False
    fsdp_version: int = 2  # preflab shards the reference under FSDP version 2 only
    deepspeed: bool = False  # an accelerate config of distributed_type DEEPSPEED (ZeRO stage 0 plans as ddp)
    deepspeed_settings: object = None  # its DeepSpeed config (preflab.deepspeed_options.DeepSpeedSettings)

    def run_engine(self) -> str | None:
        """The sharding engine `preflab train` would name (preflab.loops.launch.sharding_engine: DEEPSPEED for ZeRO,
        FSDP2 / FSDP by fsdp_version), None under DDP: what the run's refusals are asked with."""
        if self.deepspeed or self.engine.startswith("zero"):
            return "DEEPSPEED"
        if self.engine.startswith("fsdp"):
            return "FSDP2" if self.fsdp_version == 2 else "FSDP"
        return None

    def reference_on_gpu_fraction(self) -> float:
        """1/s_r: the share of the reference each rank holds on the GPU (see the module docstring)."""
        if self.engine in ("fsdp", "fsdp_grad_op") and self.fsdp_version == 2:
            return 0.0 if self.offload_params else 1.0 / self.world
        return 1.0

    def factors(self) -> tuple[int, int, int]:
        """(s_w, s_g, s_o)."""
        n = self.world
        return {"ddp": (1, 1, 1), "zero1": (1, 1, n), "zero2": (1, n, n), "fsdp_grad_op": (1, n, n),
                "zero3": (n, n, n), "fsdp": (n, n, n)}[self.engine]


def sharding_from_accelerate(path: str, world: int | None = None) -> Sharding:
    """The sharding an accelerate config file asks for (distributed_type, zero_stage / fsdp_reshard_after_forward,
    offload switches, num_processes)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(path)
    kind = str(config.distributed_type).rsplit(".", 1)[-1]
    n = world or int(config.num_processes or 1)
    if kind == "FSDP":
        fsdp = config.fsdp_config or {}
        full = fsdp.get("fsdp_reshard_after_forward", True) in (True, "FULL_SHARD", "true")
        return Sharding("fsdp" if full else "fsdp_grad_op", n, bool(fsdp.get("fsdp_offload_params")),
                        bool(fsdp.get("fsdp_offload_params")), int(fsdp.get("fsdp_version", 1)))
    if kind == "DEEPSPEED":
        settings = deepspeed_settings_of(config.deepspeed_config or {}, config.mixed_precision)
        zero = (settings.config or {}).get("zero_optimization") or {}
        stage = int(zero.get("stage", 2))
        return Sharding({0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}[stage], n,
                        (zero.get("offload_optimizer") or {}).get("device", "none") not in ("none", None),
                        (zero.get("offload_param") or {}).get("device", "none") not in ("none", None),
                        deepspeed=True, deepspeed_settings=settings)
    return Sharding("ddp", n)


def deepspeed_settings_of(ds: dict, mixed_precision: str | None = None):
    """The DeepSpeed config `preflab train` would read under this accelerate config's deepspeed_config `ds`
    (preflab.deepspeed_options.read_deepspeed_settings): its deepspeed_config_file, or the keys accelerate's launcher
    passes on (zero_stage, gradient_accumulation_steps, gradient_clipping, offload devices, zero3_save_16bit_model),
    each absent one at the value accelerate takes when the launcher sets nothing. Beside a file the launcher names
    the accelerate config's keys (and mixed_precision when the config sets it, as without a --mixed_precision flag),
    which accelerate refuses where the json decides them. A config accelerate refuses keeps its refusal, which the
    plan reports in the run's order (sharded_run_problem)."""
    from preflab.deepspeed_options import read_deepspeed_settings

    file = ds.get("deepspeed_config_file")
    fields = {"gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "zero_stage": 2,
              "offload_optimizer_device": "none", "offload_param_device": "none",
              "offload_optimizer_nvme_path": "none", "offload_param_nvme_path": "none",
              "zero3_save_16bit_model": False}
    if not file or file == "none":
        fields.update({key: ds[key] for key in list(fields) if ds.get(key) is not None})  # the config's own
    fields["zero3_init_flag"] = False  # changes nothing in the DeepSpeed config (see launch.zero3_init_note)
    named = list(ds) + (["mixed_precision"] if mixed_precision is not None else [])
    return read_deepspeed_settings(file, named if file and file != "none" else None, **fields)


def count_parameters(model_config, lora_r: int | None = None) -> tuple[int, int]:
    """(P, P_t) of a causal LM built from its config on the meta device; P_t = P without LoRA."""
    total, shapes = _parameter_shapes(model_config, lora_r)
    return total, sum(math.prod(shape) for shape in shapes)


def _parameter_shapes(model_config, lora_r: int | None) -> tuple[int, list[tuple]]:
    """(P, the shapes of the trainable tensors): every parameter's without LoRA; with it each adapted Linear(in,
    out)'s A [r, in] and B [out, r]."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    total = sum(p.numel() for p in model.parameters())
    if not lora_r:
        return total, [tuple(p.shape) for p in model.parameters()]
    head = model.get_output_embeddings()
    return total, [shape for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head
                   for shape in ((lora_r, m.in_features), (m.out_features, lora_r))]


def _embedding_indices(model_config) -> set[int]:
    """The positions, in model.parameters() order, of the nn.Embedding weights (transformers' Trainer keeps their
    bitsandbytes 8-bit optimizer state in 32 bits; a tied LM head is the same tensor)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return {i for i, p in enumerate(model.parameters()) if id(p) in embedded}


def model_config_of(name: str, trust_remote_code: bool = False):
    from preflab.models.load import BUILTIN

    if name in BUILTIN:
        from preflab.models.tiny import tiny_causal_lm

        with torch.device("meta"):
            return tiny_causal_lm(None, arch=BUILTIN[name]).config
    from transformers import AutoConfig

    from preflab.models.load import check_model_name

    check_model_name(name)  # one quick lookup: an unreachable hub name fails at once, not after AutoConfig's retries
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model_name_or_path={name!r}: no model config could be read ({str(err).splitlines()[0]}); "
                          "give a local directory with config.json, a cached hub name or builtin:tiny-llama.") from err


def sequences_per_example(cfg) -> int:
    """Sequences the policy scores per example: 1 for sft and for unpaired objectives without KTO's reference point
    (apo_zero_unpaired: the completion only); 2 otherwise (chosen + rejected, or KTO's completion + mismatched
    completion)."""
    if cfg.task == "sft":
        return 1
    if cfg.task not in ("reward",) and not getattr(cfg.objective(), "uses_mismatched_completions", True):
        return 1
    return 2


def sharded_run_problem(cfg, engine: str | None, deepspeed_settings=None, world: int = 1) -> str | None:
    """The first refusal `preflab train` gives this config under sharding engine `engine` (Sharding.run_engine; None:
    DDP or one process, where only sync_ref_model with a reference-free loss_type is among these), in the run's
    order, from the functions the run raises with: make_accelerator's (DeepSpeed's accumulation, the DeepSpeed
    config's values against the run config on `world` processes where an accelerate config gave them
    (deepspeed_settings: preflab.deepspeed_options.deepspeed_values_problem), FSDP version 1's checkpoints,
    generate_during_eval); the offline trainer's (parameters outside the model, sync_ref_model,
    token-level KL under FSDP2, distillation); TrainingRun._check_engine_can_save's (optim, load_best_model_at_end,
    save_only_model); the training forward's (activation_offloading). None where none applies. What the machine,
    the data, a checkpoint on disk or the built run decide is left to the run
    (docs/scaling.md lists them)."""
    from preflab.best_model_options import (fsdp1_checkpoint_problem, sharded_best_model_problem,
                                            sharded_model_only_problem)
    from preflab.deepspeed_options import deepspeed_values_problem
    from preflab.loops.extras_producer import producer_class, sharded_extras_problem
    from preflab.loops.resume import resume_requested
    from preflab.ref_sync_options import ref_sync_reference_problem, sharded_ref_sync_problem
    from preflab.sharding_options import (deepspeed_accumulation_problem, fsdp2_token_kl_problem,
                                          sharded_activation_offload_problem, sharded_distill_problem,
                                          sharded_generation_problem)

    trainer = cfg.task != "reward"  # the offline Trainer's checks (the reward model's run has none of these options)
    objective = cfg.objective() if trainer else None
    distill = cfg.task == "sft" and bool(cfg.teacher_model_name_or_path)
    found = producer_class(objective) if trainer else None
    for problem in (lambda: deepspeed_accumulation_problem(cfg, engine),
                    lambda: engine == "DEEPSPEED" and deepspeed_values_problem(cfg, deepspeed_settings, world),
                    lambda: fsdp1_checkpoint_problem(cfg, engine, resume_requested(cfg)),
                    lambda: sharded_generation_problem(cfg, engine),
                    lambda: trainer and sharded_extras_problem(cfg, engine, found and found[0], objective),
                    lambda: trainer and ref_sync_reference_problem(cfg, objective.needs_reference),
                    lambda: trainer and sharded_ref_sync_problem(cfg, engine),
                    lambda: trainer and fsdp2_token_kl_problem(cfg, objective, engine),
                    lambda: distill and engine and sharded_distill_problem(engine.rstrip("2")),  # FSDP2 -> FSDP
                    lambda: sharded_optimizer_problem(getattr(cfg, "optim", "adamw_torch_fused"), engine),
                    lambda: sharded_best_model_problem(cfg, engine),
                    lambda: sharded_model_only_problem(cfg, engine),
                    lambda: sharded_activation_offload_problem(cfg, engine)):
        said = problem()
        if said:
            return said
    return None


def memory_plan(cfg, model_config, sharding: Sharding) -> dict[str, float]:
    """Bytes per rank of each term (see the module docstring) and their total. A config the run refuses under the
    sharding engine whatever the machine and data (an optim but AdamW, load_best_model_at_end, save_only_model,
    activation_offloading, generate_during_eval, sync_ref_model, distillation under ZeRO / FSDP;
    gradient_accumulation_steps > 1 under DeepSpeed, and an accelerate config's DeepSpeed values that disagree with
    the run config; checkpoints or resume under FSDP version 1; sparsepo's token-level
    KL under FSDP2; parameters outside the model where no engine proved them: sharded_run_problem, whose functions
    `preflab train` raises with) is refused here with the run's first message (ConfigError), not planned."""
    refusal = sharded_run_problem(cfg, sharding.run_engine(), sharding.deepspeed_settings, sharding.world)
    if refusal:
        raise ConfigError(refusal)
    load = cfg.load_dtype or "float32"
    if load not in BYTES:
        raise ConfigError(f"load_dtype={load!r}: the plan knows {sorted(BYTES)}.")
    wb = BYTES[load]
    compute = BYTES["float32" if cfg.torch_dtype == "float32" and load == "float32" else "bfloat16"]
    total, shapes = _parameter_shapes(model_config, cfg.lora_r if cfg.use_peft else None)
    trainable = sum(math.prod(shape) for shape in shapes)
    optim = getattr(cfg, "optim", "adamw_torch_fused")
    if optim in BNB_OPTIMIZERS:  # bytes, not values: uint8 state with float32 block maxima, or float32
        state = bnb_state_bytes(optim, shapes, () if cfg.use_peft else _embedding_indices(model_config))
        state_bytes = 1
    else:
        state = optimizer_state_values(optim, getattr(cfg, "optim_args", None), shapes)
        state_bytes = BYTES["float32"] if optim == "adafactor" else None  # Adafactor keeps float32 state
    s_w, s_g, s_o = sharding.factors()
    needs_ref = cfg.task not in ("sft", "reward") and cfg.objective().needs_reference
    has_ref = needs_ref and not cfg.use_peft and not cfg.precompute_ref_log_probs
    weight_bytes = total * wb
    if cfg.load_in_4bit or cfg.load_in_8bit:  # QLoRA: quantized Linear weights; adapters and the rest in float32
        from preflab.models.quantize import quantized_weight_bytes

        with torch.device("meta"):
            from transformers import AutoModelForCausalLM

            weight_bytes = quantized_weight_bytes(AutoModelForCausalLM.from_config(model_config), cfg)
        wb = BYTES["float32"]
    weights = 0.0 if sharding.offload_params else weight_bytes / s_w
    state_bytes = state_bytes or wb
    text = getattr(model_config, "get_text_config", lambda: model_config)()
    h = getattr(text, "hidden_size", None) or getattr(text, "n_embd")
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer")
    tokens = (cfg.max_length or 1024) * cfg.per_device_train_batch_size * sequences_per_example(cfg)
    per_layer = tokens * h * 34 * compute / 2
    activations = (layers * tokens * h * compute + per_layer) if cfg.gradient_checkpointing else layers * per_layer
    plan = {"parameters": float(total), "trainable": float(trainable), "weights": weights,
            "reference": total * wb * sharding.reference_on_gpu_fraction() if has_ref else 0.0,
            "gradients": trainable * wb / s_g,
            "optimizer": 0.0 if sharding.offload_optimizer else state * state_bytes / s_o,
            "activations": float(activations)}
    plan["total"] = sum(plan[k] for k in ("weights", "reference", "gradients", "optimizer", "activations"))
    return plan


def count(n: float) -> str:
    """A parameter count: 7.242 B, 124.4 M, or exact below a million (a tiny model is not "0.000 B")."""
    return f"{n / 1e9:.3f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{int(n):,}"


def format_plan(plan: dict, sharding: Sharding, cfg) -> str:
    """The plan's lines, in GiB, or in MiB when the total is under 1 GiB (a tiny model is not "0.00 GiB" per term)."""
    unit, size = ("GiB", GiB) if plan["total"] >= GiB else ("MiB", 1024 ** 2)
    gib = lambda b: f"{b / size:8.2f} {unit}"  # noqa: E731
    head = (f"model {cfg.model_name_or_path}: {count(plan['parameters'])} parameters, "
            f"{count(plan['trainable'])} trainable; load_dtype {cfg.load_dtype or 'float32'}"
            f"{'; 4-bit base' if cfg.load_in_4bit else '; 8-bit base' if cfg.load_in_8bit else ''}; "
            f"{sharding.engine} over {sharding.world} rank(s); batch {cfg.per_device_train_batch_size} x "
            f"max_length {cfg.max_length}{'; gradient checkpointing' if cfg.gradient_checkpointing else ''}")
    lines = [head, "per rank (estimate, see `python -c 'import preflab.plan; help(preflab.plan)'`):"]
    for key in ("weights", "reference", "gradients", "optimizer", "activations", "total"):
        lines.append(f"  {key:<12}{gib(plan[key])}")
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("plan", help="memory per rank of a training config (from the model config; no weights)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML run config")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--accelerate-config", help="accelerate config file (examples/accelerate/*.yaml)")
    p.add_argument("--world-size", type=int, help="number of ranks (default: the accelerate config's, else 1)")
    p.add_argument("--sharding", choices=ENGINES, help="instead of --accelerate-config")
    p.set_defaults(func=run)


def online_micro_batch(cfg) -> str:
    """What one micro-batch of a task: online run holds, in the words of the plan's refusal: per_device_train_batch_size
    examples, each a prompt group of num_generations completions (the GRPO family, rloo, tpo: online_recipes.TRAINERS
    kind "groups") or a pair of completions (the other recipes), of a prompt cut to max_prompt_length tokens (null:
    uncut) + at most max_completion_length new tokens; the preference game trains a table, not a model."""
    from preflab.online_recipes import TRAINERS

    if cfg.online_task == "game":
        return "the preference game's answer table (online_task: game)"
    b, g = cfg.per_device_train_batch_size, cfg.num_generations
    spec = TRAINERS.get(cfg.trainer)
    examples = (f"per_device_train_batch_size={b} prompt groups of num_generations={g} completions ({b * g} "
                "sequences)" if spec is not None and spec.kind == "groups" else
                f"per_device_train_batch_size={b} pairs of completions ({2 * b} sequences)")
    prompt = ("a prompt of at most max_prompt_length=" f"{cfg.max_prompt_length} tokens"
              if cfg.max_prompt_length else "an uncut prompt (max_prompt_length: null)")
    return f"per micro-batch {examples}, each {prompt} + at most max_completion_length={cfg.max_completion_length} " \
           "new tokens,"


def refuse_unplanned_task(cfg) -> None:
    """The activation term models the offline batches (per_device_train_batch_size examples of
    sequences_per_example sequences of max_length tokens): `task: online` and the recipes are refused, naming why,
    rather than planned as such a batch. An online run's micro-batch is per_device_train_batch_size prompts x
    num_generations completions (GRPO family; pairs or trees in the other recipes) of prompt + max_completion_length
    tokens, plus the KV cache of generation, none of which is max_length x 2; a recipe builds its own models."""
    from preflab.recipe_names import RECIPE_TASKS

    if cfg.task == "online":
        raise ConfigError(f"preflab plan estimates offline runs (task dpo, sft, reward), whose batch is "
                          "per_device_train_batch_size examples of one or two sequences of max_length tokens; an "
                          f"online run reads no max_length. This one (trainer {cfg.trainer}) scores "
                          f"{online_micro_batch(cfg)} and holds generation's KV cache besides, which the plan does "
                          "not model. Try a short run instead (max_steps=2) and watch its GPU memory (nvidia-smi).")
    if cfg.task in RECIPE_TASKS:
        raise ConfigError(f"preflab plan estimates one model's training run; task: {cfg.task} is a recipe that builds "
                          "its own models and stages (recipe_params), which the plan does not model. Try a short "
                          "run instead (recipe_params with fewer steps).")


def run(args) -> int:
    from preflab.config import load_config

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides
    cfg = load_config(config, overrides)
    if cfg.task in ("diffusion", "vlm") or (cfg.task == "online" and cfg.online_task == "vision_dataset"):
        raise ConfigError(f"preflab plan estimates text language-model runs from the model's config.json; a "
                          f"{'task: ' + cfg.task if cfg.task != 'online' else 'vision online'} run (its "
                          f"{'pipeline' if cfg.task == 'diffusion' else 'image-text model'} "
                          f"{cfg.model_name_or_path!r}) is not planned. Try a short run instead (max_steps=2).")
    refuse_unplanned_task(cfg)
    if args.accelerate_config and args.sharding:
        raise ConfigError("give --accelerate-config or --sharding, not both.")
    if args.world_size is not None and args.world_size < 1:
        raise ConfigError(f"--world-size must be >= 1, got {args.world_size}.")
    if args.accelerate_config:
        sharding = sharding_from_accelerate(args.accelerate_config, args.world_size)
    else:
        sharding = Sharding(args.sharding or "ddp", args.world_size or 1)
    from preflab.models.load import cap_max_length, max_positions

    # the max_length training will use: capped at the model's positions, with the same note as `preflab train`
    cap_max_length(cfg, max_positions(cfg.model_name_or_path, cfg.trust_remote_code))
    plan = memory_plan(cfg, model_config_of(cfg.model_name_or_path, cfg.trust_remote_code), sharding)
    print(format_plan(plan, sharding, cfg))
    return 0
