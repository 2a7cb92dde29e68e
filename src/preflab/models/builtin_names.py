"""The names of preflab's built-in models (tiny, built in code, no network), as plain data.

Imports nothing: preflab.models.load's check_model_name lists every `builtin:` name through the config layer, and
the modules that build these models (preflab.models.tiny_vlm, preflab.diffusion.pipeline, preflab.online.tasks) load
models through that same layer, so their name tables live here, below both, and those modules re-export them.
    BUILTIN            causal LMs (preflab.models.tiny.tiny_causal_lm): name -> transformers model_type
    BUILTIN_VLM        image-text models (preflab.models.tiny_vlm.tiny_vlm): name -> architecture
    BUILTIN_PIPELINES  text-to-image pipelines (preflab.diffusion.pipeline): name -> what it builds
    BUILTIN_ONLINE     online runs' starting policies (preflab.online.tasks): name -> what it builds
"""
from __future__ import annotations

BUILTIN = {"builtin:tiny-llama": "llama", "builtin:tiny-qwen2": "qwen2", "builtin:tiny-gpt2": "gpt2"}

BUILTIN_VLM = {"builtin:tiny-qwen2-vl": "qwen2_vl", "builtin:tiny-llava": "llava", "builtin:tiny-idefics3": "idefics3"}

TINY = "builtin:tiny-sd"
TINY_SD3 = "builtin:tiny-sd3"
TINY_FLUX = "builtin:tiny-flux"
BUILTIN_PIPELINES = {TINY: "a tiny random-init text-to-image pipeline (UNet, VAE, CLIP text encoder)",
                     TINY_SD3: "a tiny random-init Stable Diffusion 3 pipeline (transformer, 16-channel VAE, CLIP-L, "
                               "CLIP-G, T5)",
                     TINY_FLUX: "a tiny random-init Flux pipeline (guidance-embedded transformer, 16-channel VAE, "
                                "CLIP-L, T5)"}

DEMO_SFT = "builtin:demo-sft"  # the online demo's starting policy (preflab.online.tasks builds and caches it)
BUILTIN_ONLINE = {DEMO_SFT: "the demo's tiny char-level Llama after its SFT stage (built once and cached)"}


def builtin_models() -> list[str]:
    """Every `builtin:` name preflab can build."""
    return [*BUILTIN, *BUILTIN_VLM, *BUILTIN_PIPELINES, *BUILTIN_ONLINE]
