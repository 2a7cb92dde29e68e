"""judge_timeout_s: a judge call that does not return in time stops the online run with an error naming the judge,
the round and step, the limit and what to do (TRL, and preflab before, waited forever); a judge that returns in time
trains exactly as without the limit, and without a limit the judge is called in the caller's thread as before."""
import json
import threading
import time

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError, JudgeTimeoutError
from preflab.loops.judge import Judge

from test_online_run import e_judge, tiny_cfg, tiny_run

SLEEP_S, LIMIT_S = 2.0, 0.5


def _slow_on_call(n: int, seconds: float = SLEEP_S):
    """A reward function (e_judge's scores) whose n-th call (1-based) sleeps `seconds` first; it records when that
    call started, how many completions each call got and which thread each call ran in."""
    seen = {"started": None, "sizes": [], "threads": []}

    def slow_reward(prompts, completions, **kwargs):
        seen["sizes"].append(len(completions))
        seen["threads"].append(threading.current_thread())
        if len(seen["sizes"]) == n:
            seen["started"] = time.monotonic()
            time.sleep(seconds)
        return e_judge(prompts, completions)

    return slow_reward, seen


def _message(name: str, where: str, n: int, limit: str = "0.5") -> str:
    return (f"judge {name!r} ({__file__}) did not return within judge_timeout_s = {limit} s in {where} (one call on "
            f"{n} completion(s)); the run stops (the call is abandoned in a background thread: Python cannot stop "
            "it). Fix the judge so that it returns (a reward function that waits on a server, a lock or a subprocess "
            "needs its own timeout), or raise judge_timeout_s (null: no limit) if a call this long is expected.")


@pytest.mark.parametrize("over", [dict(trainer="grpo", beta=0.04), dict(trainer="online_dpo")])
def test_a_judge_past_judge_timeout_s_stops_the_online_run_naming_it_the_round_and_the_limit(tmp_path, over):
    """The second round's judge call sleeps 2 s under judge_timeout_s 0.5: the run stops about 0.5 s into it, with
    the error (before: the run waited for the judge, forever for one that never returns)."""
    judge, seen = _slow_on_call(2)
    run = tiny_run(tiny_cfg(tmp_path, judge_timeout_s=LIMIT_S, **over), judge=judge)
    with pytest.raises(JudgeTimeoutError) as err:
        run.train()
    waited = time.monotonic() - seen["started"]
    assert LIMIT_S <= waited < SLEEP_S - 0.5, waited  # it did not wait for the judge to return
    # steps_per_generation 2: round 2 is generated at optimizer step 3
    assert str(err.value) == _message("slow_reward", "round 2 (optimizer step 3)", seen["sizes"][1])
    assert len(seen["sizes"]) == 2 and run.judge.failed == 0  # not retried per completion, not a judge failure
    assert not (tmp_path / "rounds" / "2.jsonl").exists()  # no round was built from it (no zero reward, no skip)


def test_a_judge_within_judge_timeout_s_trains_the_same_weights_and_without_it_runs_in_the_callers_thread(tmp_path):
    """A fast judge under judge_timeout_s runs in a worker thread and gives the run without a limit bit for bit (the
    weights and every logged reward); without a limit the judge is called in the run's own thread, as before."""
    runs, seens = [], []
    for name, over in (("plain", {}), ("limited", dict(judge_timeout_s=30.0))):
        judge, seen = _slow_on_call(0)
        run = tiny_run(tiny_cfg(tmp_path / name, trainer="grpo", beta=0.04, **over), judge=judge)
        run.train()
        runs.append(run)
        seens.append(seen)
    plain, limited = (run.policy.state_dict() for run in runs)
    assert all(torch.equal(plain[k], limited[k]) for k in plain)
    rewards = [[(row["reward"], row["reward_std"]) for row in map(json.loads, (tmp_path / name / "metrics.jsonl")
                                                                   .read_text().splitlines()) if "reward" in row]
               for name in ("plain", "limited")]
    assert rewards[0] == rewards[1] and len(rewards[0]) == 6
    assert seens[0]["sizes"] == seens[1]["sizes"] and len(seens[0]["sizes"]) == 3  # 3 rounds, the same calls
    assert all(t is threading.main_thread() for t in seens[0]["threads"])
    assert all(t is not threading.main_thread() and t.daemon for t in seens[1]["threads"])


class SlowPreference:
    """A preference model whose win_rate_matrix sleeps: the Borda path of Judge (one call per group)."""

    def win_rate_matrix(self, prompt, responses):
        time.sleep(SLEEP_S)
        return torch.full((len(responses), len(responses)), 0.5)


def test_a_preference_model_or_reward_model_past_the_limit_stops_with_its_name_and_no_retry():
    judge = Judge([SlowPreference()], timeout_s=0.25)
    judge.where = "round 7 (optimizer step 13)"
    start = time.monotonic()
    with pytest.raises(JudgeTimeoutError) as err:
        judge(["p", "p", "q", "q"], ["a", "b", "c", "d"], [0, 0, 1, 1])
    assert time.monotonic() - start < SLEEP_S - 0.5
    assert str(err.value).startswith("judge 'SlowPreference' did not return within judge_timeout_s = 0.25 s in "
                                     "round 7 (optimizer step 13) (one call on 2 completion(s)); the run stops")
    assert judge.failed == 0

    class SlowModel:
        def score(self, prompts, responses):
            time.sleep(SLEEP_S)
            return [0.0] * len(prompts)

    with pytest.raises(JudgeTimeoutError, match=r"judge 'SlowModel' did not return within judge_timeout_s = 0.25 s "
                                                r"\(one call on 3 completion\(s\)\)"):
        Judge([SlowModel()], timeout_s=0.25)(["p"] * 3, ["a", "b", "c"])


def test_a_judge_that_raises_under_a_limit_is_retried_and_counted_as_without_one():
    """An exception in the worker thread reaches the caller unchanged: the batch is retried one completion at a
    time and each completion it still raises on is dropped and counted, as without a limit."""
    def picky(prompts, completions, **kwargs):
        if "bad" in completions:
            raise ValueError("cannot score 'bad'")
        return [float(len(c)) for c in completions]

    out = []
    for limit in (None, 5.0):
        judge = Judge([picky], timeout_s=limit)
        scores, _ = judge(["p"] * 3, ["ok", "bad", "fine"])
        out.append((scores.tolist(), judge.failed, judge.failure_note()))
    assert str(out[0]) == str(out[1]) and out[0][1] == 1
    assert out[0][0][0] == 2.0 and out[0][0][2] == 4.0


@pytest.mark.parametrize("over, refusal", [
    (dict(task="online", online_task="game", trainer="inpo", game_preferences=[[0.5, 0.7], [0.3, 0.5]],
          model_name_or_path="builtin:tiny-llama"),
     "judge_timeout_s is read by the online tasks that judge sampled text (dataset, vision_dataset, demo; the game's "
     "preferences are game_preferences), not by trainer 'inpo' with online_task 'game'; remove it (or change "
     "trainer)."),
    (dict(task="dpo", dataset_name="x.jsonl", model_name_or_path="builtin:tiny-llama"),
     "judge_timeout_s only applies to task: online, not to this run (task: dpo, loss_type: sigmoid); remove it (on the command line: "
     "'~judge_timeout_s')."),
])
def test_judge_timeout_s_is_refused_where_no_judge_is_called(tmp_path, over, refusal):
    with pytest.raises(ConfigError) as err:
        config_from_dict({**over, "output_dir": str(tmp_path), "max_steps": 1, "judge_timeout_s": 5})
    assert refusal in str(err.value)


@pytest.mark.parametrize("value", [0, -1.0, float("inf")])
def test_judge_timeout_s_must_be_a_positive_finite_number_of_seconds(tmp_path, value):
    with pytest.raises(ConfigError, match="judge_timeout_s"):
        tiny_cfg(tmp_path, judge_timeout_s=value)
    with pytest.raises(ConfigError, match="judge_timeout_s must be a finite number of seconds > 0"):
        Judge([e_judge], timeout_s=value)


@pytest.mark.parametrize("value", [True, float("nan"), "5"])
def test_judge_timeout_s_refuses_what_is_no_number_of_seconds_as_toolbox_does(value):
    """The Judge's limit is checked as ToolBox's (preflab.loops.time_limit.checked_limit): a bool (True was taken as
    1 s), NaN and text are refused with the option's name."""
    with pytest.raises(ConfigError, match=r"judge_timeout_s must be a finite number of seconds > 0 \(or null: no "
                                          r"limit\), got "):
        Judge([e_judge], timeout_s=value)


def test_upo_dropout_passes_under_a_limit_equal_the_inline_passes_and_a_slow_one_stops():
    """trainer upo's MC-dropout passes (upo_uncertainty: mc_dropout) each run under the limit: the worker thread draws
    the same seeded dropout masks (torch's global RNG is shared by the threads), so the rewards are equal."""
    from preflab.online.upo import dropout_pass_rewards

    from test_upo_mc_dropout import TEXTS, LengthRewardModel

    rm = LengthRewardModel(p=0.3)
    inline = dropout_pass_rewards(rm, ["p"] * len(TEXTS), TEXTS, 3, seed=9)
    limited = Judge([rm], timeout_s=30.0)
    assert torch.equal(dropout_pass_rewards(rm, ["p"] * len(TEXTS), TEXTS, 3, seed=9, timed=limited.timed), inline)
    assert not torch.equal(inline[:, 0], inline[:, 1])  # the passes differ (dropout on)
    score = rm.score
    rm.score = lambda prompts, responses: time.sleep(SLEEP_S) or score(prompts, responses)
    with pytest.raises(JudgeTimeoutError, match=r"judge 'length_rm_p0.3' did not return within judge_timeout_s = "
                                                r"0.25 s \(one call on 8 completion\(s\)\)"):
        dropout_pass_rewards(rm, ["p"] * len(TEXTS), TEXTS, 3, seed=9, timed=Judge([rm], timeout_s=0.25).timed)


# ---------------------------------------------------------------- the other user code of a round: aggregator, builder
BUILDER = '''import pathlib
import time

CALLS = []


def pairs(scores, generator):
    CALLS.append(time.monotonic())
    if len(CALLS) == SLOW_CALL:  # note when the slow call started, beside this file
        pathlib.Path(__file__).with_suffix(".started").write_text(repr(time.monotonic()))
        time.sleep(2.0)
    for p, row in enumerate(scores.tolist()):
        order = sorted(range(len(row)), key=lambda k: row[k])
        if row[order[-1]] > row[order[0]]:
            yield p, order[-1], order[0]
'''


def _builder(tmp_path, slow_call: int) -> str:
    path = tmp_path / f"builder_{slow_call}.py"
    path.write_text(BUILDER.replace("SLOW_CALL", str(slow_call)))
    return f"{path}:pairs"


def test_a_user_pair_builder_past_judge_timeout_s_stops_the_run_naming_it_and_within_it_trains_the_same(tmp_path):
    """A user pair_builder is user code of the round as a judge is: its second call sleeps 2 s under judge_timeout_s
    0.5 and the run stops ~0.5 s into it with the error naming the builder, the limit and the scores' shape (before:
    it waited); a fast builder under the limit (its triples yielded lazily, listed in the worker) trains the same
    weights as without a limit."""
    spec = _builder(tmp_path, 2)
    run = tiny_run(tiny_cfg(tmp_path / "slow", judge_timeout_s=LIMIT_S, pair_builder=spec))
    with pytest.raises(JudgeTimeoutError) as err:
        run.train()
    waited = time.monotonic() - float((tmp_path / "builder_2.started").read_text())
    assert LIMIT_S <= waited < SLEEP_S - 0.5, waited  # it did not wait for the builder to return
    assert str(err.value) == (
        f"pair_builder {spec!r} did not return within judge_timeout_s = 0.5 s in round 2 (optimizer step 3) (one call "
        "on scores of shape (6, 3)); the run stops (the call is abandoned in a background thread: Python cannot stop "
        "it). Fix the builder so that it returns, or raise judge_timeout_s (null: no limit) if a call this long is "
        "expected.")
    assert not (tmp_path / "slow" / "rounds" / "2.jsonl").exists()
    fast = _builder(tmp_path, 0)
    weights = []
    for name, over in (("plain", {}), ("limited", dict(judge_timeout_s=30.0))):
        run = tiny_run(tiny_cfg(tmp_path / name, pair_builder=fast, **over))
        run.train()
        weights.append(run.policy.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_reward_aggregator_past_the_limit_stops_naming_it_and_within_it_weighs_the_same():
    """PRO's prompt-aware weights (Judge(weights=callable)) run under judge_timeout_s like the judges."""
    def lengths(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    def vowels(prompts, completions, **kwargs):
        return [float(sum(ch in "aeiou" for ch in c)) for c in completions]

    def by_prompt(prompts):
        return [[0.25, 0.75] if p == "p" else [1.0, 0.0] for p in prompts]

    prompts, completions = ["p", "p", "q"], ["banana", "kiwi", "apple"]
    inline = Judge([lengths, vowels], weights=by_prompt)(prompts, completions)[0]
    assert torch.equal(Judge([lengths, vowels], weights=by_prompt, timeout_s=30.0)(prompts, completions)[0], inline)
    assert inline.tolist() == [0.25 * 6 + 0.75 * 3, 0.25 * 4 + 0.75 * 2, 5.0]

    def slow_weights(prompts):
        time.sleep(SLEEP_S)
        return by_prompt(prompts)

    judge = Judge([lengths, vowels], weights=slow_weights, timeout_s=0.25)
    judge.where = "round 2 (optimizer step 3)"
    start = time.monotonic()
    with pytest.raises(JudgeTimeoutError) as err:
        judge(prompts, completions)
    assert time.monotonic() - start < SLEEP_S - 0.5
    assert str(err.value).startswith(f"reward aggregator 'slow_weights' ({__file__}) did not return within "
                                     "judge_timeout_s = 0.25 s in round 2 (optimizer step 3) (one call on 3 "
                                     "completion(s)); the run stops")
