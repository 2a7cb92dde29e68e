"""The panels an objective declares for its own metrics (Objective.metric_panels) travel as data: the training run
writes metric_panels.json, `preflab report` draws from it without importing the code the run names, checks it as
untrusted input, and falls back to built-in names for runs written before the file existed."""
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from preflab.errors import ConfigError
from preflab.report.html import write_report
from preflab.objectives._panels import MAX_PANELS, declared_panels
from preflab.report.panel_data import FILE, read_panel_data
from preflab.report.plots import BLUE, PANELS, objective_panels
from preflab.report.runs import load_run

sys.path.insert(0, str(Path(__file__).parent))
from report_runs import make_run  # noqa: E402

DATA = str(Path(__file__).resolve().parents[2] / "examples" / "data" / "loud_echo_pairs.jsonl")

MINE = '''
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, logratios, reward_metrics

open(MARKER, "a").write("imported\\n")


@dataclass(frozen=True)
class GapDPO(Objective):
    """-log sigmoid(beta (h_w - h_l)), logging the log-ratio gap as its own metric."""

    beta: float = 0.1

    metric_panels = (("Log-ratio gap (mine)", "h_w - h_l", ("mine/gap",)),)

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        losses = -F.logsigmoid(self.beta * (h_w - h_l))
        metrics = {**reward_metrics(batch, self.beta), "mine/gap": (h_w - h_l).mean().detach()}
        return ObjectiveOutput(losses.mean(), losses, metrics)
'''


def alts(html):
    return re.findall(r'<img src="data:image/png;base64,[^"]*" alt="([^"]*)"', html)


def _train(tmp_path, name, loss_type):
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer

    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name=DATA, loss_type=loss_type,
                                output_dir=str(tmp_path / name), max_steps=2, per_device_train_batch_size=2,
                                max_length=64, logging_steps=1, eval_fraction=0.05, eval_steps=2, disable_tqdm=True,
                                use_cpu=True))
    Trainer(cfg).train()
    return tmp_path / name


def test_report_draws_the_panels_a_user_objective_declares_without_importing_it(tmp_path):
    """A user's objective (`loss_type: mine.py:GapDPO`) declaring metric_panels got no panel in the report: the
    report resolved loss_type to a built-in class only (it must not import the file). The run now writes the panels
    into metric_panels.json, alone and as a later part of a weighted sum, and the report draws them, importing
    nothing."""
    marker = tmp_path / "imported.txt"
    mine = tmp_path / "mine.py"
    mine.write_text(f"MARKER = {str(marker)!r}\n" + textwrap.dedent(MINE))
    alone = _train(tmp_path, "alone", f"{mine}:GapDPO")
    summed = _train(tmp_path, "summed", ["sigmoid", f"{mine}:GapDPO"])
    expected = {"format": 1, "panels": [{"title": "Log-ratio gap (mine)", "ylabel": "h_w - h_l",
                                         "metrics": ["mine/gap"]}]}
    for run in (alone, summed):
        assert json.loads((run / FILE).read_text()) == expected
    assert marker.is_file()  # training imported the file
    marker.unlink()
    for run in (alone, summed):
        html = write_report([run], tmp_path / f"{run.name}.html").read_text()
        assert "Log-ratio gap (mine)" in alts(html), run
        assert "not a built-in objective" not in html
        assert load_run(run).series("mine/gap")[0] == [1.0, 2.0]  # what the panel draws: the part's own metric
    panels, notes = objective_panels([load_run(alone)])
    assert (panels, notes) == ([("Log-ratio gap (mine)", "h_w - h_l", [("mine/gap", "mine/gap (train)", BLUE),
                                                                      ("eval_mine/gap", "mine/gap (eval)", BLUE)])],
                               [])
    assert not marker.exists()  # the report ran no code of the run's


@pytest.mark.parametrize("content, why", [
    ("{not json", "is not valid JSON"),
    (json.dumps([1, 2]), 'is not {"format": 1, "panels": [...]}'),
    (json.dumps({"format": 2, "panels": []}), 'is not {"format": 1, "panels": [...]}'),
    (json.dumps({"format": 1, "panels": ["Loss"]}), "panel 1: it is not an object with title, ylabel and metrics"),
    (json.dumps({"format": 1, "panels": [{"title": "ok", "ylabel": "y", "metrics": ["a"]},
                                         {"title": 7, "ylabel": "y", "metrics": ["a"]}]}),
     "panel 2: its title is not a printable string of 1 to 200 characters (7)"),
    (json.dumps({"format": 1, "panels": [{"title": "x" * 201, "ylabel": "y", "metrics": ["a"]}]}),
     "panel 1: its title is not a printable string of 1 to 200 characters ('xxxx"),
    (json.dumps({"format": 1, "panels": [{"title": "a\nb", "ylabel": "y", "metrics": ["a"]}]}),
     "panel 1: its title is not a printable string"),
    (json.dumps({"format": 1, "panels": [{"title": "t", "ylabel": "y", "metrics": []}]}),
     "panel 1: its metrics are not a list of 1 to 16 metric names ([])"),
    (json.dumps({"format": 1, "panels": [{"title": "t", "ylabel": "y", "metrics": ["a", None]}]}),
     "panel 1: its metric name is not a printable string of 1 to 200 characters (None)"),
    (json.dumps({"format": 1, "panels": [{"title": f"t{i}", "ylabel": "y", "metrics": ["a"]}
                                         for i in range(MAX_PANELS + 1)]}), "holds 33 panels, more than 32"),
    (json.dumps({"format": 1, "panels": [], "pad": "x" * 70000}), "is larger than 65536 bytes"),
])
def test_a_malformed_metric_panels_json_is_a_note_naming_the_file(tmp_path, content, why):
    """metric_panels.json is read from a run directory (untrusted): a bad one is a note naming the file and what is
    wrong, the report's other panels are drawn, and none of the file's (not even its valid first panel)."""
    run = make_run(tmp_path / "run", loss_type="spo_degree")
    (run / FILE).write_text(content)
    html = write_report([run], tmp_path / "r.html").read_text()
    note = re.search(r'<div class="note">run: ([^<]*)</div>', html.split("<h2>Training curves</h2>")[1]).group(1)
    assert note.startswith(f"{run / FILE}: {why}".replace("'", "&#x27;").replace('"', "&quot;"))
    assert note.endswith("; the panels of the objective&#x27;s own metrics are not drawn (its metrics are in the "
                         "summary table)")
    assert alts(html) == [t for t, _, _ in PANELS]  # spo_degree's own panels: not from a file that cannot be read


def test_metric_panels_json_text_is_escaped_and_not_mathtext(tmp_path):
    """A valid panel whose title and metric name hold HTML and an unbalanced mathtext `$` is drawn and escaped: the
    title reaches the page only as escaped alt text, and matplotlib does not parse it (`$\\frac{$` raised at
    savefig, so a run directory could crash the report)."""
    evil = '<img src=x onerror=alert(1)> $\\frac{$'
    run = make_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, evil: 1.0}) + "\n" + json.dumps({"step": 5, evil: 2.0}) + "\n")
    (run / FILE).write_text(json.dumps({"format": 1, "panels": [{"title": evil, "ylabel": evil, "metrics": [evil]}]}))
    html = write_report([run], tmp_path / "r.html").read_text()
    assert "<img src=x" not in html
    assert alts(html) == [t for t, _, _ in PANELS] + ["&lt;img src=x onerror=alert(1)&gt; $\\frac{$"]
    other = make_run(tmp_path / "b$\\frac{$")  # a run directory's name is a legend label when runs are compared
    assert len(alts(write_report([run, other], tmp_path / "two.html").read_text())) == len(PANELS) + 1


def test_the_file_decides_the_panels_and_an_old_run_falls_back_to_built_in_names(tmp_path):
    """A run written before metric_panels.json existed (none in it) with spo_degree still gets spo_degree's panels
    (its loss_type resolved to the built-in class); a run with the file gets the file's panels, even where its
    loss_type names a built-in objective (an empty list: none)."""
    old = make_run(tmp_path / "old", loss_type="spo_degree")
    assert read_panel_data(old) == (None, None)
    assert [t for t, _, _ in objective_panels([load_run(old)])[0]] == ["Degree loss (SPO)", "Degree accuracy (SPO)"]
    new = make_run(tmp_path / "new", loss_type="spo_degree")
    (new / FILE).write_text(json.dumps({"format": 1, "panels": []}))
    assert objective_panels([load_run(new)]) == ([], [])
    other = make_run(tmp_path / "other", loss_type="my.py:Mine")  # the same title: one panel, both runs' metrics
    (other / FILE).write_text(json.dumps({"format": 1, "panels": [{"title": "Degree loss (SPO)", "ylabel": "mine",
                                                                   "metrics": ["loss/degree", "mine/x"]}]}))
    panels, notes = objective_panels([load_run(old), load_run(other)])
    assert notes == [] and [(t, y, [k for k, _, _ in s]) for t, y, s in panels] == [
        ("Degree loss (SPO)", "degree head cross-entropy",
         ["loss/degree", "eval_loss/degree", "mine/x", "eval_mine/x"]),
        ("Degree accuracy (SPO)", "fraction of variants (chance 1/(J+1))", ["degree/accuracy", "eval_degree/accuracy"])]


def test_declared_panels_of_weighted_sums_and_malformed_declarations(tmp_path):
    """The panels written are every part's declaration (a weighted sum's later parts included); a declaration the
    report could not draw is refused before training, naming the class and the panel."""
    from preflab.config import config_from_dict
    from preflab.objectives import WeightedSum
    from preflab.objectives.spo_degree import SPODegree

    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name=DATA, output_dir="unused",
                                loss_type=["ipo", "sft"]))
    assert declared_panels(cfg.objective()) == [] and declared_panels(None) == []
    ipo = cfg.objective().parts[0]
    both = WeightedSum(parts=(ipo, SPODegree()), weights=(1.0, 1.0), names=("ipo", "spo_degree"))
    assert declared_panels(both) == [tuple(p[:2]) + (tuple(p[2]),) for p in SPODegree.metric_panels]
    bad = type("Wide", (SPODegree,), {"metric_panels": (("ok", "y", ("degree/accuracy",)), ("x" * 300, "y", ("a",)))})
    with pytest.raises(ConfigError, match=r"^Wide\.metric_panels, panel 2: its title is not a printable string of 1 "
                                          r"to 200 characters \('xxx"):
        declared_panels(bad())
    flat = type("Flat", (SPODegree,), {"metric_panels": (("t", "y", "degree/accuracy", "x"),)})
    with pytest.raises(ConfigError, match=r"^Flat\.metric_panels, panel 1: it is not a \(title, y label, "):
        declared_panels(flat())
    loose = type("Loose", (SPODegree,), {"metric_panels": (("t", "y", "degree/accuracy"),)})  # a string, not names
    with pytest.raises(ConfigError, match=r"^Loose\.metric_panels, panel 1: its metrics are not a list of 1 to 16 "):
        declared_panels(loose())


def test_check_objective_refuses_a_metric_panel_the_report_cannot_draw():
    """`check_objective` (and `preflab lab check`) refuse a declaration the run would refuse, not only a name that
    compute() does not return: a title with a newline."""
    import dataclasses

    from preflab.objectives import objective_class
    from preflab.objectives.contract import check_objective, example_batch

    cls = objective_class("dpo")
    lined = dataclasses.make_dataclass("Lined", [], bases=(cls,), frozen=True,
                                       namespace={"metric_panels": (("two\nlines", "y", ("rewards/margins",)),)})
    with pytest.raises(ConfigError, match=r"^Lined\.metric_panels, panel 1: its title is not a printable string"):
        check_objective(lined(), example_batch(lined()))
    fine = dataclasses.make_dataclass("Fine", [], bases=(cls,), frozen=True,
                                      namespace={"metric_panels": (("one line", "y", ("rewards/margins",)),)})
    assert "the metrics its report panels draw are returned (rewards/margins)" in check_objective(
        fine(), example_batch(fine()))
