"""TRL's dataset_config (ScriptArguments: a hub dataset's configuration, e.g. openai/gsm8k's 'main') stays refused:
preflab passes no configuration name to datasets.load_dataset. The refusal says what to do, and what it says works:
its save_to_disk command (run here with a recording datasets.load_dataset: no network) writes a folder that
dataset_name reads, train and test splits alike. A local dataset_name with dataset_config gets its own message."""
import re

import datasets
import pytest

from preflab.config import config_from_dict
from preflab.data.rows import load_rows
from preflab.errors import ConfigError

ROWS = {"train": [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}, {"prompt": "3+3?", "chosen": "6", "rejected": "7"}],
        "test": [{"prompt": "1+1?", "chosen": "2", "rejected": "3"}]}


def test_the_refusal_names_a_command_whose_folder_preflab_reads(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "openai/gsm8k",
                          "dataset_config": "main"})
    message = str(err.value)
    assert "dataset_config='main' is not supported" in message
    command = re.search(r'python -c "(.+?)"', message).group(1)
    assert "set dataset_name: gsm8k-main " in message
    calls = []

    def recording_load_dataset(*args, **kwargs):  # the hub's answer: the configuration's splits
        calls.append((args, kwargs))
        return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in ROWS.items()})

    monkeypatch.setattr(datasets, "load_dataset", recording_load_dataset)
    monkeypatch.chdir(tmp_path)
    exec(command, {})  # the line the message tells the user to run
    assert calls == [(("openai/gsm8k", "main"), {})]  # the configuration reaches datasets.load_dataset
    for split, want in ROWS.items():
        rows, report = load_rows(str(tmp_path / "gsm8k-main"), split=split)
        assert [(r.prompt, r.chosen, r.rejected) for r in rows] == [(w["prompt"], w["chosen"], w["rejected"])
                                                                    for w in want]


def test_a_local_dataset_name_with_a_config_is_told_to_point_at_that_configurations_files(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"dataset_name .* is a local file or folder, and a configuration name only "
                                          r"picks among a hub dataset's configurations"):
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": str(tmp_path),
                          "dataset_config": "en"})


def test_trls_default_dataset_config_is_accepted():
    assert config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x",
                             "dataset_config": None}).dataset_name == "x"
