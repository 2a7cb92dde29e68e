"""Reward design by a code-writing model from preferences: ICPL (In-Context Preference Learning, arXiv:2410.17233).

    from preflab.reward_design import run_icpl, ScriptedCodeLLM, BanditTask, AutoRater
    result = run_icpl(ScriptedCodeLLM(seed=0), BanditTask.default(), AutoRater(), iterations=5, samples=6)

`icpl.py` is the outer loop (propose K reward programs -> train a policy per program -> rate -> revise with the
good and bad programs in the prompt); `toy_bandit.py` the built-in CPU task. Model-written reward code only ever
runs in `preflab.sandbox`.
"""
from preflab.reward_design.icpl import (PREFERENCE_STATEMENT, AutoRater, CausalLMCodeLLM, HumanRater, IcplResult,
                                        ScriptedCodeLLM, build_prompt, run_icpl)
from preflab.reward_design.toy_bandit import BanditTask

__all__ = ["run_icpl", "IcplResult", "build_prompt", "PREFERENCE_STATEMENT", "ScriptedCodeLLM", "CausalLMCodeLLM",
           "AutoRater", "HumanRater", "BanditTask"]
