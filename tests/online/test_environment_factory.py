"""Environments inside GRPO runs (preflab.online.environments, environment_factory), against TRL 1.16's GRPOTrainer.

The model is scripted (its next turn is a function of the conversation so far, as in test_tool_calling.py), so a
round's tokens, tool masks, environment calls and rewards are exact values; TRL's own GRPOTrainer, built with the
same environment factories and its _generate_single_turn answering from the same script, gives the same ones."""
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.models.tiny import tiny_causal_lm
from preflab.online.environments import Environments, load_environment_factories

sys.path.insert(0, str(Path(__file__).parent))
from test_tool_calling import add, call, ids_of, tool_tokenizer  # noqa: E402

CALLS: list = []  # every environment call of every instance, as (class, method, arguments), in call order


class Counter:
    """Reach the row's target: step(n) adds n to a running total; the reward is 1 when the total is the target."""

    def __init__(self):
        self.total, self.target = 0, None

    def reset(self, prompt=None, target=0, **kwargs):
        CALLS.append(("Counter", "reset", tuple(sorted(["prompt", "target", *kwargs]))))
        self.total, self.target = 0, target
        return f" (target {target})"

    def step(self, n: int) -> str:
        """Adds n to the total.

        Args:
            n: The number to add.
        """
        CALLS.append(("Counter", "step", n))
        self.total += n
        return f"total {self.total}"

    def get_reward(self) -> float:
        return float(self.total == self.target)

    @property
    def noisy(self):  # a property is not a tool (and listing the tools must not evaluate it)
        raise AssertionError("evaluated")


class Echo:
    """Says back what it is told; no reward of its own, no observation."""

    def __init__(self):
        self.said = []

    def reset(self, prompt=None, **kwargs):
        CALLS.append(("Echo", "reset", tuple(sorted(["prompt", *kwargs]))))
        self.said = []

    def shout(self, text: str) -> str:
        """Says the text back in capitals.

        Args:
            text: What to say.
        """
        CALLS.append(("Echo", "shout", text))
        self.said.append(text)
        return text.upper()

    def _helper(self):  # private: not a tool
        return None


def env_script(context: str) -> str:
    """The scripted model's next turn: the counter rows step 2 then 3 (target 5 reached, target 4 missed); target 7
    calls the echo environment's tool, which its own environment lacks; the echo row shouts once."""
    results = context.count("<|tool|>")
    if "target 7" in context:
        return f"{call('shout', text='x')}</s>" if results == 0 else "lost</s>"
    if "(target" in context:
        return [f"{call('step', n=2)}</s>", f"try{call('step', n=3)}</s>", "done</s>"][min(results, 2)]
    if "shout" in context.split("<|assistant|>")[0] and "please" in context:
        return f"{call('shout', text='hi')}</s>" if results == 0 else "said it</s>"
    return "nothing</s>"


class EnvScripted:
    """A generator (online/generator.py's interface) answering with env_script, cut at max_new_tokens; `vary`: a
    seeded half of the step(3) calls are step(2) instead (the target 5 missed: rewards differ within a group)."""

    def __init__(self, tok, max_new_tokens, vary=False):
        self.tok, self.max_new_tokens, self.vary = tok, max_new_tokens, vary

    def generate(self, prompt_ids, num_generations, seed):
        g, out = torch.Generator().manual_seed(seed), []
        for p in prompt_ids:
            for _ in range(num_generations):
                text = env_script(self.tok.decode(p))
                if self.vary and torch.rand((), generator=g) < 0.5:
                    text = text.replace('{"n": 3}', '{"n": 2}')
                out.append(ids_of(self.tok, text)[:self.max_new_tokens])
        return out


def echo_reward(prompts, completions, environments, **kwargs):
    """A reward function reading the rollouts' environments (TRL's environments= keyword): an Echo's shouts."""
    return [float(len(e.said)) if isinstance(e, Echo) else None for e in environments]


ROWS = [{"prompt": [{"role": "user", "content": "reach"}], "target": 5, "environment": "counter"},
        {"prompt": [{"role": "user", "content": "reach"}], "target": 4, "environment": "counter"},
        {"prompt": [{"role": "user", "content": "reach"}], "target": 7, "environment": "counter"},
        {"prompt": [{"role": "user", "content": "please shout"}], "target": 0, "environment": "echo"}]

BASE = dict(task="online", trainer="grpo", online_task="dataset", dataset_name="unused",
            model_name_or_path="builtin:tiny-llama", learning_rate=1e-2, lr_scheduler_type="constant", beta=0.0,
            max_steps=4, num_generations=2, prompts_per_generation=4, steps_per_generation=2, shuffle_dataset=False,
            per_device_train_batch_size=2, max_completion_length=300, temperature=1.0, seed=3, loss_type="grpo",
            use_cpu=True, save_strategy="no", report_to="none", logging_steps=1)


def env_run(tmp_path, monkeypatch, rows=ROWS, judges=(echo_reward,), factory=None, vary=False, tools=None, **over):
    """An OnlineRun with environments whose turns are EnvScripted."""
    import preflab.online.generator as generator_module
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    tok = tool_tokenizer()
    monkeypatch.setattr(generator_module, "make_generator",
                        lambda cfg, policy, tokenizer, acc=None: EnvScripted(tok, cfg.max_completion_length, vary))
    cfg = config_from_dict({**BASE, "output_dir": str(tmp_path), **over})
    return OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                     task=Task([dict(r) for r in rows], list(judges)),
                     environment_factory=factory if factory is not None else {"counter": Counter, "echo": Echo},
                     **({"tools": tools} if tools else {}))


def preflab_round(run, K):
    """One round's pieces as OnlineRun._new_round makes them: (prompt ids, completion ids, loss masks, conversations,
    per-judge rewards [N, F], the generator's metrics)."""
    rows = run._start_environments(run.rows, K)
    ids = run._generate(rows, K, 0)
    _, _, _, per_fn, _ = run._judge_round(rows, ids, K)
    gen = run.generator
    return ([r.prompt_ids for r in rows for _ in range(K)], ids, gen.last_loss_masks, gen.last_messages, per_fn,
            gen.last_metrics)


def trl_round(rows, factories, reward_funcs, K, budget, out_dir, tools=None):
    """TRL 1.16's GRPOTrainer(environment_factory=factories) on the same tokenizer and rows, its
    _generate_single_turn answering from env_script: _generate_and_score_completions on the K rollouts of every row
    (TRL's inputs repeat each row K times), with the rewards _calculate_rewards gives."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tok = tool_tokenizer()
    args = GRPOConfig(output_dir=str(out_dir), use_cpu=True, num_generations=K,
                      per_device_train_batch_size=K, max_completion_length=budget, beta=0.0, report_to=[])
    trainer = GRPOTrainer(model=tiny_causal_lm(tok, hidden_size=32, seed=1), args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tok,
                          reward_funcs=list(reward_funcs) or None, environment_factory=factories, tools=tools)
    trainer._generate_single_turn = lambda ids, *a, **k: (
        [ids_of(tok, env_script(tok.decode(p)))[:budget] for p in ids], None)
    captured = {}
    original = trainer._calculate_rewards

    def rewards(*a, **k):
        captured["per_fn"] = original(*a, **k)
        return captured["per_fn"]

    trainer._calculate_rewards = rewards
    out = trainer._generate_and_score_completions([dict(r) for r in rows for _ in range(K)])
    strip = [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(out["prompt_ids"].tolist(),
                                                                      out["prompt_mask"].tolist())]
    completions = [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(out["completion_ids"].tolist(),
                                                                            out["completion_mask"].tolist())]
    tool_mask = [[t for t, m in zip(tm, mask) if m] for tm, mask in zip(out["tool_mask"].tolist(),
                                                                        out["completion_mask"].tolist())]
    return strip, completions, tool_mask, captured["per_fn"], trainer.reward_func_names, trainer


def test_equals_trls_environment_rollouts(tmp_path, monkeypatch):
    """Two environments picked by the rows' environment column and a standalone tool: the prompts (each with the
    standalone tool and its own environment's tool schemas, and its reset observation), the completions, the tool masks, the environment calls (the same calls in the same
    order, one reset per rollout with the row's fields but `environment`) and the rewards (get_reward's column named
    Counter, echo_reward reading the environments) equal TRL's GRPOTrainer on the same rows."""
    pytest.importorskip("trl")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")  # (TRL's warning that environment_factory is experimental)
    K, budget = 2, 300
    CALLS.clear()
    p_trl, c_trl, m_trl, r_trl, names, _ = trl_round(ROWS, {"counter": Counter, "echo": Echo}, [echo_reward], K,
                                                     budget, tmp_path / "trl", [add])
    run_dir = tmp_path / "run"
    trl_calls = list(CALLS)
    CALLS.clear()
    run = env_run(run_dir, monkeypatch, prompts_per_generation=4, tools=[add])
    assert CALLS == []  # probing the factories calls no method
    p, c, m, conversations, per_fn, metrics = preflab_round(run, K)
    assert p == p_trl and c == c_trl and m == m_trl
    assert CALLS == trl_calls
    assert run.judge.names == names == ["echo_reward", "Counter"]
    assert torch.equal(per_fn.isnan(), r_trl.isnan())
    assert torch.equal(per_fn.nan_to_num(-9).float(), r_trl.double().nan_to_num(-9).float())
    # the values themselves: target 5 reached (1), 4 missed (0), 7 never stepped (0); the echo row shouted once
    assert per_fn[:, 1].nan_to_num(-9).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, -9, -9]
    assert per_fn[:, 0].nan_to_num(-9).tolist() == [-9] * 6 + [1.0, 1.0]
    # the counter rows' 7th target called shout, which its environment does not have: a failure, as in TRL
    assert conversations[4][1] == {"role": "tool", "name": "shout", "content": "{'error': 'Tool shout not found.'}"}
    assert metrics["tools/calls"] == 2 * (2 + 2 + 1 + 1) and metrics["tools/failures"] == 2.0
    # each prompt shows its own environment's tools: the echo row's prompt lists shout, the counter rows' step
    tok = run.tokenizer
    assert "tools: add step</s>" in tok.decode(p[0]) and "reach (target 5)" in tok.decode(p[0])
    assert "tools: add shout</s>" in tok.decode(p[6]) and "(target" not in tok.decode(p[6])


def test_one_factory_resets_with_every_column_and_rewards_by_get_reward(tmp_path, monkeypatch):
    """A single factory: every row uses it, reset gets `prompt` and every column (the whole row, as TRL passes it),
    and get_reward is the only judge (no reward_funcs)."""
    CALLS.clear()
    rows = [{k: v for k, v in r.items() if k != "environment"} for r in ROWS[:2]]
    run = env_run(tmp_path, monkeypatch, rows=rows, judges=(), factory=Counter, prompts_per_generation=2)
    assert run.judge.names == ["Counter"]
    _, _, _, _, per_fn, _ = preflab_round(run, 3)
    assert per_fn[:, 0].tolist() == [1.0] * 3 + [0.0] * 3
    assert [c for c in CALLS if c[1] == "reset"] == [("Counter", "reset", ("prompt", "target"))] * 6
    assert [c[2] for c in CALLS if c[1] == "step"] == [2] * 6 + [3] * 6  # each rollout's instance, turn by turn
    assert len({id(e) for e in run.round_environments}) == 6


class Ticket:
    """Each instance draws the next serial number when made; its (async) reward is that number."""

    issued = 0

    def __init__(self):
        Ticket.issued += 1
        self.serial = Ticket.issued

    def reset(self, **row):
        return None

    async def get_reward(self) -> float:
        return float(self.serial)


def test_every_rollout_is_judged_with_its_own_environment(tmp_path, monkeypatch):
    """Rollouts with the same text but different environments get their own rewards (no judge cache, no merging of
    equal texts), an async get_reward is awaited, and each round makes fresh instances (serials go on)."""
    Ticket.issued = 0
    run = env_run(tmp_path, monkeypatch, rows=ROWS[3:], judges=(), factory=Ticket, prompts_per_generation=1)
    assert Ticket.issued == 1  # the probe
    for first in (2, 5):
        rows = run._start_environments(run.rows, 3)
        ids = [ids_of(run.tokenizer, "same</s>")] * 3  # three equal completions (Ticket has no tools: any text)
        _, _, flat, per_fn, _ = run._judge_round(rows, ids, 3)
        assert per_fn[:, 0].tolist() == flat.tolist() == [float(first), first + 1.0, first + 2.0]


def test_grpo_train_takes_an_environment_factory_from_python(tmp_path, monkeypatch):
    """preflab.online.api.grpo_train(..., reward_funcs=None, environment_factory=Counter): get_reward is the reward
    (targets 5 reached, 4 missed: mean 1/2 a round, scripted without variation) and each round's 6 rollouts step twice."""
    import preflab.online.generator as generator_module
    from preflab.online.api import grpo_train

    tok = tool_tokenizer()
    monkeypatch.setattr(generator_module, "make_generator",
                        lambda cfg, policy, tokenizer, acc=None: EnvScripted(tok, cfg.max_completion_length))
    rows = [{k: v for k, v in r.items() if k != "environment"} for r in ROWS[:2]]
    summary = grpo_train(tiny_causal_lm(tok, hidden_size=32, seed=1), tok, rows, environment_factory=Counter,
                         max_tool_calling_iterations=1, loss_type="grpo", num_generations=3, max_steps=2,
                         max_completion_length=300, use_cpu=True, output_dir=str(tmp_path))
    # max_tool_calling_iterations 1: one round of calls (step 2) per rollout: totals 2, no target reached
    assert summary["online"]["tool_calls"] == 2 * 6
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["rewards/Counter/mean"] for m in metrics if "rewards/Counter/mean" in m] == [0.0, 0.0]


def test_refusals_name_the_problem(tmp_path, monkeypatch):
    class NoReset:
        def step(self, n: int) -> int:
            """Steps.

            Args:
                n: A number.
            """
            return n

    with pytest.raises(ConfigError, match="the NoReset instance it returns has no reset method"):
        Environments(load_environment_factories(NoReset))

    class Undocumented(Counter):
        def jump(self, n):
            return n

    with pytest.raises(ConfigError, match="method Undocumented.jump: transformers cannot build its tool JSON schema"):
        Environments(load_environment_factories({"a": Undocumented}))
    rows = ROWS[:2] + [{**ROWS[0], "environment": "chess"}]
    with pytest.raises(ConfigError, match=r"training prompt row 2: environment 'chess' is not one of environment_factory's "
                                          r"\['counter', 'echo'\]"):
        env_run(tmp_path, monkeypatch, rows=rows)
    with pytest.raises(ConfigError, match="no reward source"):
        env_run(tmp_path, monkeypatch, rows=[ROWS[3]], judges=(), factory={"echo": Echo})

    class Dice(Counter):
        draws = iter(range(100))

        def reset(self, **kwargs):
            return f" (roll {next(self.draws)})"

    class Strict(Counter):
        def reset(self, target):
            return None

    run = env_run(tmp_path, monkeypatch, rows=ROWS[:1], factory=Strict, prompts_per_generation=1)
    with pytest.raises(ConfigError, match=r"prompt row 0: Strict.reset raised TypeError: .* \['environment', 'prompt', "
                                          r"'target'\]; give it \*\*kwargs"):
        run._start_environments(run.rows, 2)
    run = env_run(tmp_path, monkeypatch, rows=ROWS[:1], factory=Dice, prompts_per_generation=1)
    with pytest.raises(ConfigError, match="prompt row 0: the 2 resets of its rollouts returned different observations"):
        run._start_environments(run.rows, 2)
    with pytest.raises(ConfigError, match="environment_factory is not supported|not one of|only|environment_factory"):
        config_from_dict({**BASE, "output_dir": "x", "trainer": "online_dpo", "environment_factory": "m:E"})


def test_the_observation_is_appended_to_the_last_message(tmp_path, monkeypatch):
    """reset's observation goes at the end of the prompt's last message (TRL: content + observation), also after a
    system message: the prompt the model sees and the reward functions get; the system message is unchanged."""
    rows = [{"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "reach"}],
             "target": 5, "environment": "counter"}]
    run = env_run(tmp_path, monkeypatch, rows=rows, prompts_per_generation=1)
    out = run._start_environments(run.rows, 2)
    assert out[0].prompt == [{"role": "system", "content": "be brief"},
                             {"role": "user", "content": "reach (target 5)"}]
    assert "reach (target 5)" in run.tokenizer.decode(out[0].prompt_ids)


class Coins:
    """Another environment owning its reward (10 + the coins picked)."""

    def reset(self, **kwargs):
        self.coins = 0

    def pick(self, n: int) -> str:
        """Picks coins.

        Args:
            n: How many.
        """
        self.coins += n
        return str(self.coins)

    def get_reward(self) -> float:
        return 10.0 + self.coins


class SubCounter(Counter):
    """A Counter subclass: its rollouts are scored by its own judge, not by Counter's too."""


def test_each_get_reward_judge_scores_its_own_class_and_weighs_one():
    """Every environment class with get_reward is one judge (named after it) scoring the rollouts of exactly that
    class (None for the others, a subclass included); reward_weights get a 1 per such judge; a reward function
    taking **kwargs receives the rollouts' environments (TRL passes them to every reward function)."""
    from preflab.loops.judge import Judge
    from preflab.online.environments import judge_rollouts, with_environment_judges

    envs = Environments(load_environment_factories({"c": Counter, "coins": Coins, "sub": SubCounter, "e": Echo}))
    assert [j.__name__ for j in envs.reward_judges] == ["Counter", "Coins", "SubCounter"]
    counter, coins, sub, echo = Counter(), Coins(), SubCounter(), Echo()
    counter.reset(target=3)
    sub.reset(target=0)
    coins.reset()
    counter.step(3)
    coins.pick(2)
    insts = [counter, coins, sub, echo]
    assert [j(["p"] * 4, ["c"] * 4, environments=insts) for j in envs.reward_judges] == [
        [1.0, None, None, None], [None, 12.0, None, None], [None, None, 1.0, None]]

    def kwargs_reward(prompts, completions, **kwargs):
        return [float(len(type(e).__name__)) for e in kwargs["environments"]]

    judges, weights = with_environment_judges([kwargs_reward], [0.5], envs)
    assert weights == [0.5, 1.0, 1.0, 1.0] and judges[1:] == envs.reward_judges
    # the same completion text in every rollout: each is still judged with its own instance (judge_rollouts)
    _, per_fn = judge_rollouts(Judge(judges, weights=weights, cache=False), None, ["p"] * 4, ["c"] * 4, [0, 1, 2, 3],
                               [{}] * 4, [[1]] * 4, insts)
    assert per_fn[:, 0].tolist() == [7.0, 5.0, 10.0, 4.0]  # len("Counter"), len("Coins"), ...
    assert per_fn[:, 1:].nan_to_num(-1).tolist() == [[1.0, -1, -1], [-1, 12.0, -1], [-1, -1, 1.0], [-1, -1, -1]]


def test_the_runs_judge_reads_the_environments_afresh_every_round(tmp_path, monkeypatch):
    """With environments the run's Judge keeps no cache: the same prompt and completion text in two rounds, whose
    environments end in different states, get each round's own get_reward (1 when the total reaches the target)."""
    run = env_run(tmp_path, monkeypatch, rows=ROWS[:1], judges=(), factory=Counter, prompts_per_generation=1)
    got = []
    for total in (5, 4, 5):
        env = Counter()
        env.reset(target=5)
        env.total = total
        run.round_environments = [env]
        flat, _ = run._judge_with_environments([ROWS[0]["prompt"]], ["done"], 1, [{"target": 5}], [[1]])
        got.append(flat.tolist())
    assert got == [[1.0], [0.0], [1.0]]


def test_an_unknown_environment_is_refused_naming_the_data_set_file_and_line(tmp_path, monkeypatch):
    """A row whose `environment` is not a factory's name is refused naming its file, row and line and whether it is a
    training or a held-out (eval) prompt: a bad training row, then a bad row of eval_dataset_name; from Python (no
    file known) as a training prompt by its number."""
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import load_task

    tok = tool_tokenizer()

    def write(name, rows):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    def run_with(train, held):
        cfg = config_from_dict({**BASE, "output_dir": str(tmp_path / "run"), "dataset_name": train,
                                "eval_dataset_name": held, "prompts_per_generation": 2, "eval_steps": 100,
                                "reward_funcs": "test_environment_factory:echo_reward",
                                "environment_factory": {"counter": "test_environment_factory:Counter",
                                                        "echo": "test_environment_factory:Echo"}})
        task, _, _ = load_task(cfg, tok, None)
        return OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok, task=task)

    good = write("good.jsonl", ROWS[:2])
    bad = write("bad.jsonl", [ROWS[0], {**ROWS[1], "environment": "chess"}])
    with pytest.raises(ConfigError, match=r"^" + re.escape(f"{bad} row 1 (line 2), a training prompt: environment "
                                                           "'chess' is not one of")):
        run_with(bad, good)
    with pytest.raises(ConfigError, match=r"^" + re.escape(f"{bad} row 1 (line 2), a held-out (eval) prompt: "
                                                           "environment 'chess' is not one of")):
        run_with(good, bad)
    with pytest.raises(ConfigError, match=r"^training prompt row 1: environment 'chess'"):
        env_run(tmp_path / "py", monkeypatch, rows=[ROWS[0], {**ROWS[1], "environment": "chess"}])


def test_config_reads_the_option_and_its_tool_options(tmp_path):
    cfg = config_from_dict({**BASE, "output_dir": "x", "environment_factory": {"a": "m:A"},
                            "max_tool_calling_iterations": 2, "tool_timeout_s": 5})
    assert cfg.environment_factory == {"a": "m:A"} and cfg.max_tool_calling_iterations == 2
    with pytest.raises(ConfigError, match="max_tool_calling_iterations"):
        config_from_dict({**BASE, "output_dir": "x", "max_tool_calling_iterations": 2})
    for bad in (["m:A"], {"a": 3}, {}):
        with pytest.raises(ConfigError, match="environment_factory"):
            config_from_dict({**BASE, "output_dir": "x", "environment_factory": bad})


def test_preflab_eval_refuses_a_win_rate_of_a_run_trained_with_environments(tmp_path, capsys):
    import yaml

    from preflab.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({**BASE, "output_dir": str(run),
                                                     "environment_factory": "envs.py:Counter"}))
    assert main(["eval", str(run), "--data", str(tmp_path / "none.jsonl"), "--reference", "builtin:tiny-llama",
                 "--reward-fn", "demo_true_reward"]) == 2
    err = capsys.readouterr().err
    assert "was trained with environments (environment_factory: envs.py:Counter)" in err
    assert "samples plain answers without them" in err


def test_the_held_out_evaluation_answers_with_the_environments(tmp_path, monkeypatch):
    """eval_dataset_name with environments: each held-out answer gets its own instance reset with its row (the
    counter rows' targets appended to their prompts, each prompt showing its environment's tools), the loop calls its
    methods, and get_reward (Counter) and echo_reward judge it: targets 5 reached (1), 4 missed (0), the echo row
    shouted once (1); before and after training (scripted turns), with the tool metrics; a task evaluate that cannot
    take environments is refused."""
    import preflab.online.generator as generator_module
    import preflab.online.tasks as tasks_module
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task, dataset_evaluate

    tok = tool_tokenizer()
    monkeypatch.setattr(generator_module, "make_generator",
                        lambda cfg, policy, tokenizer, acc=None: EnvScripted(tok, cfg.max_completion_length, True))
    monkeypatch.setattr(tasks_module, "EvalTurns",
                        lambda cfg, model, tokenizer, sampled: EnvScripted(tok, cfg.max_completion_length))
    cfg = config_from_dict({**BASE, "output_dir": str(tmp_path), "eval_dataset_name": "held.jsonl", "max_steps": 2})
    held = [dict(ROWS[0]), dict(ROWS[1]), dict(ROWS[3])]
    CALLS.clear()
    run = OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                    task=Task([dict(r) for r in ROWS], [echo_reward], held, dataset_evaluate(cfg, held, [echo_reward])),
                    environment_factory={"counter": Counter, "echo": Echo})
    assert [c for c in CALLS if c[1] != "reset"] == [("Counter", "step", 2), ("Counter", "step", 2),
                                                     ("Echo", "shout", "hi"), ("Counter", "step", 3),
                                                     ("Counter", "step", 3)]  # the "before" evaluation
    summary = run.train()
    assert summary["eval_reward_before"] == summary["eval_reward_after"] == pytest.approx(2 / 3)
    assert summary["eval_tools_after"]["tools/calls"] == 2 + 2 + 1
    assert summary["examples_after"][0]["prompt"][-1]["content"] == "reach (target 5)"
    with pytest.raises(ConfigError, match="the task's evaluation answers without environments"):
        OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                  task=Task([dict(r) for r in ROWS], [echo_reward], evaluate=lambda model, tokenizer: {}),
                  environment_factory={"counter": Counter, "echo": Echo})


def test_resume_is_exact_and_a_mid_round_resume_calls_no_environment(tmp_path, monkeypatch, stop_at_step):
    """Stopped mid-round (after 3 steps, rounds of 2 steps) or at a round's start (after 2), then resumed: the weights equal
    the uninterrupted run's. Mid-round, the resumed run reads the pending round (its rewards included) from the
    checkpoint and calls no environment; at the boundary it makes the next round's instances afresh."""
    full = env_run(tmp_path / "full", monkeypatch, vary=True)
    full.train()
    for stop, calls_after in ((3, 0), (2, 4 * 2)):
        out = tmp_path / f"cut{stop}"
        cut = env_run(out, monkeypatch, vary=True, save_strategy="steps", save_steps=1)
        with stop_at_step(cut, stop):
            cut.train()
        resumed = env_run(out, monkeypatch, vary=True, save_strategy="steps", save_steps=1,
                          resume_from_checkpoint=True)
        CALLS.clear()
        assert resumed.train()["resumed_from_step"] == stop
        assert sum(c[1] == "reset" for c in CALLS) == calls_after
        a, b = full.policy.state_dict(), resumed.policy.state_dict()
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    start = tiny_causal_lm(tool_tokenizer(), hidden_size=32, seed=1).state_dict()
    assert any(float((a[k] - start[k]).abs().max()) > 1e-3 for k in a)


ENV_FILE = '''
class Counter:
    """Reach the row's target with step(n); get_reward: 1 when reached (the true reward)."""

    def __init__(self):
        self.total, self.target = 0, 0

    def reset(self, target=0, **kwargs):
        self.total, self.target = 0, target
        with open(__file__ + ".calls", "a") as fh:
            fh.write(f"reset {target}\\n")
        return f" (target {target})"

    def step(self, n: int) -> str:
        """Adds n to the total.

        Args:
            n: The number to add.
        """
        self.total += n
        with open(__file__ + ".calls", "a") as fh:
            fh.write(f"step {n}\\n")
        return f"total {self.total}"

    def get_reward(self) -> float:
        return float(self.total == self.target)
'''


def test_preflab_train_with_an_environment_owning_the_reward(tmp_path, monkeypatch, capsys):
    """`preflab train config.yaml` with environment_factory: envs.py:Counter and no reward_funcs: get_reward is the
    run's reward (each round's rewards/Counter/mean is the share of rollouts whose steps, read back from the
    environment's own log, sum to the row's target), every rollout resets its own instance and steps it twice, and
    the rounds with a reward signal move the weights."""
    import yaml

    import preflab.online.generator as generator_module
    from preflab.cli import main

    tok = tool_tokenizer()
    (tmp_path / "envs.py").write_text(ENV_FILE)
    rows = [{"prompt": [{"role": "user", "content": "reach"}], "target": t} for t in (5, 4)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(generator_module, "make_generator",
                        lambda cfg, policy, tokenizer, acc=None: EnvScripted(tok, cfg.max_completion_length, True))
    import preflab.models.load as load_module

    monkeypatch.setattr(load_module, "load_tokenizer", lambda *a, **k: tok)
    config = {**BASE, "dataset_name": str(tmp_path / "prompts.jsonl"), "output_dir": str(tmp_path / "run"),
              "environment_factory": str(tmp_path / "envs.py") + ":Counter", "prompts_per_generation": 2,
              "max_steps": 2, "steps_per_generation": 1}
    config.pop("model_name_or_path")
    config["model_name_or_path"] = "builtin:tiny-llama"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "config.yaml")]) == 0, capsys.readouterr().err[-2000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rounds = [m for m in metrics if "rewards/Counter/mean" in m]
    calls = (tmp_path / "envs.py.calls").read_text().splitlines()
    assert len(calls) == 2 * 12 and all(c.startswith("reset") for c in calls[:4] + calls[12:16])
    expected = []
    for r in range(2):  # a round: 4 resets (2 prompts x K = 2), then each turn's step for the 4 rollouts
        part = calls[12 * r:12 * (r + 1)]
        targets = [int(c.split()[1]) for c in part[:4]]
        totals = [int(a.split()[1]) + int(b.split()[1]) for a, b in zip(part[4:8], part[8:12])]
        expected.append(sum(t == s for t, s in zip(targets, totals)) / 4)
    assert [m["rewards/Counter/mean"] for m in rounds] == expected
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["online"]["tool_calls"] == 16 and summary["online"].get("no_signal_rounds", 0) < 2

