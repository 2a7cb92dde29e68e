"""Segment attention (preflab.models.segment_attention) equals the dense-mask path: log-probs and gradients of
prefix-shared and packed layouts (a prompt shared by 1, 2 and 3 responses, responses of different lengths, rows of
different widths, bucketed rows) for Llama (GQA), Qwen2 (GQA), Mistral and GPT-2 in float32, Llama, Qwen2 and Qwen3 in
float64, and a Trainer's 2 steps; unsupported models and gradient checkpointing keep the dense mask (counted calls of
the attention function tell which path ran)."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import preflab.models.segment_attention as seg
from preflab.data.layout import bucket, pair_sequences, padded
from preflab.data.packing import packed_pairs
from preflab.data.prefix import Block, block_rows, prefix_shared
from preflab.errors import ConfigError
from preflab.models.segment_attention import set_attention_mode, uses_segments
from preflab.models.tiny import tiny_causal_lm
from preflab.scoring.lm import LogProbScorer

PAIRS = [
    SimpleNamespace(prompt_ids=[1, 5, 9, 14], chosen_ids=[20, 21, 2], rejected_ids=[40, 2]),
    SimpleNamespace(prompt_ids=[1, 7], chosen_ids=[30, 31, 32, 33, 2], rejected_ids=[8, 2]),
    SimpleNamespace(prompt_ids=[1, 3, 4, 5, 6, 7, 8], chosen_ids=[9, 2], rejected_ids=[10, 11, 12, 2]),
]
# rows of different widths; prompts shared by 3, 1 and 2 responses (one of them empty), two blocks in row 0
BLOCKS = [[Block([1, 4, 9], [[20, 21, 2], [40, 2], [41, 42, 43, 44, 2]], [0, 1, 2]), Block([1], [[5, 6]], [3])],
          [Block([1, 2, 3, 4, 5, 6], [[7, 2], []], [4, 5])]]
LAYOUTS = {
    "prefix_shared": lambda: prefix_shared(PAIRS, pad_id=0),
    "packed": lambda: packed_pairs(PAIRS, pad_id=0, share_prefix=False),
    "prefix_packed_binned": lambda: packed_pairs(PAIRS, pad_id=0, share_prefix=True, max_row_tokens=13),
    "three_responses": lambda: block_rows(BLOCKS, 6, pad_id=0),
    "bucketed": lambda: bucket(block_rows(BLOCKS, 6, pad_id=0), 16, pad_id=0),
}


def tiny_mistral():
    import transformers as tf

    torch.manual_seed(0)
    config = tf.MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128,
                              sliding_window=None, pad_token_id=0)
    return tf.MistralForCausalLM(config).float().eval()


def tiny_qwen3():
    import transformers as tf

    torch.manual_seed(0)
    config = tf.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                            pad_token_id=0)
    return tf.Qwen3ForCausalLM(config).float().eval()


def model_of(arch: str):
    if arch in ("mistral", "qwen3"):
        return tiny_mistral() if arch == "mistral" else tiny_qwen3()
    return tiny_causal_lm(vocab_size=64, arch=arch)


@pytest.fixture
def calls(monkeypatch):
    """How many times the segment attention function ran (once per layer and forward when it is in use)."""
    count = {"n": 0}
    original = seg.segment_attention_forward

    def counted(*args, **kwargs):
        count["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(seg, "segment_attention_forward", counted)
    return count


def logps_and_grads(model, layout, mode):
    set_attention_mode(mode, model)
    model.zero_grad()
    lp = LogProbScorer(model)(layout).token_logps
    (lp * torch.linspace(0.5, 1.5, lp.numel(), dtype=lp.dtype).reshape(lp.shape)).sum().backward()
    return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_segments_equal_dense(model, layout, calls, atol):
    dense_lp, dense_grads = logps_and_grads(model, layout, "dense")
    assert calls["n"] == 0
    lp, grads = logps_and_grads(model, layout, "segments")
    assert calls["n"] == model.config.num_hidden_layers  # one call per layer: the segment path ran
    torch.testing.assert_close(lp, dense_lp, atol=atol, rtol=0)
    assert grads.keys() == dense_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], dense_grads[name], atol=atol, rtol=atol, msg=name)


@pytest.mark.parametrize("piece_tokens", [64, 2])  # each response in one piece; in up to 3 pieces
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gpt2"])
@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_segment_attention_equals_dense_mask(arch, layout_name, piece_tokens, calls, monkeypatch):
    monkeypatch.setattr(seg, "PIECE_TOKENS", piece_tokens)
    model = model_of(arch)
    assert seg.segment_attention_supported(model) == (True, "")
    calls["n"] = 0  # the support probe ran it too
    assert_segments_equal_dense(model, LAYOUTS[layout_name](), calls, atol=1e-5)


@pytest.mark.parametrize("piece_tokens", [64, 2])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_segment_attention_equals_dense_mask_in_float64(arch, piece_tokens, calls, monkeypatch):
    monkeypatch.setattr(seg, "PIECE_TOKENS", piece_tokens)
    model = model_of(arch).double()
    seg.segment_attention_supported(model)
    calls["n"] = 0
    assert_segments_equal_dense(model, LAYOUTS["three_responses"](), calls, atol=1e-12)


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_segment_attention_equals_dense_mask_of_eager_models(arch, calls):
    """An eager model's dense path adds a float mask; the segment path computes with sdpa: equal to float32 rounding.
    (Not in float64: eager's softmax runs in float32 there, where the float64 mask minimum becomes -inf, so a padding
    query's row is all -inf and NaN reaches the next layer through 0 * NaN; the segment path never attends padding.)"""
    model = model_of(arch)
    model.set_attn_implementation("eager")
    seg.segment_attention_supported(model)
    calls["n"] = 0
    assert_segments_equal_dense(model, LAYOUTS["three_responses"](), calls, atol=1e-5)


def test_segment_attention_equals_padded_layout_scores(calls):
    """Against the padded layout (one [prompt | response] row each, no mask at all): the formula, not the mask."""
    model = model_of("qwen2")
    set_attention_mode("segments", model)
    expected = LogProbScorer(model)(padded(pair_sequences(PAIRS), pad_id=0)).token_logps
    got = LogProbScorer(model)(prefix_shared(PAIRS, pad_id=0)).token_logps
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_plan_indexes_the_segments_of_the_rows(monkeypatch):
    """Row 0 of BLOCKS: [1 4 9 | 20 21 2 | 40 2 | 41 42 43 44 2 | 1 | 5 6], row 1: [1..6 | 7 2 | pad ...]; responses
    cut into pieces of 2 queries (PIECE_TOKENS 2: 3 pieces for the longest, 5 tokens)."""
    monkeypatch.setattr(seg, "PIECE_TOKENS", 2)
    layout = block_rows(BLOCKS, 6, pad_id=0)
    plan, width = layout.segments, layout.input_ids.shape[1]
    # the prompts; the 5 non-empty responses' positions 0-1; the 2 longer than 2 tokens' 2-3; the 5-token one's 4
    assert width == 16 and plan.calls == ((3, 6, 6), (5, 2, 6 + 2), (2, 2, 3 + 4), (1, 1, 3 + 5))
    queries, keys, slots = plan.parts()
    assert queries[:18].tolist() == [0, 1, 2, 0, 0, 0, 13, 13, 13, 13, 13, 13, 16, 17, 18, 19, 20, 21]
    assert queries[18:28].tolist() == [3, 4, 6, 7, 8, 9, 14, 15, 22, 23]  # piece 0 of each non-empty response
    assert queries[28:].tolist() == [5, 0, 10, 11, 12]  # [20 21 2]'s third token and a padding slot; [41 .. 2]
    # piece 1 of [20 21 2]: its prompt's keys, then its own 3 positions and a padding slot (block's first position)
    assert keys[18 + 5 * 8:18 + 5 * 8 + 7].tolist() == [0, 1, 2, 3, 4, 5, 0]
    mask = plan.additive_masks(torch.float32, "cpu")[1][0, 0] == 0
    assert mask.tolist() == [[True] * 6 + [False], [True] * 7]  # its positions 2 (real) and 3 (padding)
    flat = layout.input_ids.reshape(-1)
    real = layout.attention_mask[:, 0].any(-1).reshape(-1)
    assert torch.equal(flat[queries][slots][real], flat[real])  # every real position reads its own slot
    assert plan.widened(20).calls == plan.calls


def test_unsupported_family_keeps_the_dense_mask(calls):
    import transformers as tf

    torch.manual_seed(0)
    model = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=2, num_attention_heads=4,
                                                   max_position_embeddings=128)).eval()
    ok, why = seg.segment_attention_supported(model)
    assert not ok and "gpt_neox" in why
    layout = prefix_shared(PAIRS, pad_id=0)
    assert not uses_segments(layout, model)
    expected = LogProbScorer(model)(padded(pair_sequences(PAIRS), pad_id=0)).token_logps
    torch.testing.assert_close(LogProbScorer(model)(layout).token_logps, expected, atol=1e-5, rtol=0)
    assert calls["n"] == 0
    with pytest.raises(ConfigError, match="gpt_neox"):
        set_attention_mode("segments", model)


def test_softcapping_and_gradient_checkpointing_keep_the_dense_mask(calls):
    model = model_of("llama")
    model.config.attn_logit_softcapping = 30.0
    assert not seg.segment_attention_supported(model)[0]
    model = model_of("llama")
    layout = prefix_shared(PAIRS, pad_id=0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    set_attention_mode("auto", model)  # probes the model (one call per layer)
    calls["n"] = 0
    assert not uses_segments(layout, model)
    lp, grads = logps_and_grads(model, layout, "auto")
    assert calls["n"] == 0
    with torch.no_grad():  # no recompute without gradient: the segments are used
        assert uses_segments(layout, model)
    model.gradient_checkpointing_disable()
    seg_lp, seg_grads = logps_and_grads(model, layout, "auto")
    assert calls["n"] == 2
    torch.testing.assert_close(seg_lp, lp, atol=1e-5, rtol=0)
    for name in grads:
        torch.testing.assert_close(seg_grads[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_layout_whose_rows_changed_keeps_the_dense_mask():
    import dataclasses

    layout = prefix_shared(PAIRS, pad_id=0)
    wider = dataclasses.replace(layout, input_ids=torch.nn.functional.pad(layout.input_ids, (0, 3)))
    assert uses_segments(layout, model_of("llama")) and not uses_segments(wider, model_of("llama"))


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loops"))


@pytest.mark.slow
def test_trainer_steps_equal_with_segment_and_dense_attention(tmp_path, calls):
    """2 optimizer steps of DPO (reference forward every step) on the prefix-shared layout: the same losses and
    weights with attention: auto (segments) as with attention: dense."""
    from tiny_run import run

    results = {}
    for mode in ("dense", "auto"):
        calls["n"] = 0
        _, trainer = run(tmp_path / mode, max_steps=2, layout="prefix_shared", attention=mode, save_strategy="no")
        logged = [json.loads(line) for line in open(tmp_path / mode / "metrics.jsonl")]
        results[mode] = ([row["loss"] for row in logged if "loss" in row],
                         {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}, calls["n"])
    (dense_losses, dense_weights, dense_calls), (losses, weights, seg_calls) = results["dense"], results["auto"]
    assert dense_calls == 0 and seg_calls >= 2 * 2 * 2  # 2 steps x (policy + reference) x 2 layers
    assert len(losses) == 2
    torch.testing.assert_close(losses, dense_losses, atol=1e-6, rtol=0)
    for name, w in weights.items():
        # float32 rounding of the gradients (~1e-7 relative) through 2 Adam steps of lr 1e-3: measured 1.3e-6 at most
        torch.testing.assert_close(w, dense_weights[name], atol=1e-5, rtol=0, msg=name)


def test_checkpointing_decision_follows_later_changes(calls):
    """uses_segments decides on every call: gradient checkpointing switched on, off and on again (transformers'
    flags, then layers wrapped in torch's CheckpointWrapper) after training forwards is seen; with it on, the step
    takes the dense mask and gives the segment path's log-probs and gradients."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    model = model_of("llama").train()
    layout = prefix_shared(PAIRS, pad_id=0)
    assert all(uses_segments(layout, model) for _ in range(3))
    logps_and_grads(model, layout, "auto")  # a training forward and backward (it slices its ModuleList of layers)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert not uses_segments(layout, model)
    calls["n"] = 0
    lp, grads = logps_and_grads(model, layout, "auto")  # checkpointed: the dense mask
    assert calls["n"] == 0
    model.gradient_checkpointing_disable()
    assert uses_segments(layout, model)
    seg_lp, seg_grads = logps_and_grads(model, layout, "auto")
    assert calls["n"] == model.config.num_hidden_layers
    torch.testing.assert_close(seg_lp, lp, atol=1e-5, rtol=0)
    for name in grads:
        torch.testing.assert_close(seg_grads[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)
    decoder_layer = type(model.model.layers[0])
    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, decoder_layer))
    assert not uses_segments(layout, model)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_checkpointing_turned_on_after_the_first_forward_is_seen(arch, calls):
    """A model that ran a training forward with segment attention, then gets transformers' gradient checkpointing
    (every layer, or every 2nd layer: only layer 0 flagged of 2), takes the dense mask on its next forward."""
    for every_n_layers in (1, 2):
        model = model_of(arch).train()
        layout = prefix_shared(PAIRS, pad_id=0)
        set_attention_mode("auto", model)  # probes the model (one call per layer)
        calls["n"] = 0
        logps_and_grads(model, layout, "auto")
        assert calls["n"] == model.config.num_hidden_layers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False},
                                            every_n_layers=every_n_layers)
        calls["n"] = 0
        assert not uses_segments(layout, model)
        logps_and_grads(model, layout, "auto")
        assert calls["n"] == 0


@pytest.mark.parametrize("wrapped", ["layers", "attention", "offloaded_layers", "decoder"])
def test_checkpoint_wrapper_installed_after_the_first_forward_is_seen(wrapped, calls):
    """Modules replaced by torch's CheckpointWrapper after a training forward with segment attention (FSDP's
    activation checkpointing: apply_activation_checkpointing; the decoder layers, their attention modules, the layers
    inside accelerate's OffloadWrapper, or the whole decoder) make the next forward take the dense mask; one around
    the MLPs recomputes no attention call and keeps the segments, with the dense path's log-probs."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (apply_activation_checkpointing,
                                                                             checkpoint_wrapper, offload_wrapper)

    model = model_of("llama").train()
    layout = prefix_shared(PAIRS, pad_id=0)
    set_attention_mode("auto", model)  # probes the model (one call per layer)
    calls["n"] = 0
    logps_and_grads(model, layout, "auto")
    assert calls["n"] == model.config.num_hidden_layers
    kinds = {"layers": type(model.model.layers[0]), "attention": type(model.model.layers[0].self_attn),
             "offloaded_layers": type(model.model.layers[0]), "decoder": type(model.model)}
    wrap = (lambda m: offload_wrapper(checkpoint_wrapper(m))) if wrapped == "offloaded_layers" else checkpoint_wrapper
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=wrap, check_fn=lambda m: isinstance(m, kinds[wrapped]))
    calls["n"] = 0
    assert not uses_segments(layout, model)
    logps_and_grads(model, layout, "auto")
    assert calls["n"] == 0


def test_checkpoint_wrapper_around_the_mlps_keeps_the_segments(calls):
    """CheckpointWrapper around each layer's MLP only: its recompute runs no attention, so the segments are used, with
    the dense path's log-probs and gradients."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    model = model_of("llama").train()
    layout = prefix_shared(PAIRS, pad_id=0)
    dense_lp, dense_grads = logps_and_grads(model, layout, "dense")
    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, type(model.model.layers[0].mlp)))
    set_attention_mode("auto", model)  # probes the model (one call per layer)
    calls["n"] = 0
    assert uses_segments(layout, model)
    lp, grads = logps_and_grads(model, layout, "auto")
    assert calls["n"] == model.config.num_hidden_layers
    torch.testing.assert_close(lp, dense_lp, atol=1e-5, rtol=0)
    grads = {name.replace("_checkpoint_wrapped_module.", ""): g for name, g in grads.items()}
    assert grads.keys() == dense_grads.keys()
    for name in dense_grads:
        torch.testing.assert_close(grads[name], dense_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_copied_model_walks_its_own_modules():
    """A copy (copy.deepcopy, as frozen_copy makes) is decided on its own modules: wrapping the copy's layers later
    is seen on the copy, not on the model."""
    import copy

    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    model = model_of("llama").train()
    layout = prefix_shared(PAIRS, pad_id=0)
    assert uses_segments(layout, model)
    twin = copy.deepcopy(model)
    assert uses_segments(layout, twin)
    apply_activation_checkpointing(twin, check_fn=lambda m: isinstance(m, type(twin.model.layers[0])))
    assert not uses_segments(layout, twin) and uses_segments(layout, model)
