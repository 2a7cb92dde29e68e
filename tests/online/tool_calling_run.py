"""A tiny GRPO run with tool calling (tests/online/test_tool_calling.py's scripted turns and tool tokenizer) as a
script, for the several-process test: python tests/online/tool_calling_run.py OUT_DIR [key=value ...] (also under
accelerate launch --num_processes 2). The tool `add` appends one line per call to OUT_DIR/calls.txt; add(4, 5) then
sleeps 2 s (past a tool_timeout_s=0.5 given on the command line: a timeout). The held-out evaluation (first prompt,
greedy, before and after training) answers with the same scripted turns and tools."""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import test_tool_calling as t  # noqa: E402


def counted_add(a: int, b: int) -> int:
    """Adds two integers (and records the call).

    Args:
        a: The first integer.
        b: The second integer.
    """
    with open(Path(sys.argv[1]) / "calls.txt", "a") as fh:
        fh.write(f"{a} {b}\n")
    if (a, b) == (4, 5):
        time.sleep(2.0)
    return a + b


counted_add.__name__ = "add"

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
    generator_module.make_generator = lambda cfg, policy, tokenizer, acc=None: t.ScriptedTurns(
        tok, cfg.max_completion_length, True)
    tasks_module.EvalTurns = lambda cfg, model, tokenizer, sampled: t.ScriptedTurns(tok, cfg.max_completion_length, True)
    limit = overrides.pop("tool_timeout_s", 60.0)  # the tools come from Python: the config has none to read it
    cfg = config_from_dict({**t.BASE, "output_dir": sys.argv[1], "eval_dataset_name": "held.jsonl", **overrides})
    cfg.tool_timeout_s = limit
    run = OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                    task=Task([{"prompt": p} for p in t.PROMPTS], [t.reward], [{"prompt": t.PROMPTS[0]}],
                              dataset_evaluate(cfg, [{"prompt": t.PROMPTS[0]}], [t.reward])), tools=[counted_add])
    run.train()
