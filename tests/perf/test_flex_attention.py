"""FlexAttention (opt-in: a model loaded with attn_implementation="flex_attention"): the prefix-shared and packed
layouts' masks go to the model as BlockMasks and score exactly as the padded layout with sdpa.

torch 2.13 refuses FlexAttention inputs that require gradients on CPU (`_validate_device`: "FlexAttention does not
support backward on CPU"), compiled or not, and its compiled CPU kernel has no backward (with that check lifted,
inductor fails: "IndexError: tuple index out of range"). The op itself has one: flex_attention without
torch.compile runs torch's reference implementation (the whole score matrix, the same mask_mod, softmax and
autograd formulas), which is exact. The CPU tests below lift the check for CPU tensors only and replace
transformers' compile wrapper by that eager op (cpu_flex_backward), so preflab's side of the path is checked with
gradients on CPU: the BlockMask of each layout (blocks of 128 positions, rows longer than one block, bucketed
widths that are not multiples of 128), transformers' flex integration with grouped-query heads (a power of two:
enable_gqa; 6 heads: repeat_kv, as Qwen2-0.5B's 14), position ids, a tied head, and a whole training run. What stays
GPU-only: the fused kernels (compiled forward and backward, test_flex_training_scores_and_gradients_equal_padded_on
_cuda)."""
import random
from types import SimpleNamespace

import pytest
import torch

from preflab.data.layout import bucket, pair_sequences, padded
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
LAYOUTS = {"prefix_shared": lambda pairs: prefix_shared(pairs, pad_id=0),
           "prefix_packed": lambda pairs: packed_pairs(pairs, pad_id=0, share_prefix=True),
           "packed": lambda pairs: packed_pairs(pairs, pad_id=0, share_prefix=False)}


def _long_pairs():
    """Rows of 1-3 blocks of 128 positions (prefix-shared widths 313; packed rows 516 and 694): whole blocks are
    masked (one response's queries against the other's keys), others partly."""
    rng = random.Random(0)
    draw = lambda k: [rng.randrange(3, 250) for _ in range(k)]  # noqa: E731
    return [SimpleNamespace(prompt_ids=[1] + draw(140), chosen_ids=draw(60) + [2], rejected_ids=draw(110) + [2]),
            SimpleNamespace(prompt_ids=[1] + draw(5), chosen_ids=draw(9) + [2], rejected_ids=draw(3) + [2]),
            SimpleNamespace(prompt_ids=[1] + draw(30), chosen_ids=draw(130) + [2], rejected_ids=draw(20) + [2])]


LONG_PAIRS = _long_pairs()
ARCHS = {"llama": {}, "qwen2_6_heads": dict(arch="qwen2", hidden_size=48, num_heads=6)}  # 4 heads / 2 KV; 6 / 3


def eager_flex(monkeypatch):
    import transformers.integrations.flex_attention as tfa
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(tfa.WrappedFlexAttention, "__init__", lambda self, training: None)
    monkeypatch.setattr(tfa.WrappedFlexAttention, "__call__", lambda self: flex_attention)


def cpu_flex_backward(monkeypatch):
    """eager_flex, and torch's refusal of gradients on CPU lifted for CPU tensors (see the module docstring)."""
    import torch.nn.attention.flex_attention as fa

    eager_flex(monkeypatch)
    real = fa._validate_device
    monkeypatch.setattr(fa, "_validate_device", lambda q, k, v: None if q.device.type == "cpu" else real(q, k, v))


def scores_and_grads(impl, layout, device="cpu", arch="llama"):
    """Token log-probs of `layout` by a fresh tiny model (training mode) with attention `impl`, and the parameter
    gradients of a weighted sum of them (weights 0.5..1.5, so every position's gradient counts differently)."""
    model = tiny_causal_lm(vocab_size=256, seed=1, **ARCHS[arch]).to(device).train()
    model.set_attn_implementation(impl)
    lp = LogProbScorer(model)(layout.to(device)).token_logps
    (lp * torch.linspace(0.5, 1.5, lp.numel(), device=device).reshape(lp.shape)).sum().backward()
    return lp.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def assert_same_scores_and_grads(got, expected, atol, rtol):
    (lp, grads), (base_lp, base_grads) = got, expected
    torch.testing.assert_close(lp, base_lp, atol=atol, rtol=0)
    assert grads.keys() == base_grads.keys()
    for name, grad in base_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=atol, rtol=rtol, msg=name)


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
        flex = LogProbScorer(model)(LAYOUTS[name](PAIRS)).token_logps
    assert model.config._attn_implementation == "flex_attention"
    torch.testing.assert_close(flex, base, atol=1e-5, rtol=0)


def test_torch_refuses_flex_attention_gradients_on_cpu():
    """Why the CPU tests lift a check: torch 2.13 refuses them, before any compile. When a torch release accepts
    them, this fails: drop cpu_flex_backward's lift and test the compiled path on CPU."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    mask = create_block_mask(lambda b, h, i, j: i >= j, 1, None, 16, 16, device="cpu")
    with pytest.raises(NotImplementedError, match="FlexAttention does not support backward on CPU"):
        flex_attention(q, q, q, block_mask=mask)


CPU_CASES = [(arch, name, multiple) for arch in ARCHS for name in LAYOUTS for multiple in (None, 64)
             if arch == "llama" or multiple]


@pytest.mark.parametrize("arch,name,multiple", CPU_CASES)
def test_flex_scores_and_gradients_equal_padded_sdpa_on_cpu(monkeypatch, arch, name, multiple):
    """Rows over several 128-position blocks, with and without pad_to_multiple_of 64 (widths 320, 576, 704: not
    multiples of the block): log-probs and parameter gradients equal the padded layout's with sdpa (float32;
    measured 1e-6 absolute, 3e-6 on gradients up to 10)."""
    cpu_flex_backward(monkeypatch)
    layout = LAYOUTS[name](LONG_PAIRS)
    if multiple:
        layout = bucket(layout, multiple, pad_id=0)
        assert layout.input_ids.shape[1] % multiple == 0 and layout.input_ids.shape[1] % 128
    assert layout.input_ids.shape[1] > 256
    base = scores_and_grads("sdpa", padded(pair_sequences(LONG_PAIRS), pad_id=0), arch=arch)
    assert_same_scores_and_grads(scores_and_grads("flex_attention", layout, arch=arch), base, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_flex_training_run_equals_the_sdpa_run_on_cpu(tmp_path, monkeypatch):
    """The Trainer with a flex_attention policy and reference (prefix-shared rows as BlockMasks, bucketed to 64,
    the reference scored under no_grad) trains as the sdpa one: the losses of 3 steps at lr 1e-3 and the final
    weights (float32; 1e-5)."""
    import json
    import sys
    from pathlib import Path

    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_tokenizer

    sys.path.insert(0, str(Path(__file__).parents[1] / "loops"))
    from tiny_run import synthetic_pairs

    cpu_flex_backward(monkeypatch)
    torch.set_num_threads(1)

    def train(impl):
        out = tmp_path / impl
        cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic",
                                    output_dir=str(out), learning_rate=1e-3, per_device_train_batch_size=4,
                                    max_steps=3, logging_steps=1, disable_tqdm=True, use_cpu=True,
                                    pad_to_multiple_of=64))
        tok = tiny_tokenizer()
        policy = tiny_causal_lm(tok, seed=0)
        policy.set_attn_implementation(impl)
        trainer = Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=synthetic_pairs(12))
        trainer.train()
        assert trainer.layout == "prefix_shared"
        assert trainer.micro_batches(0)[0].layout.input_ids.shape[1] == 64
        losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
        return losses, {n: p.detach().clone() for n, p in policy.named_parameters()}

    flex_losses, flex_weights = train("flex_attention")
    sdpa_losses, sdpa_weights = train("sdpa")
    assert len(flex_losses) == 3
    assert flex_losses == pytest.approx(sdpa_losses, abs=1e-5)
    for name, weight in sdpa_weights.items():
        torch.testing.assert_close(flex_weights[name], weight, atol=1e-5, rtol=0, msg=name)


def test_a_flex_policy_is_refused_on_cpu_before_the_first_step(tmp_path, monkeypatch):
    """Without the lift, torch refuses the backward inside step 1 (after compiling the forward: 75 s for the
    benchmark's tiny shape, or a C++ compile error of inductor's CPU kernel): the Trainer refuses as train() starts
    (preflab.loops.driver), naming the setting; the same model on a GPU, or with sdpa, is not refused. The Trainer
    is built without the layout's custom-mask probe (compiled FlexAttention forwards), which only evaluate() reads."""
    from preflab.models import attention

    probed = []
    monkeypatch.setattr(attention, "_probe_custom_mask", lambda base: probed.append(base) or (True, ""))
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_tokenizer

    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", max_steps=1,
                                per_device_train_batch_size=2,
                                output_dir=str(tmp_path / "run"), use_cpu=True, disable_tqdm=True))
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    policy.set_attn_implementation("flex_attention")
    with pytest.raises(ConfigError, match=r"attn_implementation: flex_attention \(the policy's\) cannot train on the "
                                          r"CPU: torch .* has no FlexAttention backward on CPU.*use sdpa"):
        Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=PAIRS).train()
    assert probed == []
    from preflab.models.attention import refuse_flex_training_on_cpu

    refuse_flex_training_on_cpu(policy, torch.device("cuda", 0))  # never touched: only the device type is read
    policy.set_attn_implementation("sdpa")
    refuse_flex_training_on_cpu(policy, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's fused kernels (forward, backward) need a GPU")
def test_flex_training_scores_and_gradients_equal_padded_on_cuda():
    """Compiled FlexAttention with gradients: log-probs and gradients equal the padded sdpa path (float32,
    1e-4: fused kernels reorder sums): the short pairs (one block) in every layout, and the long ones prefix-shared
    and bucketed to 64 (3 blocks, a width that is not a multiple of 128) with both kinds of grouped-query heads.
    Five flex shapes (each a compile on the device), so that it stays within device_run.sh's test budget."""
    cases = [("llama", PAIRS, name, None) for name in LAYOUTS]
    cases += [(arch, LONG_PAIRS, "prefix_shared", 64) for arch in ARCHS]
    for arch, pairs, name, multiple in cases:
        base = scores_and_grads("sdpa", padded(pair_sequences(pairs), pad_id=0), "cuda", arch)
        layout = bucket(LAYOUTS[name](pairs), multiple, pad_id=0) if multiple else LAYOUTS[name](pairs)
        assert_same_scores_and_grads(scores_and_grads("flex_attention", layout, "cuda", arch), base, atol=1e-4,
                                     rtol=1e-3)
