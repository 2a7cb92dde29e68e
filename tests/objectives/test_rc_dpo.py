"""rc_dpo (MAPL intra, DPO form) against models-and-loops.md #14: DPO with prompt and response roles swapped."""
import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective


def test_fixture_value_equals_dpo():
    # S(y|x_w) = -10, S_ref(y|x_w) = -11, S(y|x_l) = -12, S_ref(y|x_l) = -11.5
    b = PairBatch.from_sums(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.5]))
    assert get_objective("rc_dpo", beta=0.1)(b).loss.item() == pytest.approx(0.6209570478, abs=1e-6)


def test_identity_with_dpo_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(3, 6, generator=g) > 0.3
    sides = [torch.randn(3, 6, generator=g, dtype=torch.float64) - 2 for _ in range(4)]
    leaves = [s.clone().requires_grad_(True) for s in sides[:2]], [s.clone().requires_grad_(True) for s in sides[:2]]
    outs = []
    for name, (w, l) in zip(("rc_dpo", "dpo"), leaves):
        b = PairBatch(SequenceLogps(w, mask), SequenceLogps(l, mask), SequenceLogps(sides[2], mask),
                      SequenceLogps(sides[3], mask))
        out = get_objective(name, beta=0.3)(b)
        out.loss.backward()
        outs.append(out)
    torch.testing.assert_close(outs[0].losses, outs[1].losses, rtol=0, atol=0)
    torch.testing.assert_close(leaves[0][0].grad, leaves[1][0].grad, rtol=0, atol=0)
    assert outs[0].metrics["rewards/margins"] == outs[1].metrics["rewards/margins"]


def test_level_weights_scale_each_rows_loss():
    """intra_weight on rows flagged intra_row, inter_weight on rows with mapl_inter = 1, 1 on the others."""
    b = PairBatch.from_sums(torch.tensor([-10.0, -9.0, -8.0]), torch.tensor([-12.0, -9.5, -7.0]),
                            torch.tensor([-11.0, -9.2, -8.1]), torch.tensor([-11.5, -9.1, -7.3]),
                            extras={"intra_row": torch.tensor([True, False, False]),
                                    "mapl_inter": torch.tensor([0.0, 0.0, 1.0])})
    plain = get_objective("dpo", beta=0.1)(b).losses
    out = get_objective("rc_dpo", beta=0.1, intra_weight=0.5, inter_weight=2.0)(b)
    torch.testing.assert_close(out.losses, plain * torch.tensor([0.5, 1.0, 2.0]), rtol=0, atol=1e-7)
    assert out.loss.item() == pytest.approx(out.losses.mean().item(), abs=1e-7)
