"""eval_strategy: steps on the online tasks that evaluate without an eval set (online_task demo: the held-out
prompts; game: the equilibrium) evaluates every eval_steps as eval_steps alone does. It was refused with "needs an
eval set: set eval_dataset_name or eval_fraction", although those tasks read none and eval_steps alone evaluated."""
import json
from pathlib import Path

import pytest

from preflab.config import config_from_dict, load_config
from preflab.errors import ConfigError

GAME = Path(__file__).parents[2] / "examples" / "online" / "nash_game.yaml"


def _eval_rows(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if any(k.startswith("eval_") for k in r)]


def test_demo_task_takes_eval_strategy_steps_and_its_eval_steps_default():
    cfg = config_from_dict(dict(task="online", online_task="demo", trainer="online_dpo", max_steps=6,
                                model_name_or_path="builtin:demo-sft",
                                logging_steps=3, eval_strategy="steps"))
    assert cfg.eval_steps == 3  # transformers' default: logging_steps
    # a dataset run without an eval set is still refused: it has nothing to evaluate
    with pytest.raises(ConfigError, match="eval_strategy='steps' needs an eval set"):
        config_from_dict(dict(task="online", online_task="dataset", trainer="online_dpo", dataset_name="p.jsonl",
                              model_name_or_path="builtin:tiny-llama",
                              reward_funcs=["demo_true_reward"], max_steps=6, eval_strategy="steps",
                              eval_steps=2))


def test_game_with_eval_strategy_steps_logs_the_eval_steps_runs_rows(tmp_path):
    from preflab.online.run import OnlineRun

    common = ["max_steps=8", "steps_per_generation=4", "logging_steps=2", "disable_tqdm=true"]
    OnlineRun(load_config(GAME, [f"output_dir={tmp_path / 'a'}", *common, "eval_steps=4"])).train()
    OnlineRun(load_config(GAME, [f"output_dir={tmp_path / 'b'}", *common, "eval_strategy=steps",
                                 "eval_steps=4"])).train()
    a, b = _eval_rows(tmp_path / "a"), _eval_rows(tmp_path / "b")
    assert [r["step"] for r in b] == [4, 8]
    assert b == a
    assert b[0]["eval_duality_gap"] != b[1]["eval_duality_gap"]  # two evaluations of different policies
