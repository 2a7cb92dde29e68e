"""WeightedSum's metrics: the first part's, `loss/<part>` for each part, and of a later part exactly the metrics it
declares as its own (Objective.metric_panels) with their counts and difference rules; a name two parts would log
is refused."""
import dataclasses

import pytest
import torch

from preflab.errors import ConfigError, PreflabError
from preflab.objectives import ObjectiveOutput, example_batch, get_objective, objective_class


def _alone_and_sum(names, **params):
    combo = get_objective(names, **params)
    batch = example_batch(combo.parts[-1])
    return [p(batch) for p in combo.parts], combo(batch)


def test_weighted_sum_logs_spo_degree_declared_metrics_after_ipo():
    """[ipo, spo_degree] with align_weight 0 (spo_degree as the auxiliary term of another base loss): the degree
    head's metrics (spo_degree's metric_panels) are logged, equal to spo_degree alone on the same batch; spo_degree's
    undeclared rewards/* are not (ipo's keep their names and values)."""
    (ipo, spo), out = _alone_and_sum(["ipo", "spo_degree"], align_weight=0.0)
    for key in ("degree/accuracy", "loss/degree"):
        assert torch.equal(out.metrics[key], spo.metrics[key]), key
    for key, value in ipo.metrics.items():
        assert torch.equal(out.metrics[key], value), key
    assert set(out.metrics) == set(ipo.metrics) | {"degree/accuracy", "loss/degree", "loss/ipo", "loss/spo_degree"}
    assert torch.equal(out.metrics["loss/spo_degree"], spo.loss.detach())


@pytest.mark.parametrize("names", [["sigmoid", "sft"], ["ipo", "sigmoid"], ["kto", "apo_zero_unpaired"]])
def test_weighted_sum_of_parts_without_panels_logs_the_first_parts_metrics_only(names):
    """No TRL loss type declares metric_panels: a list of them logs what TRL logs (the first part's metrics and
    loss/<part>; tests/families/test_trl_run_logs.py compares a [sigmoid, sft] run's keys with TRL's)."""
    (first, *_), out = _alone_and_sum(names)
    assert set(out.metrics) == set(first.metrics) | {f"loss/{n}" for n in names}
    assert out.metric_counts.keys() == first.metric_counts.keys()
    assert out.metric_differences == first.metric_differences


class _Declares:
    """compute(): the DPO metrics plus mine/a (a mean over 3 things), mine/b, and mine/gap = mine/a - mine/b."""

    def compute(self, batch):
        out = super().compute(batch)
        metrics = {**out.metrics, "mine/a": torch.tensor(2.0), "mine/b": torch.tensor(0.5),
                   "mine/gap": torch.tensor(1.5)}
        return ObjectiveOutput(out.loss, out.losses, metrics, {**out.metric_counts, "mine/a": 3},
                               {**out.metric_differences, "mine/gap": ("mine/a", "mine/b")})


def _declaring(name, keys):
    dpo = objective_class("dpo")
    return dataclasses.make_dataclass(name, [], bases=(_Declares, dpo), frozen=True,
                                      namespace={"metric_panels": (("Mine", "y", tuple(keys)),)})


def test_weighted_sum_keeps_a_later_parts_declared_counts_and_differences():
    """A later part's declared metric keeps its count and its difference rule, so the step averages it as when that
    part runs alone; its undeclared DPO metrics are not logged."""
    (ipo, _), out = _alone_and_sum(["ipo", _declaring("Mine", ["mine/a", "mine/b", "mine/gap"])])
    assert {k: float(out.metrics[k]) for k in ("mine/a", "mine/b", "mine/gap")} == {"mine/a": 2.0, "mine/b": 0.5,
                                                                                    "mine/gap": 1.5}
    assert out.metric_counts["mine/a"] == 3 and "mine/b" not in out.metric_counts
    assert out.metric_differences == {**ipo.metric_differences, "mine/gap": ("mine/a", "mine/b")}
    assert set(out.metrics) == set(ipo.metrics) | {"mine/a", "mine/b", "mine/gap", "loss/ipo", "loss/Mine"}


def test_weighted_sum_refuses_a_declared_difference_without_its_terms():
    combo = get_objective(["ipo", _declaring("Gap", ["mine/gap"])])
    with pytest.raises(PreflabError, match=r"part 'Gap' declares 'mine/gap', the difference \['mine/a', 'mine/b'\] "
                                           r"\(metric_differences\), but not both of those metrics"):
        combo(example_batch(combo.parts[0]))


def test_weighted_sum_refuses_two_parts_declaring_one_metric():
    """A name clash is refused, never resolved by one value replacing the other: two parts declaring one metric (at
    construction), a declared metric named like a part's loss/<part> key (at construction), and a later part's
    declared metric that the first part logs without declaring it (at the first call)."""
    with pytest.raises(ConfigError, match=r"part 'Second' declares 'degree/accuracy' \(metric_panels\), which part "
                                          r"'spo_degree' logs too"):
        get_objective(["spo_degree", _declaring("Second", ["degree/accuracy"])])
    with pytest.raises(ConfigError, match=r"part 'Mine' declares 'loss/ipo' \(metric_panels\), which the weighted "
                                          r"sum \(part 'ipo''s loss\) logs too"):
        get_objective(["ipo", _declaring("Mine", ["loss/ipo"])])
    combo = get_objective(["ipo", _declaring("Margins", ["rewards/margins"])])
    with pytest.raises(PreflabError, match=r"part 'Margins' declares 'rewards/margins' \(metric_panels\), which "
                                           r"part 'ipo' logs too"):
        combo(example_batch(combo.parts[0]))



@pytest.mark.parametrize("names", [["sigmoid", "sparsepo"], ["sparsepo", "sft"]])
def test_weighted_sum_refuses_a_part_with_parameters_of_its_own(names):
    """The offline trainer puts a lone objective's parameters in the optimizer (and checkpoints); a sparsepo part of
    a weighted sum would keep its masks at their initial values (checked: such a run had no extra parameters)."""
    with pytest.raises(ConfigError, match=r"'sparsepo' trains parameters of its own .* in a weighted sum they would "
                                          r"stay at their initial values"):
        get_objective(names)
