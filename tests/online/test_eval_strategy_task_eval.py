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


GAME_NOTE = ("preflab: note: eval_strategy: no turns off the scheduled evaluations, but online_task: game's own "
             "evaluation still runs once, at the end of the run (it needs no eval set): the final policy's exact "
             "duality gap and total variation to the regularised equilibrium (eval_duality_gap, "
             "eval_tv_to_equilibrium; summary.json duality_gap_before -> duality_gap_after, tv_to_equilibrium_before "
             "-> tv_to_equilibrium_after).")
DEMO_NOTE = ("preflab: note: eval_strategy: no turns off the scheduled evaluations, but online_task: demo's own "
             "evaluation still runs once, at the end of the run (it needs no eval set): the true reward of greedy "
             "answers to the demo's 4 held-out prompts (eval_true_reward, eval_win_rate_vs_reference against the "
             "starting policy's answers; summary.json true_reward_before -> true_reward_after).")


def test_game_with_written_eval_strategy_no_says_once_that_its_end_evaluation_still_runs(tmp_path, capsys):
    """eval_strategy: no is accepted on the game (a saved TRL config's default), and the run still evaluates the
    equilibrium at its end: a note says so once, when the user wrote it; not when the option is left out."""
    from preflab.online.run import OnlineRun

    common = ["max_steps=4", "steps_per_generation=2", "logging_steps=2", "disable_tqdm=true"]
    OnlineRun(load_config(GAME, [f"output_dir={tmp_path / 'no'}", *common, "eval_strategy=no"])).train()
    said = capsys.readouterr()
    assert (said.out + said.err).count(GAME_NOTE) == 1
    assert [r["step"] for r in _eval_rows(tmp_path / "no")] == [4]  # what the note says: the end's evaluation
    OnlineRun(load_config(GAME, [f"output_dir={tmp_path / 'unwritten'}", *common])).train()
    said = capsys.readouterr()
    assert "turns off the scheduled evaluations" not in said.out + said.err
    assert _eval_rows(tmp_path / "unwritten") == _eval_rows(tmp_path / "no")


def test_demo_note_on_written_eval_strategy_no_only(tmp_path, capsys):
    """The demo task's note names its held-out prompts; a config whose eval_strategy: no was not written by the user
    (a saved config's keys: written_options empty) gets none, nor does online_task: dataset (no eval set: nothing
    runs at the end)."""
    from preflab.config import TrainConfig
    from preflab.online.run import OnlineRun
    from preflab.online_options import task_eval_strategy_no_notes

    demo = dict(task="online", online_task="demo", trainer="online_dpo", model_name_or_path="builtin:demo-sft",
                max_steps=1, heldout_prompts=4, logging_steps=1, disable_tqdm=True, eval_strategy="no",
                output_dir=str(tmp_path / "demo"))
    OnlineRun(config_from_dict(demo)).train()
    said = capsys.readouterr()
    assert (said.out + said.err).count(DEMO_NOTE) == 1
    assert [r["step"] for r in _eval_rows(tmp_path / "demo")] == [1]
    assert task_eval_strategy_no_notes(TrainConfig(**demo, written_options=frozenset())) == []
    dataset = {k: v for k, v in demo.items() if k != "heldout_prompts"}
    assert task_eval_strategy_no_notes(config_from_dict({**dataset, "online_task": "dataset",
                                                         "dataset_name": "p.jsonl",
                                                         "model_name_or_path": "builtin:tiny-llama",
                                                         "reward_funcs": ["demo_true_reward"]})) == []
