"""User trial 6 (diffusion, VLM, reward models as judges, the loops, TRL configs, bad data): each test reproduces a
finding and asserts the fixed message or value."""
import pytest

from preflab.config import config_from_dict
from preflab.errors import ConfigError


def test_a_config_without_data_or_model_says_they_are_not_set():
    """Before: `dataset_name='' is not allowed: dataset_name must be a non-empty name`, a value nobody wrote (the
    field's default), and task: online was not told that online_task demo / game need no data."""
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model_name_or_path": "builtin:tiny-llama"})
    assert str(err.value).startswith("dataset_name is not set: 'dpo' runs need it (training data: hub name")
    assert "''" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        config_from_dict({"task": "online", "trainer": "grpo", "model_name_or_path": "builtin:tiny-llama"})
    assert "dataset_name is not set: 'online' runs need it" in str(err.value)
    assert "online_task: demo or game bring their own prompts" in str(err.value)
    with pytest.raises(ConfigError) as err:
        config_from_dict({"max_steps": 2})
    assert "model_name_or_path is not set" in str(err.value) and "dataset_name is not set" in str(err.value)
    assert "is not allowed" not in str(err.value)
    # the demo task needs no dataset_name (unchanged)
    assert config_from_dict({"task": "online", "online_task": "demo", "trainer": "grpo",
                             "model_name_or_path": "builtin:demo-sft", "max_steps": 2}).dataset_name == ""
    with pytest.raises(ConfigError, match="dataset_name='' is not allowed"):  # written empty: the value is named
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": ""})
