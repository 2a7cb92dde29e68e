"""`preflab lab check FILE.py:Class`: the objective contract, a reduction and DPO's closed-form optimum run on a user's
objective from the command line, with a verdict and exit status 0 (all passed) / 1 (one failed)."""
import pytest

from preflab.cli import main

LOSSES = '''
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, logratios, reward_metrics


@dataclass(frozen=True)
class MarginDPO(Objective):
    """-log sigmoid(beta * (h_w - h_l) - gamma): DPO with a margin; gamma = 0 is DPO."""

    beta: float = 0.1
    gamma: float = 0.5
    paper = "a researcher, 2026"

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        losses = -F.logsigmoid(self.beta * (h_w - h_l) - self.gamma)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


@dataclass(frozen=True)
class ClaimsNoReference(MarginDPO):
    needs_reference = False


@dataclass(frozen=True)
class Weighted(MarginDPO):
    required_extras = ("weight",)

    def compute(self, batch):
        out = super().compute(batch)
        losses = out.losses * batch.extra("weight")
        return ObjectiveOutput(losses.mean(), losses, out.metrics)
'''


def test_lab_check_prints_each_check_and_a_verdict_with_exit_status(tmp_path, capsys):
    path = tmp_path / "my_check_losses.py"
    path.write_text(LOSSES)
    assert main(["lab", "check", f"{path}:MarginDPO", "--param", "gamma=0", "--param", "beta=0.5",
                 "--reduces-to", "dpo", "--kl-optimum"]) == 0
    out = capsys.readouterr().out
    assert "ok    contract: loss = mean(losses)" in out and "ok    contract: needs a reference (declared)" in out
    assert "ok    reduces to dpo (beta=0.5): the same per-example losses" in out  # the parameters both have
    assert "ok    kl-optimum: on B4 with beta=0.5 its population minimiser is pi_ref exp(r / beta) / Z" in out
    assert "ok    contract: splits over micro-batches: the halves' loss sums and gradients are the batch's" in out
    assert out.rstrip().endswith("verdict: passed (11 checks)")
    # gamma 0.5 (its default) is not DPO: the reduction and the closed form fail, with the numbers
    assert main(["lab", "check", f"{path}:MarginDPO", "--reduces-to", "dpo"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  does not reduce to dpo (beta=0.1): per-example losses" in out
    assert out.rstrip().endswith("verdict: FAILED") and out.count("ok    contract:") == 9
    assert main(["lab", "check", f"{path}:MarginDPO", "--kl-optimum"]) == 1
    assert "FAIL  kl-optimum: on B4 with beta=0.1 the population minimiser is" in capsys.readouterr().out
    assert main(["lab", "check", f"{path}:ClaimsNoReference"]) == 1
    assert "declares needs_reference = False but fails without reference log-probs" in capsys.readouterr().out
    assert main(["lab", "check", f"{path}:Weighted"]) == 1
    assert "reads the extras ['weight'], which its example_extras(batch) does not give" in capsys.readouterr().out
    assert main(["lab", "check", f"{path}:Nope"]) == 2  # not an objective at all: an error, not a verdict
    assert "no 'Nope'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["sigmoid", "kto", "rrhf"])
def test_example_batch_passes_the_contract_for_each_batch_kind(name):
    from preflab.objectives import check_objective, example_batch, get_objective

    objective = get_objective(name)
    assert "loss depends on the policy" in check_objective(objective, example_batch(objective))
