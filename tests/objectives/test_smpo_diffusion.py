"""SmPO-Diffusion: methods §5 checks (toy numbers, reductions, bound, per-pair p)."""
import math

import pytest
import torch

from preflab.diffusion.smoothing import PICKSCORE_MAX, PICKSCORE_MIN, order_by_score, smoothed_preference
from preflab.errors import PreflabError
from preflab.objectives import PairBatch, get_objective


def batch_from_errors(e_w, e_l, r_w, r_l, p=None, grad=False):
    e = [torch.as_tensor(v, dtype=torch.float64).clone().requires_grad_(grad and i < 2)
         for i, v in enumerate((e_w, e_l, r_w, r_l))]
    extras = {} if p is None else {"preference_prob": torch.as_tensor(p, dtype=torch.float64)}
    return PairBatch.from_sums(-e[0], -e[1], -e[2], -e[3], extras), e[0], e[1]


def test_toy_numbers_by_hand():
    p = smoothed_preference(torch.tensor([0.25]), torch.tensor([0.20]))
    norm = lambda s: (s - PICKSCORE_MIN) / (PICKSCORE_MAX - PICKSCORE_MIN)  # noqa: E731
    assert norm(0.25) == pytest.approx(0.807806, abs=1e-6) and norm(0.20) == pytest.approx(0.507651, abs=1e-6)
    assert p.item() == pytest.approx(0.574480, abs=1e-6)
    # Delta_theta - Delta_ref = -0.0002, beta = 2000 -> inside = 1000 * kappa * 0.0002
    batch = batch_from_errors([0.1000], [0.1002], [0.1001], [0.1001], p)[0]
    out = get_objective("smpo_diffusion", beta=2000.0)(batch)
    assert out.metrics["kappa"].item() == pytest.approx(1.489610, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.555240, abs=1e-6)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.297922)), abs=1e-6)


@pytest.mark.parametrize("p,kappa_scale", [(0.55, 10.0), (1.0, 1.0)])
def test_reduces_to_diffusion_dpo(p, kappa_scale):
    g = torch.Generator().manual_seed(0)
    e = 0.1 + 1e-3 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    batch = batch_from_errors(*e, p=torch.full((8,), p, dtype=torch.float64))[0]
    smpo = get_objective("smpo_diffusion", beta=2000.0, kappa_scale=kappa_scale)(batch)
    dpo = get_objective("diffusion_dpo", beta=2000.0)(batch)
    torch.testing.assert_close(smpo.losses, dpo.losses, atol=1e-12, rtol=0)
    assert dpo.losses.std() > 0.01


def test_equal_preference_gives_log2_and_no_gradient():
    batch, e_w, e_l = batch_from_errors([0.1, 0.2], [0.3, 0.1], [0.2, 0.2], [0.1, 0.3], p=[0.5, 0.5], grad=True)
    out = get_objective("smpo_diffusion")(batch)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-15)
    out.loss.backward()
    assert e_w.grad.abs().max().item() == 0.0 and e_l.grad.abs().max().item() == 0.0


def test_preference_bound_for_in_range_scores():
    s = torch.linspace(PICKSCORE_MIN, PICKSCORE_MAX, 41, dtype=torch.float64)
    p = smoothed_preference(s.reshape(-1, 1), s.reshape(1, -1))
    upper = torch.sigmoid(torch.tensor(1.0, dtype=torch.float64))
    assert p.max().item() == pytest.approx(upper.item(), abs=1e-12)
    assert upper.item() == pytest.approx(0.731059, abs=1e-6)
    assert 10 * (2 * upper.item() - 1) == pytest.approx(4.621172, abs=1e-6)
    assert order_by_score(torch.tensor([0.3, 0.1]), torch.tensor([0.2, 0.2])).tolist() == [True, False]


def test_per_pair_preference_not_first_of_batch():
    # the released code used probs[0] for every pair; here each pair keeps its own p
    e = ([0.1000, 0.1000], [0.1002, 0.1002], [0.1001, 0.1001], [0.1001, 0.1001])
    obj = get_objective("smpo_diffusion")
    both = obj(batch_from_errors(*e, p=[0.6, 0.7])[0]).losses
    for i, p in enumerate((0.6, 0.7)):
        single = obj(batch_from_errors(*[[v[i]] for v in e], p=[p])[0]).losses
        assert both[i].item() == pytest.approx(single.item(), abs=1e-15)
    assert both[0].item() != pytest.approx(both[1].item(), abs=1e-3)


def test_probability_outside_unit_interval_is_an_error():
    with pytest.raises(PreflabError, match="preference_prob"):
        get_objective("smpo_diffusion")(batch_from_errors([0.1], [0.2], [0.1], [0.2], p=[1.5])[0])
