"""A run whose loss gives the trained parameters no gradient changes no weight and used to finish without a word
(the loss has a graph, so the 'no graph' refusal does not see it): a fresh run whose first logging window had
grad_norm exactly 0.0 at every update says so in a note (preflab.runlog.zero_gradient_note). Later windows are not
asked: a converged run can reach an exactly zero gradient (egpo on the built-in game does at step 60)."""
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_run import run  # noqa: E402

from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.runlog import zero_gradient_note
from preflab.step import StepResult

FLAT_LOSS = '''
from dataclasses import dataclass

from preflab.objectives.base import Objective, ObjectiveOutput, logratios


@dataclass(frozen=True)
class Flat(Objective):
    """A loss with a graph through the policy's log-probs and no gradient: 0 * margin + log 2."""
    beta: float = 0.1

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        losses = 0.0 * (h_w - h_l) + 0.6931471805599453
        return ObjectiveOutput(losses.mean(), losses, {})
'''


def _result(norm, skipped=False):
    return StepResult(loss=0.7, metrics={}, grad_norm=norm, skipped=skipped, num_examples=4)


def test_zero_gradient_note_only_when_every_kept_step_of_the_window_had_none():
    assert zero_gradient_note([_result(0.0), _result(0.0)], 4).startswith(
        "preflab: note: the gradient was exactly zero in every step from 3 to 4 (grad_norm 0.0)")
    assert "in step 1 (grad_norm 0.0)" in zero_gradient_note([_result(0.0)], 1)
    assert zero_gradient_note([_result(0.0), _result(1e-12)], 2) is None
    assert zero_gradient_note([_result(float("nan"), skipped=True)], 1) is None  # a skipped step says nothing
    assert zero_gradient_note([_result(0.0), _result(float("nan"), skipped=True)], 2) is not None


def test_a_loss_without_gradient_is_said_once_and_changes_no_weight(tmp_path, capsys):
    losses = tmp_path / "flat_loss.py"
    losses.write_text(FLAT_LOSS)
    summary, _ = run(tmp_path / "flat", loss_type=f"{losses}:Flat", max_steps=4, logging_steps=2)
    out = capsys.readouterr().out
    assert out.count("preflab: note: the gradient was exactly zero") == 1
    assert "every step from 1 to 2 (grad_norm 0.0)" in out and "does not depend on the policy" in out
    assert summary["final_metrics"]["grad_norm"] == 0.0
    # the same run with DPO has a gradient: nothing said, and its weights moved where the flat run's did not
    run(tmp_path / "dpo", max_steps=4, logging_steps=2)
    assert "gradient was exactly zero" not in capsys.readouterr().out
    # a loss whose gradient vanishes from step 3 on (after the first window): not said
    late = FLAT_LOSS.replace("0.0 * (h_w - h_l)", "(h_w - h_l) * float(CALLS.append(1) or len(CALLS) <= 2)").replace(
        "class Flat", "class Late").replace("@dataclass(frozen=True)", "CALLS = []\n\n\n@dataclass(frozen=True)")
    (tmp_path / "late_loss.py").write_text(late)
    summary, _ = run(tmp_path / "late", loss_type=f"{tmp_path / 'late_loss.py'}:Late", max_steps=4, logging_steps=2)
    assert summary["final_metrics"]["grad_norm"] == 0.0  # steps 3-4 had no gradient
    assert "gradient was exactly zero" not in capsys.readouterr().out
    flat, dpo = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("flat", "dpo"))
    start = tiny_causal_lm(tiny_tokenizer(), seed=0).state_dict()
    assert all(torch.equal(flat[k], start[k]) for k in flat)  # the flat run's weights are its start's
    assert any(not torch.equal(dpo[k], start[k]) for k in dpo)
