"""One name for Diffusion-DPO's implicit accuracy: training logs `implicit_accuracy` (it logged the diffusers script's
`implicit_acc` while `preflab eval --task diffusion` wrote `implicit_accuracy`, and eval.json both); eval.json writes
the one key; runs already on disk (metrics.jsonl, summary.json, eval.json under the old name) are read by `preflab
report` under today's name, so an old run and a new one share one row and one curve; metric_for_best_model with the
old name is refused naming the new one. Text runs keep TRL's names (rewards/accuracies), untouched."""
import json

import pytest
import torch

from preflab.errors import ConfigError
from preflab.eval.names import RENAMED_METRICS, current_metric_names, renamed_metric
from preflab.loops.best_model import BestModel
from preflab.loops.diffusion_eval import eval_json_metrics
from preflab.objectives import PairBatch, get_objective
from preflab.report.html import _eval_section, _final_metrics
from preflab.report.runs import load_run


def test_the_diffusion_objective_logs_implicit_accuracy_and_dpo_keeps_trls_names():
    """Errors (e_w, e_l) policy (0.1, 0.2), (0.3, 0.3); reference (0.15, 0.15), (0.3, 0.3): z = Delta_ref - Delta_theta
    = 0.1 > 0 (right), 0 (a tie, half): 0.75. Text DPO's metrics are TRL's, with no implicit_* key."""
    batch = PairBatch.from_sums(-torch.tensor([0.1, 0.3], dtype=torch.float64),
                                -torch.tensor([0.2, 0.3], dtype=torch.float64),
                                -torch.tensor([0.15, 0.3], dtype=torch.float64),
                                -torch.tensor([0.15, 0.3], dtype=torch.float64))
    metrics = get_objective("diffusion_dpo", beta=5000.0)(batch).metrics
    assert metrics["implicit_accuracy"].item() == 0.75 and "implicit_acc" not in metrics
    text = get_objective("dpo", beta=0.1)(batch).metrics
    assert "rewards/accuracies" in text and not any(k.startswith("implicit") for k in text)


def test_eval_json_has_one_implicit_accuracy_key_first_then_the_rest_in_order():
    logged = {"eval_loss": 0.6, "eval_rewards/accuracies": 0.5, "eval_implicit_accuracy": 0.75, "other": 1.0}
    got = eval_json_metrics(logged)
    assert list(got.items()) == [("implicit_accuracy", 0.75), ("loss", 0.6), ("rewards/accuracies", 0.5)]
    ppd = eval_json_metrics(logged, {"preference_accuracy/personalized": 0.25, "preference_accuracy/base": 0.5})
    assert list(ppd) == ["implicit_accuracy", "preference_accuracy/personalized", "preference_accuracy/base", "loss",
                         "rewards/accuracies"]
    # an objective without the metric (a loss that logs none): None, as before
    assert eval_json_metrics({"eval_loss": 0.5}) == {"implicit_accuracy": None, "loss": 0.5}


def test_old_names_are_read_under_todays_and_todays_wins_where_both_are_given():
    assert RENAMED_METRICS == {"implicit_acc": "implicit_accuracy"}
    assert renamed_metric("eval_implicit_acc") == "eval_implicit_accuracy"
    assert renamed_metric("implicit_acc") == "implicit_accuracy" and renamed_metric("implicit_accuracy") is None
    assert current_metric_names({"step": 2, "implicit_acc": 0.25, "eval_implicit_acc": 0.5, "loss": 1.0}) == {
        "step": 2, "implicit_accuracy": 0.25, "eval_implicit_accuracy": 0.5, "loss": 1.0}
    # an old eval.json wrote both keys: today's is kept, the old one dropped (not overwriting it)
    assert current_metric_names({"implicit_accuracy": 0.75, "implicit_acc": 0.1}) == {"implicit_accuracy": 0.75}


def _run(root, name, key, values, eval_metrics):
    run = root / name
    run.mkdir()
    (run / "config.yaml").write_text("task: diffusion\nloss_type: diffusion_dpo\nmodel_name_or_path: builtin:tiny-sd\n")
    rows = [{"step": s, "loss": 0.7, f"eval_{key}": v} for s, v in values]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"final_metrics": {f"eval_{key}": values[-1][1], "loss": 0.7}}))
    (run / "eval.json").write_text(json.dumps({"task": "diffusion", "num_pairs": 4, "metrics": eval_metrics}))
    return run


def test_report_reads_an_old_run_beside_a_new_one_under_one_name(tmp_path):
    old = load_run(_run(tmp_path, "old", "implicit_acc", [(1, 0.25), (2, 0.625)],
                        {"implicit_accuracy": 0.75, "implicit_acc": 0.75, "loss": 0.5}))
    new = load_run(_run(tmp_path, "new", "implicit_accuracy", [(1, 0.5), (2, 0.875)],
                        {"implicit_accuracy": 0.375, "loss": 0.25}))
    assert old.series("eval_implicit_accuracy") == ([1.0, 2.0], [0.25, 0.625])
    assert new.series("eval_implicit_accuracy") == ([1.0, 2.0], [0.5, 0.875])
    assert old.eval["metrics"] == {"implicit_accuracy": 0.75, "loss": 0.5}
    finals = _final_metrics([old, new])
    assert finals.count("<td>eval_implicit_accuracy</td>") == 1 and "implicit_acc<" not in finals
    row = finals.split("<td>eval_implicit_accuracy</td>")[1].split("</tr>")[0]
    assert row == '<td class="num">0.625</td><td class="num">0.875</td>'
    section = _eval_section([old, new])
    assert section.count("<td>implicit_accuracy</td>") == 1 and "<td>implicit_acc</td>" not in section
    row = section.split("<td>implicit_accuracy</td>")[1].split("</tr>")[0]
    assert row.startswith('<td class="num">0.75</td><td class="num">0.375</td>')


def test_metric_for_best_model_with_the_old_name_is_refused_naming_the_new_one():
    best = BestModel("implicit_acc", True)
    with pytest.raises(ConfigError, match=r"'eval_implicit_acc' is an earlier preflab's name of "
                                          r"'eval_implicit_accuracy': set metric_for_best_model: "
                                          r"eval_implicit_accuracy\."):
        best.update({"eval_loss": 0.5, "eval_implicit_accuracy": 0.75}, 1)
    assert BestModel("implicit_accuracy", True).update({"eval_implicit_accuracy": 0.75}, 1)
    with pytest.raises(ConfigError) as err:  # another missing name: no rename said
        BestModel("lossy", False).update({"eval_loss": 0.5}, 1)
    assert "earlier preflab" not in str(err.value)
