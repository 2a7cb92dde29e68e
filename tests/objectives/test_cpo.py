"""CPO (objectives.md §A8): hand value with the NLL term, reduction to reference-free DPO, smoothing."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective


def seq(total, n, dtype=torch.float64, pad=2):
    return SequenceLogps(torch.tensor([[total / n] * n + [-7.0] * pad], dtype=dtype),
                         torch.tensor([[True] * n + [False] * pad]))


def toy(dtype=torch.float64):
    return PairBatch(seq(-10.0, 5, dtype), seq(-12.0, 8, dtype), seq(-11.0, 5, dtype), seq(-11.5, 8, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    # l(0.1 * (-10 + 12)) + 1.0 * (10 / 5)
    out = get_objective("cpo", beta=0.1)(toy(dtype))
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.2)) + 2.0, abs=1e-6)
    assert out.metrics["nll_loss"].item() == pytest.approx(2.0, abs=1e-6)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.2, abs=1e-6)  # beta * (S_w - S_l), as TRL


def test_no_nll_is_reference_free_dpo():
    batch = toy()
    assert get_objective("cpo", beta=0.1, cpo_alpha=0.0)(batch).loss.item() == pytest.approx(
        get_objective("dpo_gamma", beta=0.1, gamma=0.0)(batch).loss.item(), abs=1e-12)


def test_label_smoothing():
    out = get_objective("cpo", beta=0.1, cpo_alpha=0.0, label_smoothing=0.2)(toy())
    assert out.loss.item() == pytest.approx(0.8 * math.log1p(math.exp(-0.2)) + 0.2 * math.log1p(math.exp(0.2)),
                                            abs=1e-12)
