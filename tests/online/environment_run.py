"""A tiny GRPO run with environments (tests/online/test_environment_factory.py's scripted turns, tool tokenizer and
environments) as a script, for the several-process test: python tests/online/environment_run.py OUT_DIR [key=value
...] (also under accelerate launch --num_processes 2). Every reset, tool call and get_reward of an environment and
every completion the environments= reward function scores appends a line to OUT_DIR/calls.txt (with the process's
rank), so a call made twice shows. The held-out evaluation (the first row, greedy, before and after training) answers
with the same scripted turns and environments. no_dataset=true: a run without a dataset (LoggedDrawn's reset gives
the prompts; no evaluation). no_prompt=true: four dataset rows without a prompt ({"n": i}: LoggedDrawn's reset gives
each its text; no evaluation).

runs=default,no_dataset,no_prompt,tools: those runs one after another in the same processes (one launch instead of
four), each into OUT_DIR/<name> with its own calls.txt; every run starts from the state the process started with
(Python's, torch's and numpy's global random state, a fresh tokenizer and fresh patches of the generator and
evaluation turns, the process group kept open between runs). A key=value option applies to every run, a
MODE.key=value option to the run MODE only (after the others). The `tools` run is tests/online/test_tool_calling.py's
GRPO run with tool calling (its scripted turns, tool tokenizer and tool `add`, from Python): each call of `add`
appends "a b" to calls.txt; add(4, 5) then sleeps 2 s (past a tool_timeout_s=0.5 given as an option: a timeout);
the held-out evaluation (first prompt, before and after training) answers with the same scripted turns and tool."""
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import test_environment_factory as t  # noqa: E402


OUT = {"dir": None}  # the current run's output folder: its calls.txt


def log(line: str) -> None:
    with open(Path(OUT["dir"]) / "calls.txt", "a") as fh:
        fh.write(f"{line} rank{os.environ.get('RANK', '0')}\n")


class LoggedCounter(t.Counter):
    def reset(self, prompt=None, target=0, **kwargs):
        log("reset")
        return super().reset(prompt, target, **kwargs)

    def step(self, n: int) -> str:
        """Adds n to the total.

        Args:
            n: The number to add.
        """
        log("step")
        return super().step(n)

    def get_reward(self) -> float:
        log("get_reward")
        return super().get_reward()


class LoggedEcho(t.Echo):
    def reset(self, prompt=None, **kwargs):
        log("reset")
        return super().reset(prompt, **kwargs)

    def shout(self, text: str) -> str:
        """Says the text back in capitals.

        Args:
            text: What to say.
        """
        log("shout")
        return super().shout(text)


class LoggedDrawn(LoggedCounter):
    """test_environment_no_dataset.py's DrawnGoal (a target of 3..6 from Python's global random at reset), its reset
    logged with the target it drew (a run without a dataset: no_dataset=true); step and get_reward logged as
    LoggedCounter's."""

    def reset(self, **kwargs):
        import random

        self.total, self.target = 0, random.randint(3, 6)
        log(f"reset {self.target}")
        return f"reach (target {self.target})"


def logged_echo_reward(prompts, completions, environments, **kwargs):
    """t.echo_reward, each scored completion logged."""
    for _ in environments:
        log("echo_reward")
    return t.echo_reward(prompts, completions, environments)


def counted_add(a: int, b: int) -> int:
    """Adds two integers (and records the call).

    Args:
        a: The first integer.
        b: The second integer.
    """
    with open(Path(OUT["dir"]) / "calls.txt", "a") as fh:
        fh.write(f"{a} {b}\n")
    if (a, b) == (4, 5):
        time.sleep(2.0)
    return a + b


counted_add.__name__ = "add"


def tool_run(out: str, overrides: dict) -> None:
    """test_tool_calling.py's GRPO run with the tool counted_add (its calls in out/calls.txt) and a held-out
    evaluation of its first prompt."""
    import preflab.online.generator as generator_module
    import preflab.online.tasks as tasks_module
    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_causal_lm
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task, dataset_evaluate

    import test_tool_calling as tc

    Path(out).mkdir(parents=True, exist_ok=True)
    OUT["dir"] = out
    tok = tc.tool_tokenizer()
    generator_module.make_generator = lambda cfg, policy, tokenizer, acc=None: tc.ScriptedTurns(
        tok, cfg.max_completion_length, True)
    tasks_module.EvalTurns = lambda cfg, model, tokenizer, sampled: tc.ScriptedTurns(tok, cfg.max_completion_length,
                                                                                     True)
    limit = overrides.pop("tool_timeout_s", 60.0)  # the tools come from Python: the config has none to read it
    cfg = config_from_dict({**tc.BASE, "output_dir": out, "eval_dataset_name": "held.jsonl", **overrides})
    cfg.tool_timeout_s = limit
    OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
              task=Task([{"prompt": p} for p in tc.PROMPTS], [tc.reward], [{"prompt": tc.PROMPTS[0]}],
                        dataset_evaluate(cfg, [{"prompt": tc.PROMPTS[0]}], [tc.reward])),
              tools=[counted_add]).train()


def run(out: str, mode: str, overrides: dict) -> None:
    """One run into `out` in `mode` (default: the dataset of t.ROWS with a held-out evaluation; no_dataset;
    no_prompt; tools: tool_run), its environment or tool calls logged to out/calls.txt."""
    if mode == "tools":
        return tool_run(out, overrides)
    import preflab.online.generator as generator_module
    import preflab.online.tasks as tasks_module
    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_causal_lm
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task, dataset_evaluate

    Path(out).mkdir(parents=True, exist_ok=True)
    OUT["dir"] = out
    tok = t.tool_tokenizer()
    generator_module.make_generator = lambda cfg, policy, tokenizer, acc=None: t.EnvScripted(
        tok, cfg.max_completion_length, True)
    tasks_module.EvalTurns = lambda cfg, model, tokenizer, sampled: t.EnvScripted(tok, cfg.max_completion_length)
    if mode == "no_dataset":  # environment_factory without a dataset: prompts from reset
        from preflab.online.api import reset_only

        cfg = config_from_dict({**t.BASE, "output_dir": out, **overrides})
        OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                  task=reset_only(cfg, [], LoggedDrawn), environment_factory=LoggedDrawn).train()
    elif mode == "no_prompt":  # dataset rows without a prompt (TRL's default beside an environment)
        cfg = config_from_dict({**t.BASE, "output_dir": out, **overrides})
        OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                  task=Task([{"n": i} for i in range(4)], []), environment_factory=LoggedDrawn).train()
    elif mode == "default":
        cfg = config_from_dict({**t.BASE, "output_dir": out, "eval_dataset_name": "held.jsonl", **overrides})
        held = [dict(t.ROWS[0])]
        OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                  task=Task([dict(r) for r in t.ROWS], [logged_echo_reward], held,
                            dataset_evaluate(cfg, held, [logged_echo_reward])),
                  environment_factory={"counter": LoggedCounter, "echo": LoggedEcho}).train()
    else:
        sys.exit(f"unknown mode {mode!r} (default, no_dataset, no_prompt or tools)")


if __name__ == "__main__":
    import random

    import numpy as np
    import yaml

    sys.path.insert(0, str(Path(__file__).parents[1] / "loops"))
    from fsdp_run import close_process_group, keep_process_group  # noqa: E402

    torch.set_num_threads(1)
    overrides = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in sys.argv[2:])}
    runs = overrides.pop("runs", None)
    own = {}  # MODE.key=value: the run MODE's own options
    for key in [k for k in overrides if "." in k]:
        mode, name = key.split(".", 1)
        own.setdefault(mode, {})[name] = overrides.pop(key)
    if runs is None:  # one run into OUT_DIR itself
        mode = "no_dataset" if overrides.pop("no_dataset", False) else \
            "no_prompt" if overrides.pop("no_prompt", False) else "default"
        run(sys.argv[1], mode, {**overrides, **own.get(mode, {})})
        sys.exit(0)
    # several runs: each starts from the random state the process started with, as a process of its own would
    states = random.getstate(), torch.get_rng_state(), np.random.get_state()
    keep_process_group()
    for mode in runs.split(","):
        random.setstate(states[0])
        torch.set_rng_state(states[1])
        np.random.set_state(states[2])
        t.CALLS.clear()
        run(str(Path(sys.argv[1]) / mode), mode, {**overrides, **own.get(mode, {})})
    close_process_group()
