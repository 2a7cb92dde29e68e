"""`preflab train`'s last words (docs-walk-3): the final metrics stay JSON on stdout, for scripts, and one line on
stderr says where the run is and the command that draws it; before, a new user saw a JSON block and no next step."""
import json
import types

from preflab.loops.cli import print_summary


def test_train_says_where_the_run_is_and_how_to_see_it(capsys):
    cfg = types.SimpleNamespace(output_dir="outputs/my run")
    assert print_summary(cfg, {"final_metrics": {"loss": 0.25, "note": "text is left out"}}) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"output_dir": "outputs/my run", "loss": 0.25}
    assert captured.err == ("preflab: done: the run is in outputs/my run (summary.json holds its final metrics); "
                            "`preflab report 'outputs/my run'` writes report.html with its curves.\n")
