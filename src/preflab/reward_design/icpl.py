"""ICPL: In-Context Preference Learning (Yu et al., 2024, arXiv:2410.17233), the outer loop of reward design.

Per iteration t (models-and-loops.md #47):
    1. the code model proposes K reward programs from the prompt (t = 0: task description + signature; t > 0: the
       history below);
    2. a policy is trained under each program (`task.train(code) -> {status, metric, ...}`); failed programs get
       status "failed" and are never rated good or bad;
    3. a rater picks (good, bad) among the programs that ran: `AutoRater` good = argmax of the task metric, bad =
       argmin (the paper's automatic rater — it uses the ground-truth metric, so it measures reward-writing skill,
       not preference learning: every result records which rater produced it); `HumanRater` asks a person;
    4. the next prompt = history header ("iterated n rounds") + the differences between successive good programs +
       the good program as "1st" and the bad one as "2nd" + the preference statement;
    5. the best-so-far program by the task metric is kept.
Deviation from the paper: the differences between successive good programs are a unified diff (difflib) unless the
code model has `describe_difference(old, new)` (the paper asks the LLM to write them); failed samples are not
regenerated (counted instead), so each iteration makes exactly K trainer calls.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from preflab.errors import ConfigError
from preflab.recipe_state import RecipeStateFile

PREFERENCE_STATEMENT = ("Most important: the 1st reward function is the GOOD example and the 2nd is the BAD example. "
                        "Improve on the 1st; do not build on the 2nd.")
SIGNATURE = "def reward(features: list[float]) -> float"


class CodeLLM(Protocol):
    def propose(self, prompt: str, k: int, iteration: int) -> list[str]: ...


class Rater(Protocol):
    name: str

    def rate(self, candidates: list[dict]) -> tuple[int | None, int | None]: ...


def build_prompt(task_description: str, history: list[dict], describe_difference=None) -> str:
    """The prompt for the next iteration from the rated history ([] -> the first prompt)."""
    lines = [task_description, f"Signature: {SIGNATURE}"]
    rated = [h for h in history if h.get("good") is not None]
    if not rated:
        return "\n".join(lines + ["Write a reward function."])
    lines.append(f"The reward function has been iterated {len(rated)} rounds.")
    goods = [h["candidates"][h["good"]]["code"] for h in rated]
    diff = describe_difference or _unified_diff
    for i in range(1, len(goods)):
        lines.append(f"Difference between the good functions of rounds {i} and {i + 1}:\n{diff(goods[i - 1], goods[i])}")
    last = rated[-1]
    lines.append("1st reward function:\n" + last["candidates"][last["good"]]["code"])
    if last.get("bad") is not None:
        lines.append("2nd reward function:\n" + last["candidates"][last["bad"]]["code"])
    lines.append(PREFERENCE_STATEMENT)
    return "\n".join(lines)


def _unified_diff(old: str, new: str) -> str:
    return "\n".join(difflib.unified_diff(old.splitlines(), new.splitlines(), "previous", "current", lineterm=""))


class AutoRater:
    """good = the highest task metric, bad = the lowest, among programs that ran (failures are never picked)."""
    name = "auto"

    def rate(self, candidates):
        ran = [i for i, c in enumerate(candidates) if c["status"] == "ok"]
        if not ran:
            return None, None
        good = max(ran, key=lambda i: candidates[i]["metric"])
        rest = [i for i in ran if i != good]
        return good, (min(rest, key=lambda i: candidates[i]["metric"]) if rest else None)


class HumanRater:
    """Shows each program's outcome and asks for "good,bad" indices (`ask` defaults to input()). With fewer than two
    programs that ran there is no pair to ask about: the one that ran is good (no bad), as AutoRater picks, and
    nothing is asked (before, no answer could be valid and the question repeated forever). An answer that is not two
    different indices of programs that ran is said and asked again; standard input that ends (a batch job, `<
    /dev/null`) is a ConfigError saying to run in a terminal, pipe the answers, or use rater: auto (before: an
    EOFError traceback)."""
    name = "human"

    def __init__(self, ask=input, say=print):
        self.ask, self.say = ask, say

    def rate(self, candidates):
        ran = [i for i, c in enumerate(candidates) if c["status"] == "ok"]
        if len(ran) < 2:
            self.say(f"icpl: {len(ran)} program(s) ran this iteration, so there is no pair to rate"
                     + (f"; [{ran[0]}] is taken as good." if ran else "."))
            return (ran[0] if ran else None), None
        shown = "\n".join(f"[{i}] arm {candidates[i]['arm']}" for i in ran)
        while True:
            try:
                answer = self.ask(f"{shown}\ngood,bad (indices from {ran}): ").strip()
            except EOFError:
                raise ConfigError("recipe_params.rater: human asks for 'good,bad' indices on standard input, which "
                                  "ended (not a terminal?). Run in a terminal, pipe the answers one line per "
                                  "iteration, or set recipe_params.rater=auto.") from None
            match = re.fullmatch(r"(\d+)\s*,\s*(\d+)", answer)
            if match and {int(match[1]), int(match[2])} <= set(ran) and match[1] != match[2]:
                return int(match[1]), int(match[2])
            self.say(f"icpl: {answer!r} is not two different indices from {ran} (e.g. {ran[0]},{ran[1]}); again.")


class ScriptedCodeLLM:
    """A deterministic stand-in for a code LLM: proposes linear reward programs, mutating the weights of the "1st"
    (good) program in the prompt with seeded Gaussian noise of scale `scale * decay**iteration`; the last sample of every iteration deliberately
    crashes (to exercise the failure path). Seeded by (seed, iteration), so a resumed run proposes the same."""

    def __init__(self, dims: int = 3, seed: int = 0, scale: float = 0.6, decay: float = 0.8, crash_last: bool = True):
        self.dims, self.seed, self.scale, self.decay, self.crash_last = dims, seed, scale, decay, crash_last

    def propose(self, prompt: str, k: int, iteration: int) -> list[str]:
        rng = np.random.default_rng([self.seed, iteration])
        base = _weights_of(prompt.split("1st reward function:\n", 1)[1]) if "1st reward function:" in prompt else None
        out = []
        for i in range(k):
            if self.crash_last and i == k - 1:
                out.append("def reward(features):\n    raise RuntimeError('scripted crash')\n")
                continue
            step = self.scale * self.decay ** iteration  # smaller edits as the rounds go on
            w = rng.normal(size=self.dims) if base is None else np.array(base) + step * rng.normal(size=self.dims)
            out.append(render_linear(w))
        return out


def render_linear(weights) -> str:
    terms = " + ".join(f"({w:.4f}) * features[{i}]" for i, w in enumerate(weights))
    return f"def reward(features):\n    return {terms}\n"


def _weights_of(code: str) -> list[float]:
    return [float(x) for x in re.findall(r"\((-?\d+\.\d+)\) \* features\[\d+\]", code.split("2nd reward")[0])]


class CausalLMCodeLLM:
    """Any causal LM (a path or hub name, or a loaded model + tokenizer) as the code writer: samples K completions
    of the prompt; the program is the first ```python block, or the whole completion."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 256, temperature: float = 1.0):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature = max_new_tokens, temperature

    def propose(self, prompt: str, k: int, iteration: int) -> list[str]:
        import torch

        enc = self.tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(**enc, do_sample=True, temperature=self.temperature, num_return_sequences=k,
                                      max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        texts = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return [_code_block(t) for t in texts]


def _code_block(text: str) -> str:
    match = re.search(r"```(?:python)?\n(.*?)```", text, re.S)
    return match[1] if match else text


@dataclass
class IcplResult:
    rater: str
    history: list[dict]
    best_code: str | None
    best_metric: float | None
    best_per_iteration: list[float | None]
    trainer_calls: int
    failed_samples: int
    prompts: list[str] = field(default_factory=list)


def open_icpl_state(path: str | Path, task, rater, iterations: int, samples: int, resume: bool = True,
                    params: dict | None = None, allow_change: bool = False) -> RecipeStateFile:
    """ICPL's state file: {"params", "history", "prompts", "trainer_calls", "failed_samples"}. An existing file is
    refused without `resume`, and on resume when `samples`, the rater, the task description or `params` (e.g. the
    recipe's recipe_params) differ from the run that wrote it; only `iterations` may change, and not below the
    iterations already finished."""
    compared = {**(params or {}), "iterations": iterations, "samples": samples, "rater": rater.name,
                "task": task.describe()}
    store = RecipeStateFile(path, compared, resume, may_change=("iterations",), every_process=False,
                            allow_change=allow_change,
                            initial={"history": [], "prompts": [], "trainer_calls": 0, "failed_samples": 0})
    done = len(store.data["history"])
    if done > iterations:
        raise ConfigError(f"resume: {path} already holds {done} finished iterations, more than iterations="
                          f"{iterations}; resume with iterations >= {done} or use a new output_dir.")
    return store


def run_icpl(code_llm, task, rater, iterations: int = 5, samples: int = 6,
             state_path: str | Path | RecipeStateFile | None = None, progress=None, *, resume: bool = True,
             params: dict | None = None) -> IcplResult:
    """The ICPL outer loop. `state_path` (see `open_icpl_state`, or the state it opened) is saved after every
    iteration; when it exists (and `resume`, the default here) the loop continues after its last finished iteration:
    the code model is seeded per iteration, so the result is the same as an uninterrupted run."""
    if iterations < 1 or samples < 2:
        raise ConfigError(f"ICPL needs iterations >= 1 and samples >= 2 (a good and a bad program), got "
                          f"iterations={iterations}, samples={samples}.")
    store = state_path
    if state_path is not None and not isinstance(state_path, RecipeStateFile):
        store = open_icpl_state(state_path, task, rater, iterations, samples, resume, params)
    state = store.data if store is not None else {"history": [], "prompts": [], "trainer_calls": 0,
                                                  "failed_samples": 0}
    describe = getattr(code_llm, "describe_difference", None)
    for t in range(len(state["history"]), iterations):
        prompt = build_prompt(task.describe(), state["history"], describe)
        codes = code_llm.propose(prompt, samples, t)
        candidates = []
        for code in codes:
            outcome = task.train(code)
            state["trainer_calls"] += 1
            state["failed_samples"] += outcome["status"] != "ok"
            candidates.append({"code": code, **outcome})
        good, bad = rater.rate(candidates)
        state["history"].append({"iteration": t, "candidates": candidates, "good": good, "bad": bad})
        state["prompts"].append(prompt)
        if store is not None:
            store.save()
        if progress:
            progress(t, candidates, good)
    best, best_metric, per_iter = None, None, []
    for h in state["history"]:
        for c in h["candidates"]:
            if c["status"] == "ok" and (best_metric is None or c["metric"] > best_metric):
                best, best_metric = c["code"], c["metric"]
        per_iter.append(best_metric)
    return IcplResult(rater.name, state["history"], best, best_metric, per_iter, state["trainer_calls"],
                      state["failed_samples"], state["prompts"])


def result_summary(result: IcplResult, task) -> dict:
    """summary.json fields: before = the mean metric of the first round's programs (what one sample of the code
    model gives without preference feedback), the first round's best, after = the best program so far, the optimum,
    the best-so-far per iteration, the mean over each round's programs that ran (before's counterpart for every round:
    a best-so-far that stays at the first round's best says the feedback found nothing better than one round of
    sampling), and which rater produced them."""
    means = []
    for h in result.history:
        ran = [c["metric"] for c in h["candidates"] if c["status"] == "ok"]
        means.append(sum(ran) / len(ran) if ran else None)
    return {"metric_name": "true_reward_of_chosen_arm",
            "metric_before": means[0],
            "metric_first_round_best": result.best_per_iteration[0],
            "metric_after": result.best_metric, "metric_optimum": task.optimum,
            "metric_per_iteration": result.best_per_iteration, "metric_mean_per_iteration": means,
            "rater": result.rater,
            "trainer_calls": result.trainer_calls, "failed_samples": result.failed_samples,
            "best_code": result.best_code, "history": result.history}
