"""gpo against models-and-loops.md #19: SPPO's squared loss on centred scores (no 1/2 offset)."""
import pytest
import torch

from preflab.objectives import PairBatch, get_objective

F64 = dict(dtype=torch.float64)


def batch(s_w, s_l):
    return PairBatch.from_sums(torch.tensor([-10.0, -3.0], **F64), torch.tensor([-12.0, -2.0], **F64),
                               torch.tensor([-11.0, -3.5], **F64), torch.tensor([-11.5, -2.5], **F64),
                               extras={"score_chosen": s_w, "score_rejected": s_l})


def test_hand_value():
    # pair 0: h_w = 1, h_l = -0.5, targets 0.3/0.1 = 3 and -0.2/0.1 = -2: 0.5 * (4 + 2.25)
    out = get_objective("gpo", beta=0.1)(batch([0.3, 0.0], [-0.2, 0.0]))
    assert out.losses[0].item() == pytest.approx(3.125, abs=1e-12)
    # pair 1: h_w = 0.5, h_l = 0.5, zero targets: 0.5 * (0.25 + 0.25)
    assert out.losses[1].item() == pytest.approx(0.25, abs=1e-12)


def test_equals_sppo_on_centred_win_rates():
    p_w, p_l = torch.tensor([0.8, 0.55], **F64), torch.tensor([0.1, 0.45], **F64)
    gpo = get_objective("gpo", beta=0.05)(batch(p_w - 0.5, p_l - 0.5)).losses
    sppo = get_objective("sppo", beta=0.05)(batch(p_w, p_l)).losses
    torch.testing.assert_close(gpo, sppo)


def test_default_beta_follows_the_gpo_scripts():
    assert get_objective("gpo").beta == 0.001
