"""Self-play and Nash loops on the G3 cycle: SPO/MWU, INPO, Nash-MD, EGPO vs online IPO."""
import numpy as np
import pytest
import torch

from preflab.lab.bandit import Bandit
from preflab.lab.egpo import egpo, egpo_step, online_ipo
from preflab.lab.games import dual_gap, g3, nash, reg_nash
from preflab.lab.lab_objectives import INPOLoss, registered_objective
from preflab.lab.nash_loops import inpo, inpo_update, mwu, nash_md, spo_selfplay, win_proportion
from preflab.lab.population import SoftmaxPolicy, solve

PI0 = [0.6, 0.3, 0.1]
REF = np.full(3, 1 / 3)


def test_mwu_average_iterate_converges_to_the_minimax_winner_and_the_last_does_not():
    trace = mwu(g3(), 0.1, 10_000, pi0=PI0)
    assert trace.gap_average[-1] < 2e-3
    assert np.max(np.abs(trace.average - nash(g3()))) < 2e-3
    assert trace.gap_last[-1] > 0.1


def test_sampled_spo_with_win_proportions():
    trace = spo_selfplay(g3(), 0.1, 10_000, group=16, pi0=PI0, seed=0)
    assert np.max(np.abs(trace.average - [1 / 2, 1 / 3, 1 / 6])) < 0.015


def test_win_proportion_reward():
    wins = np.array([[0.5, 1, 0, 1], [0, 0.5, 1, 1], [1, 0, 0.5, 0], [0, 0, 1, 0.5]])
    np.testing.assert_allclose(win_proportion(wins), [2 / 3, 2 / 3, 1 / 3, 1 / 3])
    assert win_proportion(wins).sum() == pytest.approx(4 / 2)


def test_mwu_step_is_the_exponential_weight_rule_that_sppo_and_dno_restate_for_spo():
    """SPPO (arXiv:2405.00675 §2, Eq. 4.1): SPO's soft policy iteration in the bandit setting is
    pi_{t+1}(y) ∝ pi_t(y) exp(eta P(y > pi_t)), P(y > pi) = E_{y'~pi} P(y > y') with outcomes in {0, 1};
    DNO (arXiv:2404.03715 Eq. 4) writes the same reward r_t(y) = E_{y'~pi_t} P(y > y'). By hand on G3."""
    P, pi, eta = g3(), np.array(PI0), 0.7
    win_rate = np.array([sum(pi[j] * P[i, j] for j in range(3)) for i in range(3)])
    unnormalised = pi * np.exp(eta * win_rate)
    np.testing.assert_allclose(mwu(P, eta, 1, pi0=PI0).last, unnormalised / unnormalised.sum(), rtol=1e-12)


def test_win_proportion_is_unbiased_for_the_win_rate_against_the_policy():
    """With y_2, y_3 ~ pi and Bernoulli duels of mean P, the expected win proportion of y_1 = k over the other two
    (1/(B-1) normaliser, self-duel excluded) is exactly P(k > pi), the restated SPO reward; a 1/B mean with the
    self-duel at 1/2 would give (2 P(k > pi) + 1/2) / 3 instead."""
    P, pi = g3(), np.array(PI0)
    for k in range(3):
        expected = 0.0
        for a in range(3):
            for b in range(3):
                wins = np.full((3, 3), 0.5)
                wins[0, 1], wins[0, 2] = P[k, a], P[k, b]  # mean outcome of each duel of y_1 = k
                expected += pi[a] * pi[b] * win_proportion(wins)[0]
        assert expected == pytest.approx(float(P[k] @ pi), abs=1e-12)


def test_selfplay_on_a_transitive_game_picks_the_best_response():
    r = np.array([0.0, 1.0, 2.0])
    P = 1 / (1 + np.exp(-(r[:, None] - r[None, :])))
    assert mwu(P, 0.1, 10_000, pi0=PI0).average[2] > 0.95


def _inpo_population_minimizer(objective, pi_t, eta, tau):
    """Pairs y, y' ~ pi_t ordered by a draw from P; extras carry log pi_t of both sides."""
    env = Bandit.from_preferences(REF, g3()).on_policy_pairs(pi_t)
    log_t = torch.log(torch.as_tensor(pi_t, dtype=torch.float64))
    extras = lambda logp, x, i, j: {"prev_chosen_logps": log_t[i], "prev_rejected_logps": log_t[j]}  # noqa: E731
    return solve(objective, env, model=SoftmaxPolicy(REF), extras_fn=extras)[0]


def test_inpo_loss_minimizer_is_the_closed_form_update():
    pi_t, eta, tau = np.array(PI0), 0.5, 0.1
    target = inpo_update(pi_t, g3(), REF, eta, tau)
    np.testing.assert_allclose(target, [0.59311514, 0.29695048, 0.10993439], atol=1e-8)
    assert np.max(np.abs(_inpo_population_minimizer(INPOLoss(eta=eta, tau=tau), pi_t, eta, tau) - target)) < 1e-7
    registered = registered_objective("inpo", {("eta",): eta, ("tau",): tau})
    assert np.max(np.abs(_inpo_population_minimizer(registered, pi_t, eta, tau) - target)) < 1e-6


def test_inpo_iterates_converge_to_the_regularized_nash():
    trace = inpo(g3(), REF, 1.0, 0.1, 1000, pi0=PI0)
    star = reg_nash(g3(), 0.1, REF)
    assert np.max(np.abs(trace.last - star)) < 1e-10
    assert np.max(np.abs(trace.average - star)) < 1e-3


def test_nash_md_last_iterate_is_within_o_eta_of_the_regularized_nash():
    star = reg_nash(g3(), 0.1, REF)
    dist = [np.max(np.abs(nash_md(g3(), REF, eta, 0.1, 3000, pi0=PI0).last - star)) for eta in (1.0, 0.3, 0.1)]
    assert dist[0] > dist[1] > dist[2] and dist[2] < 2e-3


def test_egpo_last_iterate_converges_where_online_ipo_cycles():
    record = set(range(25, 151, 25))
    star = reg_nash(g3(), 0.01, REF)
    eg = egpo(g3(), REF, 0.01, 0.02, 150, pi0=PI0, record=record)
    assert np.max(np.abs(eg.last - star)) < 1e-8 and eg.gap_last[-1] < 1e-12
    oi = online_ipo(g3(), REF, 0.01, 0.02, 150, pi0=PI0, record=record)
    assert min(oi.gap_last) > 0.1          # never close to pi*_beta: the mirror-descent iterate cycles
    assert dual_gap(oi.last, g3(), 0.01, REF) > 0.1


def test_egpo_with_the_registered_online_ipo_objective():
    registered = registered_objective("online_ipo", {("beta",): 0.01})
    eg = egpo(g3(), REF, 0.01, 0.02, 150, pi0=PI0, objective=registered, record={150})
    assert np.max(np.abs(eg.last - reg_nash(g3(), 0.01, REF))) < 1e-8


def test_egpo_step_restores_parameters_and_optimizer_state_exactly():
    """With a loss that ignores the opponent the extragradient step equals one plain step, bit for bit,
    only if the half step is undone exactly (Adam's moments included)."""
    target = torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64)
    a = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    opt_a, opt_b = torch.optim.Adam([a], lr=0.1), torch.optim.Adam([b], lr=0.1)
    for _ in range(3):
        egpo_step(a, opt_a, lambda opponent: ((a - target) ** 2).sum())
        opt_b.zero_grad()
        ((b - target) ** 2).sum().backward()
        opt_b.step()
    assert torch.equal(a.detach(), b.detach())


def test_egpo_iterates_equal_the_official_tabular_extragradient():
    """zhourunlong/EGPO@f295bf3 simulations/loss_funcs.py::extragradient (+ run.py's backward/step), written out by
    hand with plain SGD: loss at theta_t with opponent pi_t -> half step -> opponent pi_half -> undo by a step with
    the negated saved gradient -> loss at theta_t with opponent pi_half -> step. The lab's egpo (restore a saved copy)
    gives the same iterates up to rounding."""
    P = torch.as_tensor(g3(), dtype=torch.float64)
    log_ref = torch.log(torch.as_tensor(REF, dtype=torch.float64))
    beta, lr, steps = 0.01, 0.02, 60

    def loss(theta, opponent):
        h = torch.log_softmax(theta, -1) - log_ref
        win = P @ torch.softmax(opponent, -1).detach()
        return (((h[:, None] - h[None, :]) - (win[:, None] - win[None, :]) / beta) ** 2).sum() / 9

    theta = torch.log(torch.tensor(PI0, dtype=torch.float64)).requires_grad_(True)
    for _ in range(steps):
        g = torch.autograd.grad(loss(theta, theta), theta)[0]
        with torch.no_grad():
            theta -= lr * g                      # half step
        opponent = theta.detach().clone()
        with torch.no_grad():
            theta += lr * g                      # the official undo: a step with the negated gradient
        g2 = torch.autograd.grad(loss(theta, opponent), theta)[0]
        with torch.no_grad():
            theta -= lr * g2
    official = torch.softmax(theta.detach(), -1).numpy()
    lab = egpo(g3(), REF, beta, lr, steps, pi0=PI0, record={steps}).last
    np.testing.assert_allclose(lab, official, rtol=0, atol=1e-12)
    assert np.max(np.abs(official - np.array(PI0))) > 0.05   # the iterates moved: the comparison is not vacuous


def test_egpo_average_iterate_is_the_mean_of_the_iterates():
    """trace.average = (1/T) sum_t pi_t: with T = 1 it is the one iterate; with T = 2 the mean of the first run's
    iterate and the second's last (the same deterministic loop)."""
    one = egpo(g3(), REF, 0.01, 0.02, 1, pi0=PI0, record={1})
    two = egpo(g3(), REF, 0.01, 0.02, 2, pi0=PI0, record={2})
    np.testing.assert_allclose(one.average, one.last, rtol=0, atol=1e-15)
    np.testing.assert_allclose(two.average, (one.last + two.last) / 2, rtol=0, atol=1e-15)
    assert two.average.sum() == pytest.approx(1.0, abs=1e-12)
