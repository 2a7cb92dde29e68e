"""The chunked scorer equals full-logits log-probs, in value and gradient, for three architectures."""
import pytest
import torch

from preflab.data.layout import padded
from preflab.models.tiny import tiny_causal_lm
from preflab.scoring.lm import LogProbScorer, backbone_and_head, naive_token_logps, split_pairs

SEQS = [([1, 5, 9, 14], [20, 21, 2]), ([1, 7], [30, 31, 32, 33, 2]), ([1, 5, 9, 14], [40, 2]), ([1, 7], [8, 2])]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_chunked_equals_full_logits(arch):
    model = tiny_causal_lm(vocab_size=64, arch=arch)
    layout = padded(SEQS, pad_id=0)
    expected = naive_token_logps(model, layout)
    scores = LogProbScorer(model, chunk_tokens=3)(layout)
    torch.testing.assert_close(scores.token_logps, expected, atol=1e-5, rtol=1e-5)
    assert scores.mask.sum() == sum(len(r) for _, r in SEQS)


def test_gradients_match_full_logits():
    model = tiny_causal_lm(vocab_size=64)
    layout = padded(SEQS, pad_id=0)
    naive_token_logps(model, layout).sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    LogProbScorer(model, chunk_tokens=2)(layout).token_logps.sum().backward()
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)


def test_token_kl_matches_full_vocab_formula():
    policy, ref = tiny_causal_lm(vocab_size=64, seed=0), tiny_causal_lm(vocab_size=64, seed=1)
    layout = padded(SEQS, pad_id=0)
    with torch.no_grad():
        ref_scores = LogProbScorer(ref)(layout)
        out = LogProbScorer(policy, chunk_tokens=4)(layout, ref=ref_scores, ref_head=backbone_and_head(ref)[1])
        lp = torch.log_softmax(policy(input_ids=layout.input_ids, attention_mask=layout.attention_mask).logits, -1)
        lr = torch.log_softmax(ref(input_ids=layout.input_ids, attention_mask=layout.attention_mask).logits, -1)
    kl_full = (lr.exp() * (lr - lp)).sum(-1).reshape(-1)[layout.pred_index] * layout.response_mask
    torch.testing.assert_close(out.token_kl, kl_full, atol=1e-5, rtol=1e-4)
    batch = split_pairs(out, ref_scores)
    torch.testing.assert_close(batch.extras["chosen_token_kl"], kl_full[:2])
    assert batch.policy_chosen.length.tolist() == [3.0, 5.0]
    assert batch.policy_rejected.length.tolist() == [2.0, 2.0]
