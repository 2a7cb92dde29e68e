"""OTC: the optimal-tool-call reward, correctness times tool efficiency (`ppo` and `grpo` modes).

Wang, Qian, Zhong, Chen, Qiu, Huang, Jin, Wang, Wong, Ji, 2025, "OTC: Optimal Tool Calls via Reinforcement
Learning", arXiv:2504.14870. No official code was found; the formulas below are the paper's §3.3 (read 2026-12 in a
markdown copy of the paper text stored in the code index), matching two third-party re-implementations. With m =
tool calls in this rollout:

    OTC-PPO:   r_tool(m)    = cos(m·π / (2m + c))
    OTC-GRPO:  n = the fewest tool calls among correct rollouts of this question, a running minimum over the
               current group and all earlier visits (+∞ before the first correct rollout);
               f(m, n) = 0 if m = n = 0;  m if n = 0;  2nm / (m + n) otherwise
               r_tool  = 1 if f = n = 0;  cos(m·π / (2m + c)) if n = 0;  sin(f(m, n)·π / (2n)) otherwise
    reward     r = α · r_tool · r_φ        (r_φ = correctness: exact match, or token F1; wrong answers get 0)

r_tool peaks at m = n (1) and decays to 0 as m → ∞; in GRPO mode with n ≥ 1, m = 0 scores 0 (sin 0).
`c` is a smoothing constant: the paper's §4.1 sets "c as corresponding max turns or maximal tool limits, α as 1" (4
searches for Search-R1, 3 code calls for ToRL) and runs OTC-GRPO with the global (across epochs) optimum, as here.
`OTCReward` has no default for c because it does not know the rollout's call limit; the `otc` recipe
(preflab.tool_use.otc) defaults it to its `max_tool_calls`.

Deviations / preflab choices: in GRPO mode a rollout whose question has no correct rollout yet (n = +∞) falls back
to the PPO form (only reachable with F1 scoring, since with exact match such a rollout is wrong and scores 0);
"correct" for the tracker means r_φ ≥ `correct_threshold` (default 1.0).

Tool calls are counted as complete, non-overlapping `<search>…</search>` spans (configurable `tool_pattern`), or
taken from a per-completion `num_tool_calls` column when the rollout code counted executed calls itself
(preferred: malformed tags are not calls). Answers are read from the last `<answer>…</answer>` span (configurable
`answer_pattern`) and compared with the `answer` column (a string or a list of acceptable strings) after SQuAD
normalisation (lower case, no punctuation or articles, single spaces).
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Any, Callable, Literal

from preflab.errors import ConfigError
from preflab.verifiers._columns import column, completion_text

Mode = Literal["ppo", "grpo"]


def otc_ppo_tool_reward(m: int, c: float) -> float:
    """OTC-PPO: cos(m·π / (2m + c))."""
    if m < 0 or c <= 0:
        raise ConfigError(f"otc: need m >= 0 and c > 0, got m={m}, c={c}.")
    return math.cos(m * math.pi / (2 * m + c))


def otc_grpo_tool_reward(m: int, n: float, c: float) -> float:
    """OTC-GRPO tool reward for m calls when the optimum is n calls (n = math.inf: unknown, PPO form)."""
    if math.isinf(n):
        return otc_ppo_tool_reward(m, c)
    if m < 0 or n < 0:
        raise ConfigError(f"otc: tool-call counts must be >= 0, got m={m}, n={n}.")
    if n == 0:
        return 1.0 if m == 0 else otc_ppo_tool_reward(m, c)
    f = 2 * n * m / (m + n)
    return math.sin(f * math.pi / (2 * n))


class OptimalToolCallTracker:
    """Per-question running minimum of tool calls over correct rollouts (keep one per dataset split)."""

    def __init__(self) -> None:
        self.best: dict[str, int] = {}

    def observe(self, key: str, m: int, correct: bool) -> None:
        if correct:
            self.best[key] = min(self.best.get(key, m), m)

    def optimum(self, key: str) -> float:
        return self.best.get(key, math.inf)

    def state_dict(self) -> dict[str, int]:
        return dict(self.best)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.best = {str(k): int(v) for k, v in state.items()}


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(prediction: str, gold: str | list[str]) -> float:
    golds = [gold] if isinstance(gold, str) else list(gold)
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def token_f1(prediction: str, gold: str | list[str]) -> float:
    golds = [gold] if isinstance(gold, str) else list(gold)
    best, pred = 0.0, normalize_answer(prediction).split()
    for g in golds:
        ref = normalize_answer(g).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            p, r = common / len(pred), common / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best


class OTCReward:
    """The OTC reward as a TRL GRPO reward function: `reward(prompts, completions, **columns) -> list[float]`.

    mode: "ppo" (no tracker) or "grpo" (running optimum per question). c: smoothing constant. alpha: scale.
    scoring: "em", "f1", or a callable (completion_text, gold) -> r_φ ∈ [0, 1]. id_column: dataset column that
    names the question (default: the prompt text). answer_column: the gold answer column.
    (r_φ is `score_answer`, not `score`: an object with `.score` is a reward model to preflab's Judge.)"""

    def __init__(self, *, mode: Mode = "grpo", c: float, alpha: float = 1.0,
                 scoring: Literal["em", "f1"] | Callable[[str, Any], float] = "em",
                 tool_pattern: str = r"<search>.*?</search>", answer_pattern: str = r"<answer>(.*?)</answer>",
                 answer_column: str = "answer", id_column: str = "question_id", correct_threshold: float = 1.0,
                 name: str = "otc") -> None:
        if mode not in ("ppo", "grpo"):
            raise ConfigError(f"otc: mode={mode!r}; use 'ppo' or 'grpo'.")
        if not c > 0:
            raise ConfigError(f"otc: c={c!r}; the smoothing constant must be > 0.")
        self.mode, self.c, self.alpha = mode, float(c), float(alpha)
        self.tool_re = re.compile(tool_pattern, re.DOTALL)
        self.answer_re = re.compile(answer_pattern, re.DOTALL)
        self.answer_column, self.id_column, self.correct_threshold = answer_column, id_column, correct_threshold
        if scoring == "em":
            self.score_answer = lambda text, gold: exact_match(self._answer(text), gold)
        elif scoring == "f1":
            self.score_answer = lambda text, gold: token_f1(self._answer(text), gold)
        elif callable(scoring):
            self.score_answer = scoring
        else:
            raise ConfigError(f"otc: scoring={scoring!r}; use 'em', 'f1' or a callable.")
        self.tracker = OptimalToolCallTracker()
        self.__name__ = name

    def _answer(self, text: str) -> str:
        found = self.answer_re.findall(text)
        return found[-1].strip() if found else ""

    def count_tool_calls(self, text: str) -> int:
        return len(self.tool_re.findall(text))

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        n = len(completions)
        texts = [completion_text(c) for c in completions]
        golds = column(kwargs, self.answer_column, n, reward=self.__name__)
        given = column(kwargs, "num_tool_calls", n, required=False, reward=self.__name__)
        calls = [int(m) for m in given] if given is not None else [self.count_tool_calls(t) for t in texts]
        r_phi = [float(self.score_answer(t, g)) for t, g in zip(texts, golds)]
        if self.mode == "ppo":
            return [self.alpha * otc_ppo_tool_reward(m, self.c) * r for m, r in zip(calls, r_phi)]
        ids = column(kwargs, self.id_column, n, required=False, reward=self.__name__)
        keys = [str(k) for k in ids] if ids is not None else [repr(completion_text(p)) for p in prompts]
        for key, m, r in zip(keys, calls, r_phi):  # the whole group first: n includes this group's rollouts
            self.tracker.observe(key, m, r >= self.correct_threshold)
        return [self.alpha * otc_grpo_tool_reward(m, self.tracker.optimum(key), self.c) * r if r > 0 else 0.0
                for key, m, r in zip(keys, calls, r_phi)]
