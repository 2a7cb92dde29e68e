"""Loading tokenizers, policies, references and LoRA adapters. Safetensors only unless the user allows pickle.

Model names: a hub name ("Qwen/Qwen2.5-0.5B-Instruct"), a local directory saved by transformers, or a builtin
tiny random model ("builtin:tiny-llama", "builtin:tiny-qwen2", "builtin:tiny-gpt2") that needs no network.
Remote code runs only with trust_remote_code=true.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from preflab.errors import ConfigError, UnsafeLoadError, nearest
from preflab.hub import failure_reason, offline
from preflab.models.builtin_names import BUILTIN, builtin_models  # noqa: F401  (public names of this module)
from preflab.models.dropout import disable_dropout, disable_dropout_of  # noqa: F401  (public names of this module)
from preflab.runlog import is_main_process

BUILTIN_POSITIONS = 512  # max_positions of preflab.models.tiny.tiny_causal_lm
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin")  # never loaded as weights
# words in the names of the files a saved tokenizer is read from (tokenizer.json, tokenizer_config.json,
# tokenizer.model, special_tokens_map.json, vocab.json, vocab.txt, merges.txt, spiece.model, qwen.tiktoken, ...)
TOKEN_WORDS = ("token", "vocab", "spiece", "sentencepiece", "merges")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# how a saved reward model says what it is (preflab.reward_models.heads writes them): its head's description in
# config.json, and the file of a backbone without a transformers sequence-classification class
REWARD_CONFIG_KEY = "preflab_reward"
REWARD_FALLBACK_FILE = "preflab_reward_model.json"


def check_weights_safe(name: str, allow_pickle: bool) -> None:
    """A local directory must hold .safetensors weights; pickle-only weights need allow_pickle=true. And its final
    model save must have finished (preflab.final_save.check_final_model_complete): every loader of a local folder
    (a policy, reference, reward model, VLM, pipeline; `preflab eval RUN`) calls this first."""
    from preflab.final_save import check_final_model_complete

    path = Path(name).expanduser()
    if not path.is_dir():
        return
    check_final_model_complete(path)
    pickles = pickle_weights_to_load(path)
    if pickles and not allow_pickle:
        raise UnsafeLoadError(
            f"{name} would load pickle weights ({', '.join(sorted(pickles)[:3])}); loading them can run arbitrary "
            "code. Convert them to safetensors where you trust them (AutoModelForCausalLM.from_pretrained(DIR)"
            ".save_pretrained(DIR) writes model.safetensors beside them), or set allow_pickle=true (`preflab eval`: "
            "--allow-pickle) if you trust the files."
        )


def check_remote_code(name: str, trust_remote_code: bool, option: str = "model_name_or_path") -> None:
    """A local model folder whose config.json maps its classes to code shipped in the folder (auto_map) and whose
    model_type transformers does not know can only load by running that code: refused, naming the files, unless
    trust_remote_code (transformers' own refusal comes only when the model loads, after the data is read)."""
    config = Path(name).expanduser() / "config.json"
    if trust_remote_code or not config.is_file():
        return
    try:
        raw = json.loads(config.read_text())
    except (OSError, ValueError):
        return  # transformers says what is wrong with the file when it loads it
    auto_map = raw.get("auto_map") if isinstance(raw, dict) else None
    if not isinstance(auto_map, dict) or not auto_map:
        return
    from transformers import CONFIG_MAPPING

    if raw.get("model_type") in CONFIG_MAPPING:
        return  # transformers' own classes load it; the shipped code is not run
    modules = sorted({str(ref).split("--")[-1].split(".")[0] + ".py" for ref in auto_map.values()
                      if isinstance(ref, str)})
    raise ConfigError(
        f"{option}={name!r} needs the model code shipped in the folder ({', '.join(modules) or 'auto_map'}, named by "
        f"auto_map in {config}; model_type {raw.get('model_type')!r} is not one transformers knows). preflab runs "
        "such code only with trust_remote_code: true (`preflab eval`: --trust-remote-code); read those files first, and "
        "set it only if you trust them.")


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




def _offline() -> bool:
    return offline("TRANSFORMERS_OFFLINE")


def _looks_like_path(name: str) -> bool:
    return (name.startswith((".", "/", "~")) or name.endswith(("/", os.sep)) or name.count("/") > 1
            or "\\" in name or name.endswith((".safetensors", ".bin", ".json")))


def check_model_name(name: str, option: str = "model_name_or_path") -> None:
    """Refuse, before anything is loaded, a model name that cannot load, naming `option` and what was tried: an
    empty name, an unknown builtin, a local path that does not exist, or a hub name that is neither in the local
    hub cache nor reachable (one quick request, no retries; none at all when HF_HUB_OFFLINE is set)."""
    if not name:
        raise ConfigError(f"{option} is empty; give a hub name, a local directory or builtin:tiny-llama.")
    if name.startswith("builtin:"):
        known = builtin_models()
        if name not in known:
            raise ConfigError(f"{option}={name!r} is not a built-in model; the built-ins are "
                              f"{', '.join(known)}.{nearest(name, known)}")
        return
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{option}={name!r} is a file; give the directory that holds config.json and the "
                              "weights.")
        return
    if _looks_like_path(name):
        raise ConfigError(f"{option}={name!r}: no such local directory (tried {path.resolve()}); it is written as a "
                          "path, so it was not looked up on the hub.")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # in the local hub cache
    taken = (f"{option}={name!r} was taken as a hub name: it is no local directory (tried {path.resolve()}) and is "
             "not in the local hub cache")
    if _offline():
        raise ConfigError(f"{taken}, and HF_HUB_OFFLINE is set, so the hub was not asked. Download it first "
                          f"(hf download {name}) or give the local directory (a path starting with ./ or / is never "
                          "taken as a hub name).")
    from huggingface_hub import model_info

    try:
        model_info(name, timeout=10)
    except Exception as err:  # noqa: BLE001 - any failure here means the name cannot be loaded
        raise ConfigError(f"{taken}, and {hub_lookup_failure(err, name)}") from err


def hub_lookup_failure(err: BaseException, name: str) -> str:
    """Why a hub lookup failed, as the end of a sentence: no such repository, another answer of the hub, or no
    answer at all (no network)."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    reason = f"{type(err).__name__}: {failure_reason(err)}"
    if isinstance(err, RepositoryNotFoundError):
        return (f"the hub has no model of that name ({reason}); check the name (or log in with `hf auth login` if "
                "it is private), or give a local directory.")
    if isinstance(err, HfHubHTTPError):
        return f"the hub lookup failed ({reason}); give a local directory, or try again later."
    return (f"the hub could not be reached ({reason}): no network? Download the model where there is one "
            f"(hf download {name}) or give a local directory; HF_HUB_OFFLINE=1 skips the lookup.")


def max_positions(name_or_model, trust_remote_code: bool = False) -> int | None:
    """The number of positions the model's position embedding (or RoPE setting) allows, or None if unknown."""
    if isinstance(name_or_model, str):
        if name_or_model in BUILTIN:
            return BUILTIN_POSITIONS
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(name_or_model, trust_remote_code=trust_remote_code)
        except Exception:  # noqa: BLE001 - loading the model reports it with the option name
            return None
    else:
        from preflab.models.attention import unwrap

        config = getattr(unwrap(name_or_model), "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


MODEL_POSITIONS = "model_positions"  # cfg's attribute (not an option) and the checkpoint's key: the cap applied


def cap_max_length(cfg, positions: int | None, name: str | None = None) -> None:
    """max_length above the model's positions would index past its position table mid-training: cap it, with a
    note (issue 18.15). `name`: the model the positions are of (default: the policy). The smallest positions seen
    is kept on cfg as MODEL_POSITIONS (not an option: cfg.to_dict() leaves it out), which every checkpoint records,
    so a resume caps its own max_length the same way before comparing configs (preflab.resume_check): the saved
    config holds the capped value, the resumed run's config the user's until its model is read."""
    if positions is None:
        return
    known = getattr(cfg, MODEL_POSITIONS, None)
    setattr(cfg, MODEL_POSITIONS, positions if known is None else min(known, positions))
    if cfg.max_length is not None and cfg.max_length <= positions:
        return
    given = "no max_length (no limit)" if cfg.max_length is None else f"max_length={cfg.max_length}"
    if is_main_process():  # once, not once per process of `accelerate launch`
        print(f"preflab: note: {given} is above the {positions} positions of {name or cfg.model_name_or_path}; "
              f"using max_length={positions}.")
    cfg.max_length = positions


def check_not_a_reward_model(name: str, option: str = "model_name_or_path") -> None:
    """A local reward model (config.json with only *ForSequenceClassification architectures, or preflab's head
    description without a causal LM architecture; or a preflab head on a bare backbone) given where a causal LM loads
    is refused, naming `option`: AutoModelForCausalLM.from_pretrained built its backbone with a fresh random LM head
    (and dropped the score head), and a DPO or SFT run then trained from noise without a word. A Themis reward model
    is a causal LM with its trained LM head (and a value head beside it): it loads as one."""
    folder = Path(name).expanduser()
    config = folder / "config.json"
    try:
        data = json.loads(config.read_text()) if config.is_file() else {}
    except (OSError, ValueError):
        return  # the loader says what is wrong with the file
    archs = [str(a) for a in data.get("architectures") or []]
    causal = any(a.endswith("ForCausalLM") for a in archs)
    if not ((REWARD_CONFIG_KEY in data and not causal) or (folder / REWARD_FALLBACK_FILE).is_file()
            or (archs and all(a.endswith("ForSequenceClassification") for a in archs))):
        return
    raise ConfigError(f"{option}={name!r} is a reward model ({', '.join(archs) or 'a preflab reward head'}), not a "
                      "causal language model: loaded as one, its score head is dropped and its LM head starts "
                      "random. Give a policy (e.g. the model the reward model was trained from, its config.yaml's "
                      "model_name_or_path); a reward model scores as a judge (reward_funcs, `preflab eval "
                      "--reward-model`) or is evaluated with `preflab eval DIR --task reward`.")


def load_tokenizer(name: str, trust_remote_code: bool = False, option: str = "model_name_or_path"):
    from transformers import AutoTokenizer

    if name in BUILTIN:
        from preflab.models.tiny import tiny_tokenizer

        return tiny_tokenizer("bytelevel")
    check_model_name(name, option)
    folder = Path(name).expanduser()
    if (folder / "trainer_state.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise ConfigError(  # AutoTokenizer's own error here talks of sentencepiece and slow tokenizers
            f"{option}={name!r} is a checkpoint of the preflab run {str(folder.parent)!r} (trainer_state.json, the "
            "trained weights only, no tokenizer or model config), not a model folder. To continue that run, set "
            f"resume_from_checkpoint: {name}; to start from a finished run, give its output_dir; `preflab eval "
            f"{name}` evaluates the checkpoint.")
    if folder.is_dir() and not _has_tokenizer_files(folder):
        _refuse_no_model(folder, name, option)
        raise ConfigError(  # AutoTokenizer's own error here talks of sentencepiece and slow tokenizers
            f"{option}={name!r} holds no tokenizer files (tokenizer.json, tokenizer_config.json, vocab.json, ...); "
            "model.save_pretrained saves no tokenizer. Save the tokenizer of the model it was made from into the "
            f"folder too, e.g. AutoTokenizer.from_pretrained(<that model>).save_pretrained({name!r}).")
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{option}={name!r}: the tokenizer could not be loaded ({_first_line(err)}).") from err
    if tok.pad_token is None:  # TRL's convention: a missing pad token becomes EOS
        tok.pad_token = tok.eos_token
    return tok


def _refuse_no_model(folder: Path, name: str, option: str) -> None:
    """A folder without config.json (nor adapter_config.json: an adapter loads over its base) is no transformers model
    folder: refused listing what it holds, where transformers said "Unrecognized model ... Should have a `model_type`
    key in its config.json" of a config.json that is not there. A folder whose final model save did not finish is
    refused as that first (preflab.final_save.check_final_model_complete: a first save killed leaves no config.json)."""
    from preflab.final_save import check_final_model_complete

    check_final_model_complete(folder)
    if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
        return
    held = sorted(p.name for p in folder.iterdir())
    shown = f"it holds {', '.join(held[:5])}{', ...' if len(held) > 5 else ''}" if held else "it is empty"
    raise ConfigError(f"{option}={name!r} is no model folder: it has no config.json ({shown}). Give the folder that "
                      "model.save_pretrained and tokenizer.save_pretrained wrote (config.json, *.safetensors, the "
                      "tokenizer files).")


def _has_tokenizer_files(folder: Path) -> bool:
    """Whether `folder` holds a file a tokenizer could load from (a name with one of TOKEN_WORDS): only a folder
    with none is refused, so a tokenizer in a form preflab does not list still reaches AutoTokenizer."""
    return any(p.is_file() and any(w in p.name.lower() for w in TOKEN_WORDS) for p in folder.iterdir())


def _first_line(err: Exception) -> str:
    """The library's message on one line (at most 500 characters), after its type."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:500]}" if text else type(err).__name__


def builtin_init_kwargs_conflicts(cfg) -> list[str]:
    """One line per builtin model given from_pretrained arguments it would not get: a `builtin:` model is built in
    code from a config (preflab.models.tiny, tiny_vlm), so of TRL's model_init_kwargs only the dtype applies
    (load_causal_lm casts to it); attn_implementation, revision, quantization_config, ... were accepted and
    dropped."""
    out = []
    for name_option, kwargs_option in (("model_name_or_path", "model_init_kwargs"),
                                       ("ref_model_name_or_path", "ref_model_init_kwargs")):
        name, kwargs = getattr(cfg, name_option, None), getattr(cfg, kwargs_option, None) or {}
        dropped = sorted(k for k in kwargs if k not in ("dtype", "torch_dtype"))
        if isinstance(name, str) and name.startswith("builtin:") and dropped:
            out.append(f"{kwargs_option} {dropped} would not reach {name_option}={name!r}: a builtin model is built "
                       "in code from a config, not loaded with from_pretrained, and takes only a dtype (load_dtype). "
                       f"Remove them, or give {name_option} a saved model (a directory or a hub name).")
    return out


def _init_kwargs(kwargs: dict | None, dtype: str) -> dict:
    """from_pretrained arguments: TRL's model_init_kwargs with torch_dtype spelt dtype, as a torch dtype."""
    out = dict(kwargs or {})
    if "torch_dtype" in out:
        out["dtype"] = out.pop("torch_dtype")
    value = out.get("dtype", dtype)
    out["dtype"] = value if value == "auto" or not isinstance(value, str) else DTYPES[value]
    return out


def load_causal_lm(name: str, dtype: str = "float32", trust_remote_code: bool = False, allow_pickle: bool = False,
                   tokenizer=None, seed: int = 0, option: str = "model_name_or_path",
                   init_kwargs: dict | None = None, quantization=None) -> nn.Module:
    """A transformers causal LM with its weights in `dtype` (default float32: mixed precision is autocast; a lower
    dtype is TRL's torch_dtype, weights loaded and trained in it). Errors name `option` and what was tried.
    quantization: a transformers BitsAndBytesConfig (preflab.models.quantize); the whole model is then placed on
    this process's GPU (TRL's get_kbit_device_map)."""
    from preflab.models.given import mark_loaded

    check_model_name(name, option)
    kwargs = _init_kwargs(init_kwargs, dtype)
    if quantization is not None:
        from accelerate import PartialState

        kwargs.update(quantization_config=quantization, device_map={"": PartialState().local_process_index})
    if name in BUILTIN:
        from preflab.models.tiny import tiny_causal_lm

        model = tiny_causal_lm(tokenizer, arch=BUILTIN[name], seed=seed)
        return mark_loaded(model if kwargs["dtype"] in ("auto", torch.float32) else model.to(kwargs["dtype"]))
    from transformers import AutoModelForCausalLM

    from safetensors import SafetensorError

    if Path(name).is_dir():
        _refuse_no_model(Path(name), name, option)
    check_weights_safe(name, allow_pickle)
    check_not_a_reward_model(name, option)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            name, trust_remote_code=trust_remote_code, use_safetensors=None if allow_pickle else True,
            output_loading_info=True, **kwargs)
    except SafetensorError as err:  # a truncated or damaged .safetensors file: a traceback from the Rust reader
        raise ConfigError(f"{option}={name!r} could not be loaded: a weights file is damaged or incomplete "
                          f"({_first_line(err)}); save or download the model again.") from err
    except (OSError, ValueError) as err:
        raise ConfigError(f"{option}={name!r} could not be loaded ({_first_line(err)}).") from err
    check_loading_info(info, name, option)
    return mark_loaded(model)


def causal_lm_architecture(name: str, tokenizer=None, trust_remote_code: bool = False,
                           init_kwargs: dict | None = None) -> dict | None:
    """The transformers config, as a JSON dict (preflab.checkpoint.model_architecture's form), of the model
    load_causal_lm(name, tokenizer=tokenizer, init_kwargs=init_kwargs) builds, read without building it or loading
    weights: a builtin's tiny config for `tokenizer`; a folder's or a hub model's config.json (AutoConfig, with
    init_kwargs' config options applied as from_pretrained applies them). None where it cannot be read here (a hub
    name offline, remote code not allowed, no config.json): load_causal_lm, which the caller then runs, says why."""
    if name in BUILTIN:
        from preflab.models.tiny import tiny_causal_lm_config

        config, _ = tiny_causal_lm_config(tokenizer, arch=BUILTIN[name])
        return json.loads(config.to_json_string(use_diff=False))
    from transformers import AutoConfig

    options = {k: v for k, v in (init_kwargs or {}).items() if k not in ("dtype", "torch_dtype")}
    try:
        config, _ = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, return_unused_kwargs=True,
                                               **options)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return json.loads(config.to_json_string(use_diff=False))


def check_loading_info(info: dict, name: str, option: str) -> None:
    """A ConfigError naming the model and the keys when from_pretrained reports weights missing from the files (it
    leaves those parameters at random initial values, with a log line only) or weights of another shape: the files
    are not this architecture's (a truncated or edited model.safetensors, a config.json of another model). Weights
    the model has no place for (unexpected keys: a value head or extra prediction layers saved beside the language
    model) change no parameter the run uses, so they get a note naming them rather than a refusal."""
    problems = {k: sorted(map(str, info.get(k) or ())) for k in ("missing_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        said = "; ".join(f"{k.replace('_', ' ')}: {len(v)}, e.g. {v[0]}" for k, v in problems.items())
        raise ConfigError(f"{option}={name!r}: its weight files do not match its config.json ({said}); the model "
                          "would run with parameters at random values or dropped. Save or download the model again, "
                          "or restore the config.json its weights were saved with.")
    unused = sorted(map(str, info.get("unexpected_keys") or ()))
    if unused and is_main_process():
        print(f"preflab: note: {option}={name!r}: its weight files hold {len(unused)} tensor(s) the model has no "
              f"place for (e.g. {unused[0]}); they are not loaded (a value head or extra layers saved beside the "
              "language model). If the model should use them, its config.json is not the one they were saved with.",
              flush=True)


def check_lora_targets(model: nn.Module, target_modules) -> None:
    """Every name in lora_target_modules must match a module of the model (peft matches a name as a suffix of a
    module path); otherwise a ConfigError names the linear modules the model has."""
    if target_modules in (None, "all-linear"):
        return
    paths = [name for name, _ in model.named_modules() if name]
    if isinstance(target_modules, str):  # peft: a string is a regex that must match a whole module path
        import re

        missing = [] if any(re.fullmatch(target_modules, p) for p in paths) else [target_modules]
    else:
        missing = [t for t in target_modules if not any(p == t or p.endswith("." + t) for p in paths)]
    if missing:
        linear = sorted({_module_suffix(name) for name, m in model.named_modules()
                         if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"})
        raise ConfigError(f"lora_target_modules {missing} match no module of the model; its linear modules are "
                          f"{linear} (or use all-linear).{_comma_list_hint('lora_target_modules', missing)}")


def _comma_list_hint(option: str, missing) -> str:
    """' ... give a list ...' when a name that matched nothing holds commas: `lora_target_modules=q_proj,v_proj` on
    the command line (TRL's CLI takes `--lora_target_modules q_proj v_proj`) is the one name 'q_proj,v_proj' (for
    peft a string is one regex); '' otherwise."""
    joined = next((m for m in missing if isinstance(m, str) and "," in m), None)
    if joined is None:
        return ""
    names = [n.strip() for n in joined.split(",") if n.strip()]
    return (f" {joined!r} is one name: for a list of modules write {option}=[{','.join(names)}] on the command line "
            f"(YAML: {option}: [{', '.join(names)}]).")


def _module_suffix(path: str) -> str:
    """A module path's last name, with its parent's when the last is a list index ('attn1.to_out.0' -> 'to_out.0',
    a name lora_target_modules can take; '0' alone names every first element of every list)."""
    parts = path.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def lora_extras(cfg) -> dict:
    """add_lora's keyword options from a config (a TrainConfig, ModelPartOptions or a run's saved config dict):
    TRL ModelConfig's use_rslora, use_dora and lora_modules_to_save (absent: their defaults, off)."""
    get = cfg.get if isinstance(cfg, dict) else lambda key, default=None: getattr(cfg, key, default)
    return {"use_rslora": bool(get("use_rslora", False)), "use_dora": bool(get("use_dora", False)),
            "modules_to_save": list(get("lora_modules_to_save", None) or []) or None}


def check_modules_to_save(model: nn.Module, names) -> None:
    """Each lora_modules_to_save name must name a module of the model (its path or a suffix of it, as PEFT matches
    them): PEFT leaves a name that matches nothing without a word, and the module would stay frozen."""
    paths = [name for name, _ in model.named_modules() if name]
    missing = [n for n in names or [] if not any(p == n or p.endswith("." + n) for p in paths)]
    if missing:
        tops = sorted({_module_suffix(p) for p, m in model.named_modules() if p and not list(m.children())})
        raise ConfigError(f"lora_modules_to_save {missing} match no module of the model; its modules without "
                          f"children are {tops[:40]}.{_comma_list_hint('lora_modules_to_save', missing)}")


def add_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules, *, use_rslora: bool = False,
             use_dora: bool = False, modules_to_save: list | None = None) -> nn.Module:
    """PEFT LoRA adapters (task CAUSAL_LM) of rank r on target_modules, scale alpha / r (use_rslora: alpha /
    sqrt(r), Kalajdzievski 2023), with DoRA's magnitude vectors (use_dora, Liu et al. 2024), and modules_to_save
    trained whole beside them (PEFT keeps the original module for the adapters-off reference)."""
    from peft import LoraConfig, get_peft_model

    check_lora_targets(model, target_modules)
    check_modules_to_save(model, modules_to_save)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM", use_rslora=use_rslora, use_dora=use_dora,
                        modules_to_save=modules_to_save)
    peft_model = get_peft_model(model, config)
    absolute_adapter_base(peft_model.peft_config["default"])
    return peft_model


def absolute_adapter_base(peft_config) -> None:
    """A base model loaded from a relative folder (model_name_or_path=models/base, run from the folder above) is
    recorded in adapter_config.json's base_model_name_or_path as written: the model card's peft loading lines (and
    `preflab eval` of the adapters without their config.yaml) then worked only from that working directory, and
    elsewhere peft asked the hub for a repo named 'models/base'. The folder is recorded as an absolute path; hub
    names, builtin names and absolute paths are left as they are."""
    base = getattr(peft_config, "base_model_name_or_path", None)
    if isinstance(base, str) and base and not Path(base).is_absolute() and Path(base).is_dir():
        peft_config.base_model_name_or_path = str(Path(base).resolve())


def frozen_copy(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def reference_dtype(cfg) -> str:
    """The reference's weight dtype: ref_load_dtype; unset, bfloat16 when the run trains on a CUDA GPU (the
    reference only scores, without gradient, so 16-bit halves its memory), else the policy's load dtype."""
    if getattr(cfg, "ref_load_dtype", None):
        return cfg.ref_load_dtype
    on_gpu = not cfg.use_cpu and torch.cuda.is_available()
    return "bfloat16" if on_gpu and torch.cuda.is_bf16_supported() else (cfg.load_dtype or "float32")


def reference_source(cfg) -> tuple[str | None, str]:
    """(the name of the frozen model the run loads beside the policy, the option that names it): the teacher
    (teacher_model_name_or_path) of a task: sft distillation, else ref_model_name_or_path."""
    teacher = getattr(cfg, "teacher_model_name_or_path", None)
    if teacher and getattr(cfg, "task", None) == "sft":
        return teacher, "teacher_model_name_or_path"
    return cfg.ref_model_name_or_path, "ref_model_name_or_path"


def reference_positions(cfg, ref=None) -> int | None:
    """The positions of the reference given by ref_model_name_or_path or the teacher (the in-memory `ref` when
    passed), or None when the reference is the policy itself or none is used."""
    name = reference_source(cfg)[0]
    if ref is None and not (name and cfg.objective().needs_reference):
        return None
    return max_positions(ref if ref is not None else name, cfg.trust_remote_code)


def check_reference_tokens(name: str, ref, policy, tokenizer, option: str = "ref_model_name_or_path") -> None:
    """The reference scores the policy's token ids: refuse a reference with fewer token embeddings than the policy
    (an IndexError mid-run) or whose own tokenizer, saved beside it, gives a token the policy can score another id
    (the run would train against log-probs of the wrong tokens without any error). option: the setting that named it
    (a distillation's teacher_model_name_or_path, reference_source), which the errors name."""
    what = "teacher" if option == "teacher_model_name_or_path" else "reference"
    rows, policy_rows = ref.get_input_embeddings().num_embeddings, policy.get_input_embeddings().num_embeddings
    if rows < policy_rows:
        raise ConfigError(f"{option}={name!r} has {rows} token embeddings, the policy "
                          f"{policy_rows}; the {what} must share the policy's tokenizer (use the model the policy "
                          "was trained from).")
    path = Path(name).expanduser()
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        return  # no tokenizer saved with it (or a hub name / builtin): nothing to compare
    from transformers import AutoTokenizer

    try:
        own = AutoTokenizer.from_pretrained(str(path))
    except Exception:  # noqa: BLE001 - an unreadable tokenizer is not the reference's weights' problem
        return
    policy_vocab = tokenizer.get_vocab()
    clashes = [tok for tok, i in own.get_vocab().items() if policy_vocab.get(tok, i) != i
               and policy_vocab[tok] < policy_rows]
    if clashes:  # tokens only one side has (an added pad token), or ids the policy cannot embed, never reach a score
        raise ConfigError(f"{option}={name!r} has its own tokenizer, which gives {len(clashes)} tokens "
                          f"other ids than the policy's (e.g. {clashes[0]!r}: {own.get_vocab()[clashes[0]]} vs "
                          f"{policy_vocab[clashes[0]]}); the {what} would score other tokens than the policy. Use "
                          f"a {what} with the policy's tokenizer.")


def moe_aux_loss_note(model, trainer: str | None = None) -> str | None:
    """What preflab's online loop (task: online) says about a mixture-of-experts policy under `trainer`, one that adds
    no router loss, or None for a dense one (or a coefficient of 0).

    TRL 1.16's DPO, KTO, SFT, GRPO and RLOO trainers add `router_aux_loss_coef * aux_loss` (the router's
    load-balancing loss, Fedus et al. 2022, arXiv:2101.03961, Eq. 4; coefficient from the model config unless set) to
    the training loss of any model whose config declares `output_router_logits`; its OnlineDPOTrainer adds none.
    preflab adds it where TRL does: the offline trainer (tasks dpo, sft) and the online trainers TRL runs as its
    GRPOTrainer or RLOOTrainer (preflab.online.trainers.ROUTER_LOSS_TRAINERS). The other online trainers add none,
    as TRL's OnlineDPOTrainer, and this note says so once."""
    from preflab.models.moe import ROUTER_LOSS_TRAINERS, router_loss_coef, text_config

    coef = router_loss_coef(model)
    if coef is None:
        return None
    text = text_config(model)
    like = ("as TRL 1.16's OnlineDPOTrainer adds none" if trainer == "online_dpo" else
            "TRL 1.16 has no trainer of that name and its OnlineDPOTrainer adds none")
    return (f"{text.model_type} is a mixture-of-experts model (its config: router_aux_loss_coef={coef:g}); trainer "
            f"{trainer or 'online_dpo'} adds no router load-balancing loss, {like}: the loss here is the objective's "
            f"alone and the routers get no load-balancing gradient. The trainers {', '.join(ROUTER_LOSS_TRAINERS)} "
            "(TRL's GRPOTrainer; rloo its RLOOTrainer) and task: dpo and sft add it, as TRL does.")


def check_policy_not_adapter(name: str) -> None:
    """A LoRA adapter folder (adapter_config.json, no config.json) as the policy is refused: transformers loads it as
    its base with the adapter applied and every weight frozen, so use_peft: false trained nothing (an empty optimizer
    traceback) and use_peft: true stacked new adapters whose saved adapter_config names the bare base, not the
    model that was trained. As a reference (frozen) such a folder loads correctly."""
    folder = Path(name)
    if not ((folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()):
        return
    try:
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        base = None
    from preflab.models.run_config import run_config

    run_base = run_config(folder).get("model_name_or_path")
    head = (f"model_name_or_path={name!r} is a LoRA adapter folder (adapter_config.json over the base "
            f"{base or run_base!r}), not a full model: training it would train nothing (use_peft: false) or save new "
            "adapters over the bare base. Merge it into its base first, e.g. ")
    if run_base:  # a preflab LoRA run: its config.yaml names the base, built-in ones too (adapter_config.json: null)
        raise ConfigError(
            head + "python -c \"from preflab.eval.loading import load_for_eval; m, t = load_for_eval("
            f"'{name}'); m.save_pretrained('{name}-merged'); t.save_pretrained('{name}-merged')\" (the base its "
            f"config.yaml names, {run_base}, with the adapters merged, as `preflab eval` loads it), and give "
            f"model_name_or_path={name}-merged.")
    raise ConfigError(
        head + "python -c \"from peft import AutoPeftModelForCausalLM as M; "
        f"from transformers import AutoTokenizer as T; M.from_pretrained('{name}').merge_and_unload()"
        f".save_pretrained('{name}-merged'); T.from_pretrained('{name}').save_pretrained('{name}-merged')\", and "
        f"give model_name_or_path={name}-merged.")


def enable_gradient_checkpointing(policy, kwargs: dict | None = None) -> None:
    """transformers' gradient checkpointing on `policy` (under a PEFT or engine wrapper: its model), for a model
    given from Python as for a loaded one, with torch.utils.checkpoint's keyword arguments `kwargs` (the run's
    preflab.checkpointing_options.checkpoint_kwargs; None: non-reentrant, as TRL sets it); a model without it is
    refused (it would train without)."""
    from preflab.models.attention import unwrap

    base = unwrap(policy)
    if not callable(getattr(base, "gradient_checkpointing_enable", None)):
        raise ConfigError(f"gradient_checkpointing: the policy ({type(base).__name__}) has no "
                          "gradient_checkpointing_enable (not a transformers model), so it cannot recompute its "
                          "activations; remove gradient_checkpointing.")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or {"use_reentrant": False})


def policy_load_dtype(cfg) -> str:
    """The dtype load_models passes load_causal_lm for the run's policy: load_dtype (float32 when unset), or a
    quantized base's compute dtype (model_init_kwargs' own dtype, if any, overrides it there: _init_kwargs)."""
    from preflab.models.quantize import compute_dtype, quantization_config

    return compute_dtype(cfg) if quantization_config(cfg) is not None else cfg.load_dtype or "float32"


def load_named_reference(cfg, tokenizer, policy):
    """The frozen model the run names beside its policy (reference_source: a distillation's teacher, else
    ref_model_name_or_path), in reference_dtype, without gradients, in eval mode, its tokens checked against the
    policy's (check_reference_tokens); None when the run names none. load_models loads it so, and so does
    `preflab eval --task distill` beside the student it loaded (preflab.loops.distill_eval)."""
    ref_name, ref_option = reference_source(cfg)
    if not ref_name:
        return None
    ref = load_causal_lm(ref_name, reference_dtype(cfg), cfg.trust_remote_code, cfg.allow_pickle, tokenizer,
                         seed=cfg.seed, option=ref_option, init_kwargs=cfg.model_kwargs(ref=True))
    ref.requires_grad_(False).eval()
    check_reference_tokens(ref_name, ref, policy, tokenizer, ref_option)
    return ref


def load_models(cfg, tokenizer):
    """(policy, reference or None). reference is None for LoRA (adapters disabled) or reference-free objectives."""
    from preflab.models.quantize import check_quantization_machine, quantization_config

    dtype = policy_load_dtype(cfg)
    quantization = quantization_config(cfg)  # QLoRA: a 4/8-bit base (load_in_4bit / load_in_8bit)
    if quantization is not None:
        check_quantization_machine(cfg)
    check_policy_not_adapter(cfg.model_name_or_path)
    policy = load_causal_lm(cfg.model_name_or_path, dtype, cfg.trust_remote_code, cfg.allow_pickle, tokenizer,
                            seed=cfg.seed, init_kwargs=cfg.model_kwargs(), quantization=quantization)
    if cfg.disable_dropout:
        disable_dropout(policy)
    if cfg.gradient_checkpointing:
        from preflab.checkpointing_options import checkpoint_kwargs

        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs(cfg))
        policy.config.use_cache = False
    needs_reference = cfg.objective().needs_reference
    ref = None
    ref_name, ref_option = reference_source(cfg)  # a distillation's teacher is held as its reference
    if needs_reference and ref_name:
        ref = load_named_reference(cfg, tokenizer, policy)
    elif needs_reference and ref_option == "teacher_model_name_or_path":
        raise ConfigError("distillation needs teacher_model_name_or_path (the teacher model).")
    elif needs_reference and not cfg.use_peft:
        ref = frozen_copy(policy).to(DTYPES[reference_dtype(cfg)])  # frozen: no gradients, no optimizer state
    if quantization is not None:
        from preflab.models.quantize import prepare_quantized

        policy = prepare_quantized(policy, cfg)
    if cfg.use_peft:
        policy = add_lora(policy, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules,
                          **lora_extras(cfg))
    return policy, ref
