"""rationale_dpo (RDPO) against models-and-loops.md #11: fixture values, the gamma = 0 reduction, the rationale gradient."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective

F64 = dict(dtype=torch.float64)


def fixture(rationale, grad=False):
    pc = torch.tensor([-10.0], **F64, requires_grad=grad)
    b = PairBatch.from_sums(pc, torch.tensor([-12.0], **F64), torch.tensor([-11.0], **F64), torch.tensor([-11.5], **F64))
    b.extras["rationale_logps"] = rationale
    return b, pc


@pytest.mark.parametrize("gamma,value", [(0.001, 1.324154), (0.1, 2.747885)])
def test_fixture_values(gamma, value):
    r = SequenceLogps.from_sums(torch.tensor([-20.0], **F64))
    out = get_objective("rationale_dpo", beta=0.1, gamma=gamma)(fixture(r)[0])
    assert out.loss.item() == pytest.approx(value, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.6209570478 + math.log1p(math.exp(20 * gamma)), abs=1e-9)
    assert out.metrics["logps/rationale"].item() == -20.0


def test_gamma_zero_is_dpo_plus_ln2_with_dpo_gradients():
    r = SequenceLogps.from_sums(torch.tensor([-20.0], **F64))
    b1, pc1 = fixture(r, grad=True)
    b2, pc2 = fixture(r, grad=True)
    l1 = get_objective("rationale_dpo", gamma=0.0)(b1).loss
    l2 = get_objective("dpo")(b2).loss
    assert l1.item() == pytest.approx(l2.item() + math.log(2), abs=1e-12)
    l1.backward(), l2.backward()
    assert pc1.grad.item() == pytest.approx(pc2.grad.item(), abs=1e-15)


def test_rationale_gradient_closed_form_and_summed_tokens():
    # a 3-token rationale summing to -20: dL/dS_r = -gamma * sigmoid(-gamma * S_r), shared by every token
    tok = torch.tensor([[-5.0, -7.0, -8.0, 99.0]], **F64, requires_grad=True)
    r = SequenceLogps(tok, torch.tensor([[True, True, True, False]]))
    out = get_objective("rationale_dpo", gamma=0.1)(fixture(r)[0])
    out.loss.backward()
    expected = -0.1 * torch.sigmoid(torch.tensor(2.0, **F64)).item()
    torch.testing.assert_close(tok.grad, torch.tensor([[expected] * 3 + [0.0]], **F64))
    # a [B] tensor of rationale sums gives the same loss as the SequenceLogps
    assert out.loss.item() == pytest.approx(get_objective("rationale_dpo", gamma=0.1)(
        fixture(torch.tensor([-20.0], **F64))[0]).loss.item(), abs=1e-12)  # [B] sums accepted too


def test_a_negative_gamma_is_refused():
    """gamma < 0 would turn -log sigmoid(gamma S(r)) into a reward for unlikely rationales."""
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match="RationaleDPO: gamma must be >= 0, got -0.05"):
        get_objective("rationale_dpo", gamma=-0.05)
    get_objective("rationale_dpo", gamma=0.0)  # the DPO + ln 2 reduction stays allowed
