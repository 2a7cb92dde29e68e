"""What a run writes besides weights: metrics.jsonl (a logging window's row: average_results; report_to's trackers:
start_trackers), the progress bar, summary.json and the model card."""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from preflab.atomic_file import write_text_file
from preflab.errors import ConfigError
from preflab.log_lines import LogLines, draws_plain_lines


# every per-step file a run appends to: truncated to the resume step on resume, removed on a fresh start
APPENDED_FILES = ("metrics.jsonl", "pair_margins.jsonl")


def truncate_jsonl(path: Path, resume_step: int | None) -> None:
    """Keep the rows of `path` with "step" <= resume_step (a torn or unreadable line is dropped); resume_step
    None: remove the file. Atomic (written aside, then renamed)."""
    path = Path(path)
    if not path.exists():
        return
    if resume_step is None:
        path.unlink()
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            if isinstance(row, dict) and int(row.get("step", 0)) <= resume_step:
                kept.append(line)
        except (ValueError, TypeError):
            continue  # a line torn by a kill
    write_text_file(path, "".join(line + "\n" for line in kept))  # whole or not at all, no .tmp left behind


class MetricsLog:
    """Appends one JSON object per logged step to output_dir/metrics.jsonl (main process only).

    On resume, rows after the resumed step are dropped first from metrics.jsonl and every other file in
    APPENDED_FILES, so no file holds a step twice; a fresh start removes them.
    """

    def __init__(self, output_dir: Path, enabled: bool = True, resume_step: int | None = None, tracker=None):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.tracker = tracker  # optional callable(row), e.g. accelerate's trackers
        if enabled:
            for name in APPENDED_FILES:
                truncate_jsonl(Path(output_dir) / name, resume_step)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(clean) + "\n")
        if self.tracker is not None:
            self.tracker(clean)


def kept_steps(results) -> list:
    """The steps of a logging window that updated the weights: skipped (non-finite) and fp16-overflow steps left out."""
    return [r for r in results if not r.skipped and not getattr(r, "overflow", False)]


def zero_gradient_note(results, last_step: int) -> str | None:
    """The note for a logging window in which every update had a gradient of exactly zero (grad_norm 0.0 at each
    kept step), None otherwise. The driver asks it of a fresh run's first window only: a run that starts so changes
    no weight and finishes without an error (a loss that does not depend on the policy, such as a user objective
    computing from constants; every trained parameter frozen; a group-reward run whose groups all had equal
    rewards), while a run that converged may reach an exactly zero gradient later (egpo on the built-in game does).
    Read from the norms the step already brought to the host (StepResult.grad_norm), so it costs no device read.
    Not for DeepSpeed, whose engine reports no norm (0.0) when it computes none."""
    kept = kept_steps(results)
    if not kept or any(r.grad_norm != 0.0 for r in kept):
        return None
    first = last_step - len(results) + 1
    steps = f"step {last_step}" if first == last_step else f"every step from {first} to {last_step}"
    return (f"preflab: note: the gradient was exactly zero in {steps} (grad_norm 0.0): the loss gave the trained "
            "parameters no gradient, so those updates changed no weight. Look for a loss that does not depend on "
            "the policy's log-probs (a user objective computing from constants or detached values), trained "
            "parameters that are all frozen, or, in a group-reward run, groups whose rewards were all equal (zero "
            "advantages). Asked of the run's first logging window only.")


def average_results(results) -> dict:
    """Mean of a logging window's step metrics (skipped and fp16-overflow steps left out; grad_norm is the last
    kept step's, as in transformers), each step weighted by
    what the metric averages in it (StepResult.metric_counts: its examples, or the objective's own count such as
    KTO's desirable examples or the response tokens), so the value is the exact mean over the window; a metric only
    some steps have (TRL's token metrics: computed on logged steps only; KTO's rewards/chosen in a step without
    desirable examples) is averaged over those steps. A metric defined as a difference (StepResult.
    metric_differences: KTO's rewards/margins) is the difference of the window's means."""
    kept = kept_steps(results)
    if not kept:
        return {"loss": float("nan")}
    n = sum(r.num_examples for r in kept)
    # grad_norm: the last step's, as transformers' Trainer logs it (a snapshot, not a window mean)
    out = {"loss": sum(r.loss * r.num_examples for r in kept) / n, "grad_norm": kept[-1].grad_norm}
    differences = {k: v for r in kept for k, v in getattr(r, "metric_differences", {}).items()}
    for key in dict.fromkeys(k for r in kept for k in r.metrics):
        if key in differences:
            continue
        having = [(r.metrics[key], getattr(r, "metric_counts", {}).get(key, r.num_examples)) for r in kept
                  if key in r.metrics]
        out[key] = sum(value * weight for value, weight in having) / sum(weight for _, weight in having)
    for key, (a, b) in differences.items():
        if a in out and b in out:
            out[key] = out[a] - out[b]
    return out


def tracker_start_error(names: list[str], err: Exception) -> str:
    """report_to's trackers did not start (wandb without a login or without network, ...): what failed and what
    to do, in one message."""
    text = " ".join(str(err).split())[:400]
    what = f"report_to: {', '.join(names) or 'the trackers'} could not start ({type(err).__name__}: {text})."
    if "wandb" in names:
        what += (" For wandb without network or login, set WANDB_MODE=offline (the run is logged under output_dir/"
                 "wandb; `wandb sync` uploads it later), or run `wandb login`.")
    return what + " Or remove it from report_to (report_to: none); metrics.jsonl holds every logged row either way."


def start_trackers(accelerator, cfg, output_dir: Path):
    """accelerate trackers (report_to: tensorboard, wandb, ...): every metrics.jsonl row also goes there (the
    callable MetricsLog's tracker takes); None without report_to."""
    if cfg.report_to in ("none", None, [], ""):
        return None
    flat = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
    names = [str(getattr(kind, "value", kind)) for kind in (accelerator.log_with or [])]
    init_kwargs = {}
    if "wandb" in names and not os.environ.get("WANDB_DIR"):  # wandb writes ./wandb in the working directory
        init_kwargs["wandb"] = {"dir": str(output_dir)}      # by default; the run's files belong under output_dir
    try:
        accelerator.init_trackers("preflab", config=flat, init_kwargs=init_kwargs)
    except Exception as err:  # noqa: BLE001 - every tracker's own error types (login, network, ...)
        raise ConfigError(tracker_start_error(names, err)) from err

    def track(row: dict) -> None:
        values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        accelerator.log(values, step=int(row.get("step", 0)))

    return track


class Progress:
    """A tqdm bar with loss, margin, accuracy (online runs: the sampled reward; the game: TV to the equilibrium),
    tokens/s (`unit`: what the counts passed to update() are, e.g. images for a diffusion run); ETA comes from tqdm.

    On a stream that is no terminal (a scheduler's log file, a pipe) the bar, redrawn with carriage returns, made one
    endless line there; it prints instead one plain line `train: step S/T (P%), R steps/s, ETA ..., loss=...` at most
    every LOG_LINE_SECONDS and at the last step (preflab.log_lines.LogLines, the rule every bar follows): a heartbeat
    a log reader can grep and tail. A notebook keeps its widget bar. stream: sys.stderr by default; clock: seconds
    (time.perf_counter)."""

    def __init__(self, total: int, initial: int, enabled: bool, unit: str = "tokens", stream=None,
                 clock=time.perf_counter):
        self.stream = sys.stderr if stream is None else stream
        self.lines = LogLines(total, initial, self.stream, clock, "train", "step ", "steps") \
            if enabled and draws_plain_lines(self.stream) else None
        self.bar = tqdm(total=total, initial=initial, disable=not enabled or self.lines is not None, desc="train",
                        dynamic_ncols=True, file=stream)
        self.clock, self.step = clock, initial
        self.start = clock()
        self.tokens = 0
        self.rate_name = {"tokens": "tok/s", "images": "img/s"}.get(unit, f"{unit}/s")

    def update(self, result, tokens: int) -> None:
        self.tokens += tokens
        elapsed = max(self.clock() - self.start, 1e-9)
        post = {"loss": f"{result.loss:.4f}"}
        if "rewards/margins" in result.metrics:
            post["margin"] = f"{result.metrics['rewards/margins']:.3f}"
        if "rewards/accuracies" in result.metrics:
            post["acc"] = f"{result.metrics['rewards/accuracies']:.2f}"
        if "reward" in result.metrics:  # online runs: the judged reward of the round's samples (a GRPO loss is ~0)
            post["reward"] = f"{result.metrics['reward']:.3f}"
        if "tv_to_equilibrium" in result.metrics:  # the preference game: distance to the equilibrium
            post["tv"] = f"{result.metrics['tv_to_equilibrium']:.3g}"
        post[self.rate_name] = f"{self.tokens / elapsed:.0f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)
        self.step += 1
        if self.lines is not None:
            self.lines.update(self.step, " ".join(f"{k}={v}" for k, v in post.items()))

    def close(self):
        self.bar.close()


def environment() -> dict:
    import torch
    import transformers

    from preflab import __version__

    return {"preflab": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.is_available(), "cpu_count": os.cpu_count()}


def distributed_environment(accelerator) -> dict:
    """How the run was spread: world_size (processes in the process group), distributed type, backend, device."""
    state = getattr(accelerator, "state", None)
    kind = accelerator.distributed_type
    return {"world_size": accelerator.num_processes, "distributed_type": getattr(kind, "value", str(kind)),
            "backend": getattr(state, "backend", None), "device": str(accelerator.device)}


def is_main_process() -> bool:
    """True in the process that prints and writes shared files: accelerate's main process once it is set up,
    else the launcher's rank 0 (RANK), so a message printed before or after training appears once."""
    try:
        from accelerate.state import PartialState

        if PartialState._shared_state:
            return PartialState().is_main_process
    except ImportError:  # pragma: no cover - accelerate is a core dependency
        pass
    return os.environ.get("RANK", "0") == "0"


def write_summary(output_dir: Path, summary: dict) -> Path:
    """OUTPUT_DIR/summary.json, whole or not at all (preflab.atomic_file.write_atomically): a write stopped part way
    (a full disk, a failed rename, an interrupt) leaves the old summary.json and no temp file; before, a fixed
    summary.json.tmp was left behind. Its mode is a plain open()'s under the umask (write_json_file), as before,
    not mkstemp's 0600: others who read the run folder still read it. Durable (fsynced before and after the rename):
    summary.json says the run finished, so after a power loss it is whole or absent, never empty."""
    from preflab.atomic_file import write_json_file

    return write_json_file(Path(output_dir) / "summary.json", summary, durable=True, indent=2, default=str)


def finished_summary(output_dir: Path, step: int, total_steps: int, timeline: list) -> dict | None:
    """OUTPUT_DIR/summary.json when a resume at `step` has nothing to train because the run had finished there: step
    is the run's last (total_steps) and summary.json says global_step `step` on the same timeline as the checkpoint
    resumed (`timeline`: its trainer_state.json's). Otherwise None, and the run trains (or, at step == total_steps,
    writes its summary). Without this a resumed finished run trained 0 steps and replaced summary.json with one of
    empty final_metrics and 0 examples seen (user trial 15). The timeline check keeps an older summary from standing
    for a newer run that rolled back, trained to the same step and was killed before writing its own."""
    if not step or step != total_steps:
        return None
    path = Path(output_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("global_step") != step or summary.get("timeline") != timeline:
        return None
    return summary


def training_data_line(data: dict) -> str:
    """The training rows a run left out, by reason (data["skipped"], the run's own total; a data report without
    one: summed over its train_* parts), and its truncations: `20 (prompt_fills_max_length: 20); truncated:
    response 4`, or `none`. The total comes first because an SFT run reads and tokenizes a row in one stage that
    counts a bad row in both train_rows and train_tokenize (summing them said 2 skipped for 1)."""
    skipped, truncated = {}, {}
    for key, part in data.items():
        if not key.startswith("train_") or not isinstance(part, dict):
            continue
        for reason, count in (part.get("skipped") or {}).items():
            skipped[reason] = skipped.get(reason, 0) + int(count)
        for side in ("prompt", "response"):
            if part.get(f"{side}_truncated"):
                truncated[side] = truncated.get(side, 0) + int(part[f"{side}_truncated"])
    if isinstance(data.get("skipped"), dict):
        skipped = {str(reason): int(count) for reason, count in data["skipped"].items() if int(count)}
    line = (f"{sum(skipped.values())} ({', '.join(f'{k}: {v}' for k, v in sorted(skipped.items()))})"
            if skipped else "none")
    if truncated:
        line += "; truncated: " + ", ".join(f"{side} {count}" for side, count in truncated.items())
    return line


def write_model_card(output_dir: Path, cfg, summary: dict) -> None:
    """README.md beside the weights: base model, data, objective, final metrics, how to load."""
    final = summary.get("final_metrics", {})
    lines = [
        "---", "library_name: transformers", "tags: [preflab, preference-optimization, "
        f"{cfg.loss_type if isinstance(cfg.loss_type, str) else ', '.join(cfg.loss_type)}]",
        f"base_model: {cfg.model_name_or_path}", "---", "",
        f"# {Path(cfg.output_dir).name}", "",
        f"Trained with preflab from `{cfg.model_name_or_path}` on `{cfg.dataset_name}` " +
        (f"(dataset_config `{cfg.dataset_config}`) " if getattr(cfg, "dataset_config", None) is not None else "") +
        f"with objective `{cfg.loss_type}` (beta={cfg.beta}).", "",
        f"- steps: {summary.get('global_step')}, " + (
            f"resumed from step {summary['resumed_from_step']} ({summary.get('train_examples_seen')} examples "
            "trained after the resume)" if summary.get("resumed_from_step") else
            f"examples seen: {summary.get('train_examples_seen')}"),
        f"- training rows skipped: {training_data_line(summary.get('data') or {})}",
    ]
    lines += [f"- {k}: {v:.4g}" for k, v in final.items() if isinstance(v, (int, float))]
    lines += loading_snippet(Path(output_dir), cfg.model_name_or_path)
    (Path(output_dir) / "README.md").write_text("\n".join(lines))


def loading_snippet(output_dir: Path, base: str) -> list[str]:
    """The card's "how to load" lines: transformers for a full model; for LoRA adapters (adapter_config.json), peft's
    AutoPeftModelForCausalLM and merge_and_unload, which gives the plain merged model to save; a built-in base has no
    folder to load, so `preflab eval` (which rebuilds and merges it) is named instead."""
    out = str(output_dir)
    if not (output_dir / "adapter_config.json").is_file():
        return ["", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                f"model = AutoModelForCausalLM.from_pretrained({out!r})",
                f"tokenizer = AutoTokenizer.from_pretrained({out!r})", "```", ""]
    if str(base).startswith("builtin:"):
        return ["", f"LoRA adapters on preflab's built-in `{base}` (no model folder to load them on): "
                f"`preflab eval {out} --data ...` rebuilds the base and merges them.", ""]
    return ["", f"LoRA adapters on `{base}`; merge them into a plain transformers model:", "", "```python",
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            f"model = AutoPeftModelForCausalLM.from_pretrained({out!r})  # the base with these adapters",
            "merged = model.merge_and_unload()  # merged.save_pretrained(folder) saves the merged model",
            f"tokenizer = AutoTokenizer.from_pretrained({out!r})", "```", ""]


def ensure_output_dir(path: Path) -> Path:
    """Create output_dir and prove it is writable, before any model is loaded."""
    from preflab.errors import PreflabError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".preflab-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PreflabError(f"output_dir {path} is not writable ({err.strerror or err}); choose another "
                           "output_dir or fix its permissions.") from err
    return path
