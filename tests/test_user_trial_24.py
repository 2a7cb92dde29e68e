"""User trial 24: a researcher comparing objectives (DPO, IPO, rDPO, RPO, SimPO, ORPO, KTO, SparsePO, ASFT, ...) on
one pair file, one seed, one tiny model, with `preflab eval`, the report, the lab and `preflab objectives`."""
import sys
from pathlib import Path

import pytest

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.objectives.base import IMPLICIT_REWARD, MEAN_LOGPS, SUMMED_LOGPS
from preflab.report import plots
from preflab.report.html import render_report
from preflab.report.metric_meanings import meaning, meaning_note
from preflab.report.runs import load_run

sys.path.insert(0, str(Path(__file__).parent / "report"))
from report_runs import make_run  # noqa: E402

BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}


# --- rpo_alpha beside an objective with its own NLL term of the chosen response --------------------------------------

@pytest.mark.parametrize("loss_type, params, named", [
    ("rpo", {}, "rpo (eta=0.2"),                          # RPO's own eta * NLL: rpo_alpha added a second one
    ("orpo", {}, "orpo (its loss is an NLL term"),
    ("cpo", {}, "cpo (cpo_alpha=1.0"),                    # CPO's default behaviour-cloning term
    ("simpo", {"cpo_alpha": 0.5}, "simpo (cpo_alpha=0.5"),
])
def test_rpo_alpha_beside_an_objective_with_its_own_chosen_nll_is_refused(loss_type, params, named):
    """`loss_type: rpo, rpo_alpha: 1.0` trained DPO + 0.2 * RPO's NLL + 1.0 * TRL's NLL of the same chosen responses
    without a word (rpo_alpha appends `sft` to the loss list)."""
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, "loss_type": loss_type, "rpo_alpha": 1.0, **params}).objective()
    assert named in str(err.value) and "rpo_alpha=1.0" in str(err.value)


def test_rpo_alpha_is_kept_where_the_objective_has_no_nll_term_of_its_own():
    """Pure SimPO (cpo_alpha 0), RPO with eta 0 and DPO take rpo_alpha as TRL's term: the list gains `sft` at that
    weight."""
    for loss_type, params in (("simpo", {}), ("rpo", {"eta": 0.0}), ("sigmoid", {})):
        objective = config_from_dict({**BASE, "loss_type": loss_type, "rpo_alpha": 0.5, **params}).objective()
        assert objective.names[-1] == "sft" and objective.weights[-1] == 0.5


# --- `preflab objectives` says the beta a run trains at ---------------------------------------------------------------

def test_objectives_listing_says_simpo_trains_at_trls_beta_when_unset(capsys):
    """`preflab objectives simpo` printed `beta = 2.0` while a run without beta trains at TRL's 0.1 (CPOConfig's
    default, docs/configuration.md's beta row): a researcher who read the listing compared SimPO at 0.1 thinking it
    was 2.0."""
    from argparse import Namespace

    from preflab.objectives.cli import run, unset_beta_default

    assert config_from_dict({**BASE, "loss_type": "simpo"}).beta == 0.1
    assert unset_beta_default("simpo", 2.0) == 0.1 and unset_beta_default("alphapo", 2.5) == 0.1
    assert unset_beta_default("sigmoid", 0.1) is None and unset_beta_default("asft", 1.0) is None
    assert unset_beta_default("grpo", 0.0) is None   # online only: its recipe's TRL config sets beta
    run(Namespace(name="simpo", json=False))
    out = capsys.readouterr().out.splitlines()
    beta_line = next(line for line in out if line.strip().startswith("beta ="))
    assert "beta = 2.0" in beta_line and "trains at TRL's 0.1" in beta_line
    assert "    logs: rewards/* = beta * mean token log-prob (no reference); logps/* = mean token log-prob" in out


# --- the report: rewards/* and logps/* of different objectives are different quantities -------------------------------

def _runs(tmp_path):
    dpo = load_run(make_run(tmp_path / "dpo"), "dpo")
    ipo = load_run(make_run(tmp_path / "ipo", loss_type="ipo"), "ipo")
    simpo = load_run(make_run(tmp_path / "simpo", loss_type="simpo"), "simpo")
    orpo = load_run(make_run(tmp_path / "orpo", loss_type="orpo"), "orpo")
    asft = load_run(make_run(tmp_path / "asft", loss_type="asft"), "asft")
    return dpo, ipo, simpo, orpo, asft


def test_report_gives_each_objectives_rewards_and_logps_their_own_axis(tmp_path):
    """SimPO's and ORPO's logps/* are mean token log-probs (about -5 here) and their rewards/* beta * that mean, where
    DPO's are summed log-probs (about -55) and beta * the log-ratio to the reference: the report drew them on one
    axis labelled "summed log-prob" / "beta h". Each meaning now gets its own axis, named."""
    dpo, ipo, simpo, orpo, asft = _runs(tmp_path)
    logps = next(p for p in plots.PANELS if p[0] == "Log-probs")[2]
    rewards = next(p for p in plots.PANELS if p[0] == "Implicit rewards")[2]
    assert plots.panel_groups([dpo, simpo, ipo, orpo], "Log-probs", logps) == \
        {SUMMED_LOGPS: [0, 2], MEAN_LOGPS: [1, 3]}
    assert plots.panel_groups([dpo, simpo, asft], "Implicit rewards", rewards) == {
        f"beta=0.1, {IMPLICIT_REWARD}": [0], "beta=0.1, beta * mean token log-prob (no reference)": [1],
        "beta=0.1, mean token log-prob (no reference, no beta)": [2]}
    assert plots.panel_groups([dpo, ipo], "Implicit rewards", rewards) == {"": [0, 1]}    # one meaning: one axis
    assert plots.panel_groups([dpo, simpo], "Accuracies", plots.PANELS[2][2]) == {"": [0, 1]}
    assert plots.panel_ylabel("Log-probs", "summed log-prob", [simpo, orpo]) == MEAN_LOGPS
    assert plots.panel_ylabel("Implicit rewards", "beta h", [dpo, ipo]) == "beta h"


def test_report_says_which_run_logs_what_under_rewards_and_logps(tmp_path):
    dpo, ipo, simpo, orpo, asft = _runs(tmp_path)
    assert meaning(simpo, "rewards") == "beta * mean token log-prob (no reference)"
    assert meaning(asft, "logps") == SUMMED_LOGPS and meaning(orpo, "logps") == MEAN_LOGPS
    sft = load_run(make_run(tmp_path / "sft", config_extra={"task": "sft", "loss_type": None}), "sft")
    assert meaning(sft, "rewards") is None            # no objective's rewards/*
    assert meaning_note([dpo, ipo]) is None
    note = meaning_note([dpo, ipo, simpo, orpo])
    assert (f"rewards/* (and eval_rewards/*) are {IMPLICIT_REWARD} for dpo, ipo; beta * mean token log-prob (no "
            "reference) for simpo, orpo") in note
    assert f"logps/* (and eval_logps/*) are {SUMMED_LOGPS} for dpo, ipo; {MEAN_LOGPS} for simpo, orpo" in note
    future = load_run(make_run(tmp_path / "future", loss_type="future_po"), "future")   # another version's name
    assert meaning(future, "rewards") is None
    assert "future: the objective is not one this preflab declares" in meaning_note([dpo, future])
    page = render_report([dpo, simpo])
    final = page[page.index("<h2>Final metrics (summary.json)</h2>"):page.index("<h2>Config</h2>")]
    assert "for simpo" in final.replace("&#x27;", "'")    # the note under the side-by-side table


# --- the idealized ranking accuracy depends on the data and the reference only ----------------------------------------

def test_idealized_ranking_accuracy_is_the_same_for_two_policies_with_one_reference():
    """R* (Chen et al. 2024) is the ranking accuracy of the KL-regularised optimum pi_ref exp(r / beta) / Z: it reads
    the reference's log-probs, the rater proportions alpha and beta, never the policy. Two different policies
    evaluated against one reference on the same pairs (alpha 0.7: not the unanimous upper bound) get the same R*
    and R* range, and different ranking accuracies R."""
    from preflab.eval.run import EvalOptions, evaluate_models
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer("bytelevel")
    reference = tiny_causal_lm(tok, seed=0)
    rows = [{"prompt": f"echo: {w}\n", "chosen": w.upper(), "rejected": w[::-1], "alpha": 0.7}
            for w in ("kit cat hat", "jam log", "bee pen car", "oak net", "toy bus", "map gem", "log red", "ant")]
    results = [evaluate_models(tiny_causal_lm(tok, seed=seed), tok, rows, ref=reference,
                               options=EvalOptions(beta=0.1)) for seed in (1, 2)]
    ideal = [{k: v for k, v in r["metrics"].items() if k.startswith("idealized_ranking_accuracy")} for r in results]
    assert ideal[0] == ideal[1] and len(ideal[0]) == 8
    assert results[0]["per_pair"]["policy_chosen"] != results[1]["per_pair"]["policy_chosen"]
    assert results[0]["metrics"]["reference_ranking_accuracy"] == results[1]["metrics"]["reference_ranking_accuracy"]


def test_headline_names_a_reference_free_objectives_reward_accuracy_as_its_own(tmp_path):
    """The headline called SimPO's eval_rewards/accuracies an "implicit reward accuracy" and, under a ranking
    accuracy below the reference's, explained it as "pairs whose chosen log-ratio rose more than the rejected
    one's": SimPO's reward is beta * the mean token log-prob, with no reference and no log-ratio."""
    from preflab.report.headline import headline_notes, headline_rows

    dpo, _, simpo, _, _ = _runs(tmp_path)
    for run in (dpo, simpo):   # R 0.45 at the last eval, below a reference's 0.9; reward accuracy 0.6 above it
        run.rows.append({"step": 12, "eval_reference_ranking_accuracy": 0.9})
    said = {run.name: {r["metric"]: r["meaning"] for r in headline_rows(run)} for run in (dpo, simpo)}
    assert said["dpo"]["eval_rewards/accuracies"] == "implicit reward accuracy, held-out"
    assert said["simpo"]["eval_rewards/accuracies"] == ("reward accuracy of simpo's own reward (beta * mean token "
                                                        "log-prob (no reference)), not an implicit reward, held-out")
    below = {run.name: next(n for n in headline_notes(run, headline_rows(run)) if "below the reference" in n)
             for run in (dpo, simpo)}
    assert "although its implicit reward accuracy is 0.6" in below["dpo"]
    assert "implicit reward" not in below["simpo"]


# --- `preflab report RUN ... --table`: the runs side by side in the terminal ------------------------------------------

def test_compare_table_values_are_each_runs_summary_and_eval_json(tmp_path, capsys):
    """Every metric cell is the run's own summary.json final_metrics / eval.json value (4 significant digits), "-"
    where a run has none; settings that differ besides the objective are listed under it, and so are the objectives'
    different meanings of rewards/* and logps/*."""
    import json
    from argparse import Namespace

    from preflab.report.cli import run as report_cli
    from preflab.report.compare import compare_table, differing_settings, table_rows

    dpo = make_run(tmp_path / "dpo", eval_json=True)
    simpo = make_run(tmp_path / "simpo", loss_type="simpo", slope=0.05, config_extra={"seed": 1})
    runs = [load_run(dpo, "dpo"), load_run(simpo, "simpo")]
    rows = dict(table_rows(runs))
    for path, column in ((dpo, 0), (simpo, 1)):
        final = json.loads((path / "summary.json").read_text())["final_metrics"]
        for key in ("eval_loss", "eval_ranking_accuracy", "eval_rewards/margins", "eval_logps/chosen"):
            assert rows[f"final {key}"][column] == final[key]
    assert rows["final eval_ranking_accuracy"] == [0.45, 0.45]   # the final eval row (logged again at the end)
    assert rows["final eval_loss"][0] != rows["final eval_loss"][1]   # (two runs told apart by their columns)
    assert rows["eval.json ranking_accuracy"] == [2 / 3, None]
    assert rows["eval.json idealized_ranking_accuracy"] == [0.987654, None]
    assert rows["loss_type"] == ["sigmoid", "simpo"] and rows["seed"] == [None, 1]
    assert differing_settings(runs) == ["seed: dpo None, simpo 1"]
    text = compare_table(runs)
    lines = text.splitlines()
    assert lines[0].split() == ["run", "dpo", "simpo"]
    assert next(line for line in lines if line.startswith("eval.json idealized_ranking_accuracy")).split()[2:] == \
        ["0.9877", "-"]
    assert "note: settings that differ besides the objective (the columns compare more than objectives): seed" in text
    assert "beta * mean token log-prob (no reference) for simpo" in text
    report_cli(Namespace(run_dirs=[str(dpo), str(simpo)], out=None, title=None, table=True))
    assert capsys.readouterr().out.strip() == text
    assert not (tmp_path / "report.html").exists()
    with pytest.raises(Exception, match="--table prints to the terminal"):
        report_cli(Namespace(run_dirs=[str(dpo)], out="x.html", title=None, table=True))
