"""KTO (objectives.md §A5): fixture values with z0 = 0.3, the KL toy, clamping, no gradient through z0."""
import pytest
import torch

from preflab.errors import PreflabError
from preflab.objectives import UnpairedBatch, get_objective


def toy(kl_policy=(-5.0, -7.0), kl_ref=(-5.2, -7.4), dtype=torch.float64, grad=False):
    """Desirable y (h = 1) and undesirable y (h = -0.5); mismatched log-ratios 0.2, 0.4 -> z0 = 0.3."""
    t = lambda v, g=False: torch.tensor(v, dtype=dtype, requires_grad=g)  # noqa: E731
    policy, policy_kl = t([-10.0, -12.0], grad), t(list(kl_policy), grad)
    batch = UnpairedBatch.from_sums(policy, [True, False], t([-11.0, -11.5]), policy_kl, t(list(kl_ref)))
    return (batch, policy, policy_kl) if grad else batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_values(dtype):
    out = get_objective("kto", beta=0.1)(toy(dtype=dtype))
    assert out.losses.tolist() == pytest.approx([0.4825071423, 0.4800106598], abs=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(0.3, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1, abs=1e-6)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.15, abs=1e-6)
    assert out.metrics["logps/rejected"].item() == pytest.approx(-12.0, abs=1e-6)


def test_kl_toy_and_clamp_at_zero():
    assert get_objective("kto")(toy((-20.0, -18.0), (-21.0, -18.5))).metrics["kl"].item() == pytest.approx(0.75)
    clamped = get_objective("kto", beta=0.1)(toy((-22.0, -19.0), (-21.0, -18.5)))  # mean -0.75 -> z0 = 0
    assert clamped.metrics["kl"].item() == 0.0
    # with z0 = 0, KTO is APO-zero unpaired
    torch.testing.assert_close(clamped.losses, get_objective("apo_zero_unpaired", beta=0.1)(toy()).losses)


def test_weights_and_no_gradient_through_reference_point():
    batch, policy, policy_kl = toy(grad=True)
    out = get_objective("kto", beta=0.1, desirable_weight=2.0, undesirable_weight=0.5)(batch)
    assert out.losses.tolist() == pytest.approx([2 * 0.4825071423, 0.5 * 0.4800106598], abs=1e-9)
    out.loss.backward()
    assert policy_kl.grad is None
    sig = lambda z: 1 / (1 + torch.exp(-torch.tensor(z, dtype=torch.float64))).item()  # noqa: E731
    # dL/dS = -lambda_D beta s(x)(1 - s(x)) / B with x = beta (r - z0) = 0.07
    assert policy.grad[0].item() == pytest.approx(-2 * 0.1 * sig(0.07) * sig(-0.07) / 2, abs=1e-12)


def test_missing_mismatched_completions_is_an_error():
    batch = toy()
    batch.policy_kl = None
    with pytest.raises(PreflabError, match="policy_kl"):
        get_objective("kto")(batch)
