"""TRL's run length by default (transformers' num_train_epochs 3) against preflab's (1 epoch). preflab keeps its
default and says, in one line at the start of the run, when a config that sets neither max_steps nor
num_train_epochs trains fewer epochs than TRL would have (preflab.config_trl.trl_epochs_default_note); a TRL config
that sets them (a saved DPOConfig carries num_train_epochs: 3) gets TRL's length and no note."""
import json
import sys
from pathlib import Path

import pytest

from preflab.config import TrainConfig, config_from_dict
from preflab.config_trl import trl_epochs_default_note
from preflab.loops.offline import Trainer
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import synthetic_pairs  # noqa: E402

BASE = dict(model_name_or_path="builtin:tiny-llama", dataset_name="x.jsonl")


def _train(out, **options) -> list[int]:
    """16 pairs, 8 per step: 2 steps an epoch. The steps of the metrics rows."""
    cfg = config_from_dict({**BASE, "dataset_name": "synthetic", "output_dir": str(out), "learning_rate": 1e-3,
                            "per_device_train_batch_size": 8, "logging_steps": 1, "disable_tqdm": True,
                            "use_cpu": True, **options})
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=synthetic_pairs(16)).train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def test_trls_default_is_three_epochs_and_preflabs_one():
    trl = pytest.importorskip("trl")
    for config in (trl.DPOConfig, trl.KTOConfig, trl.RewardConfig, trl.SFTConfig):
        assert config(output_dir="x", bf16=False, use_cpu=True).num_train_epochs == 3
    assert TrainConfig(**BASE).num_train_epochs == 1.0


def test_a_run_relying_on_the_default_is_told_trls_length_and_trls_setting_trains_it(tmp_path, capsys):
    steps = _train(tmp_path / "default")
    said = capsys.readouterr().out
    assert steps == [1, 2]
    assert ("this run trains 1 epoch (2 optimizer steps): preflab's num_train_epochs defaults to 1, TRL's "
            "(transformers' TrainingArguments) to 3. Set num_train_epochs: 3 for TRL's length (3 epochs: 6 steps "
            "here)") in said
    assert _train(tmp_path / "trl", num_train_epochs=3) == [1, 2, 3, 4, 5, 6]  # what the note asks for
    assert "num_train_epochs defaults" not in capsys.readouterr().out


@pytest.mark.parametrize("written", [{"num_train_epochs": 1}, {"max_steps": 5}, {"num_train_epochs": 2}])
def test_no_note_when_the_config_says_how_long(written):
    cfg = config_from_dict({**BASE, **written})
    assert trl_epochs_default_note(cfg, 100) is None


def test_no_note_for_a_saved_trl_config_or_a_task_trl_has_no_trainer_for():
    trl = pytest.importorskip("trl")
    saved = trl.DPOConfig(output_dir="x", bf16=False, use_cpu=True).to_dict()
    cfg = config_from_dict({**saved, **BASE})
    assert cfg.num_train_epochs == 3 and trl_epochs_default_note(cfg, 100) is None
    assert trl_epochs_default_note(config_from_dict({**BASE, "task": "reward"}), 10) is not None
    assert trl_epochs_default_note(config_from_dict({**BASE, "task": "diffusion",
                                                     "loss_type": "diffusion_dpo"}), 10) is None


def test_a_recipe_stage_never_gets_the_note():
    """A recipe's stages have their lengths by design; the note's advice could not be followed there."""
    from preflab.recipe_options import stage_config

    cfg = stage_config("fspo", {"task": "dpo", "model_name_or_path": "builtin:tiny-llama",
                                "dataset_name": "x.jsonl"}, {"logging_steps": 5}, run_dir=".")
    assert cfg.max_steps == -1 and trl_epochs_default_note(cfg, 100) is None
