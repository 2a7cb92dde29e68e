"""Findings of the report trial (changes/report-trial.md): what the headline says when alignment did not work, a run
that did nothing, a run killed after its first eval, an empty log, a resumed run, a folder whose runs log no eval.

Each run here is a metrics.jsonl written as the Trainer writes it (eval rows: "eval_" keys, step 0 with
eval_on_start), so every asserted sentence and number is checked against the log it comes from."""
import json
import math
import sys
from pathlib import Path

import yaml

from preflab.report.headline import headline_notes, headline_rows, policy_is_reference_at
from preflab.report.html import write_report
from preflab.report.runs import load_run

sys.path.insert(0, str(Path(__file__).parent))
from report_runs import make_run  # noqa: E402


def _eval(step, ranking, implicit, drift_chosen, drift_rejected, loss=0.6931471805599453):
    """An eval row of a DPO run with a reference (the keys the headline reads)."""
    return {"step": step, "eval_loss": loss, "eval_ranking_accuracy": ranking,
            "eval_reference_ranking_accuracy": 0.3076923076923077, "eval_rewards/accuracies": implicit,
            "eval_rewards/margins": 0.1 * (drift_chosen - drift_rejected),
            "eval_logps_drift/chosen": drift_chosen, "eval_logps_drift/rejected": drift_rejected}


def _run(path, rows, config=None, summary=None):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "config.yaml").write_text(yaml.safe_dump({"task": "dpo", "loss_type": "sigmoid", "beta": 0.1,
                                                      "learning_rate": 5e-4, "eval_fraction": 0.1, "eval_steps": 10,
                                                      **(config or {})}))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def _headline_html(path, tmp_path) -> str:
    html = write_report([str(path)], str(tmp_path / "report.html")).read_text()
    return html[html.index("<h2>Headline</h2>"):html.index("<h2>Training curves</h2>")]


def test_a_run_whose_ranking_accuracy_fell_below_the_reference_is_said_so(tmp_path):
    """The trial's quickstart run (eval_on_start): R 0.3077 -> 0.2692 beside the reference's 0.3077, implicit reward
    accuracy 0 -> 0.8846. The headline showed the numbers alone: a reader saw 'accuracy 0 -> 0.88' and shipped.
    Now two notes: the 0 at step 0 is the tie rule on a policy equal to its reference, and R fell below the
    reference's although the implicit reward accuracy rose."""
    path = _run(tmp_path / "A", [_eval(0, 0.3076923076923077, 0.0, 0.0, 0.0),
                                 {"step": 5, "loss": 0.68, "rewards/accuracies": 0.5},
                                 _eval(10, 0.2692307692307692, 0.8846153846153846, 1.3634, 0.3418),
                                 _eval(20, 0.2692307692307692, 0.8846153846153846, 1.8714, 0.5869, loss=0.6332)])
    run = load_run(path)
    assert policy_is_reference_at(run, 0.0) and not policy_is_reference_at(run, 20.0)
    assert headline_notes(run, headline_rows(run)) == [
        "eval_rewards/accuracies is 0 at step 0 by definition, not a measurement: the policy there is the reference, "
        "so every implicit reward beta (log pi - log pi_ref) is 0, and TRL's accuracy (chosen reward > rejected "
        "reward) counts each tie as wrong",
        "held-out ranking accuracy R (0.2692, step 20) is below the reference model's (0.3077): the policy ranks "
        "fewer pairs right (log pi(chosen) >= log pi(rejected)) than the model it started from, although its "
        "implicit reward accuracy is 0.8846 (pairs whose chosen log-ratio rose more than the rejected one's, not "
        "pairs ranked right)"]
    head = _headline_html(path, tmp_path)
    assert "A: held-out ranking accuracy R (0.2692, step 20) is below the reference model&#x27;s (0.3077)" in head


def test_eval_json_ranking_accuracy_below_the_reference_is_said_so(tmp_path):
    """eval.json's R (2/3 on 3 pairs) below its reference's R (0.9): the note names eval.json and its pair count."""
    path = make_run(tmp_path / "run", eval_json=True)
    result = json.loads((path / "eval.json").read_text())
    result["metrics"]["reference_ranking_accuracy"] = 0.9
    (path / "eval.json").write_text(json.dumps(result))
    run = load_run(path)
    assert [n for n in headline_notes(run, headline_rows(run)) if n.startswith("eval.json")] == [
        "eval.json ranking accuracy R (0.6667, eval.json, 3 pairs) is below the reference model's (0.9): the policy "
        "ranks fewer pairs right (log pi(chosen) >= log pi(rejected)) than the model it started from"]


def test_a_run_that_did_nothing_is_said_to_have_not_moved(tmp_path):
    """learning_rate 1e-12: every eval row equal to the step-0 one (drift exactly 0, loss log 2, R the reference's).
    The headline showed 0.6931 -> 0.6931 and 0 -> 0 without a word; now it says the policy did not move."""
    path = _run(tmp_path / "C", [_eval(s, 0.3076923076923077, 0.0, 0.0, 0.0) for s in (0, 10, 20)],
                config={"learning_rate": 1e-12})
    run = load_run(path)
    assert headline_notes(run, headline_rows(run)) == [
        "the policy did not move: at its last eval (step 20) its held-out log-probs are the reference model's (mean "
        "log pi - log pi_ref 0 chosen, 0 rejected), so every eval number above is the starting model's: training "
        "changed nothing it measures (learning_rate 1e-12)",
        "eval_rewards/accuracies is 0 at step 0 and 20 by definition, not a measurement: the policy there is the "
        "reference, so every implicit reward beta (log pi - log pi_ref) is 0, and TRL's accuracy (chosen reward > "
        "rejected reward) counts each tie as wrong"]
    # a drift of 2e-6 nats is a move: no note that it did not, and its 0 at step 20 is a measurement (no tie note);
    # an R equal to the reference's is not below it
    moved = _run(tmp_path / "moved", [_eval(0, 0.3076923076923077, 0.0, 0.0, 0.0),
                                      _eval(20, 0.3076923076923077, 0.0, 2e-6, 0.0)])
    assert headline_notes(load_run(moved), headline_rows(load_run(moved))) == [
        "eval_rewards/accuracies is 0 at step 0 by definition, not a measurement: the policy there is the reference, "
        "so every implicit reward beta (log pi - log pi_ref) is 0, and TRL's accuracy (chosen reward > rejected "
        "reward) counts each tie as wrong"]


def test_a_run_killed_after_its_start_eval_shows_it_as_before_not_after(tmp_path):
    """A run stopped after its eval_on_start row: the headline put the starting model's numbers under 'after' (with
    'before' empty). Now they are 'before' (step 0) and 'after' is empty, with a note."""
    path = _run(tmp_path / "one", [_eval(0, 0.3076923076923077, 0.0, 0.0, 0.0)])
    run = load_run(path)
    rows = {r["metric"]: r for r in headline_rows(run)}
    assert rows["eval_ranking_accuracy"]["before"] == ("step 0", 0.3076923076923077)
    assert rows["eval_ranking_accuracy"]["after"] is None
    assert headline_notes(run, headline_rows(run))[0] == (
        "its only eval is at step 0, the starting model (eval_on_start): no held-out number after training yet")
    head = _headline_html(path, tmp_path)
    assert ('<td>eval_ranking_accuracy</td><td class="num">0.3077 <small>(step 0)</small></td><td>–</td>'
            '<td class="num">0.3077 <small>(the reference model)</small></td>') in head


def test_an_empty_log_of_a_run_with_an_eval_set_is_not_told_to_set_one(tmp_path):
    """An empty metrics.jsonl under a config with eval_fraction 0.1 and eval_steps 10 was told to 'set eval_steps
    and an eval set'; the empty log itself went unsaid. Now the report says the log is empty and that the run has
    not reached its first evaluation."""
    path = _run(tmp_path / "empty", [])
    notes = load_run(path).missing
    assert notes[0] == ("metrics.jsonl holds no rows: the run has logged nothing (it stopped, or is still running, "
                        "before its first logged step)")
    assert ("no eval rows in metrics.jsonl yet: config.yaml sets an eval set (eval_fraction 0.1), evaluated every "
            "10 steps and at the end of training; the run has not reached an evaluation (it has logged no step)"
            ) in notes
    assert "no per-pair margins (pair_margins.jsonl) yet: a preference run writes them at each eval step, and this " \
           "run has not logged one" in notes
    assert not any("set eval_steps" in n for n in notes)
    started = _run(tmp_path / "started", [{"step": 5, "loss": 0.69}],
                   config={"eval_steps": 0, "eval_fraction": 0.0, "eval_dataset_name": "held.jsonl"})
    assert ("no eval rows in metrics.jsonl yet: config.yaml sets an eval set (eval_dataset_name held.jsonl), "
            "evaluated at the end of training; the run has not reached an evaluation (its last logged step is 5)"
            ) in load_run(started).missing


def test_a_resumed_run_says_its_runtime_and_examples_count_from_the_resume(tmp_path):
    """A run killed at step 23 and resumed from checkpoint-20: summary.json's runtime_s 3.32 and
    train_examples_seen 160 are the 20 steps after the resume, shown as the run's without a word about the
    resume. Now a note says so; the curves keep every step (the last value of a step logged twice wins)."""
    rows = [{"step": s, "loss": 0.7 - 0.001 * s} for s in range(1, 21)]
    rows += [{"step": s, "loss": 0.5 - 0.001 * s} for s in range(21, 41)]
    path = _run(tmp_path / "G", rows, summary={"global_step": 40, "resumed_from_step": 20, "runtime_s": 3.3199,
                                               "train_examples_seen": 160, "final_metrics": {"loss": 0.46}})
    run = load_run(path)
    assert ("resumed from step 20 (summary.json resumed_from_step): its runtime_s (3.32 s) and train_examples_seen "
            "(160) count the steps after the resume only; the curves and the headline read metrics.jsonl, which "
            "holds the steps before the resume too") in run.missing
    assert run.series("loss")[0] == [float(s) for s in range(1, 41)]
    fresh = _run(tmp_path / "fresh", rows, summary={"global_step": 40, "resumed_from_step": None, "runtime_s": 6.0})
    assert not any(n.startswith("resumed") for n in load_run(fresh).missing)


def test_a_folder_whose_runs_log_no_eval_heads_with_its_own_result(tmp_path):
    """The vlm demo's folder: true reward 0.2344 -> 1 in its summary.json, no eval rows in its sft/dpo runs. The
    headline said only 'sft, dpo: no held-out metric to judge the run by' under an empty table; now the folder's
    before / after is the headline's first row and the note points to it."""
    folder = tmp_path / "vlm"
    for name in ("sft", "dpo"):
        _run(folder / name, [{"step": 10, "loss": 0.5}], config={"task": "vlm", "eval_fraction": 0.0},
             summary={"global_step": 10})
    (folder / "summary.json").write_text(json.dumps({"task": "shape-colour", "true_reward_before": 0.234375,
                                                     "true_reward_after": 1.0, "heldout_images": 64}))
    head = _headline_html(folder, tmp_path)
    assert ('<td>vlm (folder)</td><td>true_reward</td><td class="num">0.2344 <small>(before, see meaning)</small>'
            '</td><td class="num">1 <small>(after, see meaning)</small></td><td>–</td>') in head
    assert "sft, dpo: no held-out metric of its own (no eval rows in metrics.jsonl); the folder&#x27;s row above, " \
           "from its summary.json, judges the runs together" in head


def test_the_run_list_names_the_objective_a_run_used(tmp_path):
    """An SFT run was listed as 'loss_type sigmoid' (config.yaml's unused default); an online run without its
    trainer; a weighted list as a Python list."""
    from preflab.report.html import _purpose

    def purpose(config):
        return _purpose(load_run(_run(tmp_path / str(len(list(tmp_path.iterdir()))), [], config=config)))
    assert purpose({"task": "sft", "model_name_or_path": "m"}) == " (task sft, model_name_or_path m)"
    assert purpose({"task": "online", "trainer": "grpo"}) == " (task online, trainer grpo, loss_type sigmoid)"
    assert purpose({"task": "vlm", "loss_type": ["sigmoid", "sft"], "trainer": "grpo"}) == \
        " (task vlm, loss_type sigmoid + sft)"


def test_a_last_eval_logged_non_finite_is_the_after_not_an_older_finite_value(tmp_path):
    """A run whose eval at step 10 logged eval_loss NaN and R null (a diverged run): the headline's 'after' was the
    step-0 value (the last finite one), so a diverged run read as 'R 0.3, loss 0.69'. Now 'after' is nan at step 10,
    the step the notes above the curves name."""
    path = _run(tmp_path / "diverged", [{"step": 0, "eval_loss": 0.69, "eval_ranking_accuracy": 0.3,
                                         "eval_reference_ranking_accuracy": 0.3},
                                        {"step": 5, "loss": None},
                                        {"step": 10, "eval_loss": None, "eval_ranking_accuracy": None,
                                         "eval_reference_ranking_accuracy": 0.3}])
    rows = {r["metric"]: r for r in headline_rows(load_run(path))}
    for key, start in (("eval_loss", 0.69), ("eval_ranking_accuracy", 0.3)):
        assert rows[key]["before"] == ("step 0", start)
        assert rows[key]["after"][0] == "step 10" and math.isnan(rows[key]["after"][1])
    head = _headline_html(path, tmp_path)
    assert '<td>eval_loss</td><td class="num">0.69 <small>(step 0)</small></td><td class="num">nan <small>(step 10)' \
           '</small></td>' in head
    assert "its only eval is at step 0" not in head
