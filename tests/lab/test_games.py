"""Nash equilibria of preference games (LP and regularized fixed point) and the duality gap."""
import numpy as np
import pytest

from preflab.lab.games import (PreferenceGame, best_response_map, dual_gap, fixed_point_residual, g3, nash,
                               reg_nash, rock_paper_scissors)
from preflab.lab.simplex import kl, softmax

G3_REG = {1.0: (0.320791, 0.369954, 0.309256), 0.1: (0.409020, 0.421345, 0.169635),
          0.01: (0.492525, 0.344386, 0.163089), 0.001: (0.499301, 0.334433, 0.166266)}


def test_plain_nash_by_linprog():
    np.testing.assert_allclose(nash(g3()), [1 / 2, 1 / 3, 1 / 6], atol=1e-9)
    np.testing.assert_allclose(nash(rock_paper_scissors()), [1 / 3] * 3, atol=1e-9)
    np.testing.assert_allclose(g3() @ nash(g3()), 0.5, atol=1e-9)
    assert dual_gap(nash(g3()), g3()) < 1e-9


@pytest.mark.parametrize("beta", sorted(G3_REG))
def test_regularized_nash_of_g3(beta):
    ref = np.full(3, 1 / 3)
    pi = reg_nash(g3(), beta, ref)
    np.testing.assert_allclose(pi, G3_REG[beta], atol=1e-6)
    assert fixed_point_residual(pi, g3(), beta, ref) < 1e-10
    assert dual_gap(pi, g3(), beta, ref) < 1e-10


def test_fixed_point_iteration_agrees_where_it_converges():
    ref = np.array([0.5, 0.3, 0.2])
    np.testing.assert_allclose(reg_nash(g3(), 1.0, ref, method="fixed_point"), reg_nash(g3(), 1.0, ref), atol=1e-10)


def test_dual_gap_equals_the_best_response_values():
    P, ref, beta = g3(), np.array([0.5, 0.3, 0.2]), 0.1
    pi = np.array([0.2, 0.5, 0.3])

    def J(a, b):
        return a @ P @ b - beta * kl(a, ref) + beta * kl(b, ref)

    br_max = best_response_map(pi, P, beta, ref)                       # argmax_pi' J(pi', pi)
    br_min = softmax(np.log(ref) - P.T @ pi / beta)                    # argmin_pi' J(pi, pi')
    assert dual_gap(pi, P, beta, ref) == pytest.approx(J(br_max, pi) - J(pi, br_min), abs=1e-12)
    for _ in range(20):  # no policy beats the best responses
        other = np.random.default_rng(_).dirichlet(np.ones(3))
        assert J(other, pi) <= J(br_max, pi) + 1e-12 and J(pi, other) >= J(pi, br_min) - 1e-12


def test_preference_game_validates_its_matrix():
    with pytest.raises(ValueError):
        PreferenceGame(np.array([[0.5, 0.7], [0.4, 0.5]]), np.array([0.5, 0.5]))
    game = PreferenceGame.uniform_ref(g3())
    np.testing.assert_allclose(game.reg_nash(0.1), G3_REG[0.1], atol=1e-6)
    np.testing.assert_allclose(game.win_rates(game.nash()), 0.5, atol=1e-9)


def test_plain_dual_gap_off_the_equilibrium_by_hand():
    """DG_0(pi) = max_y (P pi)_y - min_y (P^T pi)_y; at pi = y_0 on G3: P[:, 0] = (1/2, 1/3, 5/6) and
    P[0, :] = (1/2, 2/3, 1/6), so DG_0 = 5/6 - 1/6 = 2/3 (= 2 max (P pi) - 1, as P^T = 1 - P)."""
    assert dual_gap(np.array([1.0, 0.0, 0.0]), g3()) == pytest.approx(2 / 3, abs=1e-12)
    assert dual_gap(np.array([0.0, 1.0, 0.0]), g3()) == pytest.approx(2 * (0.5 + 1 / 6) - 1, abs=1e-12)


def test_the_minimax_winner_of_a_transitive_game_is_its_condorcet_winner():
    """With a response that beats every other (P[0, j] > 1/2), the Minimax Winner is that response alone: the LP
    max v s.t. (P^T pi)_j >= v picks y_0 (the columns of P, not its rows, which would pick the Condorcet loser)."""
    P = np.array([[0.5, 0.8, 0.9], [0.2, 0.5, 0.7], [0.1, 0.3, 0.5]])
    np.testing.assert_allclose(nash(P), [1.0, 0.0, 0.0], atol=1e-9)
    assert dual_gap(np.array([1.0, 0.0, 0.0]), P) == pytest.approx(0.0, abs=1e-12)
