"""The online run (task: online) on TrainingRun: exact resume mid-round, judge failures, GPO's centred scores."""
import json
import math

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError, PreflabError
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.online.run import OnlineRun
from preflab.online.tasks import Task

PROMPTS = [f"say {w}\n" for w in ("abc", "de", "fgh", "ij", "klm", "no", "pq", "rst")]


def e_judge(prompts, completions, **kwargs):
    """More letters 'e' is better, then shorter: few ties."""
    return [c.count("e") - 0.01 * len(c) for c in completions]


def tiny_cfg(tmp_path, **over):
    base = dict(task="online", trainer="online_dpo", online_task="dataset", dataset_name="unused", reward_funcs="x",
                model_name_or_path="builtin:tiny-llama", learning_rate=1e-2, lr_scheduler_type="linear",
                max_steps=6, num_generations=3, prompts_per_generation=6, steps_per_generation=2,
                per_device_train_batch_size=2, gradient_accumulation_steps=2, max_completion_length=6,
                logging_steps=1, disable_tqdm=True, use_cpu=True, seed=3, output_dir=str(tmp_path))
    if over.get("trainer") == "mcts_dpo":  # it samples mcts_num_actions per expansion and refuses num_generations
        del base["num_generations"]
    return config_from_dict({**base, **over})


def tiny_run(cfg, judge=e_judge):
    tok = tiny_tokenizer("char")
    policy = tiny_causal_lm(tok, hidden_size=32, seed=1)
    return OnlineRun(cfg, policy=policy, tokenizer=tok, task=Task(PROMPTS, [judge]))


@pytest.mark.parametrize("over", [dict(trainer="online_dpo"),
                                  dict(trainer="iterative_dpo"),
                                  dict(trainer="dapo", beta=0.04, steps_per_generation=2, num_iterations=2,
                                       max_steps=8),
                                  dict(trainer="upo", upo_selection="sample"),
                                  dict(trainer="mcts_dpo", mcts_step_delimiter=" ", mcts_iterations=3)])
def test_resume_mid_round_gives_the_same_weights(tmp_path, over, stop_at_step):
    """A run stopped right after a mid-round checkpoint and resumed ends with the uninterrupted run's weights."""
    full = tiny_run(tiny_cfg(tmp_path / "full", **over))
    full.train()
    cfg = tiny_cfg(tmp_path / "cut", save_steps=3, **over)
    cut = tiny_run(cfg)
    with stop_at_step(cut, 4):
        cut.train()
    assert (tmp_path / "cut" / "checkpoint-3").is_dir() and (tmp_path / "cut" / "online-state" / "step-3").is_dir()
    resumed = tiny_run(tiny_cfg(tmp_path / "cut", save_steps=3, resume_from_checkpoint=True, **over))
    summary = resumed.train()
    assert summary["resumed_from_step"] == 3
    a, b = full.policy.state_dict(), resumed.policy.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert any(float((a[k] - tiny_causal_lm(tiny_tokenizer("char"), hidden_size=32, seed=1).state_dict()[k])
                     .abs().max()) > 1e-3 for k in a)          # and the weights did move
    # the judgment cache came back with the checkpoint: the resumed run's judge saw only later rounds' new texts
    assert resumed.judge.calls == full.judge.calls


def test_resume_from_a_checkpoint_of_another_run_folder(tmp_path, stop_at_step):
    """resume_from_checkpoint: <other run>/checkpoint-N reads the online state beside that checkpoint (it looked in
    the new output_dir and said the checkpoint was not written by an online run) and ends as the straight run."""
    full = tiny_run(tiny_cfg(tmp_path / "full"))
    full.train()
    cut = tiny_run(tiny_cfg(tmp_path / "cut", save_steps=3))
    with stop_at_step(cut, 4):
        cut.train()
    moved = tiny_run(tiny_cfg(tmp_path / "elsewhere", save_steps=3,
                              resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-3")))
    assert moved.train()["resumed_from_step"] == 3
    a, b = full.policy.state_dict(), moved.policy.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert moved.judge.calls == full.judge.calls


@pytest.mark.slow
def test_online_run_honours_logging_first_step(tmp_path):
    """The online run shares the driver's logging schedule: with logging_first_step a row after step 1 (the same
    loss as a run logging every step), then every logging_steps and at the last step."""
    tiny_run(tiny_cfg(tmp_path / "every")).train()
    tiny_run(tiny_cfg(tmp_path / "first", logging_steps=4, logging_first_step=True)).train()
    every = [json.loads(line) for line in (tmp_path / "every" / "metrics.jsonl").read_text().splitlines()]
    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "first" / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}
    assert sorted(rows) == [1, 4, 6]
    first = next(r for r in every if r.get("step") == 1 and "loss" in r)
    assert rows[1]["loss"] == pytest.approx(first["loss"], abs=1e-6)


def test_judge_failures_are_dropped_counted_and_stop_the_run(tmp_path):
    calls = {"n": 0}

    def flaky(prompts, completions, **kwargs):
        calls["n"] += 1
        if len(prompts) > 1:
            raise RuntimeError("batch failed")
        if completions[0].count("a") % 2:
            raise RuntimeError("this one fails")
        return [float(len(completions[0]))]

    run = tiny_run(tiny_cfg(tmp_path / "ok", max_steps=2, max_judge_failure_fraction=1.0), judge=flaky)
    summary = run.train()
    assert summary["judge"]["judge/failed"] == summary["online"]["judge_dropped"] > 0
    nan_judge = lambda prompts, completions, **kw: [float("nan")] * len(prompts)  # noqa: E731
    with pytest.raises(PreflabError, match="max_judge_failure_fraction"):
        tiny_run(tiny_cfg(tmp_path / "bad", max_steps=2), judge=nan_judge).train()


DEMO = "builtin:demo-sft"


def test_online_config_errors():
    with pytest.raises(ConfigError, match="Did you mean 'grpo'"):
        config_from_dict(dict(task="online", trainer="grp", online_task="demo", max_steps=2, model_name_or_path=DEMO))
    with pytest.raises(ConfigError, match="max_steps"):
        config_from_dict(dict(task="online", online_task="demo", model_name_or_path=DEMO))
    cfg = config_from_dict(dict(task="online", trainer="dapo", online_task="demo", max_steps=2, epsilon=0.3,
                                model_name_or_path=DEMO))
    assert cfg.loss_type == "grpo" and cfg.objective_params["loss_type"] == "dapo"
    assert cfg.objective().epsilon == 0.3


def test_gpo_scores_are_centred_and_push_the_rejected_response_down(tmp_path):
    """GPO's scores are the official pipeline's s_i = (1/K) sum_j (T_ij - T_ji) with T = log(P / (1 - P)) the
    preference log-odds (general-preference-model@a376d95 compute_score_from_raw.py: raw GPM score table, not
    probabilities). Rewards (1, 0.5, 0) at preference_temperature 1: T_ij = r_i - r_j, s = 2 (r - mean r) =
    (1, 0, -1); the former 2 p_i - 1 gave 0.2357. Centred, so at policy = pi_t dL/dS_rejected has SPPO's sign
    (a descent step lowers the rejected response); the uncentred win rate p_i would give the opposite sign."""
    from types import SimpleNamespace

    from preflab.loops.rollout import PromptRow
    from preflab.objectives import get_objective
    from preflab.objectives.base import PairBatch
    from preflab.online.trainers import TRAINERS, build_examples, preference_matrix

    rows = [PromptRow(0, "p", [1, 5], {})]
    scores = torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64)
    matrices = lambda p, valid: preference_matrix(scores[p, valid], 1.0)  # noqa: E731
    made = {name: build_examples(TRAINERS[name], SimpleNamespace(), rows, [[[7], [8], [9]]], scores, matrices,
                                 torch.Generator())[0][0] for name in ("gpo", "sppo")}
    assert made["gpo"].completions == [[7], [9]]
    assert made["gpo"].extras == pytest.approx({"score_chosen": 1.0, "score_rejected": -1.0}, abs=1e-12)
    sig = lambda x: 1 / (1 + math.exp(-x))
    assert made["sppo"].extras == pytest.approx({"score_chosen": (0.5 + sig(0.5) + sig(1.0)) / 3,
                                                 "score_rejected": (0.5 + sig(-0.5) + sig(-1.0)) / 3})

    def grad_rejected(name, extras):
        chosen, rejected = torch.tensor([-3.0], requires_grad=True), torch.tensor([-4.0], requires_grad=True)
        batch = PairBatch.from_sums(chosen, rejected, chosen.detach(), rejected.detach(),
                                    {k: torch.tensor([v]) for k, v in extras.items()})
        get_objective(name, beta=0.1)(batch).loss.backward()
        return float(rejected.grad)

    assert grad_rejected("sppo", made["sppo"].extras) > 0 and grad_rejected("gpo", made["gpo"].extras) > 0
    assert grad_rejected("gpo", made["sppo"].extras) < 0          # the old defect: uncentred win rates

    # and in a run: one GPO step lowers the rejected responses' log-ratio to pi_t and raises the chosen ones'
    run = tiny_run(tiny_cfg(tmp_path, trainer="gpo", beta=0.5, max_steps=1, preference_temperature=1.0,
                            steps_per_generation=1,
                            learning_rate=1e-3, gradient_accumulation_steps=1, per_device_train_batch_size=8))
    run.train()
    exs = run.pending.examples
    now = run._token_logps(run._policy_scores, [(e.prompt_ids, c) for e in exs for c in e.completions])
    h = [sum(a) - sum(b) for a, b in zip(now, [r for e in exs for r in e.ref])]
    chosen, rejected = h[0::2], h[1::2]
    assert sum(rejected) / len(rejected) < 0 < sum(chosen) / len(chosen)


def test_gpo_scores_are_the_gpm_score_table_and_refuse_hard_labels():
    """With a GPM judge P = sigmoid(S / tau) for a skew-symmetric score table S, GPO's score is the official
    (1/K) sum_j (S_ij - S_ji) / tau = (2/K) sum_j S_ij / tau exactly; hard labels (temperature 0) are refused."""
    from types import SimpleNamespace

    from preflab.loops.rollout import PromptRow
    from preflab.online.trainers import (
        TRAINERS,
        build_examples,
        preference_matrix,
        reward_log_odds,
    )

    rows = [PromptRow(0, "p", [1, 5], {})]
    S = torch.tensor([[0.0, 0.3, -0.8], [-0.3, 0.0, 0.5], [0.8, -0.5, 0.0]], dtype=torch.float64)
    tau = 0.1
    scores = torch.zeros(1, 3, dtype=torch.float64)
    ex = build_examples(TRAINERS["gpo"], SimpleNamespace(), rows, [[[7], [8], [9]]], scores,
                        lambda p, valid: torch.sigmoid(S / tau), torch.Generator())[0][0]
    expected = (2 / 3) * S.sum(1) / tau                           # (2/3) (-0.5, 0.2, 0.3) / 0.1
    assert ex.completions == [[9], [7]]
    assert ex.extras == pytest.approx({"score_chosen": float(expected[2]), "score_rejected": float(expected[0])})
    # the judge's exact log-odds (GPMPreference/BTPreference.log_odds_matrix) beat a saturated probability:
    big = 50 * S                                               # s/tau up to 400: sigmoid(.) = 1.0 in float64
    ex = build_examples(TRAINERS["gpo"], SimpleNamespace(), rows, [[[7], [8], [9]]], scores,
                        lambda p, valid: torch.sigmoid(big / tau), torch.Generator(),
                        log_odds=lambda p, valid: big / tau)[0][0]
    assert ex.extras == pytest.approx({"score_chosen": 50 * float(expected[2]),
                                       "score_rejected": 50 * float(expected[0])})
    # temperature 0: all-tied scores give no pair (log-odds 0), any strict preference is refused
    tied = reward_log_odds(torch.tensor([0.5, 0.5, 0.5]), 0.0)
    assert torch.equal(tied, torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="preference_temperature > 0"):
        reward_log_odds(torch.tensor([1.0, 0.5, 0.5]), 0.0, row_id=4)
    hard = lambda p, valid: preference_matrix(torch.tensor([1.0, 0.5, 0.0]), 0.0)
    with pytest.raises(ConfigError, match="preference_temperature > 0"):
        build_examples(TRAINERS["gpo"], SimpleNamespace(), rows, [[[7], [8], [9]]], scores, hard, torch.Generator())


def test_game_preferences_errors_name_the_entry():
    base = dict(task="online", online_task="game", trainer="inpo", max_steps=2, model_name_or_path="builtin:tiny-llama")
    with pytest.raises(ConfigError, match=r"game_preferences\[0\]\[1\] \+ game_preferences\[1\]\[0\] = 1.2"):
        config_from_dict({**base, "game_preferences": [[0.5, 0.7], [0.5, 0.5]]})
    with pytest.raises(ConfigError, match="square"):
        config_from_dict({**base, "game_preferences": [[0.5, 0.7, 0.1], [0.3, 0.5, 0.2]]})
    with pytest.raises(ConfigError, match=r"game_preferences\[0\]\[1\] = -0.5 is not a probability"):
        config_from_dict({**base, "game_preferences": [[0.5, -0.5], [1.5, 0.5]]})
    with pytest.raises(ConfigError, match="trains on sampled text"):
        config_from_dict({**base, "trainer": "grpo", "game_preferences": [[0.5, 0.5], [0.5, 0.5]]})


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# The 2-process online_dpo / dapo runs (2 processes equal one, a 2-process checkpoint resumed on one, the clip-ratio
# extrema): tests/online/test_trainers_two_processes.py, in its launch.


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_uninterrupted_run(tmp_path, kill_when):
    """SIGKILL an online run (a subprocess) once a mid-round checkpoint exists; resuming it ends with the
    uninterrupted run's weights (<= 1e-6)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "online_tiny_run.py"
    args = ["max_steps=60", "save_steps=5", "learning_rate=1e-3"]
    steps = dict(max_steps=60, save_steps=5, learning_rate=1e-3)  # `args`, for the runs in this process
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(out), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # step 15: mid-round (2 steps per round)
    with kill_when(proc, out / "checkpoint-15" / "COMPLETE", within_s=240):
        tiny_run(tiny_cfg(tmp_path / "full", **steps)).train()  # meanwhile, the uninterrupted run in this process
    assert not (out / "model.safetensors").exists(), "killed too late to test resume"
    tiny_run(tiny_cfg(out, **steps, resume_from_checkpoint=True)).train()  # the resume: in this process
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] >= 15
    a, b = _weights(tmp_path / "full"), _weights(out)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_dataset_task_through_the_cli(tmp_path):
    """online_task: dataset from `preflab train` key=value options: prompts from a jsonl file (an extra column
    reaches the reward function), an importable judge, builtin:tiny-llama; the rounds file holds every completion."""
    from preflab.cli import main

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"echo: {w}\n", "target": w.upper()}) + "\n"
                            for w in ("sun cat", "map dog", "red box", "pen cup")))
    out = tmp_path / "run"
    rc = main(["train", "task=online", "trainer=online_dpo", "online_task=dataset", f"dataset_name={data}",
               "reward_funcs=preflab.online.tasks:demo_true_reward", "model_name_or_path=builtin:tiny-llama",
               "max_steps=2", "num_generations=3", "prompts_per_generation=4", "per_device_train_batch_size=2",
               "max_completion_length=4", "use_cpu=true", "disable_tqdm=true", f"output_dir={out}"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["online"]["completions"] == 2 * 4 * 3
    rounds = [json.loads(x) for x in (out / "rounds" / "1.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in rounds) == sorted(f"echo: {w}\n" for w in ("sun cat", "map dog", "red box",
                                                                                  "pen cup"))
    assert all(len(r["completions"]) == 3 and all(s == 0.0 for s in r["scores"]) for r in rounds)  # random model
    with pytest.raises(ConfigError, match="cannot import"):
        tiny_run_cfg = tiny_cfg(tmp_path / "bad", reward_funcs="preflab.nope:f")
        from preflab.online.tasks import load_task

        load_task(tiny_run_cfg)


def test_report_draws_the_online_panels(tmp_path):
    from preflab.report.html import write_report

    tiny_run(tiny_cfg(tmp_path / "run", max_steps=2)).train()
    html = write_report([tmp_path / "run"], tmp_path / "report.html").read_text()
    assert "Online reward" in html and "KL to the reference (online)" in html
    assert "Policy distribution (game)" not in html          # drawn only for runs that logged it


def test_grpo_with_a_preference_judge_notes_once_that_the_mean_reward_is_one_half(tmp_path, capsys):
    """A GPM judge gives reward 1/2 per group by construction; users read it as a bug: the run says so at start."""

    class Table:  # a preference model: longer completions win
        def win_rate_matrix(self, prompt, responses):
            n = torch.tensor([float(len(r)) for r in responses])
            return torch.sigmoid(n[:, None] - n[None, :])

    tiny_run(tiny_cfg(tmp_path, trainer="grpo", beta=0.0), judge=Table())
    out = capsys.readouterr().out
    assert out.count("judge Table is a preference model") == 1 and "mean reward is 1/2 by construction" in out
    tiny_run(tiny_cfg(tmp_path / "fn", trainer="grpo", beta=0.0))
    assert "preference model" not in capsys.readouterr().out


@pytest.mark.parametrize("share_prompt", [True, False])
def test_pair_layout_reused_only_for_the_same_tokens(share_prompt):
    """OnlineRun._pair_layout keeps recent host layouts: examples holding the same tokens (new objects) get the kept
    layout, equal to a fresh collation; other tokens get their own layout, and the first one is still kept."""
    from types import SimpleNamespace

    from preflab.online.examples import Example, pair_layout, shared_pair_layout

    run = SimpleNamespace(share_prompt=share_prompt, pad_id=0, _rounded=lambda layout: layout)
    make = lambda c, r: [Example(0, [1, 2], [[3, 4], [5]]), Example(1, [1], [c, r])]  # noqa: E731
    build = shared_pair_layout if share_prompt else pair_layout
    first = OnlineRun._pair_layout(run, make([6], [7, 8]))
    again = OnlineRun._pair_layout(run, make([6], [7, 8]))
    other = OnlineRun._pair_layout(run, make([6], [7, 9]))
    fresh = build(make([6], [7, 9]), 0)
    assert again is first and other is not first
    assert torch.equal(other.input_ids, fresh.input_ids) and torch.equal(other.target_ids, fresh.target_ids)
    assert not torch.equal(other.target_ids, first.target_ids)
    assert OnlineRun._pair_layout(run, make([6], [7, 8])) is first


def test_grpo_family_logs_trls_step_time_as_the_windows_mean_step_wall_time(tmp_path):
    """TRL 1.16 GRPOTrainer logs step_time, the wall seconds of each optimizer step averaged over the logging window.
    Steps 0 and 2 are made 0.25 s slower (their micro-batches wait): each row's step_time lies between the window's
    mean added wait and the mean gap between the steps' starts; online_dpo (TRL's OnlineDPOTrainer logs none) has
    no step_time."""
    import time

    run = tiny_run(tiny_cfg(tmp_path / "dapo", trainer="dapo", beta=0.0, max_steps=4, logging_steps=2))
    starts, made = [], run.micro_batches

    def slow_micro_batches(step):
        starts.append(time.perf_counter())
        if step % 2 == 0:
            time.sleep(0.25)
        return made(step)

    run.micro_batches = slow_micro_batches
    run.train()
    starts.append(time.perf_counter())
    rows = [json.loads(x) for x in (tmp_path / "dapo" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in rows] == [2, 4]
    for row, first in zip(rows, (0, 2)):
        gaps = (starts[first + 2] - starts[first]) / 2
        assert 0.125 <= row["step_time"] <= gaps, (row["step_time"], gaps)
    other = tiny_run(tiny_cfg(tmp_path / "dpo", trainer="online_dpo", max_steps=2))
    other.train()
    assert all("step_time" not in json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines())


def test_a_flex_attention_policy_is_refused_on_cpu_when_the_run_is_built(tmp_path, monkeypatch):
    """torch 2.13 has no FlexAttention backward on CPU: refused naming the setting, not inside the first round's
    update (tests/perf/test_flex_attention.py has the offline Trainer's). Refused as the run is built, with train()'s
    message: before the custom-mask probe (six compiled FlexAttention forwards, ~4 CPU-s) and before the task's
    "before" evaluation, which the constructor ran in full (a whole generation pass) ahead of train()'s refusal."""
    from preflab.models import attention

    probed, evaluated = [], []
    monkeypatch.setattr(attention, "_probe_custom_mask", lambda base: probed.append(base) or (True, ""))
    tok = tiny_tokenizer("char")
    policy = tiny_causal_lm(tok, hidden_size=32, seed=1)
    policy.set_attn_implementation("flex_attention")
    task = Task(PROMPTS, [e_judge], evaluate=lambda model, tokenizer: evaluated.append(model) or {"reward": 0.0})
    with pytest.raises(ConfigError, match=r"attn_implementation: flex_attention \(the policy's\) cannot train on the "
                                          "CPU: torch .* has no FlexAttention backward on CPU.*use sdpa"):
        OnlineRun(tiny_cfg(tmp_path), policy=policy, tokenizer=tok, task=task)
    assert evaluated == [] and probed == []
    policy.set_attn_implementation("sdpa")  # the same run with sdpa: built, and its "before" evaluation ran once
    OnlineRun(tiny_cfg(tmp_path / "sdpa"), policy=policy, tokenizer=tok, task=task)
    assert evaluated == [policy]


def test_prompts_per_generation_above_the_prompts_is_said_and_the_round_size_recorded(tmp_path, capsys):
    """prompts_per_generation=12 over 8 prompts: every round silently took the 8 (min of the two), a smaller round
    than configured (chaos trial). Now said, and summary.json data.prompts_per_round holds the round's size."""
    summary = tiny_run(tiny_cfg(tmp_path / "big", prompts_per_generation=12, max_steps=2)).train()
    assert summary["data"]["prompts_per_round"] == 8 and summary["online"]["completions"] == 8 * 3
    assert ("preflab: note: prompts_per_generation=12 is more than the 8 prompts of the data, so every round takes "
            "all 8 once (8 x num_generations=3 completions), not prompts_per_generation.") in capsys.readouterr().out
    summary = tiny_run(tiny_cfg(tmp_path / "fits", prompts_per_generation=8, max_steps=2)).train()
    assert "prompts_per_round" not in summary["data"] and "is more than the" not in capsys.readouterr().out


def test_a_round_no_completion_of_which_was_scored_says_so_not_that_the_rewards_were_equal(tmp_path, capsys):
    """A judge returning None for everything with max_judge_failure_fraction: 1.0 trained on zero advantages and said
    "every prompt's 3 completions got the same reward (mean nan)" (chaos trial); now that nothing was scored."""
    def not_applicable(prompts, completions, **kwargs):
        return [None] * len(completions)

    summary = tiny_run(tiny_cfg(tmp_path, trainer="grpo", beta=0.0, max_steps=2, steps_per_generation=1,
                                max_judge_failure_fraction=1.0), judge=not_applicable).train()
    assert summary["online"]["no_signal_rounds"] == 2 and summary["online"]["judge_dropped"] == 2 * 6 * 3
    assert ("preflab: note: round 1: no completion was scored (the judges dropped every one: "
            "max_judge_failure_fraction = 1 let the round through), so every advantage is 0") in capsys.readouterr().out


def test_sppo_hard_label_win_rates_count_a_tie_as_one_half_among_the_scored_completions():
    """preference_temperature 0: P[i, j] = 1[r_i > r_j] + 1/2 1[r_i = r_j] (the diagonal and ties 1/2), and SPPO's
    p_i = (1/K) sum_j P[i, j] over the scored completions only, chosen / rejected mapped back to their indices."""
    from types import SimpleNamespace

    from preflab.loops.rollout import PromptRow
    from preflab.online.trainers import TRAINERS, build_examples, preference_matrix

    P = preference_matrix(torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64), 0.0)
    assert P.tolist() == [[0.5, 1.0, 0.5], [0.0, 0.5, 0.0], [0.5, 1.0, 0.5]]
    rows = [PromptRow(0, "p", [1, 5], {})]
    scores = torch.tensor([[2.0, math.nan, 0.0, 1.0]], dtype=torch.float64)
    matrices = lambda p, valid: preference_matrix(scores[p, valid], 0.0)  # noqa: E731
    (ex,), counts = build_examples(TRAINERS["sppo"], SimpleNamespace(), rows, [[[6], [7], [8], [9]]], scores,
                                   matrices, torch.Generator())
    # scored (2, 0, 1): P rows (1/2, 1, 1), (0, 1/2, 0), (0, 1, 1/2) -> p = (5/6, 1/6, 1/2)
    assert ex.completions == [[6], [8]] and counts["pairs/ties_dropped"] == 0
    assert ex.extras == pytest.approx({"score_chosen": 5 / 6, "score_rejected": 1 / 6}, abs=1e-12)


def test_gpo_reward_log_odds_are_the_reward_gaps_over_the_temperature():
    """reward_log_odds(r, t) = (r_i - r_j) / t, the log-odds of preference_matrix(r, t) read without the sigmoid
    round trip: equal to preference_log_odds of that matrix (t = 0.25, not 1, where / t and * t agree)."""
    from preflab.online.trainers import preference_log_odds, preference_matrix, reward_log_odds

    r = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    T = reward_log_odds(r, 0.25)
    assert T.tolist() == [[0.0, 2.0, 4.0], [-2.0, 0.0, 2.0], [-4.0, -2.0, 0.0]]
    assert torch.allclose(T, preference_log_odds(preference_matrix(r, 0.25)), atol=1e-12)
