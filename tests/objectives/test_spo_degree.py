"""SPO preference-degree loss (methods/objectives.md §C #9): degree_weight = 0 equals DPO, a zero head gives
log(J+1), hand CE with ignored variants, closed-form gradient on the logits, no alignment gradient into the head."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, get_objective

F64 = dict(dtype=torch.float64)


def fixture(logits, labels):
    one = lambda v: torch.tensor([v] * logits.shape[0], **F64)  # noqa: E731
    return PairBatch.from_sums(one(-10.0), one(-12.0), one(-11.0), one(-11.5),
                               extras={"degree_logits": logits, "degree_labels": labels})


def test_weight_zero_is_dpo():
    batch = fixture(torch.randn(2, 2, 4, **F64), torch.tensor([[0, 3], [1, 2]]))
    torch.testing.assert_close(get_objective("spo_degree", degree_weight=0.0)(batch).losses,
                               get_objective("dpo")(batch).losses, rtol=0, atol=1e-12)


def test_zero_head_gives_log_classes():
    out = get_objective("spo_degree", degree_weight=0.5)(fixture(torch.zeros(1, 2, 4, **F64), torch.tensor([[0, 3]])))
    assert out.metrics["loss/degree"].item() == pytest.approx(math.log(4), abs=1e-12)
    assert out.loss.item() == pytest.approx(0.6209570478 + 0.5 * math.log(4), abs=1e-9)


def test_hand_cross_entropy_with_ignored_variant():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], **F64)
    out = get_objective("spo_degree", degree_weight=1.0, degrees=2)(fixture(logits, torch.tensor([[0, -100]])))
    ce = -(2.0 - math.log(math.exp(2.0) + 2))  # only the first variant counts
    assert out.metrics["loss/degree"].item() == pytest.approx(ce, abs=1e-12)


def test_logit_gradient_closed_form_and_alignment_gives_none():
    logits = torch.tensor([[[0.3, -0.2, 1.0], [0.0, 0.5, -0.5]]], **F64, requires_grad=True)
    labels = torch.tensor([[2, 0]])
    get_objective("spo_degree", degree_weight=0.4, degrees=2)(fixture(logits, labels)).loss.backward()
    expected = 0.4 / 2 * (torch.softmax(logits.detach(), -1) - torch.nn.functional.one_hot(labels, 3))
    torch.testing.assert_close(logits.grad, expected.to(torch.float64), rtol=0, atol=1e-12)
    logits.grad = None
    get_objective("spo_degree", degree_weight=0.0, degrees=2)(fixture(logits, labels)).loss.backward()
    assert logits.grad is None or logits.grad.abs().sum() == 0


def test_degree_logits_with_another_class_count_than_degrees_are_refused():
    from preflab.errors import PreflabError

    with pytest.raises(PreflabError, match="degree_logits has 4 classes; degrees=2 needs 3"):
        get_objective("spo_degree", degrees=2)(fixture(torch.zeros(1, 2, 4, **F64), torch.tensor([[0, 1]])))


def test_spo_degree_extras_are_computed_not_read_from_rows():
    """Its extras are the degree head's outputs on the policy (with gradient): never data columns."""
    cls = type(get_objective("spo_degree"))
    assert cls.row_extras() == {}
    assert cls.gradient_extras == ("degree_logits",)


def test_preflab_objectives_says_spo_degree_extras_are_computed(capsys):
    from preflab.cli import main

    assert main(["objectives", "spo_degree"]) == 0
    out = capsys.readouterr().out
    assert ("computed at every step by preflab.loops.degree_head:DegreeExtras in `preflab train` (not data "
            "columns): ['degree_logits', 'degree_labels']") in out
    assert "degrees = 3  # J: variants j = 0..J key units deleted" in out


def test_degree_metrics_over_two_micro_batches_equal_one_micro_batch_of_the_same_examples():
    """Gradient accumulation over micro-batches with different numbers of scored variants (responses with fewer key
    units than J have label -100 for the missing j): the step logs degree/accuracy as the fraction of all scored
    variants and loss/degree as the mean of the examples' per-example CE (as the loss averages it), the same as one
    micro-batch of the four examples. Here rows 0-1 have 16 variants (5 predicted right), rows 2-3 have 5 (4 right):
    9/21; before, degree/accuracy was the example-weighted mean of the micro-batches' accuracies, (5/16 + 4/5) / 2."""
    from types import SimpleNamespace

    from preflab.step import optimizer_step

    full, none = [0, 1, 2, 3], -100
    labels = torch.tensor([[full, full], [full, full], [[0, 1, none, none], [0, none, none, none]],
                           [[0, none, none, none], [0, none, none, none]]])
    logits = torch.zeros(4, 2, 4, 4, **F64)  # [B, side, variant j, class]
    logits[..., 0] = 5.0  # predicts class 0: right on the j = 0 variants only
    logits[0, 0, 1, 1] = 9.0  # and on row 0's first j = 1 variant
    logits += 0.1 * torch.arange(128, **F64).reshape(4, 2, 4, 4).sin()  # CE values that differ per variant
    head = torch.nn.Parameter(torch.zeros((), **F64))
    objective = get_objective("spo_degree", degree_weight=0.5, degrees=3)

    def forward(mb):
        return objective(fixture(logits[mb.row_ids] + head, labels[mb.row_ids]))

    def step(micro):
        return optimizer_step([SimpleNamespace(row_ids=r) for r in micro], forward, [head],
                              torch.optim.SGD([head], lr=0.0))

    one, two = step([[0, 1, 2, 3]]), step([[0, 1], [2, 3]])
    assert one.metrics["degree/accuracy"] == pytest.approx(9 / 21, abs=1e-12)
    assert two.metrics["degree/accuracy"] == pytest.approx(one.metrics["degree/accuracy"], abs=1e-6)
    assert two.metrics["loss/degree"] == pytest.approx(one.metrics["loss/degree"], abs=1e-6)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 4), labels.reshape(-1), reduction="none",
                                           ignore_index=none).reshape(4, -1)
    per_example = ce.sum(-1) / (labels.reshape(4, -1) != none).sum(-1)
    assert one.metrics["loss/degree"] == pytest.approx(float(per_example.mean()), abs=1e-12)
    assert two.metric_counts["degree/accuracy"] == 21 and two.metric_counts["loss/degree"] == 4
