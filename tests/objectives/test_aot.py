"""AOT (paired) (objectives.md §B): B = 1 equals DPO, a hand-sorted batch, smoothing, tie-averaged gradient."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, get_objective

ell = lambda z: math.log1p(math.exp(-z))  # noqa: E731


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_of_one_is_dpo(dtype):
    batch = PairBatch.from_sums(*(torch.tensor([v], dtype=dtype) for v in (-10.0, -12.0, -11.0, -11.5)))
    assert get_objective("aot", beta=0.1)(batch).loss.item() == pytest.approx(0.6209570478, abs=1e-6)


def test_sorted_matching_by_hand():
    # policy margins u = [2, -1, 0.5] -> sorted [-1, 0.5, 2]; reference margins v = [0, 1, -3] -> [-3, 0, 1]
    rows = torch.tensor([[-8.0, -6.0, -4.5], [-10.0, -5.0, -5.0], [-7.0, -2.0, -6.0], [-7.0, -3.0, -3.0]],
                        dtype=torch.float64)
    batch = PairBatch.from_sums(*rows)
    out = get_objective("aot", beta=0.5)(batch)
    d = [2.0, 0.5, 1.0]
    assert out.losses.tolist() == pytest.approx([ell(0.5 * x) for x in d], abs=1e-12)
    smooth = get_objective("aot", beta=0.5, label_smoothing=0.2)(batch)
    assert smooth.loss.item() == pytest.approx(sum(0.8 * ell(0.5 * x) + 0.2 * ell(-0.5 * x) for x in d) / 3, abs=1e-12)


def test_permuting_the_batch_changes_nothing():
    rows = torch.tensor([[-8.0, -10.0, -7.0, -7.0], [-6.0, -5.0, -2.0, -3.0], [-4.5, -5.0, -6.0, -3.0]],
                        dtype=torch.float64)
    loss = lambda r: get_objective("aot")(PairBatch.from_sums(*r.T)).loss.item()  # noqa: E731
    assert loss(rows[[2, 0, 1]]) == pytest.approx(loss(rows), abs=1e-15)


def test_tied_margins_share_the_gradient():
    # u = [1, 1] tie; v sorted = [-2, 0] -> d = [3, 1]; each tied entry gets the mean of both positions' gradients
    pc = torch.tensor([0.0, 0.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    get_objective("aot", beta=1.0)(PairBatch.from_sums(pc, pc.detach() - 1, *ref)).loss.backward()
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = -(sig(-3.0) + sig(-1.0)) / 2 / 2  # (dl(3) + dl(1))/2, then the batch mean's 1/2
    assert pc.grad.tolist() == pytest.approx([expected, expected], abs=1e-12)
