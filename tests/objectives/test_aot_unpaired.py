"""AOT (unpaired) (objectives.md §B): B = 1 equals DPO, a hand-sorted batch, the legacy name."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, get_objective

ell = lambda z: math.log1p(math.exp(-z))  # noqa: E731


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_of_one_is_dpo(dtype):
    batch = PairBatch.from_sums(*(torch.tensor([v], dtype=dtype) for v in (-10.0, -12.0, -11.0, -11.5)))
    assert get_objective("aot_unpaired", beta=0.1)(batch).loss.item() == pytest.approx(0.6209570478, abs=1e-6)


def test_sorted_log_ratios_by_hand():
    # h_w = [1, -2, 0.5] -> [-2, 0.5, 1];  h_l = [0, 3, -1] -> [-1, 0, 3];  d = [-1, 0.5, -2]
    rows = torch.tensor([[-4.0, -7.0, -5.5], [-6.0, -1.0, -9.0], [-5.0, -5.0, -6.0], [-6.0, -4.0, -8.0]],
                        dtype=torch.float64)
    batch = PairBatch.from_sums(*rows)
    out = get_objective("aot_unpaired", beta=1.0)(batch)
    assert out.losses.tolist() == pytest.approx([ell(-1.0), ell(0.5), ell(-2.0)], abs=1e-12)
    # the paired variant sorts different quantities and gives another value
    assert get_objective("aot", beta=1.0)(batch).loss.item() != pytest.approx(out.loss.item(), abs=1e-3)


def test_legacy_aot_pair_warns_and_resolves():
    with pytest.warns(UserWarning, match="aot_unpaired"):
        obj = get_objective("aot_pair", beta=0.3)
    assert type(obj).__name__ == "AOTUnpaired" and obj.beta == 0.3
