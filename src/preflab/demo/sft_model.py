"""builtin:demo-sft: the online demo runs' starting policy (and reference), the demo's SFT-stage model.

    model, tokenizer = demo_sft(seed)       # e.g. for `preflab eval --reference builtin:demo-sft`

It is trained, not drawn at random: the demo's stage 1 (preflab.demo.run's SFT options on the loud-echo rows of
preflab.demo.task), on a 2-layer Llama over the char tokenizer, built once per seed and recipe and cached as
safetensors (cache_name: a model trained by older code or other options is not loaded). It
lives in the demo room, above the training loops it runs and below the rooms that load it by name: the online runs
(model_name_or_path: builtin:demo-sft), `preflab eval` and the MaxMin toy (preflab.reward_models.maxmin_toy).
"""
from __future__ import annotations

from pathlib import Path


def demo_sft(seed: int = 0):
    """(model, tokenizer) of builtin:demo-sft for `seed`: the starting policy (and reference) of the online demo
    runs, e.g. for `preflab eval --reference builtin:demo-sft`."""
    from types import SimpleNamespace

    from preflab.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer("char")
    return demo_sft_model(SimpleNamespace(seed=seed), tokenizer), tokenizer


# what stage 1 trains beyond its options; bumped when the code's training changes (2: the LR warmup starts at rate 0,
# transformers' rule, changes/warmup-parity.md); a cache of an older version is left unread
RECIPE_VERSION = 2


def cache_name(seed: int) -> str:
    """The cache folder of builtin:demo-sft: demo-sft-<seed>-<first 12 hex of sha256 over the SFT options and
    RECIPE_VERSION>, so a model trained with other options or by older code is not loaded as today's."""
    import hashlib
    import json

    from preflab.demo.run import SFT

    recipe = json.dumps({"sft": SFT, "version": RECIPE_VERSION}, sort_keys=True)
    return f"demo-sft-{seed}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def demo_sft_model(cfg, tokenizer):
    """The demo's SFT-stage model (preflab.demo.run, stage 1) for cfg.seed, built once and cached as safetensors."""
    from safetensors.torch import load_file, save_file

    from preflab.models.tiny import tiny_causal_lm
    from preflab.scoring.ref_cache import default_cache_dir

    model = tiny_causal_lm(tokenizer, arch="llama", hidden_size=64, num_layers=2, num_heads=4, seed=cfg.seed)
    cache = default_cache_dir() / cache_name(cfg.seed) / "model.safetensors"
    if cache.exists():
        model.load_state_dict(load_file(str(cache)))
        return model
    import tempfile

    from preflab.config import config_from_dict
    from preflab.demo.run import SFT, _write_jsonl
    from preflab.demo.task import make_splits
    from preflab.loops.sft import SFTTrainer

    with tempfile.TemporaryDirectory() as tmp:
        data = _write_jsonl(Path(tmp) / "sft.jsonl",  # as the demo's stage 1: TRL's prompt-completion rows
                            [{"prompt": r["prompt"], "completion": r["chosen"]} for r in make_splits(cfg.seed)[0]])
        sft = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "max_length": 64, "seed": cfg.seed,
                                "logging_steps": 50, "disable_tqdm": True, "use_cpu": True, **SFT,
                                "dataset_name": str(data), "output_dir": str(Path(tmp) / "sft")})
        SFTTrainer(sft, policy=model, ref=None, tokenizer=tokenizer).train()
    _write_cache(cache, {k: v.contiguous() for k, v in model.state_dict().items()}, save_file)
    return model


def _write_cache(cache: Path, state: dict, save_file) -> None:
    """state to `cache` whole or not at all (preflab.atomic_file.write_atomically: a temp file beside it, renamed
    into place, removed on any error): two runs (or two test workers) building it at once, or one killed while
    writing, never leave a half-written file that the next run loads, nor a .tmp file. A failed write (a full disk,
    a read-only cache folder; safetensors says a full disk as its own SafetensorError) is a note naming the file:
    the model is trained, so the run goes on without the cache (as the diffusion encoding cache does) and the next
    run trains it again."""
    from safetensors import SafetensorError

    from preflab.atomic_file import write_atomically
    from preflab.checkpoint import write_failure

    try:
        write_atomically(cache, lambda tmp: save_file(state, tmp))
    except (OSError, SafetensorError) as err:
        failure = write_failure(err, cache)
        if failure is None:  # not a failed write: safetensors refused what it was given
            raise
        print(f"preflab: note: could not write the builtin:demo-sft cache {cache} ({failure.strerror}); the run "
              "goes on with the model trained now, and the next run trains it again (free disk space there or set "
              "PREFLAB_CACHE_DIR to a folder with room).", flush=True)
