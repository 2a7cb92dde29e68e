"""upo against models-and-loops.md #26: fixture values, reductions to DPO/cDPO, the reward-scaled NLL, alpha mapping."""
import math

import pytest
import torch

from preflab.errors import PreflabError
from preflab.objectives import PairBatch, get_objective
from preflab.objectives.upo import alpha_from_bald

F64 = dict(dtype=torch.float64)


def fixture(alpha, **extras):
    # reference slots = previous iterate pi_t: S_t(y_w) = -10.5, S_t(y_l) = -11.8, so Delta' = 0.7
    return PairBatch.from_sums(torch.tensor([-10.0], **F64), torch.tensor([-12.0], **F64), torch.tensor([-10.5], **F64),
                               torch.tensor([-11.8], **F64), extras={"alpha": [alpha], **extras})


@pytest.mark.parametrize("alpha,value", [(0.0, 0.658760), (0.1, 0.665760), (0.5, 0.693760)])
def test_fixture_values(alpha, value):
    out = get_objective("upo", beta=0.1)(fixture(alpha))
    assert out.loss.item() == pytest.approx(value, abs=1e-6)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.07)) + alpha * 0.07, abs=1e-12)  # DPO + alpha*beta*Delta'


def test_reductions_to_dpo_and_cdpo():
    dpo = get_objective("dpo", beta=0.1)(fixture(0.0)).loss.item()
    assert get_objective("upo", beta=0.1)(fixture(0.0)).loss.item() == pytest.approx(dpo, abs=1e-15)
    cdpo = get_objective("cdpo", beta=0.1, label_smoothing=0.2)(fixture(0.2)).loss.item()
    assert get_objective("upo", beta=0.1)(fixture(0.2)).loss.item() == pytest.approx(cdpo, abs=1e-15)


def test_half_alpha_is_symmetric_in_the_margin():
    a = get_objective("upo")(fixture(0.5)).loss.item()
    swapped = PairBatch.from_sums(torch.tensor([-12.0], **F64), torch.tensor([-10.0], **F64), torch.tensor([-11.8], **F64),
                                  torch.tensor([-10.5], **F64), extras={"alpha": [0.5]})
    assert get_objective("upo")(swapped).loss.item() == pytest.approx(a, abs=1e-15)


def test_reward_scaled_nll():
    base = get_objective("upo")(fixture(0.1)).loss.item()
    out = get_objective("upo", nll_weight=0.5)(fixture(0.1, chosen_reward_abs=[2.0]))
    assert out.loss.item() - base == pytest.approx(0.5 * 10.0 / 2.0, abs=1e-12)   # lam * -S(y_w) / |r|
    floored = get_objective("upo", nll_weight=0.5, reward_eps=0.1)(fixture(0.1, chosen_reward_abs=[0.0]))
    assert floored.loss.item() - base == pytest.approx(0.5 * 10.0 / 0.1, abs=1e-9)


def test_alpha_mapping_and_range_check():
    b = torch.tensor([0.0, 0.6371, math.log(2), 2.0])
    torch.testing.assert_close(alpha_from_bald(b), torch.tensor([0.0, 0.1 * 0.6371 / math.log(2), 0.1, 0.1]))
    with pytest.raises(PreflabError, match="alpha"):
        get_objective("upo")(fixture(1.5))
