"""rationale_orpo (RORPO) against models-and-loops.md #11: fixture value, reduction to ORPO, batch token-mean NLL."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective

F64 = dict(dtype=torch.float64)


def seq(values, lengths, T=5):
    """[B] per-token means spread over `lengths` tokens."""
    mask = torch.arange(T) < torch.tensor(lengths).unsqueeze(-1)
    return SequenceLogps(torch.tensor(values, **F64).unsqueeze(-1) * mask, mask)


def test_fixture_value():
    # A_w = -2, A_l = -1.5, A_r = -1, NLL = 2 (one chosen token of log-prob -2)
    b = PairBatch.from_sums(torch.tensor([-2.0], **F64), torch.tensor([-1.5], **F64))
    b.extras["rationale_logps"] = SequenceLogps.from_sums(torch.tensor([-1.0], **F64))
    out = get_objective("rationale_orpo", beta=0.1, gamma=1.0)(b)
    assert out.metrics["log_odds_ratio"].item() == pytest.approx(-0.607069, abs=1e-6)
    assert out.loss.item() == pytest.approx(3.104206, abs=1e-6)
    log_odds = -0.5 - (math.log1p(-math.exp(-2.0)) - math.log1p(-math.exp(-1.5)))
    assert out.loss.item() == pytest.approx(2.0 + 0.1 * math.log1p(math.exp(-log_odds)) + 1.0, abs=1e-12)


def test_gamma_zero_equals_orpo_and_rationale_uses_the_mean():
    b = PairBatch(seq([-1.0, -0.4], [2, 4]), seq([-0.7, -2.0], [3, 1]))
    b.extras["rationale_logps"] = seq([-0.3, -0.9], [5, 2])
    # RORPO's NLL is the chosen response's (its source masks the prompt): ORPO's nll_scope response
    base = get_objective("orpo", beta=0.2, nll_scope="response")(b)
    torch.testing.assert_close(get_objective("rationale_orpo", beta=0.2, gamma=0.0)(b).losses, base.losses)
    # gamma adds -gamma * mean rationale log-prob, per pair
    diff = get_objective("rationale_orpo", beta=0.2, gamma=0.5)(b).losses - base.losses
    torch.testing.assert_close(diff, torch.tensor([0.15, 0.45], **F64))


def test_nll_is_the_batch_token_mean():
    # chosen sums -2 (2 tokens) and -1.6 (4 tokens): NLL = 3.6 / 6 = 0.6 for every pair
    b = PairBatch(seq([-1.0, -0.4], [2, 4]), seq([-0.7, -2.0], [3, 1]))
    b.extras["rationale_logps"] = seq([-0.3, -0.9], [5, 2])
    out = get_objective("rationale_orpo", beta=0.1, gamma=0.0)(b)
    assert out.metrics["nll_loss"].item() == pytest.approx(0.6, abs=1e-12)
    a_w, a_l = torch.tensor([-1.0, -0.4], **F64), torch.tensor([-0.7, -2.0], **F64)
    log_odds = (a_w - a_l) - (torch.log1p(-a_w.exp()) - torch.log1p(-a_l.exp()))
    torch.testing.assert_close(out.losses, 0.6 - 0.1 * torch.nn.functional.logsigmoid(log_odds))
