"""A hand-written GRPO config with GRPOConfig's generation_batch_size / steps_per_generation keeps preflab's meaning of
those keys (prompts per generate() call; optimizer steps per round), and says so with the setting that gives TRL's
round (preflab.config_trl_methods.grpo_generation_note); before, nothing was said. The setting it names is the one a
saved GRPOConfig with the same values is translated to (grpo_round_from_trl / _grpo_steps_from_trl)."""
import re

import pytest

from preflab.config import config_from_dict

BASE = {"task": "online", "trainer": "grpo", "online_task": "dataset", "model_name_or_path": "builtin:tiny-llama",
        "dataset_name": "prompts.jsonl", "reward_funcs": ["rewards.py:fn"], "max_steps": 4}


DUMP_BASE = {k: v for k, v in BASE.items() if k != "trainer"}  # a saved GRPOConfig's loss_type (dapo) names it


def _notes(capsys, **options):
    cfg = config_from_dict({**BASE, **options})
    said = capsys.readouterr()
    return cfg, said.out + said.err


def test_generation_batch_size_note_names_trls_round_which_a_saved_grpoconfig_gets(capsys):
    trl = pytest.importorskip("trl")
    cfg, said = _notes(capsys, generation_batch_size=16, num_generations=4)
    assert cfg.generation_batch_size == 16 and cfg.prompts_per_generation == 32  # preflab's meaning, unchanged
    assert ("generation_batch_size: 16 is preflab's prompts per generate() call; in TRL's GRPOConfig it is the "
            "completions of one generation round (16 / num_generations 4)") in said
    suggested = int(re.search(r"for TRL's round set prompts_per_generation: (\d+)", said).group(1))
    saved = trl.GRPOConfig(output_dir="x", bf16=False, use_cpu=True, generation_batch_size=16, num_generations=4,
                           per_device_train_batch_size=8).to_dict()
    dumped = config_from_dict({**saved, **DUMP_BASE})
    assert suggested == dumped.prompts_per_generation == 4


def test_steps_per_generation_note_beside_accumulation_names_trls_optimizer_steps(capsys):
    trl = pytest.importorskip("trl")
    cfg, said = _notes(capsys, steps_per_generation=4, gradient_accumulation_steps=2)
    assert cfg.steps_per_generation == 4
    assert "steps_per_generation: 4 counts optimizer steps per generation round here (8 micro-batches" in said
    suggested = int(re.search(r"For TRL's round set steps_per_generation: (\d+)", said).group(1))
    saved = trl.GRPOConfig(output_dir="x", bf16=False, use_cpu=True, steps_per_generation=4,
                           gradient_accumulation_steps=2, num_generations=8, per_device_train_batch_size=8).to_dict()
    assert suggested == config_from_dict({**saved, **DUMP_BASE}).steps_per_generation == 2


@pytest.mark.parametrize("options", [
    {"generation_batch_size": 16, "prompts_per_generation": 4},  # the round is given in preflab's terms
    {"steps_per_generation": 4},  # no accumulation: both count optimizer steps
    {"steps_per_generation": 4, "gradient_accumulation_steps": 2, "trainer": "online_dpo", "num_generations": 2},
])
def test_no_note_where_the_meanings_agree_or_trl_has_no_such_key(capsys, options):
    _, said = _notes(capsys, **options)
    assert "generation_batch_size: 16 is preflab's" not in said and "counts optimizer steps per generation" not in said


def test_grpo_dropout_default_differs_from_trls_as_documented():
    """docs/configuration.md ("Online defaults"): preflab's online recipes disable dropout by default, TRL's
    GRPOConfig / RLOOConfig do not; written false it is TRL's setting."""
    trl = pytest.importorskip("trl")
    for config in (trl.GRPOConfig, trl.RLOOConfig):
        assert config(output_dir="x", bf16=False, use_cpu=True).disable_dropout is False
    assert config_from_dict(BASE).disable_dropout is True
    assert config_from_dict({**BASE, "disable_dropout": False}).disable_dropout is False
