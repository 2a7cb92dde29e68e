"""simulpl against reasoning-multimodal-diffusion.md §46: latency-margin DPO toy, DPO reduction, Average Lagging."""
import pytest
import torch

from preflab.objectives import PairBatch, get_objective
from preflab.objectives.simulpl import average_lagging


def toy(al_w, al_l):
    z = torch.zeros(1, dtype=torch.float64)
    return PairBatch.from_sums(torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.2], dtype=torch.float64), z, z,
                               extras={"chosen_latency": [al_w], "rejected_latency": [al_l]})


def test_toy_values():
    # beta * [(1.0 - 0.2) - 0.5 * (3 - 5)] = 0.18
    assert get_objective("simulpl", beta=0.1, latency_weight=0.5)(toy(3.0, 5.0)).loss.item() == pytest.approx(
        0.607192, abs=1e-6)
    assert get_objective("simulpl", beta=0.1, latency_weight=0.0)(toy(3.0, 5.0)).loss.item() == pytest.approx(
        0.653947, abs=1e-6)


def test_reduces_to_dpo():
    dpo = get_objective("dpo", beta=0.1)(toy(3.0, 5.0)).loss.item()
    assert get_objective("simulpl", latency_weight=0.0)(toy(3.0, 5.0)).loss.item() == pytest.approx(dpo, abs=1e-15)
    assert get_objective("simulpl", latency_weight=2.0)(toy(4.0, 4.0)).loss.item() == pytest.approx(dpo, abs=1e-15)


def test_lower_latency_of_the_chosen_side_lowers_the_loss():
    obj = get_objective("simulpl")
    values = [obj(toy(al, 5.0)).loss.item() for al in (2.0, 3.0, 4.0, 5.0, 6.0)]
    assert values == sorted(values)


@pytest.mark.parametrize("g,J,al", [([2, 3, 4, 4], 4, 2.0),   # wait-2, tau = 3
                                    ([1, 2, 3], 3, 1.0),       # wait-1
                                    ([4, 4, 4, 4], 4, 4.0)])   # full reading: tau = 1, AL = J
def test_average_lagging(g, J, al):
    assert average_lagging(g, J) == pytest.approx(al, abs=1e-12)
