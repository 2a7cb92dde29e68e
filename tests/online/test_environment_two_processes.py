"""Environments and tools under accelerate launch with two processes, against one process: the main process holds
the environments and runs the tool calls, makes every call once, and the weights equal the one-process run's.

The four runs (test_environment_factory.py's dataset with a held-out evaluation; test_environment_no_dataset.py's
run without a dataset; test_environment_no_prompt.py's rows without a prompt; test_tool_calling.py's GRPO run with a
tool from Python) share one plain process and one two-process launch of environment_run.py
(runs=default,no_dataset,no_prompt,tools: the runs one after another in the same processes, each into a folder of its
own with its own calls.txt): a launch costs a launcher and two ranks' imports, so four launches cost about four times
the CPU of one."""
import json
import random
import sys
from collections import Counter as Tally
from pathlib import Path

import pytest
from safetensors.torch import load_file

from preflab.online.environments import reset_seed

sys.path.insert(0, str(Path(__file__).parent))

ENVIRONMENT_RUNS = ("default", "no_dataset", "no_prompt")
# each run's own options: the environment runs one round; the tool run two steps, its add(4, 5) past the time limit
OWN = {**{mode: ["max_steps=1", "steps_per_generation=1", "save_strategy=no"] for mode in ENVIRONMENT_RUNS},
       "tools": ["max_steps=2", "tool_timeout_s=0.5"]}


# the run each test reads
RUN_OF_TEST = {"test_two_processes_call_each_environment_once_and_equal_one_process": "default",
               "test_two_processes_draw_the_same_prompts_once_and_equal_one_process": "no_dataset",
               "test_two_processes_reset_rows_without_a_prompt_once_and_equal_one_process": "no_prompt",
               "test_two_processes_run_each_tool_call_once_and_equal_one_process": "tools"}


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory, one_and_two_processes):
    """`launched(mode)`: the folders (one process, two processes) of environment_run.py's `mode` run (OWN: its
    options), per-device batches of 1 (one_and_two_processes: 1 x 4 against 2 x 2 examples per step). The first use
    runs the runs of every selected test of this module (RUN_OF_TEST; a mutant's selection of one test runs one)."""
    selected = {item.name for item in request.session.items if item.module is request.module}
    runs = [mode for mode in OWN if any(RUN_OF_TEST.get(name) == mode for name in selected)] or list(OWN)
    out = tmp_path_factory.mktemp("environments")
    one_and_two_processes(str(Path(__file__).parent / "environment_run.py"), out,
                          ["runs=" + ",".join(runs), "per_device_train_batch_size=1",
                           *(f"{mode}.{option}" for mode in runs for option in OWN[mode])])

    def folders(mode: str) -> tuple[Path, Path]:
        assert mode in runs
        return out / "one" / mode, out / "two" / mode

    return folders


def same_weights(one: Path, two: Path) -> float:
    """The largest difference between the two runs' final weights."""
    a, b = (load_file(str(d / "model.safetensors")) for d in (one, two))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
def test_two_processes_call_each_environment_once_and_equal_one_process(launched):
    """Under accelerate launch with two processes the main process holds the environments: every reset, tool call,
    get_reward and environments= reward runs once (calls.txt: the same lines as the one-process run, all from rank 0)
    and the other process continues from its observations, tool results and rewards: the weights equal the
    one-process run's to float summation order (1 x 4 vs 2 x 2 examples per step). The held-out evaluation (one
    counter row, before and after) makes its calls once too and gives the same reward."""
    one, two = launched("default")
    tallies = [Tally((d / "calls.txt").read_text().splitlines()) for d in (one, two)]
    # the one round: 8 rollouts reset; steps 2 x 2 x 2 (targets 5 and 4), 0 for target 7 (shout is not its
    # tool), 2 shouts; get_reward for the 6 counter rollouts; echo_reward scores all 8
    per_round = {"reset rank0": 8, "step rank0": 8, "shout rank0": 2, "get_reward rank0": 6, "echo_reward rank0": 8}
    # each evaluation (before, after): the target-5 row's one answer resets, steps twice, is judged by both
    per_eval = {"reset rank0": 1, "step rank0": 2, "get_reward rank0": 1, "echo_reward rank0": 1}
    assert tallies[0] == tallies[1] == Tally({k: v + 2 * per_eval.get(k, 0) for k, v in per_round.items()})
    summaries = [json.loads((d / "summary.json").read_text()) for d in (one, two)]
    assert [s["eval_reward_before"] for s in summaries] == [s["eval_reward_after"] for s in summaries] == [1.0, 1.0]
    assert summaries[0]["online"]["tool_calls"] == summaries[1]["online"]["tool_calls"] == 12
    assert same_weights(one, two) < 1e-5


def assert_seeded_resets_once(one: Path, two: Path) -> None:
    """environment_run.py's no_dataset or no_prompt run (every prompt from reset) as one process and as two, one
    round of 4 prompts x 2 rollouts at seed 3: the main process makes every reset, each drawing its target under
    reset_seed(round seed, the prompt's place) as one process does, step and get_reward once per rollout, and the
    weights equal the one-process run's to float summation order."""
    tallies = [Tally((d / "calls.txt").read_text().splitlines()) for d in (one, two)]
    round_seed = 3 * 7919 * 100_003  # OnlineRun._round_seed(0) at seed 3
    targets = [random.Random(reset_seed(round_seed, p)).randint(3, 6) for p in range(4)]
    resets = Tally(f"reset {t} rank0" for t in targets for _ in range(2))
    assert tallies[0] == tallies[1]
    assert Tally({k: v for k, v in tallies[0].items() if k.startswith("reset")}) == resets
    assert set(tallies[0]) - set(resets) == {"step rank0", "get_reward rank0"} and tallies[0]["get_reward rank0"] == 8
    assert same_weights(one, two) < 1e-5


@pytest.mark.slow
def test_two_processes_draw_the_same_prompts_once_and_equal_one_process(launched):
    """Without a dataset under accelerate launch with two processes: the main process makes every reset (each
    rollout's target drawn under its prompt's seed, the same as one process's), step and get_reward once, and the
    weights equal the one-process run's to float summation order."""
    assert_seeded_resets_once(*launched("no_dataset"))


@pytest.mark.slow
def test_two_processes_reset_rows_without_a_prompt_once_and_equal_one_process(launched):
    """Dataset rows without a prompt under accelerate launch with two processes (environment_run.py's no_prompt run):
    the main process makes every reset (each rollout's target drawn under the seed of its row's place in the round,
    the same as one process's), step and get_reward once, and the weights equal the one-process run's."""
    assert_seeded_resets_once(*launched("no_prompt"))


@pytest.mark.slow
def test_two_processes_run_each_tool_call_once_and_equal_one_process(launched):
    """Under accelerate launch with two processes the main process runs each tool call once (the tool's file holds
    one line per counted call, not two) and the others continue from its results: the weights equal the one-process
    run's to float summation order (one example per micro-batch on both sides: 1 x 4 vs 2 x 2). The call add(4, 5)
    sleeps past tool_timeout_s on the main process: its timeout observation reaches the other process too. The
    held-out evaluation (one prompt, one call, before and after) runs its calls once too and gives the same values.
    (Moved from test_tool_calling.py to share the launch.)"""
    one, two = launched("tools")
    for folder in (one, two):
        summary = json.loads((folder / "summary.json").read_text())
        calls = (folder / "calls.txt").read_text().splitlines()
        # training: 15 calls counted, the 3 to the unknown tool `mul` never reach a function; the evaluation: 2 x 1
        assert summary["online"]["tool_calls"] == 15 and len(calls) == 15 - 3 + 2
        assert summary["eval_tools_before"]["tools/calls"] == summary["eval_tools_after"]["tools/calls"] == 1.0
        # add(4, 5): once per completion of the "both" prompt (K = 3), each past the limit
        assert (summary["online"]["tool_timeouts"], summary["online"]["tool_failures"]) == (3, 6 + 3)
    one_s, two_s = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    # the scripted answer after the call, its seeded variant at seed 3: "it is 5 indeed"
    assert one_s["eval_reward_after"] == two_s["eval_reward_after"] == len("it is 5 indeed")
    assert same_weights(one, two) < 1e-5
