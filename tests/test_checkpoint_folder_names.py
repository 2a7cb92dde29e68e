"""One reading of a checkpoint-<step> folder name (preflab.checkpoint.checkpoint_step, listed by
numbered_checkpoints) for every place that looks for a run's checkpoints: `preflab eval` on an unfinished run
(eval.loading), the report's eval hints (report.runs: a text policy and a diffusion run) and a mistyped checkpoint
(checkpoint.read_marker). Each read `name[11:].isdigit()` itself, and a folder such as checkpoint-² (a digit to
str.isdigit, not to int()) stopped them with int()'s ValueError."""
import pytest

from preflab.checkpoint import checkpoint_step, numbered_checkpoints, read_marker, resume_checkpoint
from preflab.errors import PreflabError
from preflab.eval.loading import load_for_eval
from preflab.report.runs import load_run, policy_eval_hint

ODD = ("checkpoint-12a", "checkpoint-", "checkpoint-²")


@pytest.fixture
def run(tmp_path):
    """An unfinished run's folder: checkpoint-9, checkpoint-007 (step 7) and checkpoint-10, beside odd names."""
    folder = tmp_path / "run"
    for name in ("checkpoint-10", "checkpoint-9", "checkpoint-007") + ODD:
        (folder / name).mkdir(parents=True)
    return folder


def test_checkpoint_step_reads_decimal_digits_only():
    assert [checkpoint_step(f"out/{n}") for n in ("checkpoint-007", "checkpoint-10", "checkpoint-0") + ODD] == \
        [7, 10, 0, None, None, None]


def test_numbered_checkpoints_are_by_step_and_skip_odd_names(run):
    assert [p.name for p in numbered_checkpoints(run)] == ["checkpoint-007", "checkpoint-9", "checkpoint-10"]
    assert numbered_checkpoints(run / "absent") == []


def test_eval_of_an_unfinished_run_names_its_numbered_checkpoints(run):
    with pytest.raises(PreflabError) as err:
        load_for_eval(str(run))
    assert str(err.value) == (
        f"{run} holds no final model (the run has not finished, or was interrupted) but has checkpoint-007, "
        f"checkpoint-9, checkpoint-10; evaluate the newest with `preflab eval {run / 'checkpoint-10'} --data ...` "
        "(or finish the run: `preflab train CONFIG resume_from_checkpoint=true`).")


def test_report_eval_hints_name_the_newest_numbered_checkpoint(run):
    hint = policy_eval_hint(run, {"task": "dpo"})
    assert f"`preflab eval {run / 'checkpoint-10'} --data HELDOUT [--reward-fn MODULE:FUNCTION] --out {run / 'eval.json'}`" in hint
    (run / "config.yaml").write_text("task: diffusion\nloss_type: diffusion_dpo\n")
    said = [m for m in load_run(run).missing if m.startswith("no eval.json")]
    assert said and said[0].startswith(f"no eval.json: run `preflab eval {run / 'checkpoint-10'} --task diffusion "
                                       f"--data HELDOUT [--reward-fn MODULE:FUNCTION] --out {run / 'eval.json'}`")


def test_a_mistyped_checkpoint_lists_the_runs_folders_numbered_last(run):
    with pytest.raises(PreflabError) as err:
        read_marker(run / "checkpoint-3")
    head, _, near = str(err.value).partition(f"; {run} holds ")
    assert head == f"checkpoint {run / 'checkpoint-3'} does not exist"
    names = near.removesuffix(".").split(", ")
    assert sorted(names[:3]) == sorted(ODD) and names[3:] == ["checkpoint-007", "checkpoint-9", "checkpoint-10"]


def test_resume_skips_odd_names_and_warns_of_the_unsealed_numbered_one(run):
    """resume_checkpoint's look for unsealed checkpoints sorted (step, path) pairs before it dropped the odd names'
    None steps: beside any numbered folder an odd name stopped the resume with a TypeError."""
    said = []
    assert resume_checkpoint(run, warn=said.append) is None
    assert said == [f"preflab: warning: {run / name} is not a complete checkpoint ({run / name / 'COMPLETE'} is "
                    "missing: deleted, or the folder was not written by preflab); it is skipped. Falling back to an "
                    "earlier checkpoint." for name in ("checkpoint-007", "checkpoint-9", "checkpoint-10")]
