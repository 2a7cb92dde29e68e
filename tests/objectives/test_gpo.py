"""gpo against models-and-loops.md #19: SPPO's squared loss on centred scores (no 1/2 offset)."""
import pytest
import torch

from preflab.objectives import PairBatch, get_objective
from preflab.objectives.base import logratios

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


def test_loss_is_the_papers_eq_5_3_with_log_z_replaced_by_zero():
    """arXiv:2410.02197v3 §5: s(y_i > mu) = (1/K) sum_k s(y_i > y_k) (Eq. 5.2); GPO regresses
    log pi_theta/pi_t onto s(y > pi_t)/beta - log Z with log Z replaced by 0 (Eq. 5.3 and its footnote), here on
    the chosen / rejected responses, averaged as in SPPO's trainer."""
    S = torch.tensor([[0.0, 1.2, -0.4], [-1.2, 0.0, 0.7], [0.4, -0.7, 0.0]], **F64)  # s(y_i > y_k), skew
    s = S.mean(-1)                                                                   # Eq. 5.2
    w, l = int(s.argmax()), int(s.argmin())
    beta = 0.2
    b = batch([float(s[w]), 0.0], [float(s[l]), 0.0])
    h_w, h_l = logratios(b)  # log pi_theta / pi_t
    eq_5_3 = 0.5 * ((h_w[0] - s[w] / beta) ** 2 + (h_l[0] - s[l] / beta) ** 2)
    out = get_objective("gpo", beta=beta)(b)
    assert out.losses[0].item() == pytest.approx(eq_5_3.item(), abs=1e-12)
    # The released pipeline (compute_score_from_raw.py) feeds (1/K) sum_k (T_ik - T_ki) = 2 s for a skew table:
    # its beta is the paper's 2 beta, i.e. run scripts' 0.001 = Eq. 5.3's 0.0005.
    pipeline = (S - S.T).mean(-1)
    torch.testing.assert_close(pipeline, 2 * s)
    released = get_objective("gpo", beta=2 * beta)(batch([float(pipeline[w]), 0.0], [float(pipeline[l]), 0.0]))
    assert released.losses[0].item() == pytest.approx(eq_5_3.item(), abs=1e-12)
