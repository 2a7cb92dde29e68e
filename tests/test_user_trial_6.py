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


def test_preflab_push_without_network_says_nothing_was_uploaded_not_nothing_trained(tmp_path):
    """Before: `preflab push RUN` offline said "Nothing was trained yet ... set push_to_hub: false and upload
    output_dir afterwards with `hf upload`", the advice for a training run's push_to_hub, about a finished run."""
    from preflab.errors import PreflabError
    from preflab.hub_push import push_run

    class Offline:
        def create_repo(self, *args, **kwargs):
            raise OSError("[Errno -2] Name or service not known")

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"")
    with pytest.raises(PreflabError) as err:
        push_run(run, repo_id="me/test", api=Offline())
    assert str(err.value) == (
        "preflab push: could not create the Hub repository 'me/test': [Errno -2] Name or service not known. Nothing "
        f"was uploaded; {run} is unchanged. Check the network (the Hub must be reachable), the token (--token, "
        "HF_TOKEN or `hf auth login`, with write access) and --repo-id, then run the same `preflab push` again.")
