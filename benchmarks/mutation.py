"""Planted-bug (mutation) runner: does the test suite catch plausible bugs in preflab's numerical core?

    python benchmarks/mutation.py                       # every mutant, one at a time
    python benchmarks/mutation.py --only dpo step      # mutants whose name contains one of the words
    python benchmarks/mutation.py --list                # names, files and the tests each mutant runs
    python benchmarks/mutation.py --timeout 300 --json out.json

Each mutant is one textual edit (or a few edits that make one bug) of a file under src/preflab: a sign, an
off-by-one, a `>` for `>=`, a dropped normalisation. For each, a temporary copy of src/ gets the edit and the tests
that cover that file run against it (PYTHONPATH = the copy, `pytest -x`, a time limit). A mutant is *caught* when
the tests fail (or time out, reported apart) and *survives* when they pass. Before the mutants, each distinct test
selection runs once on the unmodified copy: it must pass, or the run stops (a failing baseline catches everything).
An edit whose text is not found exactly once is reported as *stale* (the source changed: update the mutant).

Run by hand (not in CI); it takes a few minutes per mutant on 2 CPU cores. README's testing section gives the last
kill rate. Mutants that survive are either missing tests (add one) or equivalent edits (then drop them here).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# test selections (paths relative to the repository root, plus pytest options such as -k)
LAYOUT = ["tests/scoring/test_lm.py", "tests/perf/test_prefix_layout.py"]
HEAD = ["tests/scoring/test_heads.py", "-k", "granite or gemma2 or vaultgemma or cohere or hyperclovax or refused"]
STEP = ["tests/test_step_weights_and_fp16.py", "tests/loops/test_trainer.py", "-k",
        "uneven or fp16 or row_ids or accumulation or nonfinite"]
CKPT = ["tests/test_reliability.py", "tests/loops/test_trainer.py", "-k",
        "checkpoint or resume or latest or sigkill"]
TOKENIZE = ["tests/data/test_data_tokenize.py", "tests/data/test_data_boundary.py"]
EVAL = ["tests/eval/test_ranking.py", "tests/eval/test_metrics.py", "tests/eval/test_tie_rules.py"]
TRAIN_FEW = ["tests/loops/test_train_every_objective.py", "-k", "test_train_runs_objective and (sigmoid or ipo)"]


def objective_tests(name: str) -> list[str]:
    return [f"tests/objectives/test_{name}.py", "tests/objectives/test_contract.py", "-k", name]


@dataclass
class Mutant:
    name: str
    file: str                      # under src/preflab
    edits: list[tuple[str, str]]   # (old, new), each old must occur exactly once
    tests: list[str]
    why: str = ""


MUTANTS = [
    # data: layouts, prefix sharing, tokenization
    Mutant("layout-pred-off-by-one", "data/layout.py",
           [("pred[i, :k] = offset + start - 1 + torch.arange(k)", "pred[i, :k] = offset + start + torch.arange(k)")],
           LAYOUT, "each response token predicted from its own position instead of the one before"),
    Mutant("layout-pairs-swapped", "data/layout.py",
           [("return [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]",
             "return [(p.prompt_ids, p.rejected_ids) for p in pairs] + [(p.prompt_ids, p.chosen_ids) for p in pairs]")],
           ["tests/perf/test_prefix_layout.py", "tests/loops/test_train_every_objective.py", "-k",
            "test_layout_equals_padded or sigmoid or ipo"],
           "chosen and rejected swapped on the way to the objective"),
    Mutant("prefix-positions-not-restarted", "data/prefix.py",
           [("pos[r, col:col + k] = p + torch.arange(k)", "pos[r, col:col + k] = col + torch.arange(k)")],
           LAYOUT, "the rejected response continues the chosen one's positions"),
    Mutant("prefix-rejected-sees-chosen", "data/prefix.py",
           [("((seg_k == seg_q) | (seg_k == root.unsqueeze(2)))", "((seg_k <= seg_q) & (seg_k >= root.unsqueeze(2)))")],
           LAYOUT, "a response attends to the responses before it in its block"),
    Mutant("prefix-first-token-predictor", "data/prefix.py",
           [("pred[n, 0] = last_prompt", "pred[n, 0] = last_prompt - 1")],
           LAYOUT, "the first response token predicted from the second-to-last prompt position"),
    Mutant("tokenize-keep-end-drops-one-more", "data/tokenize.py",
           [("prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - (limit - 1):]",
             "prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - (limit - 2):]")],
           TOKENIZE, "keep_end truncation with a leading bos keeps limit - 1 tokens"),
    Mutant("tokenize-room-off-by-one", "data/tokenize.py",
           [("room = settings.max_length - len(prompt_ids)", "room = settings.max_length - len(prompt_ids) + 1")],
           TOKENIZE, "prompt + response may exceed max_length by one token"),
    Mutant("tokenize-keep-start-short", "data/tokenize.py",
           [("prompt_ids = prompt_ids[:limit]", "prompt_ids = prompt_ids[:limit - 1]")],
           TOKENIZE, "keep_start truncation keeps one token too few"),
    # scoring
    Mutant("lm-no-normaliser-gradient", "scoring/lm.py",
           [("logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz",
             "logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz.detach()")],
           LAYOUT, "the log-partition gets no gradient (values right, gradients wrong)"),
    Mutant("lm-kl-direction", "scoring/lm.py",
           [("kl = (ref_logprobs.exp() * (ref_logprobs - (logits - logz.unsqueeze(-1)))).sum(-1)",
             "kl = ((logits - logz.unsqueeze(-1)).exp() * ((logits - logz.unsqueeze(-1)) - ref_logprobs)).sum(-1)")],
           LAYOUT, "KL(pi_theta || pi_ref) instead of KL(pi_ref || pi_theta)"),
    Mutant("head-divide-as-multiply", "scoring/head.py",
           [("return logits / value", "return logits * value")], HEAD, "Granite's logits_scaling multiplied"),
    Mutant("head-softcap-unscaled", "scoring/head.py",
           [("return value * torch.tanh(logits / value)  # softcap", "return torch.tanh(logits / value)  # softcap")],
           HEAD, "soft-cap without the outer factor"),
    # the optimizer step
    Mutant("step-mean-per-micro-batch", "step.py",
           [("scaled = out.losses.sum() * world / denom", "scaled = out.losses.mean() * world / len(micro_batches)")],
           STEP, "micro-batches weighted equally instead of examples"),
    Mutant("step-metrics-unweighted", "step.py",
           [("metric_sums[key] = metric_sums.get(key, 0.0) + float(value) * n",
             "metric_sums[key] = metric_sums.get(key, 0.0) + float(value) * len(micro_batches[0].row_ids)")],
           STEP, "step metrics weighted by the first micro-batch's size"),
    Mutant("step-scheduler-on-overflow", "step.py",
           [("if scheduler is not None and not overflow:", "if scheduler is not None:")],
           STEP, "the schedule advances on an fp16 overflow step"),
    Mutant("step-clip-scaled-gradients", "step.py",
           [("if scaler is not None:  # the gradients carry the loss scale", "if False:  # the gradients carry")],
           STEP, "fp16: clipping sees the loss-scaled gradients"),
    Mutant("step-no-clipping", "step.py",
           [("max_grad_norm if max_grad_norm else math.inf", "math.inf")], STEP, "max_grad_norm ignored"),
    Mutant("step-nonfinite-not-skipped", "step.py",
           [("bad = bad or not bool(torch.isfinite(out.loss.detach()))", "bad = bad")],
           STEP, "a non-finite loss is not detected"),
    # checkpoints
    Mutant("checkpoint-latest-by-name", "checkpoint.py",
           [("return [p for _, p in sorted(found)]", "return [p for _, p in sorted(found, key=lambda t: t[1].name)]")],
           CKPT, "checkpoint-9 after checkpoint-10 (sorted by name, not step)"),
    Mutant("checkpoint-rng-not-restored", "checkpoint.py",
           [('torch.set_rng_state(rng["torch"])', "pass")], CKPT, "torch RNG state not restored on resume"),
    # objectives
    Mutant("dpo-sign", "objectives/dpo.py",
           [("-F.logsigmoid(self.beta * (s(h_w) - s(h_l)))", "-F.logsigmoid(self.beta * (s(h_l) - s(h_w)))")],
           objective_tests("dpo"), "DPO prefers the rejected response"),
    Mutant("dpo-no-beta", "objectives/dpo.py",
           [("-F.logsigmoid(self.beta * (s(h_w) - s(h_l)))", "-F.logsigmoid(s(h_w) - s(h_l))")],
           objective_tests("dpo"), "beta dropped"),
    Mutant("ipo-target", "objectives/ipo.py",
           [("(s_w - s_l - 1 / (2 * self.beta)) ** 2", "(s_w - s_l - 1 / self.beta) ** 2")],
           objective_tests("ipo"), "IPO's target margin 1/beta instead of 1/(2 beta)"),
    Mutant("ipo-abs", "objectives/ipo.py",
           [("(s_w - s_l - 1 / (2 * self.beta)) ** 2", "(s_w - s_l - 1 / (2 * self.beta)).abs()")],
           objective_tests("ipo"), "absolute instead of squared error"),
    Mutant("kto-z0-unclamped", "objectives/kto.py",
           [("return kl.mean().clamp(min=0)", "return kl.mean()")], objective_tests("kto"),
           "the reference point may go negative"),
    Mutant("kto-undesirable-sign", "objectives/kto.py",
           [("(1 - torch.sigmoid(self.beta * (z0 - r)))", "(1 - torch.sigmoid(self.beta * (r - z0)))")],
           objective_tests("kto"), "undesirable examples pushed up"),
    Mutant("simpo-gamma-sign", "objectives/simpo.py",
           [("self.beta * (x_w - x_l) - self.gamma", "self.beta * (x_w - x_l) + self.gamma")],
           objective_tests("simpo"), "target margin added instead of subtracted"),
    Mutant("simpo-sum-not-mean", "objectives/simpo.py",
           [("return as_loss_dtype(batch.policy_chosen.mean), as_loss_dtype(batch.policy_rejected.mean)",
             "return as_loss_dtype(batch.policy_chosen.sum), as_loss_dtype(batch.policy_rejected.sum)")],
           objective_tests("simpo"), "no length normalisation"),
    Mutant("orpo-odds-sign", "objectives/orpo.py",
           [("(a_w - a_l) - (log1mexp(", "(a_w - a_l) + (log1mexp(")], objective_tests("orpo"),
           "log odds with the wrong sign of log(1 - p)"),
    Mutant("orpo-ratio-sign", "objectives/orpo.py",
           [("losses = nll - self.beta * ratio", "losses = nll + self.beta * ratio")], objective_tests("orpo"),
           "odds-ratio term rewarded instead of penalised"),
    Mutant("cdpo-smoothing-sign", "objectives/cdpo.py",
           [("losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)",
             "losses = -(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)")], objective_tests("cdpo"),
           "conservative DPO with robust DPO's sign"),
    Mutant("reward-accuracy-ties", "objectives/base.py",
           [('"rewards/accuracies": (chosen > rejected)', '"rewards/accuracies": (chosen >= rejected)')],
           EVAL + ["tests/objectives/test_dpo.py"], "TRL's rewards/accuracies counting ties as correct"),
    # evaluation
    Mutant("ranking-accuracy-strict", "eval/metrics.py",
           [("return (chosen_logps >= rejected_logps).double().mean()",
             "return (chosen_logps > rejected_logps).double().mean()")], EVAL, "R counting ties as wrong"),
    Mutant("idealized-ranking-ties", "eval/ranking.py",
           [("beta, eps) > 0).double().mean())", "beta, eps) >= 0).double().mean())")], EVAL,
           "R* counting a zero optimum margin as correct"),
    Mutant("idealized-alpha-unclipped", "eval/ranking.py",
           [("a = _f64(alpha).clamp(eps, 1.0 - eps)", "a = _f64(alpha)")], EVAL, "alpha = 1 not replaced by 1 - eps"),
    Mutant("eval-batches-unweighted", "loops/offline.py",
           [("sums[key] = sums.get(key, 0.0) + float(value) * len(chunk)",
             "sums[key] = sums.get(key, 0.0) + float(value)"),
            ("                n += len(chunk)", "                n += 1")],
           ["tests/loops/test_eval_weighting.py"], "eval metrics averaged per batch, not per example"),
    Mutant("rso-acceptance-min", "loops/rso.py",
           [("(r - r.max(-1, keepdim=True).values) / beta", "(r - r.min(-1, keepdim=True).values) / beta")],
           ["tests/online/test_rso.py", "tests/lab/test_closed_forms.py"], "acceptance relative to the worst reward"),
]


@dataclass
class Outcome:
    name: str
    status: str  # caught | timeout | survived | stale
    seconds: float
    detail: str = ""
    tests: list[str] = field(default_factory=list)


def _copy_src(dst: Path, origin: Path = ROOT / "src") -> Path:
    src = dst / "src"
    shutil.copytree(origin / "preflab", src / "preflab", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _pytest(src: Path, tests: list[str], timeout: float) -> tuple[str, float, str]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore", *tests]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - started, ""
    tail = (done.stdout.strip().splitlines() or [""])[-1]
    return ("passed" if done.returncode == 0 else "failed"), time.perf_counter() - started, tail


def run(mutants: list[Mutant], timeout: float, log) -> list[Outcome]:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="preflab-mutation-") as tmp:
        clean = _copy_src(Path(tmp) / "clean")
        for tests in {tuple(m.tests) for m in mutants}:
            status, secs, tail = _pytest(clean, list(tests), timeout)
            log(f"baseline {' '.join(tests)}: {status} in {secs:.0f}s {tail}")
            if status != "passed":
                raise SystemExit(f"baseline tests do not pass unmodified: {' '.join(tests)} ({tail})")
        for m in mutants:
            work = Path(tmp) / m.name
            src = _copy_src(work, origin=clean)  # from the snapshot taken at the start, not the live tree
            path = src / "preflab" / m.file
            text = path.read_text()
            stale = [old for old, _ in m.edits if text.count(old) != 1]
            if stale:
                outcomes.append(Outcome(m.name, "stale", 0.0, f"not found exactly once: {stale[0][:60]!r}", m.tests))
            else:
                for old, new in m.edits:
                    text = text.replace(old, new)
                path.write_text(text)
                status, secs, tail = _pytest(src, m.tests, timeout)
                status = {"failed": "caught", "passed": "survived"}.get(status, status)
                outcomes.append(Outcome(m.name, status, secs, tail, m.tests))
            shutil.rmtree(work, ignore_errors=True)
            o = outcomes[-1]
            log(f"{o.status:9s} {o.name:34s} {o.seconds:6.0f}s  {o.detail}")
    return outcomes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="run mutants whose name contains one of these")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per test run (default 300)")
    parser.add_argument("--json", default=None, help="write the outcomes here")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or any(w in m.name for w in args.only)]
    if args.list:
        for m in mutants:
            print(f"{m.name:34s} {m.file:22s} {m.why}\n{'':34s} tests: {' '.join(m.tests)}")
        return 0
    outcomes = run(mutants, args.timeout, lambda line: print(line, flush=True))
    counted = [o for o in outcomes if o.status != "stale"]
    killed = [o for o in counted if o.status in ("caught", "timeout")]
    print(f"\nkilled {len(killed)} of {len(counted)} mutants ({100 * len(killed) / max(len(counted), 1):.0f}%); "
          f"survived: {[o.name for o in counted if o.status == 'survived']}; "
          f"stale: {[o.name for o in outcomes if o.status == 'stale']}")
    if args.json:
        Path(args.json).write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
