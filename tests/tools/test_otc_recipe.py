"""The OTC recipe (task: otc): its synthetic tool task, the §41 properties through the reward the run uses, the
shipped config at test size, refusal of an existing state, and resume (after a stage and mid-GRPO) = uninterrupted."""
import json
import random

import pytest
import torch

from preflab.cli import main
from preflab.errors import ConfigError
from preflab.loops.judge import Judge
from preflab.tool_use.otc_task import (ANSWER_PATTERN, correctness_reward, final_answer, make_questions,
                                       prompt_rows, sft_traces, trace)
from preflab.tools import Calculator
from preflab.verifiers.otc import OTCReward, otc_grpo_tool_reward

TINY = {"n_train": 120, "n_heldout": 6, "hidden_size": 32, "sft_steps": 12, "sft_batch_size": 8, "grpo_steps": 3,
        "prompts_per_generation": 2, "num_generations": 3, "max_completion_length": 40, "save_steps": 1}


def test_questions_traces_and_judges():
    train = make_questions(300, seed=0)
    held = make_questions(40, seed=1, exclude={q["question_id"] for q in train})
    assert not {q["question_id"] for q in train} & {q["question_id"] for q in held}
    assert 0.35 < sum(q["needs_tool"] for q in train) / len(train) < 0.65
    for q in train:
        assert q["answer"] == Calculator().call({"expression": q["expression"]})
        assert q["needs_tool"] == (not q["expression"].isdigit())
    rows = sft_traces(train, seed=0)
    calls = [r["completion"].count("[calc:") for r in rows]
    for q, r, m in zip(train, rows, calls):  # every trace is correct; tool questions call at least once
        assert r["prompt"] == f"Q: {q['expression']}\n" and final_answer(r["completion"]) == q["answer"]
        assert m >= (1 if q["needs_tool"] else 0) and m <= (3 if q["needs_tool"] else 2)
    waste = sum(m - (1 if q["needs_tool"] else 0) for q, m in zip(train, calls)) / len(train)
    assert waste > 1.2                                   # over-calling: 1.5 redundant calls per trace expected
    q = {"expression": "37*48", "answer": "1776"}
    assert trace(q, 2) == "[calc: 37*48]=1776\n[calc: 37*48]=1776\nanswer: 1776"
    assert correctness_reward(["p"] * 2, ["answer: 1776", "answer: 1777"], answer=["1776"] * 2) == [1.0, 0.0]
    assert prompt_rows([train[0]])[0].keys() == {"prompt", "answer", "question_id"}


def test_otc_reward_is_a_reward_function_to_the_online_judge():
    """Regression: OTCReward kept r_phi in an attribute named `score`, so preflab's Judge took it for a reward model
    (obj.score(prompts, responses)) and every online judgment failed."""
    reward = OTCReward(mode="grpo", c=4.0, answer_pattern=ANSWER_PATTERN)
    judge = Judge([reward], cache=False)
    assert judge.kinds == ["function"]
    scores, _ = judge(["Q: 2+3\n"] * 3, ["answer: 5", "[calc: 2+3]=5\nanswer: 5", "answer: 6"], [0, 0, 0],
                      [{"answer": "5", "question_id": "2+3", "num_tool_calls": m} for m in (0, 1, 0)])
    assert scores.tolist() == pytest.approx([1.0, otc_grpo_tool_reward(1, 0, 4.0), 0.0])


def test_spec_checks_running_minimum_and_peak():
    """§41 4. Checks: the group (correct, m) = (1,1), (1,2), (0,0), (1,3) gives n = 1, r = [1, 0.8660, 0, 0.7071],
    A = [0.8010, 0.5001, -1.4444, 0.1433] through the judge's num_tool_calls column; with the running-minimum tracker
    every correct rollout has m >= n; the reward of a correct rollout peaks at m = n."""
    reward = OTCReward(mode="grpo", c=1.0, answer_pattern=ANSWER_PATTERN)
    group = [(1, 1), (1, 2), (0, 0), (1, 3)]
    r = reward(["q"] * 4, [f"answer: {5 if ok else 6}" for ok, _ in group], answer=["5"] * 4,
               question_id=["q"] * 4, num_tool_calls=[m for _, m in group])
    assert r == pytest.approx([1, 0.8660, 0, 0.7071], abs=1e-4)
    t = torch.tensor(r, dtype=torch.float64)
    assert ((t - t.mean()) / (t.std() + 1e-4)).tolist() == pytest.approx([0.8010, 0.5001, -1.4444, 0.1433], abs=1e-4)
    rng = random.Random(0)
    for _ in range(200):
        qid = f"q{rng.randint(0, 5)}"
        group = [(rng.random() < 0.6, rng.randint(0, 5)) for _ in range(4)]
        values = reward(["x"] * 4, [f"answer: {5 if ok else 6}" for ok, _ in group], answer=["5"] * 4,
                        question_id=[qid] * 4, num_tool_calls=[m for _, m in group])
        n = reward.tracker.optimum(qid)
        for (ok, m), v in zip(group, values):
            if ok:
                assert m >= n and v <= 1.0 and (v == pytest.approx(1.0)) == (m == n)
            else:
                assert v == 0.0


def run_recipe(out, **params):
    from preflab.tool_use.otc import run_otc

    return run_otc(str(out), quiet=True, **{**TINY, **params})


def weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
def test_shipped_config_runs_refuses_an_existing_state_and_resumes_exactly(tmp_path, capsys, monkeypatch):
    full = tmp_path / "full"
    tiny = "{" + ", ".join(f"{k}: {v}" for k, v in TINY.items()) + "}"
    assert main(["train", "examples/tools/otc.yaml", f"output_dir={full}", f"recipe_params={tiny}"]) == 0
    summary = json.loads((full / "summary.json").read_text())
    assert summary["metric_name"] == "tool_productivity" and summary["baseline"]
    for key in ("accuracy", "mean_tool_calls"):
        assert 0 <= summary[f"{key}_before"] and 0 <= summary[f"{key}_after"]
        assert f"control_{key}_after" in summary
    state = json.loads((full / "otc_state.json").read_text())
    assert sorted(state["finished"]) == ["control", "grpo", "sft"]
    assert (full / "grpo" / "metrics.jsonl").exists() and (full / "control" / "online-state").is_dir()
    # an existing state without resume is refused
    assert main(["train", "examples/tools/otc.yaml", f"output_dir={full}", f"recipe_params={tiny}"]) == 2
    assert "resume_from_checkpoint" in capsys.readouterr().err

    # interrupted after SFT, then in the middle of the GRPO stage (after its step-1 checkpoint), then resumed
    cut = tmp_path / "cut"
    assert sorted(run_recipe(cut, stop_after_stage="sft")["finished"]) == ["sft"]
    from preflab.online.run import OnlineRun

    original = OnlineRun.micro_batches

    def stop(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(OnlineRun, "micro_batches", stop)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(cut, resume=True)
    monkeypatch.setattr(OnlineRun, "micro_batches", original)
    assert (cut / "grpo" / "checkpoint-2").is_dir() and "grpo" not in json.loads(
        (cut / "otc_state.json").read_text())["finished"]
    with pytest.raises(ConfigError, match="differ"):
        run_recipe(cut, resume=True, grpo_steps=4)
    resumed = run_recipe(cut, resume=True)
    assert json.loads((cut / "grpo" / "summary.json").read_text())["resumed_from_step"] == 2   # not restarted
    for key, value in summary.items():
        if "runtime" not in key:
            assert resumed[key] == value, key
    for stage in ("sft", "grpo", "control"):
        a, b = weights(full / stage), weights(cut / stage)
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    # the model the recipe started from (RUN/start/, preflab.recipe_start): saved once by the interrupted session and
    # equal to the uninterrupted run's; SFT trained away from it
    a, b, sft = weights(full / "start"), weights(cut / "start"), weights(full / "sft")
    assert a.keys() == b.keys() == sft.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], sft[k]) for k in a)
    assert json.loads((full / "start.json").read_text()) == json.loads((cut / "start.json").read_text())


def test_evaluation_counts_tool_productivity_over_calls_and_accuracy_per_kind():
    """evaluate_tool_use by hand on four scripted rollouts: TP = correct answers / executed calls (the paper's
    Sec. 4), and each kind's accuracy and mean calls over that kind's questions only."""
    from preflab.models.tiny import tiny_tokenizer
    from preflab.tool_use.otc_task import evaluate_tool_use

    tokenizer = tiny_tokenizer("char")
    questions = [{"question_id": "12+30", "expression": "12+30", "answer": "42", "needs_tool": True},
                 {"question_id": "11*11", "expression": "11*11", "answer": "121", "needs_tool": True},
                 {"question_id": "77", "expression": "77", "answer": "77", "needs_tool": False},
                 {"question_id": "501", "expression": "501", "answer": "501", "needs_tool": False}]
    outputs = [("answer: 42", 3, 0), ("answer: 122", 1, 1), ("answer: 77", 0, 0), ("answer: 501", 2, 0)]

    class Scripted:  # what a ToolRolloutGenerator leaves: the completions and each one's executed calls
        def generate(self, prompts, k, seed, do_sample):
            assert len(prompts) == len(questions) and k == 1 and not do_sample
            self.last_columns = [{"num_tool_calls": m, "tool_errors": e} for _, m, e in outputs]
            return [tokenizer(text, add_special_tokens=False).input_ids for text, _, _ in outputs]

    got = evaluate_tool_use(None, tokenizer, Scripted(), questions)
    assert got["accuracy"] == 0.75 and got["mean_tool_calls"] == 1.5 and got["tool_errors"] == 1
    assert got["tool_productivity"] == 3 / 6                          # 3 correct answers over 6 executed calls
    assert got["needs_tool"] == {"accuracy": 0.5, "mean_tool_calls": 2.0}
    assert got["no_tool"] == {"accuracy": 1.0, "mean_tool_calls": 1.0}
    assert [e["correct"] for e in got["examples"]] == [True, False, True, True]
