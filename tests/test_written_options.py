"""An option the user wrote is checked at any value, its default included (TrainConfig.written_options,
preflab.config_defaults.set_options): before, the unread-option refusals and the game's notes compared each value with
its default, so `apo_alpha: 0.3` (its default) written for the game's trainer inpo, or `resolution: 512` under task: dpo,
was accepted and did nothing, unmentioned. Written = the YAML file's keys, the key=value overrides, the keys of the
mapping given to config_from_dict, the keywords of TrainConfig(...); not a saved config's keys (every option is in
it), not a recipe stage's own settings, not what a program changes with dataclasses.replace."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from preflab.config import TrainConfig, config_from_dict, load_config, load_yaml, lora_off_overrides
from preflab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
GAME = ROOT / "examples" / "online" / "nash_game.yaml"
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def _yaml(tmp_path: Path, base: Path, **extra) -> Path:
    raw = load_yaml(base.read_text())
    raw.update(extra)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_yaml_key_at_its_default_that_the_trainer_does_not_read_is_refused(tmp_path):
    path = _yaml(tmp_path, GAME, apo_alpha=0.3)  # apo_alpha's default; trainer inpo reads no apo_alpha
    with pytest.raises(ConfigError, match=r"^apo_alpha is read by trainer apo in online_task: game, not by trainer "
                                          r"'inpo' with online_task 'game'; remove it \(or change trainer\)\.$"):
        load_config(path)
    assert load_config(path, ["trainer=apo"]).apo_alpha == 0.3  # the trainer that reads it takes it


def test_an_override_at_its_default_that_the_task_does_not_read_is_refused():
    with pytest.raises(ConfigError, match=r"^resolution only applies to task: diffusion, not to this run \(task: dpo, "
                                          r"loss_type: sigmoid\); remove it \(on the command line: '~resolution'\)\.$"):
        load_config(QUICKSTART, ["resolution=512"])
    assert load_config(QUICKSTART).written_options >= {"model_name_or_path", "dataset_name"}


def test_the_python_api_keywords_and_mapping_keys_are_written():
    base = dict(model_name_or_path="builtin:tiny-llama", dataset_name="examples/data/loud_echo_pairs.jsonl")
    with pytest.raises(ConfigError, match=r"^rso_beta only applies to task: online, not to this run \(task: dpo, "
                                          r"loss_type: sigmoid\); remove it \(on the command line: '~rso_beta'\)\.$"):
        TrainConfig(**base, rso_beta=0.5)
    with pytest.raises(ConfigError, match=r"task: sft trains on completions by maximum likelihood; beta only applies "
                                          r"to preference tasks\. Remove it \(on the command line: '~beta'\), or set task: dpo\."):
        config_from_dict({**base, "task": "sft", "beta": 0.1})
    assert TrainConfig(**base, beta=0.1).written_options == {"model_name_or_path", "dataset_name", "beta"}
    assert TrainConfig(**base).written_options == {"model_name_or_path", "dataset_name"}


def test_a_game_option_at_its_default_for_a_trainer_that_does_not_read_it_gets_its_note(capsys):
    load_config(GAME, ["trainer=egpo", "game_eta=0.5"])  # game_eta's default: egpo takes no step size
    assert "preflab: note: game_eta=0.5 is read by game trainers apo, inpo, nash_md, not by trainer 'egpo'; it has " \
           "no effect on this run." in capsys.readouterr().err


def test_a_saved_config_counts_only_its_values_away_from_their_defaults(tmp_path):
    """A run's config.yaml holds every option (TrainConfig.save): reloaded (preflab eval, a resume, `preflab train
    RUN/config.yaml`) its keys at their defaults are not the user's, so resolution: 512 under task: dpo is no error."""
    cfg = load_config(QUICKSTART, [f"output_dir={tmp_path / 'run'}"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml", ["seed=3"])
    assert again.written_options == {"seed"} and again.to_dict() == {**cfg.to_dict(), "seed": 3}
    assert config_from_dict(cfg.to_dict()).written_options == frozenset()


def test_preflabs_own_overrides_are_not_written(tmp_path):
    """An evaluation of a saved LoRA run turns LoRA off with the LoRA options at their defaults (lora_off_overrides):
    preflab's settings, not the user's, so they are not refused as unread beside use_peft: false; the same written by
    the user are."""
    cfg = load_config(QUICKSTART, [f"output_dir={tmp_path / 'run'}", "use_peft=true", "lora_r=8", "use_dora=true",
                                   "use_rslora=true", "lora_modules_to_save=[lm_head]"])
    cfg.save(tmp_path / "config.yaml")
    off = load_config(tmp_path / "config.yaml", preflab_overrides=lora_off_overrides())
    assert (off.use_peft, off.lora_r, off.written_options) == (False, 16, frozenset())
    assert (off.use_dora, off.use_rslora, off.lora_modules_to_save) == (False, False, None)
    # (use_rslora / use_dora / lora_modules_to_save at TRL's default, off, ask for nothing: not refused)
    with pytest.raises(ConfigError, match=r"^lora_r, lora_alpha, lora_dropout, lora_target_modules only apply to "
                                          r"use_peft: true"):
        load_config(tmp_path / "config.yaml", lora_off_overrides())


def test_replace_keeps_the_written_options_and_adds_none():
    cfg = load_config(QUICKSTART, ["beta=0.2"])
    moved = dataclasses.replace(cfg, disable_tqdm=True, logging_first_step=True)
    assert moved.written_options == cfg.written_options and "beta" in cfg.written_options
    assert not {"disable_tqdm", "logging_first_step"} & moved.written_options


def test_a_recipe_stage_counts_only_the_users_options_as_written():
    """stage_config builds a stage from the recipe's own settings plus the user's top-level options: only the user's
    are the stage's written options (a recipe's setting at a default its stage does not read is the recipe's)."""
    from preflab.recipe_options import stage_config

    stage = {"task": "dpo", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "resolution": 512}
    cfg = stage_config("raft_ladder", stage, {"attention": "auto"}, run_dir=".")
    # and save_steps / num_train_epochs: a stage's checkpoints and length are the recipe's design (no TRL default
    # notes: trl_save_default_note, trl_epochs_default_note)
    assert cfg.written_options == {"attention", "save_steps", "num_train_epochs"}
    with pytest.raises(ConfigError, match=r"^resolution only applies to task: diffusion"):
        config_from_dict(stage)  # the same mapping given by a user


def test_a_recipe_refuses_a_top_level_option_written_at_its_default():
    with pytest.raises(ConfigError, match=r"^max_length is not passed to the stages of task raft_ladder: the recipe "
                                          r"builds its own data"):
        config_from_dict({"task": "raft_ladder", "max_length": 1024})


def test_every_example_writes_only_options_its_run_reads(capsys):
    """Every shipped config loads (the unread-option refusals pass) and gets no note of an option its own trainer does
    not read (tests/test_reliability_checklist.py also loads them; this one checks the notes)."""
    configs = [p for p in sorted((ROOT / "examples").rglob("*.yaml")) if "accelerate" not in p.parts]
    assert len(configs) >= 40
    for path in configs:
        load_config(path)
        err = capsys.readouterr().err
        assert "has no effect on this run" not in err, (path, err)
