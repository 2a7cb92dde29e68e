"""`preflab train examples/tools/dstc.yaml`: DSTC (seed #25) on a tiny char-level model, as a recipe with a summary.

Liu, Zhang, Liu, Liu, Yang, Wang, 2024, "DSTC: Direct Preference Learning with Only Self-Generated Tests and Code
to Improve Code LMs", arXiv:2411.13611. Stages, each an ordinary preflab run in a subfolder of output_dir:

1. `sft/`: warm-up SFT (SFTTrainer) on code and tests for the training instructions of preflab.tool_use.dstc_task
   (learning rate 3e-3 x `sft_lr_scale`, default 1: Wang et al. 2025's lower SFT learning rate before DPO,
   preflab.recipe_sft_lr; the control keeps the DPO steps' learning rate).
   The programs carry a systematic bug (a first-step subtraction written `(k-x)` with probability `sft_bug_rate`)
   and random slips, the tests only slips, so sampled programs and tests vary in correctness (a stand-in for a
   pretrained code LM's imperfect samples).
2. `dstc_1/`, `dstc_2/`, ...: for each training prompt sample I programs (code prompt) and J tests (test prompt)
   from the current policy, run every program against every test in `preflab.sandbox` (M_ij = 1 iff program i
   passes test j), pick (chosen code, chosen test) and (rejected code, rejected test) by the minimax rule and
   concatenate code + "\\n\\n" + test (preflab.verifiers.dstc), then train DPO (offline Trainer, loss_type sigmoid;
   or `loss: kto` with chosen desirable and rejected undesirable), the iteration's starting model as the
   reference. Prompts whose rows all pass the same number of tests are skipped and counted.
3. optional `control/`: the warm-up model trained with as many more SFT steps as all DSTC iterations took (same
   batch size, learning rate and schedule as the DPO steps), so "DSTC beats more SFT" can be told apart from
   "more training helps".

Metric: the share of held-out instructions whose greedy program passes the hidden gold test (every hidden input;
run in the sandbox; the text after the program's first line, e.g. a test the DSTC-trained model appends, is
stripped). Programs and tests written by the model run only in the sandbox; a (program, test) pair runs once per
session (its verdict is cached), and a program that does not parse (`ast`, on the host) fails without a run.

The state (finished stages and their numbers) is saved to `dstc_state.json` after each stage; with
`resume_from_checkpoint: true` finished stages are skipped (their saved weights are loaded) and an interrupted
stage is run again from its start, so the result equals an uninterrupted run.

On several processes (`accelerate launch --num_processes N`, data parallel only) the SFT and DPO stages train with the
recipe's global batch split over the processes (batch_size / N each; N must divide it; the SFT loss is the token mean
of the global batch and DPO's a per-pair mean, so the result equals the one-process recipe). The sampling, the sandbox
matrix, the minimax pairs, the held-out pass rates and every file of the recipe (data, pairs, state, summary) are the
main process's: the sandbox runs once, and the other processes wait and receive its pairs and numbers. `loss: kto` is
refused there (its reference point z0 is a micro-batch mean: N x b/N rows are another estimator than 1 x b).
"""
from __future__ import annotations

import ast
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from preflab.data.tokenize import bos_ids
from preflab.errors import ConfigError
from preflab.generate import generate_text
from preflab.recipe_options import stage_config
from preflab.recipe_sft_lr import check_sft_lr_scale, scaled_sft_lr, sft_lr_params, sft_lr_summary
from preflab.recipe_state import (RecipeState, finish_recipe, load_safetensors_into, main_result, main_writes,
                                  per_process_batch, start_processes)
from preflab.runlog import is_main_process
from preflab.sandbox import run_tests
from preflab.tool_use.dstc_task import (CodeTask, code_prompt, hidden_test, sft_rows, split_tasks, is_correct_test,
                                        unit_test_prompt)
from preflab.verifiers.dstc import build_dstc_dataset

STATE_FILE = "dstc_state.json"
SFT_LEARNING_RATE = 3e-3  # the warm-up SFT's (x recipe_params.sft_lr_scale: preflab.recipe_sft_lr)


def first_line(text: str) -> str:
    """The program (or test) a sample holds: its first line, stripped (anything after it is not run)."""
    return text.strip().split("\n")[0].strip()


def prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """BOS + prompt tokens, as the Trainer tokenizes a text prompt."""
    bos = bos_ids(tokenizer)
    return [bos + tokenizer(p, add_special_tokens=False).input_ids for p in prompts]


def sample_candidates(model, tokenizer, tasks: list[CodeTask], n_codes: int, n_tests: int, *, temperature: float,
                      seed: int, max_new_tokens: int = 40) -> list[tuple[list[str], list[str]]]:
    """For each task: (n_codes programs from the code prompt, n_tests tests from the test prompt), sampled."""
    code_p = [code_prompt(t) for t in tasks for _ in range(n_codes)]
    test_p = [unit_test_prompt(t) for t in tasks for _ in range(n_tests)]
    codes = generate_text(model, tokenizer, prompt_ids(tokenizer, code_p), max_new_tokens=max_new_tokens,
                          do_sample=True, temperature=temperature, seed=seed)
    tests = generate_text(model, tokenizer, prompt_ids(tokenizer, test_p), max_new_tokens=max_new_tokens,
                          do_sample=True, temperature=temperature, seed=seed + 1)
    return [([first_line(c) for c in codes[i * n_codes:(i + 1) * n_codes]],
             [first_line(c) for c in tests[i * n_tests:(i + 1) * n_tests]]) for i in range(len(tasks))]


class SandboxRunner:
    """Runs (program, test) pairs in preflab.sandbox, each distinct pair once, and counts runs, time and outcomes."""

    def __init__(self, timeout_s: float, max_workers: int, memory_mb: int = 256):
        self.timeout_s, self.max_workers, self.memory_mb = timeout_s, max_workers, memory_mb
        self.cache: dict[tuple[str, str], bool] = {}
        self.runs, self.seconds, self.statuses = 0, 0.0, Counter()

    def passes(self, code: str, tests: list[str]) -> list[bool]:
        todo = list(dict.fromkeys(t for t in tests if (code, t) not in self.cache))
        if todo and not _parses(code):  # parsed on the host (never run): it cannot pass any test
            for t in todo:
                self.cache[(code, t)] = False
            self.statuses["syntax_error_not_run"] += len(todo)
            todo = []
        if todo:
            started = time.perf_counter()
            outcomes = run_tests(code, todo, timeout_s=self.timeout_s, max_workers=self.max_workers,
                                 memory_mb=self.memory_mb)
            self.seconds += time.perf_counter() - started
            self.runs += len(todo)
            for t, o in zip(todo, outcomes):
                self.cache[(code, t)] = o.passed
                self.statuses[o.result.status] += 1
        return [self.cache[(code, t)] for t in tests]

    def matrix(self, codes: list[str], tests: list[str]) -> np.ndarray:
        """M [I, J] of 0/1 (preflab.verifiers.dstc.execution_matrix's meaning, with repeated pairs run once)."""
        return np.array([[int(p) for p in self.passes(c, tests)] for c in codes], dtype=np.int64)

    def counters(self) -> dict:
        return {"runs": self.runs, "seconds": self.seconds, "statuses": dict(self.statuses)}

    def restore(self, counters: dict | None) -> None:
        if counters:
            self.runs, self.seconds = counters["runs"], counters["seconds"]
            self.statuses = Counter(counters["statuses"])

    def stats(self) -> dict:
        return {"sandbox_runs": self.runs, "sandbox_seconds": round(self.seconds, 2),
                "seconds_per_run": round(self.seconds / self.runs, 4) if self.runs else None,
                "run_statuses": dict(sorted(self.statuses.items()))}


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def heldout_pass_rate(model, tokenizer, tasks: list[CodeTask], runner: SandboxRunner,
                      max_new_tokens: int = 40) -> tuple[float, list[dict]]:
    """(share of tasks whose greedy program passes the hidden gold test, one example per task)."""
    outs = generate_text(model, tokenizer, prompt_ids(tokenizer, [code_prompt(t) for t in tasks]),
                         max_new_tokens=max_new_tokens)
    examples, passed = [], 0
    for task, out in zip(tasks, outs):
        code = first_line(out)
        ok = runner.passes(code, [hidden_test(task)])[0]
        passed += ok
        examples.append({"instruction": task.instruction, "output": out.strip(), "program": code, "passed": ok})
    return passed / len(tasks), examples


def subtract_first_split(tasks: list[CodeTask], examples: list[dict]) -> dict:
    """Pass rates on held-out tasks whose first step is a subtraction (where the warm-up data's bug lives) and on
    the others."""
    groups = {"subtract_first": [], "other": []}
    for task, ex in zip(tasks, examples):
        groups["subtract_first" if task.first.op == "subtract" else "other"].append(ex["passed"])
    return {k: (sum(v) / len(v) if v else None) for k, v in groups.items()}


def dpo_batch_per_process(rows: int, batch_size: int, processes: int, iteration: int) -> int:
    """The DPO stage's batch per process: the one-process recipe trains on min(batch_size, rows) rows a step, split
    over the processes; a count that does not split is refused (another global batch would be another objective)."""
    global_batch = min(batch_size, rows)
    if global_batch % processes:
        raise ConfigError(f"task dstc: iteration {iteration} built {rows} training rows (fewer than batch_size="
                          f"{batch_size}), and a global batch of {global_batch} does not split over {processes} "
                          "processes. Resume it as one process (`preflab train CONFIG.yaml resume_from_checkpoint=true`:"
                          " the finished stages are kept), or rerun with more n_dstc_tasks.")
    return global_batch // processes


def run_dstc(output_dir: str, seed: int = 0, resume: bool = False, quiet: bool = False, n_sft_tasks: int = 150,
             n_dstc_tasks: int = 48, n_test: int = 64, sft_per_task: int = 3, sft_noise: float = 0.1,
             sft_bug_rate: float = 0.8, sft_steps: int = 1000, n_codes: int = 6, n_tests: int = 6,
             temperature: float = 1.0, iterations: int = 2, dpo_steps: int = 8, beta: float = 0.1,
             dpo_learning_rate: float = 3e-4, batch_size: int = 16, control: bool = True, timeout_s: float = 2.0,
             max_workers: int = 2, hidden_size: int = 96, loss: str = "dpo", sft_lr_scale: float = 1.0,
             stage_options: dict | None = None, allow_config_change: bool = False) -> dict:
    torch.set_num_threads(1)
    from preflab.loops.offline import Trainer
    from preflab.loops.sft import SFTTrainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    out, started = Path(output_dir), time.perf_counter()
    params = {k: v for k, v in locals().items() if k not in ("output_dir", "resume", "quiet", "out", "started",
                                                             "Trainer", "SFTTrainer", "frozen_copy",
                                                             "tiny_causal_lm", "tiny_tokenizer", "sft_lr_scale",
                                                             "allow_config_change")}
    check_sft_lr_scale("dstc", sft_lr_scale, SFT_LEARNING_RATE)
    if loss not in ("dpo", "kto"):
        raise ConfigError(f"dstc recipe_params.loss={loss!r}: use 'dpo' (loss_type sigmoid) or 'kto'.")
    if iterations < 1 or n_codes < 2 or n_tests < 1 or n_test < 1 or not 1 <= n_dstc_tasks <= n_sft_tasks:
        raise ConfigError(f"dstc recipe_params: need iterations >= 1, n_codes >= 2, n_tests >= 1, n_test >= 1 and "
                          f"1 <= n_dstc_tasks <= n_sft_tasks (got {iterations}, {n_codes}, {n_tests}, {n_test}, "
                          f"{n_dstc_tasks}, {n_sft_tasks}).")
    if (not 0 <= sft_bug_rate <= 1 or not 0 <= sft_noise <= 1 or sft_per_task < 1 or sft_steps < 1
            or dpo_steps < 1 or not temperature > 0 or not beta > 0 or not dpo_learning_rate > 0):
        raise ConfigError(  # before the warm-up SFT runs (a rate above 1 acted as 1; the others failed later)
            "dstc recipe_params: need sft_bug_rate and sft_noise in [0, 1] (probabilities), sft_per_task, sft_steps "
            "and dpo_steps >= 1, and temperature, beta and dpo_learning_rate > 0; got "
            f"sft_bug_rate={sft_bug_rate}, sft_noise={sft_noise}, sft_per_task={sft_per_task}, "
            f"sft_steps={sft_steps}, dpo_steps={dpo_steps}, temperature={temperature}, beta={beta}, "
            f"dpo_learning_rate={dpo_learning_rate}.")
    if not timeout_s > 0 or max_workers < 1:  # the sandbox's limits, refused before the warm-up SFT runs
        raise ConfigError(f"dstc recipe_params: need timeout_s > 0 (seconds per sandbox run) and max_workers >= 1 "
                          f"(sandbox runs at once); got timeout_s={timeout_s}, max_workers={max_workers}.")
    processes = start_processes()  # a launch's process group, formed before anything is written
    if processes > 1 and loss == "kto":
        raise ConfigError(f"dstc recipe_params.loss='kto' on {processes} processes: KTO's reference point z0 is a "
                          "micro-batch mean, so splitting the batch over the processes changes the objective. Use "
                          "loss: dpo, or run it as one process (`preflab train CONFIG.yaml`).")
    per_process = per_process_batch(batch_size, "dstc")
    # written at once (preflab.recipe_state): after the checks above, so that a refused option leaves no state behind
    recipe = RecipeState(out, STATE_FILE, {**params, **sft_lr_params(sft_lr_scale)}, resume, allow_config_change)
    state = recipe.state
    main_writes(lambda: out.mkdir(parents=True, exist_ok=True))
    say = print if not quiet and is_main_process() else (lambda *a: None)

    sft_tasks, test_tasks = split_tasks(n_sft_tasks, n_test, seed)
    dstc_tasks = sft_tasks[:n_dstc_tasks]
    tokenizer = tiny_tokenizer("char")
    model = tiny_causal_lm(tokenizer, arch="llama", hidden_size=hidden_size, num_layers=2, num_heads=4, seed=seed)
    from preflab.recipe_start import save_start

    # RUN/start/ and start.json, once, before the warm-up SFT trains the model (a resume keeps them). The DPO / KTO
    # iterations (dstc_<i>/dpo) train against the model before each iteration, which depends on which iterations
    # found pairs: not listed, their eval takes --reference (the warm-up's RUN/sft for dstc_1)
    main_writes(lambda: save_start(out, model, tokenizer, {}, resume))
    runner = SandboxRunner(timeout_s, max_workers)
    runner.restore(state.get("sandbox"))  # a resumed run reports the runs of all its sessions
    common = dict(model_name_or_path="builtin:tiny-llama", max_length=128, seed=seed, logging_steps=10,
                  disable_tqdm=quiet, use_cpu=True, save_steps=0, per_device_train_batch_size=per_process)
    data = out / "data"
    sft_file = data / "sft.jsonl"
    warmup_rows = sft_rows(sft_tasks, sft_per_task, sft_noise, sft_bug_rate, seed)

    def write_sft_file() -> None:
        data.mkdir(exist_ok=True)
        sft_file.write_text("".join(json.dumps(r) + "\n" for r in warmup_rows))

    main_writes(write_sft_file)

    def heldout(model) -> tuple[float, list[dict]]:  # generation and sandbox on the main process, sent to all
        return main_result(lambda: heldout_pass_rate(model, tokenizer, test_tasks, runner))

    def stage(name: str, run) -> dict:
        """Run a stage (or, when the state has it, load its weights); the state is saved after it with the sandbox's
        counters so far (a resumed run reports the runs of all its sessions)."""
        def counted(folder: Path) -> dict:
            record = run(folder)
            state["sandbox"] = main_result(runner.counters)
            return record

        if name in state["stages"]:
            say(f"dstc: {name} finished earlier, weights loaded from {out / name}")
        return recipe.stage(name, counted, lambda folder: load_safetensors_into(model, folder / "model.safetensors"))

    def run_sft(folder: Path, steps: int, learning_rate: float, warmup_steps: int) -> dict:
        SFTTrainer(stage_config("dstc", {**common, "task": "sft", "learning_rate": learning_rate, "max_steps": steps,
                                         "warmup_steps": warmup_steps, "lr_scheduler_type": "cosine",
                                         "dataset_name": str(sft_file), "output_dir": str(folder)}, stage_options,
                                run_dir=out),
                   policy=model, tokenizer=tokenizer).train()
        rate, examples = heldout(model)
        return {"heldout_pass_rate": rate, "by_first_step": subtract_first_split(test_tasks, examples),
                "steps": steps, "examples": examples[:6]}

    def run_warmup(folder: Path) -> dict:
        untrained, _ = heldout(model)
        return {**run_sft(folder, sft_steps, scaled_sft_lr(SFT_LEARNING_RATE, sft_lr_scale), 10),
                "untrained_heldout_pass_rate": untrained}

    say(f"dstc: stage sft: warm-up SFT on {len(sft_tasks)} instructions, {sft_steps} steps")
    sft = stage("sft", run_warmup)
    say(f"dstc: held-out pass rate after warm-up SFT {sft['heldout_pass_rate']:.3f}")

    def build_pairs(folder: Path, it: int) -> tuple[dict, Path, int]:
        """Sample, run the matrix in the sandbox, pick the minimax pairs and write them (the main process's job):
        (the iteration's record so far, the training file, its row count)."""
        samples = sample_candidates(model, tokenizer, dstc_tasks, n_codes, n_tests, temperature=temperature,
                                    seed=seed * 1000 + it * 10)
        pairs, chosen_right, rejected_right, correct_codes, correct_tests, n_sampled = [], 0, 0, 0, 0, [0, 0]
        for task, (codes, tests) in zip(dstc_tasks, samples):
            n_sampled[0] += len(codes)
            n_sampled[1] += len(tests)
            gold = [hidden_test(task)]  # for reporting only: the pairs never see the gold test or program
            correct_codes += sum(runner.passes(c, gold)[0] for c in codes)
            correct_tests += sum(is_correct_test(task, t) for t in tests)
            row = build_dstc_dataset([{"prompt": code_prompt(task), "codes": codes, "tests": tests,
                                       "matrix": runner.matrix(codes, tests)}], fmt="dpo")
            for pair in row:
                chosen_right += runner.passes(first_line(pair["chosen"]), gold)[0]
                rejected_right += runner.passes(first_line(pair["rejected"]), gold)[0]
            pairs.extend(row)
        folder.mkdir(parents=True)  # build_pairs runs on the main process only (main_result)
        pair_file = folder / "pairs.jsonl"
        pair_file.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        train_file, train_rows = pair_file, pairs
        if loss == "kto":  # chosen desirable, rejected undesirable (the spec's KTO form)
            train_rows = [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
                          for p in pairs for side in ("chosen", "rejected")]
            train_file = folder / "kto_rows.jsonl"
            train_file.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
        n = len(dstc_tasks)
        record = {"prompts": n, "pairs": len(pairs), "skipped_prompts": n - len(pairs),
                  "sampled_code_correct_rate": correct_codes / n_sampled[0],
                  "sampled_test_correct_rate": correct_tests / n_sampled[1],
                  "chosen_code_correct_rate": chosen_right / len(pairs) if pairs else None,
                  "rejected_code_correct_rate": rejected_right / len(pairs) if pairs else None,
                  "dpo_steps": 0}
        return record, train_file, len(train_rows)

    def run_iteration(folder: Path, it: int) -> dict:
        record, train_file, n_rows = main_result(lambda: build_pairs(folder, it))
        if n_rows:
            Trainer(stage_config("dstc", {**common, "loss_type": "sigmoid" if loss == "dpo" else "kto", "beta": beta,
                                          "learning_rate": dpo_learning_rate, "max_steps": dpo_steps, "warmup_steps": 2,
                                          "lr_scheduler_type": "cosine", "dataset_name": str(train_file),
                                          "per_device_train_batch_size": dpo_batch_per_process(
                                              n_rows, batch_size, processes, it),
                                          "output_dir": str(folder / "dpo")}, stage_options, run_dir=out),
                    policy=model, ref=frozen_copy(model), tokenizer=tokenizer).train()
            record["dpo_steps"] = dpo_steps
            main_writes(lambda: _copy_final_weights(folder / "dpo", folder))
        else:
            from safetensors.torch import save_file

            main_writes(lambda: save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                          str(folder / "model.safetensors")))
        record["heldout_pass_rate"], examples = heldout(model)
        record["by_first_step"] = subtract_first_split(test_tasks, examples)
        record["examples"] = examples[:6]
        return record

    records = []
    for it in range(1, iterations + 1):
        say(f"dstc: iteration {it}/{iterations}: sample {n_codes} programs x {n_tests} tests for "
            f"{len(dstc_tasks)} prompts, run them in the sandbox, DPO on the minimax pairs")
        rec = stage(f"dstc_{it}", lambda folder, it=it: run_iteration(folder, it))
        say(f"dstc: iteration {it}: {rec['pairs']} pairs, {rec['skipped_prompts']} prompts skipped, held-out pass "
            f"rate {rec['heldout_pass_rate']:.3f}")
        if not rec["pairs"] and is_main_process():  # a result, not progress: said with disable_tqdm (quiet) too
            print(f"preflab: note: dstc iteration {it}: none of the {rec['prompts']} prompts gave a pair (in each, "
                  "every sampled program passed as many of the sampled tests as the others, or a candidate set was "
                  "empty), so the iteration trained no DPO step and its model is the previous one; counted in "
                  "summary.json pairs_per_iteration and iterations[].dpo_steps (0). More n_codes / n_tests, or more "
                  "sampling temperature, give the minimax rule programs that differ.", flush=True)
        records.append(rec)
    summary = {"recipe": "dstc", "metric_name": "heldout_pass_rate", "metric_before": sft["heldout_pass_rate"],
               "metric_after": records[-1]["heldout_pass_rate"], "metric_untrained": sft["untrained_heldout_pass_rate"],
               "baseline": "the same model after the warm-up SFT stage, before the DSTC iterations",
               "heldout_pass_rate_by_first_step": {"before": sft["by_first_step"],
                                                   "after": records[-1]["by_first_step"]},
               "heldout_tasks": len(test_tasks), "dstc_prompts": len(dstc_tasks),
               "pairs_per_iteration": [r["pairs"] for r in records],
               "skipped_prompts_per_iteration": [r["skipped_prompts"] for r in records],
               "iterations": [{k: v for k, v in r.items() if k != "examples"} for r in records],
               "examples_before": sft["examples"], "examples_after": records[-1]["examples"]}
    total = sum(r["dpo_steps"] for r in records)
    if control and total:
        load_safetensors_into(model, out / "sft" / "model.safetensors")
        say(f"dstc: control: {total} more SFT steps from the warm-up model instead of DSTC")
        ctl = stage("control", lambda folder: run_sft(folder, total, dpo_learning_rate, 2))
        summary.update(control_heldout_pass_rate=ctl["heldout_pass_rate"], control_sft_steps=total,
                       control_by_first_step=ctl["by_first_step"],
                       control_baseline="the warm-up model trained with as many more SFT steps as all DSTC "
                                        "iterations took (same warm-up data, batch size, learning rate and schedule "
                                        "as the DPO steps)")
    summary.update(seed=seed, **sft_lr_summary(sft_lr_scale, SFT_LEARNING_RATE), **main_result(runner.stats),
                   runtime_s=time.perf_counter() - started)
    return finish_recipe(out, summary)


def _copy_final_weights(src: Path, dst: Path) -> None:
    shutil.copyfile(src / "model.safetensors", dst / "model.safetensors")
