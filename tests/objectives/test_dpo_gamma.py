"""DPO^gamma (objectives.md §C #13): fixture, gamma = 1 is DPO, gamma = 0 ignores the reference."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, get_objective


def toy(dtype=torch.float64, ref=(-11.0, -11.5)):
    return PairBatch.from_sums(*(torch.tensor([v], dtype=dtype) for v in (-10.0, -12.0, *ref)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    assert get_objective("dpo_gamma", beta=0.1, gamma=0.5)(toy(dtype)).loss.item() == pytest.approx(
        0.6094704307, abs=1e-6)


def test_gamma_one_is_dpo_and_zero_ignores_reference():
    assert get_objective("dpo_gamma", gamma=1.0)(toy()).loss.item() == pytest.approx(
        get_objective("dpo")(toy()).loss.item(), abs=1e-15)
    a = get_objective("dpo_gamma", gamma=0.0)(toy()).loss.item()
    assert a == pytest.approx(get_objective("dpo_gamma", gamma=0.0)(toy(ref=(-3.0, -40.0))).loss.item(), abs=1e-15)


def test_released_alpha_scaling_loss_and_rewards_by_hand():
    # angie-chen55/pref-learning-ranking-acc@a86bdef dpo_trainer.py "alpha_scaling" (their alpha = gamma):
    # -log sigmoid(beta * ((S_w - S_l) - gamma * (R_w - R_l))) on summed log-probs; rewards beta * (S - R), no gamma.
    beta, gamma = 0.1, 1.75
    s_w, s_l, r_w, r_l = -10.0, -12.0, -11.0, -11.5
    z = (s_w - s_l) - gamma * (r_w - r_l)  # 2 + 0.875 = 2.875
    out = get_objective("dpo_gamma", beta=beta, gamma=gamma)(toy())
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-beta * z)), abs=1e-12)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(beta * (s_w - r_w), abs=1e-12)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(beta * (s_l - r_l), abs=1e-12)
