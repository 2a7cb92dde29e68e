"""online_ipo against models-and-loops.md §B0.6/#23: fixture values, token mean, population minimizer, the G3 fixed point."""
import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective

F64 = dict(dtype=torch.float64)
M = torch.tensor([[0.0, 1, -2], [-1, 0, 3], [2, -3, 0]], **F64)
P = 0.5 + M / 6                                   # G3: intransitive 3-arm game
REF = torch.full((3,), 1 / 3, **F64)
I, J = (x.flatten() for x in torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij"))


def fixture(p_y, p_yp):
    return PairBatch.from_sums(torch.tensor([-10.0], **F64), torch.tensor([-12.0], **F64), torch.tensor([-11.0], **F64),
                               torch.tensor([-11.5], **F64), extras={"pref_y": [p_y], "pref_yp": [p_yp]})


def test_fixture_oipo1_and_oipo2():
    obj = get_objective("online_ipo", beta=0.1)
    assert obj(fixture(0.7, 0.4)).loss.item() == pytest.approx(2.25, abs=1e-12)   # (1.5 - 3)^2
    assert obj(fixture(0.7, 0.5)).loss.item() == pytest.approx(0.25, abs=1e-12)   # OIPO-2: y'' = y', (1.5 - 2)^2


def test_token_mean_aggregation():
    mask = torch.tensor([[True, True, False, False]])  # two response tokens, two pad positions
    s = lambda v: SequenceLogps(torch.full((1, 4), v, **F64), mask)  # noqa: E731 (per-token log-prob v)
    b = PairBatch(s(-2.0), s(-3.0), s(-2.5), s(-2.0), extras={"pref_y": [0.6], "pref_yp": [0.5]})
    # sum: h_y = 2*0.5 = 1, h_y' = 2*(-1) = -2, gap 3; mean: gap 1.5; target 0.1/0.1 = 1
    assert get_objective("online_ipo", beta=0.1)(b).loss.item() == pytest.approx(4.0, abs=1e-12)
    assert get_objective("online_ipo", beta=0.1, token_agg="mean")(b).loss.item() == pytest.approx(0.25, abs=1e-12)


def population_loss(logp, opponent, beta):
    """(1/N^2) sum_{y, y'} [(h(y) - h(y')) - ((P pi)_y - (P pi)_y')/beta]^2 with the opponent pi fixed."""
    w = P @ opponent
    b = PairBatch.from_sums(logp[I], logp[J], REF.log()[I], REF.log()[J], extras={"pref_y": w[I], "pref_yp": w[J]})
    return get_objective("online_ipo", beta=beta)(b).loss


def test_population_minimizer_is_the_mirror_descent_target():
    beta, opp = 0.1, torch.tensor([0.6, 0.3, 0.1], **F64)
    theta = opp.log().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = population_loss(torch.log_softmax(theta, -1), opp, beta)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    expected = torch.softmax(REF.log() + P @ opp / beta, -1)
    torch.testing.assert_close(torch.softmax(theta.detach(), -1), expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("beta,table", [(0.1, (0.409020, 0.421345, 0.169635)), (0.01, (0.492525, 0.344386, 0.163089))])
def test_regularized_nash_equilibrium_is_a_fixed_point(beta, table):
    # solve pi* = softmax(log ref + P pi*/beta) by Newton on F(t) = t - log ref - P softmax(t)/beta
    F = lambda t: t - REF.log() - P @ torch.softmax(t, -1) / beta  # noqa: E731
    t = REF.log().clone()
    for _ in range(60):
        t = t - torch.linalg.solve(torch.autograd.functional.jacobian(F, t), F(t))
    pi_star = torch.softmax(t, -1)
    torch.testing.assert_close(pi_star, torch.tensor(table, **F64), atol=1e-6, rtol=0)
    # with the opponent at pi*, the online-IPO population loss is stationary (and zero) at pi*
    theta = pi_star.log().clone().requires_grad_(True)
    loss = population_loss(torch.log_softmax(theta, -1), pi_star, beta)
    loss.backward()
    assert loss.item() < 1e-20 and theta.grad.abs().max().item() < 1e-9
