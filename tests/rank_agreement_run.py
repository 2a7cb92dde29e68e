"""One rank of tests/test_rank_agreement.py: `python rank_agreement_run.py OUT` under RANK / WORLD_SIZE /
MASTER_ADDR / MASTER_PORT (2 gloo processes on the CPU). It runs each scenario in turn on both ranks and prints one
JSON line per scenario: {"scenario", "rank", "error" (the text of what this rank raised, None when nothing),
"seconds"}. `python rank_agreement_run.py OUT NAME,NAME` runs those scenarios only.

  sharded_ok       save_rank_checkpoint with every rank's part written: checkpoint-1 committed
  sharded_rank1    the same save at step 2 whose rank 1 part fails (a full disk naming rank 1's file)
  main_writes      recipe_state.main_writes whose write fails on the main process (a full disk naming its file)
  ref_cache        scoring.ref_cache.reference_cache whose cache folder cannot be made on rank 0
  ddp_checkpoint   a 2-step DPO run under DDP (save_steps 1) whose main process cannot write checkpoint-2's model
                   (a full disk naming it): checkpoint-1 is written, then both ranks stop
  ddp_best         a 1-step DPO run under DDP (load_best_model_at_end, save_total_limit 1) whose main process cannot
                   remove the checkpoints other than the best (a permission error naming checkpoint-1)
  ddp_final        a 1-step DPO run under DDP whose main process cannot write summary.json at the end
  ddp_claim        a DPO run whose output_dir the main process refuses (it holds a file and is no preflab run)
  ddp_config       a DPO run whose main process cannot write config.yaml at the start (config.yaml is a folder)
  ddp_metrics      a 3-step DPO run under DDP (no checkpoints) whose main process cannot append step 2's metrics row
  ddp_margins      a 1-step DPO run under DDP evaluated at the end only (eval_steps 0), whose main process cannot
                   append the final evaluation's margins to pair_margins.jsonl
  online_round     a 2-step online DPO run under DDP whose main process cannot write round 1's rounds/1.jsonl
  online_state     the same run (save_steps 1) whose main process cannot write checkpoint-1's online state
  reward_ok        a 2-step BT reward run under DDP with 10 eval pairs in batches of per_device_eval_batch_size 2
                   (tests/test_rank_agreement.py evaluates it with `preflab eval`)
  ddp_hub          a DPO run with push_to_hub whose main process cannot create the Hub repository (401)
  online_tool      a tool-calling rollout's calls (run on the main only) whose tool returns a value whose text
                   raises a plain RuntimeError (ToolCallingGenerator._run_calls)
  online_judge     environments' judging (main only) whose reward aggregator raises a plain RuntimeError
                   (environments.judge_rollouts)
  online_reset     environments' resets (main only) that raise a plain KeyError (environments.begin_rollouts)
  online_refusal   environments' resets whose user reset raises ValueError: refused (a ConfigError naming the row)
  online_reward_rank0  the online DPO run (no environments: every rank judges the round itself) whose reward function
                   raises on rank 0 only: every completion dropped there, past max_judge_failure_fraction
  online_reward_rank1  the same with the reward function raising on rank 1 only
  online_builder_rank1 the same run with a user pair_builder (builder.py:pairs) that raises on rank 1 only
  online_eval_main the same run with 2 held-out prompts evaluated at every step (eval_steps 1, judge_timeout_s 3)
                   whose reward function never returns on the main process in step 1's evaluation (a judge timeout
                   there; only the main judges the held-out answers)
  online_eval_failing the same run (no time limit) whose reward function raises at every call on rank 1 and, on the
                   main, on the answer to the held-out prompt "say wxy": each rank writes its last evaluation's
                   reward, per-prompt rewards and counts to after-rank<r>.json
  online_tool_loop_first_rank1 ToolCallingGenerator.generate of one prompt (test_tool_calling.py's scripted turns and
                   tool add) on 2 processes whose turns raise on rank 1 when sampling the first turns
  online_tool_loop_continue_rank1 the same whose turns raise on rank 1 when sampling the continuation after the tool
                   call (past the first exchange of tool calls)
  online_tool_rollouts_rank1 ToolRolloutGenerator.generate (OTC's calculator rollouts) of one prompt on 2
                   processes whose sampling raises on rank 1
  mcts_stuck_main  a tiny MCTS-DPO run (one round of 2 prompts, judge_timeout_s 3) whose judge never returns on the
                   main process at its 2nd call (the second prompt's search)
  mcts_failing_rank1 the same run (no time limit) whose judge raises at every call on rank 1 only

Each row also has "ended" (time.time() when the scenario ended) and, on rank 0 of the driver scenarios, "failed_at"
(time.time() when its write raised): how long the other rank went on after the main's failure.
"""
import errno
import gc
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist


FAILED_AT: dict = {}  # scenario -> time.time() when this rank's write raised


def full_disk(path: Path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


@contextmanager
def patched_on_rank_0(failing):
    """`failing` (a (module or class, name, replacement) of the writer that fails) patched in on rank 0, restored
    after the block; None: nothing patched."""
    if failing is None:
        yield
        return
    module, name, replacement = failing
    kept = getattr(module, name)
    if dist.get_rank() == 0:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, kept)


def dpo_run(out: Path, failing, evaluated: bool = False, **over):
    """A tiny offline DPO run under DDP (the process group is this script's) whose rank 0 has `failing` patched in
    (patched_on_rank_0); `evaluated`: the rows are the eval set too."""
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer

    rows = [{"prompt": f"echo: {w}\n", "chosen": w.upper(), "rejected": w} for w in ("cat", "dog", "owl", "bee")]
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "rows", "output_dir": str(out),
                            "per_device_train_batch_size": 2, "max_length": 32, "logging_steps": 1,
                            "disable_tqdm": True, "eval_steps": 0, "use_cpu": True, "report_to": "none", **over})
    with patched_on_rank_0(failing):
        Trainer(cfg, train_data=rows, eval_data=rows if evaluated else None).train()


def online_run(out: Path, failing, judge=None, **over):
    """tests/online/test_online_run.py's tiny online DPO run (2 steps, one round) under DDP, `failing` patched in
    on rank 0; judge: its reward function (None: test_online_run's e_judge)."""
    sys.path.insert(0, str(Path(__file__).parent / "online"))
    from test_online_run import e_judge, tiny_cfg, tiny_run

    with patched_on_rank_0(failing):
        tiny_run(tiny_cfg(out, max_steps=2, steps_per_generation=1, gradient_accumulation_steps=1,
                          prompts_per_generation=4, **over), judge or e_judge).train()


def grader_failing_on(rank: int):
    """test_online_run's e_judge as a reward function that raises on `rank` only (a grading server that refuses
    one node's requests)."""
    def graded(prompts, completions, **kwargs):
        if dist.get_rank() == rank:
            raise RuntimeError("the grading server refused the request (503)")
        return [c.count("e") - 0.01 * len(c) for c in completions]
    return graded


BUILDER = """import os


def pairs(scores, generator):
    if os.environ["RANK"] == "1":
        raise KeyError("ranking table")
    return [(p, int(row.nan_to_num(-1).argmax()), int(row.nan_to_num(99).argmin())) for p, row in enumerate(scores)
            if float(row.nan_to_num(-1).max()) > float(row.nan_to_num(99).min())]
"""


def online_builder_failing_on_rank_1(out: Path):
    """The online DPO run with a user pair_builder (out/builder.py:pairs: best vs worst) that raises on rank 1."""
    if dist.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "builder.py").write_text(BUILDER)
    dist.barrier()
    online_run(out / "run", None, pair_builder=f"{out / 'builder.py'}:pairs")


HELD_OUT = [{"prompt": f"say {w}\n"} for w in ("uv", "wxy")]


def online_eval_run(out: Path, stuck_on: int | None = None, failing_on: int | None = None):
    """The online DPO run with held-out prompts (HELD_OUT, online.tasks.dataset_evaluate) evaluated at every step
    (eval_steps 1), whose reward function, on rank `stuck_on`, never returns when it judges the held-out answers of
    step 1's evaluation (the second evaluation: the first is the starting policy's, when the run is built; under
    judge_timeout_s 3), and on rank `failing_on` raises at every call; on the main it raises on the answer to "say
    wxy" (with failing_on); everywhere else it is test_online_run's e_judge. Each rank writes its last evaluation's
    reward, per-prompt rewards and judge counts to out/after-rank<r>.json."""
    sys.path.insert(0, str(Path(__file__).parent / "online"))
    from test_online_run import PROMPTS, e_judge, tiny_cfg

    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task, dataset_evaluate

    held = {row["prompt"] for row in HELD_OUT}
    evaluations = []
    rank = dist.get_rank()

    def graded(prompts, completions, **kwargs):
        if prompts[0] in held:
            evaluations.append(len(prompts))
            if rank == stuck_on and len(evaluations) == 2:
                time.sleep(60)  # a grading server that stopped answering (abandoned in its daemon thread)
            if failing_on is not None and rank == 0 and "say wxy\n" in prompts:
                raise RuntimeError("the grading server has no rubric for this prompt")
        if rank == failing_on:
            raise RuntimeError("the grading server refused the request (503)")
        return e_judge(prompts, completions)

    cfg = tiny_cfg(out, max_steps=2, steps_per_generation=1, gradient_accumulation_steps=1, prompts_per_generation=4,
                   eval_steps=1, **({"judge_timeout_s": 3} if stuck_on is not None else {}))
    tok = tiny_tokenizer("char")
    task = Task(PROMPTS, [e_judge], HELD_OUT, dataset_evaluate(cfg, HELD_OUT, [graded]))
    run = OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok, task=task)
    run.train()
    (out / f"after-rank{rank}.json").write_text(json.dumps({k: run.after[k] for k in (
        "reward", "per_prompt", "unscored", "judge_failed", "judge_failure")}))


def tool_loop_failing_on_rank_1(at_call: int):
    """ToolCallingGenerator.generate of test_tool_calling.py's "two plus three" prompt (its scripted turns: a call
    of add, then the answer) on 2 processes, whose turns raise on rank 1 at their `at_call`-th sampling (1: the
    first turns; 2: the continuation after the tool call)."""
    sys.path.insert(0, str(Path(__file__).parent / "online"))
    import test_tool_calling as tc
    from accelerate import PartialState

    from preflab.online.tool_calling import ToolCallingGenerator

    tok = tc.tool_tokenizer()

    class Turns(tc.ScriptedTurns):
        def generate(self, prompt_ids, num_generations, seed):
            if dist.get_rank() == 1 and len(self.calls) + 1 == at_call:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB on device 1")
            return super().generate(prompt_ids, num_generations, seed)

    generator = ToolCallingGenerator(Turns(tok, 300), tok, [tc.add], 2, 300, accelerator=PartialState())
    return generator.generate(tc.prompt_ids(tok, tc.PROMPTS[:1]), 1, 3)


def tool_rollouts_failing_on_rank_1():
    """ToolRolloutGenerator.generate (tool_use.otc.tool_generator's calculator rollouts, a tiny model) of one prompt
    x 2 on 2 processes, whose sampling raises on rank 1 (an out-of-memory sample on its device)."""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.tool_use.otc import tool_generator

    tok = tiny_tokenizer("char")
    generator = tool_generator(tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=0), tok, 1, 4)
    if dist.get_rank() == 1:
        def out_of_memory(*args, **kwargs):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB on device 1")
        generator._chunk = out_of_memory
    return generator.generate([tok("2+3=").input_ids], 2, seed=0)


def mcts_judge(stuck_on: int | None = None, failing_on: int | None = None):
    """test_online_run's e_judge for an MCTS-DPO run that, on rank `stuck_on`, never returns at its 2nd call (the
    second prompt's search, after the first search's collectives), and on rank `failing_on` raises at every call (a
    failed rollout: its child dropped)."""
    sys.path.insert(0, str(Path(__file__).parent / "online"))
    from test_online_run import e_judge

    calls = []

    def graded(prompts, completions, **kwargs):
        calls.append(len(completions))
        if dist.get_rank() == stuck_on and len(calls) == 2:
            time.sleep(60)  # abandoned in its daemon thread
        if dist.get_rank() == failing_on:
            raise RuntimeError("the grading server refused the request (503)")
        return e_judge(prompts, completions)
    return graded


def mcts_run(out: Path, judge, **over):
    """test_online_run's tiny MCTS-DPO run (one round of 2 prompts, 1 step) under DDP with `judge`."""
    sys.path.insert(0, str(Path(__file__).parent / "online"))
    from test_online_run import tiny_cfg, tiny_run

    tiny_run(tiny_cfg(out, trainer="mcts_dpo", mcts_step_delimiter=" ", mcts_iterations=2, max_steps=1,
                      steps_per_generation=1, gradient_accumulation_steps=1, prompts_per_generation=2, **over),
             judge).train()


def reward_run(out: Path):
    """A BT reward run under DDP: 8 training pairs, 10 eval pairs (tests/reward_models/reward_synthetic.py's
    marker_rows) scored in batches of per_device_eval_batch_size 2, evaluated at step 2; its data files in `out`."""
    sys.path.insert(0, str(Path(__file__).parent / "reward_models"))
    from reward_synthetic import marker_rows

    from preflab.config import config_from_dict
    from preflab.reward_models.train import train_reward

    rows = marker_rows(18, seed=0)
    train, heldout = out / "train.jsonl", out / "heldout.jsonl"
    if dist.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        train.write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
        heldout.write_text("".join(json.dumps(r) + "\n" for r in rows[8:]))
    dist.barrier()
    train_reward(config_from_dict({
        "task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(train),
        "eval_dataset_name": str(heldout), "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2,
        "max_steps": 2, "learning_rate": 1e-2, "logging_steps": 1, "eval_strategy": "steps", "eval_steps": 2,
        "disable_tqdm": True, "use_cpu": True, "seed": 0, "report_to": "none", "output_dir": str(out / "run")}))


class Unprintable:
    """A tool's result whose text cannot be made (its __repr__ raises): the tool message fails on the main."""

    def __repr__(self):
        raise RuntimeError("lookup's result has no text: the catalogue server sent a bad record")


def lookup() -> dict:
    """Look up the catalogue record.

    Returns:
        The record.
    """
    return {"record": Unprintable()}


def tool_calls():
    """One tool-calling rollout's turn of calls run as ToolCallingGenerator runs them on 2 processes (the main
    process runs them, the others receive the tool messages)."""
    from accelerate import PartialState

    from preflab.online.tool_calling import ToolCallingGenerator

    generator = ToolCallingGenerator(None, None, [lookup], 1, 8, accelerator=PartialState())
    return generator._run_calls({0: [{"type": "function", "function": {"name": "lookup", "arguments": {}}}]})


def environment_judging():
    """environments.judge_rollouts of 2 rollouts on 2 processes (the main judges) whose reward aggregator (a
    user's prompt-aware weights) raises a plain RuntimeError."""
    from accelerate import PartialState

    from preflab.loops.judge import Judge
    from preflab.online.environments import judge_rollouts

    def length(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    def weights(prompts):
        raise RuntimeError("the weighting service returned 503")

    judge = Judge([length], weights=weights, cache=False)
    return judge_rollouts(judge, PartialState(), ["p", "p"], ["a", "bb"], [0, 0], [{}, {}], [[1], [2]], [None, None])


class Counter:
    """An environment whose reset refuses the rows it is given (a user's ValueError)."""

    def reset(self, **kwargs):
        raise ValueError("no target in this row")


def environment_resets(broken: bool):
    """environments.begin_rollouts of one row x 2 rollouts on 2 processes (the main resets); `broken`: the main's
    start_round raises a plain KeyError (what no refusal names), else Counter.reset raises (refused by the row)."""
    from accelerate import PartialState

    from preflab.loops.rollout import PromptRow
    from preflab.online import environments

    envs = environments.Environments({None: Counter})
    if broken:
        def start_round(*args, **kwargs):
            raise KeyError("target")
        envs.start_round = start_round
    rows = [PromptRow(row_id=0, prompt=[{"role": "user", "content": "count"}], prompt_ids=[1, 2], columns={})]
    return environments.begin_rollouts(envs, rows, 2, None, None, PartialState())


def main(out: Path, only: list[str]) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    from preflab import recipe_state
    from preflab.scoring import ref_cache
    from preflab.sharded_checkpoint import save_rank_checkpoint

    def part(failing_rank: int | None):
        def write_shards(tmp: Path) -> None:
            mine = tmp / f"part-rank{rank}.safetensors"
            if rank == failing_rank:
                full_disk(mine)
            mine.write_bytes(b"part")
        return write_shards

    def gather(items: list) -> list:
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, items)
        return [x for each in every for x in each]

    values = ref_cache.RefLogps([torch.zeros(2)], [torch.zeros(3)])
    ref_cache.compute_ref_logps = lambda *args, **kwargs: values  # the scoring is not what is tested
    blocked = out / "blocked"
    if rank == 0:
        blocked.write_text("a file where the cache folder's parent should be")
    from preflab import checkpoint
    from preflab.loops import driver

    def checkpoint_2_full(tensors, filename, *args, **kwargs):
        if ".tmp-checkpoint-2" in filename:
            FAILED_AT["ddp_checkpoint"] = time.time()
            full_disk(Path(filename))
        return kept_save_file(tensors, filename, *args, **kwargs)

    def summary_full(folder, summary):
        FAILED_AT["ddp_final"] = time.time()
        full_disk(Path(folder) / "summary.json")

    def best_locked(output_dir, timeline, best):
        FAILED_AT["ddp_best"] = time.time()
        raise OSError(errno.EACCES, "Permission denied", best)

    from preflab import hub_push, runlog

    class Unauthorized:
        def create_repo(self, *args, **kwargs):
            FAILED_AT["ddp_hub"] = time.time()
            raise OSError("401 Unauthorized")
    from preflab.online.run import OnlineRun
    from preflab.report import margins

    kept_metrics_write = runlog.MetricsLog.write

    def metrics_full(log, row):
        if row.get("step") == 2:
            FAILED_AT["ddp_metrics"] = time.time()
            full_disk(log.path)
        kept_metrics_write(log, row)

    def margins_locked(output_dir, step, values):
        FAILED_AT["ddp_margins"] = time.time()
        raise OSError(errno.EACCES, "Permission denied", str(Path(output_dir) / "pair_margins.jsonl"))

    def round_full(run, r, *args):
        FAILED_AT["online_round"] = time.time()
        full_disk(run.out / "rounds" / f"{r + 1}.jsonl")

    def state_full(run, tmp, final):
        FAILED_AT["online_state"] = time.time()
        full_disk(tmp / "round.json")

    if rank == 0:
        (out / "taken").mkdir()
        (out / "taken" / "notes.txt").write_text("not a run")
        (out / "config" / "config.yaml").mkdir(parents=True)  # a folder where the main writes config.yaml
        (out / "config" / ".preflab-run").write_text("")  # a run's folder: claimed, not refused
    dist.barrier()

    kept_save_file = checkpoint.save_file
    scenarios = {
        "sharded_ok": lambda: save_rank_checkpoint(out, 1, part(None), None, {}, rank == 0),
        "sharded_rank1": lambda: save_rank_checkpoint(out, 2, part(1), None, {}, rank == 0),
        "main_writes": lambda: recipe_state.main_writes(lambda: full_disk(out / "summary.json")),
        "ref_cache": lambda: ref_cache.reference_cache(None, [object()], None, 1, "k" * 64, blocked / "cache", rank,
                                                       2, gather),
        "ddp_checkpoint": lambda: dpo_run(out / "ddp", (checkpoint, "save_file", checkpoint_2_full), max_steps=2,
                                          save_steps=1),
        "ddp_best": lambda: dpo_run(out / "best", (driver, "remove_all_but_best", best_locked), True, max_steps=1,
                                    save_steps=1, eval_steps=1, load_best_model_at_end=True,
                                    save_total_limit=1),
        "ddp_final": lambda: dpo_run(out / "final", (driver, "write_summary", summary_full), max_steps=1,
                                     save_steps=1),
        "ddp_claim": lambda: dpo_run(out / "taken", None, max_steps=1, save_steps=0),
        "ddp_config": lambda: dpo_run(out / "config", None, max_steps=1, save_steps=0),
        "ddp_metrics": lambda: dpo_run(out / "metrics", (runlog.MetricsLog, "write", metrics_full), max_steps=3,
                                       save_steps=0),
        "ddp_margins": lambda: dpo_run(out / "margins", (margins, "append_pair_margins", margins_locked), True,
                                       max_steps=1, save_steps=0),
        "online_round": lambda: online_run(out / "round", (OnlineRun, "_write_round_file", round_full)),
        "online_state": lambda: online_run(out / "state", (OnlineRun, "_write_online_state_to", state_full),
                                           save_steps=1),
        "reward_ok": lambda: reward_run(out / "reward"),
        "ddp_hub": lambda: dpo_run(out / "hub", (hub_push, "hub_api", lambda: Unauthorized()), max_steps=1,
                                   save_steps=0, push_to_hub=True, hub_model_id="org/name"),
        "online_tool": tool_calls,
        "online_judge": environment_judging,
        "online_reset": lambda: environment_resets(True),
        "online_refusal": lambda: environment_resets(False),
        "online_reward_rank0": lambda: online_run(out / "reward0", None, grader_failing_on(0)),
        "online_reward_rank1": lambda: online_run(out / "reward1", None, grader_failing_on(1)),
        "online_builder_rank1": lambda: online_builder_failing_on_rank_1(out / "builder"),
        "online_eval_main": lambda: online_eval_run(out / "eval", stuck_on=0),
        "online_eval_failing": lambda: online_eval_run(out / "eval_failing", failing_on=1),
        "online_tool_loop_first_rank1": lambda: tool_loop_failing_on_rank_1(1),
        "online_tool_loop_continue_rank1": lambda: tool_loop_failing_on_rank_1(2),
        "online_tool_rollouts_rank1": tool_rollouts_failing_on_rank_1,
        "mcts_stuck_main": lambda: mcts_run(out / "mcts_stuck", mcts_judge(stuck_on=0), judge_timeout_s=3),
        "mcts_failing_rank1": lambda: mcts_run(out / "mcts_failing", mcts_judge(failing_on=1)),
    }
    for name, run in scenarios.items():
        if only and name not in only:
            continue
        started = time.perf_counter()
        try:
            run()
            error = None
        except Exception as err:  # noqa: BLE001 - what each rank raised is the result
            error = f"{type(err).__name__}: {err}"
        print(json.dumps({"scenario": name, "rank": rank, "error": error, "seconds": time.perf_counter() - started,
                          "ended": time.time(), "failed_at": FAILED_AT.get(name)}), flush=True)
    gc.collect()  # the runs' DDP wrappers hold the group: freed before it is closed
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].split(",") if len(sys.argv) > 2 else [])
