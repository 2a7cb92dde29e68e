"""Iterative / online DPO, APO and RSO against their closed forms."""
import numpy as np

from preflab.lab.bandit import Bandit, b4
from preflab.lab.closed_forms import apo_coefficients, kl_optimum
from preflab.lab.iterative import apo, iterations_to_reach, iterative_dpo, online_dpo, rso_draws, rso_pairs
from preflab.lab.population import solve
from preflab.objectives import get_objective

EXAMPLE = Bandit.from_rewards([0.5, 0.3, 0.2], [0.0, 1.0, 2.0])  # methods/objectives.md #3, beta = 1


def test_iterative_dpo_with_a_fixed_reference_reaches_pi_star_in_one_iteration():
    env, beta = b4(), 0.5
    pols = iterative_dpo(env, beta, 2, refresh_reference=False)
    for pi in pols[1:]:
        assert np.max(np.abs(pi - env.optimum(beta).numpy())) < 1e-6


def test_iterative_dpo_with_a_refreshed_reference_is_pi0_exp_t_r():
    pols = iterative_dpo(EXAMPLE, 1.0, 3)
    r, pi0 = np.array([0.0, 1.0, 2.0]), np.array([0.5, 0.3, 0.2])
    for t, pi in enumerate(pols):
        np.testing.assert_allclose(pi[0], kl_optimum(pi0, t * r, 1.0), atol=1e-6)
    np.testing.assert_allclose(pols[2][0], [0.03667, 0.16256, 0.80077], atol=1e-5)
    rewards = [float(p[0] @ r) for p in pols]
    assert all(b >= a for a, b in zip(rewards, rewards[1:]))


def test_online_dpo_per_step_converges_to_pi_star():
    env, beta = b4(), 0.5
    _, pols = online_dpo(env, beta, 200, lr=20.0, record_every=50)
    assert np.max(np.abs(pols[-1] - env.optimum(beta).numpy())) < 1e-3


def test_apo_matches_its_closed_form_and_needs_fewer_iterations():
    r, pi0 = np.array([0.0, 1.0, 2.0]), np.array([0.5, 0.3, 0.2])
    plain = iterative_dpo(EXAMPLE, 1.0, 4)
    fast = apo(EXAMPLE, 1.0, 4, 0.3)
    np.testing.assert_allclose(fast[2][0], [0.01035, 0.09146, 0.89820], atol=1e-5)
    for pi, c in zip(fast[1:], apo_coefficients(0.3, 4)):
        np.testing.assert_allclose(pi[0], kl_optimum(pi0, c * r, 1.0), atol=1e-6)
    np.testing.assert_allclose(np.stack(apo(EXAMPLE, 1.0, 2, 0.0)), np.stack(plain[:3]), atol=1e-12)
    best = np.eye(3)[2]
    reach = [iterations_to_reach([p[0] for p in run], best, 0.05) for run in (fast, plain)]
    assert reach[0] < reach[1]
    assert all(1 - a[0, 2] <= 1 - b[0, 2] for a, b in zip(fast[1:], plain[1:]))


def test_rso_samples_follow_pi_star():
    pi_sft, r, beta_rs = [0.5, 0.3, 0.2], [0.0, 0.5, 1.0], 0.5
    star = kl_optimum(pi_sft, r, beta_rs)
    draws = rso_draws(pi_sft, r, beta_rs, 20_000, seed=0)
    assert np.max(np.abs(np.bincount(draws, minlength=3) / len(draws) - star)) < 0.01
    pairs = rso_pairs(pi_sft, r, beta_rs, 20_000, seed=1)
    joint = np.zeros((3, 3))
    np.add.at(joint, (pairs[:, 0], pairs[:, 1]), 1.0 / len(pairs))
    assert np.max(np.abs(joint - np.outer(star, star))) < 0.01
    # DPO on pairs drawn from pi* (labels from the same reward) recovers pi* as its own optimum
    env = Bandit.from_rewards(pi_sft, r).on_policy_pairs(star)
    assert np.max(np.abs(solve(get_objective("dpo", beta=beta_rs), env)[0] - star)) < 1e-6
