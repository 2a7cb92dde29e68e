"""User trial of the diagnostics, second pass ("did alignment actually work?"): preflab eval's numbers against hand
computations and the messages a researcher gets on a wrong --task, each pinned with what the old code printed."""
import json
import math

import pytest
import yaml

from preflab.cli import main
from preflab.eval.cli import format_summary
from preflab.eval.ranking import ranking_report
from preflab.eval.run import EvalOptions, evaluate_models
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer


def _printed(summary: str) -> dict[str, float]:
    """{metric: value} of the metric lines `preflab eval` prints on the terminal."""
    out = {}
    for line in summary.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.lstrip().startswith(("note", "skipped", "wrote")):
            out[parts[0]] = float(parts[1])
    return out


ROWS = [{"prompt": "what is two plus three ?", "chosen": " five", "rejected": " the cat sat", "alpha": 1.0},
        {"prompt": "hello world ,", "chosen": " preference optimization", "rejected": " the dog ran", "alpha": 0.5},
        {"prompt": "the cat sat on", "chosen": " the mat", "rejected": " a quick brown fox jumps", "alpha": 0.5},
        {"prompt": "echo: kit cat", "chosen": " KIT CAT", "rejected": " kit cat", "alpha": 0.9}]


def test_the_terminal_alignment_gap_is_the_difference_of_two_printed_lines_with_tied_pairs():
    # seen: with alpha = 0.5 pairs the terminal printed ranking_accuracy, idealized_ranking_accuracy and an
    # alignment_gap that is not their difference: the gap is R* - R under the tie rule (ranking_report), whose two
    # accuracies were only in eval.json. By hand from eval.json's per-pair sums (beta 0.1, tie tolerance 0.01):
    # a tie pair counts when |log-ratio| < 0.01, the others by order (R: S(w) >= S(l); R*: m* > 0).
    tok = tiny_tokenizer("bytelevel")
    policy, ref = tiny_causal_lm(tok, seed=1).eval(), tiny_causal_lm(tok, seed=2).eval()
    out = evaluate_models(policy, tok, ROWS, ref=ref, options=EvalOptions(beta=0.1))
    pp = out["per_pair"]
    alpha = [r["alpha"] for r in ROWS]
    logit = [math.log(min(a, 1 - 1e-3)) - math.log1p(-min(a, 1 - 1e-3)) for a in alpha]
    r_ties = sum(abs(c - r) < 0.01 if a == 0.5 else c >= r
                 for c, r, a in zip(pp["policy_chosen"], pp["policy_rejected"], alpha)) / 4
    ideal_ties = sum(abs(c - r + g / 0.1) < 0.01 if a == 0.5 else c - r + g / 0.1 > 0
                     for c, r, g, a in zip(pp["ref_chosen"], pp["ref_rejected"], logit, alpha)) / 4
    shown = _printed(format_summary(out))
    assert shown["ranking_accuracy_with_ties"] == round(r_ties, 4)
    assert shown["idealized_ranking_accuracy_with_ties"] == round(ideal_ties, 4)
    assert shown["alignment_gap"] == pytest.approx(ideal_ties - r_ties, abs=1e-4)
    assert shown["alignment_gap"] == pytest.approx(
        shown["idealized_ranking_accuracy_with_ties"] - shown["ranking_accuracy_with_ties"], abs=2e-4)


def test_the_terminal_shows_no_tie_lines_without_tied_pairs():
    metrics = ranking_report([-2.0], [-1.0], [3], [3], 1.0, 0.1, policy_chosen_logps=[-1.0],
                             policy_rejected_logps=[-2.0])
    shown = _printed(format_summary({"num_pairs": 1, "beta": 0.1, "metrics": {"ranking_accuracy": 1.0, **metrics}}))
    assert "ranking_accuracy_with_ties" not in shown and "idealized_ranking_accuracy_with_ties" not in shown
    assert shown["alignment_gap"] == shown["idealized_ranking_accuracy"] - shown["ranking_accuracy"] == 0.0


@pytest.mark.parametrize("task, command", [("dpo", "--data ...` (no --task)"), ("reward", "--task reward --data"),
                                           ("vlm", "--task vlm --data")])
def test_task_diffusion_on_a_run_of_another_task_names_the_task_and_the_command(tmp_path, capsys, task, command):
    # seen: `preflab eval outputs/quickstart --task diffusion --data pairs.jsonl` said "model_name_or_path=
    # 'builtin:tiny-llama' ... is not a directory here; pass --reference DIR (the pipeline the run started from)",
    # and with --reference builtin:tiny-sd "outputs/quickstart is not a diffusers pipeline directory": neither said
    # that the run is a text policy and --task diffusion was the mistake (--task vlm already said so)
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "model.safetensors").write_bytes(b"")
    (run / "config.yaml").write_text(yaml.safe_dump({"task": task, "model_name_or_path": "builtin:tiny-llama",
                                                     "loss_type": "sigmoid"}))
    for target in (run, run / "checkpoint-2"):
        assert main(["eval", str(target), "--task", "diffusion", "--data", str(tmp_path / "none.jsonl")]) == 2
        err = capsys.readouterr().err
        assert f"{target} is a task: {task} run; --task diffusion evaluates task: diffusion runs" in err
        assert f"`preflab eval {target} {command}" in err


def test_a_judges_probabilities_are_counted_beside_wins_ties_and_losses(tmp_path):
    # seen: a judge returning probabilities [1, 0.5, 0, 0.8, 0.3] gave eval.json "1 wins, 1 ties, 1 losses of 5" and
    # the report said so: two verdicts were in the rate and in n but in no count. By hand: p = 2.6 / 5 = 0.52,
    # Wilson (z = 1.959964): centre (p + z^2/10) / (1 + z^2/5), half z / (1 + z^2/5) sqrt(p(1-p)/5 + z^2/100).
    from preflab.eval.winrate import win_rate_from_outcomes
    from preflab.report.html import _eval_section
    from preflab.report.runs import load_run

    rate = win_rate_from_outcomes([1.0, 0.5, 0.0, 0.8, 0.3, None])
    z = 1.959963984540054
    centre, half = (0.52 + z * z / 10) / (1 + z * z / 5), z / (1 + z * z / 5) * math.sqrt(0.52 * 0.48 / 5 + z * z / 100)
    assert rate.win_rate == pytest.approx(0.52) and rate.n == 5 and rate.failed == 1
    assert (rate.ci_low, rate.ci_high) == (pytest.approx(centre - half), pytest.approx(centre + half))
    assert (rate.wins, rate.ties, rate.losses, rate.fractional) == (1, 1, 1, 2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.69}\n')
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "dpo", "beta": 0.1}))
    (run / "eval.json").write_text(json.dumps({"num_pairs": 0, "metrics": {}, "win_rate": rate.to_dict()}))
    page = _eval_section([load_run(run)])
    assert "1 wins, 1 ties (each counted 1/2), 1 losses, 2 fractional verdicts (a judge's probabilities) of 5" in page


def test_the_eval_section_is_not_titled_held_out_when_eval_json_counts_training_rows(tmp_path):
    # user trial 9: `preflab eval RUN --data <its training file>` then `preflab report RUN`: the headline said "not
    # held-out" but the section above eval.json's table was still titled "Held-out evaluation".
    from preflab.report.html import _eval_section
    from preflab.report.runs import load_run

    pages = []
    for name, overlap in (("held", {"prompts": 0, "pairs": 0}), ("seen", {"prompts": 3, "pairs": 2})):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.69}\n')
        (run / "config.yaml").write_text(yaml.safe_dump({"task": "dpo", "beta": 0.1}))
        (run / "eval.json").write_text(json.dumps({"num_pairs": 4, "metrics": {"ranking_accuracy": 0.5},
                                                   "overlap_with_training": overlap}))
        pages.append(_eval_section([load_run(run)]))
    assert "<h2>Held-out evaluation (eval.json)</h2>" in pages[0]
    assert "Held-out" not in pages[1]
    assert "<h2>Evaluation (eval.json; seen: partly on rows the run trained on)</h2>" in pages[1]
    # two runs in one report: the title names only the run whose eval.json counts training rows
    both = _eval_section([load_run(tmp_path / "held"), load_run(tmp_path / "seen")])
    assert "<h2>Evaluation (eval.json; seen: partly on rows the run trained on)</h2>" in both


def test_the_terminal_metric_column_fits_long_keys():
    # dpa-eval leftover: a DPA model's `reward_model/ranking_accuracy/helpfulness` (41 characters) ran into its value
    long_key, short_key = "reward_model/ranking_accuracy/helpfulness", "reward_model/mse"
    text = format_summary({"num_pairs": 2, "num_rated_rows": 4,
                           "metrics": {long_key: 0.75, short_key: 2.5}})
    rows = [line for line in text.splitlines() if line.startswith("  reward_model/")]
    assert rows == [f"  {long_key} 0.7500", f"  {short_key:{len(long_key)}s} 2.5000"]
