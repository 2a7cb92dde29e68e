"""VPO (methods/objectives.md §C #24): spec values for both signs, lam = 0 equals DPO, dL/dS(y_cal) = s * lam;
the online form equals SELM's released loss (shenao-zhang/SELM@0ba546a scripts/selm_trainer.py optimistic_dpo_loss:
sigmoid DPO + alpha * beta * (S_theta(y) - S_ref(y)) on a reference-policy response y, summed log-probs)."""
import math

import pytest
import torch

from preflab.errors import ConfigError, PreflabError
from preflab.objectives import PairBatch, get_objective

F64 = dict(dtype=torch.float64)


def fixture(cal, grad=False):
    pc = torch.tensor([-10.0], **F64, requires_grad=grad)
    cal = torch.tensor(cal, **F64, requires_grad=grad)
    batch = PairBatch.from_sums(pc, torch.tensor([-12.0], **F64), torch.tensor([-11.0], **F64),
                                torch.tensor([-11.5], **F64), extras={"calibration_logps": cal})
    return batch, pc, cal


@pytest.mark.parametrize("mode,value,sign", [("offline", 1.5209570478, -1.0), ("online", -0.2790429522, 1.0)])
def test_spec_values_and_calibration_gradient(mode, value, sign):
    batch, _, cal = fixture([-9.0], grad=True)
    out = get_objective("vpo", beta=0.1, lam=0.1, mode=mode, calibration="extra")(batch)
    assert out.loss.item() == pytest.approx(value, abs=1e-9)
    out.loss.backward()
    assert cal.grad.item() == pytest.approx(sign * 0.1, abs=1e-12)


def test_lam_zero_is_dpo():
    batch = fixture([-9.0])[0]
    for mode in ("offline", "online"):
        out = get_objective("vpo", lam=0.0, mode=mode, calibration="extra")(batch)
        torch.testing.assert_close(out.losses, get_objective("dpo")(batch).losses, rtol=0, atol=1e-12)


def test_chosen_calibration_offline_gradient():
    # y_cal = y_w: the term is -lam * h(y_w) = -0.02 * (-10 - (-11)); dL/dS(y_w) = -beta sigmoid(-beta Delta) - lam
    # (DPO's -0.0462570155 on the fixture)
    batch, pc, _ = fixture([0.0], grad=True)
    out = get_objective("vpo", beta=0.1, lam=0.02, mode="offline")(batch)
    assert out.loss.item() == pytest.approx(0.6209570478 - 0.02 * 1.0, abs=1e-9)
    out.loss.backward()
    assert pc.grad.item() == pytest.approx(-0.0462570155 - 0.02, abs=1e-9)


def test_several_calibration_samples_are_averaged():
    batch = fixture([[-9.0, -7.0, -11.0]])[0]
    out = get_objective("vpo", beta=0.1, lam=0.1, mode="offline", calibration="extra")(batch)
    assert out.loss.item() == pytest.approx(1.5209570478, abs=1e-9)  # mean -9 again


def test_bad_mode_rejected():
    with pytest.raises(ConfigError, match="mode"):
        get_objective("vpo", mode="optimistic")


def selm_loss_by_hand(pc, pr, rc, rr, s_theta_y, s_ref_y, beta, alpha):
    """SELM's optimistic DPO loss (Zhang et al. 2024, Eq. 4.2 as its trainer codes it), written out by hand."""
    delta = (pc - pr) - (rc - rr)
    return math.log1p(math.exp(-beta * delta)) + alpha * beta * (s_theta_y - s_ref_y)


@pytest.mark.parametrize("beta,alpha", [(0.1, 0.5), (0.01, 0.001)])  # (0.01, 0.001): SELM's zephyr recipe
def test_online_mode_is_selms_released_loss(beta, alpha):
    s_theta_y = torch.tensor([-9.0], **F64, requires_grad=True)
    batch = PairBatch.from_sums(torch.tensor([-10.0], **F64), torch.tensor([-12.0], **F64),
                                torch.tensor([-11.0], **F64), torch.tensor([-11.5], **F64),
                                extras={"calibration_logps": s_theta_y,
                                        "calibration_ref_logps": torch.tensor([-8.0], **F64)})
    out = get_objective("vpo", beta=beta, lam=alpha * beta, mode="online", calibration="extra")(batch)
    expected = selm_loss_by_hand(-10.0, -12.0, -11.0, -11.5, -9.0, -8.0, beta, alpha)
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    if (beta, alpha) == (0.1, 0.5):
        assert out.loss.item() == pytest.approx(0.6209570478 - 0.05, abs=1e-9)   # Delta = 1.5, h(y) = -1
    out.loss.backward()
    assert s_theta_y.grad.item() == pytest.approx(alpha * beta, abs=1e-15)


def test_value_term_is_zero_at_the_reference():
    # policy = reference: h = 0 everywhere, so both modes log DPO's ln 2 (the value term is on the log-ratio)
    sums = torch.tensor([-10.0, -30.0], **F64)
    batch = PairBatch.from_sums(sums, sums - 2.0, sums, sums - 2.0,
                                extras={"calibration_logps": torch.tensor([[-7.0, -9.0], [-20.0, -22.0]], **F64),
                                        "calibration_ref_logps": torch.tensor([[-7.0, -9.0], [-20.0, -22.0]], **F64)})
    for mode in ("offline", "online"):
        for calibration in ("chosen", "extra"):
            out = get_objective("vpo", lam=0.3, mode=mode, calibration=calibration)(batch)
            torch.testing.assert_close(out.losses, torch.full((2,), math.log(2.0), **F64), rtol=0, atol=1e-12)


def test_calibration_reference_of_another_shape_is_refused():
    batch = fixture([[-9.0, -7.0]])[0]
    batch.extras["calibration_ref_logps"] = torch.tensor([-8.0], **F64)
    with pytest.raises(PreflabError, match="calibration_ref_logps has shape"):
        get_objective("vpo", calibration="extra")(batch)


def test_both_modes_are_the_dpo_cov_objectives_without_noise_or_length_terms():
    # A later paper that builds on VPO's regularizer ("Provably Mitigating Corruption, Overoptimization, and
    # Verbosity ...", DPO-COV; its text in the code index) writes, with lambda >= 1 (no noise) and omega = 0:
    #   offline, Algorithm 1 Eq. 19 (pi_base = the chosen responses): -beta eta log pi(y_w) - log sigmoid(beta Delta)
    #   online,  Algorithm 2 Eq. 25 (pi_base = pi_ref samples y'):    +beta eta log pi(y')  - log sigmoid(beta Delta)
    # so lam = beta * eta, and preflab's S_ref terms are constants.
    g = torch.Generator().manual_seed(3)
    s_w, s_l, r_w, r_l, s_cal = (-torch.rand(4, generator=g, **F64) * 20 for _ in range(5))
    beta, eta = 0.1, 0.5
    dpo = torch.log1p(torch.exp(-beta * ((s_w - r_w) - (s_l - r_l))))
    batch = PairBatch.from_sums(s_w, s_l, r_w, r_l, extras={"calibration_logps": s_cal})
    offline = get_objective("vpo", beta=beta, lam=beta * eta, mode="offline", calibration="chosen")(batch)
    torch.testing.assert_close(offline.losses - beta * eta * r_w, dpo - beta * eta * s_w, rtol=0, atol=1e-12)
    online = get_objective("vpo", beta=beta, lam=beta * eta, mode="online", calibration="extra")(batch)
    torch.testing.assert_close(online.losses, dpo + beta * eta * s_cal, rtol=0, atol=1e-12)
