"""optim and optim_args: the optimizers of transformers' Trainer that preflab builds (TrainingArguments' names), the
optim_args keys each reads, and their checks, run with the config's before any model is loaded. The optimizers
themselves are built in preflab.loops.optimizer (build_optimizer).

transformers 5's Trainer.get_optimizer_cls_and_kwargs (trainer_optimizer.py) builds, with lr = learning_rate:
- adamw_torch_fused / adamw_torch: torch AdamW(betas=(adam_beta1, adam_beta2), eps=adam_epsilon), fused=True for
  the first; it reads no optim_args. adamw_hf (older transformers' own AdamW) is preflab's fused AdamW, as before.
- adafactor: transformers.optimization.Adafactor(scale_parameter=False, relative_step=False), its other defaults
  (eps (1e-30, 1e-3), clip_threshold 1.0, decay_rate -0.8, beta1 None); it reads no optim_args.
- sgd: torch SGD, optim_args momentum, dampening (float), nesterov (bool);
- adagrad: torch Adagrad, optim_args lr_decay, eps;
- rmsprop: torch RMSprop, optim_args momentum, alpha, eps (float), centered (bool).
weight_decay is every optimizer's param-group value (Trainer.create_optimizer sets it on each group), which overrides
an optim_args weight_decay: that key is refused, naming weight_decay. optim_args is TrainingArguments' string
"key=value,key=value" (spaces removed), read as transformers reads it: float(value); a bool is true for
true / 1 / yes (any case). Where transformers would ignore a key or read a misspelt bool as false, preflab refuses it.

    optim_arg_values("sgd", "momentum=0.9, nesterov=True")  -> {"momentum": 0.9, "nesterov": True}
"""
from __future__ import annotations

import math

ADAMW = ("adamw_torch_fused", "adamw_torch", "adamw_hf")

# optim -> {optim_args key: its type} (transformers' _get_sgd / _get_adagrad / _get_rmsprop read exactly these)
OPTIM_ARGS: dict[str, dict[str, type]] = {
    "adamw_torch_fused": {}, "adamw_torch": {}, "adamw_hf": {}, "adafactor": {},
    "sgd": {"momentum": float, "dampening": float, "nesterov": bool},
    "adagrad": {"lr_decay": float, "eps": float},
    "rmsprop": {"momentum": float, "alpha": float, "eps": float, "centered": bool},
}
OPTIMIZERS = tuple(OPTIM_ARGS)

# the float keys torch refuses below 0 (SGD momentum; Adagrad lr_decay, eps; RMSprop momentum, alpha, eps)
_NON_NEGATIVE = ("momentum", "lr_decay", "eps", "alpha")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_optim_args(text: str | None) -> dict[str, str]:
    """TrainingArguments' optim_args string as transformers' _parse_optim_args reads it: spaces removed, split at
    ",", each piece key=value. ValueError (saying which piece) where a piece is not key=value."""
    if not text:
        return {}
    out = {}
    for piece in text.replace(" ", "").split(","):
        key, sep, value = piece.partition("=")
        if not sep or not key or "=" in value:
            raise ValueError(f"{piece!r} is not key=value")
        out[key] = value
    return out


def _typed(kind: type, key: str, value: str):
    if kind is bool:
        if value.lower() not in _TRUE + _FALSE:
            raise ValueError(f"{key}={value!r} is not a bool (true or false)")
        return value.lower() in _TRUE
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{key}={value!r} is not a number") from None
    if not math.isfinite(number) or (key in _NON_NEGATIVE and number < 0):
        raise ValueError(f"{key}={value!r} must be a finite number" + (" >= 0" if key in _NON_NEGATIVE else ""))
    return number


def optim_arg_values(optim: str, text: str | None) -> dict:
    """The keyword arguments optim_args gives optimizer `optim`, typed as transformers types them. ValueError naming
    the problem for a key `optim` does not read, optim_args weight_decay, or a value that is not of its type."""
    known = OPTIM_ARGS[optim]
    values = {}
    for key, value in parse_optim_args(text).items():
        if key == "weight_decay":
            raise ValueError("weight_decay in optim_args is overridden by the weight_decay option (transformers' "
                             "Trainer sets it on every parameter group); set weight_decay instead")
        if key not in known:
            reads = f"it reads {', '.join(known)}" if known else "it reads no optim_args"
            import difflib

            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)  # a misspelt key: the one meant
            meant = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"optim {optim} does not read {key!r} ({reads}; transformers would ignore it{meant})")
        values[key] = _typed(known[key], key, value)
    if values.get("nesterov") and (values.get("momentum", 0.0) <= 0 or values.get("dampening", 0.0) != 0):
        raise ValueError("nesterov=true needs momentum > 0 and dampening 0 (torch SGD refuses it otherwise)")
    return values


def optimizer_errors(cfg) -> list[str]:
    """One line per problem of cfg.optim / cfg.optim_args (the config's checks)."""
    optim, text = getattr(cfg, "optim", "adamw_torch_fused"), getattr(cfg, "optim_args", None)
    if optim not in OPTIM_ARGS:
        return [refused_optim(optim)]
    if text is not None and not isinstance(text, str):
        return [f"optim_args must be a string key=value,key=value (TrainingArguments' form, e.g. "
                f"optim_args: \"momentum=0.9,nesterov=true\"), got {type(text).__name__} {text!r}."]
    try:
        optim_arg_values(optim, text)
    except ValueError as exc:
        return [f"optim_args={text!r} for optim {optim}: {exc}."]
    return []


def refused_optim(optim) -> str:
    """The refusal of a transformers `optim` preflab does not build. The 8-bit, 4-bit and paged optimizers
    (bitsandbytes / torchao; TRL users set them to save optimizer memory) are named with what saves that memory in
    preflab: their quantized state is not what preflab's checkpoints hold for an exact resume, and with no
    bitsandbytes and no GPU here their support could not be verified. The others (GaLore, APOLLO, LOMO, schedule-free,
    GrokAdamW, StableAdamW, AnyPrecision, XLA / NPU AdamW) need packages preflab does not depend on."""
    name = str(optim)
    built = ", ".join(OPTIMIZERS)
    if any(part in name for part in ("8bit", "4bit", "paged", "bnb")):
        return (f"optim={optim!r} is not supported: 8-bit, 4-bit and paged optimizers are not available (preflab's "
                "optimizers keep full-precision state, checkpointed for an exact resume). To cut optimizer memory: "
                "use_peft: true (LoRA: state for the adapters only; with load_in_4bit: true, QLoRA), optim: "
                "adafactor (factored second moments), or DeepSpeed ZeRO with the state offloaded to the CPU "
                "(accelerate launch --config_file examples/accelerate/zero2.yaml with offload_optimizer_device: "
                f"cpu). preflab builds optim {built}.")
    return (f"optim={optim!r} is not supported: preflab builds transformers' optimizers that need no other package: "
            f"{built}; use one of them (or remove optim: the default is adamw_torch_fused).")


def sharded_optimizer_refusal(optim: str, engine: str) -> str:
    """The refusal of an optimizer other than AdamW under FSDP2 / DeepSpeed (engine: sharding_engine's name). Both
    shard each parameter over the ranks (DeepSpeed ZeRO hands the optimizer flat 1-D partitions, FSDP2 row shards),
    so Adafactor's row and column statistics would be those of shards, not of the matrix transformers' Trainer
    factors on one process; with offload_optimizer_device: cpu accelerate even swaps the optimizer for DeepSpeed's CPU
    Adam (or CPU Adagrad), keeping only lr and weight_decay (accelerate.utils.deepspeed.map_pytorch_optim_to_deepspeed);
    and preflab's sharded checkpoints (preflab.sharded_checkpoint, preflab.deepspeed_checkpoint) are verified with
    AdamW's state only."""
    return (f"optim: {optim} is not supported under {engine}: it shards every parameter over the processes (Adafactor "
            "would factor shards, not the matrices; with a CPU-offloaded optimizer accelerate swaps it for "
            "DeepSpeed's CPU Adam), and preflab's sharded checkpoints are verified with AdamW's state only. Train with examples/accelerate/ddp.yaml or one process, or use optim: adamw_torch_fused.")


def optimizer_state_values(optim: str, optim_args: str | None, shapes) -> int:
    """How many values optimizer `optim` keeps for trainable parameters of `shapes` (for preflab plan), summed over
    the parameters, the per-tensor state each keeps after a step:
    - AdamW: exp_avg and exp_avg_sq, 2 x numel;
    - sgd: the momentum buffer (numel) when momentum > 0, else nothing;
    - adagrad: the running sum of squares, numel;
    - rmsprop: square_avg, plus the momentum buffer when momentum > 0 and grad_avg when centered;
    - adafactor (beta1 None: no first moment): a tensor of 2 or more dims keeps its row means (all dims but the last)
      and column means (all but the second-to-last), a vector or scalar keeps numel.
    Scalars (step counters, Adafactor's RMS) are left out."""
    args = optim_arg_values(optim, optim_args)
    total = 0
    for shape in shapes:
        shape = tuple(shape)
        numel = math.prod(shape)
        if optim in ADAMW:
            total += 2 * numel
        elif optim == "sgd":
            total += numel if args.get("momentum", 0.0) > 0 else 0
        elif optim == "adagrad":
            total += numel
        elif optim == "rmsprop":
            total += numel * (1 + (args.get("momentum", 0.0) > 0) + bool(args.get("centered", False)))
        elif len(shape) >= 2:  # adafactor, factored
            total += math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]
        else:
            total += numel
    return total
