"""Tiny image-text-to-text models and their processors, built in code (no network, random init, deterministic).

    processor = tiny_vlm_processor("qwen2_vl")          # tiny tokenizer + image processor + chat template
    model = tiny_vlm(processor, "qwen2_vl", seed=0)     # Qwen2VLForConditionalGeneration, float32, eval mode

Architectures: "qwen2_vl" (Qwen2-VL: patch merger, 3-D rotary positions, a variable number of image tokens per
image), "qwen2_5_vl" (Qwen2.5-VL: the same processor and positions, a windowed-attention vision tower),
"qwen3_vl" (Qwen3-VL: the same, interleaved 3-D rotary sections, DeepStack features of the vision layer), "llava"
(LLaVA: CLIP vision tower + projector, a fixed number of image tokens per image) and "idefics3" (Idefics3 /
SmolVLM-style: SigLIP-like tower, pixel-shuffle connector, images batched per sample). All load back with
`AutoModelForImageTextToText.from_pretrained`. Images are resized by the processor (qwen2_vl, qwen2_5_vl: to a
multiple of 8 pixels, 16-32 px a side (also qwen3_vl); llava and idefics3: 16 x 16).

The processors use transformers' PIL image processors (torchvision is not needed). transformers 5.25 cannot build
a Qwen2-VL processor without its video processor, which needs torchvision; `_NoVideoProcessor` skips that check so
that the image-only processor builds (videos are given as frames, see preflab.data.vision).
"""
from __future__ import annotations

import torch

from preflab.errors import ConfigError
from preflab.models.builtin_names import BUILTIN_VLM  # noqa: F401  (a public name of this module)

ARCHS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "idefics3")
_QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")  # one processor (Qwen2-VL's image processor), 3-D rope positions
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<image>",
                 "<fake_token_around_image>", "<global-img>"]
_IMAGE_PART = {**{arch: "<|vision_start|><|image_pad|><|vision_end|>" for arch in _QWEN}, "llava": "<image>",
               "idefics3": "<image>"}


def vlm_chat_template(image_part: str) -> str:
    """The tiny chat template of preflab.models.tiny, with TRL's typed content parts ({"type": "image"|"text"})."""
    return ("{% for message in messages %}<|{{ message['role'] }}|>\n{% if message['content'] is string %}"
            "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
            + image_part + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
            "</s>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _no_video_processor_class(arch: str = "qwen2_vl"):
    import transformers as tf

    base = {"qwen2_vl": tf.Qwen2VLProcessor, "qwen2_5_vl": tf.Qwen2_5_VLProcessor,
            "qwen3_vl": tf.Qwen3VLProcessor}[arch]

    class NoVideoQwen2VLProcessor(base):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        def save_pretrained(self, save_directory, **kwargs):
            """The tokenizer (with the chat template) and the image processor; there is no video processor."""
            self.tokenizer.save_pretrained(save_directory)
            self.image_processor.save_pretrained(save_directory)

    return NoVideoQwen2VLProcessor


def tiny_vlm_processor(arch: str = "qwen2_vl", tokenizer_kind: str = "bytelevel"):
    """A processor (tokenizer with the vision special tokens + a small PIL image processor + chat template)."""
    import transformers as tf

    from preflab.models.tiny import tiny_tokenizer

    if arch not in ARCHS:
        raise ValueError(f"unknown tiny VLM arch {arch!r}; use one of {ARCHS}")
    tok = tiny_tokenizer(tokenizer_kind)
    tok.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    template = vlm_chat_template(_IMAGE_PART[arch])
    tok.chat_template = template
    if arch in _QWEN:
        images = tf.Qwen2VLImageProcessorPil(min_pixels=16 * 16, max_pixels=32 * 32, patch_size=4, merge_size=2,
                                             temporal_patch_size=2)
        return _no_video_processor_class(arch)(image_processor=images, tokenizer=tok, chat_template=template)
    if arch == "idefics3":
        try:
            images = tf.Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": 16},
                                                  max_image_size={"longest_edge": 16})
        except ImportError as error:  # transformers 5.17 (the GPU image's) requires torchvision here; 5.25 does not
            said = " ".join(str(error).split()).split(". ")[0][:160]
            raise ConfigError(
                f"builtin:tiny-idefics3 needs Idefics3's image processor, which transformers {tf.__version__} builds "
                f"only with torchvision installed ({said}). Install torchvision (pip install torchvision, the build "
                "matching your torch) or use builtin:tiny-qwen2-vl / builtin:tiny-llava.") from error
        return tf.Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=4, chat_template=template)
    images = tf.CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return tf.LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=4, chat_template=template,
                             vision_feature_select_strategy="default", image_token="<image>",
                             num_additional_image_tokens=1)


def tiny_vlm(processor, arch: str = "qwen2_vl", hidden_size: int = 32, num_layers: int = 2, seed: int = 0):
    """A randomly initialised image-text-to-text model matching `processor`, float32, eval mode."""
    import transformers as tf

    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    text = dict(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if arch in _QWEN:
        half = hidden_size // 4 // 2  # rotary frequencies per head (4 heads), split over (time, height, width)
        section = [half - 2 * (half // 4), half // 4, half // 4]
        rope = {"rope_type": "default", "mrope_section": section, "rope_theta": 10000.0}
        tower = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden_size,
                     patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
        if arch == "qwen2_vl":
            vision = dict(depth=1, embed_dim=16, hidden_size=hidden_size, num_heads=2, mlp_ratio=2, patch_size=4,
                          spatial_merge_size=2, temporal_patch_size=2, in_chans=3)
        elif arch == "qwen2_5_vl":  # windows of 16 px (2 x 2 merged patches); the one block attends fully
            vision = {**tower, "window_size": 16, "fullatt_block_indexes": [0]}
        else:  # learned positions on an 8 x 8 grid (interpolated), DeepStack features of the one block
            vision = {**tower, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}
            text = {**text, "head_dim": hidden_size // 4}
            rope = {**rope, "mrope_interleaved": True}
        config = {"qwen2_vl": tf.Qwen2VLConfig, "qwen2_5_vl": tf.Qwen2_5_VLConfig, "qwen3_vl": tf.Qwen3VLConfig}[arch](
            text_config={**text, "rope_parameters": rope},
            vision_config=vision,
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        cls = {"qwen2_vl": tf.Qwen2VLForConditionalGeneration, "qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration,
               "qwen3_vl": tf.Qwen3VLForConditionalGeneration}[arch]
    elif arch == "llava":
        config = tf.LlavaConfig(
            text_config=tf.LlamaConfig(**text),
            vision_config=tf.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                              num_attention_heads=2, image_size=16, patch_size=4,
                                              projection_dim=16),
            image_token_id=ids["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default",
            pad_token_id=tok.pad_token_id)
        cls = tf.LlavaForConditionalGeneration
    elif arch == "idefics3":
        config = tf.Idefics3Config(
            text_config=tf.LlamaConfig(**text),
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               image_size=16, patch_size=4),
            image_token_id=ids["<image>"], scale_factor=2, pad_token_id=tok.pad_token_id)
        cls = tf.Idefics3ForConditionalGeneration
    else:
        raise ValueError(f"unknown tiny VLM arch {arch!r}; use one of {ARCHS}")
    torch.manual_seed(seed)
    model = cls(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model.float().eval()
