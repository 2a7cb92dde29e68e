"""benchmarks/context_reward_sweep.py, the command docs/reward-models.md gives to reproduce the context-aware sweep:
its arguments are checked before anything trains (docs-trial: `--help` and a malformed spec were a ValueError
traceback from a tuple unpacking; no argument at all ran nothing and said nothing)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "context_reward_sweep.py"


def _module():
    spec = importlib.util.spec_from_file_location("context_reward_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_context_reward_sweep_parses_the_documented_specs_and_names_a_bad_one():
    sweep = _module()
    assert sweep.parse_spec("loud_longprompt,1e-3,120") == ("loud_longprompt", 1e-3, 120, "builtin:tiny-llama", ())
    assert sweep.parse_spec("loud_longprompt,3e-3,60,builtin:tiny-llama,seed=1") == (
        "loud_longprompt", 3e-3, 60, "builtin:tiny-llama", ("seed=1",))
    with pytest.raises(SystemExit, match=r"'loud,1e-3' is not TOY,LR,STEPS \(not enough values"):
        sweep.parse_spec("loud,1e-3")
    with pytest.raises(SystemExit, match=r"'lowd,1e-3,5' is not TOY,LR,STEPS \(unknown toy 'lowd'\)"):
        sweep.parse_spec("lowd,1e-3,5")


def test_context_reward_sweep_help_prints_its_usage_and_exits_0():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: python benchmarks/context_reward_sweep.py TOY,LR,STEPS" in done.stdout
    assert "(TOY: brevity | loud | loud_longprompt" in done.stdout
