"""Dataset rows without a `prompt` beside environment_factory (TRL 1.16's GRPOTrainer: such a row's prompt is one
empty user message, reset(**row) gets its other fields, and reset's text becomes the user message;
preflab.online.environments.default_prompts). Against TRL's own GRPOTrainer on the scripted model of
test_environment_factory.py; rows read from a file, counted, the seeded draws, the refusals and resume."""
import json
import random
import re
import sys
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError, DataError
from preflab.models.tiny import tiny_causal_lm
from preflab.online.environments import RESET_ONLY_PROMPT, reset_seed

sys.path.insert(0, str(Path(__file__).parent))
from test_environment_factory import (BASE, CALLS, Counter, Echo, EnvScripted, echo_reward, env_run,  # noqa: E402
                                      preflab_round, trl_round)
from test_tool_calling import tool_tokenizer  # noqa: E402


class KeyedCounter(Counter):
    """test_environment_factory's Counter, its reset logging exactly the keywords it was given."""

    def reset(self, **kwargs):
        CALLS.append(("KeyedCounter", "reset", tuple(sorted(kwargs))))
        self.total, self.target = 0, kwargs.get("target", 0)
        return f" (target {self.target})"


class DrawnCounter(Counter):
    """A row without a prompt whose task is drawn from Python's global random at reset: a target of 3..6."""

    def reset(self, **kwargs):
        CALLS.append(("DrawnCounter", "reset", tuple(sorted(kwargs))))
        self.total, self.target = 0, random.randint(3, 6)
        return f"reach (target {self.target})"


class Silent(Counter):
    def reset(self, **kwargs):
        return None


MIXED = [{"target": 5, "environment": "counter"},
         {"prompt": [{"role": "user", "content": "reach"}], "target": 4, "environment": "counter"},
         {"target": 7, "environment": "counter"},
         {"prompt": [{"role": "user", "content": "please shout"}], "target": 0, "environment": "echo"}]
NO_PROMPT = [{"target": 5}, {"target": 4}]


@pytest.mark.parametrize("rows, factories, judges", [
    (MIXED, {"counter": KeyedCounter, "echo": Echo}, (echo_reward,)),   # several environments, rows mixed
    (NO_PROMPT, KeyedCounter, ()),                                      # one factory, no row has a prompt
], ids=["mixed-rows-several-environments", "no-prompt-column-one-factory"])
def test_equals_trls_rows_without_a_prompt(tmp_path, monkeypatch, rows, factories, judges):
    """TRL's GRPOTrainer on rows without a `prompt` (its inputs as given; a mixed list too, decided per row): the
    prompts (reset's text as the whole user message, with the environment's tools), completions, tool masks, the
    environment calls in order (a row without a prompt is reset with its other fields only: `target`, not `prompt`,
    nor `environment` with several), and the per-function rewards equal preflab's."""
    pytest.importorskip("trl")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    K, budget = 2, 300
    CALLS.clear()
    p_trl, c_trl, m_trl, r_trl, names, _ = trl_round(rows, factories, judges, K, budget, tmp_path / "trl")
    trl_calls = list(CALLS)
    CALLS.clear()
    run = env_run(tmp_path / "run", monkeypatch, rows=rows, judges=judges, factory=factories,
                  prompts_per_generation=len(rows))
    p, c, m, _, per_fn, _ = preflab_round(run, K)
    assert p == p_trl and c == c_trl and m == m_trl
    assert CALLS == trl_calls
    want = [("target",) if "prompt" not in r else ("prompt", "target") for r in rows if r.get("environment") != "echo"]
    assert [c[2] for c in CALLS if c[:2] == ("KeyedCounter", "reset")] == [w for w in want for _ in range(K)]
    assert run.judge.names == names
    assert torch.equal(per_fn.isnan(), r_trl.isnan())
    assert torch.equal(per_fn.nan_to_num(-9).float(), r_trl.double().nan_to_num(-9).float())
    assert per_fn[:, -1].nan_to_num(-9).tolist()[:4] == [1.0, 1.0, 0.0, 0.0]  # target 5 reached, 4 missed
    first = run.tokenizer.decode(p[0])
    assert "<|user|>\n (target 5)</s>" in first and "tools: step</s>" in first  # the empty message + reset's text
    assert run.no_prompt_rows == {i for i, r in enumerate(rows) if "prompt" not in r}
    assert run.counts["environment_rows_without_prompt"] == len(run.no_prompt_rows)
    assert run.counts["environment_reset_prompts"] == len(run.no_prompt_rows)


def test_rows_without_a_prompt_are_reset_under_a_seed_per_prompt_and_round(tmp_path, monkeypatch):
    """A row without a prompt whose reset draws from the global random: round r's prompt p is reset under
    reset_seed(round seed of r, p) (as without a dataset), so its K rollouts get one target, the text is that draw,
    and the run's own random state is left as it was; a row with a prompt is reset unseeded (its own randomness)."""
    K = 2
    rows = [{"n": 0}, {"n": 1}, {"n": 2}]
    run = env_run(tmp_path, monkeypatch, rows=rows, judges=(), factory=DrawnCounter, prompts_per_generation=3)
    state = random.getstate()
    seen = []
    for r in range(2):
        CALLS.clear()
        out = run._start_environments(run.rows[::-1], K, r)  # p: the place in the round, not the row's number
        want = [random.Random(reset_seed(run._round_seed(r), p)).randint(3, 6) for p in range(3)]
        assert [e.target for e in run.round_environments] == [w for w in want for _ in range(K)]
        assert [run.tokenizer.decode(row.prompt_ids).split("<|user|>\n")[1].split("</s>")[0] for row in out] == \
            [f"reach (target {w})" for w in want]
        assert CALLS == [("DrawnCounter", "reset", ("n",))] * (K * 3)
        seen.append(want)
    assert seen[0] != seen[1]
    assert random.getstate() == state
    assert run.counts["environment_reset_prompts"] == 2 * 3


def write(tmp_path, name, rows):
    (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp_path / name)


def file_run(tmp_path, monkeypatch, train, held=None, factory="test_environment_no_prompt:KeyedCounter"):
    """load_task + OnlineRun on a dataset file (its turns, the held-out evaluation's too, EnvScripted)."""
    import preflab.online.generator as generator_module
    import preflab.online.tasks as tasks_module
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import load_task

    tok = tool_tokenizer()
    monkeypatch.setattr(generator_module, "make_generator",
                        lambda cfg, policy, tokenizer, acc=None: EnvScripted(tok, cfg.max_completion_length))
    monkeypatch.setattr(tasks_module, "EvalTurns",
                        lambda cfg, model, tokenizer, sampled: EnvScripted(tok, cfg.max_completion_length))
    cfg = config_from_dict({**BASE, "output_dir": str(tmp_path / "run"), "dataset_name": train,
                            "prompts_per_generation": 2, "environment_factory": factory,
                            **({"eval_dataset_name": held, "eval_steps": 100} if held else {})})
    task, _, _ = load_task(cfg, tok, None)
    return task, OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok, task=task)


def test_a_file_without_prompts_is_read_counted_and_reset_as_trl(tmp_path, monkeypatch, capsys):
    """A dataset file mixing rows without and with a prompt: each row without one stays without it (reset gets its
    other columns), counted in summary.json data.prompt_rows.forms (no_prompt) and said; the held-out rows without a
    prompt are reset the same way (the "before" evaluation). Without environment_factory the same file is
    refused (a prompt row needs 'prompt')."""
    train = write(tmp_path, "train.jsonl", [{"target": 5}, {"prompt": [{"role": "user", "content": "reach"}],
                                                            "target": 4}, {"target": 3}])
    CALLS.clear()
    task, run = file_run(tmp_path, monkeypatch, train, held=train)
    assert [c[2] for c in CALLS if c[1] == "reset"] == [("target",), ("prompt", "target"), ("target",)]
    assert run.before["reward"] == pytest.approx(1 / 3)  # the scripted steps sum to 5: only target 5 reached
    assert run.before["examples"][0]["prompt"] == [{"role": "user", "content": " (target 5)"}]
    assert task.prompts == [{"target": 5}, {"prompt": [{"role": "user", "content": "reach"}], "target": 4},
                            {"target": 3}]
    assert task.data_report["prompt_rows"]["forms"] == {"no_prompt": 2, "conversational": 1}
    # the placeholders are not compared: only the one row with a prompt is a held-out prompt seen in training
    assert task.data_report["overlap"] == {"duplicate_train_examples": 0, "eval_prompts_in_train": 1}
    said = capsys.readouterr().out
    assert f"2 of 3 training rows and 2 of 3 held-out rows of {train} have no 'prompt'" in said
    assert run.rows[0].prompt == list(RESET_ONLY_PROMPT) and run.no_prompt_rows == {0, 2}
    tok = tool_tokenizer()
    cfg = config_from_dict({**BASE, "output_dir": str(tmp_path / "plain"), "dataset_name": train,
                            "reward_funcs": "test_environment_factory:echo_reward"})
    from preflab.online.tasks import load_task

    with pytest.raises(DataError, match="row 0.*prompt"):
        load_task(cfg, tok, None)
    # a null prompt is not a missing one (TRL's row.get gives None and fails): refused, naming the row and the fix
    nulled = write(tmp_path, "null.jsonl", [{"target": 5}, {"prompt": None, "target": 4}])
    with pytest.raises(DataError, match=r"null.jsonl row 1 \(line 2\), field 'prompt': missing \(null\).*leave "
                                        "the 'prompt' key out"):
        file_run(tmp_path, monkeypatch, nulled)


def test_a_row_without_a_prompt_whose_reset_gives_no_text_is_refused(tmp_path, monkeypatch):
    """reset returning None (or "") for a row without a prompt: its prompt would be the empty message (TRL trains on
    it); refused naming the file, row and line. A row with a prompt may still return None (nothing appended)."""
    train = write(tmp_path, "train.jsonl", [{"prompt": [{"role": "user", "content": "reach"}], "target": 4},
                                            {"target": 5}])
    _, run = file_run(tmp_path, monkeypatch, train, factory="test_environment_no_prompt:Silent")
    with pytest.raises(ConfigError, match=r"^" + re.escape(f"{train} row 1 (line 2), a training prompt: the row has "
                                                           "no 'prompt', so its prompt is the text Silent.reset "
                                                           "returns") + r".*returned None"):
        run._start_environments(run.rows, 2)
    py = env_run(tmp_path / "py", monkeypatch, rows=[{"target": 5}], judges=(), factory=Silent,
                 prompts_per_generation=1)
    with pytest.raises(ConfigError, match=r"^training prompt row 0: the row has no 'prompt'.*returned None"):
        py._start_environments(py.rows, 2)


def test_resume_with_rows_without_a_prompt_is_exact(tmp_path, monkeypatch, stop_at_step):
    """Rows without a prompt drawing their task from the global random: a run stopped at a round's start (after 2
    steps, rounds of 2) and resumed draws the next round's targets again with the same seeds and ends with the
    uninterrupted run's weights."""
    rows = [{"n": i} for i in range(4)]

    def make(out, **over):
        return env_run(out, monkeypatch, rows=rows, judges=(), factory=DrawnCounter, vary=True, **over)

    full = make(tmp_path / "full")
    full.train()
    out = tmp_path / "cut"
    cut = make(out, save_strategy="steps", save_steps=1)
    with stop_at_step(cut, 2):
        cut.train()
    resumed = make(out, save_strategy="steps", save_steps=1, resume_from_checkpoint=True)
    got = resumed.train()
    assert got["resumed_from_step"] == 2 and got["online"]["environment_reset_prompts"] == 2 * 4
    assert [e.target for e in resumed.round_environments] == \
        [random.Random(reset_seed(resumed._round_seed(1), p)).randint(3, 6) for p in range(4) for _ in range(2)]
    a, b = full.policy.state_dict(), resumed.policy.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    start = tiny_causal_lm(tool_tokenizer(), hidden_size=32, seed=1).state_dict()
    assert any(float((a[k] - start[k]).abs().max()) > 1e-3 for k in a)


def test_held_out_rows_without_a_prompt_are_reset_under_a_seed_of_their_own(tmp_path, monkeypatch):
    """eval_dataset_name rows without a prompt drawing their task from the global random: held-out row p is reset
    under reset_seed(heldout_reset_seed_base(seed), p), so the evaluation before training (and every later one) poses
    those tasks; the row with a prompt is reset unseeded."""
    from preflab.online.environments import heldout_reset_seed_base

    train = write(tmp_path, "train.jsonl", [{"n": 0}, {"n": 1}])
    held = write(tmp_path, "held.jsonl", [{"n": 0}, {"n": 1}, {"n": 2}])
    _, run = file_run(tmp_path, monkeypatch, train, held=held, factory="test_environment_no_prompt:DrawnCounter")
    want = [random.Random(reset_seed(heldout_reset_seed_base(BASE["seed"]), p)).randint(3, 6) for p in range(3)]
    assert [ex["prompt"] for ex in run.before["examples"]] == \
        [[{"role": "user", "content": f"reach (target {w})"}] for w in want]
    assert len(set(want)) > 1


def test_grpo_train_takes_rows_without_a_prompt_from_python(tmp_path, monkeypatch):
    """preflab.online.api.grpo_train(policy, tok, [{"target": 5}, {"target": 4}], environment_factory=...): every
    reset gets `target` only, the rows are counted in summary.json, and get_reward scores the rollouts (target 5
    reached, 4 missed: a round's mean 1/2)."""
    import preflab.online.generator as generator_module
    from preflab.online.api import grpo_train

    tok = tool_tokenizer()
    monkeypatch.setattr(generator_module, "make_generator",
                        lambda cfg, policy, tokenizer, acc=None: EnvScripted(tok, cfg.max_completion_length))
    CALLS.clear()
    summary = grpo_train(tiny_causal_lm(tok, hidden_size=32, seed=1), tok, [dict(r) for r in NO_PROMPT],
                         environment_factory=KeyedCounter, loss_type="grpo", num_generations=3, max_steps=2,
                         max_completion_length=300, use_cpu=True, output_dir=str(tmp_path))
    resets = [c for c in CALLS if c[1] == "reset"]
    assert resets and set(resets) == {("KeyedCounter", "reset", ("target",))}
    assert summary["online"]["environment_rows_without_prompt"] == 2
    assert summary["online"]["environment_reset_prompts"] == len(resets) // 3
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["rewards/KeyedCounter/mean"] for m in metrics if "rewards/KeyedCounter/mean" in m] == [0.5, 0.5]
