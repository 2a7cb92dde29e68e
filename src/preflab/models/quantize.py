"""A quantized frozen base for QLoRA: TRL ModelConfig's `load_in_4bit` / `load_in_8bit`, through bitsandbytes.

Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs" (arXiv:2305.14314), section 3: the base
weights W are stored in 4-bit NormalFloat (`nf4`, or plain `fp4`) in blocks of 64 with one absmax constant each,
and used as Y = X doubleDequant(c1, c2, W) + X L1 L2 s: dequantized to the compute dtype (bfloat16 by default) in
each forward; only the LoRA factors L1, L2 are trained. Double quantization (`use_bnb_nested_quant`, bitsandbytes'
bnb_4bit_use_double_quant) stores the absmax constants c2 in 8 bits with one float32 c1 per 256 blocks, 0.127 instead
of 0.5 bits per weight. `load_in_8bit` is LLM.int8() (Dettmers et al. 2022, arXiv:2208.07339).

    quantization_kwargs(cfg)  -> the BitsAndBytesConfig arguments (TRL's get_quantization_config), or None
    quantization_conflicts(cfg) -> config problems (TrainConfig.check): LoRA required, one of 4/8 bit, ...
    check_quantization_machine(cfg) -> ConfigError before anything loads on CPU or without bitsandbytes

As TRL: 4-bit compute and storage dtype = the model's dtype (`load_dtype` / `torch_dtype`; bfloat16 when unset or
`auto`), or `bnb_4bit_compute_dtype` when given; each process loads the whole quantized model on its own GPU
(device_map {"": local process index}); peft's prepare_model_for_kbit_training then freezes the base, casts the
remaining 16-bit weights (embeddings, norms, head) to float32 and makes the inputs require grad for checkpointing.
Deviation from TRL: a 4/8-bit load without use_peft is refused (TRL leaves it to fail later in the optimizer).
"""
from __future__ import annotations

import importlib.util

from preflab.errors import ConfigError

QUANT_TYPES = ("nf4", "fp4")
QUANT_TASKS = ("dpo", "sft")  # the tasks whose models come from preflab.models.load.load_models
BLOCK = 64          # bitsandbytes 4-bit block size (weights per absmax constant)
NESTED_BLOCK = 256  # blocks per float32 constant under double quantization


def quantization_bits(cfg) -> int | None:
    return 4 if getattr(cfg, "load_in_4bit", False) else 8 if getattr(cfg, "load_in_8bit", False) else None


def compute_dtype(cfg) -> str:
    """The 4-bit compute (and storage) dtype: bnb_4bit_compute_dtype, else load_dtype, else bfloat16."""
    if getattr(cfg, "bnb_4bit_compute_dtype", None):
        return cfg.bnb_4bit_compute_dtype
    return cfg.load_dtype if cfg.load_dtype in ("float32", "bfloat16", "float16") else "bfloat16"


def quantization_kwargs(cfg) -> dict | None:
    """The arguments of transformers.BitsAndBytesConfig for cfg (None without load_in_4bit / load_in_8bit)."""
    import torch

    bits = quantization_bits(cfg)
    if bits == 4:
        dtype = getattr(torch, compute_dtype(cfg))
        return {"load_in_4bit": True, "bnb_4bit_compute_dtype": dtype, "bnb_4bit_quant_type": cfg.bnb_4bit_quant_type,
                "bnb_4bit_use_double_quant": bool(cfg.use_bnb_nested_quant), "bnb_4bit_quant_storage": dtype}
    if bits == 8:
        return {"load_in_8bit": True}
    return None


def quantization_config(cfg):
    """transformers.BitsAndBytesConfig(**quantization_kwargs(cfg)), or None."""
    kwargs = quantization_kwargs(cfg)
    if kwargs is None:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**kwargs)


def quantization_conflicts(cfg) -> list[str]:
    """One line per config problem of the quantization options (no machine checks)."""
    out = []
    bits = quantization_bits(cfg)
    if cfg.load_in_4bit and cfg.load_in_8bit:
        out.append("load_in_4bit and load_in_8bit are both set; choose one.")
    if bits is None:
        given = [k for k, default in (("bnb_4bit_quant_type", "nf4"), ("use_bnb_nested_quant", False),
                                      ("bnb_4bit_compute_dtype", None)) if getattr(cfg, k) != default]
        if given:
            out.append(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with load_in_4bit: true "
                       f"(the 4-bit quantization's settings); set load_in_4bit: true or remove "
                       f"{'it' if len(given) == 1 else 'them'}.")
        return out
    name = f"load_in_{bits}bit"
    if bits == 8:
        given = [k for k, default in (("bnb_4bit_quant_type", "nf4"), ("use_bnb_nested_quant", False),
                                      ("bnb_4bit_compute_dtype", None)) if getattr(cfg, k) != default]
        if given:
            out.append(f"{', '.join(given)} apply to load_in_4bit, not load_in_8bit; remove them.")
    if not cfg.use_peft:
        out.append(f"{name}: true loads the base quantized through bitsandbytes (QLoRA); quantized weights cannot be "
                   "trained themselves, so it needs LoRA adapters: set use_peft: true.")
    if cfg.task not in QUANT_TASKS:
        out.append(f"{name} applies to task: {' | '.join(QUANT_TASKS)}, not task: {cfg.task}.")
    if str(cfg.model_name_or_path).startswith("builtin:"):
        out.append(f"{name}: the builtin models are built in memory, not loaded by from_pretrained, so they cannot "
                   "be quantized; save one with save_pretrained and give its directory as model_name_or_path.")
    return out


def check_quantization_machine(cfg) -> None:
    """Before anything loads: bitsandbytes quantization needs a CUDA GPU and the bitsandbytes package."""
    bits = quantization_bits(cfg)
    if bits is None:
        return
    import torch

    name = f"load_in_{bits}bit"
    if cfg.use_cpu or not torch.cuda.is_available():
        where = "use_cpu: true is set" if cfg.use_cpu else "no CUDA GPU is visible (torch.cuda.is_available() is false)"
        raise ConfigError(f"{name}: bitsandbytes {bits}-bit weights need a CUDA GPU, and {where}. On this machine "
                          "remove it and train LoRA on a 16-bit base (use_peft: true, load_dtype: bfloat16), or run "
                          "on a GPU machine.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{name}: the bitsandbytes package is not installed; pip install bitsandbytes (or "
                          "pip install 'preflab[qlora]'), or remove it.")


def prepare_quantized(model, cfg):
    """peft's prepare_model_for_kbit_training (the base frozen, 16-bit weights cast to float32, input grads for
    checkpointing), checkpointing with the run's gradient_checkpointing and its kwargs."""
    from peft import prepare_model_for_kbit_training

    from preflab.checkpointing_options import checkpoint_kwargs

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                           gradient_checkpointing_kwargs=checkpoint_kwargs(cfg))


def quantized_weight_bytes(model, cfg) -> float:
    """Bytes of `model`'s weights (a meta model is enough) loaded as cfg asks and prepared for training: every
    Linear but the output head quantized (4-bit: 1/2 byte per weight plus a float32 absmax per 64 weights, or with
    double quantization one byte per 64 weights plus a float32 per 64 x 256; 8-bit: 1 byte per weight plus a float32
    scale per output row); every other parameter (embeddings, head, norms, biases) in float32 after
    prepare_model_for_kbit_training."""
    from torch import nn

    bits = quantization_bits(cfg)
    head = model.get_output_embeddings()
    quantized, rest = 0.0, 0
    seen = set()
    for module in model.modules():
        if isinstance(module, nn.Linear) and module is not head:
            n = module.weight.numel()
            seen.add(id(module.weight))
            if bits == 4:
                constants = n / BLOCK * (1 + 4 / NESTED_BLOCK) if cfg.use_bnb_nested_quant else n / BLOCK * 4
                quantized += n / 2 + constants
            else:
                quantized += n + module.out_features * 4
    for p in model.parameters():
        if id(p) not in seen:
            rest += p.numel()
    return quantized + rest * 4
