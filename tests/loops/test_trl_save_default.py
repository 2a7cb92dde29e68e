"""TRL's checkpoint default (transformers' save_strategy "steps", save_steps 500) against preflab's (save_steps 0: no
intermediate checkpoints). preflab keeps its default and says, in one line at the start of the run, when a config
that relies on the default would have been checkpointed by TRL (best_model_options.trl_save_default_note)."""
import sys
from pathlib import Path

import pytest

from preflab import best_model_options
from preflab.best_model_options import trl_save_default_note
from preflab.config import TrainConfig, config_from_dict

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import run  # noqa: E402

BASE = dict(model_name_or_path="builtin:tiny-llama", dataset_name="x.jsonl")


def test_preflab_default_is_no_checkpoints_and_a_long_run_relying_on_it_is_told_trls():
    cfg = TrainConfig(**BASE)
    assert cfg.save_steps == 0 and cfg.save_strategy is None
    note = trl_save_default_note(cfg, 1200)
    assert "1200-step run writes no intermediate checkpoints" in note
    # transformers' DefaultFlowCallback saves at the last step too (save_strategy steps)
    assert "would write checkpoint-500 ... checkpoint-1000 and checkpoint-1200." in note
    assert "Set save_steps: 500" in note
    assert "would write checkpoint-500 and checkpoint-999." in trl_save_default_note(cfg, 999)
    assert "would write checkpoint-500." in trl_save_default_note(cfg, 500)  # TRL saves at step 500 exactly
    assert trl_save_default_note(cfg, 499) is None  # TRL would not have saved either


@pytest.mark.parametrize("written", [
    {"save_steps": 0},  # the user's own 0: no checkpoints wanted
    {"save_steps": 200},
    {"save_strategy": "no"},  # TRL's own way to say none (config_trl sets save_steps 0)
])
def test_no_note_when_the_config_says_what_it_wants(written):
    cfg = config_from_dict({**BASE, **written})
    assert trl_save_default_note(cfg, 5000) is None


def test_trls_save_strategy_steps_alone_gets_trls_save_steps():
    cfg = config_from_dict({**BASE, "save_strategy": "steps"})
    assert cfg.save_steps == 500 and trl_save_default_note(cfg, 5000) is None


def test_the_run_prints_the_note_and_writes_no_checkpoint_then_trls_setting_writes_them(tmp_path, capsys,
                                                                                          monkeypatch):
    """With TRL's interval shrunk to 3 steps (the rule is the same at 500): a 6-step run that leaves the checkpoint
    options out prints the note and writes no checkpoint-* folder; with save_strategy: steps and save_steps: 3 (what
    the note asks for) checkpoint-3 and checkpoint-6 appear and nothing is said."""
    monkeypatch.setattr(best_model_options, "TRL_SAVE_STEPS", 3)
    run(tmp_path / "default", max_steps=6)
    said = capsys.readouterr().out
    assert "6-step run writes no intermediate checkpoints" in said and "checkpoint-3 ... checkpoint-6" in said
    assert not list((tmp_path / "default").glob("checkpoint-*"))
    run(tmp_path / "trl", max_steps=6, save_strategy="steps", save_steps=3)
    assert "writes no intermediate checkpoints" not in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "trl").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]


def test_a_recipe_stage_never_gets_the_note():
    """A recipe's stages have their checkpoints by design (save_steps is refused at the top level of a recipe), so
    the note's advice could not be followed there."""
    from preflab.recipe_options import stage_config

    cfg = stage_config("fspo", {"task": "dpo", "model_name_or_path": "builtin:tiny-llama",
                                "dataset_name": "x.jsonl"}, {"logging_steps": 5}, run_dir=".")
    assert cfg.save_steps == 0 and trl_save_default_note(cfg, 5000) is None


def test_save_strategy_steps_also_checkpoints_the_last_step_as_transformers(tmp_path):
    """transformers' DefaultFlowCallback (TRL's trainers) saves at the last step under save_strategy steps even when
    it is off the schedule: 5 steps with save_steps 3 write checkpoint-3 and checkpoint-5 (preflab wrote checkpoint-3
    only, so a resume that extended the run restarted from step 3). The steps equal transformers' own callback's."""
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import DefaultFlowCallback

    args = TrainingArguments(output_dir=str(tmp_path / "hf"), save_strategy="steps", save_steps=3, max_steps=5,
                             report_to=[], use_cpu=True)
    state, flow, theirs = TrainerState(max_steps=5, save_steps=3, logging_steps=500), DefaultFlowCallback(), []
    for step in range(1, 6):
        state.global_step = step
        if flow.on_step_end(args, state, TrainerControl()).should_save:
            theirs.append(f"checkpoint-{step}")
    run(tmp_path / "ours", max_steps=5, save_strategy="steps", save_steps=3)
    ours = sorted(p.name for p in (tmp_path / "ours").glob("checkpoint-*"))
    assert ours == theirs == ["checkpoint-3", "checkpoint-5"]
