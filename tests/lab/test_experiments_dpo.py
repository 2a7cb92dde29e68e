"""The lab's DPO experiments (preflab.lab.experiments_dpo) in quick mode: the numbers each writes to NAME.json against
the closed forms it claims (`preflab lab run NAME` prints them; only `accelerated` was run by tests/lab/test_cli.py)."""
import numpy as np
import pytest

from preflab.lab import experiments_dpo as experiments
from preflab.lab.bandit import b4
from preflab.lab.closed_forms import idealized_ranking_accuracy, kl_optimum, rso_accepted_law


def test_dpo_optimum_reports_the_solved_policy_at_pi_ref_exp_r_over_beta():
    numbers = experiments.dpo_optimum(True).numbers
    star = kl_optimum([0.5, 0.3, 0.2], [0.0, 0.1, 0.3], 0.1)
    np.testing.assert_allclose(numbers["closed_form"][0], star, atol=1e-12)
    np.testing.assert_allclose(numbers["closed_form"][0], [0.0938, 0.1529, 0.7533], atol=5e-5)
    # the reported distances are the final iterate's (LBFGS solves it; gradient descent gets within 1e-3)
    assert numbers["lbfgs_distance"] == pytest.approx(float(np.max(np.abs(numbers["lbfgs_final"] - star))), abs=1e-12)
    assert numbers["lbfgs_distance"] < 1e-6 and numbers["gd_distance"] < 1e-3


def test_online_dpo_fixed_reference_reaches_pi_star_in_one_iteration_and_refreshed_follows_exp_t_r():
    """Fixed reference pi_0: iteration 1 solves to pi_0 exp(r/beta)/Z and stays there; refreshed: pi_t =
    pi_0 exp(t r/beta)/Z, so E_pi_t[r] at t = 0 is E_pi_0[r] and the trained curve equals the closed form."""
    result = experiments.online_dpo_experiment(True)
    env, beta = b4(), 0.5
    pi0, r = env.ref.numpy()[0], env.reward.numpy()[0]
    np.testing.assert_allclose(result.numbers["optimum"][0], kl_optimum(pi0, r, beta), atol=1e-12)
    np.testing.assert_allclose(result.numbers["iterative_fixed"][0], kl_optimum(pi0, r, beta), atol=1e-6)
    fixed = result.panels[0].curves["iterative DPO (on-policy pairs, exact solve)"][1]
    assert fixed[0] > 0.5 and max(fixed[1:]) < 1e-6  # a fixed reference: pi* after one iteration, not beyond it
    assert result.numbers["refreshed_vs_closed_form"] < 1e-6
    steps, closed = result.panels[1].curves["closed form"]
    assert steps[0] == 0 and closed[0] == pytest.approx(float(pi0 @ r), abs=1e-12)
    assert closed == pytest.approx([float(kl_optimum(pi0, t * r, beta) @ r) for t in steps], abs=1e-12)


def test_rso_reports_the_error_of_all_its_accepted_draws():
    result = experiments.rso(True)
    pi_sft, r, beta = np.array([0.5, 0.3, 0.2]), np.array([0.0, 0.5, 1.0]), 0.5
    np.testing.assert_allclose(result.numbers["target"], rso_accepted_law(pi_sft, r, beta), atol=1e-12)
    np.testing.assert_allclose(result.numbers["target"], kl_optimum(pi_sft, r, beta), atol=1e-12)  # = pi*
    error = float(np.max(np.abs(result.numbers["empirical"] - result.numbers["target"])))
    assert result.numbers["max_error"] == pytest.approx(error, abs=1e-12)  # all 20 000 draws, not the first 100
    assert error < 3 / np.sqrt(20_000)


def test_ranking_accuracy_of_the_trained_optimum_is_the_idealized_one():
    numbers = experiments.ranking(True).numbers
    s_w, s_l, alpha = experiments.RANKING_TOY.T
    assert numbers["idealized"] == [idealized_ranking_accuracy(s_w, s_l, alpha, b) for b in numbers["betas"]]
    assert numbers["trained"] == numbers["idealized"] == [1.0, 0.75, 0.5]


def test_token_optimum_trains_to_the_soft_bellman_policy():
    assert experiments.token_optimum(True).numbers["final_distance"] < 1e-6
