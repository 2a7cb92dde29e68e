"""A tiny GRPO run with environments (tests/online/test_environment_factory.py's scripted turns, tool tokenizer and
environments) as a script, for the several-process test: python tests/online/environment_run.py OUT_DIR [key=value
...] (also under accelerate launch --num_processes 2). Every reset, tool call and get_reward of an environment and
every completion the environments= reward function scores appends a line to OUT_DIR/calls.txt (with the process's
rank), so a call made twice shows. The held-out evaluation (the first row, greedy, before and after training) answers
with the same scripted turns and environments. no_dataset=true: a run without a dataset (LoggedDrawn's reset gives
the prompts; no evaluation). no_prompt=true: four dataset rows without a prompt ({"n": i}: LoggedDrawn's reset gives
each its text; no evaluation)."""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import test_environment_factory as t  # noqa: E402


def log(line: str) -> None:
    with open(Path(sys.argv[1]) / "calls.txt", "a") as fh:
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


if __name__ == "__main__":
    import yaml

    import preflab.online.generator as generator_module
    import preflab.online.tasks as tasks_module
    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_causal_lm
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task, dataset_evaluate

    torch.set_num_threads(1)
    Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
    overrides = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in sys.argv[2:])}
    tok = t.tool_tokenizer()
    generator_module.make_generator = lambda cfg, policy, tokenizer, acc=None: t.EnvScripted(
        tok, cfg.max_completion_length, True)
    tasks_module.EvalTurns = lambda cfg, model, tokenizer, sampled: t.EnvScripted(tok, cfg.max_completion_length)
    if overrides.pop("no_dataset", False):  # environment_factory without a dataset: prompts from reset
        from preflab.online.api import reset_only

        cfg = config_from_dict({**t.BASE, "output_dir": sys.argv[1], **overrides})
        OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                  task=reset_only(cfg, [], LoggedDrawn), environment_factory=LoggedDrawn).train()
        sys.exit(0)
    if overrides.pop("no_prompt", False):  # dataset rows without a prompt (TRL's default beside an environment)
        cfg = config_from_dict({**t.BASE, "output_dir": sys.argv[1], **overrides})
        OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                  task=Task([{"n": i} for i in range(4)], []), environment_factory=LoggedDrawn).train()
        sys.exit(0)
    cfg = config_from_dict({**t.BASE, "output_dir": sys.argv[1], "eval_dataset_name": "held.jsonl", **overrides})
    held = [dict(t.ROWS[0])]
    run = OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                    task=Task([dict(r) for r in t.ROWS], [logged_echo_reward], held,
                              dataset_evaluate(cfg, held, [logged_echo_reward])),
                    environment_factory={"counter": LoggedCounter, "echo": LoggedEcho})
    run.train()
