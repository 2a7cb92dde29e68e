"""The parts of a text-to-image pipeline a diffusion run needs: load, encode, save.

`load_components(name)` reads a diffusers pipeline from a local directory or a hub name (safetensors only unless
allow_pickle; no remote code unless trust_remote_code) or builds the built-in tiny one ("builtin:tiny-sd", see
`tiny_text_to_image_pipeline`). Supported now: pipelines with a `UNet2DConditionModel` (`unet`), one CLIP-style text
encoder and tokenizer (SD 1.x / 2.x) or SDXL's two (with pooled embeddings and time_ids), a VAE and a DDPM-family
scheduler (epsilon, v_prediction or sample prediction, read from the scheduler's config), and Stable Diffusion 3
(`SD3Transformer2DModel` (`transformer`) on a FlowMatchEulerDiscreteScheduler, CLIP-L + CLIP-G + T5 text encoders,
see preflab.diffusion.flow) and Flux (`FluxTransformer2DModel` on 2x2-packed latents, CLIP-L pooled + T5 states, see
preflab.diffusion.flux). Other layouts (other transformers) are refused with a ConfigError rather than trained
wrongly.

Latents are the VAE posterior *mean* (x scaling_factor, minus shift_factor first where the VAE has one), so one
image always has one latent and it can be cached; the released Diffusion-DPO trainers draw a posterior sample per
step (a deviation of scale vae_std ~ 1e-2 on SD's VAE).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from preflab.errors import ConfigError, PreflabError
from preflab.models.builtin_names import BUILTIN_PIPELINES, TINY, TINY_FLUX, TINY_SD3  # noqa: F401  (public names)

T5_MAX_LENGTH = 256  # StableDiffusion3Pipeline.encode_prompt's default max_sequence_length


@dataclass
class DiffusionComponents:
    pipeline: Any              # the diffusers pipeline object (holds the modules below)
    denoiser: nn.Module        # pipeline.unet, or pipeline.transformer (SD3)
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler: Any
    text_encoder_2: nn.Module | None = None   # SDXL's / SD3's second (projection) text encoder
    tokenizer_2: Any = None
    text_encoder_3: nn.Module | None = None   # SD3's T5 (None: SD3 without T5, its states are zeros)
    tokenizer_3: Any = None
    denoiser_name: str = "unet"               # the pipeline's attribute: "unet" or (SD3, Flux) "transformer"
    flux_guidance: float = 3.5                # Flux-dev: the guidance embedding's value (the run sets flux_guidance;
    #                                           3.5 = preflab.diffusion.flux.FLUX_DEFAULT_GUIDANCE)
    resolution: int | None = None             # Flux: pixels per side when sampling (its transformer has no size)

    @property
    def is_flow(self) -> bool:
        """A flow-matching (rectified-flow) transformer: SD3 or Flux."""
        return self.denoiser_name == "transformer"

    @property
    def is_flux(self) -> bool:
        """Flux: a flow transformer on 2x2-packed latents (preflab.diffusion.flux)."""
        return type(self.denoiser).__name__ == "FluxTransformer2DModel"

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None and not self.is_flow

    @property
    def text_encoders(self) -> list[nn.Module]:
        return [m for m in (self.text_encoder, self.text_encoder_2, self.text_encoder_3) if m is not None]

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 1.0) or 1.0)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", 0.0) or 0.0)


def tiny_text_to_image_pipeline(seed: int = 0, resolution: int = 16):
    """A randomly initialised StableDiffusionPipeline built from configs (nothing downloaded): the §0.2 tiny UNet
    (0.79 M parameters, cross_attention_dim 32), a 41 k-parameter 2-block AutoencoderKL (16 -> 8 latent pixels,
    4 channels, no attention),
    methods §A3's tiny CLIPTextModel with preflab's character tokenizer (32 tokens), and SD 1.5's DDIM schedule."""
    try:
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    except ImportError as err:  # pragma: no cover - depends on the extra
        raise PreflabError("diffusion runs need diffusers: pip install 'preflab[diffusion]'.") from err
    from transformers import CLIPTextConfig, CLIPTextModel

    from preflab.models.tiny import tiny_tokenizer

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer("char")
    from tokenizers import processors

    # captions are encoded as they are (no BOS): the tiny text encoder was designed and tested that way
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    tokenizer.model_max_length = 32
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=4, sample_size=resolution, layers_per_block=1, mid_block_add_attention=False)
    unet = UNet2DConditionModel(
        sample_size=resolution // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def tiny_sdxl_pipeline(seed: int = 0, resolution: int = 16):
    """The tiny pipeline's SDXL twin (tests): two tiny CLIP encoders (the second with a 32-d projection), a UNet
    with SDXL's text_time added conditioning (cross_attention_dim 64 = 32 + 32), the same VAE and schedule."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    base = tiny_text_to_image_pipeline(seed, resolution)
    tok = base.tokenizer
    config = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed + 1)
    first, second = CLIPTextModel(config), CLIPTextModelWithProjection(config)
    unet = UNet2DConditionModel(
        sample_size=resolution // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32)
    return StableDiffusionXLPipeline(vae=base.vae, text_encoder=first, text_encoder_2=second, tokenizer=tok,
                                     tokenizer_2=copy.deepcopy(tok), unet=unet, scheduler=base.scheduler,
                                     add_watermarker=False)


def tiny_sd3_pipeline(seed: int = 0, resolution: int = 16):
    """A randomly initialised StableDiffusion3Pipeline built from configs (nothing downloaded): a 1-layer
    SD3Transformer2DModel (patch 2, 16 latent channels, joint_attention_dim 64, pooled 64), the tiny pipeline's
    2-block VAE widened to SD3's 16 latent channels with SD3's scaling_factor 1.5305 and shift_factor 0.0609 (no
    quant convs, as SD3's VAE), two tiny CLIPTextModelWithProjection (CLIP-L and CLIP-G stand-ins, hidden 32,
    projection 32), a tiny T5EncoderModel (d_model 64) with preflab's character tokenizer, and SD3's scheduler
    (FlowMatchEulerDiscreteScheduler, shift 3.0)."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    base = tiny_text_to_image_pipeline(seed, resolution)
    tok = base.tokenizer
    clip = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed + 1)
    clip_l, clip_g = CLIPTextModelWithProjection(clip), CLIPTextModelWithProjection(clip)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=64, d_ff=64, d_kv=16, num_layers=1, num_heads=4,
                                 dropout_rate=0.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                 decoder_start_token_id=tok.pad_token_id)).eval()
    clip_l.eval(), clip_g.eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=16,
                        norm_num_groups=4, sample_size=resolution, layers_per_block=1, mid_block_add_attention=False,
                        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609)
    transformer = SD3Transformer2DModel(sample_size=resolution // 2, patch_size=2, in_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64, out_channels=16,
                                        pos_embed_max_size=resolution)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=clip_l, tokenizer=tok, text_encoder_2=clip_g,
                                    tokenizer_2=copy.deepcopy(tok), text_encoder_3=t5, tokenizer_3=copy.deepcopy(tok))


def tiny_flux_pipeline(seed: int = 0, resolution: int = 16, guidance_embeds: bool = True):
    """A randomly initialised FluxPipeline built from configs (nothing downloaded): a FluxTransformer2DModel with one
    double-stream and one single-stream block (in_channels 64 = 16 latent channels x 2x2 packing, head dim 16 = rope
    axes 4 + 4 + 8, joint_attention_dim 64 = T5's width, pooled 32 = CLIP's; guidance_embeds as Flux-dev, False as
    Flux-schnell), the tiny SD3 pipeline's 16-channel VAE with Flux's scaling_factor 0.3611 and shift_factor 0.1159,
    a tiny CLIPTextModel (pooled output) and the tiny T5, and Flux's scheduler (FlowMatchEulerDiscreteScheduler,
    shift 3.0, use_dynamic_shifting with base/max shift 0.5/1.15 over 256..4096 image tokens)."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    sd3 = tiny_sd3_pipeline(seed, resolution)
    tok = sd3.tokenizer
    torch.manual_seed(seed + 2)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=77,
                                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id)).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=16,
                        norm_num_groups=4, sample_size=resolution, layers_per_block=1, mid_block_add_attention=False,
                        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                         pooled_projection_dim=32, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 4, 8))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tok, text_encoder_2=sd3.text_encoder_3,
                        tokenizer_2=sd3.tokenizer_3, transformer=transformer)


def load_pipeline(name: str, allow_pickle: bool = False, trust_remote_code: bool = False, seed: int = 0):
    """The diffusers pipeline `name` (local directory, hub name, builtin:tiny-sd or builtin:tiny-sd3), in float32, on
    the CPU; tagged as loaded by preflab (preflab.models.given: its loading options were applied)."""
    from preflab.models.given import mark_loaded

    return mark_loaded(_load_pipeline(name, allow_pickle, trust_remote_code, seed))


def _load_pipeline(name: str, allow_pickle: bool, trust_remote_code: bool, seed: int):
    if not name:
        raise ConfigError("model_name_or_path is empty; give a diffusers pipeline directory, a hub name "
                          f"(e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or {TINY}.")
    if name == TINY:
        return tiny_text_to_image_pipeline(seed)
    if name == TINY_SD3:
        return tiny_sd3_pipeline(seed)
    if name == TINY_FLUX:
        return tiny_flux_pipeline(seed)
    try:
        from diffusers import DiffusionPipeline
    except ImportError as err:  # pragma: no cover
        raise PreflabError("diffusion runs need diffusers: pip install 'preflab[diffusion]'.") from err
    check_pipeline_files(name, allow_pickle)
    try:
        # SD 1.x pipelines list a safety checker (not loaded); others (SDXL, SD3) warn about the keyword
        index = DiffusionPipeline.load_config(name)
        extra = {"safety_checker": None} if "safety_checker" in index else {}
        return DiffusionPipeline.from_pretrained(name, use_safetensors=None if allow_pickle else True,
                                                 trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError, EnvironmentError) as err:
        raise ConfigError(f"could not load the diffusers pipeline {name!r}: {err}. Check the name (hub access or "
                          "HF_HUB_OFFLINE) or the directory.") from err


def check_pipeline_files(name: str, allow_pickle: bool = False) -> None:
    """The file checks of loading pipeline `name` (nothing is loaded; a builtin or hub name passes): a local path
    without model_index.json, a component folder missing, pickle-only weights without allow_pickle. A diffusion run
    calls it before reading its data, so a wrong model_name_or_path stops at once, not after every image of the
    training set was decoded."""
    if not name or name in (TINY, TINY_SD3, TINY_FLUX):
        return
    from preflab.models.load import check_weights_safe

    check_weights_safe(name, allow_pickle)
    path = Path(name)
    if path.exists() and not (path / "model_index.json").is_file():
        single = (" (it holds a config.json: one model, such as a transformers model or a single pipeline "
                  "component, not a pipeline)" if (path / "config.json").is_file() else "")
        raise ConfigError(f"{name} is not a diffusers pipeline directory (no model_index.json){single}; save one "
                          "with pipeline.save_pretrained(dir).")
    if path.is_dir():
        _check_component_folders(path, allow_pickle)


def _check_component_folders(path: Path, allow_pickle: bool = False) -> None:
    """A ConfigError naming every component that model_index.json lists (as [library, class]) whose folder is
    missing or has no config file, so that the error names the component (diffusers says only 'no file named
    config.json found in directory DIR'). safety_checker / feature_extractor are skipped (not loaded). A component
    whose weights are pickle files only (diffusion_pytorch_model.bin, no .safetensors) is an UnsafeLoadError unless
    allow_pickle (diffusers would say only that the .safetensors file is missing)."""
    import json

    from preflab.errors import UnsafeLoadError
    from preflab.models.load import PICKLE_SUFFIXES

    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path / 'model_index.json'} cannot be read ({err}); save the pipeline again with "
                          "pipeline.save_pretrained(dir).") from err
    missing, unused = [], ("safety_checker", "feature_extractor", "image_encoder")  # not loaded by preflab
    for name, entry in index.items() if isinstance(index, dict) else ():
        if name.startswith("_") or name in unused:
            continue
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] and entry[1]):
            continue  # null entries are components the pipeline does without
        folder = path / name
        if not folder.is_dir() or not any(folder.glob("*.json")):
            missing.append(f"{name} ({entry[1]}): {folder} {'has no config file' if folder.is_dir() else 'is missing'}")
    pickles = [str(f) for name, entry in (index.items() if isinstance(index, dict) else ())
               if not name.startswith("_") and name not in unused and isinstance(entry, (list, tuple))
               and (path / name).is_dir()
               and not any((path / name).glob("*.safetensors"))
               for f in sorted((path / name).iterdir()) if f.suffix in PICKLE_SUFFIXES]
    if pickles and not allow_pickle:
        raise UnsafeLoadError(f"{path} would load pickle weights ({', '.join(pickles[:3])}); loading them can run "
                              "arbitrary code. Convert them to safetensors (pipeline.save_pretrained(dir) writes "
                              "safetensors), or set allow_pickle=true if you trust the files.")
    if missing:
        raise ConfigError(f"{path} is an incomplete diffusers pipeline: model_index.json lists "
                          + "; ".join(missing) + ". Copy the missing folder(s) from the original pipeline, or save it "
                          "again with pipeline.save_pretrained(dir).")


def _check_flow_parts(pipeline, model: str, needs: str) -> None:
    """What SD3 and Flux pipelines share, or a ConfigError: a FlowMatchEulerDiscreteScheduler and a VAE with two text
    encoders and their tokenizers; `model` names the family, `needs` its parts (said when one is missing)."""
    kind, scheduler = type(pipeline).__name__, type(pipeline.scheduler).__name__
    if scheduler != "FlowMatchEulerDiscreteScheduler":
        raise ConfigError(f"{kind}'s scheduler is {scheduler}; a {model} transformer is trained with "
                          "FlowMatchEulerDiscreteScheduler (its shifted sigma grid). Load the pipeline with the "
                          "scheduler it was saved with.")
    missing = [name for name in ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
               if getattr(pipeline, name, None) is None]
    if missing:
        raise ConfigError(f"{kind} has no {', '.join(missing)}; {model} needs {needs}. Load the whole pipeline, "
                          "or pass the missing parts to it.")


def sd3_components_of(pipeline) -> DiffusionComponents:
    """SD3's parts (transformer, FlowMatchEulerDiscreteScheduler, CLIP-L, CLIP-G, optional T5), or a ConfigError."""
    _check_flow_parts(pipeline, "SD3", "a VAE and its two CLIP encoders (text_encoder, text_encoder_2) with their "
                     "tokenizers; T5 (text_encoder_3) is optional")
    if getattr(pipeline, "text_encoder_3", None) is not None and getattr(pipeline, "tokenizer_3", None) is None:
        raise ConfigError(f"{type(pipeline).__name__} has text_encoder_3 but no tokenizer_3; SD3 needs T5's "
                          "tokenizer with it. Pass tokenizer_3, or leave T5 out.")
    return DiffusionComponents(pipeline, pipeline.transformer, pipeline.vae, pipeline.text_encoder, pipeline.tokenizer,
                               pipeline.scheduler, pipeline.text_encoder_2, pipeline.tokenizer_2,
                               getattr(pipeline, "text_encoder_3", None), getattr(pipeline, "tokenizer_3", None),
                               denoiser_name="transformer")


def flux_components_of(pipeline) -> DiffusionComponents:
    """Flux's parts (FluxTransformer2DModel, FlowMatchEulerDiscreteScheduler, CLIP-L as text_encoder, T5 as
    text_encoder_2), or a ConfigError."""
    kind = type(pipeline).__name__
    if kind != "FluxPipeline":
        raise ConfigError(f"{kind} is not the text-to-image FluxPipeline; preflab's diffusion run trains Flux "
                          "text-to-image transformers only (Fill / Kontext / Control / img2img layouts condition on "
                          "images). Load the model as a FluxPipeline if it is a text-to-image checkpoint.")
    _check_flow_parts(pipeline, "Flux", "a VAE, CLIP-L (text_encoder) and T5 (text_encoder_2) with their tokenizers")
    if int(pipeline.transformer.config.patch_size) != 1:
        raise ConfigError(f"{kind}'s transformer has patch_size {pipeline.transformer.config.patch_size}; Flux "
                          "transformers take 2x2-packed latents with patch_size 1.")
    channels, latent = int(pipeline.transformer.config.in_channels), int(pipeline.vae.config.latent_channels)
    if channels != 4 * latent:
        raise ConfigError(f"{kind}'s transformer takes {channels} input channels, not 4 x the VAE's {latent} latent "
                          "channels (2x2 packing): an image-conditioned Flux variant (Fill / Control) is not trained "
                          "by preflab.")
    return DiffusionComponents(pipeline, pipeline.transformer, pipeline.vae, pipeline.text_encoder, pipeline.tokenizer,
                               pipeline.scheduler, pipeline.text_encoder_2, pipeline.tokenizer_2,
                               denoiser_name="transformer")


def components_of(pipeline) -> DiffusionComponents:
    """The parts of a supported pipeline, or a ConfigError naming what is not supported."""
    kind = type(pipeline).__name__
    transformer = getattr(pipeline, "transformer", None)
    if transformer is not None:
        if type(transformer).__name__ == "SD3Transformer2DModel":
            return sd3_components_of(pipeline)
        if type(transformer).__name__ == "FluxTransformer2DModel":
            return flux_components_of(pipeline)
        raise ConfigError(f"{kind}'s denoiser is a {type(transformer).__name__}; preflab's diffusion run trains "
                          "UNet2DConditionModel (SD 1.x/2.x, SDXL), SD3Transformer2DModel (SD3) and "
                          "FluxTransformer2DModel (Flux) pipelines.")
    unet = getattr(pipeline, "unet", None)
    sdxl = getattr(pipeline, "text_encoder_2", None) is not None
    if getattr(pipeline, "text_encoder_3", None) is not None or (
            sdxl and getattr(getattr(unet, "config", None), "addition_embed_type", None) != "text_time"):
        raise ConfigError(f"{kind}'s text encoders are not SD 1.x/2.x's one or SDXL's two (with a text_time UNet); "
                          "preflab's diffusion run does not support this layout yet (docs/diffusion.md).")
    if unet is None:
        raise ConfigError(f"{kind} has no UNet (a transformer denoiser such as SD3/Flux); preflab's diffusion run "
                          "supports UNet2DConditionModel pipelines so far.")
    scheduler = pipeline.scheduler
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ConfigError(f"{kind}'s scheduler {type(scheduler).__name__} has no alphas_cumprod (flow matching?); "
                          "preflab's diffusion run supports DDPM-family schedules so far.")
    for name in ("vae", "text_encoder", "tokenizer"):
        if getattr(pipeline, name, None) is None:
            raise ConfigError(f"{kind} has no {name}; a text-to-image pipeline needs one.")
    if sdxl and getattr(pipeline, "tokenizer_2", None) is None:
        raise ConfigError(f"{kind} has text_encoder_2 but no tokenizer_2.")
    return DiffusionComponents(pipeline, unet, pipeline.vae, pipeline.text_encoder, pipeline.tokenizer, scheduler,
                               getattr(pipeline, "text_encoder_2", None), getattr(pipeline, "tokenizer_2", None))


def _ids(tok, prompts):
    return tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def caption_token_limits(components: DiffusionComponents) -> list[tuple[str, Any, int]]:
    """(tokenizer attribute, tokenizer, tokens it keeps) for each tokenizer encode_text cuts captions with: CLIP's
    model_max_length (SD; SDXL's two, each its own; SD3's two at the first one's length; Flux's CLIP), SD3's T5 at
    T5_MAX_LENGTH and Flux's T5 at FLUX_T5_MAX_LENGTH (the pipelines' default max_sequence_length)."""
    first = components.tokenizer.model_max_length
    out = [("tokenizer", components.tokenizer, first)]
    if components.is_flux:
        from preflab.diffusion.flux import FLUX_T5_MAX_LENGTH

        return out + [("tokenizer_2", components.tokenizer_2, FLUX_T5_MAX_LENGTH)]
    if components.tokenizer_2 is not None:
        out.append(("tokenizer_2", components.tokenizer_2,
                    first if components.is_flow else components.tokenizer_2.model_max_length))
    if components.is_flow and components.text_encoder_3 is not None:
        out.append(("tokenizer_3", components.tokenizer_3, T5_MAX_LENGTH))
    return out


def truncated_captions(components: DiffusionComponents, captions: list[str]) -> dict[str, dict[str, int]]:
    """{tokenizer attribute: {"captions": how many of `captions` it cuts, "max_tokens": its limit}}, for the
    tokenizers that cut at least one. Such a caption conditions the model on its first max_tokens tokens only (with
    the special tokens), as in diffusers' pipelines and training scripts, which cut it without a word."""
    out = {}
    for name, tok, limit in caption_token_limits(components):
        cut = sum(len(ids) > limit for ids in tok(list(captions), verbose=False).input_ids)
        if cut:
            out[name] = {"captions": cut, "max_tokens": int(limit)}
    return out


@torch.no_grad()
def encode_sd3_text(components: DiffusionComponents, prompts: list[str], device=None) -> dict[str, torch.Tensor]:
    """SD3's conditioning, as diffusers' StableDiffusion3Pipeline.encode_prompt (clip_skip None, max_sequence_length
    256): CLIP-L and CLIP-G each tokenised to the first tokenizer's model_max_length, their penultimate hidden states
    joined on the feature axis and zero-padded to T5's width, then T5's last hidden state appended on the sequence
    axis -> "states" [N, L_clip + 256, D_t5]; "pooled_projections" [N, P_l + P_g] = both projected text embeddings.
    Without T5 its states are zeros [N, 256, joint_attention_dim] (as the pipeline)."""
    device = device or next(components.text_encoder.parameters()).device
    length = components.tokenizer.model_max_length
    clip_states, pooled = [], []
    for tok, encoder in ((components.tokenizer, components.text_encoder),
                         (components.tokenizer_2, components.text_encoder_2)):
        ids = tok(list(prompts), padding="max_length", max_length=length, truncation=True,
                  return_tensors="pt").input_ids
        out = encoder(ids.to(device), output_hidden_states=True)
        clip_states.append(out.hidden_states[-2])
        pooled.append(out[0])
    clip = torch.cat(clip_states, -1)
    if components.text_encoder_3 is None:
        width = components.denoiser.config.joint_attention_dim
        t5 = torch.zeros(len(prompts), T5_MAX_LENGTH, width, device=clip.device, dtype=clip.dtype)
    else:
        ids = components.tokenizer_3(list(prompts), padding="max_length", max_length=T5_MAX_LENGTH, truncation=True,
                                     add_special_tokens=True, return_tensors="pt").input_ids
        t5 = components.text_encoder_3(ids.to(device))[0]
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return {"states": torch.cat([clip.float(), t5.float()], -2), "pooled_projections": torch.cat(pooled, -1).float()}


@torch.no_grad()
def encode_flux_text(components: DiffusionComponents, prompts: list[str], device=None) -> dict[str, torch.Tensor]:
    """Flux's conditioning, as diffusers' FluxPipeline.encode_prompt (max_sequence_length 512): "states" [N, 512, D] =
    T5's last hidden state (tokenizer_2 padded / truncated to 512), "pooled_projections" [N, P] = CLIP's
    pooler_output (tokenizer padded / truncated to its model_max_length). txt_ids are zeros (preflab.diffusion.flux)."""
    from preflab.diffusion.flux import FLUX_T5_MAX_LENGTH

    device = device or next(components.text_encoder.parameters()).device
    tok = components.tokenizer
    ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_overflowing_tokens=False, return_length=False, return_tensors="pt").input_ids
    pooled = components.text_encoder(ids.to(device), output_hidden_states=False).pooler_output
    ids = components.tokenizer_2(list(prompts), padding="max_length", max_length=FLUX_T5_MAX_LENGTH, truncation=True,
                                 return_length=False, return_overflowing_tokens=False, return_tensors="pt").input_ids
    states = components.text_encoder_2(ids.to(device), output_hidden_states=False)[0]
    return {"states": states.float(), "pooled_projections": pooled.float()}


@torch.no_grad()
def encode_text(components: DiffusionComponents, prompts: list[str], device=None) -> dict[str, torch.Tensor]:
    """{"states": [N, L, D]} float32 (SD: the encoder's last hidden state, padded to the tokenizer's max length);
    SDXL (diffusers' StableDiffusionXLPipeline.encode_prompt): states = both encoders' penultimate hidden states
    concatenated on the feature axis, plus "pooled" [N, P] = the second encoder's projected text embedding; the
    empty prompt is all zeros when the pipeline sets force_zeros_for_empty_prompt (its unconditional input).
    SD3: `encode_sd3_text`."""
    if components.is_flux:
        return encode_flux_text(components, prompts, device)
    if components.is_flow:
        return encode_sd3_text(components, prompts, device)
    encoder = components.text_encoder
    device = device or next(encoder.parameters()).device
    if not components.is_sdxl:
        return {"states": encoder(_ids(components.tokenizer, prompts).to(device))[0].float()}
    first = encoder(_ids(components.tokenizer, prompts).to(device), output_hidden_states=True)
    second = components.text_encoder_2(_ids(components.tokenizer_2, prompts).to(device), output_hidden_states=True)
    states = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], -1).float()
    pooled = second[0].float()
    if getattr(components.pipeline.config, "force_zeros_for_empty_prompt", False):
        empty = torch.tensor([p == "" for p in prompts], device=states.device)
        states = torch.where(empty[:, None, None], torch.zeros_like(states), states)
        pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
    return {"states": states, "pooled": pooled}


def encode_prompts(components: DiffusionComponents, prompts: list[str], device=None) -> torch.Tensor:
    """[N, L, D] float32 text states (encode_text's "states")."""
    return encode_text(components, prompts, device)["states"]


def unet_cond(text: dict[str, torch.Tensor], resolution: int) -> Any:
    """The UNet's conditioning from encode_text's output: SD the states tensor; SDXL {"encoder_hidden_states",
    "added_cond_kwargs": {"text_embeds": pooled, "time_ids": (S, S, 0, 0, S, S)}} (original size, centre-crop
    top-left, target size: preflab's resize-and-centre-crop keeps the whole square); SD3 {"encoder_hidden_states",
    "pooled_projections"}."""
    if "pooled_projections" in text:
        return {"encoder_hidden_states": text["states"], "pooled_projections": text["pooled_projections"]}
    if "pooled" not in text:
        return text["states"]
    pooled = text["pooled"]
    time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=pooled.dtype,
                            device=pooled.device).expand(pooled.shape[0], -1)
    return {"encoder_hidden_states": text["states"],
            "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


def call_unet(unet: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
    """unet(x_t, t, ...) with a tensor cond as encoder_hidden_states or a dict cond as keywords (user_index
    dropped: that is the PPD branch's input)."""
    kwargs = {k: v for k, v in cond.items() if k != "user_index"} if isinstance(cond, dict) else \
        {"encoder_hidden_states": cond}
    if type(unet).__name__ == "FluxTransformer2DModel":
        from preflab.diffusion.flux import call_flux

        return call_flux(unet, x_t, t, kwargs)
    return unet(x_t, timestep=t, return_dict=False, **kwargs)[0]


def image_size(components: DiffusionComponents) -> int:
    """Pixels per side of the denoiser's native sample (latent size x the VAE's downsampling); Flux (no native size):
    the run's resolution, else the pipeline's default (default_sample_size x vae_scale_factor)."""
    if components.is_flux:
        pipe = components.pipeline
        return int(components.resolution or pipe.default_sample_size * pipe.vae_scale_factor)
    return int(components.denoiser.config.sample_size) * 2 ** (len(components.vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_images(components: DiffusionComponents, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """uint8 [N, 3, S, S] -> latents [N, C, S/f, S/f] float32 (posterior mean, shifted and scaled)."""
    from preflab.diffusion.images import to_model_range

    vae = components.vae
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = to_model_range(images[i:i + batch_size]).to(device=device, dtype=dtype)
        mean = vae.encode(x).latent_dist.mean
        out.append(((mean - components.shift_factor) * components.scaling_factor).float())
    return torch.cat(out, 0)


@torch.no_grad()
def decode_latents(components: DiffusionComponents, latents: torch.Tensor) -> torch.Tensor:
    """latents -> float images in [-1, 1] [N, 3, S, S]."""
    vae = components.vae
    z = latents / components.scaling_factor + components.shift_factor
    return vae.decode(z.to(next(vae.parameters()).dtype)).sample.float().clamp(-1, 1)


def merged_denoiser(denoiser: nn.Module) -> nn.Module:
    """A plain copy of the denoiser: LoRA adapters fused into the weights and removed (diffusers' fuse_lora)."""
    plain = copy.deepcopy(denoiser).float()
    if getattr(plain, "_hf_peft_config_loaded", False):
        plain.fuse_lora()
        plain.unload_lora()
    return plain


def save_pipeline(components: DiffusionComponents, denoiser: nn.Module, out: Path) -> Path:
    """Write a pipeline that `diffusers.DiffusionPipeline.from_pretrained(out)` loads: the trained denoiser (LoRA
    fused) with the run's VAE, text encoder, tokenizer and scheduler (safetensors)."""
    pipe = components.pipeline
    plain = merged_denoiser(denoiser)
    name = components.denoiser_name
    original = getattr(pipe, name)
    pipe.register_modules(**{name: plain})
    try:
        pipe.save_pretrained(str(out), safe_serialization=True)
    finally:
        pipe.register_modules(**{name: original})
    return out


@torch.no_grad()
def sample_images(components: DiffusionComponents, denoiser: nn.Module, prompts: list[str], seeds: list[int],
                  num_steps: int = 20, guidance_scale: float = 1.0, device=None,
                  cross_attention_kwargs: dict | None = None) -> torch.Tensor:
    """uint8 [N, 3, S, S]: deterministic DDIM ("trailing" spacing, eta = 0) from x_T ~ N(0, I) seeded per image,
    with classifier-free guidance (guidance_scale 1 = the conditional prediction only). cross_attention_kwargs: see
    sample_latents."""
    from preflab.diffusion.images import to_uint8

    latents = sample_latents(components, denoiser, prompts, seeds, num_steps, guidance_scale, device,
                             cross_attention_kwargs)
    return to_uint8(decode_latents(components, latents)).cpu()


@torch.no_grad()
def sample_latents(components: DiffusionComponents, denoiser: nn.Module, prompts: list[str], seeds: list[int],
                   num_steps: int = 20, guidance_scale: float = 1.0, device=None,
                   cross_attention_kwargs: dict | None = None) -> torch.Tensor:
    """The latents [N, C, h, w] that `sample_images` decodes (SD3: Euler steps of the flow,
    preflab.diffusion.flow.euler_sample, the pipeline's own sampler; Flux: the same on FluxPipeline's resolution-shifted
    grid, with the guidance embedding components.flux_guidance and, for guidance_scale != 1, true CFG against the
    empty prompt as FluxPipeline's true_cfg_scale with negative_prompt "").
    cross_attention_kwargs: passed to the UNet on every forward, the conditional and the unconditional one alike
    (PPD's {"user_embeds": P e_u [N, L_u, d_cross]}: the user branch conditions both sides of classifier-free guidance,
    which then guides by the text alone); UNets only (SD3 / Flux transformers take no such keyword)."""
    from preflab.diffusion.guidance import cfg, ddim_sample
    from preflab.diffusion.schedule import NoiseSchedule

    device = device or next(denoiser.parameters()).device
    size = image_size(components)
    cond = unet_cond(encode_text(components, prompts, device), size)
    uncond = unet_cond(encode_text(components, [""] * len(prompts), device), size)
    if cross_attention_kwargs is not None:
        if components.is_flow:
            raise PreflabError("cross_attention_kwargs (PPD's user branch) are for a UNet's cross-attention; this "
                               "pipeline's denoiser is a flow transformer (SD3 / Flux).")
        cond, uncond = (
            {**(c if isinstance(c, dict) else {"encoder_hidden_states": c}),
             "cross_attention_kwargs": cross_attention_kwargs} for c in (cond, uncond))
    cfgd = denoiser.config
    if components.is_flux:
        side = size // components.pipeline.vae_scale_factor
        shape = (cfgd.in_channels // 4, side, side)
        if getattr(cfgd, "guidance_embeds", False):
            guidance = torch.full((len(prompts),), float(components.flux_guidance), device=device)
            cond, uncond = {**cond, "guidance": guidance}, {**uncond, "guidance": guidance}
    else:
        shape = (cfgd.in_channels, cfgd.sample_size, cfgd.sample_size)
    x_T = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)

    def predict(x, t):
        c = call_unet(denoiser, x, t, cond).float()
        if guidance_scale == 1.0:
            return c
        return cfg(c, call_unet(denoiser, x, t, uncond).float(), guidance_scale)

    if components.is_flux:
        from preflab.diffusion.flow import euler_sample
        from preflab.diffusion.flux import flux_sampling_grid

        grid = flux_sampling_grid(components.scheduler, num_steps, (shape[1] // 2) * (shape[2] // 2))
        return euler_sample(predict, x_T, components.scheduler, num_steps, grid=grid)
    if components.is_flow:
        from preflab.diffusion.flow import euler_sample

        return euler_sample(predict, x_T, components.scheduler, num_steps)
    return ddim_sample(predict, x_T, NoiseSchedule.from_scheduler(components.scheduler), num_steps)


def save_grid(rows: list[torch.Tensor], path: Path, scale: int = 4) -> Path:
    """Rows of uint8 images [N, 3, S, S] -> one PNG (one image row per entry, white gaps), upscaled `scale` x."""
    from PIL import Image

    n, s = max(r.shape[0] for r in rows), rows[0].shape[-1]
    pad = 2
    canvas = torch.full((3, len(rows) * (s + pad) + pad, n * (s + pad) + pad), 255, dtype=torch.uint8)
    for r, images in enumerate(rows):
        for i, image in enumerate(images):
            y, x = pad + r * (s + pad), pad + i * (s + pad)
            canvas[:, y:y + s, x:x + s] = image
    img = Image.fromarray(canvas.permute(1, 2, 0).contiguous().numpy())
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return Path(path)
