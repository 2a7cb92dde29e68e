"""Per-step savings of the scorer, exact: TargetLogProb (the LM head's log p(target) with an in-place backward)
equals plain autograd bit for bit; models scoring one layout share its converted attention mask."""
import pytest
import torch

from preflab.data.layout import padded
from preflab.models.tiny import tiny_causal_lm
from preflab.scoring import lm
from preflab.scoring.lm import LogProbScorer, TargetLogProb

SEQS = [([1, 5, 9, 14], [20, 21, 2]), ([1, 7], [30, 31, 32, 33, 2]), ([1, 5, 9, 14], [40, 2]), ([1, 7], [8, 2])]


def autograd_target_logprob(logits, targets):
    """The formula TargetLogProb replaces: gather minus logsumexp, differentiated by autograd."""
    logz = torch.logsumexp(logits, dim=-1)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz, logz.detach()


@pytest.mark.parametrize("rows,vocab", [(37, 1000), (5, 8192), (300, 64)])
def test_values_and_gradient_equal_autograd_bit_for_bit(rows, vocab):
    gen = torch.Generator().manual_seed(rows)
    logits = (torch.randn(rows, vocab, generator=gen) * 3).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    upstream = torch.randn(rows, generator=gen)
    expected_lp, expected_logz = autograd_target_logprob(logits, targets)
    expected_grad, = torch.autograd.grad(expected_lp, logits, upstream)
    logp, logz = TargetLogProb.apply(logits, targets)
    grad, = torch.autograd.grad(logp, logits, upstream)
    assert torch.equal(logp, expected_lp) and torch.equal(logz, expected_logz)
    assert torch.equal(grad, expected_grad)  # not allclose: the same float operations
    assert not logz.requires_grad  # log Z carries no gradient (the token KL keeps plain autograd)


def test_target_logprob_backward_fills_no_zero_gradient_for_log_z():
    """log Z has no gradient: its backward input stays None (set_materialize_grads(False)) instead of a zero-filled
    [C] tensor that the backward ignored (one launch per chunk); the backward's ops are its five own."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1)).requires_grad_()
    logp, _ = TargetLogProb.apply(logits, torch.arange(6))
    upstream = torch.randn(6)
    with Ops() as ops:
        torch.autograd.grad(logp, logits, upstream)
    kernels = [n for n in ops.names if n not in ("unsqueeze", "detach", "alias")]
    assert kernels == ["sub", "exp_", "neg", "mul_", "scatter_add_"], ops.names


@pytest.mark.parametrize("chunk_tokens", [None, 2])  # one chunk (logits kept) / checkpointed chunks (recomputed)
def test_scorer_gradients_equal_plain_autograd_bit_for_bit(monkeypatch, chunk_tokens):
    model = tiny_causal_lm(vocab_size=64, seed=3)
    layout = padded(SEQS, pad_id=0)
    weights = torch.randn(len(SEQS), layout.response_mask.shape[1], generator=torch.Generator().manual_seed(0))

    def grads():
        model.zero_grad()
        scores = LogProbScorer(model, chunk_tokens=chunk_tokens)(layout)
        (scores.token_logps * weights).sum().backward()
        return scores.token_logps.detach(), [p.grad.clone() for p in model.parameters()]

    fused_lp, fused = grads()
    monkeypatch.setattr(lm.TargetLogProb, "apply", autograd_target_logprob)
    plain_lp, plain = grads()
    assert torch.equal(fused_lp, plain_lp)
    assert all(torch.equal(a, b) for a, b in zip(fused, plain))


def test_models_scoring_one_layout_share_its_converted_mask(monkeypatch):
    """The reference and the policy scoring one prefix-shared micro-batch convert its 4-D bool mask once (per
    attention implementation and dtype) and score exactly as on a fresh copy of the layout."""
    from types import SimpleNamespace

    from preflab.data.prefix import prefix_shared
    from preflab.models.segment_attention import set_attention_mode

    pairs = [SimpleNamespace(prompt_ids=p, chosen_ids=c, rejected_ids=r)
             for (p, c), (_, r) in zip(SEQS[:2], SEQS[2:], strict=True)]
    policy, ref = tiny_causal_lm(vocab_size=64, seed=0), tiny_causal_lm(vocab_size=64, seed=1)
    eager = tiny_causal_lm(vocab_size=64, seed=2)
    eager.set_attn_implementation("eager")
    set_attention_mode("dense", policy, ref, eager)  # the mask path (segment attention converts no mask)
    fresh = {name: LogProbScorer(m)(prefix_shared(pairs, pad_id=0)).token_logps
             for name, m in (("policy", policy), ("ref", ref), ("eager", eager))}
    made = []
    original = lm.scorer_mask
    monkeypatch.setattr(lm, "scorer_mask", lambda *a: made.append(a[1]) or original(*a))
    layout = prefix_shared(pairs, pad_id=0)
    with torch.no_grad():
        ref_lp = LogProbScorer(ref)(layout).token_logps
    policy_lp = LogProbScorer(policy)(layout).token_logps
    assert made == [ref]  # the policy reused the reference's float mask
    eager_lp = LogProbScorer(eager)(layout).token_logps
    assert made == [ref, eager]  # another attention implementation: its own form of the mask
    assert torch.equal(ref_lp, fresh["ref"]) and torch.equal(policy_lp, fresh["policy"])
    assert torch.equal(eager_lp, fresh["eager"])
