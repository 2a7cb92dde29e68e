"""DPA's multi-objective regression head (preflab.reward_models.multi_objective.MultiObjectiveHead): the logged
mse/<attribute> is the mean squared error over the rows that rate that attribute, not over the whole batch."""
import torch

from preflab.reward_models.multi_objective import MultiObjectiveHead


def test_per_attribute_mse_divides_by_the_rows_that_rate_it():
    head = MultiObjectiveHead(("helpfulness", "verbosity"))
    outputs = torch.tensor([[1.0, 4.0], [2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([[0.0, 1.0], [2.0, 9.0], [3.0, 9.0]])      # 9.0: unrated, never read
    observed = torch.tensor([[True, True], [True, False], [True, False]])
    out = head.loss(outputs, targets, observed)
    # helpfulness: errors 1, 0, 9 over 3 rows; verbosity: one rated row, error 9
    assert abs(out.metrics["mse/helpfulness"].item() - 10 / 3) < 1e-6
    assert out.metrics["mse/verbosity"].item() == 9.0
    torch.testing.assert_close(out.losses, torch.tensor([5.0, 0.0, 9.0]))   # per row: mean over its rated ones
    assert out.metrics["mse"].item() == out.losses.mean().item()
