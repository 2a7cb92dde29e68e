"""Vision online generation with each prompt processed and prefilled once (online/vision.py VisionGenerator on
preflab.generate_groups.prefilled_generate): the same completions as generating on the G copies of each prompt (the
path before: the processor and model.generate on the repeated texts and images), the image encoder run on each
prompt's images once, and model types not checked for it taking the old path with a note said once."""
import sys
from pathlib import Path

import pytest
import torch
from vlm_helpers import image, tiny

sys.path.insert(0, str(Path(__file__).parents[1] / "online"))
from test_generate_groups import recording_logits  # noqa: E402  (the text tests' recorder of generate's logits)

import preflab.generate_groups as groups
from preflab.online.vision import VisionGenerator, vision_prompt_rows

G = 3


def prompt_rows(processor):
    """Three prompts of different lengths (left padding differs), the second with two images, different pixels."""
    raw = [{"images": [image((200, 20, 20), seed=1)],
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]}]},
           {"images": [image((20, 200, 20), seed=2), image((20, 20, 200), size=(16, 24), seed=3)],
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                    {"type": "text", "text": "which of the two is brighter, and why"}]}]},
           {"images": [image((90, 90, 20), seed=4)],
            "prompt": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image"}]}]}]
    return vision_prompt_rows(raw, processor)


def old_generator(model, processor, **kw):
    """The path before: k copies of each prompt's text and images through the processor and model.generate."""
    gen = VisionGenerator(model, processor, **kw)
    gen._why_not_shared = lambda model, k: "old path (test)"
    return gen


def encoder_images(model, arch) -> list[int]:
    """How many images each forward of the image encoder encodes (Qwen2-VL, 2.5-VL, 3-VL: rows of grid_thw; LLaVA:
    of pixels; Idefics3: of pixels, after the model drops the padding images of its per-sample image batches)."""
    seen = []
    if arch in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        model.model.visual.register_forward_pre_hook(lambda m, args, kw: seen.append(
            (kw.get("grid_thw") if "grid_thw" in kw else args[1]).shape[0]), with_kwargs=True)
    else:
        tower = model.model.vision_tower if arch == "llava" else model.model.vision_model
        tower.register_forward_pre_hook(lambda m, args, kw: seen.append(
            (args[0] if args else kw["pixel_values"]).shape[0]), with_kwargs=True)
    return seen


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "idefics3"])
def test_greedy_completions_equal_the_repeated_prompt_path_and_images_are_encoded_once(arch):
    model, processor = tiny(arch)
    rows = prompt_rows(processor)
    kw = dict(max_new_tokens=8, temperature=1.0, top_p=1.0, batch_size=8, device="cpu")
    greedy = lambda **s: {**s, "do_sample": False}  # noqa: E731
    encoded = encoder_images(model, arch)
    gen = VisionGenerator(model, processor, **kw)
    orig = model.generate
    model.generate = lambda *a, **s: orig(*a, **greedy(**s))
    new = gen.generate(rows, G, seed=3)
    assert encoded == [4]                              # the 4 images of the 3 prompts, once (not G = 3 times)
    encoded.clear()
    old = old_generator(model, processor, **kw).generate(rows, G, seed=3)
    assert encoded == [4 * G]
    assert new == old
    assert len(new) == 3 * G and len({tuple(c) for c in new}) > 1


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "idefics3"])
def test_sampled_completions_and_log_probs_equal_the_repeated_prompt_path(arch):
    """Chunks of 2 prompts seeded seed + c, temperature 0.8, top_p 0.9: the same ids, per-token log-probs within
    1e-5 (the last prompt position runs in a one-token step instead of inside the full prefill)."""
    model, processor = tiny(arch)
    rows = prompt_rows(processor)
    kw = dict(max_new_tokens=10, temperature=0.8, top_p=0.9, batch_size=2, device="cpu")
    logits = recording_logits(model)
    new = VisionGenerator(model, processor, **kw).generate(rows, G, seed=11)
    new_logits, logits[:] = list(logits), []
    old = old_generator(model, processor, **kw).generate(rows, G, seed=11)
    assert new == old
    assert len({tuple(c) for c in new}) == len(new)    # sampled: every completion differs
    assert len(new_logits) == len(logits) == 2
    for a, b in zip(new_logits, logits, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1), atol=1e-5)


def test_a_model_type_not_checked_for_sharing_takes_the_old_path_and_says_why_once(monkeypatch, capsys):
    """A model type outside SHARED_PREFILL_MODEL_TYPES (LLaVA taken off it): G copies of each prompt through the
    processor and generate() as before, the images encoded G times, said once for all chunks."""
    monkeypatch.setattr(groups, "_SAID", set())
    model, processor = tiny("llava")
    rows = prompt_rows(processor)
    kw = dict(max_new_tokens=6, temperature=1.0, top_p=1.0, batch_size=2, device="cpu")
    old = old_generator(model, processor, **kw).generate(rows, G, seed=5)
    capsys.readouterr()
    monkeypatch.setattr("preflab.online.vision.SHARED_PREFILL_MODEL_TYPES", ("qwen2_vl", "idefics3"))
    encoded = encoder_images(model, "llava")
    assert VisionGenerator(model, processor, **kw).generate(rows, G, seed=5) == old
    assert encoded == [3 * G, 1 * G]                  # chunks of prompts with 1 + 2 and 1 images, repeated G times
    said = capsys.readouterr().out
    assert said.count("preflab: note:") == 1
    assert "image-text model type 'llava' is not checked for a shared prompt prefill" in said
