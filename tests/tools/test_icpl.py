"""ICPL's exact checks on the toy bandit (models-and-loops.md #47)."""
import pytest

from preflab.reward_design import (PREFERENCE_STATEMENT, AutoRater, BanditTask, HumanRater, ScriptedCodeLLM,
                                   build_prompt, run_icpl)
from preflab.reward_design.icpl import render_linear, result_summary

pytestmark = pytest.mark.slow  # about 30 sandboxed runs


@pytest.fixture(scope="module")
def result():
    return run_icpl(ScriptedCodeLLM(seed=0), BanditTask.default(), AutoRater(), iterations=5, samples=6)


def test_exactly_k_trainer_calls_and_failures_are_never_rated(result):
    assert result.trainer_calls == 5 * 6 and len(result.history) == 5
    assert result.failed_samples == 5  # the scripted model's last sample crashes every iteration
    for h in result.history:
        statuses = [c["status"] for c in h["candidates"]]
        assert statuses[-1] == "failed"
        assert statuses[h["good"]] == "ok" and statuses[h["bad"]] == "ok"
        metrics = [c["metric"] for c in h["candidates"] if c["status"] == "ok"]
        assert h["candidates"][h["good"]]["metric"] == max(metrics)
        assert h["candidates"][h["bad"]]["metric"] == min(metrics)


def test_prompt_shows_good_before_bad_with_the_preference_statement(result):
    assert result.prompts[0].count("reward function:") == 0
    for t in range(1, 5):
        prompt, last = result.prompts[t], result.history[t - 1]
        good, bad = last["candidates"][last["good"]]["code"], last["candidates"][last["bad"]]["code"]
        assert f"iterated {t} rounds" in prompt and prompt.endswith(PREFERENCE_STATEMENT)
        assert prompt.index("1st reward function:\n" + good) < prompt.index("2nd reward function:\n" + bad)


def test_best_so_far_is_monotone_and_reaches_the_optimal_arm(result):
    task = BanditTask.default()
    best = result.best_per_iteration
    assert all(b >= a for a, b in zip(best, best[1:]))
    assert best[-1] == pytest.approx(task.optimum)


def test_the_summary_gives_each_rounds_mean_beside_the_best_so_far(result):
    summary = result_summary(result, BanditTask.default())
    rounds = [[c["metric"] for c in h["candidates"] if c["status"] == "ok"] for h in result.history]
    assert summary["metric_mean_per_iteration"] == [sum(r) / len(r) for r in rounds]
    assert summary["metric_before"] == summary["metric_mean_per_iteration"][0]
    assert summary["metric_first_round_best"] == max(rounds[0])
    assert summary["metric_per_iteration"] == [max(max(r) for r in rounds[:t + 1]) for t in range(len(rounds))]


def test_resume_equals_the_uninterrupted_run(tmp_path, result):
    state = tmp_path / "icpl.json"
    run_icpl(ScriptedCodeLLM(seed=0), BanditTask.default(), AutoRater(), iterations=2, samples=6, state_path=state)
    resumed = run_icpl(ScriptedCodeLLM(seed=0), BanditTask.default(), AutoRater(), iterations=5, samples=6,
                       state_path=state)
    assert resumed.history == result.history and resumed.trainer_calls == 30


def test_bandit_training_is_the_argmax_arm_of_the_reward_program():
    task = BanditTask.default()
    true = task.train(render_linear(task.true_weights))
    assert true["status"] == "ok" and true["metric"] == pytest.approx(task.optimum)
    flipped = task.train(render_linear([-w for w in task.true_weights]))
    assert flipped["metric"] == pytest.approx(min(task.true_rewards))
    assert task.train("def reward(f):\n    return float('nan')\n")["status"] == "failed"


def test_human_rater_asks_until_the_answer_is_valid():
    answers = iter(["x", "0,0", "0,2", "1,0"])
    candidates = [{"status": "ok", "arm": 1}, {"status": "ok", "arm": 2}, {"status": "failed", "arm": None}]
    assert HumanRater(ask=lambda _: next(answers)).rate(candidates) == (1, 0)


def test_first_prompt_has_no_history():
    prompt = build_prompt("task", [])
    assert "1st" not in prompt and PREFERENCE_STATEMENT not in prompt
