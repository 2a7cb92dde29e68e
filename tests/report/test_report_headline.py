"""Report findings of the run-report user trial (changes/trial-report.md): the headline first, the online counts."""
import json
import sys
from pathlib import Path

from preflab.report.headline import comparisons, headline_rows
from preflab.report.html import write_report
from preflab.report.runs import load_run

sys.path.insert(0, str(Path(__file__).parent))
from report_runs import make_run  # noqa: E402


def test_report_opens_with_the_held_out_before_after_and_the_reference_baseline(tmp_path):
    """The report showed no answer to 'did it work' before ten panels of curves: the held-out numbers were only in
    the final-metrics table (last value, no before, no baseline). Now a headline table comes first: first vs last
    eval step, with the reference model's ranking accuracy beside the policy's, and a note that the first eval
    was after training had started."""
    path = make_run(tmp_path / "dpo")              # eval rows at steps 4, 8, 12; R 0.4, then 0.45 at the last step
    with open(path / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 12, "eval_reference_ranking_accuracy": 0.55}) + "\n")
    rows = {r["metric"]: r for r in headline_rows(load_run(path))}
    assert list(rows) == ["eval_ranking_accuracy", "eval_rewards/accuracies", "eval_loss"]
    assert rows["eval_ranking_accuracy"]["before"] == ("step 4", 0.4)
    assert rows["eval_ranking_accuracy"]["after"] == ("step 12", 0.45)
    assert rows["eval_ranking_accuracy"]["baseline"] == [("the reference model", 0.55)]
    html = write_report([str(path)], str(tmp_path / "r.html")).read_text()
    head = html[html.index("<h2>Headline</h2>"):html.index("<h2>Training curves</h2>")]
    assert ('<td>eval_ranking_accuracy</td><td class="num">0.4 <small>(step 4)</small></td><td class="num">0.45 '
            '<small>(step 12)</small></td><td class="num">0.55 <small>(the reference model)</small></td>') in head
    assert "its first eval was at step 4, after training had started, so &#x27;before&#x27; is not the starting " \
           "model" in head


def test_headline_shows_a_runs_own_before_after_first_in_order(tmp_path):
    """An online demo run's summary.json true_reward_before / _after came after every curve and in alphabetical
    order (after above before); now it heads the report, before over after, and the eval row of the same number
    is not repeated."""
    path = make_run(tmp_path / "online", config_extra={"task": "online"})
    summary = json.loads((path / "summary.json").read_text())
    (path / "summary.json").write_text(json.dumps({**summary, "true_reward_before": 0.2, "true_reward_after": 0.9}))
    with open(path / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 12, "eval_true_reward": 0.9, "eval_win_rate_vs_reference": 0.75}) + "\n")
    rows = headline_rows(load_run(path))
    assert [(r["metric"], r["before"], r["after"]) for r in rows] == [
        ("true_reward", ("before training", 0.2), ("after training", 0.9)),
        ("eval_win_rate_vs_reference", None, ("step 12", 0.75))]
    html = write_report([str(path)], str(tmp_path / "r.html")).read_text()
    assert html.index("<h2>Headline</h2>") < html.index("<h2>Result (summary.json)</h2>") \
        < html.index("<h2>Training curves</h2>")
    result = html[html.index("<h2>Result (summary.json)</h2>"):]
    assert result.index("<td>true_reward_before</td>") < result.index("<td>true_reward_after</td>")


def test_report_notes_the_online_completions_cut_empty_or_unscored_and_the_steps_that_trained_nothing(tmp_path):
    """summary.json's online counts (completions cut at max_completion_length, empty, dropped by the judges; empty
    steps; rounds without signal) were printed once on the terminal and never reached the report."""
    path = make_run(tmp_path / "online", config_extra={"task": "online"})
    summary = json.loads((path / "summary.json").read_text())
    summary["online"] = {"rounds": 3, "empty_steps": 2, "empty_completions": 0, "judge_dropped": 5,
                         "completions": 384, "truncated_completions": 4, "no_signal_rounds": 1}
    (path / "summary.json").write_text(json.dumps(summary))
    notes = [n for n in load_run(path).missing if n.startswith("generation:")]
    assert notes == [
        "generation: of 384 completions, 4 reached max_completion_length without EOS, so the judges scored cut-off "
        "text (completions/clipped_ratio); 5 got no score from the judges and were left out of training "
        "(judge/dropped)",
        "generation: 2 step(s) had no training examples (a round without pairs or groups) and were zero-gradient "
        "(online.empty_steps)",
        "generation: 1 of 3 rounds gave every completion of every prompt the same reward: every advantage 0, so "
        "they trained no policy term (at most a KL term or entropy bonus; online.no_signal_rounds)"]
    html = write_report([str(path)], str(tmp_path / "r.html")).read_text()
    assert "online: generation: of 384 completions, 4 reached max_completion_length" in html


def test_token_accuracy_has_its_own_panel_and_an_sft_run_is_told_what_its_eval_rows_would_log(tmp_path):
    """An SFT run's mean_token_accuracy was drawn as "token acc. chosen" on an axis labelled "fraction of pairs"
    (it has neither pairs nor chosen responses), and its note without eval rows promised ranking accuracy and
    log-prob drift, which an SFT eval never logs."""
    from preflab.report.plots import PANELS, TOKEN_PANELS, curve_panel

    path = make_run(tmp_path / "sft", config_extra={"task": "sft", "loss_type": None})
    rows = [{"step": s, "loss": 2.0 - 0.1 * s, "mean_token_accuracy": 0.1 * s} for s in range(1, 5)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = load_run(path)
    accuracies = next(p for p in PANELS if p[0] == "Accuracies")
    assert all("token" not in key for key, _, _ in accuracies[2]) and accuracies[1] == "fraction of pairs"
    assert curve_panel([run], *accuracies) is None
    tokens = next(p for p in TOKEN_PANELS if p[0] == "Next-token accuracy")
    assert tokens[1] == "fraction of tokens with argmax = target" and curve_panel([run], *tokens) is not None
    assert ("no eval rows in metrics.jsonl: set eval_steps and an eval set (eval_fraction or eval_dataset_name) to "
            "log the held-out loss and next-token accuracy (eval_loss, eval_mean_token_accuracy)") in run.missing


def test_losses_of_different_objectives_get_an_axis_each_and_diffusion_log_probs_are_named(tmp_path):
    """The demo's report drew the SFT stage's token NLL (4.5 -> 0.1) and the DPO stage's loss (0.65 -> 0.07) on one
    axis labelled "loss", flattening DPO's, and DPO beside IPO read as comparable values; a diffusion run's
    logps/* (minus the denoising MSE) were labelled "summed log-prob". Train and eval lines of several runs now
    differ by marker too (eval carries one), since line styles there are per series."""
    from preflab.report.plots import PANELS, panel_groups, panel_ylabel

    loss = next(p for p in PANELS if p[0] == "Loss")
    sft = load_run(make_run(tmp_path / "sft", config_extra={"task": "sft", "loss_type": None}), "sft")
    dpo = load_run(make_run(tmp_path / "dpo"), "dpo")
    ipo = load_run(make_run(tmp_path / "ipo", loss_type="ipo"), "ipo")
    dpo2 = load_run(make_run(tmp_path / "dpo2", slope=0.01), "dpo2")
    assert panel_groups([sft, dpo], "Loss", loss[2]) == {"sft": [0], "dpo (sigmoid)": [1]}
    assert panel_groups([dpo, ipo, dpo2], "Loss", loss[2]) == {"dpo (sigmoid)": [0, 2], "dpo (ipo)": [1]}
    assert panel_groups([dpo, dpo2], "Loss", loss[2]) == {"": [0, 1]}            # one objective: one axis
    mixed = load_run(make_run(tmp_path / "mixed", loss_type=["sigmoid", "sft"]), "mixed")
    assert panel_groups([sft, mixed], "Loss", loss[2]) == {"sft": [0], "dpo (sigmoid + sft)": [1]}
    assert panel_groups([sft, dpo], "Gradient norm", [("grad_norm", "train", "")]) == {"": [0, 1]}
    diffusion = load_run(make_run(tmp_path / "diff", config_extra={"task": "diffusion"}), "diff")
    assert panel_ylabel("Log-probs", "summed log-prob", [diffusion]) == "minus the denoising MSE (diffusion)"
    assert panel_ylabel("Log-probs", "summed log-prob", [dpo, diffusion]) == \
        "summed log-prob; minus the denoising MSE (diffusion)"
    assert panel_ylabel("Log-probs", "summed log-prob", [dpo]) == "summed log-prob"
    from matplotlib.figure import Figure

    from preflab.report.plots import _draw_run
    accuracies = next(p for p in PANELS if p[0] == "Accuracies")
    ax = Figure().add_subplot()
    _draw_run(ax, dpo, 0, accuracies[2], many=True)
    assert {line.get_label(): line.get_marker() for line in ax.lines} == {
        "dpo: reward acc. (train)": "None", "dpo: reward acc. (eval)": "o", "dpo: ranking acc. R (eval)": "o",
        "dpo: ranking acc. R~ (eval)": "o", "dpo: non-finite step skipped": "None"}


def test_a_recipe_headline_says_what_its_before_is_and_no_eval_json_is_asked_for(tmp_path):
    """RAFT's metric_before is the model after its SFT stage (summary.json "baseline" says so); the report must not
    call it "before training", and names the metric and the numbers it gives to compare with (untrained, control). A recipe's report no longer
    asks for `preflab eval` (docs/tools.md), yet its eval section still did."""
    out = tmp_path / "raft"
    out.mkdir()
    (out / "config.yaml").write_text("task: raft_ladder\n")
    (out / "summary.json").write_text(json.dumps({
        "recipe": "raft_ladder", "metric_name": "program_accuracy_isomorphism", "metric_before": 0.484375,
        "metric_after": 0.59375, "metric_untrained": 0.0, "control_after": 0.5,
        "baseline": "the same model after the RAFT SFT stage, before DPO"}))
    [row] = headline_rows(load_run(out))
    assert row == {"metric": "metric (program_accuracy_isomorphism)",
                   "meaning": "summary.json; before: the same model after the RAFT SFT stage, before DPO",
                   "before": ("before, see meaning", 0.484375), "after": ("after training", 0.59375),
                   "baseline": [("untrained", 0.0), ("control", 0.5)]}
    assert comparisons({"accuracy_before": 0.2, "accuracy_after": 0.6, "control_accuracy_after": 0.7,
                        "metric_optimum": 1.0}, "accuracy") == [("control", 0.7)]      # OTC's control beats it
    html = write_report([str(out)], str(tmp_path / "r.html")).read_text()
    assert '0 <small>(untrained)</small>; 0.5 <small>(control)</small>' in html
    assert "Held-out evaluation" not in html and "preflab eval" not in html and "before training" not in html


def test_report_says_a_train_point_is_a_logging_window_mean(tmp_path):
    """A train point is the mean over logging_steps optimizer steps (runlog.average_results): two runs logged every
    1 and every 10 steps look differently smooth, and nothing in the report said why."""
    one = make_run(tmp_path / "one", config_extra={"logging_steps": 1})
    ten = make_run(tmp_path / "ten", config_extra={"logging_steps": 10})
    html = write_report([str(one), str(ten)], str(tmp_path / "r.html")).read_text()
    assert ("A train point is the mean over its logging window (one: logging_steps=1, ten: logging_steps=10), not "
            "smoothed further; an eval point (dashed or marked) is the whole eval set at that step.") in html
    html = write_report([str(one)], str(tmp_path / "o.html")).read_text()
    assert "(logging_steps=1 optimizer steps)" in html


def test_headline_carries_the_eval_json_ranking_accuracy_beside_the_reference_and_the_win_rate(tmp_path):
    """`preflab eval`'s ranking accuracy (with the reference's in the same file) and win rate were only in the
    evaluation section's long table, below every curve."""
    path = make_run(tmp_path / "run", eval_json=True)
    result = json.loads((path / "eval.json").read_text())
    result["metrics"]["reference_ranking_accuracy"] = 0.25
    (path / "eval.json").write_text(json.dumps(result))
    rows = [r for r in headline_rows(load_run(path)) if r["after"][0].startswith("eval.json")]
    assert [(r["metric"], r["after"], r["baseline"]) for r in rows] == [
        ("ranking_accuracy", ("eval.json, 3 pairs", 2 / 3), [("the reference model", 0.25)]),
        ("win_rate", ("eval.json, 2 wins, 1 ties (each counted 1/2), 1 losses of 4 prompts, interval 0.3 to 0.86",
                      0.625), None)]
    diffusion = make_run(tmp_path / "diff", config_extra={"task": "diffusion"})   # as `preflab eval --task diffusion`
    (diffusion / "eval.json").write_text(json.dumps({
        "task": "diffusion", "num_pairs": 8, "metrics": {"implicit_accuracy": 0.625, "reward/policy": -1.56,
                                                         "reward/reference": -1.536, "win_rate": 0.5},
        "win_rate": {"win_rate": 0.5, "ci_low": 0.2152, "ci_high": 0.7848, "n": 8}}))
    rows = [r for r in headline_rows(load_run(diffusion)) if r["after"][0].startswith("eval.json")]
    assert [(r["metric"], r["after"], r["baseline"]) for r in rows] == [
        ("implicit_accuracy", ("eval.json, 8 pairs", 0.625), None),
        ("reward/policy", ("eval.json, 8 prompts", -1.56), [("the reference model", -1.536)]),
        ("win_rate", ("eval.json, 8 prompts, interval 0.215 to 0.785", 0.5), None)]


def test_step_axis_has_whole_steps_only():
    """A 4-step run (the VLM and diffusion examples) had x ticks at 1.5, 2.5, 3.5: steps that do not exist."""
    from matplotlib.figure import Figure

    from preflab.report.plots import step_axis
    ax = Figure().add_subplot()
    ax.plot([1, 2, 3, 4], [0.0, 0.25, 0.25, 1.0])
    step_axis(ax)
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 4]
    assert ticks == [1.0, 2.0, 3.0, 4.0]
    ax = Figure().add_subplot()
    ax.plot([20, 40, 60, 80], [0.0, 0.25, 0.25, 1.0])
    step_axis(ax)
    assert all(t % 10 == 0 for t in ax.get_xticks())                   # round steps, not 24, 32, 40, ...


def test_headline_pairs_only_a_before_and_after_that_are_both_numbers(tmp_path):
    """summary.json's X_before / X_after make a headline row only when both are numbers: a before without an after
    (a run stopped before its final measurement wrote null) or with a boolean after is no before-vs-after."""
    from preflab.report.runs import RunData

    run = RunData("r", tmp_path, summary={"reward_before": 0.1, "reward_after": None, "score_before": 2.0,
                                          "accuracy_before": 0.4, "accuracy_after": 0.6, "flag_before": 1,
                                          "flag_after": True}, config={"task": "online"})
    rows = headline_rows(run)
    assert [(r["metric"], r["before"][1], r["after"][1]) for r in rows] == [("accuracy", 0.4, 0.6)]

