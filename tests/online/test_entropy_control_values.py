"""The adaptive entropy coefficient (preflab.online.entropy_control) over a step of several micro-batches, by hand
(mutation-mx round): the step's entropy is the token mean over all its micro-batches, not the mean of their means."""
import pytest
import torch

from preflab.objectives import get_objective
from preflab.online.entropy_control import EntropyCoefficient


def test_the_adaptive_step_entropy_is_the_token_mean_over_its_micro_batches():
    """Micro-batches of 1 token (mean 1.0) and 3 tokens (mean 2.0): H = (1 + 6) / 4 = 1.75, above the target 1.6,
    so the coefficient falls by delta (the mean of the two means, 1.5, is below it and would raise it)."""
    objective = get_objective("grpo", use_adaptive_entropy=True, entropy_coef=0.05, entropy_coef_min=0.0,
                              entropy_coef_max=1.0, entropy_coef_delta=0.01, entropy_target=1.6)
    control = EntropyCoefficient(objective)
    control.add(torch.tensor(1.0), torch.tensor(1.0))
    control.add(torch.tensor(2.0), torch.tensor(3.0))
    control.end_step(lambda t: t)
    assert control.last_entropy == pytest.approx(1.75, abs=1e-12)
    assert control.coef == pytest.approx(0.04, abs=1e-12)
    assert control.applied() == 0.0                                  # the last step's entropy was above the target
    # a reduce that sums two processes' identical windows: the same mean
    control.add(torch.tensor(1.0), torch.tensor(2.0))
    control.end_step(lambda t: 2 * t)
    assert control.last_entropy == pytest.approx(1.0) and control.coef == pytest.approx(0.05)
    assert control.applied() == pytest.approx(0.05)


@pytest.mark.parametrize("options, words", [
    (dict(entropy_target=0.5), "entropy_target is read by the adaptive entropy controller only"),
    (dict(entropy_coef=0.01, entropy_coef_max=0.5, entropy_coef_delta=0.1),
     "entropy_coef_max, entropy_coef_delta are read by the adaptive entropy controller only"),
    (dict(use_adaptive_entropy=True, entropy_coef_min=0.3, entropy_coef_max=0.2), "entropy_coef_min <= entropy_coef_max"),
])
def test_the_controllers_options_without_the_controller_are_refused(options, words):
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        get_objective("grpo", **options)
    assert words in str(err.value)
    assert get_objective("grpo", use_adaptive_entropy=True, entropy_target=0.5).entropy_target == 0.5
