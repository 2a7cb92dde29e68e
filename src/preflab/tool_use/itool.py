"""`preflab train examples/tools/itool.yaml`: the iTool recipe (seed #37) on the synthetic function-calling task.

Zeng et al. 2025, "Boosting Tool Use of Large Language Models via Iterative Reinforced Fine-Tuning"; spec §37 of
methods/reasoning-multimodal-diffusion.md; official code zeng-yirong/iTool `mcts/main.py`.

Stages, each an ordinary preflab run in a subfolder of output_dir (checkpoint, metrics, model card as usual):
    sft_1_easy, sft_2_medium, sft_3_hard  easy-to-hard warm-up SFT (SFTTrainer): stage k trains on the buckets up to
                                          k (bucket = arguments of the gold call, preflab.tool_use.itool_task); lr
                                          3e-3 x `sft_lr_scale` (default 1; preflab.recipe_sft_lr)
    iter_<t>                              perplexity of every pool item's gold under the current model -> top
                                          `ratio` per group (tool call / plain) -> one MCTS per selected prompt
                                          (preflab.tool_use.itool_search) -> step pairs -> SimPO (offline Trainer,
                                          loss_type simpo, beta 2.5, gamma 0.5 in LLaMA-Factory's convention which is
                                          preflab's simpo_gamma) -> the next iteration starts from these weights
    control_<t>                           (control: true) the same optimizer steps, batch and learning rate as
                                          iter_<t>, as SFT on the gold replies of the prompts iter_<t> selected,
                                          chained from the warm-up model: does the search add anything over SFT?
Full fine-tuning (the official LoRA r=8 + merge is the identity merge here: the tiny model is trained whole).

State: itool_state.json after each stage; `resume_from_checkpoint: true` skips the finished stages, reloads the
last finished stage's weights (safetensors) and ends with the same result as an uninterrupted run (the searches of an
iteration run in lockstep, itool_search.run_searches: each round is one batched generate call seeded by the keys
(seed, iteration, prompt, call) of its requests). Model output is only ever parsed (itool_task.parse_calls), never
run.

On several processes (`accelerate launch --num_processes N`, data parallel only) the warm-up SFT, SimPO and control
stages train with the recipe's global batch split over the processes (each stage's batch / N; N must divide it: the SFT
loss is the token mean of the global batch, SimPO's a per-pair mean, so the result equals the one-process recipe).
The evaluations, the perplexities, the MCTS searches and their pairs, and every file (data, pairs, state, summary) are
the main process's: the searches run once, and the other processes wait and receive the pairs and numbers.
"""
from __future__ import annotations

import json
import math
import time
import zlib
from pathlib import Path

import torch

from preflab.data.tokenize import TokenizedPair, bos_ids
from preflab.errors import ConfigError
from preflab.generate import generate_text
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.recipe_options import stage_config
from preflab.recipe_sft_lr import check_sft_lr_scale, scaled_sft_lr, sft_lr_params, sft_lr_summary
from preflab.recipe_state import (
    RecipeStateFile,
    check_stop_after_stage,
    end_processes,
    load_safetensors_into,
    main_result,
    main_writes,
    start_processes,
)
from preflab.runlog import is_main_process, write_summary
from preflab.tool_use.itool_search import (
    Sample,
    SampleRequest,
    SearchConfig,
    StepSearch,
    letter_confidence,
    run_searches,
    select_deficient,
    tree_pairs,
)
from preflab.tool_use.itool_task import (
    bucket,
    grade_outputs,
    make_itool_rows,
    rule_grade,
)

STATE_FILE = "itool_state.json"
BUCKETS = ("easy", "medium", "hard")
BASELINE = "the same model after the easy-to-hard warm-up SFT, before the first iTool iteration (greedy decoding)"
# The tiny model's learning rates: the official 1e-6 (LoRA on an 8B model) moves a 0.2 M-parameter model not at all
SFT = {"task": "sft", "learning_rate": 3e-3, "per_device_train_batch_size": 16, "warmup_steps": 5,
       "lr_scheduler_type": "cosine"}


def simpo_options(beta: float, gamma: float, learning_rate: float, batch_size: int, epochs: float) -> dict:
    """The preference step's Trainer options: SimPO in LLaMA-Factory's form -log sigmoid(beta * (A_w - A_l) - gamma)
    (its simpo_gamma is preflab's simpo_gamma, a margin in loss units), cosine schedule, warmup 0.1 (the script's)."""
    return {"loss_type": "simpo", "beta": beta, "simpo_gamma": gamma, "cpo_alpha": 0.0,  # no NLL term (LLaMA-Factory)
            "learning_rate": learning_rate, "per_device_train_batch_size": batch_size, "num_train_epochs": epochs,
            "lr_scheduler_type": "cosine", "warmup_ratio": 0.1}


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _seed_of(key: tuple) -> int:
    return zlib.crc32(json.dumps(key).encode())


class ModelSampler:
    """Continuations from the policy at `temperature` for a batch of SampleRequests (one left-padded generate call),
    each token with its log-prob under the model (temperature 1); seeded by the requests' keys, so a resumed run
    samples the same."""

    def __init__(self, model, tokenizer, temperature: float):
        self.model, self.tokenizer, self.temperature = model, tokenizer, temperature
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos

    @torch.no_grad()
    def sample_many(self, requests: list[SampleRequest]) -> list[list[Sample]]:
        rows = [list(r.prompt_ids + r.response_ids) for r in requests for _ in range(r.n)]
        budgets = [r.max_new_tokens for r in requests for _ in range(r.n)]
        width = max(len(x) for x in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            attention[i, width - len(row):] = 1
        was_training = self.model.training
        self.model.eval()
        torch.manual_seed(_seed_of([r.key for r in requests]))
        out = self.model.generate(input_ids=ids, attention_mask=attention, do_sample=True,
                                  temperature=self.temperature, top_k=0, top_p=1.0, max_new_tokens=max(budgets),
                                  eos_token_id=self.eos, pad_token_id=self.pad, output_logits=True,
                                  return_dict_in_generate=True)
        self.model.train(was_training)
        new = out.sequences[:, width:]
        logps = torch.stack(out.logits, 1).float().log_softmax(-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        samples = []
        for row, lp, budget in zip(new.tolist(), logps.tolist(), budgets):
            row, lp = row[:budget], lp[:budget]
            stopped = self.eos in row
            cut = row.index(self.eos) + 1 if stopped else len(row)
            texts = [self.tokenizer.decode([t], skip_special_tokens=True) for t in row[:cut]]
            samples.append(Sample(row[:cut], lp[:cut], stopped, texts))
        grouped, start = [], 0
        for r in requests:
            grouped.append(samples[start:start + r.n])
            start += r.n
        return grouped

    def sample(self, request: SampleRequest) -> list[Sample]:
        return self.sample_many([request])[0]


@torch.no_grad()
def gold_perplexities(model, tokenizer, rows: list[dict], batch_size: int = 32) -> list[float]:
    """exp(mean NLL of the gold reply's tokens, eos included) given the prompt (official scripts/cal_ppl.py)."""
    from preflab.data.layout import padded
    from preflab.scoring.lm import LogProbScorer

    was_training = model.training
    model.eval()
    scorer, out, bos = LogProbScorer(model), [], bos_ids(tokenizer)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        seqs = [(bos + _encode(tokenizer, r["prompt"]),
                 _encode(tokenizer, r["gold"]) + [tokenizer.eos_token_id]) for r in chunk]
        scores = scorer(padded(seqs, pad_id=tokenizer.pad_token_id))
        sums, lengths = scores.token_logps.double().sum(-1), scores.mask.sum(-1)
        out += [math.exp(-float(s) / int(n)) for s, n in zip(sums, lengths)]
    model.train(was_training)
    return out


def call_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int) -> tuple[dict, list[dict]]:
    """Greedy replies to the rows' prompts, graded (itool_task.grade_outputs); and a few examples."""
    bos = bos_ids(tokenizer)
    ids = [bos + _encode(tokenizer, r["prompt"]) for r in rows]
    outputs = [o.strip() for o in generate_text(model, tokenizer, ids, max_new_tokens=max_new_tokens)]
    metrics = grade_outputs(outputs, [r["gold"] for r in rows])
    examples = [{"request": r["request"], "gold": r["gold"], "output": o} for r, o in zip(rows, outputs)]
    return metrics, examples


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


class _State:
    """itool_state.json: the recipe's options, each finished stage's record, and which weights each chain is at
    (only iterations, and stop_after_stage, may change on resume)."""

    def __init__(self, path: Path, params: dict, resume: bool, allow_change: bool = False):
        self.file = RecipeStateFile(path, params, resume, initial={"stages": {}, "weights": {"itool": None,
                                                                                             "control": None}},
                                    may_change=("iterations", "stop_after_stage"), allow_change=allow_change)
        self.data = self.file.data

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def finish(self, stage: str, record: dict, chain: str, weights: str | None) -> None:
        self.data["stages"][stage] = record
        if weights is not None:
            self.data["weights"][chain] = weights
        self.file.save()


def batch_per_process(global_batch: int, processes: int, stage: str) -> int:
    """A stage's batch per process: the one-process recipe's batch (`global_batch` rows a step) split over the
    processes; one that does not split is refused (another global batch would be another objective)."""
    if global_batch % processes:
        raise ConfigError(f"task itool: stage {stage} trains on {global_batch} rows a step, which do not split over "
                          f"{processes} processes. Run it with a number of processes that divides {global_batch}, or "
                          "resume it as one process (`preflab train CONFIG.yaml resume_from_checkpoint=true`: the "
                          "finished stages are kept).")
    return global_batch // processes


def _pairs_data(pairs: list[dict], prompt_ids: dict[int, list[int]]) -> list[TokenizedPair]:
    return [TokenizedPair(i, prompt_ids[p["item"]] + p["prefix_ids"], p["chosen_ids"], p["rejected_ids"])
            for i, p in enumerate(pairs)]


def stage_names(iterations: int, control: bool) -> tuple[str, ...]:
    """The stages run_itool can stop after, in order: the warm-up SFT stages (sft_<k>_<bucket>), the iterations
    (iter_<t>) and, with control, the control runs (control_<t>)."""
    return (tuple(f"sft_{k + 1}_{name}" for k, name in enumerate(BUCKETS))
            + tuple(f"iter_{t}" for t in range(1, iterations + 1))
            + (tuple(f"control_{t}" for t in range(1, iterations + 1)) if control else ()))


def run_itool(output_dir: str, seed: int = 0, resume: bool = False, quiet: bool = False, n_train: int = 400,
              n_test: int = 200, pool_size: int = 400, ratio: float = 0.3, iterations: int = 3,
              sft_steps: int = 180, hidden_size: int = 64, num_actions: int = 3, temperature: float = 1.0,
              mcts_iters: int = 5, depth: int = 3, step_limit: int = 2, max_simulation_steps: int = 2,
              exploration_weight: float = 1.0, value_threshold: float = 0.1, overlap_limit: float = 0.95,
              accept_value: float = -0.3, simpo_beta: float = 2.5, simpo_gamma: float = 0.5,
              simpo_learning_rate: float = 1e-4, simpo_epochs: float = 2.0, simpo_batch_size: int = 8,
              max_new_tokens: int = 60, control: bool = True, stop_after_stage: str | None = None,
              sft_lr_scale: float = 1.0, stage_options: dict | None = None,
              allow_config_change: bool = False) -> dict:
    params = {k: v for k, v in locals().items() if k not in ("output_dir", "resume", "quiet", "sft_lr_scale",
                                                             "allow_config_change")}
    check_sft_lr_scale("itool", sft_lr_scale, SFT["learning_rate"])
    params.update(sft_lr_params(sft_lr_scale))  # absent at 1.0: the state file as before
    torch.set_num_threads(1)
    if not 0 < ratio <= 1 or pool_size > n_train or iterations < 0 or num_actions < 2 or sft_steps < 1:
        raise ConfigError("recipe_params: need 0 < ratio <= 1, pool_size <= n_train, iterations >= 0, "
                          "num_actions >= 2 (pairs need two children) and sft_steps >= 1.")
    if n_test < 1 or mcts_iters < 1 or not temperature > 0 or max_new_tokens < 1 or simpo_batch_size < 1:
        raise ConfigError(  # before the warm-up SFT runs
            "itool recipe_params: need n_test >= 1 (held-out prompts), mcts_iters >= 1 (simulations per search), "
            "temperature > 0 (the expansion samples), max_new_tokens >= 1 and simpo_batch_size >= 1; got "
            f"n_test={n_test}, mcts_iters={mcts_iters}, temperature={temperature}, max_new_tokens={max_new_tokens}, "
            f"simpo_batch_size={simpo_batch_size}.")
    check_stop_after_stage(stop_after_stage, stage_names(iterations, control))
    out, started = Path(output_dir), time.perf_counter()
    processes = start_processes()  # a launch's process group, formed before anything is written
    train = make_itool_rows(n_train, seed=seed)
    warmup_rows = {name: [{"prompt": r["prompt"], "completion": r["gold"]} for r in train
                          if BUCKETS.index(bucket(r["difficulty"])) <= k] for k, name in enumerate(BUCKETS)}
    for k, name in enumerate(BUCKETS):  # the warm-up batches split over the processes, checked before anything runs
        batch_per_process(min(SFT["per_device_train_batch_size"], len(warmup_rows[name])), processes,
                          f"sft_{k + 1}_{name}")
    main_writes(lambda: out.mkdir(parents=True, exist_ok=True))
    state = _State(out / STATE_FILE, params, resume, allow_config_change)
    say = print if not quiet and is_main_process() else (lambda *a: None)
    test = make_itool_rows(n_test, seed=seed + 10_000, exclude={r["request"] for r in train})
    pool = train[:pool_size]
    main_writes(lambda: (_write_jsonl(out / "data" / "train.jsonl", train),
                         _write_jsonl(out / "data" / "test.jsonl", test)))
    tokenizer = tiny_tokenizer("char")
    bos = bos_ids(tokenizer)
    prompt_ids = {i: bos + _encode(tokenizer, r["prompt"]) for i, r in enumerate(pool)}
    common = {"model_name_or_path": "builtin:tiny-llama", "max_length": 160, "seed": seed, "logging_steps": 10,
              "disable_tqdm": quiet, "use_cpu": True}
    search_cfg = SearchConfig(num_actions, mcts_iters, depth, step_limit, max_simulation_steps, exploration_weight,
                              max_new_tokens)

    def fresh_model(weights: str | None):
        model = tiny_causal_lm(tokenizer, arch="llama", hidden_size=hidden_size, num_layers=2, num_heads=4,
                               seed=seed)
        if weights:
            load_safetensors_into(model, out / weights / "model.safetensors")
        return model

    def evaluate(model) -> tuple[dict, list[dict]]:  # greedy generation on the main process, sent to all
        return main_result(lambda: call_accuracy(model, tokenizer, test, max_new_tokens))

    def stop(stage: str) -> bool:
        return stop_after_stage == stage

    def finish(stopped: str | None = None) -> dict:  # the summary's examples and file: the main process's
        summary = main_result(lambda: _summary(out, state, test, started, stopped=stopped))
        end_processes()
        return summary

    # ---------------------------------------------------------------- warm-up SFT, easy to hard
    model = fresh_model(state.data["weights"]["itool"])
    if state.data["weights"]["itool"] is None:  # the model as built, before any stage trained it
        from preflab.recipe_start import save_start

        # RUN/start/ and start.json, once (a resume keeps them); SimPO is reference-free: no stage listed
        main_writes(lambda: save_start(out, model, tokenizer, {}, resume))
    if not state.done("untrained"):
        metrics, _ = evaluate(model)
        state.finish("untrained", {"eval": metrics}, "itool", None)
    for k, name in enumerate(BUCKETS):
        stage = f"sft_{k + 1}_{name}"
        if state.done(stage):
            continue
        rows = warmup_rows[name]
        main_writes(lambda stage=stage, rows=rows: _write_jsonl(out / "data" / f"{stage}.jsonl", rows))
        say(f"itool: warm-up {stage}: SFT on {len(rows)} rows (buckets up to {name})")
        from preflab.loops.sft import SFTTrainer

        SFTTrainer(stage_config("itool", {**common, **SFT, "max_steps": sft_steps,
                                          "learning_rate": scaled_sft_lr(SFT["learning_rate"], sft_lr_scale),
                                          "per_device_train_batch_size": batch_per_process(
                                              min(SFT["per_device_train_batch_size"], len(rows)), processes, stage),
                                          "dataset_name": str(out / "data" / f"{stage}.jsonl"),
                                          "output_dir": str(out / stage)}, stage_options, run_dir=out),
                   policy=model, tokenizer=tokenizer).train()
        metrics, _ = evaluate(model)
        say(f"itool: after {stage}: call accuracy {metrics['call_accuracy']:.3f}")
        state.finish(stage, {"rows": len(rows), "eval": metrics}, "itool", stage)
        if stop(stage):
            return finish(stage)
    warm = state.data["stages"]["sft_3_hard"]["eval"]
    say(f"itool: after warm-up: call accuracy {warm['call_accuracy']:.3f}")

    def search_pairs(model, t: int, stage: str) -> tuple[list[dict], dict]:
        """Perplexities, selection, the MCTS searches and their step pairs, pairs.jsonl written (the main process's
        job): (the pairs, the iteration's record so far)."""
        search_started = time.perf_counter()
        ppl = gold_perplexities(model, tokenizer, pool)
        selected = select_deficient(pool, ppl, ratio)
        pairs, counts, search_stats = [], {}, {"sampler_calls": 0, "skipped_mcts_iterations": 0}
        searches = [StepSearch(prompt_ids[i], pool[i]["gold"],
                               lambda text, fin, g=pool[i]["gold"]: letter_confidence(rule_grade(text, g, fin)),
                               search_cfg, key=(seed, t, i)) for i in selected]
        roots = run_searches(searches, ModelSampler(model, tokenizer, temperature).sample_many)
        for i, search, root in zip(selected, searches, roots):
            found, c = tree_pairs(root, value_threshold, overlap_limit, accept_value)
            pairs += [{**p, "item": i} for p in found]
            counts = {k: counts.get(k, 0) + v for k, v in c.items()}
            search_stats["sampler_calls"] += search.calls
            search_stats["skipped_mcts_iterations"] += search.skipped_iterations
        _write_jsonl(out / stage / "pairs.jsonl", [{"request": pool[p["item"]]["request"], **{
            k: p[k] for k in ("prefix", "chosen", "rejected", "chosen_value", "rejected_value", "depth")}}
            for p in pairs])
        n_tool = sum(")" in pool[i]["gold"] for i in selected)
        record = {"selected": len(selected), "selected_tool": n_tool, "selected_plain": len(selected) - n_tool,
                  "selected_items": selected, "mean_gold_ppl": sum(ppl) / len(ppl),
                  "mean_selected_ppl": sum(ppl[i] for i in selected) / max(len(selected), 1),
                  "pairs": counts, **search_stats, "simpo_steps": 0,
                  "search_seconds": round(time.perf_counter() - search_started, 1)}
        say(f"itool: {stage}: {len(selected)} prompts selected ({n_tool} tool calls), pairs kept "
            f"{counts.get('kept', 0)} of {counts.get('candidates', 0)}")
        return pairs, record

    # ---------------------------------------------------------------- iterations
    from preflab.loops.offline import Trainer

    for t in range(1, iterations + 1):
        stage = f"iter_{t}"
        if state.done(stage):
            continue
        model = fresh_model(state.data["weights"]["itool"])  # the previous stage's saved weights, exactly
        pairs, record = main_result(lambda model=model, t=t, stage=stage: search_pairs(model, t, stage))
        weights = None
        if pairs:
            batch = min(simpo_batch_size, len(pairs))
            summary = Trainer(stage_config("itool", {  # not kept: its DDP wrapper goes before the process group
                **common, **simpo_options(simpo_beta, simpo_gamma, simpo_learning_rate,
                                          batch_per_process(batch, processes, stage), simpo_epochs),
                "dataset_name": str(out / stage / "pairs.jsonl"), "output_dir": str(out / stage / "simpo")},
                stage_options, run_dir=out),
                policy=model, ref=None, tokenizer=tokenizer, train_data=_pairs_data(pairs, prompt_ids)).train()
            record.update(simpo_steps=summary["global_step"], simpo_batch_size=batch,
                          simpo_final={k: v for k, v in summary["final_metrics"].items() if not k.endswith("_per_second")}, simpo_seconds=round(summary["runtime_s"], 1))
            weights = f"{stage}/simpo"
        record["eval"], _ = evaluate(model)
        say(f"itool: after {stage}: call accuracy {record['eval']['call_accuracy']:.3f}")
        state.finish(stage, record, "itool", weights)
        if stop(stage):
            return finish(stage)

    # ---------------------------------------------------------------- control: the same steps as SFT on the gold
    if control:
        for t in range(1, iterations + 1):
            stage = f"control_{t}"
            if state.done(stage):
                continue
            it = state.data["stages"][f"iter_{t}"]
            weights = state.data["weights"]["control"] or "sft_3_hard"
            model = fresh_model(weights)
            new_weights = None
            if it["simpo_steps"]:
                rows = [{"prompt": pool[i]["prompt"], "completion": pool[i]["gold"]} for i in it["selected_items"]]
                main_writes(lambda stage=stage, rows=rows: _write_jsonl(out / "data" / f"{stage}.jsonl", rows))
                from preflab.loops.sft import SFTTrainer

                SFTTrainer(stage_config("itool", {
                    **common, "task": "sft", "learning_rate": simpo_learning_rate,
                    "per_device_train_batch_size": batch_per_process(
                        min(it["simpo_batch_size"], len(rows)), processes, stage),
                    "max_steps": it["simpo_steps"], "lr_scheduler_type": "cosine", "warmup_ratio": 0.1,
                    "dataset_name": str(out / "data" / f"{stage}.jsonl"), "output_dir": str(out / stage)},
                    stage_options, run_dir=out),
                    policy=model, tokenizer=tokenizer).train()
                new_weights = stage
            metrics, _ = evaluate(model)
            state.finish(stage, {"steps": it["simpo_steps"], "eval": metrics}, "control", new_weights or weights)
            if stop(stage):
                return finish(stage)
    return finish()


def _summary(out: Path, state: _State, test: list[dict], started: float, stopped: str | None = None) -> dict:
    stages, params = state.data["stages"], state.data["params"]
    tokenizer = tiny_tokenizer("char")
    iters = sorted((k for k in stages if k.startswith("iter_")), key=lambda k: int(k.split("_")[1]))
    before = stages.get("sft_3_hard", {}).get("eval")
    after = stages[iters[-1]]["eval"] if iters else before

    def examples(weights: str | None) -> list[dict]:
        if weights is None:
            return []
        model = tiny_causal_lm(tokenizer, arch="llama", hidden_size=params["hidden_size"], num_layers=2,
                               num_heads=4, seed=params["seed"])
        load_safetensors_into(model, out / weights / "model.safetensors")
        return call_accuracy(model, tokenizer, test[:8], params["max_new_tokens"])[1]

    controls = sorted((k for k in stages if k.startswith("control_")), key=lambda k: int(k.split("_")[1]))
    summary = {
        "recipe": "itool", "metric_name": "call_accuracy",
        "metric_before": before["call_accuracy"] if before else None,
        "metric_after": after["call_accuracy"] if after else None,
        "baseline": BASELINE, "heldout": len(test),
        "metric_untrained": stages["untrained"]["eval"]["call_accuracy"],
        "control_after": stages[controls[-1]]["eval"]["call_accuracy"] if controls else None,
        "control": "the same optimizer steps, batch and learning rate as each iTool iteration, as SFT on the gold "
                   "replies of the prompts that iteration selected, from the warm-up model",
        "warmup": {k: {"rows": v["rows"], "call_accuracy": v["eval"]["call_accuracy"]}
                   for k, v in stages.items() if k.startswith("sft_")},
        "iterations": {k: {x: v for x, v in stages[k].items() if x != "selected_items"} for k in iters},
        "eval_before": before, "eval_after": after,
        "eval_control": stages[controls[-1]]["eval"] if controls else None,
        "training": f"full fine-tuning (no LoRA, so no merge); SimPO beta {params['simpo_beta']:g}, gamma "
                    f"{params['simpo_gamma']:g} (LLaMA-Factory's simpo_gamma = preflab's simpo_gamma: loss "
                    f"-log sigmoid(beta*(mean logp_w - mean logp_l) - gamma)), lr {params['simpo_learning_rate']:g}",
        "examples_before": examples("sft_3_hard" if before else None),
        "examples_after": examples(state.data["weights"]["itool"]) if iters else [],
        "seed": params["seed"], "params": params,
        **sft_lr_summary(params.get("sft_lr_scale", 1), SFT["learning_rate"]),
        "runtime_s": time.perf_counter() - started,
    }
    if stopped:
        summary["stopped_after_stage"] = stopped
    write_summary(out, summary)
    return summary
