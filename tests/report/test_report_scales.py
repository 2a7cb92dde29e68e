"""The report's scales and pointers (second online user trial): runs of different beta, an online run's win rate,
and the `preflab eval` a run without eval.json is pointed to, per task."""
import json
import sys
from pathlib import Path

from preflab.report import plots
from preflab.report.html import render_report
from preflab.report.runs import load_run

sys.path.insert(0, str(Path(__file__).parent))
from report_runs import make_run  # noqa: E402


def _figures(monkeypatch) -> list:
    """Every Figure the report draws (to_data_uri replaced by a recorder), to read its axes."""
    drawn = []
    monkeypatch.setattr(plots, "to_data_uri", lambda fig: drawn.append(fig) or "data:image/png;base64,")
    return drawn


def test_runs_of_different_beta_get_an_implicit_reward_axis_each_and_a_note(tmp_path, monkeypatch):
    """rewards/margins and rewards/chosen are beta * (log pi - log pi_ref): a beta=0.1 run and a beta=0.5 run were
    overlaid on one axis with nothing said, the second's values 5x larger for the same log-ratio. Each beta now gets
    its own axis (titled by it), the margin histograms say the run's beta, and the report says why."""
    low = load_run(make_run(tmp_path / "low", margins=True), "low")
    high = load_run(make_run(tmp_path / "high", margins=True, config_extra={"beta": 0.5}), "high")
    same = load_run(make_run(tmp_path / "same", slope=0.01), "same")
    margin = next(p for p in plots.PANELS if p[0] == "Reward margin")
    implicit = next(p for p in plots.PANELS if p[0] == "Implicit rewards")
    assert plots.panel_groups([low, high, same], "Reward margin", margin[2]) == {"beta=0.1": [0, 2], "beta=0.5": [1]}
    assert plots.panel_groups([low, high], "Implicit rewards", implicit[2]) == {"beta=0.1": [0], "beta=0.5": [1]}
    assert plots.panel_groups([low, same], "Reward margin", margin[2]) == {"": [0, 1]}    # one beta: one axis
    assert plots.panel_groups([low, high], "Accuracies", plots.PANELS[2][2]) == {"": [0, 1]}   # not beta-scaled
    note = ("the runs differ in beta (low beta=0.1, high beta=0.5): the reward-margin and implicit-reward panels "
            "plot beta * (log pi - log pi_ref), so each beta gets its own axis and their values are not comparable "
            "across runs (divide by beta for the log-ratio); accuracies and log-probs are on one scale")
    assert plots.beta_note([low, high]) == note and plots.beta_note([low, same]) is None
    drawn = _figures(monkeypatch)
    html = render_report([low, high])
    assert note in html
    titles = [ax.get_title() for fig in drawn for ax in fig.axes]
    assert {"Reward margin: beta=0.1", "Reward margin: beta=0.5", "Implicit rewards: beta=0.1",
            "Implicit rewards: beta=0.5", "low: reward margins (beta=0.1)", "high: reward margins (beta=0.5)"} \
        <= set(titles)


def _online_run(path, online_task="demo", eval_rows=True):
    """An online run's metrics.jsonl: sampled reward on a reward model's scale (about 4), and eval rows with the
    judges' reward and the win rate vs the starting policy (a share in [0, 1])."""
    path.mkdir(parents=True)
    rows = [{"step": s, "reward": 3.0 + 0.2 * s, "kl": 0.01 * s, "loss": 0.6} for s in range(1, 9)]
    if eval_rows:
        rows += [{"step": s, "eval_reward": 3.5 + 0.1 * s, "eval_win_rate_vs_reference": 0.5 + 0.05 * s}
                 for s in (4, 8)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "config.yaml").write_text(f"task: online\nonline_task: {online_task}\ntrainer: grpo\nbeta: 0.04\n")
    (path / "summary.json").write_text(json.dumps({"global_step": 8}))
    return path


def test_online_win_rate_gets_its_own_unit_axis_not_the_reward_one(tmp_path, monkeypatch):
    """eval_win_rate_vs_reference (a share of prompts) was drawn on the "Online reward" axis beside rewards of a
    reward model's scale: at reward 4 a win rate of 0.9 read as near 0. It has its own panel, y axis [0, 1]."""
    run = load_run(_online_run(tmp_path / "grpo"), "grpo")
    drawn = _figures(monkeypatch)
    render_report([run])
    axes = {ax.get_title(): ax for fig in drawn for ax in fig.axes}
    reward, win = axes["Online reward"], axes["Win rate vs reference (online eval)"]
    assert [line.get_label() for line in reward.get_lines()] == ["sampled completions (train)",
                                                                  "judges' reward, greedy (eval)"]
    assert [list(line.get_ydata()) for line in win.get_lines()] == [[0.7, 0.9]]
    assert win.get_ylim() == (-0.02, 1.02)


def test_no_eval_json_note_names_the_eval_that_fits_each_task(tmp_path):
    """The "no eval.json" note asked an SFT run for the preference pair diagnostics (`preflab eval RUN --data
    HELDOUT --reference REF`) and a text online run for a --reference (its start already is the default reference)
    without the judge its win rate needs. Now: SFT none (its eval rows' eval_loss is its held-out measure); a text
    online run the command with a judge; an image-prompt online run none (user trial 22); a DPO run as before."""
    sft = load_run(make_run(tmp_path / "sft", config_extra={"task": "sft", "loss_type": None}), "sft")
    dpo = load_run(make_run(tmp_path / "dpo"), "dpo")
    online = load_run(_online_run(tmp_path / "online"), "online")
    vision = load_run(_online_run(tmp_path / "vision", "vision_dataset"), "vision")

    def said(run):
        return [m for m in run.missing if m.startswith("no eval.json")]
    assert said(sft) == []
    # a DPO run: no --reference placeholder (the eval's default is the reference the run trained against) and the
    # win rate only with a judge (the report trial: the note promised a win rate the command did not compute)
    assert said(dpo) == [f"no eval.json: run `preflab eval {tmp_path / 'dpo'} --data HELDOUT [--reward-fn "
                         "MODULE:FUNCTION]` for ranking accuracy, idealized ranking accuracy and 3D metrics against "
                         "the reference the run trained against (the default; --reference DIR for another), and with "
                         "a judge (--reward-fn, --reward-model or --judge) the win rate"]
    assert said(online) == [f"no eval.json: run `preflab eval {tmp_path / 'online'} --data HELDOUT_PAIRS --reward-fn "
                            "demo_true_reward` (the judge the run trained against) for the greedy win rate "
                            "against the starting policy (the default reference, the run's model_name_or_path) and "
                            "ranking accuracy on held-out pairs"]
    # an image-prompt online run: no eval fits (every `preflab eval` refuses it; the note named `--task vlm`, which
    # was refused): one note says where its measure is, and no "set eval_steps and an eval set" (refused there)
    assert said(vision) == []
    assert [m for m in vision.missing if "eval" in m] == [
        "an image-text GRPO run (online_task: vision_dataset) has no held-out evaluation: the run evaluates nothing "
        "(eval_steps and an eval set are refused) and `preflab eval` refuses it; its measure is the judges' "
        "(its reward_funcs) reward on the training prompts, `reward` and `rewards/<judge>/mean` in the curves"]
    assert "Held-out evaluation" not in render_report([sft])            # nothing to point an SFT run to
    assert ("no eval.json in any run: run `preflab eval RUN_DIR --data HELDOUT_PAIRS --reward-fn demo_true_reward` "
            "and re-run") in render_report([online])
    assert ("no eval.json in any run: run `preflab eval RUN_DIR --data HELDOUT [--reward-fn MODULE:FUNCTION]` for "
            "dpo; `preflab "
            "eval RUN_DIR --data HELDOUT_PAIRS --reward-fn demo_true_reward` for online and re-run") \
        in render_report([sft, dpo, online])


def test_online_kl_of_pair_recipes_and_of_the_grpo_family_get_their_own_axis_and_label(tmp_path, monkeypatch):
    """`kl` is the summed log-ratio S_theta - S_ref per completion in a pair recipe (online_dpo) and TRL's per-token
    k3 estimate (a token mean) in the GRPO family: both were drawn on one axis labelled "S_theta - S_ref"."""
    grpo = _online_run(tmp_path / "grpo")
    with open(grpo / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 1, "frac_reward_zero_std": 0.25}) + "\n")
    dpo = _online_run(tmp_path / "dpo")
    runs = [load_run(grpo, "grpo"), load_run(dpo, "dpo")]
    kl = next(p for p in plots.ONLINE_PANELS if p[0] == "KL to the reference (online)")
    assert plots.panel_groups(runs, kl[0], kl[2]) == {"groups": [0], "pairs": [1]}
    drawn = _figures(monkeypatch)
    render_report(runs)
    labels = {ax.get_title(): ax.get_ylabel() for fig in drawn for ax in fig.axes}
    assert labels["KL to the reference (online): groups"] == "per-token k3 estimate, token mean (GRPO family)"
    assert labels["KL to the reference (online): pairs"] == "S_theta - S_ref per completion (pair recipes)"
    drawn.clear()
    render_report(runs[:1])                                   # one run: its own label on the one axis
    assert {ax.get_title(): ax.get_ylabel() for fig in drawn for ax in fig.axes}["KL to the reference (online)"] \
        == "per-token k3 estimate, token mean (GRPO family)"
