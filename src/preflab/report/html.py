"""A self-contained HTML report of one or several runs: curves, margin histograms, eval table, config, environment.

    from preflab.report.html import write_report
    write_report(["outputs/dpo", "outputs/ipo"], "report.html", title="DPO vs IPO")      # -> Path

The file has no external resources: figures are embedded PNG data URIs and the style sheet is inline, so it can
be mailed or archived as one file. Every string read from a run directory is HTML-escaped. Several runs are
overlaid (one colour per run) and their configs are compared key by key.
"""
from __future__ import annotations

import datetime as _dt
import html
import math
import re
from pathlib import Path

from preflab.atomic_file import write_text_file
from preflab.errors import PreflabError, WriteFailed
from preflab.option_types import is_number
from preflab.peak_memory import peak_memory_text
from preflab.recipe_names import RECIPE_TASKS
from preflab.eval.names import DIFFUSION_METRIC_DOCS, METRIC_DOCS, metric_doc
from preflab.report import plots
from preflab.report.metric_meanings import meaning_note
from preflab.report.headline import headline_notes, headline_rows, late_before_note, summary_rows, trained_on_clause
from preflab.report.runs import RunData, collect_runs, eval_command, load_run, unique_names

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#222;padding:0 16px}
h1{font-size:26px;margin-bottom:4px} h2{font-size:20px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#666;font-size:13px} .grid{display:flex;flex-wrap:wrap;gap:10px}
.grid img{width:540px;max-width:100%;border:1px solid #eee} img.wide{max-width:100%;border:1px solid #eee}
table{border-collapse:collapse;font-size:13px;margin:8px 0} th,td{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top} th{background:#f5f5f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.doc{color:#555;font-size:12px} .note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;margin:6px 0;
font-size:13px} pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto;max-height:420px}
details{margin:6px 0} .diff{background:#fdecea}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return _e(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """rows hold already-built <td> cells; header cells are escaped here."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _num_cell(value) -> str:
    return f'<td class="num">{_fmt(value)}</td>'


def _notes(items: list[str]) -> str:
    return "".join(f'<div class="note">{_e(item)}</div>' for item in items)


def _img(uri: str | None, alt: str, cls: str = "") -> str:
    if uri is None:
        return ""
    return f'<img src="{uri}" alt="{_e(alt)}"{f" class={cls!r}" if cls else ""}>'


def _curves(runs: list[RunData]) -> str:
    own, notes = plots.objective_panels(runs)   # the objectives' own metrics (Objective.metric_panels)
    images = [_img(plots.curve_panel(runs, title, ylabel, series), title)
              for title, ylabel, series in plots.PANELS + plots.TOKEN_PANELS + plots.REWARD_PANELS
              + plots.ONLINE_PANELS + tuple(own)]
    images = [i for i in images if i]
    notes += [n for n in (plots.beta_note(runs), plots.score_kind_note(runs)) if n]
    notes += [n for n in [meaning_note(runs)] if n]   # objectives logging other quantities under rewards/*, logps/*
    if not images:
        return "<h2>Training curves</h2>" + _notes(["no metrics.jsonl rows to plot"] + notes)
    return "<h2>Training curves</h2>" + _notes(notes) + "<div class=\"grid\">" + "".join(images) + "</div>"


def _curve_reading(runs: list[RunData]) -> str:
    """How to read the curves: what a train point and an eval point are. A train point is the mean over a logging
    window (preflab.runlog.average_results), so a run logged every 10 steps looks smoother than one logged every
    step; nothing else smooths the curves."""
    windows = {r.name: r.config.get("logging_steps") for r in runs if r.rows}
    if not windows:
        return ""
    sizes = set(windows.values())
    said = (f"logging_steps={next(iter(sizes))} optimizer steps" if len(sizes) == 1 else
            ", ".join(f"{name}: logging_steps={n}" for name, n in windows.items()))
    return ('<p class="meta">Curves: x is the optimizer step. A train point is the mean over its logging window '
            f"({_e(said)}), not smoothed further; an eval point (dashed or marked) is the whole eval set at that "
            "step.</p>")


def _margins(runs: list[RunData]) -> str:
    out = "<h2>Reward margins per pair</h2>"
    uri = plots.margin_histograms(runs)
    if uri:
        out += _img(uri, "margin histograms", "wide")
    lacking = [r.name for r in runs if not r.margins and r.pairwise]
    if lacking:
        out += _notes([f"{', '.join(lacking)}: no per-pair margins were saved (pair_margins.jsonl is written at "
                       "each eval step of a preference run with an eval set). The histogram of final margins "
                       "below comes from eval.json when `preflab eval` was run."])
    return out if uri or lacking else ""


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


# eval.json per_user columns of a ppd eval (preflab.loops.ppd_eval.per_user_breakdown), as the report shows them
PER_USER_COLUMNS = (("pairs", "pairs"), ("loss", "loss"), ("implicit_accuracy", "implicit accuracy"),
                    ("preference_accuracy/personalized", "preference accuracy, personalized"),
                    ("preference_accuracy/base", "preference accuracy, base"),
                    ("preference_accuracy/gain", "gain"), ("win_rate", "win rate vs base"),
                    ("win_rate/n", "prompts"), ("seen_in_training", "seen in training"))


def _per_user(run: RunData) -> str:
    """A ppd eval's per-user table (eval.json per_user: one row per user, the pooled metrics' per-pair values
    averaged over the user's pairs); "" when the eval has none."""
    per_user = _dict(run.eval.get("per_user"))
    rows = [[f"<td>{_e(user)}</td>", *[_num_cell(_dict(values).get(key)) for key, _ in PER_USER_COLUMNS]]
            for user, values in sorted(per_user.items(), key=lambda kv: str(kv[0]))]
    if not rows:
        return ""
    return (f"<p><b>{_e(run.name)}</b>: per user (personalized: the user branch on the pair's user; base: off; "
            "gain: personalized - base)</p>" + _table(["user", *[name for _, name in PER_USER_COLUMNS]], rows))


# a signed decimal number inside a metric name: a DPA direction's angle ("-30deg") or weights ("[0.5,0.25]")
_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")


def metric_sort_key(key: str) -> tuple:
    """The order of the eval table's metric rows: by name, the numbers in it compared as numbers, so a DPA model's
    reward_model/direction/<label>/accuracy rows go -30deg, 2deg, 10deg, 150deg (as strings: -30deg, 10deg, 150deg,
    2deg) and [0.25,0.75] before [0.5,0.5]. re.split alternates text and number (text at even places, maybe
    empty), so two keys' parts at one place are both texts or both numbers; a key that has no number more is shorter
    and sorts first, as a string would."""
    return tuple(float(part) if i % 2 else part for i, part in enumerate(_NUMBER.split(key)))


def _eval_section(runs: list[RunData]) -> str:
    have = [r for r in runs if r.eval]
    seen = [r.name for r in have if trained_on_clause(r.eval)]  # eval.json counts rows the run trained on
    out = ("<h2>Held-out evaluation (eval.json)</h2>" if not seen else
           f"<h2>Evaluation (eval.json; {', '.join(seen)}: partly on rows the run trained on)</h2>")
    if not have:   # the eval that fits each run's task (an SFT run, the game, a recipe: none)
        commands: dict[str, list[str]] = {}
        for run in runs:
            command = eval_command(run.config)
            if command:
                commands.setdefault(command, []).append(run.name)
        if not commands:
            return ""
        fitted = sum(len(names) for names in commands.values())
        if len(commands) == 1 and fitted == len(runs):
            how = f"`{next(iter(commands))}`"
        else:
            how = "; ".join(f"`{command}` for {', '.join(names)}" for command, names in commands.items())
        return out + _notes([f"no eval.json in any run: run {how} and re-run `preflab report`."])
    metrics = {r.name: _dict(r.eval.get("metrics")) for r in have}
    docs = METRIC_DOCS
    if all(r.eval.get("task") == "diffusion" for r in have):  # the same keys, scored on images
        docs = {**METRIC_DOCS, **DIFFUSION_METRIC_DOCS}
    keys = [k for k in docs if any(k in m for m in metrics.values())]
    keys += sorted({str(k) for m in metrics.values() for k in m} - set(keys), key=metric_sort_key)
    rows = [[f"<td>{_e(k)}</td>", *[_num_cell(metrics[r.name].get(k)) for r in have],
             f'<td class="doc">{_e(metric_doc(k, docs))}</td>'] for k in keys]
    rows.insert(0, ["<td>pairs</td>", *[_num_cell(r.eval.get("num_pairs")) for r in have], "<td></td>"])
    if any("num_completions" in r.eval for r in have):  # unpaired data (KTO's form): its count is of completions
        rows.insert(1, ["<td>completions</td>", *[_num_cell(r.eval.get("num_completions")) for r in have],
                        '<td class="doc">unpaired completions scored (prompt, completion, label)</td>'])
    beta_doc = eval_beta_doc(have, metrics)
    if any(r.eval.get("beta") is not None for r in have):  # a reward model's eval.json has none: no empty row
        rows.insert(1, ["<td>beta</td>", *[_num_cell(r.eval.get("beta")) for r in have],
                        f'<td class="doc">{beta_doc}</td>'])
    out += _table(["metric", *[r.name for r in have], "meaning"], rows)
    for run in have:
        win = _dict(run.eval.get("win_rate"))
        if win.get("n"):
            out += (f"<p><b>{_e(run.name)}</b>: win rate vs reference {_fmt(win.get('win_rate'))} "
                    f"[{_fmt(win.get('ci_low'))}, {_fmt(win.get('ci_high'))}] ({_fmt(win.get('confidence'))} "
                    f"Wilson interval; {_fmt(win.get('wins'))} wins, {_fmt(win.get('ties'))} ties (each counted "
                    f"1/2), {_fmt(win.get('losses'))} losses"
                    + (f", {_fmt(win.get('fractional'))} fractional verdicts (a judge's probabilities)"
                       if win.get("fractional") else "")
                    + f" of {_fmt(win.get('n'))}"
                    + (f"; {_fmt(win.get('failed'))} prompts without a verdict left out" if win.get("failed") else "")
                    + (f"; {_e(str(win.get('decoding', '')))} answers of at most {_fmt(win.get('max_new_tokens'))} "
                       "new tokens" if win.get("max_new_tokens") else "")
                    + (f"; judged by {_e(str(win['judge']))}" if win.get("judge") else "")
                    + ")</p>")
        out += _per_user(run)
        notes = [f"{run.name}: {n}" for n in run.eval.get("notes") or [] if isinstance(n, str)]
        notes += [f"{run.name}: {k} not computed: {why}" for k, why in _dict(run.eval.get("missing")).items()]
        out += _notes(notes)
        out += _img(plots.difficulty_scatter(run), f"{run.name} margins and difficulty", "wide")
        examples = [x for x in run.eval.get("generation_examples") or [] if isinstance(x, dict)]
        if examples:
            cells = [[f"<td>{_e(x.get('prompt', ''))}</td>", f"<td>{_e(x.get('policy', ''))}</td>",
                      f"<td>{_e(x.get('reference', ''))}</td>"] for x in examples[:5]]
            out += f"<details><summary>{_e(run.name)}: generations</summary>"
            out += _table(["prompt", "policy", "reference"], cells) + "</details>"
    return out


def _untrained_pipeline_note(run: RunData) -> str:
    """A note under the samples of a run that started from a built-in random-init pipeline (builtin:tiny-sd, ...): its
    samples are noise before and after (no image model learns to draw in a few steps), which the grid alone leaves a
    reader to guess; the demo that draws something is named. The rows are the grid's (_samples): a self_npo grid has
    one, a ppd grid the base model's and one per user (it said "both rows" for every grid)."""
    from preflab.models.builtin_names import BUILTIN_PIPELINES

    name = run.config.get("model_name_or_path")
    if name not in BUILTIN_PIPELINES:
        return ""
    rows = {"self_npo": "its one row", "ppd": "every row"}.get(str(run.config.get("loss_type")), "both rows")
    return (f"<p class=\"note\">{_e(run.name)} started from {_e(name)}, {_e(BUILTIN_PIPELINES[name])}: its samples "
            f"are noise in {rows}, as expected. The run shows that training runs end to end, not what the method "
            "does to images; for that, train from a real pipeline (model_name_or_path: a diffusers folder or hub "
            "name), or run <code>preflab demo diffusion</code>, whose tiny model is first fitted to draw shapes and "
            "then learns a known colour preference.</p>")


def _samples(runs: list[RunData]) -> str:
    """Diffusion runs: the samples.png grid each run wrote (top row reference, bottom row trained model; a self_npo
    run's grid is one row, its negative model; a ppd run's the base model, then one row per user:
    loops.diffusion.DiffusionRun.write_samples)."""
    import base64

    out = ""
    for run in runs:
        grid = Path(run.path) / "samples.png"
        if grid.is_file():
            uri = "data:image/png;base64," + base64.b64encode(grid.read_bytes()).decode()
            what = {"self_npo": "one row, the trained negative model (Self-NPO: use it in the negative branch of "
                                "classifier-free guidance; no reference row)",
                    "ppd": "top row the base model (the user branch off), then one row per training user, the "
                           "first four in sorted order (the run's README.md names them; same prompts and seeds)"}.get(
                run.config.get("loss_type"), "top row reference, bottom row trained model (same prompts and seeds)")
            out += f"<p>{_e(run.name)}: {what}</p>" + _untrained_pipeline_note(run)
            out += _img(uri, f"{run.name} samples", "wide")
    return "<h2>Samples</h2>" + out if out else ""


# summary.json's own numbers that are bookkeeping, not results (the results table leaves them out)
_NOT_RESULTS = ("global_step", "runtime_s", "resumed_from_step", "fp16_overflow_steps", "unused_rows_per_epoch",
                "train_examples_seen", "reference_refreshes", "train_step_seconds")


def _results(runs: list[RunData]) -> str:
    """The numbers a run's summary.json holds beside final_metrics: what an online demo task, the preference game
    or a recipe is for (true_reward_before / after, win_rate_vs_reference, tv_to_equilibrium, metric_before /
    after, ...)."""
    keys = sorted({k for r in runs for k, v in r.summary.items() if k not in _NOT_RESULTS
                   and is_number(v)},
                  # before, after; then by name (the game's duality_gap beside duality_gap_before: set order)
                  key=lambda k: (k.removesuffix("_before").removesuffix("_after"), k.endswith("_after"), k))
    names = [r.summary.get("metric_name") for r in runs]
    if not keys:
        return ""
    rows = [[f"<td>{_e(k)}</td>", *[_num_cell(r.summary.get(k)) for r in runs]] for k in keys]
    if any(isinstance(n, str) for n in names):
        rows.insert(0, ["<td>metric_name</td>", *[f"<td>{_e(n or '–')}</td>" for n in names]])
    return "<h2>Result (summary.json)</h2>" + _table(["", *[r.name for r in runs]], rows)


def _headline(runs: list[RunData], overview: dict | None = None) -> str:
    """Before vs after with the baseline, first in the report (preflab.report.headline); a folder of runs (the
    demo) first gets the before / after its own summary.json measured (the result of its runs together)."""
    def cell(pairs) -> str:
        pairs = [pairs] if isinstance(pairs, tuple) else pairs or []
        if not pairs:
            return "<td>–</td>"
        return '<td class="num">' + "; ".join(f"{_fmt(v)} <small>({_e(k)})</small>" for k, v in pairs) + "</td>"
    rows, without, late = [], [], []
    folder = summary_rows(overview or {}, "measured by the folder's summary.json; what before and after are: the "
                          "result above", ("before, see meaning", "after, see meaning"))
    name = f"{Path(str((overview or {}).get('_folder', ''))).name} (folder)"
    def line(who: str, r: dict) -> list[str]:
        return [f"<td>{_e(who)}</td>", f"<td>{_e(r['metric'])}</td>", cell(r["before"]), cell(r["after"]),
                cell(r["baseline"]), f'<td class="doc">{_e(r["meaning"])}</td>']

    rows += [line(name, r) for r in folder]
    for run in runs:
        found = headline_rows(run)
        if not found and run.config.get("task") not in RECIPE_TASKS:   # a recipe's result is its summary table
            without.append(run.name)
        after_start = late_before_note(found)
        late += [f"{run.name}: {after_start}"] if after_start else []
        late += [f"{run.name}: {note}" for note in headline_notes(run, found)]
        rows += [line(run.name, r) for r in found]
    out = "<h2>Headline</h2>"
    if rows:
        out += _table(["run", "metric", "before", "after", "baseline", "meaning"], rows)
    if without and folder:
        late.append(f"{', '.join(without)}: no held-out metric of its own (no eval rows in metrics.jsonl); the "
                    f"folder's row{'s' if len(folder) > 1 else ''} above, from its summary.json, "
                    f"judge{'' if len(folder) > 1 else 's'} {'the runs together' if len(runs) > 1 else 'the run'}")
    elif without:
        late.append(f"{', '.join(without)}: no held-out metric to judge the run by (no eval rows in metrics.jsonl); "
                    "see the notes below")
    return out + _notes(late) if rows or without else ""


def _final_metrics(runs: list[RunData]) -> str:
    finals = [_dict(r.summary.get("final_metrics")) for r in runs]
    keys = sorted({k for f in finals for k, v in f.items() if isinstance(v, (int, float)) and k != "step"})
    if not keys:
        return ""
    rows = [[f"<td>{_e(k)}</td>", *[_num_cell(f.get(k)) for f in finals]] for k in keys]
    rows.insert(0, ["<td>global_step</td>", *[_num_cell(r.summary.get("global_step")) for r in runs]])
    rows.insert(1, ["<td>runtime_s</td>", *[_num_cell(r.summary.get("runtime_s")) for r in runs]])
    if any("train_step_seconds" in r.summary for r in runs):  # the optimizer steps' share of runtime_s
        rows.insert(2, ["<td>train_step_seconds</td>", *[_num_cell(r.summary.get("train_step_seconds")) for r in runs]])
    memory = [peak_memory_text(r.summary.get("peak_memory")) for r in runs]
    if any(memory):
        rows.insert(3, ["<td>peak_memory</td>", *[f"<td>{_e(m or '–')}</td>" for m in memory]])
    note = meaning_note(runs)
    return ("<h2>Final metrics (summary.json)</h2>" + _table(["metric", *[r.name for r in runs]], rows)
            + (_notes([note]) if note else ""))


def _config(runs: list[RunData]) -> str:
    out = "<h2>Config</h2>"
    if len(runs) > 1:
        keys = sorted({k for r in runs for k in r.config})
        differ = [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1]
        if differ:
            rows = [[f"<td>{_e(k)}</td>", *[f'<td class="diff">{_e(r.config.get(k))}</td>' for r in runs]]
                    for k in differ]
            out += "<p>Keys whose values differ between runs:</p>" + _table(["key", *[r.name for r in runs]], rows)
        else:
            out += "<p>All runs share the same config.</p>"
    for run in runs:
        text = run.config_text or "(no config.yaml)"
        out += f"<details{' open' if len(runs) == 1 else ''}><summary>{_e(run.name)}: config.yaml</summary>"
        out += f"<pre>{_e(text)}</pre></details>"
    return out


def _environment(runs: list[RunData]) -> str:
    keys = sorted({k for r in runs for k in r.environment})
    if not keys:
        return "<h2>Environment</h2>" + _notes(["no environment recorded (summary.json missing or incomplete)"])
    rows = [[f"<td>{_e(k)}</td>", *[f"<td>{_e(r.environment.get(k, '–'))}</td>" for r in runs]] for k in keys]
    return "<h2>Environment</h2>" + _table(["", *[r.name for r in runs]], rows)


def _example_rows(before: list, after: list) -> list[list[str]]:
    """One row per prompt: the generation before and after, with its true reward when given."""
    after_by_prompt = {x.get("prompt"): x for x in after if isinstance(x, dict)}
    rows = []
    for x in (x for x in before if isinstance(x, dict)):
        y = after_by_prompt.get(x.get("prompt"), {})
        cell = lambda d: (f"<td>{_e(d.get('response', ''))}"  # noqa: E731
                          + (f" <span class=\"meta\">({_fmt(d['true_reward'])})</span>" if "true_reward" in d else "")
                          + "</td>")
        rows.append([f"<td>{_e(x.get('prompt', ''))}</td>", cell(x), cell(y)])
    return rows


def eval_beta_doc(have, metrics: dict) -> str:
    """The meaning of the eval table's beta row. R* (the idealized ranking accuracy) is named only where an eval.json
    holds it: a diffusion eval's beta is that of b (MSE_ref - MSE), a VLM eval computes no R*, and neither has one
    (both were said to be "beta of the implicit reward and of R*")."""
    if all(r.eval.get("task") == "diffusion" for r in have):
        return "beta of the implicit reward b (MSE_ref - MSE), in the run's convention (no R*)"
    if all("num_completions" in r.eval for r in have):
        return "beta of the implicit reward (unpaired rows: no R*)"
    if any("idealized_ranking_accuracy" in m for m in metrics.values()):
        return "beta of the implicit reward and of R*"
    return "beta of the implicit reward"


def _overview(overview: dict) -> str:
    """The result of a folder of runs (the demo): what it is for (its summary.json's `about`, a paragraph), its
    numbers, example generations before and after, and its own figure."""
    if not overview:
        return ""
    out = "<h2>Result</h2>"
    if isinstance(overview.get("about"), str):
        out += f"<p class=\"about\">{_e(overview['about'])}</p>"
    scalars = {k: v for k, v in overview.items() if not k.startswith("_") and isinstance(v, (int, float, str))
               and k not in ("title", "about", "plot", "report") and not k.endswith("_dir")}
    if scalars:
        out += _table(["", "value"], [[f"<td>{_e(k)}</td>", _num_cell(v) if not isinstance(v, str)
                                       else f"<td>{_e(v)}</td>"] for k, v in scalars.items()])
    before, after = overview.get("examples_before"), overview.get("examples_after")
    if isinstance(before, list) and isinstance(after, list) and before:
        out += "<p>Example generations on held-out prompts (true reward in brackets):</p>"
        out += _table(["prompt", "before", "after"], _example_rows(before, after))
    plot = Path(str(overview.get("_folder", ""))) / "training_curves.png"
    if overview.get("plot") and plot.is_file():
        import base64

        out += _img("data:image/png;base64," + base64.b64encode(plot.read_bytes()).decode(), "training curves",
                    "wide")
    return out


# what a run is, from its config.yaml, in the run list at the top (the config section below has every key)
_PURPOSE_KEYS = ("task", "trainer", "loss_type", "model_name_or_path", "dataset_name", "dataset_config")


def _purpose(run: RunData) -> str:
    """' (task diffusion, loss_type diffusion_dpo, model_name_or_path ..., dataset_name ...)': what the run trained
    and on what (the list said only the run's name and path). The objective as objective_label names it: an online
    run's trainer beside its loss_type; no loss_type or trainer for an SFT or reward-model run, whose config.yaml
    carries the defaults `sigmoid` and `online_dpo` it never used."""
    task = str(run.config.get("task", "dpo"))
    # (an SFT or reward run's config.yaml also carries the online default `trainer: online_dpo`: not said either)
    skip = {"loss_type", "trainer"} if task in ("sft", "reward") else set() if task == "online" else {"trainer"}
    def said(value) -> str:   # a weighted list of objectives as objective_label writes it
        return " + ".join(map(str, value)) if isinstance(value, list) else str(value)
    parts = [f"{k} {said(run.config[k])}" for k in _PURPOSE_KEYS
             if k not in skip and run.config.get(k) not in (None, "")]
    return f" ({', '.join(parts)})" if parts else ""


def render_report(runs: list[RunData], title: str | None = None, overview: dict | None = None) -> str:
    """The report's HTML for already loaded runs (and the overview of the folder holding them, if any)."""
    from preflab import __version__

    title = title or ("preflab run report: " + ", ".join(r.name for r in runs))
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    listing = "".join(f"<li><b>{_e(r.name)}</b>: {_e(r.path)}{_e(_purpose(r))}</li>" for r in runs)
    missing = [f"{r.name}: {m}" for r in runs for m in r.missing]
    parts = [
        f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>",
        f"<p class=\"meta\">generated by preflab {_e(__version__)} on {now}</p><ul>{listing}</ul>",
        _overview(overview or {}), _headline(runs, overview), _results(runs),
        _notes(missing) if missing else "",
        _curve_reading(runs), _curves(runs), _samples(runs), _margins(runs), _eval_section(runs), _final_metrics(runs), _config(runs),
        _environment(runs), "</body></html>",
    ]
    return "\n".join(parts)


def write_report(run_dirs, out_path, title: str | None = None) -> Path:
    """Write the HTML report of `run_dirs` (run directories, or folders holding runs such as `preflab demo`'s
    output) to `out_path`; returns the path. A folder with no run in it is a PreflabError; nothing is written."""
    paths = [Path(p) for p in ([run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs)]
    if not paths:
        raise PreflabError("write_report needs at least one run directory.")
    paths, overview = collect_runs(paths)
    names = unique_names(paths)
    runs = [load_run(p, name) for p, name in zip(paths, names)]
    if overview and title is None:
        title = overview.get("title") or f"preflab report: {Path(overview['_folder']).name}"
    out = Path(out_path)
    page = render_report(runs, title, overview)
    try:
        return write_text_file(out, page)  # whole or not at all: no report.html.tmp left by a failed write
    except OSError as err:
        raise WriteFailed(f"could not write the report {out}: {err.strerror or err}. Free disk space or fix the "
                          "folder's permissions, or write it elsewhere with --out PATH.") from err
