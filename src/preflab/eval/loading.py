"""Load what `preflab eval` evaluates: a trained model directory, a mid-run checkpoint, or a reference model.

Accepted forms (safetensors only, through preflab.models.load; pickle weights need allow_pickle):
    a final run directory       config.json + model.safetensors + tokenizer files (Trainer.save_model)
    a LoRA run directory        adapter_config.json + adapter weights; the base model is the run's
                                config.yaml model_name_or_path (builtin names included); adapters are merged
    checkpoint-<step>/          model.safetensors with the trainable parameters + trainer_state.json; the base is
                                rebuilt from the saved config and the parameters are loaded over it (a LoRA run's
                                checkpoint: adapters rebuilt from the config's lora_* options, loaded, merged)
    builtin:tiny-llama etc.     a builtin random model (seeded as in training: the run's `seed`, else TrainConfig's
                                default seed, as `preflab train` builds it; `preflab eval --seed` overrides: run_seed)
    builtin:demo-sft            the online demo runs' starting policy (the demo's SFT model for the run's `seed`,
                                built by the demo_sft the caller passes: preflab.demo.sft_model.demo_sft)
The tokenizer is the one saved beside the weights (or in the run directory above a checkpoint).
"""
from __future__ import annotations

from pathlib import Path

from preflab.checkpoint import numbered_checkpoints
from preflab.errors import ConfigError, PreflabError
from preflab.models.run_config import run_config, run_seed
from preflab.eval.run_files import tokenizer_near as _tokenizer_near
from preflab.models.builtin_names import BUILTIN, DEMO_SFT  # noqa: F401  (public names of this module)
from preflab.models.load import (causal_lm_architecture, check_remote_code, check_weights_safe, load_causal_lm,
                                 load_tokenizer)


def _demo_sft(demo_sft, seed, what: str):
    """(model, tokenizer) of builtin:demo-sft from the builder the caller passed (`what`: the load that needs it)."""
    if demo_sft is None:
        raise PreflabError(f"loading {what} needs the online demo's SFT model (builtin:demo-sft), which "
                           "preflab.demo.sft_model trains (a room above this loader): pass demo_sft="
                           "preflab.demo.sft_model.demo_sft to load_for_eval (as `preflab eval` does: "
                           "preflab.eval_cli.checkpoint.load_policy).")
    return demo_sft(int(seed))  # the caller's run_seed: never None


def run_reference(checkpoint: str) -> tuple[str, str] | None:
    """(reference, the config key naming it) for a preflab run directory or checkpoint: the run's
    ref_model_name_or_path, else its model_name_or_path (the starting policy, which the run trained against: a
    frozen copy of it, or for LoRA the base with adapters off). None where no saved config names a model (a bare
    model directory, a builtin name). A named reference that is neither a builtin name nor an existing directory
    is a ConfigError naming it (preflab eval loads local directories only)."""
    path = Path(checkpoint)
    cfg = run_config(path) if path.is_dir() else {}
    if cfg.get("task") in ("reward", "diffusion", "vlm"):
        return None  # not a text policy: load_for_eval says which command evaluates it
    for key in ("ref_model_name_or_path", "model_name_or_path"):
        name = cfg.get(key)
        if not name:
            continue
        name = str(name)
        if name in BUILTIN or name == DEMO_SFT or Path(name).is_dir():
            return name, key
        raise ConfigError(
            f"{checkpoint} was trained against the reference {key}={name!r} (from its saved config), which is not "
            "a directory here (moved, deleted, relative to another working directory, or a hub name: preflab eval "
            "loads local directories only). Pass --reference DIR (e.g. `hf download NAME --local-dir DIR`), or "
            "--no-reference for the policy-only metrics.")
    return None


def check_same_tokenizer(name: str, own, given) -> None:
    """`given` (the policy's tokenizer) scores the model `name` whose own tokenizer is `own`: they must map text to
    the same ids (same vocabulary and EOS, which ends every scored response), else the model would be scored on
    another model's token ids. None for `own` (no tokenizer saved with the model): nothing to compare."""
    if own is None or given is None or own is given:
        return
    if own.get_vocab() != given.get_vocab() or own.eos_token_id != given.eos_token_id:
        raise ConfigError(
            f"the reference {name} has another tokenizer than the policy ({len(own)} vs {len(given)} tokens, EOS id "
            f"{own.eos_token_id} vs {given.eos_token_id}, or different token ids): its log-probs of the same text "
            "would be read off the wrong token ids. Give a --reference that shares the policy's tokenizer (the "
            "model the run started from).")


def _own_tokenizer(path: Path, fallback_name: str | None, trust_remote_code: bool):
    """The tokenizer saved with a model (beside it or one folder up, else its base's), or None where none is."""
    try:
        return _tokenizer_near(path, fallback_name, trust_remote_code)
    except PreflabError:
        return None


def _base_name(cfg: dict, path: Path) -> str:
    """The base model of the LoRA adapter folder `path`: its run's model_name_or_path (config.yaml), else the
    base_model_name_or_path peft wrote in adapter_config.json when that is a local folder or a builtin name (an
    adapter saved by peft outside preflab; training takes such a folder as ref_model_name_or_path too)."""
    name = cfg.get("model_name_or_path")
    if name:
        return str(name)
    import json

    try:
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        base = None
    if isinstance(base, str) and base and (base in BUILTIN or Path(base).expanduser().is_dir()):
        return str(Path(base).expanduser()) if base not in BUILTIN else base
    named = f" (adapter_config.json names {base!r}, which is not a directory here)" if base else ""
    raise PreflabError(f"{path} holds no full model and no saved config naming its base model (config.yaml with "
                       f"model_name_or_path){named}; evaluate the final run directory instead, or set "
                       "base_model_name_or_path in adapter_config.json to the base model's directory.")


def check_model_exists(name: str) -> None:
    """A ConfigError unless `name` is a built-in model name or an existing directory (what `preflab eval` loads);
    checked before anything is printed about the run, so a mistyped path gets this error alone (before: first a note
    that the folder "has no saved run config naming a model")."""
    if name in BUILTIN or name == DEMO_SFT or Path(name).is_dir():
        return
    raise ConfigError(f"{name} is not a directory; give a run directory saved by `preflab train`, a "
                      f"checkpoint-<step> directory, a builtin:tiny-* name or {DEMO_SFT}.")

def load_for_eval(name: str, tokenizer=None, allow_pickle: bool = False, trust_remote_code: bool = False,
                  seed: int | None = None, demo_sft=None, dtype="float32", init_kwargs: dict | None = None):
    """(model in eval mode, tokenizer) for a run directory, checkpoint directory or builtin name. `tokenizer`
    (e.g. the policy's, for a reference) replaces the one found beside the weights; `seed` seeds a builtin `name`
    (None: TrainConfig's default seed, run_seed) and the builtin base of a run folder whose config saved no
    seed (a run's saved seed builds its base: its weights were trained over that one).
    demo_sft: seed -> (model, tokenizer) of builtin:demo-sft (preflab.demo.sft_model.demo_sft), for that name and
    for the checkpoints of runs that started from it; the demo room trains it and builds on this one, so the caller
    passes it in (without it such a name is a PreflabError saying so). dtype, init_kwargs: load_causal_lm's, for
    every model loaded here (the weights, or the base they go into; float32 and none unless a caller, e.g.
    `preflab eval --task distill`, loads the model as its run loaded its policy)."""
    load = dict(dtype=dtype, init_kwargs=init_kwargs)
    if name in BUILTIN:  # a builtin is built for the tokenizer it is given (its vocabulary sizes the model)
        if tokenizer is None:
            tokenizer = load_tokenizer(name)
        return load_causal_lm(name, tokenizer=tokenizer, seed=run_seed({}, seed), **load).eval(), tokenizer
    if name == DEMO_SFT:
        model, own = _demo_sft(demo_sft, run_seed({}, seed), name)
        check_same_tokenizer(name, own, tokenizer)
        return model.eval(), tokenizer or own
    path = Path(name)
    check_model_exists(name)
    check_weights_safe(str(path), allow_pickle)  # before anything else is read from the directory
    check_remote_code(str(path), trust_remote_code, "model")  # transformers' own refusal names the hub
    cfg = run_config(path)
    base_seed = run_seed(cfg) if cfg.get("seed") is not None else run_seed({}, seed)
    if cfg.get("task") in ("reward", "diffusion"):  # else a reward model's backbone is scored as a policy
        raise ConfigError(f"{name} is a task: {cfg['task']} run, not a language-model policy; evaluate it with "
                          f"`preflab eval {name} --task {cfg['task']} --data ...`.")
    if cfg.get("task") == "vlm":
        raise ConfigError(f"{name} is a task: vlm run; evaluate it with `preflab eval {name} --task vlm --data ...` "
                          "(image pairs need the run's processor and scorer).")
    if tokenizer is not None:
        base = str(cfg.get("model_name_or_path") or "") if not (path / "config.json").is_file() else ""
        base = base if base in BUILTIN or (base and Path(base).is_dir()) else None
        check_same_tokenizer(name, _own_tokenizer(path, base, trust_remote_code), tokenizer)
    if (path / "config.json").is_file():
        tok = tokenizer or _tokenizer_near(path, None, trust_remote_code)
        return load_causal_lm(str(path), trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                              **load).eval(), tok
    if (path / "adapter_config.json").is_file():
        base_name = _base_name(cfg, path)
        tok = tokenizer or _tokenizer_near(path, base_name, trust_remote_code)
        base = load_causal_lm(base_name, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                              tokenizer=tok, seed=base_seed, **load)
        from preflab.models.adapter_load import load_lora_adapter

        return load_lora_adapter(base, path).merge_and_unload().eval(), tok
    if (path / "model.safetensors").is_file() and (path / "trainer_state.json").is_file():
        return _load_checkpoint_dir(path, cfg, tokenizer, allow_pickle, trust_remote_code, demo_sft, load, base_seed)
    checkpoints = [p for p in numbered_checkpoints(path) if p.is_dir()]
    if checkpoints:  # an interrupted run: no final model yet, only its checkpoints
        raise PreflabError(f"{path} holds no final model (the run has not finished, or was interrupted) but has "
                           f"{', '.join(p.name for p in checkpoints)}; evaluate the newest with `preflab eval "
                           f"{checkpoints[-1]} --data ...` (or finish the run: `preflab train CONFIG "
                           "resume_from_checkpoint=true`).")
    raise PreflabError(f"{path} holds no model: expected config.json + *.safetensors (a finished run), "
                       "adapter_config.json (LoRA) or model.safetensors + trainer_state.json (a checkpoint).")


LORA_OPTIONS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_rslora", "use_dora",
                "lora_modules_to_save")


def lora_options(cfg: dict) -> dict:
    """The lora_* options a LoRA run's checkpoint was trained with: the run's saved config, a missing (or null) one
    TrainConfig's default, read from its dataclass fields so that no copy of the defaults here can drift from them
    (a copy said lora_dropout 0.0 where TrainConfig says 0.05)."""
    import dataclasses

    from preflab.config import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in LORA_OPTIONS}
    return {k: defaults[k] if cfg.get(k) is None else cfg[k] for k in LORA_OPTIONS}


def trained_architecture(path: Path, state: dict) -> tuple[dict, str] | None:
    """(the transformers config of the model whose weights checkpoint `path` holds, where it was read), or None: the
    checkpoint's own record (trainer_state.json "model_config", preflab.checkpoint.model_architecture), else the
    config.json its run's final model saved beside config.yaml one level up (checkpoints of an older preflab: the
    same model, trained on). The run config's model_name_or_path does not decide it: a recipe stage trains a model it
    built itself (fspo's tiny_causal_lm with its own hidden_size and num_layers) under builtin:tiny-llama."""
    import json

    saved = state.get("model_config")
    if isinstance(saved, dict) and saved.get("model_type"):
        return saved, f"{path / 'trainer_state.json'} (model_config)"
    final = path.parent / "config.json"
    if (path.parent / "config.yaml").is_file() and final.is_file():
        try:
            saved = json.loads(final.read_text())
        except ValueError as err:
            raise PreflabError(f"{final} is not JSON ({err}); it is the run's saved model config: restore it.") from err
        if isinstance(saved, dict) and saved.get("model_type"):
            return saved, str(final)
    return None


def model_from_architecture(saved: dict, load: dict):
    """A causal LM built (random weights, to be overwritten) from saved transformers config dict `saved`, in the
    eval's dtype and init_kwargs (load: load_causal_lm's)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from preflab.models.load import _init_kwargs

    options = {k: v for k, v in saved.items() if k not in ("model_type", "transformers_version")}
    config = AutoConfig.for_model(saved["model_type"], **options)
    kwargs = _init_kwargs(load.get("init_kwargs"), load.get("dtype") or "float32")
    if kwargs.get("dtype") == "auto":
        kwargs.pop("dtype")
    return AutoModelForCausalLM.from_config(config, **kwargs)


def _load_checkpoint_dir(path: Path, cfg: dict, tokenizer, allow_pickle: bool, trust_remote_code: bool, demo_sft,
                         load: dict, base_seed: int):
    """A checkpoint's model: its base (model_name_or_path, seeded as the run built it), or, where the checkpoint's
    recorded architecture (trained_architecture) differs from that base, a model built from the recorded config (a
    full fine-tune's checkpoint holds every parameter, so the base's own weights are not needed); its parameters
    loaded over it. The base's architecture is read from its config (causal_lm_architecture) before anything is
    built, so a full fine-tune's checkpoint of another architecture builds one model, not the base (its weights
    loaded) and then the recorded one; the built base's architecture is compared again after building it (a
    builtin:demo-sft base, a config not readable without building, a LoRA checkpoint, which needs the base's
    weights). Every trainable parameter of the rebuilt model must be in model.safetensors, with the same shape,
    and nothing else may be: otherwise a PreflabError names the weights file and the model built (before, a recipe's
    1-layer model's checkpoint was loaded into the 2-layer builtin:tiny-llama, its second layer left random)."""
    import json

    import torch
    from safetensors.torch import load_file

    from preflab.checkpoint import architecture_differences, check_weight_shapes, model_architecture

    base_name = _base_name(cfg, path)
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except ValueError as err:
        raise PreflabError(f"{path / 'trainer_state.json'} is not JSON ({err}); the checkpoint is damaged: evaluate "
                           "another checkpoint of the run, or its final directory.") from err
    state = state if isinstance(state, dict) else {}
    demo = base_name == DEMO_SFT  # an online demo run's checkpoint: the base is the demo's SFT model
    tok = tokenizer if demo else tokenizer or _tokenizer_near(path, base_name, trust_remote_code)
    trained = trained_architecture(path, state)
    differences = None  # None: not known before the base is built
    if trained and not demo and not cfg.get("use_peft"):  # a LoRA checkpoint needs its base's weights anyway
        read = causal_lm_architecture(base_name, tok, trust_remote_code, load.get("init_kwargs"))
        differences = architecture_differences(read, trained[0]) if read is not None else None
    if not differences:  # the recorded architecture is the base's (or not known before building the base)
        if demo:
            model, own = _demo_sft(demo_sft, base_seed, f"{path} (a checkpoint of a run that started from {DEMO_SFT})")
            tok = tok or own
        else:
            model = load_causal_lm(base_name, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                                   tokenizer=tok, seed=base_seed, **load)
        built = f"the base model {base_name} (the run config's model_name_or_path)"
        differences = architecture_differences(model_architecture(model), trained[0]) if trained else []
        if differences and cfg.get("use_peft"):
            raise PreflabError(f"{path} holds LoRA adapters trained over a model whose config ({trained[1]}) differs "
                               f"from {built}: {'; '.join(differences[:4])}. The base weights under the adapters "
                               "cannot be rebuilt; evaluate the run's final directory, or point model_name_or_path "
                               "in its config.yaml at the model it trained.")
    if differences:  # built once, from the recorded config (a second time only where the base's was not readable)
        model = model_from_architecture(trained[0], load)
        built = f"the model of {trained[1]} (it differs from {base_name}: {'; '.join(differences[:4])})"
    if cfg.get("use_peft"):  # the checkpoint holds the adapters (peft's names): rebuild them as training did
        from preflab.models.load import add_lora, lora_extras

        lora = lora_options(cfg)
        model = add_lora(model, int(lora["lora_r"]), int(lora["lora_alpha"]), float(lora["lora_dropout"]),
                         lora["lora_target_modules"], **lora_extras(lora))
    source = path / "model.safetensors"
    weights = load_file(str(source))
    params = dict(model.named_parameters())
    unknown = [k for k in weights if k not in params]
    if unknown:
        raise PreflabError(f"{source} has {len(unknown)} parameter(s) that {built} lacks, e.g. {unknown[0]}; was "
                           "the run trained from another model?")
    missing = [k for k, p in params.items() if p.requires_grad and k not in weights]
    if missing:
        raise PreflabError(f"{source} lacks {len(missing)} parameter(s) of {built}, e.g. {missing[0]}: loading it "
                           "would leave them at the base's values, which the run did not train. The run trained "
                           "another architecture; evaluate its final directory (its config.json says which).")
    check_weight_shapes(weights, params, str(source), built)
    with torch.no_grad():
        for key, value in weights.items():
            params[key].copy_(value)
    if cfg.get("use_peft"):
        model = model.merge_and_unload()
    return model.eval(), tok
