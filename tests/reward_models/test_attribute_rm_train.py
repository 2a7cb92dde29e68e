"""DPA attribute reward models from `preflab train` (`task: reward`, `reward_head: multi_objective`): the command
line path equals the Python API, rated rows are checked with file / row / field, cuts and skips are counted, the
eval metrics equal a direct computation, and the model options the Python API used to drop are read."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from reward_synthetic import rated_rows  # noqa: E402

WORDS = ["cat", "dog", "sat", "on", "the", "mat", "ran", "to", "park", "what", "is", "two", "please", "how", "many"]
ATTRS = ["helpfulness", "verbosity"]


def _rated(n: int, seed: int) -> list[dict]:
    return rated_rows(n, seed, WORDS)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(data, out, *extra):
    return ["train", "task=reward", "reward_head=multi_objective", "reward_head_params={attributes: "
            "[helpfulness, verbosity]}", "model_name_or_path=builtin:tiny-llama", f"dataset_name={data}",
            f"output_dir={out}", "learning_rate=2e-3", "per_device_train_batch_size=8", "max_steps=6",
            "logging_steps=2", "lr_scheduler_type=constant", "max_length=64", "disable_tqdm=true", "use_cpu=true",
            *extra]


def test_preflab_train_multi_objective_equals_the_python_api(tmp_path):
    """Same rows, same config: `preflab train ... reward_head=multi_objective` and `train_multi_objective` end with
    the same weights, and the saved model is a 2-output AutoModelForSequenceClassification naming its attributes."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from preflab.cli import main
    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.multi_objective import train_multi_objective

    rows = _rated(48, seed=0)
    data = _write(tmp_path / "rated.jsonl", rows)
    assert main(_args(data, tmp_path / "cli")) == 0
    cfg = config_from_dict(dict(task="reward", model_name_or_path="builtin:tiny-llama", dataset_name="rated",
                                output_dir=str(tmp_path / "api"), learning_rate=2e-3, per_device_train_batch_size=8,
                                max_steps=6, logging_steps=2, lr_scheduler_type="constant", max_length=64,
                                disable_tqdm=True, use_cpu=True))
    train_multi_objective(cfg, rows, ATTRS, tokenizer=tiny_tokenizer())
    cli, api = load_file(str(tmp_path / "cli" / "model.safetensors")), load_file(str(tmp_path / "api" /
                                                                                     "model.safetensors"))
    assert set(cli) == set(api)
    for key in cli:
        assert torch.equal(cli[key], api[key]), key
    config = AutoConfig.from_pretrained(tmp_path / "cli")
    assert config.num_labels == 2 and config.preflab_reward["attributes"] == ATTRS
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["reward_model"]["head"] == "multi_objective"
    first = json.loads((tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"mse", "mse/helpfulness", "mse/verbosity"} <= set(first)


def test_attribute_reduction_from_the_command_line_equals_the_row_reduction_when_every_row_rates_all(tmp_path):
    """reward_head_params.attribute_reduction=attribute reaches the head (summary.json records it); on rows that all
    rate both attributes the two reductions are the same loss, so the weights equal the default run's (to float
    rounding)."""
    from safetensors.torch import load_file

    from preflab.cli import main

    rows = _rated(8, seed=3)
    data = _write(tmp_path / "rated.jsonl", rows)
    short = ("max_steps=1", "per_device_train_batch_size=8")
    assert main(_args(data, tmp_path / "row", *short)) == 0
    assert main(_args(data, tmp_path / "attr", *short, "reward_head_params.attribute_reduction=attribute")) == 0
    summary = json.loads((tmp_path / "attr" / "summary.json").read_text())
    assert summary["reward_model"]["attribute_reduction"] == "attribute"
    row, attr = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("row", "attr"))
    for key in row:
        torch.testing.assert_close(attr[key], row[key], rtol=1e-5, atol=1e-6)


def test_attribute_reduction_is_refused_when_a_step_is_split_over_micro_batches(tmp_path, monkeypatch, capsys):
    """attribute_reduction=attribute averages each attribute over one micro-batch's rows, so gradient accumulation
    or a second rank would weight the attributes by each part's counts: refused before any training, naming both."""
    from preflab.cli import main
    from preflab.launch_env import launched_world_size

    data = _write(tmp_path / "rated.jsonl", _rated(8, seed=3))
    option = "reward_head_params.attribute_reduction=attribute"
    assert main(_args(data, tmp_path / "acc", "max_steps=1", "gradient_accumulation_steps=2", option)) != 0
    assert "gradient_accumulation_steps=2 and 1 process" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_world_size() == 2
    assert main(_args(data, tmp_path / "ranks", "max_steps=1", option)) != 0
    assert "gradient_accumulation_steps=1 and 2 process" in capsys.readouterr().err
    assert not (tmp_path / "acc" / "model.safetensors").exists()
    assert not (tmp_path / "ranks" / "model.safetensors").exists()


def test_eval_metrics_equal_a_direct_computation_on_the_saved_model(tmp_path):
    """eval_mse/<attribute> is the mean squared error over the eval rows that rate the attribute (rows with the
    attribute null left out), recomputed here from the saved model; eval_mse pools every observed rating."""
    from transformers import AutoModelForSequenceClassification

    from preflab.cli import main
    from preflab.reward_models.interface import RewardModel

    held = _rated(13, seed=1)
    for row in held[:5]:
        row["ratings"]["verbosity"] = None
    data, heldout = _write(tmp_path / "rated.jsonl", _rated(32, seed=0)), _write(tmp_path / "held.jsonl", held)
    out = tmp_path / "rm"
    assert main(_args(data, out, f"eval_dataset_name={heldout}", "per_device_eval_batch_size=4",
                      "eval_strategy=steps", "eval_steps=6")) == 0
    final = json.loads((out / "summary.json").read_text())["final_metrics"]
    judge = RewardModel.from_pretrained(str(out))
    assert isinstance(judge.model, type(AutoModelForSequenceClassification.from_pretrained(out)))
    with torch.no_grad():
        scores = judge.outputs([r["prompt"] for r in held], [r["response"] for r in held]).double()
    target = torch.tensor([[r["ratings"]["helpfulness"], r["ratings"]["verbosity"] or 0.0] for r in held],
                          dtype=torch.float64)
    observed = torch.tensor([[True, r["ratings"]["verbosity"] is not None] for r in held])
    sq = torch.where(observed, (scores - target) ** 2, torch.zeros_like(scores))
    assert final["eval_mse/helpfulness"] == pytest.approx(float(sq[:, 0].mean()), rel=1e-5)
    assert final["eval_mse/verbosity"] == pytest.approx(float(sq[5:, 1].mean()), rel=1e-5)
    assert final["eval_mse"] == pytest.approx(float(sq.sum() / observed.sum()), rel=1e-5)


def test_bad_rated_rows_name_file_row_and_field_and_skips_are_counted(tmp_path, capsys):
    import re

    from preflab.cli import main

    rows = _rated(24, seed=0)
    rows[3]["ratings"]["helpfulness"] = "high"
    rows[7] = {"prompt": "q", "ratings": {"helpfulness": 1.0}}
    rows[9]["ratings"] = {"harmless": 1.0}
    data = _write(tmp_path / "rated.jsonl", rows)
    assert main(_args(data, tmp_path / "a")) != 0
    assert re.search(r"rated\.jsonl row 3 \(line 4\), field 'helpfulness': the rating 'high' is not a finite",
                     capsys.readouterr().err)
    out = tmp_path / "b"
    assert main(_args(data, out, "on_bad_row=skip", "max_length=12")) == 0
    report = json.loads((out / "summary.json").read_text())["data"]
    assert report["skipped"] == {"bad_rating": 1, "missing_field": 1, "unrated": 1}
    assert report["train_rows"]["kept"] == 21
    cut = report["train_tokenize"]
    assert cut["response_truncated"] + cut["prompt_truncated"] > 0  # max_length 12 cuts and says so


def test_an_attribute_no_row_rates_names_the_file_and_the_attributes_the_rows_do_rate(tmp_path, capsys):
    """Rows rating only helpfulness under attributes [helpfulness, verbosity]: the error said "the rows rate
    ['helpfulness', 'verbosity']" (load_rated fills every attribute with null) and named no file (chaos trial)."""
    from preflab.cli import main

    rows = [{**r, "ratings": {"helpfulness": r["ratings"]["helpfulness"]}} for r in _rated(8, seed=0)]
    data = _write(tmp_path / "rated.jsonl", rows)
    assert main(_args(data, tmp_path / "a")) == 2
    assert (f"preflab: error: {data}: no row rates ['verbosity'] (of the attributes ['helpfulness', 'verbosity']); "
            "the rows rate ['helpfulness']. Fix the attribute names or the rows.") in capsys.readouterr().err


def test_multi_objective_options_are_checked_and_the_model_options_read(tmp_path):
    """reward_head_params must name the attributes; center_rewards_coefficient is BT's; load_dtype reaches the
    model (train_multi_objective built it in float32 whatever the config said)."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.multi_objective import attribute_head_params
    from preflab.reward_models.train import reward_model_for_run

    def cfg(**kw):
        return config_from_dict(dict(task="reward", model_name_or_path="builtin:tiny-llama", dataset_name="x",
                                     output_dir=str(tmp_path / "o"), reward_head="multi_objective", **kw))

    with pytest.raises(ConfigError, match="reward_head_params.attributes"):
        attribute_head_params(cfg())
    with pytest.raises(ConfigError, match=r"\['dims'\] are not fields"):
        attribute_head_params(cfg(reward_head_params={"attributes": ["a"], "dims": 2}))
    with pytest.raises(ConfigError, match="twice"):
        attribute_head_params(cfg(reward_head_params={"attributes": ["a", "a"]}))
    with pytest.raises(ConfigError, match="center_rewards_coefficient applies to reward_head: bt"):
        cfg(reward_head_params={"attributes": ["a"]}, center_rewards_coefficient=0.01)
    model = reward_model_for_run(cfg(reward_head_params={"attributes": ["a", "b"]}, load_dtype="bfloat16"), 2,
                                 tiny_tokenizer())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config.num_labels == 2
