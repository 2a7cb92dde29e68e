"""WeightedSum keeps every part's own metrics: the first part's under their names (as before), a later part's under
its own names unless an earlier part or a `loss/<part>` key holds the name, then as `<metric>/<part>`, with that
part's counts and difference rules (so the step reduces it as when the part runs alone)."""
import pytest
import torch

from preflab.errors import PreflabError
from preflab.objectives import WeightedSum, example_batch, get_objective


def _alone_and_sum(names, **params):
    combo = get_objective(names, **params)
    batch = example_batch(combo.parts[-1])
    return combo, [p(batch) for p in combo.parts], combo(batch)


@pytest.mark.parametrize("names,params", [(["dpo", "spo_degree"], {}),
                                          (["ipo", "spo_degree"], {"align_weight": 0.0}),
                                          (["kto", "apo_zero_unpaired"], {})])
def test_weighted_sum_first_part_metrics_and_part_losses_unchanged(names, params):
    """What a weighted sum logged before later parts' metrics were kept: the first part's metrics, counts and
    differences exactly, and loss/<name> = each part's loss."""
    combo, alone, out = _alone_and_sum(names, **params)
    for key, value in alone[0].metrics.items():
        assert torch.equal(out.metrics[key], value), key
    for key, count in alone[0].metric_counts.items():
        assert float(out.metric_counts[key]) == float(count), key
    for key, pair in alone[0].metric_differences.items():
        assert out.metric_differences[key] == pair
    for name, part in zip(names, alone):
        assert torch.equal(out.metrics[f"loss/{name}"], part.loss.detach())


def test_weighted_sum_keeps_spo_degree_metrics_after_ipo():
    """[ipo, spo_degree] with align_weight 0 (spo_degree's recommended auxiliary use): the degree head's metrics are
    logged under the names spo_degree's metric_panels draw, equal to spo_degree alone on the same batch."""
    _, (ipo, spo), out = _alone_and_sum(["ipo", "spo_degree"], align_weight=0.0)
    for key in ("degree/accuracy", "loss/degree"):
        assert torch.equal(out.metrics[key], spo.metrics[key]), key
    # spo_degree's rewards clash with ipo's: logged as <metric>/spo_degree, ipo's keep the plain name
    assert torch.equal(out.metrics["rewards/margins/spo_degree"], spo.metrics["rewards/margins"])
    assert torch.equal(out.metrics["rewards/margins"], ipo.metrics["rewards/margins"])
    assert set(out.metrics) == (set(ipo.metrics) | {"degree/accuracy", "loss/degree", "loss/ipo", "loss/spo_degree"}
                                | {f"{k}/spo_degree" for k in set(spo.metrics) & set(ipo.metrics)})


def test_weighted_sum_later_part_counts_and_differences_follow_renames():
    """[kto, apo_zero_unpaired]: apo's per-label means clash with kto's and are renamed with their counts and their
    margins rule, so the step's count-weighted mean of each is the one apo alone logs."""
    _, (kto, apo), out = _alone_and_sum(["kto", "apo_zero_unpaired"])
    for key, value in apo.metrics.items():
        assert torch.equal(out.metrics[f"{key}/apo_zero_unpaired"], value), key
    for key, count in apo.metric_counts.items():
        assert float(out.metric_counts[f"{key}/apo_zero_unpaired"]) == float(count), key
    assert out.metric_differences["rewards/margins/apo_zero_unpaired"] == (
        "rewards/chosen/apo_zero_unpaired", "rewards/rejected/apo_zero_unpaired")
    assert out.metric_differences["rewards/margins"] == kto.metric_differences["rewards/margins"]


def test_weighted_sum_rename_that_clashes_again_is_refused():
    taken = {"kl", "kl/b"}
    assert WeightedSum.logged_names("b", {"x": 0, "loss/a": 0}, {"loss/a"}) == {"x": "x", "loss/a": "loss/a/b"}
    with pytest.raises(PreflabError, match=r"part 'b': its metric 'kl' is logged by an earlier part, and so is 'kl/b'"):
        WeightedSum.logged_names("b", {"kl": 0}, taken)


def _one_step(names):
    """One optimizer_step over 2 micro-batches of a linear 'policy' (the first has no desirable example): the
    StepResult's metrics, reduced over the micro-batches by the counts the objective gives."""
    from types import SimpleNamespace

    from preflab.objectives.base import SequenceLogps, UnpairedBatch
    from preflab.step import optimizer_step

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    objective = get_objective(names)

    def forward(mb):
        n = len(mb.row_ids)
        x = torch.randn(n, 3, generator=torch.Generator().manual_seed(mb.seed), dtype=torch.float64)
        side = lambda s: SequenceLogps((x @ weight * s)[:, None], torch.ones(n, 1, dtype=torch.bool))  # noqa: E731
        label = torch.tensor(mb.labels)
        return objective(UnpairedBatch(side(1.0), label, side(0.5), side(0.7), side(0.2),
                                       label_counts=(sum(mb.labels), n - sum(mb.labels))))

    mbs = [SimpleNamespace(row_ids=list(range(len(lab))), labels=lab, seed=j)
           for j, lab in enumerate([[False, False], [True, False, True]])]
    return optimizer_step(mbs, forward, [weight], torch.optim.SGD([weight], lr=1e-3)).metrics


def test_weighted_sum_later_part_metrics_reduce_over_a_step_as_that_part_alone():
    """kto after apo_zero_unpaired: kto's per-label means (counted by desirable/undesirable examples) and its margins
    (a difference of the exact means) come out of the step equal to a step of kto alone."""
    alone, summed = _one_step("kto"), _one_step(["apo_zero_unpaired", "kto"])
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "kl"):
        assert summed[f"{key}/kto"] == pytest.approx(alone[key], rel=1e-12, abs=1e-15), key
