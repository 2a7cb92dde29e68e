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
    """A task drawn from Python's global random at reset: reach a target of 1..9."""

    def reset(self, **kwargs):
        CALLS.append(("DrawnGoal", "reset", json.dumps(kwargs)))
        self.total, self.target = 0, random.randint(1, 9)
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
    assert "tools: step</s>" in tok.decode(p[0]) and "<|user|>reach (target 5)" in tok.decode(p[0])
