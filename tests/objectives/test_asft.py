"""ASFT (methods/objectives.md §C #32): spec fixture, closed form, ORPO <= ASFT, gradients, no reference."""
import math

import pytest
import torch
import torch.nn.functional as F

from preflab.objectives import PairBatch, SequenceLogps, get_objective


def seq(totals, lengths, T=8, grad=False):
    totals, lengths = torch.as_tensor(totals, dtype=torch.float64), torch.as_tensor(lengths)
    mask = torch.arange(T) < lengths[:, None]
    tok = torch.where(mask, (totals / lengths)[:, None].expand(-1, T), torch.full((len(totals), T), 3.0))
    return SequenceLogps(tok.clone().requires_grad_(grad), mask)


def test_fixture_value_reference_free():
    # A(y_w) = -10/5 = -2, A(y_l) = -12/8 = -1.5, no reference sides at all
    out = get_objective("asft", lam=0.1)(PairBatch(seq([-10.0], [5]), seq([-12.0], [8])))
    assert out.loss.item() == pytest.approx(2.2252482459, abs=1e-9)
    assert out.loss.item() == pytest.approx(2.2 - 0.1 * math.log(1 - math.exp(-1.5)), abs=1e-12)


def _draws(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    a_w = -torch.rand(n, generator=g, dtype=torch.float64) * 4 - 1e-3
    a_l = -torch.rand(n, generator=g, dtype=torch.float64) * 4 - 1e-3
    return a_w, a_l


def test_closed_form_and_orpo_bound():
    a_w, a_l = _draws()
    lam = 0.25
    out = get_objective("asft", lam=lam)(PairBatch.from_sums(a_w, a_l))
    closed = -(1 + lam) * a_w - lam * torch.log(-torch.expm1(a_l))
    torch.testing.assert_close(out.losses, closed, rtol=0, atol=1e-10)
    # ORPO per example (one sequence, so its token-mean NLL is -A_w): -A_w - lam * log sigmoid(log-odds ratio)
    log_odds = (a_w - a_l) - (torch.log(-torch.expm1(a_w)) - torch.log(-torch.expm1(a_l)))
    orpo = -a_w - lam * F.logsigmoid(log_odds)
    assert (orpo <= out.losses + 1e-12).all()


def test_gradients_closed_form():
    lam = 0.1
    a_w, a_l = torch.tensor([-2.0], dtype=torch.float64), torch.tensor([-1.5], dtype=torch.float64)
    a_w.requires_grad_(True), a_l.requires_grad_(True)
    get_objective("asft", lam=lam)(PairBatch.from_sums(a_w, a_l)).loss.backward()
    p_l = math.exp(-1.5)
    assert a_w.grad.item() == pytest.approx(-(1 + lam), abs=1e-12)
    assert a_l.grad.item() == pytest.approx(lam * p_l / (1 - p_l), abs=1e-12)


def test_tempered_variant_by_hand():
    a_w, a_l, lam, beta = -2.0, -1.5, 0.1, 2.0
    odds = lambda a: a - math.log(1 - math.exp(a))  # noqa: E731
    logsig = lambda z: -math.log1p(math.exp(-z))  # noqa: E731
    expected = -a_w - lam * (logsig(beta * odds(a_w)) + logsig(-beta * odds(a_l)))
    out = get_objective("asft", lam=lam, beta=beta)(PairBatch.from_sums(torch.tensor([a_w], dtype=torch.float64),
                                                                    torch.tensor([a_l], dtype=torch.float64)))
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)


def test_finite_for_empty_rejected_response():
    batch = PairBatch(seq([-4.0], [2]), SequenceLogps(torch.zeros(1, 3, dtype=torch.float64),
                                                    torch.zeros(1, 3, dtype=torch.bool)))
    assert torch.isfinite(get_objective("asft")(batch).loss)


def test_turbo_alignment_config_default_by_hand():
    # turbo-alignment@72e737d's pipeline settings give lambda_ = 1 and (inherited) beta = 0.1: the tempered form.
    # Its per-pair loss -A_w + lambda_ * [-log sigmoid(beta r_w) - log sigmoid(-beta r_l)], r = A - log(1 - e^A),
    # at A_w = -2, A_l = -1.5: r_w = -2 - log(1 - e^-2), r_l = -1.5 - log(1 - e^-1.5).
    a_w, a_l, lam, beta = -2.0, -1.5, 1.0, 0.1
    r_w, r_l = a_w - math.log(1 - math.exp(a_w)), a_l - math.log(1 - math.exp(a_l))
    expected = -a_w + lam * (math.log1p(math.exp(-beta * r_w)) + math.log1p(math.exp(beta * r_l)))
    batch = PairBatch.from_sums(torch.tensor([a_w], dtype=torch.float64), torch.tensor([a_l], dtype=torch.float64))
    assert get_objective("asft", lam=lam, beta=beta)(batch).loss.item() == pytest.approx(expected, abs=1e-12)
    # and it is not ASFT: at beta = 1 the same lambda gives -(1 + lam) A_w - lam log(1 - e^A_l)
    asft = get_objective("asft", lam=lam)(batch).loss.item()
    assert asft == pytest.approx(-2 * a_w - math.log(1 - math.exp(a_l)), abs=1e-12)
    assert abs(asft - expected) > 0.5
