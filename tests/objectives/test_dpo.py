"""DPO against the shared fixture (methods/objectives.md §0, §A1, §B) and its closed-form gradient."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, get_objective

FIXTURE = dict(policy_chosen=[-10.0], policy_rejected=[-12.0], ref_chosen=[-11.0], ref_rejected=[-11.5])


def fixture(dtype=torch.float64, grad=False):
    t = {k: torch.tensor(v, dtype=dtype, requires_grad=grad and k.startswith("policy")) for k, v in FIXTURE.items()}
    return PairBatch.from_sums(**t), t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    out = get_objective("dpo", beta=0.1)(fixture(dtype)[0])
    assert out.loss.item() == pytest.approx(0.6209570478, abs=1e-6)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.15, abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 1.0
    assert out.metrics["logps/chosen"].item() == pytest.approx(-10.0)


def test_gradient_closed_form():
    batch, t = fixture(grad=True)
    get_objective("sigmoid", beta=0.1)(batch).loss.backward()
    expected = -0.1 * torch.sigmoid(torch.tensor(-0.15, dtype=torch.float64)).item()
    assert t["policy_chosen"].grad.item() == pytest.approx(expected, abs=1e-12)
    assert t["policy_chosen"].grad.item() == pytest.approx(-0.0462570155, abs=1e-9)
    assert t["policy_rejected"].grad.item() == pytest.approx(-expected, abs=1e-12)


def test_ln2_at_reference():
    batch = PairBatch.from_sums([-3.0, -7.0], [-5.0, -1.0], [-3.0, -7.0], [-5.0, -1.0])
    assert get_objective("dpo")(batch).loss.item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("kind,value", [("forward_kl", 0.6311544), ("js_divergence", 0.6606522),
                                        ("alpha_divergence", 0.6276909)])
def test_f_divergence_fixture_values(kind, value):
    out = get_objective("sigmoid", beta=0.1, f_divergence=kind)(fixture()[0])
    assert out.loss.item() == pytest.approx(value, abs=1e-6)


def test_weighted_sum_adds_components():
    batch = fixture()[0]
    single = get_objective("dpo", beta=0.1)(batch).loss
    combo = get_objective(["sigmoid", "dpo"], loss_weights=[0.25, 2.0], beta=0.1)(batch)
    assert combo.loss.item() == pytest.approx(2.25 * single.item())
