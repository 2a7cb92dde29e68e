"""`preflab train examples/tools/icpl.yaml`: the ICPL loop on the built-in bandit task, as a run with a summary.

The state (every iteration's programs, outcomes and ratings) is written to `icpl_state.json` after each iteration;
`resume_from_checkpoint: true` continues after the last finished iteration with the same result as an uninterrupted
run (the scripted code model is seeded per iteration; a real model's samples are kept in the state).
"""
from __future__ import annotations

import time
from pathlib import Path

from preflab.errors import ConfigError
from preflab.reward_design.icpl import AutoRater, HumanRater, ScriptedCodeLLM, result_summary, run_icpl
from preflab.reward_design.toy_bandit import BanditTask
from preflab.runlog import write_summary


def run_icpl_recipe(output_dir: str, seed: int = 0, resume: bool = False, quiet: bool = False, iterations: int = 5,
                    samples: int = 6, arms: int = 5, dims: int = 3, rater: str = "auto",
                    code_model: str = "scripted", max_new_tokens: int = 256) -> dict:
    out, started = Path(output_dir), time.perf_counter()
    state = out / "icpl_state.json"
    if state.exists() and not resume:
        raise ConfigError(f"{state} exists: set resume_from_checkpoint=true to continue that run, or use a new "
                          "output_dir.")
    if rater not in ("auto", "human"):
        raise ConfigError(f"recipe_params.rater must be 'auto' or 'human', got {rater!r}.")
    if code_model == "scripted":
        llm = ScriptedCodeLLM(dims=dims, seed=seed)
    else:
        from preflab.models.load import load_tokenizer
        from preflab.reward_design.icpl import CausalLMCodeLLM
        from transformers import AutoModelForCausalLM

        llm = CausalLMCodeLLM(AutoModelForCausalLM.from_pretrained(code_model, use_safetensors=True),
                              load_tokenizer(code_model, False), max_new_tokens=max_new_tokens)
    task = BanditTask.default(arms=arms, dims=dims, seed=seed)
    say = (lambda *a: None) if quiet else print

    def progress(t, candidates, good):
        ok = [c["metric"] for c in candidates if c["status"] == "ok"]
        say(f"icpl: iteration {t + 1}/{iterations}: {len(ok)}/{len(candidates)} programs ran, best metric "
            f"{max(ok) if ok else float('nan'):.3f} (optimum {task.optimum:.3f})")

    result = run_icpl(llm, task, AutoRater() if rater == "auto" else HumanRater(), iterations, samples, state,
                      progress)
    summary = {"recipe": "icpl", **result_summary(result, task), "code_model": code_model,
               "runtime_s": time.perf_counter() - started}
    write_summary(out, summary)
    return summary
