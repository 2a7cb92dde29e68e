"""VPO (methods/objectives.md §C #24): spec values for both signs, lam = 0 equals DPO, dL/dS(y_cal) = s * lam."""
import pytest
import torch

from preflab.errors import ConfigError
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
    # y_cal = y_w: dL/dS(y_w) = -beta sigmoid(-beta Delta) - lam (DPO's -0.0462570155 on the fixture)
    batch, pc, _ = fixture([0.0], grad=True)
    out = get_objective("vpo", beta=0.1, lam=0.02, mode="offline")(batch)
    assert out.loss.item() == pytest.approx(0.6209570478 + 0.02 * 10.0, abs=1e-9)
    out.loss.backward()
    assert pc.grad.item() == pytest.approx(-0.0462570155 - 0.02, abs=1e-9)


def test_several_calibration_samples_are_averaged():
    batch = fixture([[-9.0, -7.0, -11.0]])[0]
    out = get_objective("vpo", beta=0.1, lam=0.1, mode="offline", calibration="extra")(batch)
    assert out.loss.item() == pytest.approx(1.5209570478, abs=1e-9)  # mean -9 again


def test_bad_mode_rejected():
    with pytest.raises(ConfigError, match="mode"):
        get_objective("vpo", mode="optimistic")
