"""environment_factory without a dataset (TRL 1.16's GRPOTrainer(train_dataset=None, environment_factory=...)): the
prompts are placeholders, one round's worth of empty user messages, whose text each rollout's reset gives
(preflab.online.environments: reset_only_prompts, reset_seed). Against TRL's own GRPOTrainer on the scripted model of
test_environment_factory.py; the prompt text from reset, the seeded draws, resume and the refusals."""
import json
import random
import sys
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.models.tiny import tiny_causal_lm
from preflab.online.environments import reset_only_prompts, reset_seed

sys.path.insert(0, str(Path(__file__).parent))
from test_environment_factory import BASE, CALLS, Counter, EnvScripted, env_script, preflab_round  # noqa: E402
from test_tool_calling import ids_of, tool_tokenizer  # noqa: E402


class Goal(Counter):
    """A task of its own, the same every reset: reach 5 (TRL's test: no randomness, so TRL gives the same prompts)."""

    def reset(self, **kwargs):
        CALLS.append(("Goal", "reset", json.dumps(kwargs)))
        self.total, self.target = 0, 5
        return "reach (target 5)"


class DrawnGoal(Counter):
    """A task drawn from Python's global random at reset: reach a target of 3..6 (the script's steps sum to 5 or 4)."""

    def reset(self, **kwargs):
        CALLS.append(("DrawnGoal", "reset", json.dumps(kwargs)))
        self.total, self.target = 0, random.randint(3, 6)
        return f"reach (target {self.target})"


class Silent(Counter):
    def reset(self, **kwargs):
        return None


class Blank(Counter):
    def reset(self, **kwargs):
        return ""


NO_DATA = {k: v for k, v in BASE.items() if k != "dataset_name"}


def reset_run(tmp_path, monkeypatch, factory=DrawnGoal, vary=False, **over):
    """An OnlineRun without a dataset (grpo_train(prompts=None)'s Task), its turns EnvScripted."""
    import preflab.online.generator as generator_module
    from preflab.online.api import reset_only
    from preflab.online.run import OnlineRun

    tok = tool_tokenizer()
    monkeypatch.setattr(generator_module, "make_generator",
                        lambda cfg, policy, tokenizer, acc=None: EnvScripted(tok, cfg.max_completion_length, vary))
    cfg = config_from_dict({**BASE, "output_dir": str(tmp_path), **over})
    return OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                     task=reset_only(cfg, [], factory), environment_factory=factory)


def test_equals_trls_round_without_a_dataset(tmp_path, monkeypatch):
    """TRL's GRPOTrainer with no train_dataset builds generation_batch_size / num_generations placeholder rows (one
    empty user message each); preflab's run has as many (prompts_per_generation). A round's prompts (reset's text as
    the user message, with the environment's tool), completions, tool masks, reset calls (one per rollout, with the
    placeholder prompt as the only keyword) and get_reward's rewards equal TRL's."""
    pytest.importorskip("trl")
    from trl import GRPOConfig, GRPOTrainer

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    K, P, budget = 2, 3, 300
    tok = tool_tokenizer()
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, num_generations=K, max_steps=2,
                      per_device_train_batch_size=K * P, max_completion_length=budget, beta=0.0, report_to=[])
    trainer = GRPOTrainer(model=tiny_causal_lm(tok, hidden_size=32, seed=1), args=args, processing_class=tok,
                          environment_factory=Goal)
    placeholders = list(trainer.train_dataset)
    assert placeholders == reset_only_prompts(P) == [{"prompt": [{"role": "user", "content": ""}]}] * P
    trainer._generate_single_turn = lambda ids, *a, **k: (
        [ids_of(tok, env_script(tok.decode(p)))[:budget] for p in ids], None)
    captured = {}
    original = trainer._calculate_rewards
    trainer._calculate_rewards = lambda *a, **k: captured.setdefault("per_fn", original(*a, **k))
    CALLS.clear()
    out = trainer._generate_and_score_completions([dict(r) for r in placeholders for _ in range(K)])
    trl_calls = list(CALLS)

    def kept(rows, masks):
        return [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(rows.tolist(), masks.tolist())]

    p_trl = kept(out["prompt_ids"], out["prompt_mask"])
    c_trl = kept(out["completion_ids"], out["completion_mask"])
    m_trl = kept(out["tool_mask"] * out["completion_mask"], out["completion_mask"])

    CALLS.clear()
    run = reset_run(tmp_path / "run", monkeypatch, factory=Goal, prompts_per_generation=P)
    assert len(run.rows) == P and CALLS == []
    p, c, m, _, per_fn, _ = preflab_round(run, K)
    assert p == p_trl and c == c_trl and m == m_trl
    assert CALLS == trl_calls
    assert [c for c in CALLS if c[1] == "reset"] == \
        [("Goal", "reset", '{"prompt": [{"role": "user", "content": ""}]}')] * (K * P)
    assert [c for c in CALLS if c[1] == "step"] == [("Counter", "step", n) for n in [2] * (K * P) + [3] * (K * P)]
    assert run.judge.names == trainer.reward_func_names == ["Goal"]
    assert per_fn[:, 0].tolist() == captured["per_fn"][:, 0].double().tolist() == [1.0] * (K * P)
    assert "tools: step</s>" in tok.decode(p[0]) and "<|user|>\nreach (target 5)</s>" in tok.decode(p[0])


def drawn_targets(run, r: int, n: int) -> list[int]:
    """The targets DrawnGoal's resets draw in round r's n prompts: random.randint(3, 6) first after seeding with
    reset_seed(round seed, p)."""
    return [random.Random(reset_seed(run._round_seed(r), p)).randint(3, 6) for p in range(n)]


def test_each_prompt_is_its_resets_text_drawn_under_a_seed_per_prompt_and_round(tmp_path, monkeypatch):
    """Round r's prompt p is the text DrawnGoal.reset returned, drawn from Python's random seeded with
    reset_seed(round seed of r, p): the K rollouts of a prompt get one target, the run's own random state is left as
    it was, and the reset prompts are counted (summary.json online.environment_reset_prompts)."""
    K, P = 2, 4
    run = reset_run(tmp_path, monkeypatch, prompts_per_generation=P)
    state = random.getstate()
    torch_state = torch.random.get_rng_state()
    seen = []
    for r in range(2):
        CALLS.clear()
        rows = run._start_environments(run.rows, K, r)
        texts = [run.tokenizer.decode(row.prompt_ids) for row in rows]
        want = drawn_targets(run, r, P)
        assert [t.split("<|user|>\n")[1].split("</s>")[0] for t in texts] == [f"reach (target {w})" for w in want]
        assert [e.target for e in run.round_environments] == [w for w in want for _ in range(K)]
        assert len(CALLS) == K * P
        seen.append(want)
    assert seen[0] != seen[1] and len(set(seen[0] + seen[1])) > 2  # other prompts, other rounds: other tasks
    assert random.getstate() == state and torch.equal(torch.random.get_rng_state(), torch_state)
    assert run.counts["environment_reset_prompts"] == 2 * P


def test_resume_without_a_dataset_is_exact(tmp_path, monkeypatch, stop_at_step):
    """Stopped mid-round (after 3 steps, rounds of 2) or at a round's start (after 2), then resumed: the weights and
    the count of reset prompts equal the uninterrupted run's; mid-round no environment is made again, at the start
    the next round's prompts are drawn again with the same seeds (the same targets)."""
    full = reset_run(tmp_path / "full", monkeypatch, vary=True)
    CALLS.clear()
    summary = full.train()
    full_resets = [c for c in CALLS if c[1] == "reset"]
    assert summary["online"]["environment_reset_prompts"] == 2 * 4
    for stop, resets_after in ((3, 0), (2, 4 * 2)):
        out = tmp_path / f"cut{stop}"
        cut = reset_run(out, monkeypatch, vary=True, save_strategy="steps", save_steps=1)
        with stop_at_step(cut, stop):
            cut.train()
        resumed = reset_run(out, monkeypatch, vary=True, save_strategy="steps", save_steps=1,
                            resume_from_checkpoint=True)
        CALLS.clear()
        got = resumed.train()
        assert got["resumed_from_step"] == stop and got["online"]["environment_reset_prompts"] == 2 * 4
        assert sum(c[1] == "reset" for c in CALLS) == resets_after
        if resets_after:  # the second round's instances, made again: the targets its seeds draw
            targets = [e.target for e in resumed.round_environments]
            assert targets == [w for w in drawn_targets(resumed, 1, 4) for _ in range(2)]
        a, b = full.policy.state_dict(), resumed.policy.state_dict()
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert len(full_resets) == 2 * 4 * 2
    start = tiny_causal_lm(tool_tokenizer(), hidden_size=32, seed=1).state_dict()
    assert any(float((a[k] - start[k]).abs().max()) > 1e-3 for k in a)


def test_refusals_without_a_dataset(tmp_path, monkeypatch):
    """A reset that gives no prompt (None, ""), several environments, no max_steps, eval_fraction, prompts=None
    without environments, and a config with neither dataset_name nor environment_factory: each refused, saying why."""
    from preflab.online.api import grpo_train

    for factory, said in ((Silent, "returned None"), (Blank, "returned ''")):
        run = reset_run(tmp_path / factory.__name__, monkeypatch, factory=factory)
        with pytest.raises(ConfigError, match=f"round 1's prompt 1 of 4 .*{said}; without a dataset"):
            run._start_environments(run.rows, 2, 0)
    with pytest.raises(ConfigError, match="several environments.*needs a dataset"):
        reset_run(tmp_path / "multi", monkeypatch, factory={"a": Goal, "b": DrawnGoal})
    with pytest.raises(ConfigError, match="needs max_steps > 0"):
        reset_run(tmp_path / "steps", monkeypatch, max_steps=-1)
    with pytest.raises(ConfigError, match="eval_fraction=0.5 holds out dataset rows"):
        reset_run(tmp_path / "frac", monkeypatch, eval_fraction=0.5)
    tok = tool_tokenizer()
    from preflab.online.api import reset_only
    from preflab.online.run import OnlineRun

    cfg = config_from_dict({**BASE, "output_dir": str(tmp_path / "bare")})
    with pytest.raises(ConfigError, match="the task has no prompts of its own .* no environment_factory"):
        OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                  task=reset_only(cfg, [lambda **k: [0.0]], Goal))
    with pytest.raises(ConfigError, match="prompts=None needs environment_factory"):
        grpo_train(tiny_causal_lm(tok, hidden_size=32, seed=1), tok, None, reward_funcs=[lambda **k: [0.0]],
                   output_dir=str(tmp_path / "py"), max_steps=1, use_cpu=True)
    with pytest.raises(ConfigError, match="dataset_name is not set"):
        config_from_dict({**NO_DATA, "output_dir": str(tmp_path / "cfg")})
    cfg = config_from_dict({**NO_DATA, "output_dir": str(tmp_path / "cfg"), "environment_factory": "x.py:Env"})
    assert cfg.dataset_name == ""


ENV_FILE = """
import random


class Drawn:
    def __init__(self):
        self.total, self.target = 0, 0

    def reset(self, **kwargs):
        self.total, self.target = 0, random.randint(3, 6)
        with open(__file__ + ".calls", "a") as fh:
            fh.write(f"reset {self.target} {sorted(kwargs)}\\n")
        return f"reach (target {self.target})"

    def step(self, n: int) -> str:
        \"\"\"Adds n to the total.

        Args:
            n: The number to add.
        \"\"\"
        self.total += n
        return f"total {self.total}"

    def get_reward(self) -> float:
        return 1.0 - abs(self.total - self.target) / 10
"""


def test_preflab_train_without_dataset_name(tmp_path, monkeypatch, capsys):
    """`preflab train` with environment_factory and no dataset_name: each round resets 2 prompts x K = 2 rollouts
    with the placeholder prompt as the only keyword, the targets drawn under reset_seed; get_reward is the reward
    (rewards/Drawn/mean: 1 - |5 - target| / 10, 5 the sum of the script's steps); summary.json says where the
    prompts came from and counts them. The held-out rows (eval_dataset_name) are reset under seeds of their own, the
    same before and after training: the same targets, the same eval reward."""
    import yaml

    import preflab.models.load as load_module
    import preflab.online.generator as generator_module
    from preflab.cli import main

    tok = tool_tokenizer()
    (tmp_path / "envs.py").write_text(ENV_FILE)
    monkeypatch.setattr(generator_module, "make_generator",
                        lambda cfg, policy, tokenizer, acc=None: EnvScripted(tok, cfg.max_completion_length))
    import preflab.online.tasks as tasks_module

    monkeypatch.setattr(tasks_module, "EvalTurns",
                        lambda cfg, model, tokenizer, sampled: EnvScripted(tok, cfg.max_completion_length))
    monkeypatch.setattr(load_module, "load_tokenizer", lambda *a, **k: tok)
    held = [{"prompt": [{"role": "user", "content": "go: "}], "id": i} for i in range(3)]
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    config = {**NO_DATA, "output_dir": str(tmp_path / "run"), "environment_factory": str(tmp_path / "envs.py") +
              ":Drawn", "prompts_per_generation": 2, "max_steps": 2, "steps_per_generation": 1,
              "eval_dataset_name": str(tmp_path / "held.jsonl")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "config.yaml")]) == 0, capsys.readouterr().err[-2000:]
    assert "preflab: data: no dataset: each round's 2 prompts (prompts_per_generation) are the text " \
           "environment_factory's reset returns" in capsys.readouterr().out
    calls = (tmp_path / "envs.py.calls").read_text().splitlines()
    round_seeds = [(3 * 7919 + r) * 100_003 for r in range(2)]  # OnlineRun._round_seed at seed 3
    targets = [random.Random(reset_seed(s, p)).randint(3, 6) for s in round_seeds for p in range(2)]
    held_targets = [random.Random(reset_seed((3 * 7919 - 1) * 100_003, p)).randint(3, 6) for p in range(3)]
    held_calls = [f"reset {t} ['id', 'prompt']" for t in held_targets]
    assert calls == held_calls + [f"reset {t} ['prompt']" for t in targets for _ in range(2)] + held_calls
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert targets == [4, 5, 5, 4]
    assert [m["rewards/Drawn/mean"] for m in metrics if "rewards/Drawn/mean" in m] == \
        pytest.approx([1 - (abs(5 - targets[2 * r]) + abs(5 - targets[2 * r + 1])) / 20 for r in range(2)])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["online"]["environment_reset_prompts"] == 4
    assert summary["data"]["prompt_rows"]["source"] == "environment_factory reset (no dataset)"
    assert held_targets == [3, 3, 4]
    assert summary["eval_reward_before"] == summary["eval_reward_after"] == \
        pytest.approx(sum(1 - abs(5 - t) / 10 for t in held_targets) / 3)

