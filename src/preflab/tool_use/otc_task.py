"""The OTC recipe's synthetic tool task: arithmetic questions, some of which need the calculator and some of which
do not, written in characters the char-level tiny tokenizer has.

    Q: 37*48            [calc: 37*48]=1776       answer: 1776      (needs the tool: a tiny model cannot multiply)
    Q: 47               answer: 47                                  (the answer is in the question: no call needed)

A completion is `[calc: <expression>]` calls, each followed by the observation `=<value>` that the rollout writes
(preflab.online.tool_rollout, the Calculator through a ToolBox), one per line, then `answer: <value>`. The optimal
number of calls is 1 for an operation and 0 for a bare number. `sft_traces` writes over-calling traces (the same call
repeated, calls on questions that need none) so the SFT policy is correct but wasteful; OTC-GRPO then has calls to
remove. `evaluate_tool_use` scores greedy rollouts: accuracy (exact match of the final answer), mean executed calls
and tool productivity TP = correct answers / tool calls (Wang et al., 2025, arXiv:2504.14870, Sec. 4).
"""
from __future__ import annotations

import random
import re

from preflab.data.tokenize import bos_ids
from preflab.errors import ConfigError
from preflab.online.tool_rollout import CALCULATOR_SYNTAX, ToolRolloutGenerator
from preflab.verifiers.otc import exact_match

ANSWER_PATTERN = r"answer:\s*([^\n]*)"
OPERATIONS = ("+", "*")


def make_questions(n: int, seed: int, tool_fraction: float = 0.5, exclude: set[str] | None = None) -> list[dict]:
    """n distinct questions {question_id, expression, answer, needs_tool}: a 2-digit + or * (tool), or a number
    from 10 to 999 (no tool); `exclude`: question ids not to produce (the other split's)."""
    if not 0 <= tool_fraction <= 1:
        raise ConfigError(f"tool_fraction must be in [0, 1], got {tool_fraction}.")
    rng, seen, out = random.Random(seed), set(exclude or ()), []
    while len(out) < n:
        if rng.random() < tool_fraction:
            a, b, op = rng.randint(10, 99), rng.randint(10, 99), rng.choice(OPERATIONS)
            expression, value, tool = f"{a}{op}{b}", a + b if op == "+" else a * b, True
        else:
            value = rng.randint(10, 999)
            expression, tool = str(value), False
        if expression in seen:
            continue
        seen.add(expression)
        out.append({"question_id": expression, "expression": expression, "answer": str(value), "needs_tool": tool})
    return out


def prompt_of(question: dict) -> str:
    return f"Q: {question['expression']}\n"


def trace(question: dict, calls: int) -> str:
    """A completion with `calls` calculator calls on the question's expression and their observations."""
    step = f"{CALCULATOR_SYNTAX.open} {question['expression']}{CALCULATOR_SYNTAX.close}{CALCULATOR_SYNTAX.prefix}"
    return "".join(f"{step}{question['answer']}\n" for _ in range(calls)) + f"answer: {question['answer']}"


def sft_traces(questions: list[dict], seed: int, tool_calls: tuple[float, ...] = (0.1, 0.3, 0.6),
               no_tool_calls: tuple[float, ...] = (0.1, 0.3, 0.6)) -> list[dict]:
    """prompt-completion rows (SFTTrainer's `task: sft` form) over-calling the tool: a tool question gets 1, 2, ...
    calls with probabilities `tool_calls`, a bare number 0, 1, ... calls with probabilities `no_tool_calls`."""
    rng, rows = random.Random(seed), []
    for q in questions:
        weights = tool_calls if q["needs_tool"] else no_tool_calls
        calls = rng.choices(range(len(weights)), weights=weights)[0] + (1 if q["needs_tool"] else 0)
        rows.append({"prompt": prompt_of(q), "completion": trace(q, calls)})
    return rows


def final_answer(text: str) -> str:
    found = re.findall(ANSWER_PATTERN, text)
    return found[-1].strip() if found else ""


def correctness_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """r_phi alone: exact match of the final answer (the correctness-only control's judge)."""
    return [exact_match(final_answer(c if isinstance(c, str) else c[-1]["content"]), a)
            for c, a in zip(completions, answer)]


def prompt_rows(questions: list[dict]) -> list[dict]:
    """Online prompt rows: the prompt text plus the columns the judge reads (answer, question_id)."""
    return [{"prompt": prompt_of(q), "answer": q["answer"], "question_id": q["question_id"]} for q in questions]


def evaluate_tool_use(model, tokenizer, generator: ToolRolloutGenerator, questions: list[dict],
                      examples: int = 6) -> dict:
    """Greedy tool rollouts on `questions`: accuracy, mean executed calls, tool productivity, per kind of question."""
    bos = bos_ids(tokenizer)
    prompts = [bos + tokenizer(prompt_of(q), add_special_tokens=False).input_ids for q in questions]
    ids = generator.generate(prompts, 1, seed=0, do_sample=False)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in ids]
    calls = [c["num_tool_calls"] for c in generator.last_columns]
    correct = [exact_match(final_answer(t), q["answer"]) for t, q in zip(texts, questions)]

    def part(keep) -> dict:
        idx = [i for i, q in enumerate(questions) if keep(q)]
        n = max(1, len(idx))
        return {"accuracy": sum(correct[i] for i in idx) / n, "mean_tool_calls": sum(calls[i] for i in idx) / n}

    total_calls = sum(calls)
    return {"accuracy": sum(correct) / len(questions), "mean_tool_calls": total_calls / len(questions),
            # TP = correct answers / tool calls; with no calls at all it is undefined (reported as None)
            "tool_productivity": sum(correct) / total_calls if total_calls else None,
            "tool_errors": sum(c["tool_errors"] for c in generator.last_columns),
            "needs_tool": part(lambda q: q["needs_tool"]), "no_tool": part(lambda q: not q["needs_tool"]),
            "examples": [{"question": q["expression"], "output": t, "tool_calls": m, "correct": bool(r)}
                         for q, t, m, r in list(zip(questions, texts, calls, correct))[:examples]]}
