"""ORPO (objectives.md §A6): fixture values and metrics, closed-form gradient, NLL-only at beta = 0; the NLL's token
scope (nll_scope: prompt_and_response, TRL's, by default; response, the old preflab value)."""
import math

import pytest
import torch

from preflab.errors import ConfigError, MissingExtraError
from preflab.objectives import PairBatch, SequenceLogps, get_objective, objective_class, objective_info
from preflab.objectives.orpo import log_odds_ratio


def seq(total, n, dtype=torch.float64, grad=False, pad=2):
    lp = torch.tensor([[total / n] * n + [-7.0] * pad], dtype=dtype, requires_grad=grad)
    return SequenceLogps(lp, torch.tensor([[True] * n + [False] * pad]))


def toy(dtype=torch.float64, grad=False):
    """A_w = -10/5 = -2, A_l = -12/8 = -1.5; no reference."""
    return PairBatch(seq(-10.0, 5, dtype, grad), seq(-12.0, 8, dtype, grad))


def with_prompt(batch, total=-3.0, n=2, pad=1):
    """`batch` with chosen prompt log-probs: n prompt tokens (after the first) summing to `total`, `pad` padding."""
    batch.extras["chosen_prompt_logps"] = seq(total, n, batch.policy_chosen.token_logps.dtype, pad=pad)
    return batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_values(dtype):
    """nll_scope: response: the values preflab's orpo gave before the option existed (the NLL over y_w only)."""
    out = get_objective("orpo", beta=0.1, nll_scope="response")(toy(dtype))
    assert out.loss.item() == pytest.approx(2.1042057807, abs=1e-6)
    assert out.metrics["log_odds_chosen"].item() == pytest.approx(-0.6070690011, abs=1e-6)  # TRL: mean log-odds
    assert out.metrics["log_odds_ratio"].item() == pytest.approx(-1.0420578079, abs=1e-6)  # TRL: mean log sigmoid
    assert out.metrics["nll_loss"].item() == pytest.approx(2.0, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-0.2, abs=1e-6)  # beta * A_w, as TRL


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prompt_and_response_scope_counts_the_prompt_tokens(dtype):
    """Default scope: NLL = -(S(x) + S(y_w)) / ((|x| - 1) + |y_w|) = (3 + 10) / (2 + 5); the odds-ratio term and
    the metrics that come from the response alone do not change; padding of the prompt grid is ignored."""
    out = get_objective("orpo", beta=0.1)(with_prompt(toy(dtype)))
    old = get_objective("orpo", beta=0.1, nll_scope="response")(toy(dtype))
    assert out.metrics["nll_loss"].item() == pytest.approx(13 / 7, abs=1e-6)
    assert out.loss.item() == pytest.approx(2.1042057807 - 2.0 + 13 / 7, abs=1e-6)
    for key in ("log_odds_ratio", "log_odds_chosen", "rewards/chosen", "logps/chosen"):
        assert out.metrics[key].item() == pytest.approx(old.metrics[key].item(), abs=1e-7)


def test_prompt_scope_is_a_batch_token_mean():
    """Over the batch's chosen tokens together (TRL's CrossEntropyLoss), not a mean of per-pair means."""
    pw = SequenceLogps(torch.tensor([[-1.0, -1.0, 0.0], [-4.0, -4.0, -4.0]], dtype=torch.float64),
                       torch.tensor([[True, True, False], [True, True, True]]))
    pl = SequenceLogps(torch.tensor([[-2.0], [-2.0]], dtype=torch.float64), torch.ones(2, 1, dtype=torch.bool))
    prompt = SequenceLogps(torch.tensor([[-0.5, 0.0], [-6.0, -6.0]], dtype=torch.float64),
                           torch.tensor([[True, False], [True, True]]))
    out = get_objective("orpo", beta=0.1)(PairBatch(pw, pl, extras={"chosen_prompt_logps": prompt}))
    nll = (2 + 12 + 0.5 + 12) / 8  # the mean of per-pair means would be (2.5 / 3 + 24 / 5) / 2
    assert out.metrics["nll_loss"].item() == pytest.approx(nll, abs=1e-12)
    a_w, a_l = torch.tensor([-1.0, -4.0], dtype=torch.float64), torch.tensor([-2.0, -2.0], dtype=torch.float64)
    torch.testing.assert_close(out.losses, nll - 0.1 * torch.nn.functional.logsigmoid(log_odds_ratio(a_w, a_l)))


def test_scope_declares_the_prompt_need_and_refuses_a_batch_without_it():
    assert get_objective("orpo").token_needs == ("prompt_logps",)
    assert get_objective("orpo", nll_scope="response").token_needs == ()
    assert objective_class("orpo").token_needs == ("prompt_logps",)  # the class: every need it can declare
    assert objective_info("orpo")["token_needs"] == ["prompt_logps"]
    with pytest.raises(MissingExtraError, match="chosen_prompt_logps.*nll_scope='response'"):
        get_objective("orpo")(toy())
    with pytest.raises(ConfigError, match="nll_scope must be one of"):
        get_objective("orpo", nll_scope="prompt")


def test_gradient_closed_form():
    batch = toy(grad=True)
    get_objective("orpo", beta=0.1, nll_scope="response")(batch).loss.backward()
    lo = (-2 + 1.5) - (math.log(1 - math.exp(-2)) - math.log(1 - math.exp(-1.5)))
    sig_neg = 1 / (1 + math.exp(lo))
    # per token of y_w: NLL gives -1/5; the odds term gives -beta sigma(-lo) / (1 - e^{A_w}) * (1/|y_w|)
    expected_w = -1 / 5 - 0.1 * sig_neg / (1 - math.exp(-2)) / 5
    expected_l = 0.1 * sig_neg / (1 - math.exp(-1.5)) / 8
    assert batch.policy_chosen.token_logps.grad[0, 0].item() == pytest.approx(expected_w, abs=1e-12)
    assert batch.policy_rejected.token_logps.grad[0, 0].item() == pytest.approx(expected_l, abs=1e-12)


def test_finite_when_a_response_has_probability_one():
    batch = PairBatch(seq(0.0, 3), seq(-1.0, 2))
    out = get_objective("orpo", nll_scope="response")(batch)
    assert math.isfinite(out.loss.item()) and out.metrics["log_odds_chosen"].item() > 10


def test_response_scope_still_trains_on_the_lab_population():
    """The lab's population batches have no prompt tokens, so tests/lab/test_population.py (objectives without
    token needs) no longer runs orpo; its check here with nll_scope: response: the first gradient step raises the
    preferred-minus-dispreferred margin M (<grad L, grad M> < 0 at pi_ref)."""
    from preflab.lab.bandit import dpo_fixture
    from preflab.lab.population import SoftmaxPolicy, population_loss

    env = dpo_fixture()
    model = SoftmaxPolicy(env.ref)
    weights = env.ordered_pair_weights()
    params = model.init().requires_grad_(True)
    (grad,) = torch.autograd.grad(population_loss(get_objective("orpo", nll_scope="response"), model, params,
                                                  weights), params)
    theta = model.init().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)
    (grad_margin,) = torch.autograd.grad((weights * (logp[:, :, None] - logp[:, None, :])).sum(), theta)
    assert float((grad * grad_margin).sum()) < 0
