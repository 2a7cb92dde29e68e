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


def test_the_game_logs_the_exact_kl_of_the_round_start_policy(tmp_path):
    """Before: the game's `kl` was the pair recipes' mean log-ratio over the enumerated pairs (every answer alike,
    not drawn from pi), drawn as "KL to the reference" going negative (-0.13 on nash_game.yaml's inpo run). Now each
    row's kl is sum_a pi(a) log(pi(a) / pi_ref(a)) of that row's round-start policy/p<i>, written out here by hand,
    and the report's KL panel labels it as the game's."""
    import json
    from pathlib import Path

    import numpy as np

    from preflab.config import load_config
    from preflab.online.run import OnlineRun
    from preflab.report.runs import load_run
    from preflab.report.plots import online_kl_kind

    recipe = Path(__file__).parent.parent / "examples" / "online" / "nash_game.yaml"
    cfg = load_config(recipe, [f"output_dir={tmp_path}", "disable_tqdm=true", "trainer=inpo", "max_steps=40",
                               "steps_per_generation=10", "logging_steps=10"])
    summary = OnlineRun(cfg).train()
    ref = np.array(summary["reference_distribution"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert len(rows) == 4
    for row in rows:  # one round per logging window: the row is that round's start policy
        pi = np.array([row[f"policy/p{i}"] for i in range(3)])
        assert row["kl"] == pytest.approx(float(pi @ np.log(pi / ref)), rel=1e-9, abs=1e-15)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-12)  # round 1 starts at pi_ref
    assert rows[-1]["kl"] > 1e-4  # the policy has moved from its reference
    assert online_kl_kind(load_run(tmp_path)) == "game"


def test_vlm_eval_data_line_counts_pairs_to_evaluate_not_train_pairs(tmp_path, capsys, monkeypatch):
    """Before: `preflab eval RUN --task vlm --data pairs.jsonl` printed the training data line, `preflab: vision
    data: ...; 8 train pairs, 0 eval pairs`, about the 8 pairs it then evaluated."""
    from pathlib import Path

    from preflab.config import load_config
    from preflab.loops.vlm import VisionTrainer
    from preflab.loops.vlm_eval import evaluate_vlm_run

    monkeypatch.chdir(Path(__file__).parent.parent)
    run = tmp_path / "vlm"
    VisionTrainer(load_config("examples/vlm/dpo.yaml", [f"output_dir={run}", "max_steps=1"])).train()
    assert "; 8 train pairs, 0 eval pairs" in capsys.readouterr().out  # the training run's line, unchanged
    evaluate_vlm_run(str(run), "examples/vlm/data/pairs.jsonl")
    lines = [line for line in capsys.readouterr().out.splitlines() if "vision data:" in line]
    assert len(lines) == 1 and lines[0].startswith("preflab eval: vision data: examples/vlm/data/pairs.jsonl")
    assert lines[0].endswith("; 8 pairs to evaluate") and "train pairs" not in lines[0]


@pytest.mark.parametrize("name,task", [("RewardConfig", "reward"), ("SFTConfig", "sft")])
def test_a_saved_reward_or_sft_config_without_task_trains_its_own_task(name, task, capsys):
    """Before: a TRL RewardConfig dump (args.to_dict(), its eos_token placeholder removed) with no `task` loaded as
    task: dpo and trained a DPO policy on the pairs without a word; an SFTConfig dump stopped on `shuffle_dataset only
    applies to task: online` without naming the task. Now each is its task, with a note; a written task wins."""
    trl = pytest.importorskip("trl")
    raw = getattr(trl, name)(output_dir="out", bf16=False, use_cpu=True).to_dict()
    raw.pop("eos_token")
    base = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}
    cfg = config_from_dict({**base, **raw})
    assert cfg.task == task
    assert f"a saved TRL {name} (" in capsys.readouterr().err
    dpo = getattr(trl, "DPOConfig")(output_dir="out", bf16=False, use_cpu=True).to_dict()
    assert config_from_dict({**base, **dpo}).task == "dpo"  # a DPOConfig dump is untouched
    assert f"a saved TRL {name}" not in capsys.readouterr().err
    if task == "reward":  # a written task is kept (here: refused for the reward fields it does not read)
        with pytest.raises(ConfigError, match="center_rewards_coefficient"):
            config_from_dict({**base, **raw, "task": "dpo", "center_rewards_coefficient": 0.1})


def test_an_unknown_option_of_a_command_shows_that_commands_usage(capsys):
    """Before: `preflab report RUN --output x.html` answered with the top-level `usage: preflab [-h] [--version]
    COMMAND ...`, which does not show report's `--out`."""
    from preflab.cli import main

    with pytest.raises(SystemExit) as err:
        main(["report", "some_run", "--output", "x.html"])
    assert err.value.code == 2
    text = capsys.readouterr().err
    assert text.startswith("usage: preflab report [-h] [--out OUT]")
    assert "preflab report: error: unrecognized arguments: --output x.html; did you mean --out?" in text
    with pytest.raises(SystemExit):  # nothing close: no guess
        main(["report", "some_run", "--zzzz"])
    assert capsys.readouterr().err.rstrip().endswith("unrecognized arguments: --zzzz")


def test_task_vlm_on_rows_without_images_says_the_model_reads_text_alone():
    """Before: a text pairs file given to task: vlm trained the image-text model on text with no word (its data line
    counted the rows as form vision_standard), where a text task refuses rows that hold images."""
    from pathlib import Path

    from preflab.data.vision import read_vision_pairs
    from preflab.loops.vlm import image_free_note, image_free_rows

    root = Path(__file__).parent.parent / "examples"
    text_rows, _ = read_vision_pairs(str(root / "data" / "loud_echo_pairs.jsonl"))
    vision_rows, _ = read_vision_pairs(str(root / "vlm" / "data" / "pairs.jsonl"))
    assert (image_free_rows(text_rows), len(text_rows)) == (256, 256)
    assert image_free_rows(vision_rows) == 0 and image_free_note(0, len(vision_rows), "train") is None
    assert image_free_note(256, 256, "train") == (
        "preflab: note: data: none of the 256 train rows holds an image or video: the image-text model reads their "
        "text alone. A text pairs file? Vision rows carry `images` (or `image`) and one {'type': 'image'} part per "
        "image in the prompt (docs/vision.md).")
    assert image_free_note(1, 9, "eval").startswith("preflab: note: data: 1 of the 9 eval rows hold no image or video")


def test_an_interrupted_runs_message_starts_on_its_own_line(capsys):
    """Before: Ctrl-C / SIGTERM printed `preflab: interrupted. ...` while the training bar was open, glued to the
    bar's last character (`... tok/s=7668]preflab: terminated (SIGTERM). ...`); the open bars are now closed first."""
    import sys

    from tqdm import tqdm

    from preflab.cli import close_progress_bars

    bar = tqdm(total=10, desc="train", file=sys.stderr)
    bar.update(3)
    close_progress_bars()
    print("preflab: interrupted.", file=sys.stderr)
    err = capsys.readouterr().err
    assert bar not in getattr(tqdm, "_instances", set())
    assert "\npreflab: interrupted." in err and "]preflab" not in err
    assert err.rstrip("\n").splitlines()[-1] == "preflab: interrupted."


def test_a_grpoconfig_dump_under_the_wrong_trainer_gets_one_line_saying_what_to_set():
    """Before: beside `loss_type='dapo' is a TRL GRPOConfig loss_type ... Set trainer: dapo`, six lines `unknown config
    key 'sapo_temperature_neg'. It is a parameter of the objective(s) grpo, not of the chosen loss_type.` (GRPOConfig's
    own defaults, accepted once the trainer is set)."""
    trl = pytest.importorskip("trl")
    raw = trl.GRPOConfig(output_dir="out", bf16=False, use_cpu=True, max_steps=2).to_dict()
    base = {"model_name_or_path": "builtin:demo-sft", "task": "online"}
    with pytest.raises(ConfigError) as err:  # a trimmed dict (no TrainingArguments dump fields): not taken as a dump
        config_from_dict({**base, **{k: v for k, v in raw.items() if k != "do_train"}})
    assert str(err.value) == ("loss_type='dapo' is a TRL GRPOConfig loss_type; in preflab it is the group recipe "
                              "`trainer: dapo` (got trainer 'online_dpo'). Set trainer: dapo (loss_type: dapo may "
                              "stay, or leave it out).")
    cfg = config_from_dict({**base, **raw, "trainer": "dapo", "online_task": "demo", "max_completion_length": 16})
    assert cfg.trainer == "dapo"  # the same keys load once the trainer is named
