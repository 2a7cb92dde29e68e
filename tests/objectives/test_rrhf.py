"""rrhf against objectives.md §A8 (survey eq. 10) and the RRHF code: hand values, length penalty, ties, gradients."""
import pytest
import torch

from preflab.objectives import ListBatch, SequenceLogps, get_objective

F64 = dict(dtype=torch.float64)


def lst(sums, lengths, scores, valid=None, grad=False):
    """One prompt; response i has `lengths[i]` equal tokens summing to sums[i]."""
    T = max(lengths)
    mask = (torch.arange(T) < torch.tensor(lengths).unsqueeze(-1)).unsqueeze(0)
    tok = (torch.tensor(sums, **F64) / torch.tensor(lengths, **F64)).unsqueeze(-1).expand(-1, T).unsqueeze(0) * mask
    tok = tok.clone().requires_grad_(grad)
    b = ListBatch(SequenceLogps(tok, mask), torch.tensor([scores], **F64),
                  valid=None if valid is None else torch.tensor([valid]))
    return b, tok


def test_hand_value():
    # p = S/|y| = [-1, -0.5, -3]; scores [1, 0, 0.5]. Pairs r_i < r_j: (1,0): max(0, 0.5) ; (1,2): 2.5 ; (2,0): 0
    b = lst([-2.0, -2.0, -3.0], [2, 4, 1], [1.0, 0.0, 0.5])[0]
    out = get_objective("rrhf")(b)
    assert out.metrics["loss/rank"].item() == pytest.approx(3.0, abs=1e-12)
    assert out.metrics["loss/sft"].item() == pytest.approx(2.0, abs=1e-12)      # -S(y*), y* = response 0
    assert out.loss.item() == pytest.approx(5.0, abs=1e-12)
    assert get_objective("rrhf", rank_weight=0.5, sft_weight=0.1)(b).loss.item() == pytest.approx(1.7, abs=1e-12)
    # length_penalty 0: p = S = [-2, -2, -3]: only (1,2) violates, by 1
    assert get_objective("rrhf", length_penalty=0.0, sft_weight=0.0)(b).loss.item() == pytest.approx(1.0, abs=1e-12)


def test_correct_order_leaves_only_the_sft_term():
    ordered = lst([-1.0, -12.0, -1.5], [2, 4, 1], [1.0, 0.0, 0.5])[0]           # p = [-0.5, -3, -1.5] follows r
    assert get_objective("rrhf")(ordered).loss.item() == pytest.approx(1.0, abs=1e-12)
    swapped = lst([-1.0, -6.0, -3.0], [2, 4, 1], [1.0, 0.0, 0.5])[0]           # p = [-0.5, -1.5, -3]: (1,2) by 1.5
    assert get_objective("rrhf")(swapped).metrics["loss/rank"].item() == pytest.approx(1.5, abs=1e-12)


def test_gradient_closed_form():
    b, tok = lst([-2.0, -2.0, -3.0], [2, 4, 1], [1.0, 0.0, 0.5], grad=True)
    get_objective("rrhf")(b).loss.backward()
    # dL/dp_0 = -1 (pair (1,0)); dL/dp_1 = +2; dL/dp_2 = -1; p = S/|y| so per-token grad = dL/dp / |y|; sft adds -1 on y*
    expected = torch.tensor([[[-1 / 2 - 1, -1 / 2 - 1, 0, 0], [2 / 4] * 4, [-1.0, 0, 0, 0]]], **F64)
    torch.testing.assert_close(tok.grad, expected)


def test_ties_and_invalid_entries():
    two = get_objective("rrhf")(lst([-2.0, -2.0], [2, 4], [1.0, 0.0])[0]).loss.item()
    assert two == pytest.approx(0.5 + 2.0, abs=1e-12)
    tied = get_objective("rrhf")(lst([-2.0, -2.0, -9.0], [2, 4, 1], [1.0, 0.0, 0.0])[0]).loss.item()
    assert tied == pytest.approx(two, abs=1e-12)                                 # ties make no pair
    padded = lst([-2.0, -2.0, 0.0], [2, 4, 1], [1.0, 0.0, 5.0], valid=[True, True, False])[0]
    assert get_objective("rrhf")(padded).loss.item() == pytest.approx(two, abs=1e-12)
