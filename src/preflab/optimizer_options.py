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

The bitsandbytes optimizers (BNB_OPTIMIZERS; the package is the optional extra preflab[bnb]) are transformers'
_get_bitsandbytes_optimizer's: bitsandbytes.optim AdamW / Lion / RMSprop / AdEMAMix with optim_bits 8 where the name
holds "8bit" (else 32) and is_paged where it holds "paged" (not passed to RMSprop). AdamW takes betas (adam_beta1,
adam_beta2) and eps adam_epsilon; Lion betas only; AdEMAMix betas (beta1, beta2, beta3), alpha, eps from optim_args
(defaults adam_beta1, adam_beta2, 0.9999, 5.0, adam_epsilon) and t_alpha, t_beta3 (int) when given; RMSprop lr
only, and transformers hands it the optim_args strings unconverted, which bitsandbytes' RMSprop rejects (a TypeError
comparing a str with 0.0, or "centered" read as true): preflab refuses optim_args for it.
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

# transformers 5's _BITSANDBYTES_OPTIMIZERS (TrainingArguments' names), built as _get_bitsandbytes_optimizer builds them
BNB_OPTIMIZERS = ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit", "ademamix", "ademamix_8bit",
                  "paged_ademamix_32bit", "paged_ademamix_8bit", "lion_32bit", "lion_8bit", "paged_lion_32bit",
                  "paged_lion_8bit", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit")
_ADEMAMIX_ARGS = {"beta1": float, "beta2": float, "beta3": float, "alpha": float, "eps": float, "t_alpha": int,
                  "t_beta3": int}
OPTIM_ARGS.update({name: dict(_ADEMAMIX_ARGS) if "ademamix" in name else {} for name in BNB_OPTIMIZERS})
OPTIMIZERS = tuple(OPTIM_ARGS)
BNB_INSTALL = 'pip install "preflab[bnb]"'


def bnb_kind(optim: str) -> tuple[str, int, bool]:
    """(the bitsandbytes.optim class, optim_bits, is_paged) of a BNB_OPTIMIZERS name, as transformers reads the
    name: "adam" -> AdamW (not in "ademamix"), "lion" -> Lion, "rmsprop" -> RMSprop, "ademamix" -> AdEMAMix; 8 bits
    where it holds "8bit", else 32; paged where it holds "paged".

        bnb_kind("paged_adamw_8bit") -> ("AdamW", 8, True);  bnb_kind("rmsprop_bnb") -> ("RMSprop", 32, False)"""
    cls = next(c for key, c in (("adam", "AdamW"), ("lion", "Lion"), ("rmsprop", "RMSprop"), ("ademamix", "AdEMAMix"))
               if key in optim)
    return cls, 8 if "8bit" in optim else 32, "paged" in optim


def bnb_missing(optim: str) -> str:
    """The refusal of a bitsandbytes optim where the package is not installed."""
    return (f"optim={optim!r} is a bitsandbytes optimizer and the bitsandbytes package is not installed: "
            f"{BNB_INSTALL} (or pip install bitsandbytes), or choose an optim that needs no other package: "
            f"{', '.join(o for o in OPTIMIZERS if o not in BNB_OPTIMIZERS)}.")


def paged_refusal(optim: str, where: str) -> str:
    """The refusal of a paged optimizer off CUDA (where: why the run is not on a CUDA GPU). bitsandbytes pages the
    state between GPU and CPU memory with CUDA unified memory; on the CPU it would keep the state where it is and run
    as the unpaged optimizer, so the option would not do what it says."""
    unpaged = {"paged_adamw_32bit": None, "paged_ademamix_32bit": "ademamix"}.get(optim, optim.replace("paged_", ""))
    use = (f"optim: {unpaged} (the same steps, unpaged)" if unpaged else
           "optim: adamw_torch (transformers has no unpaged bitsandbytes 32-bit AdamW name)")
    return (f"optim: {optim} needs a CUDA GPU (bitsandbytes pages the optimizer state between GPU and CPU memory "
            f"with CUDA unified memory), and {where}; on the CPU bitsandbytes would silently run it unpaged. Use "
            f"{use} or run on a CUDA GPU.")

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
    if kind is int:  # transformers: int(value) (AdEMAMix's t_alpha, t_beta3)
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{key}={value!r} is not an integer") from None
        if number < 1:
            raise ValueError(f"{key}={value!r} must be an integer >= 1 (bitsandbytes reads 0 as no schedule)")
        return number
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
    if optim.startswith("rmsprop_bnb") and parse_optim_args(text):
        raise ValueError(f"optim {optim} takes no optim_args: transformers passes them to bitsandbytes' RMSprop as "
                         "unconverted strings, which it rejects (a str compared with 0.0; centered='false' is true); "
                         "its alpha 0.99, eps 1e-8 and momentum 0 are fixed. For these settings use optim: rmsprop")
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
    for beta in ("beta1", "beta2", "beta3"):
        if not 0.0 <= values.get(beta, 0.0) < 1.0:
            raise ValueError(f"{beta}={values[beta]!r} must be in [0, 1) (bitsandbytes refuses it otherwise)")
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
    if optim in BNB_OPTIMIZERS:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            return [bnb_missing(optim)]
        if bnb_kind(optim)[2] and getattr(cfg, "use_cpu", False):
            return [paged_refusal(optim, "use_cpu: true is set")]
    return []


def refused_optim(optim) -> str:
    """The refusal of a transformers `optim` preflab does not build. torchao's 8-bit / 4-bit AdamW (adamw_torch_8bit,
    adamw_torch_4bit) and GaLore's 8-bit one are named with bitsandbytes' 8-bit optimizers, which preflab builds
    (BNB_OPTIMIZERS), and with what else cuts optimizer memory. The others (GaLore, APOLLO, LOMO, schedule-free,
    GrokAdamW, StableAdamW, AnyPrecision, XLA / NPU AdamW) need packages preflab does not depend on."""
    name = str(optim)
    built = ", ".join(o for o in OPTIMIZERS if o not in BNB_OPTIMIZERS)
    bnb = ", ".join(BNB_OPTIMIZERS)
    if any(part in name for part in ("8bit", "4bit", "paged", "bnb")):
        return (f"optim={optim!r} is not supported: preflab does not build it (torchao's and GaLore's 8-bit / 4-bit "
                "optimizers need packages preflab does not use). "
                f"preflab builds bitsandbytes' 8-bit and paged optimizers ({bnb}; {BNB_INSTALL}), e.g. optim: "
                "adamw_8bit. Other ways to cut optimizer memory: use_peft: true (LoRA: state for the adapters only; "
                "with load_in_4bit: true, QLoRA), optim: adafactor (factored second moments), or DeepSpeed ZeRO with "
                "the state offloaded to the CPU (accelerate launch --config_file examples/accelerate/zero2.yaml with "
                f"offload_optimizer_device: cpu). The optimizers that need no other package: {built}.")
    return (f"optim={optim!r} is not supported: preflab builds transformers' optimizers that need no other package: "
            f"{built}, and with bitsandbytes ({BNB_INSTALL}) {bnb}; use one of them (or remove optim: the default "
            "is adamw_torch_fused).")


def sharded_optimizer_refusal(optim: str, engine: str) -> str:
    """The refusal of an optimizer other than AdamW under FSDP2 / DeepSpeed (engine: sharding_engine's name). Both
    shard each parameter over the ranks (DeepSpeed ZeRO hands the optimizer flat 1-D partitions, FSDP2 row shards),
    so Adafactor's row and column statistics would be those of shards, not of the matrix transformers' Trainer
    factors on one process; with offload_optimizer_device: cpu accelerate even swaps the optimizer for DeepSpeed's CPU
    Adam (or CPU Adagrad), keeping only lr and weight_decay (accelerate.utils.deepspeed.map_pytorch_optim_to_deepspeed);
    and preflab's sharded checkpoints (preflab.sharded_checkpoint, preflab.deepspeed_checkpoint) are verified with
    AdamW's state only."""
    bnb = (" bitsandbytes' optimizers would see shards too: their 8-bit state is quantized in blocks of 256 values "
           "of the tensor they are handed, and the 32-bit state transformers keeps for embeddings is matched by "
           "parameter identity, which sharding replaces." if optim in BNB_OPTIMIZERS else "")
    return (f"optim: {optim} is not supported under {engine}: it shards every parameter over the processes (Adafactor "
            "would factor shards, not the matrices; with a CPU-offloaded optimizer accelerate swaps it for "
            f"DeepSpeed's CPU Adam), and preflab's sharded checkpoints are verified with AdamW's state only.{bnb} "
            "Train with examples/accelerate/ddp.yaml or one process, or use optim: adamw_torch_fused.")


def sharded_optimizer_problem(optim: str, engine: str | None) -> str | None:
    """The refusal (sharded_optimizer_refusal) of `optim` under sharding engine `engine` (launch.sharding_engine's
    name: DEEPSPEED, FSDP2, FSDP; None without sharding), None where it may run: AdamW (ADAMW) under any engine,
    every optim without one. `preflab train` (TrainingRun._check_engine_can_save) and `preflab plan` both ask it."""
    if engine is None or optim in ADAMW:
        return None
    return sharded_optimizer_refusal(optim, engine)


def optimizer_state_values(optim: str, optim_args: str | None, shapes) -> int:
    """How many values optimizer `optim` keeps for trainable parameters of `shapes` (for preflab plan), summed over
    the parameters, the per-tensor state each keeps after a step:
    - AdamW: exp_avg and exp_avg_sq, 2 x numel;
    - sgd: the momentum buffer (numel) when momentum > 0, else nothing;
    - adagrad: the running sum of squares, numel;
    - rmsprop: square_avg, plus the momentum buffer when momentum > 0 and grad_avg when centered;
    - adafactor (beta1 None: no first moment): a tensor of 2 or more dims keeps its row means (all dims but the last)
      and column means (all but the second-to-last), a vector or scalar keeps numel.
    Scalars (step counters, Adafactor's RMS) are left out. A bitsandbytes optim: ValueError (its state is counted
    in bytes, bnb_state_bytes)."""
    if optim in BNB_OPTIMIZERS:
        raise ValueError(f"optim {optim}: bitsandbytes state is counted by bnb_state_bytes")
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


BNB_MIN_8BIT_SIZE, BNB_BLOCK = 4096, 256  # bitsandbytes' min_8bit_size default and its blockwise quantization block
_BNB_STATES = {"AdamW": 2, "Lion": 1, "RMSprop": 1, "AdEMAMix": 3}


def bnb_state_bytes(optim: str, shapes, full_precision=()) -> int:
    """Bytes of bitsandbytes optimizer `optim`'s state for trainable tensors of `shapes` (for preflab plan). Per
    value it keeps k states: AdamW 2 (state1, state2), Lion and RMSprop 1, AdEMAMix 3 (two first moments in state1,
    the second moment in state2). At 32 bits each is float32, whatever the parameter dtype: 4 k bytes a value. At 8
    bits a tensor of at least 4096 values (bitsandbytes' min_8bit_size) keeps each state in uint8 plus a float32
    absmax per block of 256 values, k (n + 4 ceil(n / 256)) bytes (about 2.03 bytes a value for AdamW); a smaller
    one, and those at the indices in `full_precision` (transformers' 32-bit override of nn.Embedding weights), 4 k n.
    The 256-value quantization maps, shared by the tensors, and the step counters are left out."""
    cls, bits, _ = bnb_kind(optim)
    states = _BNB_STATES[cls]
    total = 0
    for index, shape in enumerate(shapes):
        numel = math.prod(tuple(shape))
        if bits == 8 and numel >= BNB_MIN_8BIT_SIZE and index not in full_precision:
            total += states * (numel + 4 * -(-numel // BNB_BLOCK))
        else:
            total += states * 4 * numel
    return total
