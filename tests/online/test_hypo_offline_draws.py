"""HyPO with offline pairs (preflab.online.hypo_offline): every step draws fresh samples (its own seed, a function of
the run's seed and the step), and streaming is refused."""
import pytest
import torch

from preflab.errors import ConfigError
from preflab.online.hypo_offline import HyPOTrainer

from test_hypo_offline import cfg_of


def test_each_step_draws_its_own_samples(tmp_path):
    """Two steps with the same weights and the same prompts draw different samples: the seed moves with the step
    (and with the run's seed, and is another for evaluation)."""
    run = HyPOTrainer(cfg_of(tmp_path / "a"))
    seeds = {run._seed(step) for step in range(64)}
    assert len(seeds) == 64 and not seeds & {run._seed(step, 1) for step in range(64)}
    other = HyPOTrainer(cfg_of(tmp_path / "b", seed=1))
    assert all(other._seed(step) != run._seed(step) for step in range(64))
    prompts = [list(run.train_data[i].prompt_ids) for i in range(4)]
    torch.manual_seed(0)
    first = run._sample(prompts, run._seed(0))
    second = run._sample(prompts, run._seed(1))
    assert first == run._sample(prompts, run._seed(0)) and first != second


def test_streaming_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="streaming: true is not supported"):
        HyPOTrainer(cfg_of(tmp_path, streaming=True))
