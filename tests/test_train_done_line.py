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


def test_an_online_run_says_its_held_out_result_before_and_after(capsys):
    """The demo task's true reward before -> after and the win rate against the starting policy (summary.json) get
    one stderr line before the done line; the final metrics' eval_true_reward was the after alone. An eval-set run
    says its judges' eval_reward the same way; a run with neither prints no such line."""
    cfg = types.SimpleNamespace(output_dir="out")
    print_summary(cfg, {"final_metrics": {"loss": 0.5}, "true_reward_before": 0.203125,
                        "true_reward_after": 0.9505208, "win_rate_vs_reference": 0.890625})
    assert capsys.readouterr().err.splitlines()[0] == (
        "preflab: true reward 0.203 -> 0.951 on the held-out prompts (summary.json true_reward_before, "
        "true_reward_after); win rate vs the starting policy 0.891.")
    print_summary(cfg, {"final_metrics": {}, "eval_reward_before": 0.25, "eval_reward_after": 0.5})
    assert capsys.readouterr().err.splitlines()[0] == (
        "preflab: eval reward 0.250 -> 0.500 on the held-out prompts (summary.json eval_reward_before, "
        "eval_reward_after).")
    print_summary(cfg, {"final_metrics": {}, "true_reward_before": None, "true_reward_after": 0.5})
    assert capsys.readouterr().err.startswith("preflab: done:")
