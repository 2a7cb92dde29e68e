"""Loading tokenizers, policies, references and LoRA adapters. Safetensors only unless the user allows pickle.

Model names: a hub name ("Qwen/Qwen2.5-0.5B-Instruct"), a local directory saved by transformers, or a builtin
tiny random model ("builtin:tiny-llama", "builtin:tiny-qwen2", "builtin:tiny-gpt2") that needs no network.
Remote code runs only with trust_remote_code=true.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from preflab.errors import ConfigError, UnsafeLoadError

BUILTIN = {"builtin:tiny-llama": "llama", "builtin:tiny-qwen2": "qwen2", "builtin:tiny-gpt2": "gpt2"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin")  # never loaded as weights
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_weights_safe(name: str, allow_pickle: bool) -> None:
    """A local directory must hold .safetensors weights; pickle-only weights need allow_pickle=true."""
    path = Path(name)
    if not path.is_dir():
        return
    pickles = pickle_weights_to_load(path)
    if pickles and not allow_pickle:
        raise UnsafeLoadError(
            f"{name} would load pickle weights ({', '.join(sorted(pickles)[:3])}); loading them can run arbitrary "
            "code. Convert them to safetensors, or set allow_pickle=true if you trust the files."
        )


def pickle_weights_to_load(folder: Path, _seen: frozenset = frozenset()) -> list[str]:
    """The pickle files that loading `folder` would read, checked where they are loaded from (its top level):
    - adapter weights: with adapter_config.json, adapter_model.bin & co. unless adapter_model.safetensors exists;
    - model weights: pickle weight files unless model*.safetensors exists (a .safetensors file with another name
      or in a subfolder does not count); training state (optimizer.pt, rng_state.pth, ...) is not weights;
    - the base model of an adapter, when adapter_config.json names a local folder."""
    def is_pickle(n: str) -> bool:
        return n.endswith(PICKLE_SUFFIXES) and n not in TRAINING_STATE and not n.startswith("rng_state")

    names = {p.name for p in folder.iterdir() if p.is_file()}
    out = []
    adapter = "adapter_config.json" in names
    if adapter and "adapter_model.safetensors" not in names:
        out += sorted(n for n in names if n.startswith("adapter_model") and is_pickle(n))
    if "config.json" in names or not adapter:
        has_model = any(n.startswith("model") and n.endswith(".safetensors") for n in names)
        if not has_model:
            out += sorted(n for n in names if is_pickle(n) and not n.startswith("adapter_model"))
    if adapter:
        try:
            base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            base = None
        base_dir = Path(base).resolve() if isinstance(base, str) and base else None  # as transformers resolves it
        if base_dir is not None and base_dir.is_dir() and base_dir not in _seen and base_dir != folder.resolve():
            out += [f"{base}/{n}" for n in pickle_weights_to_load(base_dir, _seen | {folder.resolve()})]
    return out


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    if name in BUILTIN:
        from preflab.models.tiny import tiny_tokenizer

        return tiny_tokenizer("bytelevel")
    tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:  # TRL's convention: a missing pad token becomes EOS
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name: str, dtype: str = "float32", trust_remote_code: bool = False, allow_pickle: bool = False,
                   tokenizer=None, seed: int = 0) -> nn.Module:
    """A transformers causal LM in `dtype` (training keeps float32 master weights; mixed precision is autocast)."""
    if not name:
        raise ConfigError("model_name_or_path is empty; give a hub name, a local directory or builtin:tiny-llama.")
    if name in BUILTIN:
        from preflab.models.tiny import tiny_causal_lm

        return tiny_causal_lm(tokenizer, arch=BUILTIN[name], seed=seed)
    from transformers import AutoModelForCausalLM

    check_weights_safe(name, allow_pickle)
    return AutoModelForCausalLM.from_pretrained(
        name, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=None if allow_pickle else True,
    )


def disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def add_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def frozen_copy(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def load_models(cfg, tokenizer):
    """(policy, reference or None). reference is None for LoRA (adapters disabled) or reference-free objectives."""
    policy = load_causal_lm(cfg.model_name_or_path, "float32", cfg.trust_remote_code, cfg.allow_pickle, tokenizer,
                            seed=cfg.seed)
    if cfg.disable_dropout:
        disable_dropout(policy)
    if cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.config.use_cache = False
    needs_reference = cfg.objective().needs_reference
    ref = None
    if needs_reference and cfg.ref_model_name_or_path:
        ref = load_causal_lm(cfg.ref_model_name_or_path, "float32", cfg.trust_remote_code, cfg.allow_pickle,
                             tokenizer, seed=cfg.seed)
        ref.requires_grad_(False).eval()
    elif needs_reference and not cfg.use_peft:
        ref = frozen_copy(policy)
    if cfg.use_peft:
        policy = add_lora(policy, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    return policy, ref
