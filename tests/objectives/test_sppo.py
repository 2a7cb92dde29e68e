"""sppo (soft SPPO) against models-and-loops.md §D2/#19: hand values, half of TRL's sppo_hard, the G3 tabular step."""
import pytest
import torch

from preflab.objectives import PairBatch, get_objective

F64 = dict(dtype=torch.float64)


def fixture(p_w, p_l, grad=False):
    pc = torch.tensor([-10.0], **F64, requires_grad=grad)
    b = PairBatch.from_sums(pc, torch.tensor([-12.0], **F64), torch.tensor([-11.0], **F64), torch.tensor([-11.5], **F64),
                            extras={"score_chosen": [p_w], "score_rejected": [p_l]})
    return b, pc


def test_hand_value():
    # h_w = 1, h_l = -0.5; targets (0.7 - 0.5)/0.1 = 2 and (0.2 - 0.5)/0.1 = -3: 0.5 * (1 + 6.25)
    assert get_objective("sppo", beta=0.1)(fixture(0.7, 0.2)[0]).loss.item() == pytest.approx(3.625, abs=1e-12)


def test_hard_labels_are_half_of_trl_sppo_hard():
    b = fixture(1.0, 0.0)[0]
    soft = get_objective("sppo", beta=0.1)(b).loss.item()
    assert soft == pytest.approx(36.25 / 2, abs=1e-12)
    assert soft == pytest.approx(get_objective("sppo_hard", beta=0.1)(b).loss.item() / 2, abs=1e-12)


def test_zero_loss_and_gradient_at_the_targets():
    # log pi/pi_t(y_w) = (p_w - 1/2)/beta is the per-response minimizer
    b, pc = fixture(0.5 + 0.1 * 1.0, 0.5 - 0.1 * 0.5, grad=True)
    out = get_objective("sppo", beta=0.1)(b)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.0, abs=1e-20) and pc.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_population_minimizer_approximates_the_multiplicative_weights_step():
    # G3 game, pi_t = (0.6, 0.3, 0.1), beta = 1 (eta = 1); pairs y, y' ~ pi_t with win rates P(y > pi_t) as scores.
    M = torch.tensor([[0.0, 1, -2], [-1, 0, 3], [2, -3, 0]], **F64)
    P, pt = 0.5 + M / 6, torch.tensor([0.6, 0.3, 0.1], **F64)
    win = P @ pt
    I, J = (x.flatten() for x in torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij"))
    theta = pt.log().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        lp = torch.log_softmax(theta, -1)
        b = PairBatch.from_sums(lp[I], lp[J], pt.log()[I], pt.log()[J],
                                extras={"score_chosen": win[I], "score_rejected": win[J]})
        loss = (get_objective("sppo", beta=1.0)(b).losses * pt[I] * pt[J]).sum()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    pi = torch.softmax(theta.detach(), -1)
    torch.testing.assert_close(pi, torch.tensor([0.609725, 0.285212, 0.105063], **F64), atol=1e-6, rtol=0)
    mw = pt * torch.exp(win) / (pt * torch.exp(win)).sum()  # exact MW update: close but not equal (offset 1/2 ~ log Z)
    assert 1e-6 < (pi - mw).abs().max().item() < 1e-4
