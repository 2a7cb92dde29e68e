"""APO-zero unpaired (objectives.md §A5, §B): per-example values and agreement with paired APO-zero."""
import pytest
import torch

from preflab.objectives import PairBatch, UnpairedBatch, get_objective


def toy(dtype=torch.float64):
    t = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
    return UnpairedBatch.from_sums(t([-10.0, -12.0]), [True, False], t([-11.0, -11.5]))  # no mismatched sides needed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values(dtype):
    out = get_objective("apo_zero_unpaired", beta=0.1)(toy(dtype))
    assert out.losses.tolist() == pytest.approx([0.4750208125, 0.4875026035], abs=1e-6)  # 1 - s(0.1), s(-0.05)
    assert out.metrics["kl"].item() == 0.0


def test_pair_split_into_two_examples_matches_paired_apo_zero():
    unpaired = get_objective("apo_zero_unpaired", beta=0.1)(toy()).losses.sum()
    paired = get_objective("apo_zero", beta=0.1)(PairBatch.from_sums(
        *torch.tensor([[-10.0], [-12.0], [-11.0], [-11.5]], dtype=torch.float64))).loss
    assert unpaired.item() == pytest.approx(paired.item(), abs=1e-12)
    assert unpaired.item() == pytest.approx(0.9625234, abs=1e-6)
