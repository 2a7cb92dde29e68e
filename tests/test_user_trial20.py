"""User trial 20, the researcher who extends preflab (docs/extending.md): what `preflab lab check` / check_objective
say about the mistakes a first preference loss makes, and the errors of a malformed plugin file."""
import pytest
import torch

from preflab.cli import main
from preflab.errors import ConfigError, PreflabError

WRONG = '''
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, logratios, reward_metrics


@dataclass(frozen=True)
class MarginDPO(Objective):
    beta: float = 0.1
    gamma: float = 0.5

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        losses = -F.logsigmoid(self.beta * (h_w - h_l) - self.gamma)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


@dataclass(frozen=True)
class SignFlip(MarginDPO):
    def compute(self, batch):
        h_w, h_l = logratios(batch)
        losses = -F.logsigmoid(self.beta * (h_l - h_w))
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


@dataclass(frozen=True)
class NoReference(MarginDPO):
    def compute(self, batch):
        losses = -F.logsigmoid(self.beta * (batch.policy_chosen.sum - batch.policy_rejected.sum))
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


@dataclass(frozen=True)
class RejectedWithoutReference(MarginDPO):
    def compute(self, batch):
        h_w, _ = logratios(batch)
        losses = -F.logsigmoid(self.beta * (h_w - batch.policy_rejected.sum))
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


@dataclass(frozen=True)
class IgnoresChosen(MarginDPO):
    def compute(self, batch):
        _, h_l = logratios(batch)
        losses = -F.logsigmoid(-self.beta * h_l)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


@dataclass(frozen=True)
class NanLoss(MarginDPO):
    def compute(self, batch):
        h_w, h_l = logratios(batch)
        losses = (self.beta * (h_w - h_l)).sigmoid().log().neg() * float("nan")
        return ObjectiveOutput(losses.mean(), losses, {})


def helper(x):
    return x
'''


@pytest.fixture
def wrong(tmp_path):
    path = tmp_path / "wrong_losses.py"
    path.write_text(WRONG)
    return path


def _check(spec, capsys) -> tuple[int, str]:
    code = main(["lab", "check", spec])
    return code, capsys.readouterr().out


def test_lab_check_fails_a_sign_error_with_the_derivative_along_the_margin(wrong, capsys):
    """-log sigmoid(beta (h_l - h_w)) passed every check (a scalar, differentiable, per-example loss) and trained the
    policy towards the rejected. At policy = reference its derivative along raising S_w and lowering S_l is
    beta sigma(0) + beta sigma(0) = 0.1 on each pair (beta 0.1), which the failure prints."""
    code, out = _check(f"{wrong}:SignFlip", capsys)
    assert code == 1 and out.rstrip().endswith("verdict: FAILED")
    assert "FAIL  SignFlip: the loss prefers the rejected responses" in out
    assert "at policy = reference [0.1, 0.1, 0.1, 0.1]" in out
    code, out = _check(f"{wrong}:MarginDPO", capsys)  # the right sign (with a margin) passes, the new checks named
    assert code == 0, out
    assert "ok    contract: prefers the chosen: raising the chosen over the rejected lowers the loss" in out
    assert "ok    contract: reads the chosen responses" in out and "ok    contract: uses the reference it declares" in out


def test_lab_check_fails_a_loss_missing_its_reference_term_naming_the_side(wrong, capsys):
    """A class declaring needs_reference = True (the default) whose loss compares policy log-probs alone passed
    'needs a reference (declared)': the check only asked that it refuse a batch without a reference."""
    code, out = _check(f"{wrong}:NoReference", capsys)
    assert code == 1
    assert ("FAIL  NoReference: declares needs_reference = True (the default) but its losses do not change when the "
            "reference log-probs of the chosen responses do") in out
    code, out = _check(f"{wrong}:RejectedWithoutReference", capsys)
    assert code == 1 and "reference log-probs of the rejected responses do" in out


def test_lab_check_fails_a_loss_that_ignores_the_chosen(wrong, capsys):
    code, out = _check(f"{wrong}:IgnoresChosen", capsys)
    assert code == 1 and "FAIL  IgnoresChosen: the loss does not read the chosen responses" in out


def test_lab_check_says_a_nan_loss_is_not_finite(wrong, capsys):
    """Before: 'loss nan is not the mean of losses (nan)' and a torch UserWarning quoting preflab's source line."""
    with _no_user_warning():
        code, out = _check(f"{wrong}:NanLoss", capsys)
    assert code == 1
    assert "FAIL  NanLoss: loss nan and per-example losses [nan, nan, nan, nan] on this batch" in out
    assert "are not all finite" in out and "not the mean" not in out


class _no_user_warning:
    def __enter__(self):
        import warnings
        self._catch = warnings.catch_warnings(record=True)
        self._seen = self._catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        assert not [w for w in self._seen if issubclass(w.category, UserWarning)], [str(w.message) for w in self._seen]


def test_pair_sense_derivatives_are_dpos_closed_form_at_the_reference():
    """DPO's -log sigmoid(beta (h_w - h_l)) at h = 0: dL/dS_w = -beta/2 and dL/dS_l = +beta/2 per pair, whatever the
    lengths (the derivative raises a response's summed log-prob by one, spread over its tokens)."""
    from preflab.objectives import example_batch, get_objective
    from preflab.objectives._pair_checks import _per_side_derivatives, at_reference

    dpo = get_objective("dpo", beta=0.3)
    d_w, d_l = _per_side_derivatives(dpo, at_reference(example_batch(dpo)))
    assert d_w.tolist() == pytest.approx([-0.15] * 4, abs=1e-12)
    assert d_l.tolist() == pytest.approx([0.15] * 4, abs=1e-12)


def test_every_registered_objective_passes_the_contract_on_its_example_batch():
    """`preflab lab check diffusion_dpo` (and ppd, smpo_diffusion) failed 'the loss's gradient ... is zero': the example
    batch ignored the class's example_score_scale (diffusion scores are -MSE gaps of ~1e-4; at log-prob scale
    beta 5000 saturates). Every built-in now passes every check, the three sense checks included, so none of them
    refuses a correct objective."""
    from preflab.objectives import PairBatch, check_objective, example_batch, get_objective, list_objectives

    diffusion = example_batch(get_objective("diffusion_dpo"))
    assert diffusion.policy_chosen.sum.tolist() == pytest.approx([-10e-4, -3e-4, -7.5e-4, -2e-4], rel=1e-12)
    for name in list_objectives():
        objective = get_objective(name)
        passed = check_objective(objective, example_batch(objective))
        if objective.batch_type is PairBatch:
            assert "prefers the chosen: raising the chosen over the rejected lowers the loss" in passed, name


def test_a_misspelt_class_lists_the_files_classes(wrong):
    """Before: "no 'MarginDP0' in wrong_losses.py (its top-level functions: helper)": the objective classes a
    loss_type names were not listed, only functions."""
    from preflab.objectives import get_objective

    with pytest.raises(ConfigError) as err:
        get_objective(f"{wrong}:MarginDP0")
    assert ("(its top-level functions: helper; classes: MarginDPO, SignFlip, NoReference, RejectedWithoutReference, "
            "IgnoresChosen, NanLoss).") in str(err.value)
    with pytest.raises(ConfigError, match=r"'\S*wrong_losses.py:ClassName' \(its top-level functions: helper; "
                                          r"classes: MarginDPO, SignFlip"):
        get_objective(str(wrong))


def test_check_objective_sense_checks_run_on_a_users_batch(wrong):
    """check_objective (Python) raises the same failure as the command line, on a batch the user builds."""
    from preflab.objectives import PairBatch, check_objective, get_objective

    t = lambda *v, g=False: torch.tensor(v, dtype=torch.float64, requires_grad=g)  # noqa: E731
    batch = PairBatch.from_sums(t(-10.0, -3.0, g=True), t(-12.0, -2.5, g=True), t(-11.0, -3.2), t(-11.5, -2.0))
    with pytest.raises(PreflabError, match="the loss prefers the rejected responses"):
        check_objective(get_objective(f"{wrong}:SignFlip"), batch)


METRICS = '''
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, logratios


@dataclass(frozen=True)
class Metrics(Objective):
    beta: float = 0.1
    which: str = "ok"

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        losses = -F.logsigmoid(self.beta * (h_w - h_l))
        metrics = {"ok": {"my/frac": 0.25, "my/mean": (h_w - h_l).detach().mean()},
                   "loss": {"loss": torch.tensor(123.0)}, "grad_norm": {"grad_norm": 7.0},
                   "eval": {"eval_margin": 1.0}, "vector": {"my/vec": (h_w - h_l).detach()},
                   "text": {"my/name": "abc"}}[self.which]
        return ObjectiveOutput(losses.mean(), losses, metrics)
'''


def test_an_objective_metric_the_run_logs_itself_or_not_a_number_is_refused_naming_it(tmp_path):
    """A user metric named 'loss' replaced the run's loss in metrics.jsonl (a DPO run logged loss 123.0 at every step,
    grad_norm likewise), and a [B] tensor metric crashed the first step with "RuntimeError: shape '[]' is invalid for
    input of size 8" after the models loaded. Both are refused at the objective's first call (preflab lab check, or
    the run's first micro-batch), naming the metric and what to do."""
    from preflab.objectives import example_batch, get_objective

    path = tmp_path / "metric_losses.py"
    path.write_text(METRICS)

    def call(which):
        objective = get_objective(f"{path}:Metrics", which=which)
        return objective(example_batch(objective))

    assert call("ok").metrics["my/frac"] == 0.25
    with pytest.raises(PreflabError, match=r"Metrics: metric 'loss' is a name the run logs itself \(its loss\): it "
                                           r"would replace the run's value in metrics.jsonl. Rename it, e.g. "
                                           r"'metrics/loss'"):
        call("loss")
    with pytest.raises(PreflabError, match=r"metric 'grad_norm' is a name the run logs itself \(its grad_norm\)"):
        call("grad_norm")
    with pytest.raises(PreflabError, match=r"metric 'eval_margin' is a name the run logs itself \(its evaluation\)"):
        call("eval")
    with pytest.raises(PreflabError, match=r"metric 'my/vec' is a tensor of shape \(4,\); a metric is one number"):
        call("vector")
    with pytest.raises(PreflabError, match=r"metric 'my/name' is a str; a metric is a number"):
        call("text")


BUILDERS = '''
def one_arg(scores):
    return []


def no_return(scores, generator):
    pairs = [(0, 0, 1)]


def broken(scores, generator):
    return [(0, 0, 1)] if scores.shape[1] > 100 else 1 / 0


def fine(scores, generator):
    return [(p, int(row.argmax()), int(row.argmin())) for p, row in enumerate(scores)]
'''


def test_a_pair_builder_of_the_wrong_form_is_an_error_naming_it(tmp_path):
    """docs/extending.md's pair builder f(scores, generator): a builder taking (scores) alone crashed the first round
    with "TypeError: one_arg() takes 1 positional argument but 2 were given", one without `return` with
    "'NoneType' object is not iterable", one that raised with the bare exception; each now names the builder (its
    line, for an exception) and what to write, the signature before the run starts."""
    from preflab.loops.pair_builders import build_pairs
    from preflab.online_recipes import user_builder

    path = tmp_path / "my_builders.py"
    path.write_text(BUILDERS)
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.4]], dtype=torch.float64)
    assert build_pairs(scores, f"{path}:fine").triples == [(0, 1, 0), (1, 0, 1)]
    with pytest.raises(ConfigError, match=r"'\S+:one_arg' is one_arg\(scores\), which cannot be called as "
                                          r"f\(scores, generator\)"):
        user_builder(f"{path}:one_arg")
    with pytest.raises(ConfigError, match=r"returned None in round 2; it must return a list of \(prompt, chosen, "
                                          r"rejected\) index triples"):
        build_pairs(scores, f"{path}:no_return", where="round 2")
    with pytest.raises(ConfigError, match=r"raised at \S+my_builders.py line 11: ZeroDivisionError: division by zero "
                                          r"\(called as f\(scores, generator\) with scores of shape \(2, 3\)\)"):
        build_pairs(scores, f"{path}:broken")


def test_an_objective_file_imports_everything_from_preflab_objectives():
    """`from preflab.objectives import Objective, ObjectiveOutput, logratios, reward_metrics` (the package the docs
    import get_objective and check_objective from) failed: logratios and reward_metrics were only in
    preflab.objectives.base. They are the same functions; logratios gives h = S - S_ref of each side."""
    import preflab.objectives as objectives
    from preflab.objectives import PairBatch, base, logratios, reward_metrics

    assert logratios is base.logratios and reward_metrics is base.reward_metrics
    assert {"logratios", "reward_metrics"} <= set(objectives.__all__)
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    h_w, h_l = logratios(PairBatch.from_sums(t(-10.0), t(-12.0), t(-11.0), t(-11.5)))
    assert (float(h_w), float(h_l)) == (1.0, -0.5)


def test_a_misspelt_reduction_target_is_a_command_error_before_any_check(wrong, capsys):
    """`preflab lab check F:Cls --reduces-to dpoo` ran the whole contract, then printed 'FAIL  unknown objective' and
    'verdict: FAILED' (exit 1, as if the objective were wrong); it is now an error in the command (exit 2), as a
    misspelt --param is."""
    assert main(["lab", "check", f"{wrong}:MarginDPO", "--reduces-to", "dpoo"]) == 2
    captured = capsys.readouterr()
    assert "unknown objective 'dpoo'. Did you mean 'dpo'?" in captured.err and "contract" not in captured.out
    assert main(["lab", "check", f"{wrong}:MarginDPO", "--param", "gamma=0", "--reduces-to", "dpo"]) == 0


def test_a_user_builders_pairs_against_the_judge_are_counted_in_the_rounds_metrics(tmp_path):
    """A builder that pairs a lower-scored chosen with a higher-scored rejected (a reversed comparison, or label noise
    on purpose) trained without a word; the round's counts now carry pairs/against_scores (user builders only: the
    built-in ones never do it, and their metrics rows are unchanged)."""
    from types import SimpleNamespace

    from preflab.loops.pair_builders import build_pairs
    from preflab.loops.rollout import PromptRow
    from preflab.online.trainers import TRAINERS, build_examples

    path = tmp_path / "flip_builders.py"
    path.write_text("def flip(scores, generator):\n"
                    "    return [(0, 0, 1), (0, 2, 1), (1, 1, 0), (1, 0, 1)]\n")
    scores = torch.tensor([[0.1, 0.9, 0.9], [0.7, 0.2, 0.4]], dtype=torch.float64)
    # (0, 0, 1): 0.1 < 0.9 against; (0, 2, 1): a tie, not against; (1, 1, 0): 0.2 < 0.7 against; (1, 0, 1): with
    assert build_pairs(scores, f"{path}:flip").against_scores == 2
    cfg = SimpleNamespace(pair_builder=f"{path}:flip", rso_beta=0.5, rso_num_samples=2, judge_timeout_s=None)
    rows = [PromptRow(0, "p", [1, 5], {}), PromptRow(1, "q", [1, 6], {})]
    completions = [[[6], [7], [8]], [[9], [10], [11]]]
    examples, counts = build_examples(TRAINERS["online_dpo"], cfg, rows, completions, scores, None, torch.Generator())
    assert counts["pairs/against_scores"] == 2 and len(examples) == 4
    assert examples[0].extras == {"score_chosen": 0.1, "score_rejected": 0.9}
    cfg.pair_builder = "best_vs_worst"
    assert "pairs/against_scores" not in build_examples(TRAINERS["online_dpo"], cfg, rows, completions, scores, None,
                                                        torch.Generator())[1]
