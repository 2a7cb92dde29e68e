"""User trial 18 (the reward-model user): `preflab eval RUN --task reward` gives the run's own final eval numbers."""
import json

import pytest


def _cli(*argv) -> int:
    from preflab.cli import main

    return main([str(a) for a in argv])


def _split_files(tmp_path, rows):
    """train.jsonl (the first 8 rows) and heldout.jsonl (the rest) under tmp_path."""
    train, heldout = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    heldout.write_text("".join(json.dumps(r) + "\n" for r in rows[8:]))
    return train, heldout


def _run_with_eval_batch(tmp_path, eval_batch: int):
    """A BT run with an eval set of 10 pairs evaluated in batches of `eval_batch` (its final eval_* in summary)."""
    from reward_synthetic import marker_rows

    from preflab.config import config_from_dict
    from preflab.reward_models.train import train_reward

    train, heldout = _split_files(tmp_path, marker_rows(18, seed=0))
    run = tmp_path / "run"
    train_reward(config_from_dict({
        "task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(train),
        "eval_dataset_name": str(heldout), "per_device_train_batch_size": 4, "per_device_eval_batch_size": eval_batch,
        "max_steps": 2, "learning_rate": 1e-2, "logging_steps": 1, "eval_strategy": "steps", "eval_steps": 2,
        "use_cpu": True, "seed": 0, "output_dir": str(run)}))
    final = json.loads((run / "summary.json").read_text())["final_metrics"]
    return run, heldout, final


def test_preflab_eval_of_a_reward_run_uses_its_eval_batch_for_min_and_max_reward(tmp_path, capsys):
    """eval_min_reward / eval_max_reward are TRL's mean over eval batches of each batch's min / max, so they depend on
    the batch. `preflab eval RUN --task reward` scored in batches of 8 whatever the run used: with
    per_device_eval_batch_size 4 it printed other values than the run's own final eval. Now, without --batch-size, it
    uses the run's eval batch (said in a note) and every metric equals the run's final eval_*; --batch-size 8 gives
    the 8-pair batches' values (the data tells the two apart)."""
    run, heldout, final = _run_with_eval_batch(tmp_path, 4)
    out = tmp_path / "eval.json"
    assert _cli("eval", run, "--data", heldout, "--out", out) == 0
    got = json.loads(out.read_text())
    metrics = got["metrics"]
    for key in ("accuracy", "loss", "margin", "min_reward", "mean_reward", "max_reward"):
        assert metrics[f"reward_model/{key}"] == pytest.approx(final[f"eval_{key}"], abs=1e-6), key
    assert any("batch of 4 pairs, the run's eval batch (per_device_eval_batch_size 4 x 1 process)" in note
               for note in got["notes"])
    eight = tmp_path / "eval8.json"
    assert _cli("eval", run, "--data", heldout, "--batch-size", 8, "--out", eight) == 0
    given = json.loads(eight.read_text())
    assert given["metrics"]["reward_model/min_reward"] != pytest.approx(final["eval_min_reward"], abs=1e-4)
    assert given["metrics"]["reward_model/accuracy"] == metrics["reward_model/accuracy"]  # batch-free metrics agree
    assert not any("the run's eval batch" in note for note in given["notes"])


def test_run_eval_batch_is_the_run_eval_batch_times_its_processes(tmp_path):
    """per_device_eval_batch_size x summary.json's environment.world_size (TRL gathers each eval batch's logits from
    every process); --batch-size wins; a model without a run config keeps 8."""
    from preflab.reward_models.cli import run_eval_batch

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("task: reward\nper_device_eval_batch_size: 3\n")
    (run / "summary.json").write_text(json.dumps({"environment": {"world_size": 2}}))
    batch, note = run_eval_batch(run, None)
    assert batch == 6 and "(per_device_eval_batch_size 3 x 2 processes)" in note
    assert run_eval_batch(run, 5) == (5, None)
    (run / "summary.json").unlink()  # not recorded (an interrupted run): 1 process
    assert run_eval_batch(run, None)[0] == 3
    bare = tmp_path / "bare"
    bare.mkdir()
    assert run_eval_batch(bare, None) == (8, None)


def test_a_gpm_runs_eval_says_nothing_of_a_batch_it_has_no_extrema_for(tmp_path):
    """The eval-batch note is about BT's min_reward / max_reward; a GPM has neither, so its eval gives no such note
    (its accuracy and prob equal the run's final eval_*)."""
    from reward_synthetic import marker_rows

    from preflab.config import config_from_dict
    from preflab.reward_models.train import train_reward

    train, heldout = _split_files(tmp_path, marker_rows(12, seed=1))
    run = tmp_path / "gpm"
    train_reward(config_from_dict({
        "task": "reward", "reward_head": "gpm", "reward_head_params": {"dim": 2}, "model_name_or_path":
        "builtin:tiny-llama", "dataset_name": str(train), "eval_dataset_name": str(heldout),
        "per_device_train_batch_size": 4, "per_device_eval_batch_size": 2, "max_steps": 1, "learning_rate": 1e-3,
        "eval_strategy": "steps", "eval_steps": 1, "use_cpu": True, "seed": 0, "output_dir": str(run)}))
    final = json.loads((run / "summary.json").read_text())["final_metrics"]
    out = tmp_path / "eval.json"
    assert _cli("eval", run, "--data", heldout, "--out", out) == 0
    got = json.loads(out.read_text())
    for key in ("accuracy", "prob", "loss"):
        assert got["metrics"][f"reward_model/{key}"] == pytest.approx(final[f"eval_{key}"], abs=1e-6), key
    assert "reward_model/min_reward" not in got["metrics"]
    assert not any("eval batch" in note for note in got["notes"])


def test_trls_pad_to_multiple_of_auto_is_no_padding_with_a_note():
    """TRL 1.16's RewardConfig (and DPOConfig) default pad_to_multiple_of "auto" is 128 on AWS Neuron and None
    elsewhere (RewardConfig.__post_init__); a config copied from TRL with it was refused ("must be int, got 'auto'").
    Now it is null with a note, as TRL's value on the devices preflab runs on; "none" / "null" (TRL's CLI text) are
    null without one; other text is still refused."""
    from trl import RewardConfig

    from preflab.config import config_from_dict
    from preflab.config_trl import translate_trl
    from preflab.errors import ConfigError

    base = {"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}
    trl_value = RewardConfig(output_dir="/tmp/trial18-trl", pad_to_multiple_of="auto", use_cpu=True).pad_to_multiple_of
    assert trl_value is None
    assert config_from_dict({**base, "pad_to_multiple_of": "auto"}).pad_to_multiple_of == trl_value
    _, notes, errors = translate_trl({**base, "pad_to_multiple_of": "auto"})
    assert errors == [] and notes == ["pad_to_multiple_of: auto -> null (TRL pads to a multiple of 128 only on AWS "
                                      "Neuron, which preflab does not run on; rows are not padded to a multiple)."]
    raw, notes, _ = translate_trl({**base, "pad_to_multiple_of": "None"})
    assert raw["pad_to_multiple_of"] is None and notes == []
    assert config_from_dict({**base, "pad_to_multiple_of": "64"}).pad_to_multiple_of == 64
    with pytest.raises(ConfigError, match="pad_to_multiple_of must be int, got 'eight'"):
        config_from_dict({**base, "pad_to_multiple_of": "eight"})
