"""A diffusion run logs minus its denoising MSE under the log-prob names (logps/*) and implicit rewards built on it
(rewards/* = b (MSE_ref - MSE)): `preflab report DIFFUSION_RUN DPO_RUN` drew them on the text run's log-prob axis
(user trial), different units on one scale, with nothing said. Each kind of score now gets its own axis on those
panels, titled by the kind, and a note says why; a report of text runs alone is as before."""
import sys
from pathlib import Path

from preflab.report import plots
from preflab.report.html import render_report
from preflab.report.runs import load_run

sys.path.insert(0, str(Path(__file__).parent))
from report_runs import make_run  # noqa: E402

DIFFUSION = {"task": "diffusion", "loss_type": "diffusion_dpo", "beta": 5000}
NOTE = ("the runs differ in kind (diff: diffusion, score -MSE; dpo: text/VLM, score log-prob): a diffusion run logs "
        "minus its denoising error (MSE) under the log-prob names (logps/*) and its implicit rewards are b (MSE_ref - "
        "MSE), a text or VLM run summed token log-probs and beta (log pi - log pi_ref), so the log-prob, drift, "
        "reward-margin and implicit-reward panels give each kind its own axis, and their values are not comparable "
        "across kinds (accuracies are)")


def _panel(title):
    return next(p for p in plots.PANELS if p[0] == title)


def _axes(monkeypatch, runs) -> list[tuple[str, str]]:
    """(title, y label) of every axis of the report's figures (to_data_uri replaced by a recorder), and the page."""
    drawn = []
    monkeypatch.setattr(plots, "to_data_uri", lambda fig: drawn.append(fig) or "data:image/png;base64,")
    page = render_report(runs)
    return [(ax.get_title(), ax.get_ylabel()) for fig in drawn for ax in fig.axes], page


def test_a_diffusion_run_and_a_dpo_run_never_share_a_score_axis(tmp_path, monkeypatch):
    """Log-probs, drift, reward margin and implicit rewards: one axis per kind of score, also where the two runs have
    the same beta (the beta split alone kept them on one axis); accuracies (fractions) and the grad norm still share
    one. The diffusion axes are titled and y-labelled as denoising errors, the text axes as before; the note is on
    the page."""
    diff = load_run(make_run(tmp_path / "diff", config_extra=DIFFUSION), "diff")
    same_beta = load_run(make_run(tmp_path / "diff01", config_extra={**DIFFUSION, "beta": 0.1}), "diff")
    dpo = load_run(make_run(tmp_path / "dpo"), "dpo")
    kinds = {"diffusion, score -MSE": [0], "text/VLM, score log-prob": [1]}
    for title in ("Log-probs", "Log-prob drift vs reference (eval)"):
        assert plots.panel_groups([diff, dpo], title, _panel(title)[2]) == kinds
        assert plots.panel_groups([same_beta, dpo], title, _panel(title)[2]) == kinds
    for title in ("Reward margin", "Implicit rewards"):
        assert plots.panel_groups([diff, dpo], title, _panel(title)[2]) == {
            "diffusion, score -MSE, beta=5000": [0], "text/VLM, score log-prob, beta=0.1": [1]}
        assert plots.panel_groups([same_beta, dpo], title, _panel(title)[2]) == {
            "diffusion, score -MSE, beta=0.1": [0], "text/VLM, score log-prob, beta=0.1": [1]}
    for title in ("Accuracies", "Gradient norm"):
        assert plots.panel_groups([diff, dpo], title, _panel(title)[2]) == {"": [0, 1]}
    axes, page = _axes(monkeypatch, [diff, dpo])
    assert {("Log-probs: diffusion, score -MSE", "minus the denoising MSE (diffusion)"),
            ("Log-probs: text/VLM, score log-prob", "summed log-prob"),
            ("Reward margin: diffusion, score -MSE, beta=5000", "b (h_w - h_l), h = MSE_ref - MSE (diffusion)"),
            ("Reward margin: text/VLM, score log-prob, beta=0.1", "beta (h_w - h_l)"),
            ("Implicit rewards: diffusion, score -MSE, beta=5000", "b h, h = MSE_ref - MSE (diffusion)"),
            ("Implicit rewards: text/VLM, score log-prob, beta=0.1", "beta h")} <= set(axes)
    assert not [a for a in axes if a[0] in ("Log-probs", "Reward margin", "Implicit rewards")]   # no shared axis
    assert not [a for a in axes if "; " in a[1]]   # no y label joining two kinds' labels
    assert plots.score_kind_note([diff, dpo]) == NOTE and f'<div class="note">{NOTE}</div>' in page
    # the beta note no longer says the log-probs of the two runs are on one scale
    assert plots.beta_note([diff, dpo]) == (
        "the runs differ in beta (diff beta=5000, dpo beta=0.1): the reward-margin and implicit-reward panels plot "
        "beta * (log pi - log pi_ref) for a text or VLM run and b * (MSE_ref - MSE), a gap of denoising errors, for a "
        "diffusion run (b: the objective's scale of beta, e.g. diffusion_dpo's beta/2 in the salesforce convention), "
        "so each beta gets its own axis and their values are not comparable across runs (divide by beta for a text "
        "run's log-ratio, by b for a diffusion run's error gap); accuracies are on one scale")


def test_the_beta_note_of_diffusion_runs_names_the_denoising_error_gap_not_a_log_ratio(tmp_path):
    """Two diffusion runs at different beta: their implicit rewards are b (MSE_ref - MSE), not beta times a log-ratio
    of sequence probabilities; the note said "divide by beta for the log-ratio" and "log-probs are on one scale"."""
    low = load_run(make_run(tmp_path / "low", config_extra=DIFFUSION), "low")
    high = load_run(make_run(tmp_path / "high", config_extra={**DIFFUSION, "beta": 2500}), "high")
    note = plots.beta_note([low, high])
    assert note == ("the runs differ in beta (low beta=5000, high beta=2500): the reward-margin and implicit-reward "
                    "panels plot b * (MSE_ref - MSE), a gap of denoising errors, not a log-ratio (b: the objective's "
                    "scale of beta, e.g. diffusion_dpo's beta/2 in the salesforce convention), so each beta gets its "
                    "own axis and their values are not comparable across runs (divide by b for the denoising-error "
                    "gap); accuracies and denoising errors (logps/*) are on one scale")
    assert "log pi" not in note and "log-prob" not in note.replace("(logps/*)", "")
    assert plots.beta_note([low, load_run(make_run(tmp_path / "same", slope=0.01, config_extra=DIFFUSION), "same")]) \
        is None


def test_a_single_diffusion_run_labels_its_score_axes_as_denoising_errors(tmp_path, monkeypatch):
    """One diffusion run: one axis per panel (no split), y labels saying minus the denoising MSE, not log-probs; no
    note (one kind)."""
    diff = load_run(make_run(tmp_path / "diff", config_extra=DIFFUSION), "diff")
    axes, page = _axes(monkeypatch, [diff])
    assert {("Log-probs", "minus the denoising MSE (diffusion)"),
            ("Reward margin", "b (h_w - h_l), h = MSE_ref - MSE (diffusion)"),
            ("Implicit rewards", "b h, h = MSE_ref - MSE (diffusion)")} <= set(axes)
    assert "summed log-prob" not in {y for _, y in axes}
    assert plots.score_kind_note([diff]) is None and "the runs differ in kind" not in page
    two = load_run(make_run(tmp_path / "diff2", slope=0.01, config_extra=DIFFUSION), "diff2")
    assert plots.panel_groups([diff, two], "Log-probs", _panel("Log-probs")[2]) == {"": [0, 1]}   # one kind: one axis
    assert plots.score_kind_note([diff, two]) is None


def test_a_report_of_two_dpo_runs_is_unchanged(tmp_path, monkeypatch):
    """Two text runs of one kind: every panel's axes are what they were before this change (one axis per panel, the
    text y labels; the beta split by beta alone, titled "beta=0.5" as before), no kind note, and the beta note ends
    as before."""
    low = load_run(make_run(tmp_path / "low"), "low")
    dpo2 = load_run(make_run(tmp_path / "dpo2", slope=0.01), "dpo2")
    high = load_run(make_run(tmp_path / "high", config_extra={"beta": 0.5}), "high")
    axes, page = _axes(monkeypatch, [low, dpo2])
    drawn = [(t, y) for t, y, series in plots.PANELS if any(low.series(k)[0] for k, _, _ in series)]
    assert axes == drawn   # a panel per logged PANELS entry, in order, its title and y label as declared
    assert plots.score_kind_note([low, dpo2]) is None and "the runs differ in kind" not in page
    assert plots.panel_groups([low, high], "Reward margin", _panel("Reward margin")[2]) == {"beta=0.1": [0],
                                                                                            "beta=0.5": [1]}
    assert plots.panel_groups([low, high], "Log-probs", _panel("Log-probs")[2]) == {"": [0, 1]}
    assert plots.beta_note([low, high]).endswith("accuracies and log-probs are on one scale")
    vlm = load_run(make_run(tmp_path / "vlm", config_extra={"task": "vlm"}), "vlm")   # token log-probs too
    assert plots.panel_groups([low, vlm], "Log-probs", _panel("Log-probs")[2]) == {"": [0, 1]}
    assert plots.score_kind_note([low, vlm]) is None
