"""UPO selection (MC dropout + BALD): spec #26 closed forms, and a cleaner subset under planted label noise."""
import math

import pytest
import torch

from preflab.errors import ConfigError, PreflabError
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.objectives.upo import alpha_from_bald
from preflab.reward_models.backbone_head import PooledHead, encode_texts
from preflab.reward_models.estimator import DropoutPairClassifier, fit_pair_estimator, pair_inputs
from preflab.reward_models.uncertainty import (bald, dropout_sources, entropy, majority_vote, mc_dropout_probs,
                                            reliable_weights, select_reliable_pairs)


def passes(*p0):
    """[T, 1, 2] MC probabilities from the class-0 probability of each pass."""
    p = torch.tensor(p0, dtype=torch.float64)
    return torch.stack([p, 1 - p], -1).unsqueeze(1)


def test_bald_closed_form_values_from_the_spec():
    confident = passes(0.9, 0.9, 0.9, 0.9)
    assert bald(confident).item() == pytest.approx(0.0, abs=1e-12)
    assert entropy(confident.mean(0)).item() == pytest.approx(0.325083, abs=1e-6)
    assert bald(passes(0.99, 0.01, 0.99, 0.01)).item() == pytest.approx(0.637146, abs=1e-6)  # ln2 - 0.056002
    assert bald(passes(0.5, 0.5, 0.5, 0.5)).item() == pytest.approx(0.0, abs=1e-12)  # aleatoric, not epistemic
    assert bald(passes(0.9, 0.6, 0.8, 0.7)).item() == pytest.approx(0.034990, abs=1e-5)
    assert bald(passes(1.0, 0.0)).item() == pytest.approx(math.log(2), abs=1e-9)  # the maximum, ln C


def test_reliable_weights_and_alpha_mapping():
    w = reliable_weights(torch.tensor([0.0, 0.1, 0.4, 0.637], dtype=torch.float64))
    assert torch.allclose(w, torch.tensor([0.3493, 0.3144, 0.2096, 0.1268], dtype=torch.float64), atol=1e-4)
    assert torch.allclose(alpha_from_bald(torch.tensor([0.0, math.log(2)])), torch.tensor([0.0, 0.1]))
    with pytest.raises(ConfigError):
        reliable_weights(torch.tensor([0.1]), mu=0.0)


def test_vote_ties_are_undecided_and_do_not_pass_the_filter():
    probs = torch.cat([passes(0.9, 0.8, 0.2, 0.1), passes(0.9, 0.8, 0.7, 0.1), passes(0.1, 0.2, 0.3, 0.9)], 1)
    vote, agreement = majority_vote(probs)
    assert vote.tolist() == [-1, 0, 1] and agreement.tolist() == [0.5, 0.75, 0.75]
    sel = select_reliable_pairs(probs, fraction=1.0)
    assert sel.index.tolist() == [1]
    assert sel.counts == {"pairs": 3, "disagree": 1, "undecided": 1, "candidates": 1, "selected": 1}


def noisy_pairs(seed, dim=8):
    """True reward w.x. A clean seed set (300 pairs, ordered by w) and 1000 candidate pairs labelled by a noisy RM:
    correct with probability sigmoid(2|margin|) (errors near the boundary), then 10% uniform flips."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=g)
    w = w / w.norm()

    def draw(n):
        a, b = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)
        return a, b, (a - b) @ w

    a, b, m = draw(300)
    seed_chosen, seed_rejected = torch.where((m > 0)[:, None], a, b), torch.where((m > 0)[:, None], b, a)
    a, b, m = draw(1000)
    correct = (torch.rand(1000, generator=g) < torch.sigmoid(2.0 * m.abs())) & (torch.rand(1000, generator=g) >= 0.1)
    a_first = (m > 0) == correct
    chosen, rejected = torch.where(a_first[:, None], a, b), torch.where(a_first[:, None], b, a)
    return seed_chosen, seed_rejected, chosen, rejected, ~correct


@pytest.mark.parametrize("seed", [0, 1])
def test_uncertainty_filter_keeps_a_cleaner_subset_under_planted_label_noise(seed):
    seed_chosen, seed_rejected, chosen, rejected, flipped = noisy_pairs(seed)
    torch.manual_seed(seed)
    estimator = DropoutPairClassifier(8, hidden=32, dropout=0.3)
    fit_pair_estimator(estimator, seed_chosen, seed_rejected, steps=300, lr=0.01, seed=seed)
    probs = mc_dropout_probs(estimator, pair_inputs(chosen, rejected), passes=20, seed=seed)
    overall = flipped.float().mean().item()  # measured 0.263, 0.256
    g = torch.Generator().manual_seed(seed)
    random_half = sum(flipped[torch.randperm(1000, generator=g)[:500]].float().mean().item() for _ in range(20)) / 20
    # UPO's full rule: majority-vote noise filter, then half of the rest drawn by (1 - BALD) weights
    full = select_reliable_pairs(probs, 0.5, rule="sample", seed=seed)
    full_rate = flipped[full.index].float().mean().item()  # measured 0.014, 0.016
    assert overall > 0.2 and full_rate < 0.06 and full_rate < overall / 4
    # uncertainty alone (no vote): the lower-BALD half is cleaner than a random half
    lowest = select_reliable_pairs(probs, 0.5, rule="lowest", filter_disagreements=False)
    lowest_rate = flipped[lowest.index].float().mean().item()  # measured 0.164, 0.128 vs random 0.262, 0.256
    assert lowest_rate < 0.75 * random_half
    # sharper reliable sampling (larger mu) keeps fewer flipped pairs than mu = 1
    def sampled(mu):
        return sum(flipped[select_reliable_pairs(probs, 0.5, mu=mu, filter_disagreements=False, seed=s).index]
                   .float().mean().item() for s in range(10)) / 10
    assert sampled(50.0) < sampled(1.0) - 0.02  # measured 0.205 vs 0.255, 0.174 vs 0.250


def test_without_dropout_every_pass_is_the_eval_forward_and_bald_is_zero():
    torch.manual_seed(0)
    chosen, rejected = torch.randn(16, 4), torch.randn(16, 4)
    model = DropoutPairClassifier(4, dropout=0.0).eval()
    assert dropout_sources(model) == []
    with pytest.raises(PreflabError, match="no.*dropout|none active"):
        mc_dropout_probs(model, pair_inputs(chosen, rejected))
    probs = mc_dropout_probs(model, pair_inputs(chosen, rejected), passes=5, require_dropout=False)
    with torch.no_grad():
        p0 = torch.sigmoid(model(pair_inputs(chosen, rejected)))
    assert torch.equal(probs, probs[:1].expand(5, 16, 2))  # identical passes
    assert bald(probs).abs().max() < 1e-6  # zero up to float32 rounding of the two entropies
    assert torch.allclose(probs[:, :, 0], p0.expand(5, 16))
    # with dropout: passes differ, the seed makes them reproducible, and the model comes back in eval mode
    model = DropoutPairClassifier(4, dropout=0.5).eval()
    a = mc_dropout_probs(model, pair_inputs(chosen, rejected), passes=8, seed=3)
    assert torch.equal(a, mc_dropout_probs(model, pair_inputs(chosen, rejected), passes=8, seed=3))
    assert (bald(a) > 0).all() and not any(m.training for m in model.modules())


def test_mc_dropout_on_tiny_transformer_backbones():
    tok = tiny_tokenizer("bytelevel")
    texts = ["Q: pick . #1: the cat sat #2: the dog ran", "Q: pick . #1: hello world #2: a quick fox"]
    inputs = encode_texts(tok, texts)
    gpt2 = PooledHead(tiny_causal_lm(tok, "gpt2", hidden_size=16, num_layers=1, num_heads=2), out_dim=2).eval()
    assert any("resid_dropout(p=0.1)" in s for s in dropout_sources(gpt2))  # GPT-2 configs default to 0.1
    probs = mc_dropout_probs(gpt2, inputs, passes=6, seed=0)
    assert probs.shape == (6, 2, 2) and (bald(probs) > 0).all()
    assert not any(m.training for m in gpt2.modules())
    with torch.no_grad():
        eval_probs = torch.softmax(gpt2(inputs), -1)
    assert not torch.allclose(probs[0], eval_probs)  # the passes really were stochastic
    llama = PooledHead(tiny_causal_lm(tok, "llama", hidden_size=16, num_layers=1, num_heads=2), out_dim=2)
    assert dropout_sources(llama) == []  # tiny llama has attention_dropout = 0
    with pytest.raises(PreflabError):
        mc_dropout_probs(llama, inputs)
    attention = llama.backbone.model.layers[0].self_attn
    attention.attention_dropout = 0.3  # applied functionally when the module is in train mode
    assert dropout_sources(llama) == ["backbone.model.layers.0.self_attn.attention_dropout=0.3"]
    assert (bald(mc_dropout_probs(llama, inputs, passes=6, seed=0)) > 0).all()


def test_lowest_rule_keeps_the_ceil_fraction_of_least_uncertain_candidates():
    """rule 'lowest' with fraction 1/2 of 3 candidates keeps ceil(1.5) = 2 pairs (the module's deviation from the
    code's floor, which keeps 1), the two of lowest BALD (0 and 0.035), in that order."""
    probs = torch.cat([passes(0.99, 0.6, 0.99, 0.6), passes(0.9, 0.9, 0.9, 0.9), passes(0.9, 0.6, 0.8, 0.7)], 1)
    scores = bald(probs)
    assert scores[1].item() == 0.0 and scores[2].item() == pytest.approx(0.034990, abs=1e-5) and scores[0] > scores[2]
    sel = select_reliable_pairs(probs, fraction=0.5, rule="lowest")
    assert sel.index.tolist() == [1, 2] and sel.counts["selected"] == 2
    assert select_reliable_pairs(probs, fraction=0.2, rule="lowest").index.tolist() == [1]  # ceil(0.6) = 1



def test_a_fitted_estimator_is_left_in_eval_mode_its_forward_the_dropout_free_one():
    """fit_pair_estimator trains with dropout on and leaves the model in eval mode: its plain forward is then the
    deterministic one (equal to the same weights with dropout p = 0), MC dropout turning dropout on by itself."""
    import copy

    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g)
    model = DropoutPairClassifier(4, hidden=8, dropout=0.5)
    fit_pair_estimator(model, chosen, rejected, steps=5, seed=0)
    assert not any(m.training for m in model.modules())
    no_dropout = copy.deepcopy(model).train()
    for m in no_dropout.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    inputs = pair_inputs(chosen, rejected)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), no_dropout(inputs), atol=0, rtol=0)
