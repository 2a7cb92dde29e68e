"""HyPO vs DPO under partial coverage, VPO's sign, rDPO vs DPO under label flips (exact population solutions)."""
import numpy as np
import pytest
import torch

from preflab.lab.bandit import b4, dpo_fixture
from preflab.lab.contrasts import (calibration_term, dpo_loss, hypo_vs_dpo, move_off_data_mass, rdpo_vs_dpo,
                                   vpo_solutions)
from preflab.lab.lab_objectives import RobustDPOLoss, registered_objective
from preflab.lab.population import solve
from preflab.objectives import PairBatch


def test_hypo_stays_near_pi_ref_off_the_data_and_dpo_does_not():
    env = b4().with_coverage([(0, 1)])          # only y0 vs y1 is ever labelled; y2, y3 are off the data
    res = hypo_vs_dpo(env, beta=0.1, lam=0.1)
    off = res["off"][0]
    assert off.tolist() == [False, False, True, True]
    # HyPO's stationarity: log pi/pi_ref = KL(pi || pi_ref) on every uncovered response
    np.testing.assert_allclose(res["hypo_logratio"][0, off], res["hypo_kl"], atol=1e-6)
    assert np.max(np.abs(res["hypo_logratio"][0, off])) < 1.0
    # DPO moved the off-data responses far from pi_ref (their mass went from 0.3 to under 0.01)
    assert np.min(np.abs(res["dpo_logratio"][0, off])) > 3.0
    assert env.ref[0, 2:].sum() == pytest.approx(0.3) and res["dpo"][0, off].sum() < 0.01
    # both fit the labelled pair: beta (h_1 - h_0) = r_1 - r_0 for DPO; HyPO close to it
    assert res["dpo_logratio"][0, 1] - res["dpo_logratio"][0, 0] == pytest.approx(10.0, abs=1e-5)


def test_dpo_loss_is_blind_to_off_data_mass():
    env = b4().with_coverage([(0, 1)])
    res = hypo_vs_dpo(env, beta=0.1, lam=0.1)
    base = dpo_loss(env, res["dpo"], 0.1)
    for mass in (0.001, 0.3, 0.9):
        moved = move_off_data_mass(res["dpo"][0], res["off"][0], mass)
        assert dpo_loss(env, moved[None], 0.1) == pytest.approx(base, abs=1e-12)


def test_vpo_sign_moves_the_solution_in_the_predicted_direction():
    env, beta, lam = b4(), 0.5, 0.01
    res = vpo_solutions(env, beta, lam)
    np.testing.assert_allclose(res["dpo"], env.optimum(beta).numpy(), atol=1e-7)
    # comparing minimizers of F and F + s lam G gives s * (G(pi_s) - G(pi_dpo)) <= 0 with G = E_cal log pi
    assert res["optimistic_cal_logp"] < res["dpo_cal_logp"] < res["pessimistic_cal_logp"]
    # optimism moves mass to the response pi_cal covers least, pessimism toward pi_cal
    assert res["optimistic"][0, 3] > res["dpo"][0, 3] > res["pessimistic"][0, 3]
    assert res["optimistic"][0, 0] < res["dpo"][0, 0] < res["pessimistic"][0, 0]


@pytest.mark.parametrize("mode,sign", [("online", 1.0), ("offline", -1.0)])
def test_registered_vpo_matches_the_lab_formula(mode, sign):
    registered = registered_objective("vpo", {("beta",): 0.5, ("lam",): 0.01, ("mode",): mode,
                                              ("calibration",): "extra"})
    env = b4()
    cal = env.ref

    def extras(logp, x, i, j):  # the exact E_{y ~ pi_cal} log pi(y|x) for every pair of prompt x
        return {"calibration_logps": (cal * logp).sum(-1)[x]}

    lab = vpo_solutions(env, 0.5, 0.01)["optimistic" if sign > 0 else "pessimistic"]
    np.testing.assert_allclose(solve(registered, env, extras_fn=extras), lab, atol=1e-6)


def test_rdpo_recovers_the_clean_optimum_under_label_flips_and_dpo_does_not():
    for env, beta, eps in ((dpo_fixture(), 0.1, 0.2), (b4(), 0.5, 0.1)):
        res = rdpo_vs_dpo(env, beta, eps)
        ref = env.ref.numpy()
        assert np.max(np.abs(res["rdpo"] - res["optimum"])) < 1e-6
        assert np.max(np.abs(res["dpo"] - res["optimum"])) > 0.05
        kl_dpo = float(np.sum(res["dpo"] * np.log(res["dpo"] / ref)))
        kl_star = float(np.sum(res["optimum"] * np.log(res["optimum"] / ref)))
        assert kl_dpo < kl_star     # flipped labels shrink DPO's rewards toward 0
        registered = registered_objective("robust_dpo", {("beta",): beta, ("label_smoothing", "flip_rate"): eps})
        res2 = rdpo_vs_dpo(env, beta, eps, robust_objective=registered)
        assert np.max(np.abs(res2["rdpo"] - res["optimum"])) < 1e-6


def test_rdpo_loss_is_unbiased_for_the_clean_dpo_loss():
    delta = torch.linspace(-30, 30, 13, dtype=torch.float64)
    loss = RobustDPOLoss(beta=0.1, flip_rate=0.2)
    zero = torch.zeros_like(delta)
    fwd = loss(PairBatch.from_sums(delta, zero, zero, zero)).losses
    rev = loss(PairBatch.from_sums(zero, delta, zero, zero)).losses
    torch.testing.assert_close(0.8 * fwd + 0.2 * rev, torch.nn.functional.softplus(-0.1 * delta))


def test_calibration_term_value():
    logp = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    term = calibration_term(torch.tensor([[0.2, 0.8]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64),
                            -1.0, 0.1)
    assert float(term(logp)) == pytest.approx(0.1 * np.log(2))


def test_moving_off_data_mass_keeps_a_distribution_with_the_asked_off_mass():
    """move_off_data_mass by hand: the off-data responses (0.2, 0.1) scaled to hold 0.6, the covered (0.4, 0.3) the
    remaining 0.4, each set keeping its ratios (2:1 and 4:3)."""
    moved = move_off_data_mass([0.4, 0.3, 0.2, 0.1], np.array([False, False, True, True]), 0.6)
    np.testing.assert_allclose(moved, [0.4 * 0.4 / 0.7, 0.3 * 0.4 / 0.7, 0.4, 0.2], atol=1e-15)
    assert moved.sum() == pytest.approx(1.0, abs=1e-15)


def test_calibration_term_weighs_the_prompts_by_the_prompt_distribution():
    """Two prompts with rho = (0.25, 0.75): lam * sum_x rho(x) sum_y pi_cal(y|x) log pi(y|x), by hand."""
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=torch.float64))
    cal = torch.tensor([[0.2, 0.8], [1.0, 0.0]], dtype=torch.float64)
    term = calibration_term(cal, torch.tensor([0.25, 0.75], dtype=torch.float64), 1.0, 0.1)
    assert float(term(logp)) == pytest.approx(0.1 * (0.25 * np.log(0.5) + 0.75 * np.log(0.25)), abs=1e-15)
