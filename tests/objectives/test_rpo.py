"""RPO (methods/objectives.md §C #6): spec fixture values, eta = 0 equals DPO, closed-form gradient, aggregations."""
import math

import pytest
import torch

from preflab.errors import ConfigError
from preflab.objectives import PairBatch, SequenceLogps, get_objective


def seq(totals, lengths, T=8, grad=False):
    """Rows whose `lengths[i]` tokens share `totals[i]` evenly; padded positions hold garbage (must be ignored)."""
    totals, lengths = torch.tensor(totals, dtype=torch.float64), torch.tensor(lengths)
    mask = torch.arange(T) < lengths[:, None]
    tok = torch.where(mask, (totals / lengths)[:, None].expand(-1, T), torch.full((len(totals), T), 7.0))
    return SequenceLogps(tok.clone().requires_grad_(grad), mask)


def fixture(grad=False):
    """§0 toy: S(y_w) = -10 over 5 tokens, S(y_l) = -12 over 8, refs -11 and -11.5; Delta = 1.5."""
    return PairBatch(seq([-10.0], [5], grad=grad), seq([-12.0], [8], grad=grad), seq([-11.0], [5]), seq([-11.5], [8]))


def random_batch(seed=0, B=5):
    g = torch.Generator().manual_seed(seed)
    lw, ll = torch.randint(1, 8, (B,), generator=g), torch.randint(1, 8, (B,), generator=g)
    s = lambda l: seq((-torch.rand(B, generator=g, dtype=torch.float64) * 20).tolist(), l.tolist())  # noqa: E731
    return PairBatch(s(lw), s(ll), s(lw), s(ll))


def test_cumulative_fixture_value():
    out = get_objective("rpo", beta=0.01, eta=0.005, nll_agg="sum")(fixture())
    assert out.loss.item() == pytest.approx(0.6861753053, abs=1e-9)


def test_average_fixture_value():
    out = get_objective("rpo", beta=0.1, eta=0.2, nll_agg="seq_mean")(fixture())
    assert out.loss.item() == pytest.approx(1.0209570478, abs=1e-9)
    assert out.metrics["loss/nll"].item() == pytest.approx(2.0)  # -A(y_w) = 10 / 5


@pytest.mark.parametrize("agg", ["sum", "seq_mean", "batch_token_mean"])
def test_eta_zero_is_dpo(agg):
    batch = random_batch()
    rpo = get_objective("rpo", beta=0.3, eta=0.0, nll_agg=agg)(batch)
    dpo = get_objective("dpo", beta=0.3)(batch)
    torch.testing.assert_close(rpo.losses, dpo.losses, rtol=0, atol=1e-12)


def test_cumulative_gradient_closed_form():
    batch = fixture(grad=True)
    beta, eta = 0.01, 0.005
    get_objective("rpo", beta=beta, eta=eta, nll_agg="sum")(batch).loss.backward()
    expected = -beta / (1 + math.exp(beta * 1.5)) - eta * beta  # dL/dS(y_w), the same for every token of y_w
    grad = batch.policy_chosen.token_logps.grad
    torch.testing.assert_close(grad[0, :5], torch.full((5,), expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (grad[0, 5:] == 0).all()  # padding gets no gradient


def test_batch_token_mean_is_token_weighted():
    # two pairs, chosen lengths 5 and 3 with sums -10 and -9: NLL = 19 / 8 for both examples (TRL's `sft` term)
    batch = PairBatch(seq([-10.0, -9.0], [5, 3]), seq([-12.0, -4.0], [8, 2]), seq([-11.0, -9.0], [5, 3]),
                      seq([-11.5, -4.0], [8, 2]))
    dpo = get_objective("dpo", beta=0.1)(batch).losses
    out = get_objective("rpo", beta=0.1, eta=0.5, nll_agg="batch_token_mean")(batch)
    torch.testing.assert_close(out.losses, dpo + 0.5 * 19 / 8, rtol=0, atol=1e-12)
    seq_mean = get_objective("rpo", beta=0.1, eta=0.5, nll_agg="seq_mean")(batch)
    torch.testing.assert_close(seq_mean.losses, dpo + 0.5 * torch.tensor([2.0, 3.0], dtype=torch.float64))


def test_bad_aggregation_rejected():
    with pytest.raises(ConfigError, match="nll_agg"):
        get_objective("rpo", nll_agg="mean")


def test_defaults_are_the_released_average_recipe():
    """The defaults are `OpenRLHF/train_rpo.sh`'s run (YSLIU627/Regularized-Preference-Optimization): `--beta 0.5`,
    `--nll_loss_coef 0.2`, and its trainer's loss, transcribed here: `DPOLoss` (the batch mean of
    -log sigmoid(beta * ((S_w - S_l) - (R_w - R_l))), label smoothing 0) + nll_loss_coef * (-(the batch mean of the
    chosen responses' per-token mean log-probs)) (`DPOTrainer.fit`, `concatenated_forward`). Before the 2026-12
    paper audit beta defaulted to 0.1, which this number tells apart."""
    batch = random_batch(seed=3)
    pw, pl = batch.policy_chosen, batch.policy_rejected
    s = lambda side: (side.token_logps * side.mask).sum(-1)  # noqa: E731
    pref = -torch.nn.functional.logsigmoid(0.5 * ((s(pw) - s(pl)) - (s(batch.ref_chosen) - s(batch.ref_rejected))))
    nll = -(s(pw) / pw.mask.sum(-1)).mean()
    released = pref.mean() + 0.2 * nll
    out = get_objective("rpo")(batch)
    assert out.loss.item() == pytest.approx(released.item(), rel=1e-12)
    at_01 = get_objective("rpo", beta=0.1)(batch).loss.item()
    assert abs(at_01 - released.item()) > 1e-3
