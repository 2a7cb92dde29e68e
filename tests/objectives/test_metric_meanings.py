"""Every text pair objective's logged rewards/* and logps/* are what it declares (Objective.reward_meaning,
logps_meaning): the report labels and splits its panels by those declarations, so a wrong one would draw SimPO's
beta * mean log-prob as DPO's beta * log-ratio (user trial 24)."""
import pytest
import torch

from preflab.objectives import PairBatch, get_objective, list_objectives, objective_class
from preflab.objectives.base import IMPLICIT_REWARD, MEAN_LOGPS, SUMMED_LOGPS
from test_contract import make_batch

PAIR_TEXT = [n for n in list_objectives()
             if objective_class(n).batch_type is PairBatch and objective_class(n).modality == "text"]


@pytest.mark.parametrize("name", PAIR_TEXT)
def test_logged_logps_and_implicit_rewards_are_what_the_objective_declares(name):
    cls = objective_class(name)
    objective = get_objective(name)
    batch = make_batch(cls)
    metrics = objective(batch).metrics
    chosen = batch.policy_chosen
    if "logps/chosen" in metrics:
        assert cls.logps_meaning in (SUMMED_LOGPS, MEAN_LOGPS)
        want = chosen.sum.mean() if cls.logps_meaning == SUMMED_LOGPS else chosen.mean.mean()
        assert float(metrics["logps/chosen"]) == pytest.approx(float(want), abs=1e-9)
    if "rewards/chosen" in metrics and cls.reward_meaning == IMPLICIT_REWARD:
        want = objective.beta * (chosen.sum - batch.ref_chosen.sum).mean()
        assert float(metrics["rewards/chosen"]) == pytest.approx(float(want), abs=1e-9)


def test_simpo_orpo_cpo_asft_rewards_are_their_declared_reference_free_scores():
    """The reference-free rewards, by hand: SimPO and ORPO beta * mean token log-prob (TRL's CPO / ORPO trainers),
    CPO beta * summed log-prob, ASFT the mean log-prob (no beta); none of them reads the reference."""
    batch = make_batch(objective_class("simpo"))
    mean, summed = batch.policy_chosen.mean.mean(), batch.policy_chosen.sum.mean()
    params = {"orpo": {"nll_scope": "response"}}  # (its NLL's scope does not touch the rewards)
    got = {name: float(get_objective(name, beta=0.5, **params.get(name, {}))(batch).metrics["rewards/chosen"])
           for name in ("simpo", "orpo", "cpo", "asft")}
    assert got["simpo"] == pytest.approx(0.5 * float(mean)) and got["orpo"] == pytest.approx(0.5 * float(mean))
    assert got["cpo"] == pytest.approx(0.5 * float(summed)) and got["asft"] == pytest.approx(float(mean))
    for name in ("simpo", "orpo", "cpo", "asft"):
        assert "no reference" in objective_class(name).reward_meaning
    assert objective_class("dpo").reward_meaning == IMPLICIT_REWARD
    assert torch.is_tensor(batch.ref_chosen.sum)  # the batch had a reference the four did not read
