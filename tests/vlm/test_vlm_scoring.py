"""The VLM scorer equals the model's own full forward (log_softmax of .logits) at response positions."""
import torch

from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs
from preflab.scoring.vlm import VisionLogProbScorer, collate_vision_pairs, naive_vision_token_logps

from vlm_helpers import pair_row, tiny


def _layout(processor, rows, **kw):
    examples, _ = read_vision_pairs(rows)
    pairs, _, _ = tokenize_vision_pairs(examples, processor, **kw)
    return collate_vision_pairs(pairs, processor.tokenizer.pad_token_id), pairs


def test_scorer_equals_full_forward(arch):
    model, processor = tiny(arch)
    rows = [pair_row(seed=0), pair_row("and this one?", "green it is", "no", (20, 200, 20), seed=3, n=2)]
    layout, pairs = _layout(processor, rows)
    assert layout.vision["pixel_values"].shape[0] > 0
    with torch.no_grad():
        fast = VisionLogProbScorer(model, chunk_tokens=3)(layout).token_logps
        slow = naive_vision_token_logps(model, layout)
    assert torch.allclose(fast, slow, atol=1e-5)
    # rows are scored with their own images: swapping the images changes the response log-probs
    swapped = _layout(processor, [dict(rows[0], images=[rows[1]["images"][0]]), rows[1]])[0]
    with torch.no_grad():
        other = VisionLogProbScorer(model)(swapped).token_logps
    assert not torch.allclose(other[0], fast[0], atol=1e-6)
    assert torch.allclose(other[1], fast[1], atol=1e-5)


def test_gradient_through_chunks_matches_full_forward(arch):
    model, processor = tiny(arch)
    layout, _ = _layout(processor, [pair_row(seed=1)])
    fast = VisionLogProbScorer(model, chunk_tokens=2)(layout).token_logps.sum()
    g_fast = torch.autograd.grad(fast, model.lm_head.weight)[0]
    slow = naive_vision_token_logps(model, layout).sum()
    g_slow = torch.autograd.grad(slow, model.lm_head.weight)[0]
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(g_fast, g_slow, atol=1e-5)


def test_video_frames_become_image_parts_in_order():
    from vlm_helpers import image

    model, processor = tiny("qwen2_vl")
    frames = [image((10 * i, 0, 0), seed=i) for i in range(3)]
    still = image((0, 0, 200), seed=9)
    row = {"images": [still], "videos": [frames],
           "prompt": [{"role": "user", "content": [{"type": "video"}, {"type": "image"}, {"type": "text",
                                                                                        "text": "what happens?"}]}],
           "chosen": "it gets red", "rejected": "it gets blue"}
    (ex,), _ = read_vision_pairs([row])
    assert ex.images == frames + [still]  # placeholder order: the video's frames, then the image
    assert sum(p["type"] == "image" for p in ex.prompt[0]["content"]) == 4
    layout, _ = _layout(processor, [row])
    with torch.no_grad():
        assert torch.allclose(VisionLogProbScorer(model)(layout).token_logps,
                              naive_vision_token_logps(model, layout), atol=1e-5)


def test_prefix_shared_equals_padded_for_llava():
    from preflab.models.vlm import shared_prompt_support

    model, processor = tiny("llava")
    rows = [pair_row(seed=0), pair_row("and this one?", "green it is", "no", (20, 200, 20), seed=3, n=2)]
    examples, _ = read_vision_pairs(rows)
    pairs, _, _ = tokenize_vision_pairs(examples, processor)
    pad = processor.tokenizer.pad_token_id
    shared = collate_vision_pairs(pairs, pad, "prefix_shared")
    assert shared.input_ids.shape[0] == 2 and shared.vision["pixel_values"].shape[0] == 3  # images once per pair
    padded = collate_vision_pairs(pairs, pad, "padded")
    with torch.no_grad():
        a = VisionLogProbScorer(model)(shared).token_logps
        b = VisionLogProbScorer(model)(padded).token_logps
    assert torch.allclose(a, b, atol=1e-5)
    assert shared_prompt_support(model)[0]
    assert not shared_prompt_support(tiny("qwen2_vl")[0])[0]  # 3-D rotary positions: padded only


def test_idefics3_rows_with_different_image_counts():
    model, processor = tiny("idefics3")
    rows = [pair_row(seed=0, n=1), pair_row("two images?", "yes two", "no", seed=5, n=2)]
    layout, _ = _layout(processor, rows)
    assert layout.vision["pixel_values"].shape[:2] == (4, 2)  # per-sample stacks, zero-padded to 2 images
    with torch.no_grad():
        fast = VisionLogProbScorer(model)(layout).token_logps
        alone = VisionLogProbScorer(model)(_layout(processor, rows[:1])[0]).token_logps
        assert torch.allclose(fast, naive_vision_token_logps(model, layout), atol=1e-5)
    width = alone.shape[1]  # the one-image row scores the same next to a two-image row (padding images ignored)
    assert torch.allclose(fast[[0, 2], :width], alone, atol=1e-5)


def test_idefics3_processor_without_torchvision_is_a_config_error(monkeypatch):
    """transformers 5.17 (the GPU image's) builds Idefics3ImageProcessorPil only with torchvision installed (5.25
    does not need it): its placeholder class raises ImportError, which becomes a ConfigError naming the fix."""
    from types import SimpleNamespace

    import pytest

    from preflab.errors import ConfigError
    from preflab.models.vlm import load_vlm_processor

    class PlaceholderOfTransformers517:
        def __init__(self, *args, **kwargs):
            raise ImportError("Idefics3ImageProcessorPil requires the Torchvision library but it was not found")

    load_vlm_processor(SimpleNamespace(processor_name_or_path=None, model_name_or_path="builtin:tiny-idefics3",
                                       trust_remote_code=False))  # transformers' lazy imports done (they would
    # set the real class again over the patch)
    monkeypatch.setattr("transformers.Idefics3ImageProcessorPil", PlaceholderOfTransformers517)
    cfg = SimpleNamespace(processor_name_or_path=None, model_name_or_path="builtin:tiny-idefics3",
                          trust_remote_code=False)
    with pytest.raises(ConfigError, match=r"builtin:tiny-idefics3 .*torchvision.*pip install torchvision"):
        load_vlm_processor(cfg)
    assert load_vlm_processor(SimpleNamespace(**{**vars(cfg), "model_name_or_path": "builtin:tiny-llava"}))


def boolean_mask_scores(hidden, layout, head, chunk, ref=None, ref_head=None):
    """The scorer before it went mask-free (preflab 2026-12-04, scoring/vlm.py scores_from_hidden): response
    positions picked by boolean-mask indexing and put back with masked_scatter. (token_logps, token_kl, hidden)."""
    from torch.utils.checkpoint import checkpoint

    from preflab.scoring.lm import _head_chunk

    flat = hidden.reshape(-1, hidden.shape[-1])
    mask = layout.response_mask
    h = flat.index_select(0, layout.pred_index[mask])
    targets = layout.target_ids[mask]
    want_kl = ref is not None
    recompute = torch.is_grad_enabled() and h.requires_grad and h.shape[0] > chunk
    pieces_lp, pieces_kl = [], []
    for start in range(0, h.shape[0], chunk):
        sl = slice(start, start + chunk)
        args = (h[sl], targets[sl], head, ref.hidden_flat[sl] if want_kl else None, ref_head, want_kl)
        lp, kl, _ = checkpoint(_head_chunk, *args, use_reentrant=False) if recompute else _head_chunk(*args)
        pieces_lp.append(lp)
        pieces_kl.append(kl)
    logp = torch.cat(pieces_lp)
    lps = torch.zeros(mask.shape, dtype=logp.dtype).masked_scatter(mask, logp)
    kl = torch.zeros(mask.shape).masked_scatter(mask, torch.cat(pieces_kl)) if want_kl else None
    return lps, kl, h.new_zeros(*mask.shape, h.shape[-1]).masked_scatter(mask.unsqueeze(-1), h)


def test_mask_free_scorer_equals_the_boolean_mask_scorer(arch):
    """Values (log-probs, token KL to a reference, hidden states) and gradients equal the old boolean-mask path to
    1e-6, with one chunk and with several (checkpointed) chunks."""
    from preflab.models.load import frozen_copy
    from preflab.scoring.lm import backbone_and_head

    model, processor = tiny(arch)
    ref = frozen_copy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    rows = [pair_row(seed=0), pair_row("and this one?", "green it is", "no", (20, 200, 20), seed=3, n=2)]
    layout, _ = _layout(processor, rows)
    backbone, head = backbone_and_head(model)
    ref_head = backbone_and_head(ref)[1]
    with torch.no_grad():
        ref_scores = VisionLogProbScorer(ref)(layout)
    for chunk in (3, 1000):
        new = VisionLogProbScorer(model, chunk_tokens=chunk)(layout, want_hidden=True, ref=ref_scores,
                                                             ref_head=ref_head)
        g_new = torch.autograd.grad(new.token_logps.sum() + new.token_kl.sum(), model.lm_head.weight)[0]
        hidden = backbone(**layout.model_inputs(model), use_cache=False).last_hidden_state
        lps, kl, h = boolean_mask_scores(hidden, layout, head, chunk, ref_scores, ref_head)
        g_old = torch.autograd.grad(lps.sum() + kl.sum(), model.lm_head.weight)[0]
        torch.testing.assert_close(new.token_logps, lps, atol=1e-6, rtol=0)
        torch.testing.assert_close(new.token_kl, kl, atol=1e-6, rtol=0)
        torch.testing.assert_close(new.hidden, h, atol=1e-6, rtol=0)
        torch.testing.assert_close(g_new, g_old, atol=1e-6, rtol=0)
        assert float(kl.abs().max()) > 1e-4  # the reference differs: the KL comparison is not of zeros
