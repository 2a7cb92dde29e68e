"""Recipe options out of range are refused before a recipe builds or trains anything, naming the option and why
(before: a GRPO group of 1, a bug rate of 2, zero held-out prompts or an empty operand range ran the warm-up stage,
then crashed or trained nothing)."""
import pytest

import preflab.models.tiny as tiny
import preflab.reward_models.themis_toy as themis_toy
import preflab.tool_use.itool as itool
from preflab.errors import ConfigError
from preflab.online.pro_recipe import run_pro
from preflab.reward_models.fspo import run_fspo
from preflab.reward_models.themis_toy import run_themis_arithmetic
from preflab.tool_use.dstc import run_dstc
from preflab.tool_use.otc import run_otc
from preflab.tool_use.itool import run_itool

OTC = ("task otc: need prompts_per_generation >= 1, num_generations >= 2 (GRPO compares the rollouts of one prompt: a "
       "group of 1 has no advantage to learn from), max_completion_length and sft_batch_size >= 1, save_steps >= 0, "
       "learning_rate > 0 and otc_c > 0 when set; got ")
DSTC = ("dstc recipe_params: need sft_bug_rate and sft_noise in [0, 1] (probabilities), sft_per_task, sft_steps and "
        "dpo_steps >= 1, and temperature, beta and dpo_learning_rate > 0; got ")
ITOOL = ("itool recipe_params: need n_test >= 1 (held-out prompts), mcts_iters >= 1 (simulations per search), "
         "temperature > 0 (the expansion samples), max_new_tokens >= 1 and simpo_batch_size >= 1; got ")

CASES = {
    "otc num_generations=1": (run_otc, {"num_generations": 1}, OTC + "prompts_per_generation=16, num_generations=1, "
                              "max_completion_length=72, sft_batch_size=32, save_steps=10, learning_rate=0.0003, "
                              "otc_c=None."),
    "otc prompts_per_generation=0": (run_otc, {"prompts_per_generation": 0}, OTC + "prompts_per_generation=0, "
                                     "num_generations=8, max_completion_length=72, sft_batch_size=32, save_steps=10, "
                                     "learning_rate=0.0003, otc_c=None."),
    "dstc sft_bug_rate=2": (run_dstc, {"sft_bug_rate": 2.0}, DSTC + "sft_bug_rate=2.0, sft_noise=0.1, sft_per_task=3, "
                            "sft_steps=1000, dpo_steps=8, temperature=1.0, beta=0.1, dpo_learning_rate=0.0003."),
    "dstc dpo_steps=0": (run_dstc, {"dpo_steps": 0}, DSTC + "sft_bug_rate=0.8, sft_noise=0.1, sft_per_task=3, "
                         "sft_steps=1000, dpo_steps=0, temperature=1.0, beta=0.1, dpo_learning_rate=0.0003."),
    "itool n_test=0": (run_itool, {"n_test": 0}, ITOOL + "n_test=0, mcts_iters=5, temperature=1.0, "
                       "max_new_tokens=60, simpo_batch_size=8."),
    "itool temperature=0": (run_itool, {"temperature": 0.0}, ITOOL + "n_test=200, mcts_iters=5, temperature=0.0, "
                            "max_new_tokens=60, simpo_batch_size=8."),
    "themis train_operands=[5, 1]": (run_themis_arithmetic, {"train_operands": [5, 1]},
                                     "themis recipe_params.train_operands must be [low, high], integers with 0 <= low "
                                     "<= high (the operands' range), got [5, 1]."),
    # a stage name the recipe has not: refused (itool's, misspelt or past its iterations, never matched, so the whole
    # recipe ran); one check (preflab.recipe_state.check_stop_after_stage) for the four recipes that can stop
    "itool stop_after_stage=iter_3": (run_itool, {"iterations": 2, "stop_after_stage": "iter_3"},
                                      "recipe_params.stop_after_stage must be one of ('sft_1_easy', 'sft_2_medium', "
                                      "'sft_3_hard', 'iter_1', 'iter_2', 'control_1', 'control_2') or null, got "
                                      "'iter_3'."),
    "itool stop_after_stage=control_1 without control": (
        run_itool, {"iterations": 1, "control": False, "stop_after_stage": "control_1"},
        "recipe_params.stop_after_stage must be one of ('sft_1_easy', 'sft_2_medium', 'sft_3_hard', 'iter_1') or "
        "null, got 'control_1'."),
    "otc stop_after_stage=warmup": (run_otc, {"stop_after_stage": "warmup"}, "recipe_params.stop_after_stage must be "
                                    "one of ('sft', 'grpo', 'control') or null, got 'warmup'."),
    "pro stop_after_stage=SFT": (run_pro, {"stop_after_stage": "SFT"}, "recipe_params.stop_after_stage must be one of "
                                 "('adapter', 'sft', 'grpo', 'control') or null, got 'SFT'."),
    "fspo stop_after_stage=1": (run_fspo, {"stop_after_stage": 1}, "recipe_params.stop_after_stage must be one of "
                                "('fspo', 'pooled') or null, got 1."),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_out_of_range_recipe_options_are_refused_before_anything_is_built(name, tmp_path, monkeypatch):
    def built(*args, **kwargs):
        raise AssertionError("the recipe started building: the check came too late")

    for module, attr in ((tiny, "tiny_tokenizer"), (tiny, "tiny_causal_lm"), (itool, "make_itool_rows"),
                         (themis_toy, "arithmetic_rows")):
        monkeypatch.setattr(module, attr, built)
    run, params, message = CASES[name]
    with pytest.raises(ConfigError) as err:
        run(str(tmp_path / "out"), **params)
    assert str(err.value) == message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch, hidden, heads, need", [("llama", 12, 4, 8), ("qwen2", 0, 2, 4), ("gpt2", 10, 4, 4)])
def test_tiny_model_hidden_size_that_does_not_fit_its_heads_is_named(arch, hidden, heads, need):
    with pytest.raises(ConfigError) as err:
        tiny.tiny_causal_lm(None, arch=arch, hidden_size=hidden, num_heads=heads)
    even = " of an even size, for rotary embeddings)" if arch != "gpt2" else ")"
    assert str(err.value) == (f"hidden_size={hidden} does not fit the tiny {arch} model: it needs a positive "
                              f"multiple of {need} ({heads} attention heads{even}.")
    assert tiny.tiny_causal_lm(None, arch=arch, hidden_size=need * 2, num_heads=heads).config.vocab_size == 300
