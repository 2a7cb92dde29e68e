#!/usr/bin/env python
"""Online (GRPO) benchmark: preflab's online run against TRL 1.16's GRPOTrainer, same model, prompts, reward, settings.

Each run is a subprocess of this script (`--worker trl|preflab`), so peak RSS is per library; the driver runs the
two libraries alternately (order swapped every repeat) and prints, per library, tokens generated/s, optimizer
steps/s and the wall time split into generation / scoring / training, then the ratios preflab / TRL of the same
session (ratio of medians, and min / median / max of the per-repeat ratios).

What both runs hold equal: the shared bench fixture's model (15.7M-parameter Llama, fp32, sdpa; the reference a
frozen copy of it) and tokenizer; the first --prompts prompts of train.jsonl as plain text (both libraries tokenize
them to the same ids: BOS + text, checked and printed as `prompt_ids_sha`); every step uses all of them
(prompts_per_generation = --prompts, TRL's per_device_train_batch_size = prompts x num_generations), so both
libraries do the same work per step; one reward function (`reward_vowels`: the share of a, e, i, o, u among a
completion's letters; a plain Python function with TRL's signature, which preflab's judge accepts as is);
num_generations, max_completion_length, temperature 1 (full softmax: top_k 0, top_p 1), beta, loss type (TRL names),
epsilon 0.2, scale_rewards group, AdamW fused, constant learning rate, no warmup, no weight decay, clipping at 1.0,
one generation per step (on-policy: no old-policy pass), one thread, fp32.

Phases (steps 2..N, the first step's one-off work left out; per-step sums of wall time):
  generation  TRL: GRPOTrainer._generate (tokenising the prompts, model.generate, decoding); preflab:
              OnlineRun._generate (model.generate with the KV cache; prompts were tokenised once at the start and
              decoding is part of scoring: both are milliseconds here)
  scoring     reward function calls, the reference model's token log-probs, advantages and the rest of the
              round's bookkeeping (TRL: the rest of _generate_and_score_completions; preflab: the rest of
              OnlineRun._new_round)
  training    the optimizer step: policy forward, loss, backward, clipping, AdamW (step time - generation - scoring)
Generated tokens are counted from the completions (EOS included, as both libraries train on it).

Same semantics, checked by `--check`: both libraries get the same forced completions (random token ids seeded by
the prompt, no EOS) for 3 steps through their generation hook; the per-step loss and grad norm must agree to
float32 tolerance (step 1's loss is 0 in both: on-policy ratios are 1 and each group's advantages sum to 0, so its
grad norm is the number that shows the advantage-weighted gradient agrees). Exit status 0 when the prompt ids are
equal, the losses agree to 1e-5, step 1's grad norm to 1e-5 relative and the later ones to 5e-3 relative.

  python benchmarks/online_compare.py --repeats 2 --steps 6 --out /tmp/online_cmp.jsonl
  python benchmarks/online_compare.py --check
  python benchmarks/online_compare.py --report /tmp/online_cmp.jsonl
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_FIXTURE = os.path.join(tempfile.gettempdir(), "prefbench-fixture")


def reward_vowels(prompts, completions, **kwargs):
    """Share of vowels among a completion's letters (0 for a completion without letters)."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[-1]["content"]
        letters = [ch for ch in text.lower() if ch.isalpha()]
        out.append(sum(ch in "aeiou" for ch in letters) / len(letters) if letters else 0.0)
    return out


def parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", default=DEFAULT_FIXTURE, help="folder written by the shared bench's make_fixture.py")
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step (all of the run's prompts)")
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--loss-type", default="dapo", help="grpo | dapo | dr_grpo | bnpo (TRL's names)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--libraries", default="trl,preflab",
                    help="comma-separated: trl, preflab, and preflab_before (needs --before-src)")
    ap.add_argument("--before-src", help="a src/ folder of another preflab version (e.g. `git archive COMMIT src`), "
                                         "run as library preflab_before")
    ap.add_argument("--out", help="append every run's JSON line to this file")
    ap.add_argument("--report", help="print the tables of the runs in this JSONL file and exit")
    ap.add_argument("--check", action="store_true", help="forced identical completions: compare loss and grad norm")
    ap.add_argument("--worker", choices=["trl", "preflab"], help=argparse.SUPPRESS)
    ap.add_argument("--force-completions", action="store_true", help=argparse.SUPPRESS)
    return ap


# ---------------------------------------------------------------------------------------------------- worker side
class PhaseClock:
    """Wall time per phase and the optimizer-step timestamps (a global optimizer post-hook: both libraries)."""

    def __init__(self):
        self.step_ends: list[float] = []
        self.events: list[tuple[float, str, float]] = []   # (end time, phase, seconds)
        self.generated: list[tuple[float, int]] = []       # (end time, completion tokens)

    def wrap(self, obj, name: str, phase: str):
        fn = getattr(obj, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                t1 = time.perf_counter()
                self.events.append((t1, phase, t1 - t0))
        setattr(obj, name, timed)

    def on_step(self, *_):
        self.step_ends.append(time.perf_counter())

    def summary(self) -> dict:
        """Steps 2..N: from the end of step 1 to the end of step N."""
        t0, t1 = self.step_ends[0], self.step_ends[-1]
        inside = lambda t: t0 < t <= t1  # noqa: E731
        total = {p: sum(s for t, q, s in self.events if q == p and inside(t)) for p in ("generate", "round")}
        steps = len(self.step_ends) - 1
        wall = t1 - t0
        gen = total["generate"]
        scoring = total["round"] - gen
        tokens = sum(n for t, n in self.generated if inside(t))
        return {"timed_steps": steps, "timed_wall_s": wall, "steps_per_s": steps / wall,
                "generation_s": gen, "scoring_s": scoring, "training_s": wall - total["round"],
                "generated_tokens": tokens, "generated_tokens_per_s": tokens / wall,
                "generation_tokens_per_s": tokens / gen if gen else None,
                "step_s": [b - a for a, b in zip(self.step_ends, self.step_ends[1:])]}


def forced_completions(prompt_ids: list[int], k: int, length: int, vocab: int, eos: int, pad: int) -> list[list[int]]:
    """k fixed completions of `length` random non-special ids, seeded by the prompt's ids."""
    import torch

    seed = int(hashlib.sha256(json.dumps(prompt_ids).encode()).hexdigest()[:8], 16)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (k, length), generator=g)
    assert not bool(((ids == eos) | (ids == pad)).any())
    return ids.tolist()


def prompt_digest(prompt_ids) -> str:
    """sha256 (12 hex digits) of the set of distinct prompt id lists a run generated from."""
    distinct = sorted({tuple(int(t) for t in p) for p in prompt_ids})
    return hashlib.sha256(json.dumps(distinct).encode()).hexdigest()[:12]


def load_inputs(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch

    path = os.path.join(args.fixture, "model")
    tok = AutoTokenizer.from_pretrained(path)
    with open(os.path.join(args.fixture, "train.jsonl")) as f:
        prompts = [json.loads(line)["prompt"] for _, line in zip(range(args.prompts), f)]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    return path, tok, prompts, model


def run_trl(args, clock: PhaseClock) -> dict:
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    _, tok, prompts, model = load_inputs(args)
    out = tempfile.mkdtemp(prefix="online-cmp-trl-")
    G = args.num_generations
    cfg = GRPOConfig(output_dir=out, per_device_train_batch_size=args.prompts * G, num_generations=G,
                     max_completion_length=args.max_completion_length, temperature=args.temperature, top_k=0,
                     top_p=1.0, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
                     weight_decay=0.0, max_grad_norm=1.0, beta=args.beta, loss_type=args.loss_type, epsilon=0.2,
                     scale_rewards="group", max_steps=args.steps, logging_steps=1, report_to=[], use_cpu=True,
                     seed=args.seed, save_strategy="no", bf16=False, gradient_checkpointing=False,
                     optim="adamw_torch_fused", disable_tqdm=True, dataloader_num_workers=0, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_vowels, args=cfg, processing_class=tok,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))
    seen_prompt_ids = []
    inner = trainer._generate_single_turn

    def generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, *a, **k):
        seen_prompt_ids.extend(list(p) for p in prompt_ids)
        if args.force_completions:  # prompt_ids: one entry per completion (each prompt num_generations times)
            firsts = prompt_ids[::num_generations]
            ids = [c for p in firsts for c in forced_completions(list(p), num_generations, args.max_completion_length,
                                                                  len(tok), tok.eos_token_id, tok.pad_token_id)]
            out_ids = ids
        else:
            out_ids, _ = inner(prompt_ids, images, multimodal_fields, num_generations, *a, **k)
        clock.generated.append((time.perf_counter(), sum(len(c) for c in out_ids)))
        return out_ids, None

    trainer._generate_single_turn = generate_single_turn
    clock.wrap(trainer, "_generate", "generate")
    clock.wrap(trainer, "_generate_and_score_completions", "round")

    class StepEnd(TrainerCallback):
        def on_step_end(self, *a, **k):
            clock.on_step()
    trainer.add_callback(StepEnd())
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [r for r in trainer.state.log_history if "loss" in r]
    return {"library": "trl", "library_version": trl.__version__, "train_wall_s": wall,
            "losses": [r["loss"] for r in logs], "grad_norms": [r.get("grad_norm") for r in logs],
            "rewards": [r.get("reward") for r in logs], "kl": [r.get("kl") for r in logs],
            "completions_per_step": args.prompts * G,
            "prompt_ids_sha": prompt_digest(seen_prompt_ids)}


def run_preflab(args, clock: PhaseClock) -> dict:
    import preflab
    from preflab.config import config_from_dict
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    path, tok, prompts, model = load_inputs(args)
    out = tempfile.mkdtemp(prefix="online-cmp-preflab-")
    G = args.num_generations
    cfg = config_from_dict({
        "task": "online", "online_task": "dataset", "model_name_or_path": path, "dataset_name": "(in memory)",
        "trainer": args.loss_type, "num_generations": G, "prompts_per_generation": args.prompts,
        "steps_per_generation": 1, "per_device_train_batch_size": args.prompts,
        "per_device_eval_batch_size": args.prompts * G, "max_completion_length": args.max_completion_length,
        "temperature": args.temperature, "top_p": 1.0, "learning_rate": args.lr, "lr_scheduler_type": "constant",
        "weight_decay": 0.0, "max_grad_norm": 1.0, "beta": args.beta, "epsilon": 0.2, "scale_rewards": "group",
        "max_steps": args.steps, "logging_steps": 1, "seed": args.seed, "use_cpu": True, "output_dir": out,
        "disable_tqdm": True})
    run = OnlineRun(cfg, policy=model, tokenizer=tok, task=Task(list(prompts), [reward_vowels]))
    seen_prompt_ids = [r.prompt_ids for r in run.rows]
    inner = run._generate

    def generate(rows, k, seed):
        if args.force_completions:
            ids = [c for r in rows for c in forced_completions(r.prompt_ids, k, args.max_completion_length, len(tok),
                                                               tok.eos_token_id, tok.pad_token_id)]
        else:
            ids = inner(rows, k, seed)
        clock.generated.append((time.perf_counter(), sum(len(c) for c in ids)))
        return ids
    run._generate = generate
    clock.wrap(run, "_generate", "generate")
    clock.wrap(run, "_new_round", "round")
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(clock.on_step)
    t0 = time.perf_counter()
    run.train()
    wall = time.perf_counter() - t0
    handle.remove()
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    logs = [r for r in rows if "loss" in r]
    return {"library": "preflab", "library_version": getattr(preflab, "__version__", "?"), "train_wall_s": wall,
            "losses": [r["loss"] for r in logs], "grad_norms": [r.get("grad_norm") for r in logs],
            "rewards": [r.get("reward") for r in logs], "kl": [r.get("kl") for r in logs],
            "completions_per_step": args.prompts * G,
            "prompt_ids_sha": prompt_digest(seen_prompt_ids)}


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    clock = PhaseClock()
    t0 = time.perf_counter()
    res = (run_trl if args.worker == "trl" else run_preflab)(args, clock)
    res.update(clock.summary())
    res.update({"process_s": time.perf_counter() - t0, "peak_rss_mib": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "torch_version": torch.__version__, "threads": args.threads,
        "loadavg_1m": os.getloadavg()[0], "forced": args.force_completions,
        "settings": {k: getattr(args, k) for k in ("prompts", "num_generations", "max_completion_length",
                                                     "temperature", "lr", "beta", "loss_type", "steps", "seed")}})
    print(json.dumps(res))


# ---------------------------------------------------------------------------------------------------- driver side
def launch(args, library: str, extra: list[str]) -> dict:
    label, library = library, "preflab" if library == "preflab_before" else library
    cmd = [sys.executable, __file__, "--worker", library, "--fixture", args.fixture, "--prompts", str(args.prompts),
           "--num-generations", str(args.num_generations), "--max-completion-length", str(args.max_completion_length),
           "--temperature", str(args.temperature), "--lr", str(args.lr), "--beta", str(args.beta), "--loss-type",
           args.loss_type, "--steps", str(args.steps), "--seed", str(args.seed), "--threads", str(args.threads), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    if label == "preflab_before":
        if not args.before_src:
            raise SystemExit("library preflab_before needs --before-src DIR")
        env["PYTHONPATH"] = os.path.abspath(args.before_src)
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"worker {library} failed ({proc.returncode}): {' '.join(cmd)}")
    res = json.loads(lines[-1])
    res["loadavg_before_1m"] = load_before
    res["library"] = label
    print(f"  {label:14s} {res['generated_tokens_per_s']:7.1f} gen tok/s  {res['steps_per_s']:.3f} steps/s  "
          f"gen {res['generation_s']:6.2f} s  score {res['scoring_s']:5.2f} s  train {res['training_s']:5.2f} s  "
          f"peak {res['peak_rss_mib']:6.0f} MiB  load {load_before:.2f}/{res['loadavg_1m']:.2f}  "
          f"losses {['%.5f' % x for x in res['losses'][:3]]}", flush=True)
    return res


def check(args) -> int:
    """Forced identical completions, 3 steps: the loss and grad-norm curves of both libraries."""
    args.steps = 3
    runs = {lib: launch(args, lib, ["--force-completions"]) for lib in ("trl", "preflab")}
    t, p = runs["trl"], runs["preflab"]
    ok = t["prompt_ids_sha"] == p["prompt_ids_sha"] and t["completions_per_step"] == p["completions_per_step"]
    dl = max(abs(a - b) for a, b in zip(t["losses"], p["losses"]))
    rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(t["grad_norms"], p["grad_norms"])]
    dg = max(rel)
    print(json.dumps({"prompt_ids_equal": t["prompt_ids_sha"] == p["prompt_ids_sha"],
                      "completions_per_step": [t["completions_per_step"], p["completions_per_step"]],
                      "loss_trl": t["losses"], "loss_preflab": p["losses"], "max_abs_loss_diff": dl,
                      "grad_norm_trl": t["grad_norms"], "grad_norm_preflab": p["grad_norms"],
                      "max_rel_grad_norm_diff": dg, "kl_trl": t["kl"], "kl_preflab": p["kl"]}, indent=1))
    # step 1 (same weights): float32 summation order only; later steps: AdamW's first updates (about lr x sign(g))
    # carry the step-1 rounding differences into the weights, so the tolerance is looser there
    return 0 if ok and dl < 1e-5 and rel[0] < 1e-5 and dg < 5e-3 else 1


def spread(values) -> str:
    return f"{min(values):.3g} / {statistics.median(values):.3g} / {max(values):.3g}"


def report(results: list[dict]) -> None:
    libs = [lib for lib in ("trl", "preflab", "preflab_before") if any(r["library"] == lib for r in results)]
    by = {lib: [r for r in results if r["library"] == lib and not r.get("forced")] for lib in libs}
    keys = [("generated_tokens_per_s", "generated tokens / s of wall time"), ("steps_per_s", "optimizer steps / s"),
            ("generation_tokens_per_s", "generated tokens / s of generation time"),
            ("generation_s", "generation s / step"), ("scoring_s", "scoring s / step"),
            ("training_s", "training s / step"), ("peak_rss_mib", "peak RSS MiB")]
    per_step = {"generation_s", "scoring_s", "training_s"}
    others = [(lib, "trl") for lib in libs if lib != "trl"]
    if "preflab_before" in libs and "preflab" in libs:
        others.append(("preflab", "preflab_before"))
    print("\n| quantity (steps 2..N) | " + " | ".join(f"{lib} min / median / max" for lib in libs) + " | " +
          " | ".join(f"{a} / {b}: ratio of medians (per-repeat min / median / max)" for a, b in others) + " |")
    print("|---|" + "---|" * (len(libs) + len(others)))
    for key, label in keys:
        cols = {lib: [r[key] / (r["timed_steps"] if key in per_step else 1) for r in by[lib]] for lib in libs}
        if any(not v for v in cols.values()) or "trl" not in cols:
            continue
        cells = [spread(cols[lib]) for lib in libs]
        for a, b in others:
            pairs = [x / y for x, y in zip(cols[a], cols[b])]
            cells.append(f"{statistics.median(cols[a]) / statistics.median(cols[b]):.2f}x ({spread(pairs)})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    loads = [r.get("loadavg_before_1m", r["loadavg_1m"]) for r in results] + [r["loadavg_1m"] for r in results]
    print(f"\nruns: {', '.join(f'{lib} {len(by[lib])}' for lib in libs)}; 1-minute load average before/after the runs "
          f"{min(loads):.2f}-{max(loads):.2f}; settings {results[0]['settings']}")


def main() -> int:
    args = parser().parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.report:
        report([json.loads(line) for line in open(args.report)])
        return 0
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    if args.check:
        return check(args)
    libs = args.libraries.split(",")
    results = []
    for rep in range(args.repeats):
        print(f"repeat {rep + 1}/{args.repeats}", flush=True)
        for lib in (libs if rep % 2 == 0 else libs[::-1]):
            res = launch(args, lib, [])
            res["repeat"] = rep
            results.append(res)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(res) + "\n")
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
