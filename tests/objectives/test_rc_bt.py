"""rc_bt (MAPL intra, reward-model form) against models-and-loops.md #14 / B0.1: BT on one response under two prompts."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, get_objective


def test_single_pair_value():
    b = PairBatch.from_sums(torch.tensor([1.2]), torch.tensor([0.4]))  # r(x_w, y), r(x_l, y)
    assert get_objective("rc_bt")(b).loss.item() == pytest.approx(0.371101, abs=1e-6)
    assert get_objective("rc_bt")(b).loss.item() == pytest.approx(math.log1p(math.exp(-0.8)), abs=1e-7)


def test_equals_dpo_with_zero_reference_and_beta_one_over_tau():
    r_w, r_l = torch.tensor([1.2, -0.3, 2.0], dtype=torch.float64), torch.tensor([0.4, 0.5, -1.0], dtype=torch.float64)
    zeros = torch.zeros(3, dtype=torch.float64)
    bt = get_objective("rc_bt", tau=0.5)(PairBatch.from_sums(r_w, r_l)).losses
    dpo = get_objective("dpo", beta=2.0)(PairBatch.from_sums(r_w, r_l, zeros, zeros)).losses
    torch.testing.assert_close(bt, dpo)


def test_shift_invariance_and_accuracy():
    r_w, r_l = torch.tensor([1.2, -0.3]), torch.tensor([0.4, 0.5])
    a = get_objective("rc_bt")(PairBatch.from_sums(r_w, r_l))
    b = get_objective("rc_bt")(PairBatch.from_sums(r_w + 7.0, r_l + 7.0))
    torch.testing.assert_close(a.losses, b.losses)
    assert a.metrics["rewards/accuracies"].item() == 0.5


@pytest.mark.parametrize("tau", [0.0, -0.5])
def test_tau_must_be_positive(tau):
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match=f"RcBT: tau must be > 0, got {tau}"):
        get_objective("rc_bt", tau=tau)
