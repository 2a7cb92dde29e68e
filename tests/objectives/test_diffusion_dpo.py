"""Diffusion-DPO on -MSE scores: methods §0.2 checks, RELIABILITY.md K2, and the diffusers-script variants."""
import math

import pytest
import torch
import torch.nn.functional as F

from preflab.diffusion.loss import diffusion_dpo_loss
from preflab.errors import ConfigError
from preflab.objectives import PairBatch, get_objective


def errors_batch(e_w, e_l, r_w, r_l, grad=False):
    """A PairBatch whose scores are -MSE; returns it and the policy error leaves."""
    e = [torch.as_tensor(v, dtype=torch.float64).clone().requires_grad_(grad and i < 2)
         for i, v in enumerate((e_w, e_l, r_w, r_l))]
    return PairBatch.from_sums(-e[0], -e[1], -e[2], -e[3]), e[0], e[1]


def test_toy_numbers_by_hand():
    # e_w = 0.1000, e_l = 0.1002, ref both 0.1001, beta = 5000: inside = -(2500)(-0.0002) = 0.5
    batch, e_w, e_l = errors_batch([0.1000], [0.1002], [0.1001], [0.1001], grad=True)
    out = get_objective("diffusion_dpo", beta=5000.0)(batch)
    assert out.loss.item() == pytest.approx(0.474077, abs=1e-6)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-9)
    out.loss.backward()
    # descent lowers the winner's error and raises the loser's
    assert e_w.grad.item() == pytest.approx(943.85, abs=0.01)
    assert e_l.grad.item() == pytest.approx(-943.85, abs=0.01)
    assert out.metrics["implicit_accuracy"].item() == 1.0


def test_k2_equals_dpo_with_half_beta_and_reference_formula():
    g = torch.Generator().manual_seed(0)
    e = 0.1 + 1e-3 * torch.randn(4, 16, generator=g, dtype=torch.float64)
    batch = errors_batch(*e)[0]
    beta = 5000.0
    reference = -F.logsigmoid(-beta / 2 * ((e[0] - e[1]) - (e[2] - e[3])))
    ours = get_objective("diffusion_dpo", beta=beta)(batch)
    dpo = get_objective("dpo", beta=beta / 2)(batch)
    torch.testing.assert_close(ours.losses, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(dpo.losses, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(diffusion_dpo_loss(*e, beta=beta), reference, atol=1e-12, rtol=0)
    assert reference.std() > 0.05  # the inputs are not all at one point


def test_salesforce_beta_equals_diffusers_half_beta():
    g = torch.Generator().manual_seed(1)
    e = 0.1 + 1e-3 * torch.randn(4, 32, generator=g, dtype=torch.float64)
    batch = errors_batch(*e)[0]
    sf = get_objective("diffusion_dpo", beta=5000.0, convention="salesforce")(batch).losses
    df = get_objective("diffusion_dpo", beta=2500.0, convention="diffusers")(batch).losses
    diffusers_formula = -F.logsigmoid(2500.0 * ((e[2] - e[3]) - (e[0] - e[1])))
    torch.testing.assert_close(sf, df, atol=1e-12, rtol=0)
    torch.testing.assert_close(df, diffusers_formula, atol=1e-12, rtol=0)


def test_log2_at_init_and_for_identical_images_and_small_beta():
    same = errors_batch([0.3, 0.1], [0.2, 0.5], [0.3, 0.1], [0.2, 0.5])[0]
    out = get_objective("diffusion_dpo")(same)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-15)
    assert out.metrics["implicit_accuracy"].item() == 0.5  # ties count 0.5 (diffusers)
    identical = errors_batch([0.3], [0.3], [0.25], [0.25])[0]  # x_w == x_l: every error equal per model
    assert get_objective("diffusion_dpo")(identical).loss.item() == pytest.approx(math.log(2), abs=1e-15)
    far = errors_batch([0.1], [0.3], [0.2], [0.2])[0]
    assert get_objective("diffusion_dpo", beta=1e-9)(far).loss.item() == pytest.approx(math.log(2), abs=1e-9)


def test_swapping_winner_and_loser_negates_the_gradient_at_init():
    batch, e_w, e_l = errors_batch([0.11, 0.2], [0.12, 0.3], [0.11, 0.2], [0.12, 0.3], grad=True)
    get_objective("diffusion_dpo")(batch).loss.backward()
    swapped, s_w, s_l = errors_batch([0.12, 0.3], [0.11, 0.2], [0.12, 0.3], [0.11, 0.2], grad=True)
    get_objective("diffusion_dpo")(swapped).loss.backward()
    # the old winner's error (now the loser's) gets the opposite gradient, so any model gradient flips sign
    torch.testing.assert_close(s_l.grad, -e_w.grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(s_w.grad, -e_l.grad, atol=1e-12, rtol=0)
    assert e_w.grad.abs().min() > 0


def test_hinge_and_ipo_use_the_one_beta():
    # z = Delta_ref - Delta_theta = 0.0002; diffusers beta' = 2500 -> b z = 0.5
    batch = errors_batch([0.1000], [0.1002], [0.1001], [0.1001])[0]
    hinge = get_objective("diffusion_dpo", beta=2500.0, convention="diffusers", loss_type="hinge")(batch)
    assert hinge.loss.item() == pytest.approx(0.5, abs=1e-9)
    ipo = get_objective("diffusion_dpo", beta=2500.0, convention="diffusers", loss_type="ipo")(batch)
    assert ipo.loss.item() == pytest.approx((0.0002 - 1 / 5000) ** 2, abs=1e-15)  # the optimum margin 1/(2b)
    ref_ipo = get_objective("ipo", beta=2500.0, token_agg="sum")(batch)
    assert ipo.loss.item() == pytest.approx(ref_ipo.loss.item(), abs=1e-15)
    sf = get_objective("diffusion_dpo", beta=5000.0, loss_type="ipo")(batch)  # salesforce beta/2 = 2500
    assert sf.loss.item() == pytest.approx(ipo.loss.item(), abs=1e-15)


def test_finite_at_extreme_scores_and_bad_config():
    batch = errors_batch([1e4, -1e4], [-1e4, 1e4], [0.0, 0.0], [0.0, 0.0])[0]
    for kind in ("sigmoid", "hinge", "ipo"):
        assert torch.isfinite(get_objective("diffusion_dpo", loss_type=kind)(batch).losses).all()
    with pytest.raises(ConfigError, match="convention"):
        get_objective("diffusion_dpo", convention="sf")
    with pytest.raises(ConfigError, match="loss_type"):
        get_objective("diffusion_dpo", loss_type="robust")


def test_logged_errors_are_each_sides_own_mean_mse():
    """mse/chosen and mse/rejected are the policy's mean denoising errors of the winners and of the losers (the
    diffusers script's logs), and implicit_accuracy counts z = Delta_ref - Delta_theta > 0 as right, 0 as half."""
    batch, _, _ = errors_batch([0.10, 0.30], [0.20, 0.30], [0.15, 0.30], [0.15, 0.30])
    out = get_objective("diffusion_dpo", beta=5000.0)(batch)
    assert out.metrics["mse/chosen"].item() == pytest.approx(0.20, abs=1e-12)
    assert out.metrics["mse/rejected"].item() == pytest.approx(0.25, abs=1e-12)
    assert out.metrics["implicit_accuracy"].item() == pytest.approx(0.75, abs=1e-12)
