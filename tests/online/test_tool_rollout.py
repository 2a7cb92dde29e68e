"""Tool rollouts (preflab.online.tool_rollout): calls executed through a ToolBox, observations forced and masked out
of the loss, executed calls counted; a model's malicious or runaway tool call is contained; the group loss does not
read the observation tokens' log-probs; rounds with loss masks round-trip through JSON."""
import json
import threading
import time

import pytest
import torch

from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.online.examples import Example
from preflab.online.run import Round
from preflab.online.tool_rollout import CALCULATOR_SYNTAX, ToolRolloutGenerator, ToolSyntax
from preflab.tools import TOOL_ERROR_OBSERVATION, Calculator, ToolBox

TOK = tiny_tokenizer("char")


class ScriptedLM(torch.nn.Module):
    """A stand-in causal LM that writes scripts, following the KV-cache protocol the rollout uses (its 'cache' is the
    completion tokens seen per row). Row i writes scripts[i % len(scripts)]; with choose=True every row first picks
    a script by sampling its first character (uniform over the scripts' first characters), then writes it."""

    def __init__(self, scripts: list[str], choose: bool = False):
        super().__init__()
        self.scripts = [TOK(s, add_special_tokens=False).input_ids + [TOK.eos_token_id] for s in scripts]
        self.choose = choose
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=True):
        if past_key_values is None:  # the prompt: no completion tokens yet
            seen = [[] for _ in range(input_ids.shape[0])]
        else:
            seen = [row + [int(t)] for row, t in zip(past_key_values, input_ids[:, -1])]
        logits = torch.full((input_ids.shape[0], input_ids.shape[1], len(TOK)), -50.0)
        for i, row in enumerate(seen):
            if self.choose and not row:
                logits[i, -1, [s[0] for s in self.scripts]] = 0.0
                continue
            script = (next(s for s in self.scripts if s[0] == row[0]) if self.choose
                      else self.scripts[i % len(self.scripts)])
            logits[i, -1, script[min(len(row), len(script) - 1)]] = 50.0
        return {"logits": logits, "past_key_values": seen}


def rollout(scripts, max_tool_calls=3, max_new_tokens=120, box=None, syntaxes=(CALCULATOR_SYNTAX,)):
    box = box or ToolBox([Calculator()])
    gen = ToolRolloutGenerator(ScriptedLM(scripts), TOK, box, list(syntaxes), max_new_tokens=max_new_tokens,
                               max_tool_calls=max_tool_calls)
    prompts = [[TOK.bos_token_id] + TOK("Q: x\n", add_special_tokens=False).input_ids]
    ids = gen.generate(prompts, len(scripts), seed=0)
    return gen, box, [TOK.decode(c, skip_special_tokens=True) for c in ids], ids


def observation_mask(text: str, observations: list[str]) -> list[int]:
    """1 everywhere except on the given observation substrings (in order), + the eos position."""
    mask, pos = [1] * len(text), 0
    for obs in observations:
        at = text.index(obs, pos)
        mask[at:at + len(obs)] = [0] * len(obs)
        pos = at + len(obs)
    return mask + [1]


def test_calls_are_executed_observations_forced_and_masked():
    scripts = ["[calc: 37*48]=1776\nanswer: 1776",           # one call; the model's own '=...' is overridden
               "[calc: 2+3]=5\n[calc: 2+3]=5\nanswer: 5",
               "answer: 47",                                   # no call
               "[calc 2+3] and 2+3] answer: 5"]                # malformed: no '[calc:' opener, not a call
    gen, box, texts, ids = rollout(scripts)
    assert texts == scripts
    assert [c["num_tool_calls"] for c in gen.last_columns] == [1, 2, 0, 0]
    assert gen.last_loss_masks[0] == observation_mask(scripts[0], ["=1776"])
    assert gen.last_loss_masks[1] == observation_mask(scripts[1], ["=5", "=5"])
    assert gen.last_loss_masks[2] == [1] * len(ids[2]) and gen.last_loss_masks[3] == [1] * len(ids[3])
    assert box.stats["calls"] == 3 and box.stats["cache_hits"] == 1 and box.stats["errors"] == 0
    assert gen.last_metrics["tools/calls_mean"] == 0.75


def test_observation_comes_from_the_tool_not_the_model():
    # the model 'believes' 2+3=9; the forced observation is the calculator's 5, and it is not trained on
    gen, _, texts, _ = rollout(["[calc: 2+3]=9\nanswer: 9"])
    assert texts == ["[calc: 2+3]=5\nanswer: 9"]
    assert gen.last_loss_masks[0] == observation_mask(texts[0], ["=5"])


def test_max_tool_calls_refuses_further_calls_without_counting_them():
    script = "[calc: 1+1]=2\n[calc: 1+1]=2\n[calc: 1+1]\nanswer: 2"
    gen, box, texts, _ = rollout([script], max_tool_calls=2)
    assert texts == [script] and gen.last_columns[0]["num_tool_calls"] == 2
    assert gen.last_metrics["tools/calls_refused"] == 1 and box.stats["calls"] == 2


def test_budget_counts_observation_tokens():
    gen, _, texts, ids = rollout(["[calc: 37*48]=1776\nanswer: 1776"], max_new_tokens=16)
    assert len(ids[0]) == 16 and texts[0] == "[calc: 37*48]=17"   # the observation is cut by the budget
    assert gen.last_loss_masks[0] == [1] * 13 + [0] * 3


def test_malicious_and_runaway_calls_are_contained(tmp_path):
    target = tmp_path / "pwned"
    calls = [f"__import__('os').system('touch {target}')",
             "().__class__.__base__.__subclasses__()",
             "9**9**9",
             "((((((10**64)**64)**64)**64)**64)**64)**64",
             "open('/etc/passwd').read()"]
    scripts = [f"[calc: {c}]={TOOL_ERROR_OBSERVATION}\nanswer: 1" for c in calls]
    started = time.perf_counter()
    gen, box, texts, _ = rollout(scripts, max_new_tokens=200)
    assert time.perf_counter() - started < 10
    assert texts == scripts                                        # each call got the fixed error observation
    assert [c["tool_errors"] for c in gen.last_columns] == [1] * len(calls)
    assert [c["num_tool_calls"] for c in gen.last_columns] == [1] * len(calls)   # executed (and failed): counted
    assert box.stats["errors"] == len(calls) and gen.last_metrics["tools/errors"] == len(calls)
    assert not target.exists()


@pytest.mark.parametrize("scripts", [["[calc: 2+3]=5\n[calc: 9**9**9]=" + TOOL_ERROR_OBSERVATION + "\nanswer: 5",
                                      "[calc: 1+1]=2\nanswer: 2", "answer: 47"],
                                     ["answer: 1", "answer: 2"]], ids=["calls", "no_calls"])
def test_tool_metrics_carry_trls_call_and_failure_frequency(scripts):
    """TRL 1.16 GRPOTrainer logs tools/call_frequency and tools/failure_frequency; the oracle is its two lines
    (trl/trainer/grpo_trainer.py, _generate_and_score_completions' "if self.tools:" block) on the same counts:
    calls / completions, failures / calls (0.0 without calls), a failed call counted among the calls."""
    gen, _, texts, _ = rollout(scripts, max_new_tokens=200)
    assert texts == scripts
    tool_call_count = sum(c["num_tool_calls"] for c in gen.last_columns)
    tool_failure_count = sum(c["tool_errors"] for c in gen.last_columns)
    agg_prompt_lengths = [0] * len(scripts)  # one per completion
    call_frequency = tool_call_count / len(agg_prompt_lengths)
    failure_frequency = tool_failure_count / tool_call_count if tool_call_count > 0 else 0.0
    assert gen.last_metrics["tools/call_frequency"] == call_frequency
    assert gen.last_metrics["tools/failure_frequency"] == failure_frequency
    assert (tool_call_count, tool_failure_count) == ((3, 1) if len(scripts) == 3 else (0, 0))


def test_failure_frequency_is_per_call_and_call_frequency_per_completion():
    """Two calls (one failing) over three completions: tools/call_frequency = 2/3, tools/failure_frequency = 1/2
    (failures over calls, not over completions)."""
    scripts = ["[calc: 2+3]=5\n[calc: 9**9**9]=" + TOOL_ERROR_OBSERVATION + "\nanswer: 5", "answer: 47", "answer: 1"]
    gen, _, texts, _ = rollout(scripts, max_new_tokens=200)
    assert texts == scripts
    assert gen.last_metrics["tools/call_frequency"] == pytest.approx(2 / 3)
    assert gen.last_metrics["tools/failure_frequency"] == pytest.approx(1 / 2)


def test_syntax_must_name_a_tool_in_the_box():
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match="does not have"):
        ToolRolloutGenerator(ScriptedLM(["x"]), TOK, ToolBox([Calculator()]),
                             [ToolSyntax("<py>", "</py>", "Python", "code")], max_new_tokens=4)


def test_sampling_is_deterministic_given_the_seed():
    model = tiny_causal_lm(TOK, hidden_size=32, seed=1)
    gen = ToolRolloutGenerator(model, TOK, ToolBox([Calculator()]), [CALCULATOR_SYNTAX], max_new_tokens=20,
                               batch_size=2)
    prompts = [[TOK.bos_token_id] + TOK(p, add_special_tokens=False).input_ids for p in ("Q: 1+1\n", "Q: 7\n", "a")]
    first = gen.generate(prompts, 4, seed=5)
    assert gen.generate(prompts, 4, seed=5) == first and gen.generate(prompts, 4, seed=6) != first
    # the KV-cached sampler draws from the model's distribution: greedy equals argmax of full forwards
    greedy = gen.generate(prompts[:1], 1, seed=0, do_sample=False)[0]
    ids = list(prompts[0])
    for _ in range(len(greedy)):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert greedy == ids[len(prompts[0]):]


def test_each_chunk_of_prompts_is_sampled_with_seed_plus_its_chunk_index():
    """Chunk c (prompts c*batch_size ...) draws from a generator seeded seed + c: generating that chunk alone with
    seed + c gives the same completions, so a chunk does not repeat another chunk's draws."""
    model = tiny_causal_lm(TOK, hidden_size=32, seed=1)
    gen = ToolRolloutGenerator(model, TOK, ToolBox([Calculator()]), [CALCULATOR_SYNTAX], max_new_tokens=12,
                               batch_size=1)
    prompt = [TOK.bos_token_id] + TOK("Q: 1+1\n", add_special_tokens=False).input_ids
    both = gen.generate([prompt, prompt], 3, seed=5)
    assert both[:3] == gen.generate([prompt], 3, seed=5) and both[3:] == gen.generate([prompt], 3, seed=6)
    assert both[:3] != both[3:]


def test_top_p_keeps_the_smallest_prefix_whose_mass_reaches_top_p():
    """Nucleus filtering of the tool sampler: the most probable tokens until their mass reaches top_p, the one that
    crosses it included (0.5 + 0.3 >= 0.6 keeps both), the rest zeroed; top_p = 1 keeps all."""
    from preflab.online.tool_rollout import _top_p

    probs = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    assert torch.equal(_top_p(probs, 0.6), torch.tensor([[0.0, 0.5, 0.3], [0.0, 0.0, 0.8]]))
    assert torch.equal(_top_p(probs[:1], 0.85), probs[:1])  # 0.5 + 0.3 < 0.85: the third token is needed
    assert torch.equal(_top_p(probs, 1.0), probs)


def test_round_with_loss_masks_round_trips_through_json():
    import json

    ex = Example(3, [1, 2], [[5, 6, 7], [8]], {"rewards": [1.0, 0.0]}, loss_mask=[[1, 0, 1], [1]])
    again = Round.from_json(json.loads(json.dumps(Round(0, [ex], [[0]]).to_json())))
    assert again.examples[0] == ex and again.examples[0].trained_tokens(0) == 2
    old = {k: v for k, v in ex.to_json().items() if k != "loss_mask"}   # a round saved before loss masks existed
    assert Example.from_json(old).loss_mask is None and Example.from_json(old).trained_tokens(0) == 3


# ---------------------------------------------------------------- in the online run (GRPO with tool rollouts)
CHOICES = ["[calc: 2+3]=5\nanswer: 5",                       # 1 call, correct
           "answer: 5",                                      # 0 calls, correct
           "x[calc: 2+3]=5\n[calc: 2+3]=5\nanswer: 5",       # 2 calls, correct
           "y answer: 6"]                                    # wrong
TOOL_PROMPTS = [{"prompt": p, "answer": "5", "question_id": "2+3"} for p in ("Q: 2+3\n", "Q: 2 + 3\n", "Q:2+3\n")]


def tool_run(out, tool=None, timeout_s=None, **over):
    """GRPO on a tiny policy; rollouts written by ScriptedLM(CHOICES, choose=True) with real calculator calls (or
    `tool`, named Calculator, under the ToolBox's timeout_s), judged by OTC-GRPO (the tracker checkpointed with the
    run)."""
    from preflab.config import config_from_dict
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task
    from preflab.tool_use.otc_task import ANSWER_PATTERN
    from preflab.verifiers.otc import OTCReward

    base = dict(task="online", trainer="grpo", online_task="dataset", dataset_name="(in memory)",
                model_name_or_path="(in memory)", learning_rate=1e-2, max_steps=6, num_generations=4,
                prompts_per_generation=2, steps_per_generation=2, per_device_train_batch_size=1,
                max_completion_length=48, logging_steps=1, disable_tqdm=True, use_cpu=True, seed=3,
                output_dir=str(out))
    cfg = config_from_dict({**base, **over})
    reward = OTCReward(mode="grpo", c=3.0, answer_pattern=ANSWER_PATTERN)
    scripted = ScriptedLM(CHOICES, choose=True)

    def generator(cfg, policy, tokenizer, accelerator=None):
        return ToolRolloutGenerator(scripted, tokenizer, ToolBox([tool or Calculator()], timeout_s=timeout_s),
                                    [CALCULATOR_SYNTAX],
                                    cfg.max_completion_length, max_tool_calls=3)

    task = Task(TOOL_PROMPTS, [reward], generator=generator, judge_cache=False, state=reward.tracker)
    return OnlineRun(cfg, policy=tiny_causal_lm(TOK, hidden_size=32, seed=1), tokenizer=TOK, task=task)


def observation_positions(examples) -> torch.Tensor:
    """[B * G, L] 1.0 on observation tokens (loss_mask 0), group-major as the group layout."""
    from preflab.online.examples import token_matrix

    rows = [[1 - v for v in m] for e in examples for m in e.loss_mask]
    return token_matrix(rows, torch.ones(len(rows), max(len(r) for r in rows), dtype=torch.bool))


def test_group_loss_and_gradient_ignore_observation_tokens(tmp_path):
    """Perturbing the policy's log-probs on observation tokens (value and gradient) changes neither the loss nor
    the gradient; the same perturbation on a model-written token does. The dapo normaliser counts trained tokens."""
    run = tool_run(tmp_path, per_device_train_batch_size=2)
    mb = run.micro_batches(0)[0]
    exs = mb.examples
    assert all(e.loss_mask is not None for e in exs)
    hidden = observation_positions(exs)
    assert hidden.sum() > 0                                        # some completions did call the calculator
    chosen = [i for i in run.pending.slices[0]]
    trained = sum(e.trained_tokens(k) for e in (run.pending.examples[i] for i in chosen) for k in range(4))
    assert mb.tokens_per_prompt == trained / len(chosen)
    assert trained < sum(len(c) for e in (run.pending.examples[i] for i in chosen) for c in e.completions)
    scorer, weight = run.scorer, run.policy.model.embed_tokens.weight

    def loss_and_grad(where):
        def perturbed(layout, **kwargs):
            scores = scorer(layout, **kwargs)
            bump = torch.zeros_like(scores.token_logps)
            bump[:, :where.shape[1]] = where[:, :bump.shape[1]]
            scores.token_logps = scores.token_logps + bump * (3.0 * weight.sum() + 1.0)
            return scores

        run.scorer = perturbed
        run.policy.zero_grad()
        out = run.forward(mb)
        out.loss.backward()
        run.scorer = scorer
        return float(out.loss.detach()), weight.grad.clone()

    base_loss, base_grad = loss_and_grad(torch.zeros_like(hidden))
    loss, grad = loss_and_grad(hidden)
    assert loss == base_loss and torch.equal(grad, base_grad)
    own = torch.zeros_like(hidden)
    own[0, 0] = 1.0                                                # the first token the model wrote
    moved_loss, moved_grad = loss_and_grad(own)
    assert moved_loss != base_loss or not torch.equal(moved_grad, base_grad)


def test_executed_calls_reach_the_judge_and_the_tracker_resumes_exactly(tmp_path, stop_at_step):
    """num_tool_calls reaches OTC-GRPO (rewards = r_tool(m, n) for correct rollouts, n the running minimum over
    rounds); a run stopped after a mid-round checkpoint and resumed ends with the same weights, tracker and rewards.
    Seed 6 samples (1 call, 0 calls), (2 calls, wrong), (2 calls, 1 call) in rounds 1-3: round 3 (generated after the
    resume) is scored against n = 0 from round 1, which only the checkpointed tracker knows."""
    import math

    from preflab.verifiers.otc import otc_grpo_tool_reward

    small = dict(seed=6, num_generations=2, prompts_per_generation=1)
    full = tool_run(tmp_path / "full", **small)
    full.train()
    rounds = [[json.loads(x) for x in (tmp_path / "full" / "rounds" / f"{k}.jsonl").read_text().splitlines()]
              for k in (1, 2, 3)]
    assert [[CHOICES.index(c) for row in r for c in row["completions"]] for r in rounds] == [[0, 1], [2, 3], [2, 0]]
    assert math.isclose(rounds[0][0]["scores"][0], otc_grpo_tool_reward(1, 0, 3.0), abs_tol=1e-12)   # cos(pi/5)
    assert rounds[0][0]["scores"][1] == 1.0 and rounds[1][0]["scores"][1] == 0.0                      # wrong: 0
    expected = [otc_grpo_tool_reward(2, 0, 3.0), otc_grpo_tool_reward(1, 0, 3.0)]                      # n = 0
    assert rounds[2][0]["scores"] == pytest.approx(expected, abs=1e-12)
    assert expected != pytest.approx([otc_grpo_tool_reward(2, 1, 3.0), 1.0])   # what n from the group would give
    assert full.task.state.best == {"2+3": 0}

    cut = tool_run(tmp_path / "cut", save_steps=3, **small)
    with stop_at_step(cut, 4):
        cut.train()
    saved = json.loads((tmp_path / "cut" / "online-state" / "step-3" / "task.json").read_text())
    assert saved == {"2+3": 0}
    resumed = tool_run(tmp_path / "cut", save_steps=3, resume_from_checkpoint=True, **small)
    assert resumed.train()["resumed_from_step"] == 3
    a, b = full.policy.state_dict(), resumed.policy.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert resumed.task.state.best == full.task.state.best
    assert (tmp_path / "cut" / "rounds" / "3.jsonl").read_text() == (tmp_path / "full" / "rounds" / "3.jsonl").read_text()


def test_tool_rollouts_refuse_pair_trainers(tmp_path):
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match="group recipes"):
        tool_run(tmp_path, trainer="online_dpo")


# ---------------------------------------------------------------- ToolBox(timeout_s=...): a tool that does not return
class SlowCalculator(Calculator):
    """The Calculator whose calls on `slow` (an expression) sleep `seconds` first; it records when each started."""

    def __init__(self, slow: str, seconds: float = 3.0):
        self.slow, self.seconds, self.started, self.threads = slow, seconds, [], []

    def call(self, arguments: dict) -> str:
        self.started.append(time.monotonic())
        self.threads.append(threading.current_thread().name)
        if arguments["expression"] == self.slow:
            time.sleep(self.seconds)
        return super().call(arguments)


def test_a_tool_past_its_timeout_gives_the_error_observation_counted_as_a_timeout_without_waiting_for_it():
    """Completion 0 calls the slow expression under timeout_s 0.25 (the call sleeps 3 s): the model gets the fixed
    error observation ~0.25 s later, counted in tools/errors and tools/timeouts, the error names the tool, the
    arguments and the limit; completion 1's call is answered. Before: the rollout waited the 3 s (forever for a tool
    that never returns)."""
    tool = SlowCalculator("7*6")
    box = ToolBox([tool], timeout_s=0.25)
    scripts = [f"[calc: 7*6]={TOOL_ERROR_OBSERVATION}\nanswer: 42", "[calc: 2+3]=5\nanswer: 5"]
    gen, box, texts, _ = rollout(scripts, box=box, max_new_tokens=200)
    waited = tool.started[1] - tool.started[0]  # the second call starts as soon as the first is given up
    assert 0.25 <= waited < 1.5, waited
    assert texts == scripts  # completion 0 got the fixed error observation, completion 1 the calculator's 5
    assert tool.threads == ["preflab-tool-call"] * 2  # each call in its own worker thread; none without a limit:
    rollout(["[calc: 1+1]=2\nanswer: 2"], box=ToolBox([tool]))
    assert tool.threads[-1] == threading.main_thread().name
    assert [c["tool_errors"] for c in gen.last_columns] == [1, 0]
    assert box.stats["timeouts"] == 1 and box.stats["errors"] == 1 and box.stats["calls"] == 2
    assert gen.last_metrics["tools/timeouts"] == 1.0 and gen.last_metrics["tools/errors"] == 1.0
    entry = box.cache['["Calculator",{"expression":"7*6"}]']
    assert entry == {"observation": TOOL_ERROR_OBSERVATION, "ok": False, "error": (
        'ToolTimeoutError: tool \'Calculator\' did not return within timeout_s = 0.25 s (arguments '
        '{"expression": "7*6"}); '
        "the model gets the fixed error observation (the call is abandoned in a background thread: Python cannot stop "
        "it)")}


def test_a_tool_past_its_timeout_in_an_online_run_is_an_error_observation_in_the_round_and_its_metrics(tmp_path):
    """In a GRPO run with tool rollouts, a call past timeout_s is the error observation in the round's completions
    and tools/timeouts in its metrics; the run trains on (as on a raising tool)."""
    run = tool_run(tmp_path, tool=SlowCalculator("2+3", seconds=2.0), timeout_s=0.25, max_steps=2, seed=6,
                   max_completion_length=80,
                   num_generations=2, prompts_per_generation=1)
    run.train()
    row = json.loads((tmp_path / "rounds" / "1.jsonl").read_text().splitlines()[0])
    assert row["completions"][0].startswith("[calc: 2+3]=" + TOOL_ERROR_OBSERVATION)
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    timeouts = [m["tools/timeouts"] for m in logged if "tools/timeouts" in m]
    assert timeouts and timeouts[0] == 1.0, logged


def test_a_fast_tool_under_timeout_s_trains_the_same_weights_as_without_a_limit(tmp_path):
    runs = {}
    for name, limit in (("plain", None), ("limited", 30.0)):
        run = tool_run(tmp_path / name, timeout_s=limit, max_steps=2, seed=6, num_generations=2,
                       prompts_per_generation=1)
        run.train()
        runs[name] = run
    a, b = runs["plain"].policy.state_dict(), runs["limited"].policy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "plain" / "rounds" / "1.jsonl").read_text() == \
        (tmp_path / "limited" / "rounds" / "1.jsonl").read_text()


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), True, "5"])
def test_toolbox_timeout_s_must_be_a_positive_finite_number_of_seconds(value):
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"ToolBox timeout_s must be a finite number of seconds > 0 \(or None: no "
                                          r"limit\), got "):
        ToolBox([Calculator()], timeout_s=value)
