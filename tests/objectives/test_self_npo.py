"""Self-NPO's regression loss (methods §4): pseudo-Huber values, l2, masking, and the batch it is given."""
import pytest
import torch

from preflab.diffusion.self_npo import self_npo_batch
from preflab.diffusion.tiny import TinyDenoiser, sd_schedule
from preflab.errors import ConfigError
from preflab.objectives import SequenceLogps, UnpairedBatch, get_objective


def batch(student, target, mask=None):
    student, target = torch.as_tensor(student, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)
    mask = torch.ones_like(student, dtype=torch.bool) if mask is None else torch.as_tensor(mask)
    return UnpairedBatch(SequenceLogps(student, mask), torch.ones(student.shape[0], dtype=torch.bool),
                         SequenceLogps(target, mask))


@pytest.mark.parametrize("d,expected", [(0.0, 0.0), (1e-3, 4.1421e-4), (0.1, 0.0990050)])
def test_pseudo_huber_values(d, expected):
    out = get_objective("self_npo")(batch([[d]], [[0.0]]))
    assert out.loss.item() == pytest.approx(expected, abs=1e-8)


def test_mean_over_dims_l2_and_labels_ignored():
    student, target = [[0.1, -0.2, 0.3, 0.0]], [[0.0, 0.0, 0.0, 5.0]]
    out = get_objective("self_npo", loss_type="l2")(batch(student, target, [[True, True, True, False]]))
    assert out.loss.item() == pytest.approx((0.01 + 0.04 + 0.09) / 3, abs=1e-15)
    b = batch(student, target)
    b.label = torch.tensor([False])
    assert get_objective("self_npo")(b).loss.item() == get_objective("self_npo")(batch(student, target)).loss.item()
    with pytest.raises(ConfigError, match="huber"):
        get_objective("self_npo", loss_type="huberr")


def test_a_gradient_step_moves_the_student_toward_the_teacher():
    schedule = sd_schedule()
    shape = (2, 4, 4)
    student, teacher = TinyDenoiser(shape, cond_dim=3, seed=0), TinyDenoiser(shape, cond_dim=3, seed=1)
    g = torch.Generator().manual_seed(0)
    x0, cond = torch.randn(4, *shape, generator=g), torch.randn(4, 5, 3, generator=g)
    objective = get_objective("self_npo")
    make = lambda: self_npo_batch(student, teacher, x0, cond, torch.zeros_like(cond), schedule,  # noqa: E731
                                  torch.Generator().manual_seed(1))
    b = make()
    assert b.policy.token_logps.shape == (4, 32) and not b.ref.token_logps.requires_grad
    before = objective(b)
    before.loss.backward()
    with torch.no_grad():
        for p in student.parameters():
            p -= 1e-3 * p.grad
    after = objective(make())  # same draws (same seed), updated student
    assert after.loss.item() < before.loss.item()
