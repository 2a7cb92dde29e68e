"""Findings of the RL / online-training user trial (a TRL GRPOTrainer / OnlineDPOTrainer user moving to preflab):
each test fails on the code before its fix."""
import asyncio
import math

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.judge import Judge


def _loud(prompts, completions, **kwargs):
    return [float(sum(ch.isupper() for ch in c)) for c in completions]


def _raises_on_e(prompts, completions, **kwargs):
    if any("e" in c for c in completions):
        raise ValueError("cannot parse")
    return [1.0] * len(completions)


def test_a_judge_that_raises_drops_the_completion_even_with_other_judges():
    """With two reward functions, an exception in one turned that completion's reward into the other function's
    alone (the None "not applicable" rule): 'ABe' scored 2 where its group-mates scored 2 + 1, with no note and no
    judge/dropped. Now the completion is NaN (dropped, counted) and the first failure is kept for the message."""
    judge = Judge([_loud, _raises_on_e])
    scores, per_fn = judge(["p"] * 3, ["AB", "ABe", "A"], [0, 0, 0])
    assert scores[0].item() == 3.0 and scores[2].item() == 2.0
    assert math.isnan(scores[1].item())
    assert per_fn[1, 0].item() == 2.0  # the other judge's own score is still logged per function
    assert judge.last_raised == 1 and judge.stats()["judge/failed"] == 1.0
    assert "raised ValueError: cannot parse" in judge.failure_note()
    # a None (not applicable) from one function keeps the TRL rule: the other functions' sum
    none_some = lambda prompts, completions, **kw: [None if "e" in c else 1.0 for c in completions]  # noqa: E731
    scores, _ = Judge([_loud, none_some])(["p"] * 2, ["ABe", "A"], [0, 0])
    assert scores.tolist() == [2.0, 2.0]


async def _async_loud(prompts, completions, **kwargs):
    await asyncio.sleep(0)
    return _loud(prompts, completions)


def test_async_reward_functions_are_awaited():
    """TRL 1.16 awaits `async def` reward functions; preflab refused them ("judge returned coroutine ... it must
    return a list") and warned that the coroutine was never awaited."""
    scores, _ = Judge([_async_loud, _loud], weights=[1.0, 0.5])(["p"] * 2, ["AB", "a"], [0, 0])
    assert scores.tolist() == [3.0, 0.0]

    async def inside_a_loop():  # a notebook's running event loop
        return Judge([_async_loud])(["p"], ["ABC"], [0])[0].tolist()
    assert asyncio.run(inside_a_loop()) == [3.0]


ONLINE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "task": "online",
          "online_task": "dataset", "reward_funcs": "m:f", "max_steps": 2}


def test_grpo_delta_and_kl_bias_correction_reach_the_objective():
    """TRL's `delta` was refused as 'a parameter of the objective(s) slic'; `use_bias_correction_kl: false` was
    refused while preflab's KL term was exactly that (and TRL's default true accepted without being applied)."""
    cfg = config_from_dict({**ONLINE, "trainer": "grpo", "beta": 0.04, "delta": 1.5,
                            "use_bias_correction_kl": False})
    objective = cfg.objective()
    assert (objective.delta, objective.use_bias_correction_kl) == (1.5, False)
    assert config_from_dict({**ONLINE, "trainer": "dapo", "beta": 0.04}).objective().use_bias_correction_kl is True
    with pytest.raises(ConfigError, match="delta"):
        config_from_dict({**ONLINE, "trainer": "grpo", "delta": 0.0})


def test_saved_grpoconfig_loss_type_agreeing_with_the_trainer_loads():
    """A saved GRPOConfig carries loss_type (default dapo); with trainer: dapo it was refused with "(got trainer
    'dapo'). Set trainer: dapo and leave loss_type out", so no GRPOConfig dump loaded without editing it."""
    trl = pytest.importorskip("trl")
    raw = trl.GRPOConfig(output_dir="out", bf16=False, epsilon_high=0.28, beta=0.04).to_dict()
    assert raw["loss_type"] == "dapo"
    cfg = config_from_dict({**ONLINE, **raw, "trainer": "dapo", "max_steps": 2})
    objective = cfg.objective()
    assert (cfg.trainer, objective.loss_type, objective.epsilon_high, objective.beta) == ("dapo", "dapo", 0.28, 0.04)
    assert objective.use_bias_correction_kl is True  # the dump's (TRL's default) value, now applied
    with pytest.raises(ConfigError, match=r"`trainer: dapo` \(got trainer 'grpo'\)"):
        config_from_dict({**ONLINE, **raw, "trainer": "grpo", "max_steps": 2})  # a real disagreement is still refused
