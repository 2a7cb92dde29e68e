"""SLiC-HF (objectives.md §A4): hand values, gradient, no reference model."""
import pytest
import torch

from preflab.objectives import PairBatch, get_objective


def toy(dtype=torch.float64, grad=False):
    pc = torch.tensor([-10.0], dtype=dtype, requires_grad=grad)
    pr = torch.tensor([-12.0], dtype=dtype, requires_grad=grad)
    return PairBatch.from_sums(pc, pr), pc, pr  # no reference sides


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_by_hand(dtype):
    # margin S_w - S_l = 2: hinge max(0, delta - 2), plus -lambda * S_w = 0.05
    loss = lambda delta: get_objective("slic", delta=delta, nll_weight=0.005)(toy(dtype)[0]).loss.item()  # noqa: E731
    assert loss(1.0) == pytest.approx(0.05, abs=1e-6)
    assert loss(3.0) == pytest.approx(1.05, abs=1e-6)


def test_gradient_closed_form():
    batch, pc, pr = toy(grad=True)
    get_objective("slic", delta=3.0, nll_weight=0.1)(batch).loss.backward()
    assert pc.grad.item() == pytest.approx(-1.1, abs=1e-12) and pr.grad.item() == pytest.approx(1.0, abs=1e-12)
    batch, pc, pr = toy(grad=True)  # hinge satisfied: only the NLL term pulls
    get_objective("slic", delta=1.0, nll_weight=0.1)(batch).loss.backward()
    assert pc.grad.item() == pytest.approx(-0.1, abs=1e-12) and pr.grad.item() == 0.0


def test_nll_metric_and_negative_settings_refused():
    """nll_loss is -mean S_theta(y_w) (the chosen responses: 10 here, not the rejected 12); a negative hinge margin
    or NLL weight is refused naming both values."""
    from preflab.errors import ConfigError

    out = get_objective("slic")(PairBatch.from_sums(torch.tensor([-10.0, -6.0]), torch.tensor([-12.0, -1.0])))
    assert out.metrics["nll_loss"].item() == pytest.approx(8.0)
    for delta, nll_weight in [(-0.5, 0.005), (1.0, -0.1)]:
        with pytest.raises(ConfigError, match=f"delta and nll_weight must be >= 0, got {delta}, {nll_weight}"):
            get_objective("slic", delta=delta, nll_weight=nll_weight)
