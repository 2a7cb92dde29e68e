"""SimPO (objectives.md §A7): fixture value, gamma naming, reductions, length invariance."""
import pytest
import torch

from preflab.errors import ConfigError
from preflab.objectives import PairBatch, SequenceLogps, get_objective


def seq(total, n, dtype=torch.float64, pad=2):
    return SequenceLogps(torch.tensor([[total / n] * n + [-7.0] * pad], dtype=dtype),
                         torch.tensor([[True] * n + [False] * pad]))


def toy(dtype=torch.float64):
    return PairBatch(seq(-10.0, 5, dtype), seq(-12.0, 8, dtype))  # A_w = -2, A_l = -1.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    out = get_objective("simpo", beta=2.0, simpo_gamma=1.0)(toy(dtype))
    assert out.loss.item() == pytest.approx(2.1269280110, abs=1e-6)  # softplus(2): z = 2 * (-0.5) - 1
    assert out.metrics["logps/chosen"].item() == pytest.approx(-2.0, abs=1e-6)  # TRL CPO logs the mean log-prob
    assert get_objective("simpo", beta=2.0, gamma_beta_ratio=0.5)(toy(dtype)).loss.item() == pytest.approx(
        2.1269280110, abs=1e-6)


def test_gamma_zero_unit_lengths_is_reference_free_dpo():
    rows = torch.tensor([[-3.0, -1.0], [-5.0, -0.5], [-4.0, -1.5], [-4.5, -1.0]], dtype=torch.float64)
    batch = PairBatch.from_sums(*rows)
    simpo = get_objective("simpo", beta=0.7, simpo_gamma=0.0)(batch).loss
    ref_free = get_objective("dpo_gamma", beta=0.7, gamma=0.0)(batch).loss
    assert simpo.item() == pytest.approx(ref_free.item(), abs=1e-12)


def test_doubling_a_response_changes_nothing_and_nll_term_adds():
    a = get_objective("simpo")(PairBatch(seq(-4.0, 4), seq(-6.0, 3))).losses
    b = get_objective("simpo")(PairBatch(seq(-8.0, 8), seq(-6.0, 3))).losses
    torch.testing.assert_close(a, b)
    with_nll = get_objective("simpo", cpo_alpha=0.5)(PairBatch(seq(-4.0, 4), seq(-6.0, 3))).loss
    assert with_nll.item() == pytest.approx(a.mean().item() + 0.5 * 1.0, abs=1e-12)


def test_both_gamma_names_rejected():
    with pytest.raises(ConfigError, match="either"):
        get_objective("simpo", simpo_gamma=1.0, gamma_beta_ratio=0.5)
