"""Robust DPO (TRL `robust`) on the shared fixture (objectives.md §C #20): value, identities, reductions."""
import pytest
import torch

from preflab.errors import ConfigError
from preflab.objectives import PairBatch, get_objective


def pair(delta, dtype=torch.float64):
    """A pair with h_w - h_l = delta."""
    return PairBatch.from_sums(*(torch.tensor([v], dtype=dtype) for v in (delta, 0.0, 0.0, 0.0)))


def toy(dtype=torch.float64):
    return PairBatch.from_sums(*(torch.tensor([v], dtype=dtype) for v in (-10.0, -12.0, -11.0, -11.5)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    out = get_objective("robust", beta=0.1, label_smoothing=0.1)(toy(dtype))
    assert out.loss.item() == pytest.approx(0.6022070478, abs=1e-6)


def test_zero_flip_rate_is_dpo():
    assert get_objective("robust_dpo", beta=0.1)(toy()).loss.item() == pytest.approx(
        get_objective("dpo", beta=0.1)(toy()).loss.item(), abs=1e-15)


@pytest.mark.parametrize("delta", [-30.0, -1.5, 0.0, 1.5, 7.0])
@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3])
def test_unbiased_under_label_flips(delta, eps):
    robust, dpo = get_objective("robust", beta=0.1, label_smoothing=eps), get_objective("dpo", beta=0.1)
    mixed = (1 - eps) * robust(pair(delta)).loss + eps * robust(pair(-delta)).loss
    assert mixed.item() == pytest.approx(dpo(pair(delta)).loss.item(), abs=1e-12)
    # identity: L = l(z) - eps/(1 - 2 eps) * z
    z = 0.1 * delta
    assert robust(pair(delta)).loss.item() == pytest.approx(dpo(pair(delta)).loss.item() - eps / (1 - 2 * eps) * z,
                                                            abs=1e-12)


@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.7])
def test_flip_rate_range(eps):
    with pytest.raises(ConfigError, match="label_smoothing"):
        get_objective("robust", label_smoothing=eps)
