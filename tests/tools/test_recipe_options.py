"""Top-level options of a recipe run (`task: <recipe>`): the ones that reach its stages do reach every stage
(preflab.recipe_options.stage_config); every other one set away from its default is refused before anything runs.
Before, `attention: dense` on raft_ladder was accepted and its stages trained with segment attention."""
import ast
import inspect
import json
from pathlib import Path

import pytest
import yaml

import preflab
from preflab.cli import main
from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.recipe_options import (RECIPE_STAGES, STAGE_OPTIONS, STAGE_READS, accepted_options, stage_config,
                                    stage_options)
from preflab.recipes import RECIPES, recipe_function

TINY_LADDER = {"n_train": 16, "n_test": 2, "sft_steps": 1, "dpo_steps": 1}


def _stage_config(folder: Path) -> dict:
    return yaml.safe_load((folder / "config.yaml").read_text())


def test_raft_ladder_top_level_attention_dense_reaches_both_stages(tmp_path):
    out = tmp_path / "ladder"
    args = ["train", "examples/tools/raft_ladder.yaml", f"output_dir={out}", f"recipe_params={TINY_LADDER}",
            "attention=dense", "pad_to_multiple_of=8", "disable_tqdm=true"]
    assert main(args) == 0
    for stage in ("sft", "dpo"):
        saved = _stage_config(out / stage)
        assert (saved["attention"], saved["pad_to_multiple_of"]) == ("dense", 8), stage
        assert saved["learning_rate"] != 1e-6  # the recipe's own stage options are kept (3e-3, 3e-4)
    assert json.loads((out / "raft_ladder_state.json").read_text())["params"].get("stage_options") is None  # harmless


def test_raft_ladder_resume_with_another_disable_dropout_is_refused(tmp_path, capsys):
    out = tmp_path / "ladder"
    base = ["train", "examples/tools/raft_ladder.yaml", f"output_dir={out}", f"recipe_params={TINY_LADDER}",
            "disable_tqdm=true"]
    assert main(base + ["disable_dropout=false"]) == 0
    assert _stage_config(out / "dpo")["disable_dropout"] is False
    assert main(base + ["resume_from_checkpoint=true"]) == 2  # its finished stages trained with dropout kept
    assert "top-level options {} differ from the interrupted run's ({'disable_dropout': False}" in \
        capsys.readouterr().err
    assert main(base + ["resume_from_checkpoint=true", "disable_dropout=false", "attention=dense"]) == 0


@pytest.mark.parametrize("over, words", [
    ({"learning_rate": 1e-3}, "learning_rate is not passed to the stages of task raft_ladder: the recipe sets it"),
    ({"use_peft": True}, "use_peft is not passed to the stages of task raft_ladder: the recipe builds its tiny"),
    ({"max_length": 64}, "max_length is not passed to the stages of task raft_ladder: the recipe builds its own data"),
    ({"model_name_or_path": "gpt2"}, "model_name_or_path is not passed to the stages of task raft_ladder"),
    ({"eval_steps": 5}, "eval_steps is not passed to the stages of task raft_ladder: the recipe evaluates"),
])
def test_recipe_refuses_top_level_options_its_stages_do_not_read(over, words):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"task": "raft_ladder", "recipe_params": {}, **over})
    assert words in str(err.value) and "options that reach its stages: attention," in str(err.value)


def test_recipe_refuses_a_stage_option_one_of_its_stages_does_not_read():
    # otc's GRPO stages (task: online) do not compile: refused, not half applied
    with pytest.raises(ConfigError, match="torch_compile is not passed to the stages of task otc: its "
                                          "online stage's trainer does not read torch_compile"):
        config_from_dict({"task": "otc", "torch_compile": True})
    with pytest.raises(ConfigError, match="it trains no preflab model"):
        config_from_dict({"task": "icpl", "attention": "dense"})
    cfg = config_from_dict({"task": "otc", "attention": "dense", "bf16": True, "use_cpu": True, "seed": 3})
    assert stage_options(cfg) == {"attention": "dense", "bf16": True}  # use_cpu: the recipes' own; seed: theirs


def test_recipe_stage_table_covers_every_recipe_and_stage_kind():
    assert set(RECIPE_STAGES) == set(RECIPES)
    for task in RECIPES:
        takes = "stage_options" in inspect.signature(recipe_function(task)).parameters
        assert takes == bool(accepted_options(task)), task  # a recipe with training stages takes the options
    assert set(STAGE_OPTIONS) == {o for names in STAGE_READS.values() for o in names}
    assert accepted_options("raft_ladder") == STAGE_READS["dpo"]
    assert "precompute_ref_log_probs" not in accepted_options("dstc")  # its sft stages have no reference


def test_stage_config_refuses_a_stage_kind_its_recipe_does_not_list():
    with pytest.raises(ConfigError, match="internal: task raft_ladder built a stage of task online"):
        stage_config("raft_ladder", {"task": "online"}, {}, run_dir=".")
    cfg = stage_config("otc", {"task": "sft", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                               "learning_rate": 3e-3}, {"attention": "dense"}, run_dir=".")
    assert (cfg.attention, cfg.learning_rate) == ("dense", 3e-3)


def test_recipe_modules_build_every_stage_config_through_stage_config():
    """A recipe that called config_from_dict itself would drop the top-level options again."""
    root = Path(preflab.__file__).parent
    offenders = []
    for task, target in RECIPES.items():
        path = root.joinpath(*target.split(":")[0].split(".")[1:]).with_suffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                    "config_from_dict", "TrainConfig", "load_config"):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_otc_top_level_attention_and_chunk_reach_its_sft_and_grpo_stages(tmp_path):
    from preflab.tool_use.otc import run_otc

    tiny = {"n_train": 40, "n_heldout": 2, "hidden_size": 32, "sft_steps": 1, "sft_batch_size": 4, "grpo_steps": 1,
            "prompts_per_generation": 2, "num_generations": 2, "max_completion_length": 8, "save_steps": 0,
            "control": False}
    cfg = config_from_dict({"task": "otc", "recipe_params": tiny, "attention": "dense", "chunk_tokens": 64})
    run_otc(str(tmp_path / "otc"), quiet=True, stage_options=stage_options(cfg), **tiny)
    for stage in ("sft", "grpo"):
        saved = _stage_config(tmp_path / "otc" / stage)
        assert (saved["task"], saved["attention"], saved["chunk_tokens"]) == (
            {"sft": "sft", "grpo": "online"}[stage], "dense", 64)
