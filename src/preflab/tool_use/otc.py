"""The OTC recipe (seed #41, `task: otc`): SFT on over-calling tool traces, then GRPO with the OTC-GRPO reward
(correctness x tool efficiency) on tool rollouts that execute calculator calls; tool productivity before/after.

Wang et al., 2025, "OTC: Optimal Tool Calls via Reinforcement Learning" (arXiv:2504.14870); the reward is
preflab.verifiers.otc.OTCReward (mode grpo: r = r_tool(m, n) x r_phi, n the running minimum of calls over correct
rollouts of the question), the RL loop is the online run's GRPO (preflab.online.run, `trainer: grpo`, spec §0.3)
with tool rollouts (preflab.online.tool_rollout: calls executed through a ToolBox, observations masked out of the
loss, executed calls counted per completion). Stages, each an ordinary preflab run in a subfolder of output_dir:

    sft/       SFTTrainer on sft_traces: every trace correct, most with redundant calls (the starting policy)
    grpo/      OnlineRun GRPO, judge = OTCReward(mode="grpo", c=otc_c)
    control/   (control: true) the same GRPO steps from the same SFT weights, judge = correctness only

Measured (greedy, on held-out questions): accuracy, mean executed tool calls and tool productivity TP = correct
answers / tool calls (the paper's TP), after SFT ("before") and after GRPO ("after"); the control's after-numbers
are the honest baseline (what GRPO does without the tool term).

State: otc_state.json (the finished stages' metrics) is written after each stage; `resume_from_checkpoint: true`
skips the finished stages and resumes an interrupted stage from its newest checkpoint (the online run checkpoints
its pending round and the OTC tracker, so the result equals an uninterrupted run's). Without resume an existing
state is refused.

Processes: under `accelerate launch --num_processes N` the process group is formed before anything is written
(preflab.recipe_state.start_processes); the data file, the state, the online state (with the tracker) and the summary
are written by the main process only, the held-out evaluation runs there and is sent to every process. The SFT batch
is split over the processes (sft_batch_size is the global batch); each GRPO round is generated and judged whole on
every process (the same seed and weights), so every process's OTC tracker holds the same minima: one tracker state,
the main process's, is checkpointed. The result equals the one-process recipe's.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from preflab.errors import ConfigError
from preflab.recipe_options import stage_config
from preflab.recipe_state import (RecipeStateFile, check_stop_after_stage, end_processes, finish_recipe,
                                  load_safetensors_into, main_result, main_writes, per_process_batch, resume_or_clean,
                                  start_processes)
from preflab.tool_use.otc_task import (ANSWER_PATTERN, correctness_reward, evaluate_tool_use, make_questions,
                                       prompt_rows, sft_traces)

STAGES = ("sft", "grpo", "control")
_NOT_COMPARED = ("stop_after_stage",)   # may differ between an interrupted run and its resumption


def tool_generator(policy, tokenizer, max_tool_calls: int, max_new_tokens: int, temperature: float = 1.0,
                   top_p: float = 1.0, batch_size: int = 64):
    """Calculator tool rollouts (`[calc: <expression>]` -> `=<value>`) with a fresh ToolBox."""
    from preflab.online.tool_rollout import CALCULATOR_SYNTAX, ToolRolloutGenerator
    from preflab.tools import Calculator, ToolBox

    return ToolRolloutGenerator(policy, tokenizer, ToolBox([Calculator()]), [CALCULATOR_SYNTAX],
                                max_new_tokens=max_new_tokens, max_tool_calls=max_tool_calls,
                                temperature=temperature, top_p=top_p, batch_size=batch_size)


def tool_generator_factory(max_tool_calls: int):
    """Task.generator for OnlineRun: (cfg, policy, tokenizer, accelerator) -> calculator tool rollouts."""
    return lambda cfg, policy, tokenizer, accelerator=None: tool_generator(
        policy, tokenizer, max_tool_calls, cfg.max_completion_length, cfg.temperature, cfg.top_p,
        cfg.generation_batch_size)


def run_otc(output_dir: str, seed: int = 0, resume: bool = False, quiet: bool = False, n_train: int = 2000,
            n_heldout: int = 64, tool_fraction: float = 0.5, hidden_size: int = 96, sft_steps: int = 400,
            sft_batch_size: int = 32, grpo_steps: int = 30, prompts_per_generation: int = 16,
            num_generations: int = 8, learning_rate: float = 3e-4, max_tool_calls: int = 4,
            otc_c: float | None = None, max_completion_length: int = 72, save_steps: int = 10,
            control: bool = True, stop_after_stage: str | None = None,
            stage_options: dict | None = None, allow_config_change: bool = False) -> dict:
    params = {k: v for k, v in locals().items() if k not in ("output_dir", "resume", "quiet", "allow_config_change")}
    from preflab.loops.sft import SFTTrainer
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task
    from preflab.verifiers.otc import OTCReward

    check_stop_after_stage(stop_after_stage, STAGES)
    if n_train < 1 or n_heldout < 1 or sft_steps < 1 or grpo_steps < 1 or max_tool_calls < 1:
        raise ConfigError("task otc: n_train, n_heldout, sft_steps, grpo_steps and max_tool_calls must be >= 1.")
    if (prompts_per_generation < 1 or num_generations < 2 or max_completion_length < 1 or sft_batch_size < 1
            or save_steps < 0 or not learning_rate > 0 or (otc_c is not None and not otc_c > 0)):
        raise ConfigError(  # before the SFT stage runs (these failed, or trained nothing, only at the GRPO stage)
            "task otc: need prompts_per_generation >= 1, num_generations >= 2 (GRPO compares the rollouts of one "
            "prompt: a group of 1 has no advantage to learn from), max_completion_length and sft_batch_size >= 1, "
            "save_steps >= 0, learning_rate > 0 and otc_c > 0 when set; got "
            f"prompts_per_generation={prompts_per_generation}, num_generations={num_generations}, "
            f"max_completion_length={max_completion_length}, sft_batch_size={sft_batch_size}, "
            f"save_steps={save_steps}, learning_rate={learning_rate}, otc_c={otc_c}.")
    c = float(otc_c if otc_c is not None else max_tool_calls)  # the paper's §4.1: c = the max number of tool calls
    torch.set_num_threads(1)
    out, started = Path(output_dir), time.perf_counter()
    start_processes()  # a launch's process group, formed before anything is written (every process opens the state)
    sft_per_process = per_process_batch(sft_batch_size, "otc")
    store = RecipeStateFile(out / "otc_state.json", {k: v for k, v in params.items() if k not in _NOT_COMPARED},
                            resume, initial={"finished": {}}, allow_change=allow_config_change)
    state, save_state = store.data, store.save
    from preflab.runlog import is_main_process

    say = print if not quiet and is_main_process() else (lambda *a: None)

    train = make_questions(n_train, seed, tool_fraction)
    heldout = make_questions(n_heldout, seed + 1, tool_fraction, exclude={q["question_id"] for q in train})
    tokenizer = tiny_tokenizer("char")
    new_model = lambda: tiny_causal_lm(tokenizer, arch="llama", hidden_size=hidden_size, num_layers=2,  # noqa: E731
                                       num_heads=4, seed=seed)
    make_generator = tool_generator_factory(max_tool_calls)
    # allow_config_change reaches the stages too: a stage resumed from its checkpoint checks its own config
    common = dict(seed=seed, logging_steps=10, disable_tqdm=quiet, use_cpu=True, save_steps=save_steps,
                  allow_config_change=allow_config_change)

    def evaluate(model) -> dict:  # greedy held-out rollouts on the main process, sent to every process
        generator = tool_generator(model, tokenizer, max_tool_calls, max_completion_length)
        return main_result(lambda: evaluate_tool_use(model, tokenizer, generator, heldout))

    def stage_done(name: str, metrics: dict, seconds: float) -> bool:
        state["finished"][name] = {**metrics, "runtime_s": seconds}
        save_state()
        if stop_after_stage == name:
            end_processes()
            return True
        return False

    def interrupted(stage_dir: Path) -> bool:  # decided by the main process for all (it may remove the folder)
        return resume and main_result(lambda: resume_or_clean(stage_dir))

    # stage 1: SFT on over-calling traces
    if "sft" not in state["finished"]:
        say("otc: stage 1, SFT on over-calling tool traces")
        t0 = time.perf_counter()
        data = out / "data" / "sft.jsonl"
        traces = "".join(json.dumps(r) + "\n" for r in sft_traces(train, seed))
        main_writes(lambda: (data.parent.mkdir(parents=True, exist_ok=True), data.write_text(traces)))
        again = interrupted(out / "sft")
        model = new_model()
        from preflab.recipe_start import save_start

        # RUN/start/ and start.json, once, before SFT trains the model (a resume keeps them); no stage is
        # DPO-family (SFT, then GRPO with beta 0), so none is listed with a reference
        main_writes(lambda: save_start(out, model, tokenizer, {}, resume))
        cfg = stage_config("otc", {**common, "task": "sft", "model_name_or_path": "builtin:tiny-llama",
                                   "dataset_name": str(data), "max_length": 128, "learning_rate": 3e-3,
                                   "per_device_train_batch_size": sft_per_process, "max_steps": sft_steps,
                                   "warmup_steps": 10, "lr_scheduler_type": "cosine", "output_dir": str(out / "sft"),
                                   "resume_from_checkpoint": again, "save_steps": max(save_steps, sft_steps // 4)},
                           stage_options, run_dir=out)
        SFTTrainer(cfg, policy=model, ref=None, tokenizer=tokenizer).train()
        if stage_done("sft", evaluate(model), time.perf_counter() - t0):
            return state

    def grpo_stage(name: str, judge, tracker) -> bool:
        t0 = time.perf_counter()
        again = interrupted(out / name)
        model = new_model()
        load_safetensors_into(model, out / "sft" / "model.safetensors")
        task = Task(prompt_rows(train), [judge], generator=make_generator, judge_cache=False, state=tracker)
        cfg = stage_config("otc", {**common, "task": "online", "trainer": "grpo", "online_task": "dataset",
                                   "model_name_or_path": "(in memory)", "dataset_name": "(in memory)",
                                   "max_steps": grpo_steps, "steps_per_generation": 1,
                                   "num_generations": num_generations, "prompts_per_generation": prompts_per_generation,
                                   "per_device_train_batch_size": prompts_per_generation,
                                   "learning_rate": learning_rate, "warmup_steps": 0, "beta": 0.0,
                                   "max_completion_length": max_completion_length, "output_dir": str(out / name),
                                   "resume_from_checkpoint": again}, stage_options, run_dir=out)
        run = OnlineRun(cfg, policy=model, tokenizer=tokenizer, task=task)
        run.train()
        extra = {"tracked_questions": len(tracker.best)} if tracker is not None else {}
        return stage_done(name, {**evaluate(model), **extra}, time.perf_counter() - t0)

    if "grpo" not in state["finished"]:
        say(f"otc: stage 2, GRPO with the OTC-GRPO reward (c = {c})")
        reward = OTCReward(mode="grpo", c=c, answer_pattern=ANSWER_PATTERN, answer_column="answer",
                           id_column="question_id")
        if grpo_stage("grpo", reward, reward.tracker):
            return state
    if control and "control" not in state["finished"]:
        say("otc: control, the same GRPO steps with the correctness-only reward")
        if grpo_stage("control", correctness_reward, None):
            return state
    return _summary(out, state, seed, c, started)


def _summary(out: Path, state: dict, seed: int, c: float, started: float) -> dict:
    before, after = state["finished"]["sft"], state["finished"]["grpo"]
    summary = {"recipe": "otc", "metric_name": "tool_productivity",
               "metric_before": before["tool_productivity"], "metric_after": after["tool_productivity"],
               "baseline": "greedy tool rollouts of the SFT policy (trained on over-calling traces) before GRPO; "
                           "control_*: the same GRPO steps with a correctness-only reward",
               "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
               "mean_tool_calls_before": before["mean_tool_calls"], "mean_tool_calls_after": after["mean_tool_calls"],
               "tool_errors_before": before["tool_errors"], "tool_errors_after": after["tool_errors"],
               "by_kind_before": {k: before[k] for k in ("needs_tool", "no_tool")},
               "by_kind_after": {k: after[k] for k in ("needs_tool", "no_tool")},
               "otc_c": c, "seed": seed, "params": state["params"],
               "examples_before": before["examples"], "examples_after": after["examples"],
               "stage_runtime_s": {k: v["runtime_s"] for k, v in state["finished"].items()},
               "runtime_s": time.perf_counter() - started}
    if "control" in state["finished"]:
        ctl = state["finished"]["control"]
        summary.update({"control_tool_productivity_after": ctl["tool_productivity"],
                        "control_accuracy_after": ctl["accuracy"],
                        "control_mean_tool_calls_after": ctl["mean_tool_calls"],
                        "by_kind_control_after": {k: ctl[k] for k in ("needs_tool", "no_tool")},
                        "examples_control_after": ctl["examples"]})
    return finish_recipe(out, summary)
