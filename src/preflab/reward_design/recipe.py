"""`preflab train examples/tools/icpl.yaml`: the ICPL loop on the built-in bandit task, as a run with a summary.

The state (every iteration's programs, outcomes and ratings) is written to `icpl_state.json` (a
`preflab.recipe_state.RecipeStateFile`) after each iteration; `resume_from_checkpoint: true` continues after the last
finished iteration with the same result as an uninterrupted run (the scripted code model is seeded per iteration; a
real model's samples are kept in the state). An existing state without resume is refused, and so is a resume with
other recipe_params than the run that wrote it (only `iterations` may change, to run more rounds).
"""
from __future__ import annotations

import time
from pathlib import Path

from preflab.errors import ConfigError
from preflab.reward_design.icpl import (AutoRater, HumanRater, ScriptedCodeLLM, open_icpl_state, result_summary,
                                        run_icpl)
from preflab.reward_design.toy_bandit import BanditTask
from preflab.runlog import write_summary


def run_icpl_recipe(output_dir: str, seed: int = 0, resume: bool = False, quiet: bool = False, iterations: int = 5,
                    samples: int = 6, arms: int = 5, dims: int = 3, rater: str = "auto",
                    code_model: str = "scripted", max_new_tokens: int = 256,
                    allow_config_change: bool = False) -> dict:
    params = {k: v for k, v in locals().items() if k not in ("output_dir", "resume", "quiet", "allow_config_change")}
    out, started = Path(output_dir), time.perf_counter()
    if rater not in ("auto", "human"):
        raise ConfigError(f"recipe_params.rater must be 'auto' or 'human', got {rater!r}.")
    if arms < 2 or dims < 1 or max_new_tokens < 1:  # the bandit needs arms to choose between, each with features
        raise ConfigError(f"icpl recipe_params: need arms >= 2, dims >= 1 and max_new_tokens >= 1; got arms={arms}, "
                          f"dims={dims}, max_new_tokens={max_new_tokens}.")
    if code_model != "scripted":  # a path that does not exist is named before anything runs (not a hub traceback)
        from preflab.models.load import check_model_name

        check_model_name(code_model, "recipe_params.code_model")
    task = BanditTask.default(arms=arms, dims=dims, seed=seed)
    rater_impl = AutoRater() if rater == "auto" else HumanRater()
    # opened (and refused, when it must be) before a code model is loaded
    state = open_icpl_state(out / "icpl_state.json", task, rater_impl, iterations, samples, resume, params,
                            allow_change=allow_config_change)
    if code_model == "scripted":
        llm = ScriptedCodeLLM(dims=dims, seed=seed)
    else:
        from preflab.models.load import load_causal_lm, load_tokenizer
        from preflab.reward_design.icpl import CausalLMCodeLLM

        tokenizer = load_tokenizer(code_model, False, option="recipe_params.code_model")
        llm = CausalLMCodeLLM(load_causal_lm(code_model, tokenizer=tokenizer, option="recipe_params.code_model"),
                              tokenizer, max_new_tokens=max_new_tokens)
    say = (lambda *a: None) if quiet else print

    def progress(t, candidates, good):
        ok = [c["metric"] for c in candidates if c["status"] == "ok"]
        say(f"icpl: iteration {t + 1}/{iterations}: {len(ok)}/{len(candidates)} programs ran, best metric "
            f"{max(ok) if ok else float('nan'):.3f} (optimum {task.optimum:.3f})")

    result = run_icpl(llm, task, rater_impl, iterations, samples, state, progress)
    summary = {"recipe": "icpl", **result_summary(result, task), "code_model": code_model,
               "runtime_s": time.perf_counter() - started}
    write_summary(out, summary)
    return summary
