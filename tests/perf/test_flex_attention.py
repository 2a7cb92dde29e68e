"""FlexAttention (opt-in: a model loaded with attn_implementation="flex_attention"): the prefix-shared and packed
layouts' masks go to the model as BlockMasks and score exactly as the padded layout with sdpa.

On CPU torch 2.13 runs flex_attention forward only ("FlexAttention does not support backward on CPU") and
transformers compiles it (torch.compile: ~150 s per shape on this 2-core machine), so the CPU test scores without
gradient through torch's eager flex_attention (the same op, unfused: transformers' compile wrapper is patched);
the training path (compiled kernel, gradients) is checked on a GPU only."""
from types import SimpleNamespace

import pytest
import torch

from preflab.data.layout import pair_sequences, padded
from preflab.data.packing import packed_pairs
from preflab.data.prefix import prefix_shared
from preflab.models.attention import flex_block_mask
from preflab.models.tiny import tiny_causal_lm
from preflab.scoring.lm import LogProbScorer

PAIRS = [
    SimpleNamespace(prompt_ids=[1, 5, 9, 14], chosen_ids=[20, 21, 2], rejected_ids=[40, 2]),
    SimpleNamespace(prompt_ids=[1, 7], chosen_ids=[30, 31, 32, 33, 2], rejected_ids=[8, 2]),
    SimpleNamespace(prompt_ids=[1, 3, 4, 5, 6, 7, 8], chosen_ids=[9, 2], rejected_ids=[10, 11, 12, 2]),
]
LAYOUTS = {"prefix_shared": lambda: prefix_shared(PAIRS, pad_id=0),
           "prefix_packed": lambda: packed_pairs(PAIRS, pad_id=0, share_prefix=True)}


def eager_flex(monkeypatch):
    import transformers.integrations.flex_attention as tfa
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(tfa.WrappedFlexAttention, "__init__", lambda self, training: None)
    monkeypatch.setattr(tfa.WrappedFlexAttention, "__call__", lambda self: flex_attention)


def test_block_mask_allows_exactly_the_dense_mask():
    layout = prefix_shared(PAIRS, pad_id=0)
    dense = layout.attention_mask
    block = flex_block_mask(dense)
    rows, width = dense.shape[0], dense.shape[-1]
    b, q, k = torch.meshgrid(torch.arange(rows), torch.arange(width), torch.arange(width), indexing="ij")
    assert torch.equal(block.mask_mod(b, torch.zeros_like(b), q, k), dense[:, 0])
    assert block.shape[-2:] == (width, width)


@pytest.mark.parametrize("name", ["prefix_shared", pytest.param("prefix_packed", marks=pytest.mark.slow)])
def test_flex_scores_equal_padded_sdpa_scores(monkeypatch, name):
    """Tolerance 1e-5 (float32; measured 1e-6)."""
    eager_flex(monkeypatch)
    model = tiny_causal_lm(vocab_size=256, seed=1).eval()
    with torch.no_grad():
        base = LogProbScorer(model)(padded(pair_sequences(PAIRS), pad_id=0)).token_logps
        model.set_attn_implementation("flex_attention")
        flex = LogProbScorer(model)(LAYOUTS[name]()).token_logps
    assert model.config._attn_implementation == "flex_attention"
    torch.testing.assert_close(flex, base, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward and fused kernel need a GPU")
def test_flex_training_scores_and_gradients_equal_padded_on_cuda():
    """Compiled FlexAttention with gradients: log-probs and gradients equal the padded sdpa path (float32,
    1e-4: fused kernels reorder sums)."""
    def run(impl, layout):
        model = tiny_causal_lm(vocab_size=256, seed=1).cuda()
        model.set_attn_implementation(impl)
        lp = LogProbScorer(model)(layout.to("cuda")).token_logps
        (lp * torch.linspace(0.5, 1.5, lp.numel(), device="cuda").reshape(lp.shape)).sum().backward()
        return lp.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    base_lp, base_grads = run("sdpa", padded(pair_sequences(PAIRS), pad_id=0))
    for build in LAYOUTS.values():
        lp, grads = run("flex_attention", build())
        torch.testing.assert_close(lp, base_lp, atol=1e-4, rtol=0)
        for name, grad in base_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-4, rtol=1e-3)
