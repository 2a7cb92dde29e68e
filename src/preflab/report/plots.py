"""The report's figures as PNG data URIs (matplotlib's Agg canvas, no pyplot state, no files).

    curve_panel(runs, "Loss", "loss", [("loss", "train", BLUE)])   # one line per run and series
    margin_histograms(runs)        # per-pair implicit reward margins at the first and last saved eval step
    difficulty_scatter(run)        # Chen et al. 2024 Fig. 3 from eval.json: per-pair DPO loss vs c, l(beta c)

Several runs share a panel: colour = run, line style = series, so objectives can be compared on the same data.
"""
from __future__ import annotations

import base64
import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from preflab.option_types import is_number
from preflab.objectives.base import IMPLICIT_REWARD, SUMMED_LOGPS
from preflab.report.metric_meanings import panel_meaning
from preflab.report.runs import RunData, finite_eval_pairs

RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
SERIES_STYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))   # a panel has up to 6 series

BLUE, RED, GREEN, PURPLE, ORANGE, GRAY = "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#555555"
# (panel title, y label, [(metrics.jsonl key, label, colour for a single run)]): training rows carry TRL's names,
# eval rows the same names prefixed "eval_"; train is drawn solid and eval dashed
PANELS = (
    ("Loss", "loss", [("loss", "train", BLUE), ("eval_loss", "eval", BLUE)]),
    ("Reward margin", "beta (h_w - h_l)", [("rewards/margins", "train", GREEN),
                                           ("eval_rewards/margins", "eval", GREEN)]),
    ("Accuracies", "fraction of pairs", [("rewards/accuracies", "reward acc. (train)", GREEN),
                                         ("eval_rewards/accuracies", "reward acc. (eval)", GREEN),
                                         ("eval_ranking_accuracy", "ranking acc. R (eval)", PURPLE),
                                         ("eval_ranking_accuracy_norm", "ranking acc. R~ (eval)", ORANGE),
                                         ("eval_reference_ranking_accuracy", "ranking acc. R of the reference "
                                          "(eval, baseline)", GRAY)]),
    ("Log-probs", "summed log-prob", [("logps/chosen", "chosen (train)", BLUE),
                                      ("logps/rejected", "rejected (train)", RED),
                                      ("eval_logps/chosen", "chosen (eval)", BLUE),
                                      ("eval_logps/rejected", "rejected (eval)", RED)]),
    ("Log-prob drift vs reference (eval)", "log pi - log pi_ref", [("eval_logps_drift/chosen", "chosen", BLUE),
                                                                  ("eval_logps_drift/rejected", "rejected", RED)]),
    ("Implicit rewards", "beta h", [("rewards/chosen", "chosen (train)", BLUE),
                                    ("rewards/rejected", "rejected (train)", RED),
                                    ("eval_rewards/chosen", "chosen (eval)", BLUE),
                                    ("eval_rewards/rejected", "rejected (eval)", RED)]),
    ("Gradient norm", "pre-clip norm", [("grad_norm", "train", GRAY)]),
    ("Learning rate", "lr", [("learning_rate", "train", GRAY)]),
)
# TRL's DPO token metrics (preflab.scoring.token_metrics); drawn only when the run logged one of its series
TOKEN_PANELS = (
    ("Mean logit over the vocabulary", "mean logit", [("logits/chosen", "chosen (train)", BLUE),
                                                      ("logits/rejected", "rejected (train)", RED),
                                                      ("eval_logits/chosen", "chosen (eval)", BLUE),
                                                      ("eval_logits/rejected", "rejected (eval)", RED)]),
    ("Policy entropy", "nats per response token", [("entropy", "train", GRAY), ("eval_entropy", "eval", GRAY)]),
    # a share of tokens, not of pairs: its own panel (SFT: the completion's tokens; DPO: the chosen response's)
    ("Next-token accuracy", "fraction of tokens with argmax = target", [("mean_token_accuracy", "train", BLUE),
                                                                        ("eval_mean_token_accuracy", "eval", BLUE)]),
)
# reward-model runs (task: reward; TRL RewardTrainer's names); drawn only when the run logged one of its series
REWARD_PANELS = (
    ("Reward model accuracy", "fraction of pairs with r(chosen) > r(rejected)", [("accuracy", "train", GREEN),
                                                                               ("eval_accuracy", "eval", GREEN)]),
    ("Reward model margin", "r(chosen) - r(rejected)", [("margin", "train", BLUE), ("eval_margin", "eval", BLUE)]),
    ("Reward scores", "mean r(x, y)", [("rewards/chosen", "chosen (train)", BLUE),
                                       ("rewards/rejected", "rejected (train)", RED),
                                       ("eval_rewards/chosen", "chosen (eval)", BLUE),
                                       ("eval_rewards/rejected", "rejected (eval)", RED)]),
)
# rewards/chosen and rewards/rejected are beta h for a policy run and the raw scores r(x, y) for a reward-model run:
# the same keys, two panels, each drawing only its kind of run (draws)
REWARD_MODEL_ONLY, NOT_REWARD_MODEL = {"Reward scores"}, {"Implicit rewards"}
# a panel's y label where a task logs the same keys with another meaning: a diffusion run's logps/* are minus the
# denoising MSE (preflab.eval.names.DIFFUSION_METRIC_DOCS), not summed token log-probs, and its implicit rewards
# b * h are built on h = MSE_ref - MSE_policy (preflab.objectives.diffusion_dpo; b: beta in the run's convention), not
# on a log-ratio
TASK_YLABELS = {("Log-probs", "diffusion"): "minus the denoising MSE (diffusion)",
                ("Reward margin", "diffusion"): "b (h_w - h_l), h = MSE_ref - MSE (diffusion)",
                ("Implicit rewards", "diffusion"): "b h, h = MSE_ref - MSE (diffusion)"}
# panels of a pair's score s and the implicit rewards built on it: a text or VLM run's s is a summed token log-prob
# (nats), a diffusion run's minus a denoising MSE (logged under the same names, logps/*, rewards/*): runs of both
# kinds get one axis per kind (score_kind), never one axis for both, and the report says why (score_kind_note)
SPLIT_BY_SCORE_KIND = {"Log-probs", "Log-prob drift vs reference (eval)", "Reward margin", "Implicit rewards"}
SCORE_KINDS = {"diffusion": "diffusion, score -MSE"}   # a task's kind of score where it is not a token log-prob
TOKEN_SCORE_KIND = "text/VLM, score log-prob"
# panels whose values mean something else for another objective: several runs get one axis per objective
SPLIT_BY_OBJECTIVE = {"Loss"}
# panels of the implicit reward beta * (log pi - log pi_ref) (TRL's rewards/*): runs with different beta are on
# different scales (the same log-ratio reads 5x larger at beta 0.5 than at 0.1), so several betas get one axis each
SPLIT_BY_BETA = {"Reward margin", "Implicit rewards"}
# the online `kl` is two quantities under one name: a pair recipe's (online_dpo, rso, ...) is the summed log-ratio
# S_theta - S_ref of its trained completions, the GRPO family's TRL's per-token k3 estimate (times the ratio with
# use_bias_correction_kl), a token mean: one axis and y label each (online_kl_kind)
SPLIT_BY_KL_KIND = {"KL to the reference (online)"}
KL_YLABELS = {"pairs": "S_theta - S_ref per completion (pair recipes)",
              "groups": "per-token k3 estimate, token mean (GRPO family)",
              "offline": "KTO's reference point z_ref, a batch log-ratio (offline)",
              "game": "KL(pi || pi_ref) of the round-start policy, exact (game)"}
# panels of a share in [0, 1] (a win rate): their y axis is fixed to [0, 1], never a reward's scale
UNIT_INTERVAL = {"Win rate vs reference (online eval)"}
# online runs (task: online); a panel is drawn only when the run logged one of its series
ONLINE_PANELS = (
    ("Online reward", "reward", [("reward", "sampled completions (train)", GREEN),
                                 ("eval_true_reward", "true reward, greedy (eval)", PURPLE),
                                 ("eval_reward", "judges' reward, greedy (eval)", BLUE)]),
    # a share of prompts, not a reward: its own [0, 1] axis (it was drawn on the reward's axis)
    ("Win rate vs reference (online eval)", "fraction of prompts won (ties 1/2)",
     [("eval_win_rate_vs_reference", "greedy answer vs the starting policy's", ORANGE)]),
    ("KL to the reference (online)", KL_YLABELS["pairs"], [("kl", "train", GRAY)]),
    ("Policy distribution (game)", "probability", [(f"policy/p{i}", f"answer {i}", c)
                                                   for i, c in enumerate((BLUE, RED, GREEN, ORANGE))]),
    ("Distance to the regularised equilibrium (game)", "", [("tv_to_equilibrium", "total variation", BLUE),
                                                            ("duality_gap", "duality gap", RED)]),
)


def objective_panels(runs: list[RunData]) -> tuple[list, list[str]]:
    """The panels the runs' objectives declare for their own metrics (`Objective.metric_panels`, e.g. spo_degree's
    degree-head loss and accuracy), each metric drawn train (solid) and `eval_<metric>` (dashed), one panel per
    title (the first y label; the metrics of every run and part declaring that title); and the notes on what could
    not be drawn.

    A run's panels are the ones its training wrote into metric_panels.json (preflab.report.panel_data), a user's
    objective (`loss_type: my_losses.py:Class`) and every part of a weighted list included; a malformed file is a
    note naming it. A run written before that file existed gets the panels of its built-in loss_type names (every
    part of a weighted list: WeightedSum logs a later part's declared metrics under their own names), and a note per
    name that is not a built-in objective: a report never imports code a run names (reading a run directory,
    possibly someone else's, must not run it)."""
    from preflab.report.panel_data import read_panel_data

    panels, notes = {}, []   # title -> (y label, series): a title declared twice is one panel with every series
    for run in runs:
        declared, note = read_panel_data(run.path)
        if note:
            notes.append(f"{run.name}: {note}")
        elif declared is None:
            declared = _builtin_panels(run, notes)
        for title, ylabel, keys in declared or ():
            series = panels.setdefault(title, (ylabel, []))[1]
            for key in keys:
                series += [s for s in ((key, f"{key} (train)", BLUE), (f"eval_{key}", f"{key} (eval)", BLUE))
                           if s not in series]
    return [(title, ylabel, series) for title, (ylabel, series) in panels.items()], notes


def _builtin_panels(run: RunData, notes: list[str]) -> list:
    """A run without metric_panels.json (written before it existed): the metric_panels of its built-in loss_type
    names, and a note (added to `notes`) per name that is not a built-in objective."""
    from preflab.objectives import objective_class, resolve_name

    out = []
    loss_type = run.config.get("loss_type")
    for name in loss_type if isinstance(loss_type, list) else [loss_type] if loss_type else []:
        try:
            cls = None if ":" in str(name) else objective_class(resolve_name(str(name)))
        except Exception:  # an objective this preflab does not have (a newer or older version's name)
            cls = None
        if cls is None:
            notes.append(f"{run.name}: objective {name!r} is not a built-in objective; the report does not import "
                         "code a run names, and this run has no metric_panels.json (written by runs of newer "
                         "preflab versions), so the panels it may declare for its own metrics are not drawn (its "
                         "metrics are in the summary table)")
            continue
        out += list(getattr(cls, "metric_panels", ()))
    return out


def draws(title: str, run: RunData) -> bool:
    """Whether the panel `title` draws `run`: a REWARD_MODEL_ONLY panel draws only reward-model runs (task: reward),
    a NOT_REWARD_MODEL panel every run but those, any other panel every run."""
    if title in REWARD_MODEL_ONLY:
        return run.reward_model
    return not (title in NOT_REWARD_MODEL and run.reward_model)


def to_data_uri(fig: Figure) -> str:
    """The figure as a PNG data URI. Its text is drawn as written: a run's directory name or the panel titles and
    metric names a run's metric_panels.json gives are not parsed as mathtext (an unbalanced `$` raised at savefig)."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    for text in fig.findobj(Text):
        text.set_parse_math(False)
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _new(width: float = 5.4, height: float = 3.4, cols: int = 1):
    fig = Figure(figsize=(width * cols, height), layout="constrained")
    axes = [fig.add_subplot(1, cols, i + 1) for i in range(cols)]
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, axes


def objective_label(run: RunData) -> str:
    """What a run's loss is: its task, with the objective (loss_type; an online run's trainer) where it has one."""
    task = str(run.config.get("task", "dpo"))
    what = run.config.get("trainer") if task == "online" else run.config.get("loss_type")
    what = " + ".join(map(str, what)) if isinstance(what, list) else what     # a weighted sum of objectives
    return f"{task} ({what})" if what and task not in ("sft", "reward") else task


def curve_panel(runs: list[RunData], title: str, ylabel: str, series: list[tuple[str, str, str]]) -> str | None:
    """A line per (run, series) over steps; None when no run logged any of the series. One run: colour by
    series (chosen blue, rejected red), solid = train, dashed = eval. Several runs: colour by run, style by series;
    eval lines always carry markers. The Loss panel of runs whose losses are different quantities (SPLIT_BY_OBJECTIVE:
    an SFT stage beside a DPO one, DPO beside IPO) gets one axis per objective, each on its own scale, instead of
    one axis on which the smaller loss is flattened and the values read as comparable."""
    many = len(runs) > 1
    groups = panel_groups(runs, title, series)
    if not groups:
        return None
    fig = Figure(figsize=(5.4, 3.4 if len(groups) == 1 else 2.6 * len(groups)), layout="constrained")
    first = None
    for g, (group, members) in enumerate(groups.items()):
        ax = fig.add_subplot(len(groups), 1, g + 1, sharex=first)   # the same steps on every axis
        first = first or ax
        ax.grid(alpha=0.3)
        for r in members:
            _draw_run(ax, runs[r], r, series, many)
        ax.set(title=f"{title}: {group}" if len(groups) > 1 else title, xlabel="step",
               ylabel=panel_ylabel(title, ylabel, [runs[r] for r in members]))
        if title in UNIT_INTERVAL:
            ax.set_ylim(-0.02, 1.02)
        step_axis(ax)
        entries = len(ax.get_legend_handles_labels()[1])
        ax.legend(fontsize=7, loc="best") if entries <= 6 else \
            ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)  # below: not over data
    return to_data_uri(fig)


def step_axis(ax) -> None:
    """Whole steps on the x axis: a run of 4 steps had ticks at 1.5, 2.5, ..., steps that do not exist."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))   # 20, 40, ... not 24, 32, ...


def panel_groups(runs: list[RunData], title: str, series) -> dict[str, list[int]]:
    """{axis label: positions in `runs` drawn on that axis} of a panel: the runs that logged one of its series, all
    on one axis ("") except on a SPLIT_BY_OBJECTIVE panel, where each objective (objective_label) gets its own, on a
    SPLIT_BY_BETA panel, where each beta ("beta=0.1") gets its own, on a SPLIT_BY_SCORE_KIND panel drawing runs
    of two kinds of score, where each kind gets its own ("diffusion, score -MSE, beta=5000"), and on a rewards/* or
    logps/* panel drawing runs whose objectives log different quantities under those names, where each meaning gets
    its own (report.metric_meanings: "beta=0.1, beta * mean token log-prob of the response (no reference)")."""
    drawn = [r for r, run in enumerate(runs)   # colours keyed to the position in `runs`, the same on every panel
             if draws(title, run) and any(run.series(key)[0] for key, _, _ in series)]
    by_kind = title in SPLIT_BY_SCORE_KIND and len({score_kind(runs[r]) for r in drawn}) > 1
    by_meaning = len({panel_meaning(title, runs[r]) for r in drawn} - {None}) > 1   # report.metric_meanings
    groups: dict[str, list[int]] = {}
    for r in drawn:
        run = runs[r]
        group = (objective_label(run) if title in SPLIT_BY_OBJECTIVE else
                 f"beta={beta_label(run)}" if title in SPLIT_BY_BETA else
                 online_kl_kind(run) if title in SPLIT_BY_KL_KIND else "")
        if by_kind:
            group = f"{score_kind(run)}, {group}" if group else score_kind(run)
        if by_meaning:   # another objective's rewards/* or logps/* (SimPO's beta * mean log-prob beside DPO's)
            said = panel_meaning(title, run) or "not declared"
            group = f"{group}, {said}" if group else said
        groups.setdefault(group, []).append(r)
    if len(groups) == 1:
        return {"": next(iter(groups.values()))}
    return groups


def _draw_run(ax, run: RunData, r: int, series: list[tuple[str, str, str]], many: bool) -> None:
    """The lines of one run (position r in the report's runs) on `ax`, and a thin red line per skipped step."""
    for s, (key, label, single_color) in enumerate(series):
        steps, values = run.series(key)
        if not steps:
            continue
        gaps = [s for s in run.null_steps(key) if s not in steps]   # a non-finite value breaks the line
        if gaps:
            merged = sorted(list(zip(steps, values)) + [(s, math.nan) for s in gaps])
            steps, values = [s for s, _ in merged], [v for _, v in merged]
        is_eval = key.startswith("eval_")
        marker = "o" if is_eval and (many or len(steps) < 40) else None
        if many:
            color, style = RUN_COLORS[r % len(RUN_COLORS)], SERIES_STYLES[s % len(SERIES_STYLES)]
        else:
            color = single_color    # R~ dotted so that it stays visible where it equals R
            style = ":" if key.endswith("accuracy_norm") else "--" if is_eval else "-"
        ax.plot(steps, values, linestyle=style, marker=marker, markersize=3, color=color,
                markevery=max(1, len(steps) // 40), label=f"{run.name}: {label}" if many else label)
    for i, step in enumerate(run.skipped_steps):  # steps skipped as non-finite: a thin red line each
        ax.axvline(step, color="#d62728", alpha=0.35, linewidth=0.8,
                   label=(f"{run.name}: " if many else "") + "non-finite step skipped" if i == 0 else None)


def beta_label(run: RunData) -> str:
    """A run's beta as its config.yaml says it (TrainConfig's default 0.1 where the key is absent), for labels."""
    beta = run.config.get("beta", 0.1)
    return f"{beta:g}" if is_number(beta) else str(beta)


def beta_note(runs: list[RunData]) -> str | None:
    """The report's note when runs that logged implicit rewards (rewards/margins, rewards/chosen, ...) differ in
    beta: those values are beta * (log pi - log pi_ref) for a text or VLM run and b * (MSE_ref - MSE) for a diffusion
    run (b: the objective's scale of its beta, Diffusion-DPO's beta/2 in the salesforce convention; a gap of
    denoising errors, not a log-ratio: TASK_YLABELS), so their panels give each beta its own axis and the numbers of
    two betas are not comparable; the note says what each kind's values are and what dividing recovers. None when
    they share one beta (or fewer than two such runs)."""
    keys = [key for title, _, series in PANELS if title in SPLIT_BY_BETA for key, _, _ in series]
    have = [run for run in runs if not run.reward_model and any(run.series(key)[0] for key in keys)]
    betas = {run.name: beta_label(run) for run in have}
    if len(set(betas.values())) < 2:
        return None
    said = ", ".join(f"{name} beta={beta}" for name, beta in betas.items())
    kinds = {score_kind(r) for r in have}
    diffusion = SCORE_KINDS["diffusion"]
    if diffusion not in kinds:  # text / VLM runs only: as it always read
        plotted, divide, same = "beta * (log pi - log pi_ref)", "divide by beta for the log-ratio", "log-probs are"
    elif len(kinds) == 1:  # diffusion runs only: no log-ratio of sequence probabilities
        plotted = ("b * (MSE_ref - MSE), a gap of denoising errors, not a log-ratio (b: the objective's scale of "
                   "beta, e.g. diffusion_dpo's beta/2 in the salesforce convention)")
        divide, same = "divide by b for the denoising-error gap", "denoising errors (logps/*) are"
    else:
        plotted = ("beta * (log pi - log pi_ref) for a text or VLM run and b * (MSE_ref - MSE), a gap of denoising "
                   "errors, for a diffusion run (b: the objective's scale of beta, e.g. diffusion_dpo's beta/2 in the "
                   "salesforce convention)")
        divide, same = "divide by beta for a text run's log-ratio, by b for a diffusion run's error gap", None
    return (f"the runs differ in beta ({said}): the reward-margin and implicit-reward panels plot {plotted}, so each "
            f"beta gets its own axis and their values are not comparable across runs ({divide}); accuracies"
            + (f" and {same}" if same else " are") + " on one scale")


def score_kind(run: RunData) -> str:
    """What a run's pair score s (logps/*, and the implicit rewards built on it) is: SCORE_KINDS' label for its task
    (a diffusion run: minus the denoising MSE), else TOKEN_SCORE_KIND (a summed token log-prob)."""
    return SCORE_KINDS.get(str(run.config.get("task", "dpo")), TOKEN_SCORE_KIND)


def score_kind_note(runs: list[RunData]) -> str | None:
    """The report's note when the runs that logged a SPLIT_BY_SCORE_KIND panel's series differ in kind of score
    (score_kind: a diffusion run beside a text or VLM run): those panels give each kind its own axis, and their values
    are not comparable across kinds; None when they are of one kind."""
    keys = {key for title, _, series in PANELS if title in SPLIT_BY_SCORE_KIND for key, _, _ in series}
    kinds = {run.name: score_kind(run) for run in runs
             if not run.reward_model and any(run.series(key)[0] for key in keys)}
    if len(set(kinds.values())) < 2:
        return None
    said = "; ".join(f"{name}: {kind}" for name, kind in kinds.items())
    return (f"the runs differ in kind ({said}): a diffusion run logs minus its denoising error (MSE) under the "
            "log-prob names (logps/*) and its implicit rewards are b (MSE_ref - MSE), a text or VLM run summed "
            "token log-probs and beta (log pi - log pi_ref), so the log-prob, drift, reward-margin and "
            "implicit-reward panels give each kind its own axis, and their values are not comparable across kinds "
            "(accuracies are)")


def online_kl_kind(run: RunData) -> str:
    """"groups" for a run of the GRPO family's objective (it logs frac_reward_zero_std beside its `kl`: the per-token
    k3 estimate), "pairs" for a pair recipe (its `kl` is the summed log-ratio S_theta - S_ref per completion),
    "game" for the preference game (its `kl` is KL(pi || pi_ref) exact), "offline" for a run of another task (KTO logs TRL's `kl`, its reference point z_ref)."""
    if str(run.config.get("task", "dpo")) != "online":
        return "offline"
    if run.config.get("online_task") == "game":  # preflab.online.game logs the exact KL of the round-start policy
        return "game"
    return "groups" if run.series("frac_reward_zero_std")[0] else "pairs"


def panel_ylabel(title: str, ylabel: str, runs: list[RunData]) -> str:
    """`ylabel`, or TASK_YLABELS' label where every run drawn is of that task (KL_YLABELS' by the online kl's kind);
    both, joined, for a mix."""
    labels = list(dict.fromkeys(KL_YLABELS[online_kl_kind(r)] if title in SPLIT_BY_KL_KIND else
                                TASK_YLABELS.get((title, str(r.config.get("task", "dpo"))), ylabel) for r in runs))
    meanings = {panel_meaning(title, r) for r in runs}
    shared = meanings.pop() if len(meanings) == 1 else None
    if shared not in (None, IMPLICIT_REWARD, SUMMED_LOGPS):
        labels = [shared]   # every run drawn logs another objective's quantity under these names (metric_meanings)
    return "; ".join(labels) if labels else ylabel


def margin_histograms(runs: list[RunData]) -> str | None:
    """Per run: histograms of the per-pair margins at the first and the last saved step (pair_margins.jsonl)."""
    have = [run for run in runs if run.margins]
    if not have:
        return None
    fig, axes = _new(4.6, 3.2, cols=len(have))
    for ax, run in zip(axes, have):
        steps = sorted(run.margins)
        first, last = steps[0], steps[-1]
        values = run.margins[first] + run.margins[last]
        lo, hi = (min(values), max(values)) if values else (-1.0, 1.0)
        bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 30
        ax.hist(run.margins[first], bins=bins, alpha=0.55, color="#7f7f7f", label=f"step {first}")
        if last != first:
            ax.hist(run.margins[last], bins=bins, alpha=0.55, color=RUN_COLORS[runs.index(run) % 8],
                    label=f"step {last}")
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set(title=f"{run.name}: reward margins (beta={beta_label(run)})", xlabel="beta (h_w - h_l)",
               ylabel="pairs")
        ax.legend(fontsize=7)
    return to_data_uri(fig)


def _per_pair(run: RunData):
    """The finite pairs of eval.json's per_pair (the pairs left out are said at the top of the report), or None."""
    found = finite_eval_pairs(run.eval)
    return found[0] if found and found[0][0] else None


def difficulty_scatter(run: RunData) -> str | None:
    """From eval.json's per-pair sums: (left) histogram of the final implicit reward margins; (right) per-pair
    DPO loss against the reference log-ratio c = S_ref(y_l) - S_ref(y_w), coloured by whether the policy ranks
    the pair right, with Thm 4.1's boundary l(beta c) (a pair is ranked right iff it lies on or below it)."""
    cols = _per_pair(run)
    if cols is None:
        return None
    pc, pr, rc, rr = cols
    beta = run.eval.get("beta")
    beta = float(beta) if isinstance(beta, (int, float)) and beta > 0 else 0.1
    margins = [beta * ((a - c) - (b - d)) for a, b, c, d in zip(pc, pr, rc, rr)]
    c_vals = [d - c for c, d in zip(rc, rr)]
    losses = [_softplus(-m) for m in margins]
    right = [a >= b for a, b in zip(pc, pr)]
    fig, (ax1, ax2) = _new(4.8, 3.3, cols=2)
    ax1.hist(margins, bins=30, color="#1f77b4", alpha=0.8)
    ax1.axvline(0.0, color="black", linewidth=0.8)
    ax1.set(title=f"{run.name}: final reward margins (eval.json)", xlabel="beta (h_w - h_l)", ylabel="pairs")
    for flag, color, label in ((True, "#2ca02c", "ranked right"), (False, "#d62728", "ranked wrong")):
        xs = [c for c, ok in zip(c_vals, right) if ok == flag]
        ys = [v for v, ok in zip(losses, right) if ok == flag]
        if xs:
            ax2.scatter(xs, ys, s=10, color=color, alpha=0.7, label=f"{label} ({len(xs)})")
    lo, hi = min(c_vals), max(c_vals)
    lo, hi = (lo - 1.0, hi + 1.0) if hi == lo else (lo, hi)
    grid = [lo + (hi - lo) * i / 200 for i in range(201)]
    ax2.plot(grid, [_softplus(-beta * c) for c in grid], "k--", linewidth=1, label="l(beta c) (Thm 4.1)")
    ax2.set(title="DPO loss vs reference log-ratio", xlabel="c = log pi_ref(y_l) - log pi_ref(y_w)",
            ylabel="per-pair DPO loss")
    ax2.legend(fontsize=7)
    return to_data_uri(fig)


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))
