"""Win rate of the policy's generations against the reference model's, judged by a reward or a judge.

For each prompt both models answer (greedy by default) and the pair of answers is scored:
    reward function  r(prompt, policy answer) vs r(prompt, reference answer): 1 win, 1/2 tie, 0 loss
    judge            its probability (or 0/1 verdict) that the policy answer is better
win rate = mean outcome over n prompts (a tie counts one half, as AlpacaEval does; a judge's probability counts as
itself and is counted as `fractional` beside wins, ties and losses). The confidence interval is
Wilson's score interval (Wilson 1927, "Probable inference, the law of succession, and statistical inference",
JASA 22:209) for that proportion:
    (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n),   z = Phi^-1((1 + confidence)/2).
Deviation: with ties or fractional verdicts the outcomes are not Bernoulli, so the interval is an approximation.
A failed verdict (TRL's -1 from a judge, None or NaN from a judge or reward function) is no outcome: the prompt is
left out of n and counted as `failed` (never as a tie or a loss); a judge failing on every prompt is an error.

Interfaces (TRL's, so existing functions plug in):
    reward function  f(prompts=[...], completions=[...]) -> list[float]        (TRL GRPO reward_funcs; with
                     conversational prompts each completion is [{"role": "assistant", "content": text}], as TRL)
    judge            an object with .judge(prompts, [[a, b], ...]) -> [0 | 1]   (TRL BasePairwiseJudge: index of
                     the better answer) or a callable (prompts, policy_answers, reference_answers) -> [p in 0..1]
    reward model     a local sequence-classification model (safetensors): `preflab eval --reward-model` loads it
                     as a reward function (preflab.eval_cli.checkpoint.reward_model_fn)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

from preflab.errors import ConfigError


@dataclass
class WinRate:
    win_rate: float
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int
    n: int
    confidence: float
    failed: int = 0        # prompts without a verdict (judge returned -1, None or NaN): not in n
    fractional: int = 0    # verdicts strictly between 0 and 1 other than 1/2 (a judge's probability): in n, and
    #                        wins + ties + losses + fractional = n (before, wins + ties + losses fell short silently)


    def to_dict(self) -> dict:
        return asdict(self)


def wilson_interval(p_hat: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a proportion p_hat observed on n trials."""
    if n <= 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf((1.0 + confidence) / 2.0)
    denom = 1.0 + z * z / n
    center = (p_hat + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p_hat * (1 - p_hat), 0.0) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def win_rate_from_outcomes(outcomes: Sequence[float | None], confidence: float = 0.95) -> WinRate:
    """Outcomes in [0, 1] per prompt (1 policy better, 0.5 tie, 0 reference better; None: no verdict) -> WinRate.
    Prompts without a verdict are left out of n and counted as `failed`; none with a verdict is a ConfigError."""
    failed = sum(v is None for v in outcomes)
    values = [float(v) for v in outcomes if v is not None]
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise ConfigError("judge outcomes must lie in [0, 1] (1: policy better, 0: reference better; None or NaN: "
                          f"no verdict), got {next(v for v in values if not 0.0 <= v <= 1.0)}.")
    n = len(values)
    if not n:
        raise ConfigError(f"no win rate: the judge or reward function gave no verdict on any of the {failed} "
                          "prompts (TRL's -1, None or NaN on every one); check the judge (its API key, its parser).")
    p = sum(values) / n
    lo, hi = wilson_interval(p, n, confidence)
    wins, ties, losses = (sum(v == x for v in values) for x in (1.0, 0.5, 0.0))
    return WinRate(p, lo, hi, wins, ties, losses, n, confidence, failed, n - wins - ties - losses)


def outcome_counts(win: dict) -> str:
    """The verdicts behind a win rate, from eval.json's `win_rate` dict (WinRate.to_dict), as every place that shows
    the rate says them (`preflab eval`'s terminal lines, `preflab report`'s headline and eval section): "W wins, T
    ties (each counted 1/2), L losses of N prompts", with ", F fractional verdicts (a judge's probabilities)" before
    "of N" where there are any. The win rate is (W + T/2 + the fractional verdicts' sum) / N, so the ties say how much
    of it is halves. A dict without the counts (an eval.json older than them) gives "N prompts"."""
    if not all(isinstance(win.get(k), int) for k in ("wins", "ties", "losses")):
        return f"{win.get('n')} prompts"
    fractional = (f", {win['fractional']} fractional verdicts (a judge's probabilities)" if win.get("fractional")
                  else "")
    return (f"{win.get('wins')} wins, {win.get('ties')} ties (each counted 1/2), {win.get('losses')} losses"
            f"{fractional} of {win.get('n')} prompts")


def win_rate_caveats(win: dict) -> list[str]:
    """What a win rate's number does not say by itself, from eval.json's `win_rate` dict: every verdict a tie (the
    judge gave the two answers the same score on every prompt, so 0.5 says it told none apart, not that the policy
    is as good as the reference: e.g. a reward function that scores every unfinished answer 0). [] when none."""
    n = win.get("n") or 0
    if n and win.get("ties") == n:
        judge = f" ({win['judge']})" if win.get("judge") else ""
        return [f"win rate: every one of the {n} verdicts is a tie: the judge{judge} scored the policy's and the "
                "reference's answers the same on every prompt, so the win rate 0.5 says it told no answer apart, "
                "not that the policy is as good as the reference; check the judge on these answers "
                "(generation_examples)"]
    return []


def _finite(value) -> float | None:
    """A reward or verdict as a float, or None where there is none (None, NaN, inf: a failed evaluation)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def win_rate(policy_rewards: Sequence[float | None], reference_rewards: Sequence[float | None],
             confidence: float = 0.95) -> WinRate:
    """Win rate of the policy when each prompt's two answers are compared by reward (ties count 1/2). A prompt
    where either reward is None or not finite (a reward function that failed there) has no verdict (`failed`)."""
    if len(policy_rewards) != len(reference_rewards):
        raise ConfigError(f"{len(policy_rewards)} policy rewards but {len(reference_rewards)} reference rewards.")
    pairs = [(_finite(a), _finite(b)) for a, b in zip(policy_rewards, reference_rewards)]
    outcomes = [None if a is None or b is None else 1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs]
    return win_rate_from_outcomes(outcomes, confidence)


def judge_outcomes(judge, prompts: list, policy_answers: list[str], reference_answers: list[str]) -> list[float | None]:
    """Per-prompt outcomes from a TRL pairwise judge (.judge -> index of the better answer, -1 when it failed) or a
    callable (-> probability that the policy answer is better; None or NaN when it failed). A failed verdict is
    None; a verdict count other than one per prompt, or a TRL index other than 0, 1, -1, is a ConfigError."""
    if hasattr(judge, "judge"):
        picks = list(judge.judge(prompts, [[a, b] for a, b in zip(policy_answers, reference_answers)]))
        bad = [i for i in picks if i is not None and i not in (0, 1, -1)]
        if bad:
            raise ConfigError(f"the judge's .judge returned {bad[0]!r}: a TRL pairwise judge returns the index of the "
                              "better answer (0: policy, 1: reference) or -1 when it failed.")
        outcomes = [None if i is None or int(i) == -1 else 1.0 if int(i) == 0 else 0.0 for i in picks]
    else:
        outcomes = [_finite(v) for v in judge(prompts, policy_answers, reference_answers)]
    if len(outcomes) != len(prompts):
        raise ConfigError(f"the judge returned {len(outcomes)} verdicts for {len(prompts)} prompts; it must return "
                          "one per prompt (-1 / None for a prompt it could not judge).")
    return outcomes


def load_callable(spec: str) -> Callable:
    """'package.module:name' or 'path/to/file.py:name' -> the object (a reward function or judge the user names on
    the command line); a class is instantiated with no arguments (e.g. a TRL judge class)."""
    from preflab.plugins import import_object

    obj = import_object(spec, "--reward-fn / --judge")
    return obj() if isinstance(obj, type) else obj


def as_completions(prompts: list, answers: list[str]) -> list:
    """The answers as TRL passes completions to a reward function: a conversational prompt (a list of messages)
    gets its answer as [{"role": "assistant", "content": text}], a text prompt the text (as the online runs pass
    them, preflab.loops.rollout.decode), so one reward function serves training and evaluation."""
    return [[{"role": "assistant", "content": a}] if isinstance(p, list) else a for p, a in zip(prompts, answers)]


def _rewards(reward_fn, prompts: list, answers: list[str], whose: str) -> list[float | None]:
    """reward_fn's scores of `answers` (None where it returned None or NaN). A reward function that raises is a
    ConfigError naming it, what it raised and on whose answers: it was a traceback out of `preflab eval` after both
    models had generated (e.g. demo_true_reward on prompts that are not the demo task's)."""
    try:
        return [_finite(v) for v in reward_fn(prompts=prompts, completions=as_completions(prompts, answers))]
    except Exception as err:  # the user's code: any exception it raises is its own verdict on these prompts
        name = getattr(reward_fn, "__name__", type(reward_fn).__name__)
        raise ConfigError(f"the reward function {name} raised {type(err).__name__} on the {whose} model's answers to "
                          f"the win-rate prompts: {err} Fix the reward function, or evaluate data whose prompts it "
                          "scores (the win rate needs a score for each answer, or None where it has none).") from err


def clipped_fraction(answers: list[list[int]], eos_id: int | None) -> float:
    """Fraction of generated answers without an EOS token: cut at max_new_tokens, so the judge scores unfinished
    text (TRL's completions/clipped_ratio of online runs)."""
    return sum(eos_id not in ids for ids in answers) / max(len(answers), 1)


def compare_generations(policy, reference, tokenizer, prompt_ids: list[list[int]], prompts: list, *,
                        reward_fn=None, judge=None, max_new_tokens: int = 64, batch_size: int = 16,
                        confidence: float = 0.95, examples: int = 5) -> dict:
    """Generate greedily with both models and judge the answers: win rate, CI, mean answer lengths, examples."""
    from preflab.generate import generate_ids

    if (reward_fn is None) == (judge is None):
        raise ConfigError("give exactly one of a reward function (or reward model) and a judge for the win rate.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kw = dict(eos_id=tokenizer.eos_token_id, pad_id=pad, max_new_tokens=max_new_tokens, batch_size=batch_size)
    ids_p, ids_r = generate_ids(policy, prompt_ids, **kw), generate_ids(reference, prompt_ids, **kw)
    decode = lambda rows: [tokenizer.decode(r, skip_special_tokens=True) for r in rows]  # noqa: E731
    ans_p, ans_r = decode(ids_p), decode(ids_r)
    out: dict = {"length/policy_generation": sum(map(len, ids_p)) / max(len(ids_p), 1),
                 "length/reference_generation": sum(map(len, ids_r)) / max(len(ids_r), 1),
                 "clipped_ratio/policy_generation": clipped_fraction(ids_p, tokenizer.eos_token_id),
                 "clipped_ratio/reference_generation": clipped_fraction(ids_r, tokenizer.eos_token_id)}
    if judge is not None:
        result = win_rate_from_outcomes(judge_outcomes(judge, prompts, ans_p, ans_r), confidence)
        scores = None
    else:
        r_p = _rewards(reward_fn, prompts, ans_p, "policy")
        r_r = _rewards(reward_fn, prompts, ans_r, "reference")
        if len(r_p) != len(prompts) or len(r_r) != len(prompts):
            raise ConfigError(f"the reward function returned {len(r_p)} and {len(r_r)} rewards for {len(prompts)} "
                              "prompts' policy and reference answers; it must return one per completion (None where "
                              "it cannot score one).")
        result, scores = win_rate(r_p, r_r, confidence), (r_p, r_r)
        both = [(a, b) for a, b in zip(r_p, r_r) if a is not None and b is not None]  # the prompts in the win rate
        out["reward/policy_generation"] = sum(a for a, _ in both) / len(both)
        out["reward/reference_generation"] = sum(b for _, b in both) / len(both)
    out["win_rate"] = result.to_dict()
    out["examples"] = [{"prompt": p if isinstance(p, str) else str(p), "policy": a, "reference": b,
                        **({"policy_reward": scores[0][i], "reference_reward": scores[1][i]} if scores else {})}
                       for i, (p, a, b) in enumerate(zip(prompts[:examples], ans_p, ans_r))]
    return out
