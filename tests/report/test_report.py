"""The HTML run report: what it reads from a run directory, what it embeds, comparison of runs, the margin hook."""
import base64
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from preflab.cli import main
from preflab.objectives.base import PairBatch
from preflab.report.html import write_report
from preflab.report.margins import append_pair_margins, margins_histogram_data, read_pair_margins
from preflab.report.plots import PANELS, TOKEN_PANELS
from preflab.report.runs import load_run

sys.path.insert(0, str(Path(__file__).parent))
from report_runs import make_run  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def images(html):
    return re.findall(r'<img src="([^"]*)"', html)


def test_run_series_keeps_the_last_value_of_a_step_and_skips_non_metric_rows(tmp_path):
    run = load_run(make_run(tmp_path / "run"))
    steps, values = run.series("eval_ranking_accuracy")
    assert steps == [4.0, 8.0, 12.0] and values == [0.4, 0.4, 0.45]     # final eval logged twice: last wins
    steps, values = run.series("loss")
    assert len(steps) == 12 and values[0] == pytest.approx(math.log(2) - 0.02)
    assert run.environment["torch"] == "2.13.0+cpu" and run.config["loss_type"] == "sigmoid"
    assert any("eval.json" in m for m in run.missing) and any("pair_margins" in m for m in run.missing)


def test_report_is_self_contained_and_escapes_what_it_reads(tmp_path):
    run = make_run(tmp_path / "run", config_extra={"dataset_name": "<script>alert(1)</script>"})
    out = write_report([run], tmp_path / "report.html", title="A <b> title")
    html = out.read_text()
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<title>A &lt;b&gt; title</title>" in html
    srcs = images(html)
    assert len(srcs) == len(PANELS)                 # the synthetic run logs every panel's series
    assert all(base64.b64decode(s.split(",", 1)[1])[:8] == PNG for s in srcs)
    assert not re.search(r'(src|href)="(?!data:)', html)   # nothing is fetched from elsewhere
    assert "preflab eval" in html and "pair_margins.jsonl" in html     # says what is missing and how to get it
    assert "2.13.0+cpu" in html and "loss_type: sigmoid" in html


def test_a_garbled_eval_json_is_reported_not_obeyed(tmp_path):
    run = make_run(tmp_path / "run")
    evil = '<img src=x onerror="alert(1)">'
    (run / "eval.json").write_text(json.dumps({"metrics": ["not", "a", "dict"], "missing": "nope",
                                               "win_rate": {"n": 3, "wins": evil, "win_rate": evil},
                                               "per_pair": {"policy_chosen": ["a"], "policy_rejected": [1],
                                                            "ref_chosen": [1], "ref_rejected": [1]},
                                               "generation_examples": [evil, {"prompt": evil}]}))
    html = write_report([run], tmp_path / "r.html").read_text()
    assert evil not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert len(images(html)) == len(PANELS)                # no scatter from unusable per-pair data


def test_margin_histograms_and_eval_table_when_the_run_has_them(tmp_path):
    run = make_run(tmp_path / "run", margins=True, eval_json=True)
    html = write_report([run], tmp_path / "r.html").read_text()
    assert len(images(html)) == len(PANELS) + 2     # + start/end margin histograms + eval.json margins/Thm 4.1
    assert "idealized_ranking_accuracy" in html and "0.9877" in html
    assert "0.625 [0.3, 0.86]" in html and "2 wins, 1 ties (each counted 1/2), 1 losses of 4" in html
    assert "say &lt;b&gt;hi&lt;/b&gt;" in html                  # generation examples escaped
    assert "no extra_responses" in html and "assumed unanimous" in html


def test_margins_hook_values_and_file(tmp_path):
    # the spec's toy pair (h_w = 1, h_l = -0.5) and a second pair (h_w = -1, h_l = -2), beta = 0.1
    batch = PairBatch.from_sums(torch.tensor([-10.0, -12.0]), torch.tensor([-12.0, -13.0]),
                                torch.tensor([-11.0, -11.0]), torch.tensor([-11.5, -11.0]))
    assert margins_histogram_data(batch, 0.1) == pytest.approx([0.15, 0.1])
    assert margins_histogram_data(PairBatch.from_sums([-1.0], [-3.0]), 0.5) == [1.0]   # reference-free
    append_pair_margins(tmp_path, 0, [0.0, 0.0])
    append_pair_margins(tmp_path, 5, [1.0, float("nan")])
    append_pair_margins(tmp_path, 5, [2.0, 3.0])           # a re-run step replaces the older row
    with open(tmp_path / "pair_margins.jsonl", "a") as fh:
        fh.write('{"step": 9, "marg')                      # torn line after a kill
    assert read_pair_margins(tmp_path) == {0: [0.0, 0.0], 5: [2.0, 3.0]}


def test_comparing_runs_overlays_them_and_diffs_their_configs(tmp_path, capsys):
    a = make_run(tmp_path / "a" / "dpo", "sigmoid")
    b = make_run(tmp_path / "b" / "dpo", "ipo", slope=0.03, config_extra={"beta": 0.5})
    out = tmp_path / "compare.html"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    html = out.read_text()
    assert "a/dpo" in html and "b/dpo" in html             # same directory names made distinct
    diff = html[html.index("Keys whose values differ"):html.index("</table>", html.index("Keys whose values differ"))]
    assert "loss_type" in diff and "beta" in diff and "learning_rate" not in diff
    assert len(images(html)) == len(PANELS)                # one panel per metric group, both runs in it


def test_report_reads_a_real_training_run(tmp_path):
    """The report's series names are the ones the Trainer actually logs (train and eval rows)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "loops"))
    from tiny_run import synthetic_pairs

    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic",
                                output_dir=str(tmp_path / "run"), learning_rate=1e-3, per_device_train_batch_size=4,
                                max_steps=4, logging_steps=1, eval_steps=2, disable_tqdm=True, use_cpu=True))
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=synthetic_pairs(16),
            eval_data=synthetic_pairs(4, seed=1)).train()
    run = load_run(tmp_path / "run")
    logged = {k for row in run.rows for k in row}
    for _, _, series in PANELS:
        for key, _, _ in series:
            assert key in logged, key
    for key in ("eval_reference_ranking_accuracy", "eval_logps_drift/suppression_rate"):
        assert key in logged, key
    # the trainer records per-pair eval margins at every eval (steps 2 and 4): the start/end histogram appears
    margin_steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "pair_margins.jsonl").read_text().splitlines()]
    assert margin_steps == [2, 4]
    html = write_report([tmp_path / "run"], tmp_path / "run" / "report.html").read_text()
    assert len(images(html)) == len(PANELS) + len(TOKEN_PANELS) + 1  # the trainer logs TRL's token metrics
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["environment"]["torch"] in html


def test_reward_model_scores_get_their_own_panel_not_the_implicit_reward_one(tmp_path):
    """rewards/chosen and rewards/rejected of a task: reward run are raw scores r(x, y), not beta h: they were drawn
    on "Implicit rewards, beta h"; now on "Reward scores", and a DPO run beside it keeps its implicit-reward panel."""
    from preflab.report.plots import curve_panel

    rm = make_run(tmp_path / "rm", config_extra={"task": "reward"})
    dpo = make_run(tmp_path / "dpo")
    html = (write_report([rm], tmp_path / "rm.html")).read_text()
    assert 'alt="Reward scores"' in html and 'alt="Implicit rewards"' not in html
    html = (write_report([dpo], tmp_path / "dpo.html")).read_text()
    assert 'alt="Implicit rewards"' in html and 'alt="Reward scores"' not in html
    runs = [load_run(rm, "rm"), load_run(dpo, "dpo")]
    series = [("rewards/chosen", "chosen (train)", "#1f77b4")]
    assert curve_panel(runs[:1], "Implicit rewards", "beta h", series) is None
    assert curve_panel(runs[1:], "Reward scores", "mean r(x, y)", series) is None


def test_report_draws_the_panels_the_runs_objective_declares(tmp_path):
    """spo_degree declares its degree-head metrics (Objective.metric_panels): a run of it gets a loss and an accuracy
    panel for the auxiliary task, train and eval; a DPO run gets neither; an objective that cannot be loaded is said."""
    run = make_run(tmp_path / "spo", loss_type="spo_degree")
    rows = [{"step": s, "loss/degree": 1.1 - 0.01 * s, "degree/accuracy": 0.3 + 0.02 * s} for s in range(1, 13)]
    rows += [{"step": s, "eval_loss/degree": 1.0, "eval_degree/accuracy": 0.5} for s in (4, 8, 12)]
    with open(run / "metrics.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    html = write_report([run], tmp_path / "r.html").read_text()
    assert 'alt="Degree loss (SPO)"' in html and 'alt="Degree accuracy (SPO)"' in html
    assert len(images(html)) == len(PANELS) + 2
    dpo = write_report([make_run(tmp_path / "dpo")], tmp_path / "d.html").read_text()
    assert "Degree" not in dpo and len(images(dpo)) == len(PANELS)
    gone = write_report([make_run(tmp_path / "mine", loss_type="gone.py:Mine")], tmp_path / "m.html").read_text()
    assert ("mine: objective &#x27;gone.py:Mine&#x27; is not a built-in objective; the report does not import code "
            "a run names") in gone
    assert len(images(gone)) == len(PANELS)             # the other panels are still drawn
    alias = write_report([make_run(tmp_path / "sig", loss_type="sigmoid")], tmp_path / "s.html").read_text()
    assert "not a built-in objective" not in alias       # an alias of a built-in objective is one


def test_report_never_imports_the_objective_file_a_run_names(tmp_path):
    """Reading a run directory (possibly someone else's) must not run the code its config names as loss_type."""
    marker = tmp_path / "imported"
    (tmp_path / "mine.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    run = make_run(tmp_path / "run", loss_type=f"{tmp_path / 'mine.py'}:Mine")
    html = write_report([run], tmp_path / "r.html").read_text()
    assert not marker.exists()
    assert "is not a built-in objective" in html


def test_a_recipe_run_report_points_at_its_summary_and_stages_not_at_train_or_eval(tmp_path):
    # a recipe's output_dir as `preflab train examples/tools/dstc.yaml` leaves it: config.yaml, summary.json, and
    # one ordinary run per stage in a subfolder (icpl has none)
    for task, stages in (("dstc", ["dstc_1", "sft"]), ("icpl", [])):
        out = tmp_path / task
        out.mkdir()
        (out / "config.yaml").write_text(f"task: {task}\n")
        (out / "summary.json").write_text(json.dumps({"recipe": task, "metric_before": 0.5, "metric_after": 0.7}))
        for stage in stages:
            make_run(out / stage)
        tail = (f"its stages' training logs: `preflab report {out / 'dstc_1'} {out / 'sft'}`" if stages
                else "it has no training stage")
        assert load_run(out).missing == [f"a recipe run (task: {task}): its result is summary.json's metric_before"
                                         f" / metric_after, in the headline above; {tail}"]
    plain = tmp_path / "plain"                          # an ordinary run without logs keeps its notes
    plain.mkdir()
    (plain / "config.yaml").write_text("task: dpo\n")
    assert load_run(plain).missing[0] == ("no metrics.jsonl: this is not a finished or running `preflab train` "
                                          "output_dir")


def test_a_game_run_report_does_not_ask_for_preflab_eval(tmp_path):
    """The preference game (online_task: game) has no text or held-out pairs: `preflab eval RUN --data HELDOUT
    --reference REF` means nothing for it (found in the Nash user trial), its result is tv_to_equilibrium /
    duality_gap in summary.json and the game panels. A text online run still gets the suggestion."""
    for online_task, asked in (("game", False), ("demo", True)):
        out = tmp_path / online_task
        make_run(out)
        (out / "config.yaml").write_text(f"task: online\nonline_task: {online_task}\ntrainer: inpo\n")
        (out / "summary.json").write_text(json.dumps({"global_step": 4, "tv_to_equilibrium": 0.01}))
        assert any("no eval.json: run `preflab eval" in m for m in load_run(out).missing) is asked


def test_eval_pairs_with_a_non_finite_log_prob_are_counted_as_left_out():
    """eval.json's per_pair columns: a pair whose four log-probs are not all finite (null, NaN) is left out of the
    plots and counted as such; the count is of the pairs left out, not of those kept."""
    from preflab.report.runs import PER_PAIR_KEYS, finite_eval_pairs, nonfinite_eval_pairs

    columns = {key: [-1.0 - i, -2.0, None if i == 0 else -3.0] for i, key in enumerate(PER_PAIR_KEYS)}
    columns[PER_PAIR_KEYS[1]][1] = float("nan")
    kept, left_out = finite_eval_pairs({"per_pair": columns})
    assert left_out == 2 == nonfinite_eval_pairs({"per_pair": columns})
    assert kept == [[-1.0 - i] for i in range(len(PER_PAIR_KEYS))]
