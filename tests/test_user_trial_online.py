"""Regressions from a second new-user trial (online, tool, vision and diffusion paths; changes/newuser2.md): each
failed on the code before."""
import json

import pytest

from preflab.config import load_config
from preflab.errors import ConfigError


# ---------------------------------------------------------------------------------------------- recipes (tools)
def test_recipe_params_take_dotted_overrides_on_the_command_line():
    """`recipe_params.iterations=1` was 'unknown config key' (only objective_params.x worked): a recipe option could
    only be changed by rewriting the whole recipe_params mapping. Now it sets one key and keeps the others."""
    cfg = load_config("examples/tools/dstc.yaml", ["recipe_params.iterations=1", "recipe_params.n_codes=3"])
    assert cfg.recipe_params["iterations"] == 1 and cfg.recipe_params["n_codes"] == 3
    assert cfg.recipe_params["n_tests"] == 6  # the file's other keys are kept


def test_recipe_params_of_the_wrong_type_are_refused_naming_the_option():
    """recipe_params.n_codes=abc crashed inside the recipe with a raw TypeError traceback ('<' between str and
    int); a misspelt option had no hint. A number YAML reads as text (3e-4) is taken as a number."""
    from preflab.recipes import check_recipe_params

    with pytest.raises(ConfigError, match=r"recipe_params.n_codes='abc' is not an integer.*n_codes=6"):
        check_recipe_params("dstc", {"n_codes": "abc"})
    with pytest.raises(ConfigError, match=r"recipe_params.control=1 is not true or false"):
        check_recipe_params("dstc", {"control": 1})
    with pytest.raises(ConfigError, match="Did you mean 'n_codes'"):
        check_recipe_params("dstc", {"n_code": 3})
    params = {"dpo_learning_rate": "3e-4", "sft_steps": 5}
    check_recipe_params("dstc", params)
    assert params == {"dpo_learning_rate": 3e-4, "sft_steps": 5}


@pytest.mark.parametrize("limits", [{"timeout_s": -1}, {"max_workers": 0}])
def test_dstc_refuses_bad_sandbox_limits_before_the_warm_up(monkeypatch, tmp_path, limits):
    """timeout_s=-1 / max_workers=0 were refused by the sandbox at the first program run, after the warm-up SFT
    (1000 steps in the shipped config) had run; now before anything trains."""
    from preflab.loops import sft
    from preflab.tool_use.dstc import run_dstc

    def no_sft(*args, **kwargs):
        raise AssertionError("the warm-up SFT ran before the limits were checked")

    monkeypatch.setattr(sft, "SFTTrainer", no_sft)
    with pytest.raises(ConfigError, match="timeout_s > 0 .* max_workers >= 1"):
        run_dstc(output_dir=str(tmp_path / "dstc"), quiet=True, **limits)


# ---------------------------------------------------------------------------------------------- online runs
def test_reward_funcs_from_a_python_file_or_the_current_directory(tmp_path, monkeypatch):
    """reward_funcs: ./my_rewards.py:fn crashed with a raw TypeError traceback ('package' argument required for a
    relative import), and my_rewards:fn with my_rewards.py in the current directory was 'No module named' under the
    console script (TRL's scripts search the current directory). A misspelt name now gets a did-you-mean."""
    import sys

    from preflab.online.tasks import resolve_judge

    (tmp_path / "my_rewards_nu2.py").write_text("def length_reward(prompts, completions, **kw):\n"
                                                "    return [float(len(c)) for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])  # as the console script
    by_file = resolve_judge("./my_rewards_nu2.py:length_reward")
    assert by_file(["p"], ["abc"]) == [3.0]
    by_module = resolve_judge("my_rewards_nu2:length_reward")
    assert by_module(["p"], ["abcd"]) == [4.0]
    with pytest.raises(ConfigError, match="Did you mean 'length_reward'"):
        resolve_judge("./my_rewards_nu2.py:lenght_reward")
    with pytest.raises(ConfigError, match="the file nothere.py does not exist"):
        resolve_judge("nothere.py:f")
    with pytest.raises(ConfigError, match="Did you mean 'demo_true_reward'"):
        resolve_judge("demo_true_rewrd")
