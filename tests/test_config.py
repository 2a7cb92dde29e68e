"""Configs are strict and checked before any model is loaded (RELIABILITY.md D, issue: reliability 3)."""
import pytest

from preflab.cli import main
from preflab.config import config_from_dict, load_config, parse_override
from preflab.errors import ConfigError

BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match="Did you mean 'learning_rate'"):
        config_from_dict({**BASE, "learning_rat": 1e-5})


def test_objective_parameters_pass_through_and_are_validated():
    cfg = config_from_dict({**BASE, "loss_type": "robust", "label_smoothing": 0.2})
    assert cfg.objective().label_smoothing == 0.2
    with pytest.raises(ConfigError, match="label_smoothing"):
        config_from_dict({**BASE, "loss_type": "robust", "label_smoothing": 0.5})
    with pytest.raises(ConfigError, match="beta"):
        config_from_dict({**BASE, "beta": 0.0})
    with pytest.raises(ConfigError, match="no parameter|unknown config key"):
        config_from_dict({**BASE, "loss_type": "dpo", "label_smoothing": 0.1})


@pytest.mark.parametrize("key,value", [("per_device_train_batch_size", "four"), ("learning_rate", [1]),
                                       ("use_peft", "maybe"), ("max_steps", 1.5)])
def test_wrong_types_rejected(key, value):
    with pytest.raises(ConfigError, match=key):
        config_from_dict({**BASE, key: value})


@pytest.mark.parametrize("key,value", [("learning_rate", -1.0), ("on_bad_row", "ignore"), ("eval_fraction", 1.0),
                                       ("dtype", "fp8")])
def test_impossible_values_rejected(key, value):
    with pytest.raises(ConfigError, match=key):
        config_from_dict({**BASE, key: value})


def test_yaml_scientific_notation_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_name_or_path: builtin:tiny-llama\ndataset_name: d.jsonl\nlearning_rate: 5e-7\n")
    cfg = load_config(path, ["beta=0.25", "loss_type=[sigmoid, sft]", "loss_weights=[1.0, 0.5]",
                             "objective_params.f_divergence=js_divergence"])
    assert cfg.learning_rate == 5e-7 and cfg.beta == 0.25
    assert cfg.loss_type == ["sigmoid", "sft"]
    assert cfg.objective().weights == (1.0, 0.5)
    assert parse_override("x=1e-3") == ("x", 1e-3)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("model_name_or_path: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    code = main(["train", "model_name_or_path=builtin:tiny-llama", "dataset_name=x.jsonl", "bta=0.1"])
    assert code == 2
    assert "Did you mean 'beta'" in capsys.readouterr().err


def test_help_lists_options_with_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("learning_rate = 1e-06", "per_device_train_batch_size = 8", "loss_type = 'sigmoid'"):
        assert option in text
