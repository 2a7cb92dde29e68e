"""Read what a run directory holds for the report, and say what is missing and how to get it.

    RUN_DIR/metrics.jsonl      one row per logged step ("step" + TRL metric names; eval rows use "eval_" keys; a
                               metric an earlier preflab logged under another name is read under today's:
                               preflab.eval.names.RENAMED_METRICS, here and in summary.json and eval.json)
    RUN_DIR/summary.json       final metrics, data report, "environment"
    RUN_DIR/config.yaml        the resolved training config
    RUN_DIR/eval.json          written by `preflab eval` (metrics, win rate, per-pair log-probs)
    RUN_DIR/pair_margins.jsonl per-pair margins at eval steps (preflab.report.margins)
A folder holding runs (`preflab demo`'s output: sft/ and dpo/ plus the demo's own summary.json) is a report of
those runs, with the folder's summary.json as the result section (`collect_runs`).
Nothing here trusts the files: YAML is read with safe_load, bad JSON lines are skipped and counted.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from preflab.checkpoint import numbered_checkpoints
from preflab.errors import PreflabError
from preflab.eval.names import DIFFUSION_NOT_EVALUATED, current_metric_names
from preflab.models.run_config import is_checkpoint_folder
from preflab.option_types import is_number
from preflab.recipe_names import RECIPE_TASKS
from preflab.report.data_notes import data_notes, held_out_generation_notes
from preflab.report.margins import read_pair_margins_counted


# what a task's eval rows hold, for the note on a run without them (default: a preference run's)
EVAL_ROWS_LOG = {
    "reward": "the reward model's held-out accuracy, margin and loss (eval_accuracy, eval_margin, eval_loss)",
    "sft": "the held-out loss and next-token accuracy (eval_loss, eval_mean_token_accuracy)",
    "diffusion": "the held-out loss and implicit reward accuracy (eval_loss, eval_rewards/accuracies)",
}




def eval_rows_log(config: dict) -> str:
    """What a run of `config` logs at an evaluation (for the "no eval rows" note): EVAL_ROWS_LOG by task; an online
    run judges its greedy answers to held-out prompts (online/run.py evaluate: eval_reward or, on the demo task,
    eval_true_reward, and eval_win_rate_vs_reference; with tools the loop's eval_tools/*), the preference game its
    distance to the equilibrium; a preference run its ranking accuracy and log-prob drift."""
    task = str(config.get("task"))
    if task != "online":
        return EVAL_ROWS_LOG.get(task, "held-out ranking accuracy and log-prob drift")
    online_task = config.get("online_task", "dataset")
    if online_task == "game":
        return "the policy's distance to the equilibrium (eval_tv_to_equilibrium, eval_duality_gap)"
    reward = "eval_true_reward" if online_task == "demo" else "eval_reward"
    tools = ", and the tool loop's eval_tools/*" if config.get("tools") else ""
    answers = "sampled answers (num_generations_eval)" if config.get("num_generations_eval") else "greedy answers"
    return (f"the reward of the policy's {answers} to held-out prompts and their win rate against the starting "
            f"policy's ({reward}, eval_win_rate_vs_reference{tools})")


@dataclass
class RunData:
    name: str
    path: Path
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    config_text: str = ""
    eval: dict = field(default_factory=dict)
    margins: dict[int, list[float]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    bad_lines: int = 0
    skipped_steps: list[float] = field(default_factory=list)   # steps skipped as non-finite ("nonfinite" rows)

    def null_steps(self, key: str) -> list[float]:
        """Steps at which `key` was logged as null or NaN (runlog writes a non-finite value as null): the curve
        breaks there instead of joining its neighbours."""
        return sorted({float(row["step"]) for row in self.rows
                       if key in row and isinstance(row.get("step"), (int, float))
                       and (row[key] is None or (isinstance(row[key], float) and not math.isfinite(row[key])))})

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of `key` over the run, sorted by step; the last value logged at a step wins."""
        by_step: dict[float, float] = {}
        for row in self.rows:
            value, step = row.get(key), row.get("step")
            if is_number(value) and math.isfinite(value) \
                    and isinstance(step, (int, float)):
                by_step[float(step)] = float(value)
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]

    @property
    def pairwise(self) -> bool:
        """An offline preference run on pairs (task: dpo, the default), the kind that writes pair_margins.jsonl; not
        SFT, reward-model, online, VLM or diffusion runs, not a run whose summary.json says its rows were unpaired
        (KTO and the other unpaired objectives: no pairs, so never a pair margin), and not a folder without
        config.yaml."""
        rows = self.summary.get("data", {}).get("train_rows") if isinstance(self.summary.get("data"), dict) else None
        kind = rows.get("kind") if isinstance(rows, dict) else None
        return bool(self.config) and self.config.get("task", "dpo") == "dpo" and kind in (None, "pairwise")

    @property
    def reward_model(self) -> bool:
        """A reward-model run (task: reward): its rewards/chosen and rewards/rejected are raw scores r(x, y)."""
        return bool(self.config) and self.config.get("task") == "reward"

    @property
    def environment(self) -> dict:
        env = self.summary.get("environment")
        return env if isinstance(env, dict) else {}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _recipe_result_place(summary: dict) -> str:
    """Where a recipe's metric_before / metric_after are shown: the headline when both are numbers; else what they
    are (OTC's tool productivity is None when no held-out answer called a tool: the headline had no row, and the
    note still pointed at it)."""
    values = [summary.get(k) for k in ("metric_before", "metric_after")]
    if not summary or all(is_number(v) for v in values):
        return "in the headline above"
    return (f"here {values[0]!r} / {values[1]!r} ({summary.get('metric_name', 'metric')}), not numbers, so the "
            "headline has no row for them (summary.json says why)")


def load_run(path: str | Path, name: str | None = None) -> RunData:
    """Everything the report shows for one run directory; `missing` explains each absent part."""
    path = Path(path)
    if not path.is_dir():
        raise PreflabError(f"{path} is not a directory; give the output_dir of a `preflab train` run.")
    run = RunData(name or path.name, path)
    if (path / "config.yaml").is_file():
        run.config_text = (path / "config.yaml").read_text()
        try:
            loaded = yaml.safe_load(run.config_text)
            run.config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            run.missing.append("config.yaml could not be parsed; shown as text")
    else:
        run.missing.append("no config.yaml")
    recipe = run.config.get("task") in RECIPE_TASKS  # a whole program: its stages are runs in subfolders
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                run.bad_lines += 1
                continue
            if isinstance(row, dict):
                run.rows.append(current_metric_names(row))  # a run logged before a rename: today's names
        if run.bad_lines:
            run.missing.append(f"{run.bad_lines} unreadable line(s) in metrics.jsonl were skipped")
        elif not run.rows:
            run.missing.append("metrics.jsonl holds no rows: the run has logged nothing (it stopped, or is still "
                               "running, before its first logged step)")
    elif not recipe:
        run.missing.append("no metrics.jsonl: this is not a finished or running `preflab train` output_dir")
    _note_nonfinite(run)
    run.summary = _read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    if isinstance(run.summary.get("final_metrics"), dict):
        run.summary["final_metrics"] = current_metric_names(run.summary["final_metrics"])
    if recipe and not metrics.is_file():
        stages = " ".join(str(path / p.parent.name) for p in sorted(path.glob("*/metrics.jsonl")))
        run.missing.append(f"a recipe run (task: {run.config['task']}): its result is summary.json's "
                           f"metric_before / metric_after, {_recipe_result_place(run.summary)}; "
                           + (f"its stages' training logs: `preflab report {stages}`" if stages
                              else "it has no training stage"))
    if not run.summary:
        run.missing.append("no summary.json: the run has not finished (final metrics and environment unknown)")
    run.missing += data_notes(run.summary) + held_out_generation_notes(run.rows)
    if run.summary.get("resumed_from_step"):
        run.missing.append(resumed_note(run.summary))
    vision_grpo = run.config.get("task") == "online" and run.config.get("online_task") == "vision_dataset"
    if vision_grpo:  # neither the run nor preflab eval evaluates it: say so once, and where its measure is
        run.missing.append(vision_grpo_note(run.config))
    elif metrics.is_file() and not any(k.startswith("eval_") for row in run.rows for k in row):
        what = eval_rows_log(run.config)
        run.missing.append(f"no eval rows in metrics.jsonl yet: {awaited_eval(run)}" if configured_eval_set(run.config)
                           else "no eval rows in metrics.jsonl: set eval_steps and an eval set (eval_fraction or "
                           f"eval_dataset_name) to log {what}")
    run.eval = _read_json(path / "eval.json") if (path / "eval.json").is_file() else {}
    if isinstance(run.eval.get("metrics"), dict):  # an older diffusion eval.json: implicit_acc beside implicit_accuracy
        run.eval["metrics"] = current_metric_names(run.eval["metrics"])
    if not run.eval and run.config.get("task") == "reward":
        run.missing.append(f"no eval.json: run `preflab eval {path} --task reward --data HELDOUT` for the reward "
                           "model's pairwise accuracy (overall, per subset and context, reversal accuracy)")
    elif not run.eval and run.config.get("task") == "diffusion" and \
            run.config.get("loss_type") in DIFFUSION_NOT_EVALUATED:  # `preflab eval` refuses these runs
        run.missing.append(f"no eval.json: `preflab eval --task diffusion` does not score {run.config['loss_type']} "
                           f"runs ({DIFFUSION_NOT_EVALUATED[run.config['loss_type']]}); the eval_* rows of "
                           "metrics.jsonl (an eval_dataset_name) are its held-out numbers")
    elif not run.eval and run.config.get("task") == "diffusion":
        target, out = path, ""
        if not (path / "model_index.json").is_file():  # no final pipeline yet: its newest checkpoint
            done = numbered_checkpoints(path)
            target, out = (done[-1], f" --out {path / 'eval.json'}") if done else (path, "")
        run.missing.append(f"no eval.json: run `preflab eval {target} --task diffusion --data HELDOUT "
                           f"[--reward-fn MODULE:FUNCTION]{out}` for the implicit-reward accuracy on held-out pairs "
                           "and the win rate of the trained pipeline's samples against the base model's"
                           + (" (the run has no final pipeline yet: its newest checkpoint)" if out else ""))
    elif not run.eval and run.config.get("task") == "vlm" and eval_command(run.config):  # not an SFT stage
        run.missing.append(f"no eval.json: run `preflab eval {path} --task vlm --data HELDOUT` (or a checkpoint-N "
                           "of it) for the held-out preference metrics of the image-text model")
    elif not run.eval and not recipe and policy_eval_hint(path, run.config):
        run.missing.append(policy_eval_hint(path, run.config))
    run.margins, dropped = read_pair_margins_counted(path)
    if dropped:
        run.missing.append("pair_margins.jsonl: non-finite per-pair margins left out of the margin histograms ("
                           + ", ".join(f"{n} at step {s}" for s, n in sorted(dropped.items())) + ")")
    bad_pairs = nonfinite_eval_pairs(run.eval)
    if bad_pairs:
        run.missing.append(f"eval.json: {bad_pairs} pair(s) with non-finite per-pair log-probs (per_pair) left out "
                           "of the final-margin histogram and the difficulty plot")
    if not run.margins and run.pairwise:
        run.missing.append("no per-pair margins (pair_margins.jsonl) yet: a preference run writes them at each eval "
                           "step, and this run has not logged one" if configured_eval_set(run.config) else
                           "no per-pair margins (pair_margins.jsonl): a preference run writes them at each eval "
                           "step; set eval_steps and an eval set (eval_fraction or eval_dataset_name) for the "
                           "margin histograms")
    return run


def configured_eval_set(config: dict) -> str | None:
    """The eval set a run's config.yaml sets ("eval_fraction 0.1", "eval_dataset_name X"), or None. A run with one
    evaluates every eval_steps steps and at its end (TrainConfig: eval_steps 0 evaluates only at the end)."""
    if config.get("eval_dataset_name"):
        return f"eval_dataset_name {config['eval_dataset_name']}"
    fraction = config.get("eval_fraction")
    return f"eval_fraction {fraction:g}" if isinstance(fraction, (int, float)) and fraction > 0 else None


def awaited_eval(run: RunData) -> str:
    """Why a run whose config sets an eval set has no eval row: it has not reached its first evaluation."""
    every = run.config.get("eval_steps")
    when = (f"every {every} steps and at the end of training" if isinstance(every, int) and every > 0
            else "at the end of training")
    steps = [float(r["step"]) for r in run.rows if isinstance(r.get("step"), (int, float))]
    reached = f"its last logged step is {max(steps):g}" if steps else "it has logged no step"
    return (f"config.yaml sets an eval set ({configured_eval_set(run.config)}), evaluated {when}; the run has not "
            f"reached an evaluation ({reached})")


def resumed_note(summary: dict) -> str:
    """The note on a resumed run: summary.json's runtime_s and train_examples_seen count from the resume (the
    driver's clock and count start at the checkpoint's step), while metrics.jsonl keeps the rows logged before it."""
    runtime, seen = summary.get("runtime_s"), summary.get("train_examples_seen")
    counts = " and ".join(part for part in (
        f"runtime_s ({runtime:.3g} s)" if isinstance(runtime, (int, float)) else "",
        f"train_examples_seen ({seen})" if isinstance(seen, int) else "") if part)
    return (f"resumed from step {summary['resumed_from_step']} (summary.json resumed_from_step)"
            + (f": its {counts} count the steps after the resume only" if counts else "")
            + "; the curves and the headline read metrics.jsonl, which holds the steps before the resume too")


def vision_grpo_note(config: dict) -> str:
    """The report's note on an image-text GRPO run (online_task: vision_dataset): it has no held-out evaluation, in the
    run (eval_steps and an eval set are refused there) or from `preflab eval` (refused), so its measure is the judges'
    reward on the training prompts. Before, the report asked for eval_steps with an eval set (eval_fraction was
    refused, eval_steps evaluated nothing) and for `preflab eval RUN --task vlm` (refused)."""
    judges = config.get("reward_funcs")
    names = ", ".join(str(j) for j in judges) if isinstance(judges, list) and judges else "its reward_funcs"
    return ("an image-text GRPO run (online_task: vision_dataset) has no held-out evaluation: the run evaluates "
            "nothing (eval_steps and an eval set are refused) and `preflab eval` refuses it; its measure is the "
            f"judges' ({names}) reward on the training prompts, `reward` and `rewards/<judge>/mean` in the curves")


def eval_command(config: dict) -> str | None:
    """The `preflab eval` command (RUN_DIR for the run) that fits a run of `config`, or None where none fits.
    A preference run (dpo and the losses under it): the pair diagnostics against the reference the run trained
    against, `preflab eval`'s default (no --reference placeholder to fill), and the win rate with a judge. A text
    online run:
    the same command with a judge (--reward-fn / --reward-model) for the greedy win rate against its starting
    policy, which is already the default reference (the run's model_name_or_path), so no --reference; a run trained
    with tools (config `tools:`) without a judge (eval_cli refuses a win rate that samples without the tools). An image-text
    run (task: vlm): `--task vlm`; reward and diffusion runs: their `--task`. None for an image-text GRPO run
    (online_task: vision_dataset: every `preflab eval` refuses it, preflab.eval.run_files; it pointed to `--task vlm`,
    which refused it), None for
    an SFT run (its held-out measure is the eval_loss / eval_mean_token_accuracy of its eval rows, said by the "no
    eval rows" note; the pair diagnostics judge a preference run started from it), for the preference game (no text
    or data: its result is the distance to the equilibrium in summary.json and the game panels) and for a recipe
    (it measures its own held-out metric); None for an image-text run trained with loss_type sft alone (the SFT
    stage of `preflab demo vlm`, an SFT run on the vlm trainer: as a task: sft run, its pairs' rejected side is a
    placeholder and the pair diagnostics judge the preference run started from it); None for a self_npo diffusion run (the eval refuses it); a ppd run's
    --reward-fn is the personalized model's win rate against its base model (each pair's user)."""
    task, online_task = str(config.get("task", "dpo")), config.get("online_task", "dataset")
    if task == "sft" or task in RECIPE_TASKS or (task == "online" and online_task == "game"):
        return None
    if task == "vlm" and sft_only(config):  # an image-text SFT stage (preflab demo vlm's sft/): as task: sft
        return None
    if task == "diffusion" and config.get("loss_type") in DIFFUSION_NOT_EVALUATED:  # refused by that eval
        return None
    if task == "online" and online_task == "vision_dataset":  # refused by every --task (run_files)
        return None
    if task in ("reward", "vlm", "diffusion"):
        judge = " [--reward-fn MODULE:FUNCTION]" if task == "diffusion" else ""
        return f"preflab eval RUN_DIR --task {task} --data HELDOUT{judge}"
    if task == "online" and config.get("tools"):  # the win rate samples without the tools: refused for such a run
        return "preflab eval RUN_DIR --data HELDOUT_PAIRS"
    if task == "online":
        return f"preflab eval RUN_DIR --data HELDOUT_PAIRS {run_judge_option(config)}"
    return "preflab eval RUN_DIR --data HELDOUT [--reward-fn MODULE:FUNCTION]"   # the reference: the run's own


def sft_only(config: dict) -> bool:
    """A run whose loss_type is sft alone (a name or a list of only sft): TRL's loss_type="sft", the chosen side's NLL,
    no preference term."""
    loss = config.get("loss_type")
    names = loss if isinstance(loss, list) else [loss]
    return bool(names) and all(name == "sft" for name in names)


def run_judge_option(config: dict) -> str:
    """The `preflab eval` judge option of a text online run's own judge: its one reward_funcs entry (the demo task's
    default demo_true_reward) as --reward-fn (a built-in name, module:function or file.py:function) or, a directory,
    --reward-model; several judges or none: the placeholder --reward-fn MODULE:FUNCTION."""
    judges = config.get("reward_funcs")
    if judges is None and config.get("online_task", "dataset") == "demo":
        judges = "demo_true_reward"
    if isinstance(judges, list) and len(judges) == 1:
        judges = judges[0]
    if not isinstance(judges, str) or not judges or judges.startswith("maxmin"):
        return "--reward-fn MODULE:FUNCTION"
    if ":" in judges or judges in ("demo_true_reward", "demo_echo_reward"):
        return f"--reward-fn {judges}"
    return f"--reward-model {judges}"


def policy_eval_hint(path: Path, config: dict) -> str | None:
    """The note of a text policy run (a preference or text online run) without eval.json: the
    eval_command that fits it, on its final model or, before there is one, its newest checkpoint; None where no
    `preflab eval` fits (eval_command)."""
    command = eval_command(config)
    if command is None:
        return None
    target, out = path, ""
    if not any((path / n).is_file() for n in ("config.json", "adapter_config.json")):  # no final model yet
        done = numbered_checkpoints(path)
        target, out = (done[-1], f" --out {path / 'eval.json'}") if done else (path, "")
    late = " (the run has no final model yet: its newest checkpoint)" if out else ""
    command = f"`{command.replace('RUN_DIR', str(target))}{out}`"
    if config.get("task") == "online" and config.get("tools"):  # eval_cli refuses a win rate of a tool run
        return (f"no eval.json: run {command} for ranking accuracy on held-out pairs against the starting policy "
                f"(the default reference, the run's model_name_or_path){late}; the run's answers call its tools, "
                "which `preflab eval`'s win rate does not run (--reward-fn is refused for it): its win rate is the "
                "run's own held-out evaluation with the tools (" + ("its eval rows in metrics.jsonl" if
                                                                   configured_eval_set(config) else
                                                                   "set eval_dataset_name or eval_fraction")
                + ": eval_reward, eval_win_rate_vs_reference, eval_tools/*)")
    if config.get("task") == "online":
        judge = ("(or --reward-model DIR, e.g. the run's judge)" if "MODULE:FUNCTION" in command else
                 "(the judge the run trained against)")
        return (f"no eval.json: run {command} {judge} for the greedy win rate "
                "against the starting policy (the default reference, the run's model_name_or_path) and ranking "
                f"accuracy on held-out pairs{late}")
    return (f"no eval.json: run {command} for ranking accuracy, idealized ranking accuracy and 3D metrics against "
            "the reference the run trained against (the default; --reference DIR for another), and with a judge "
            f"(--reward-fn, --reward-model or --judge) the win rate{late}")


PER_PAIR_KEYS = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")


def finite_eval_pairs(eval_json: dict) -> tuple[list[list[float]], int] | None:
    """(the columns PER_PAIR_KEYS of eval.json's per_pair, restricted to pairs whose four values are finite; the
    number of pairs left out) or None when per_pair lacks a column, holds a non-number or has uneven columns."""
    pp = eval_json.get("per_pair") if isinstance(eval_json, dict) else None
    if not isinstance(pp, dict) or not all(isinstance(pp.get(k), list) and pp.get(k) for k in PER_PAIR_KEYS):
        return None
    try:
        cols = [[math.nan if v is None else float(v) for v in pp[k]] for k in PER_PAIR_KEYS]
    except (TypeError, ValueError):
        return None
    if len({len(c) for c in cols}) != 1:
        return None
    keep = [i for i in range(len(cols[0])) if all(math.isfinite(c[i]) for c in cols)]
    return [[c[i] for i in keep] for c in cols], len(cols[0]) - len(keep)


def nonfinite_eval_pairs(eval_json: dict) -> int:
    """How many eval.json per_pair pairs the report's plots leave out as non-finite (0 without per_pair)."""
    found = finite_eval_pairs(eval_json)
    return found[1] if found else 0


def _steps_text(steps: list[float]) -> str:
    shown = ", ".join(f"{s:g}" for s in steps[:8])
    return shown + (f" and {len(steps) - 8} more" if len(steps) > 8 else "")


def _note_nonfinite(run: RunData) -> None:
    """Say (in run.missing, shown at the top of the report) which steps were skipped as non-finite and which
    metrics were logged non-finite: the curves only show finite values, so a diverging run would look clean."""
    run.skipped_steps = sorted({float(r["step"]) for r in run.rows if r.get("nonfinite") is True
                                and isinstance(r.get("step"), (int, float))})
    if run.skipped_steps:
        run.missing.append(f"{len(run.skipped_steps)} training step(s) skipped as non-finite (loss, gradient or "
                           f"weights) at step {_steps_text(run.skipped_steps)}; their batches' row ids are in "
                           "metrics.jsonl (and summary.json nonfinite_steps); red lines mark them on the curves")
    keys = sorted({k for r in run.rows for k, v in r.items() if v is None or (isinstance(v, float)
                                                                             and not math.isfinite(v))})
    for key in keys:
        run.missing.append(f"{key} was logged non-finite (null/NaN) at step {_steps_text(run.null_steps(key))}: "
                           "the curve breaks there")


def unique_names(paths: list[Path]) -> list[str]:
    """Directory names, lengthened with parents until every run has a distinct name."""
    paths = [Path(p).resolve() for p in paths]
    depth = 1
    while True:
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth > max(len(p.parts) for p in paths):
            return names
        depth += 1


RUN_MARKERS = ("metrics.jsonl", "config.yaml")


def is_run_dir(path: Path) -> bool:
    """A `preflab train` output_dir (finished or running): it has metrics.jsonl or config.yaml."""
    return any((Path(path) / name).is_file() for name in RUN_MARKERS)


def collect_runs(paths) -> tuple[list[Path], dict]:
    """(run directories, overview) for the report of `paths`.

    A run directory stands for itself. A folder that is not a run but holds runs one level down (`preflab demo`'s
    sft/ and dpo/) stands for those runs, oldest first; its own summary.json (the demo's true reward and example
    generations) becomes the overview, with the folder's path under "_folder". Anything else is a PreflabError, so
    a report is never written with nothing in it.
    """
    runs, overview = [], {}
    for path in (Path(p) for p in paths):
        if not path.is_dir():
            raise PreflabError(f"{path} is not a directory; give the output_dir of a `preflab train` run (or a "
                               "folder holding runs, like `preflab demo`'s output).")
        if is_run_dir(path):
            runs.append(path)
            continue
        inner = sorted((p for p in path.iterdir() if p.is_dir() and is_run_dir(p)),
                       key=lambda p: (min((p / n).stat().st_mtime for n in RUN_MARKERS if (p / n).is_file()),
                                      p.name))
        if not inner and is_checkpoint_folder(path) and is_run_dir(path.parent):
            raise PreflabError(f"{path} is a checkpoint of the run {path.parent}; the report reads the run "
                               f"directory: `preflab report {path.parent}` (its curves cover every logged step).")
        if not inner:
            raise PreflabError(f"{path} holds no preflab run: no metrics.jsonl or config.yaml in it or in a "
                               "subfolder. Give the output_dir of a `preflab train` run.")
        runs += inner
        if not overview and (path / "summary.json").is_file():
            overview = {**_read_json(path / "summary.json"), "_folder": str(path)}
    seen: dict[Path, Path] = {}
    for run in runs:  # one run twice would be one column twice, under a name made of its whole path
        if run.resolve() in seen:
            raise PreflabError(f"{run} is given twice (also as {seen[run.resolve()]}); give each run once.")
        seen[run.resolve()] = run
    return runs, overview
