"""Regressions from a researcher's trial of extending preflab from outside the package: an objective, a reward
function and verification helpers written in their own files (`loss_type: my_losses.py:Class`,
`reward_funcs: my_rewards.py:function`). Each test failed on the code before its fix."""
import textwrap

import pytest
import torch

from preflab.errors import ConfigError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
DATA = str(ROOT / "examples" / "data" / "loud_echo_pairs.jsonl")

MY_LOSSES = '''
"""A researcher's objectives, outside preflab."""
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, logratios, reward_metrics


@dataclass(frozen=True)
class MarginWeighted(Objective):
    """w * -log sigmoid(beta * (h_w - h_l) - gamma * margin)."""

    beta: float = 0.1   # temperature
    gamma: float = 0.5  # margin scale

    required_extras = ("margin", "weight")
    paper = "a researcher, 2026"

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        m, w = batch.extra("margin").to(h_w), batch.extra("weight").to(h_w)
        losses = w * -F.logsigmoid(self.beta * (h_w - h_l) - self.gamma * m)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))


@dataclass(frozen=True)
class NoBeta(Objective):
    """-log sigmoid((mean S_w - mean S_l) / tau), reference-free, without a beta."""

    tau: float = 1.0  # temperature

    needs_reference = False

    def compute(self, batch):
        s_w, s_l = batch.policy_chosen.mean, batch.policy_rejected.mean
        losses = -F.logsigmoid((s_w - s_l) / self.tau)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, 1.0, s_w, s_l))
'''


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def _config(**over):
    from preflab.config import config_from_dict

    raw = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": DATA, "output_dir": "unused"}
    raw.update(over)
    if raw.get("online_task") == "demo":  # the demo makes its prompts: a dataset_name would be refused
        raw.pop("dataset_name")
    return config_from_dict(raw)


def test_user_objective_takes_its_parameters_as_top_level_config_keys(tmp_path):
    """`gamma: 0.3` beside `loss_type: my_losses.py:MarginWeighted` was refused as an unknown key ("a parameter of
    dpo_gamma, ..., not of the chosen loss_type"); docs/extending.md says any objective parameter is a top-level key."""
    losses = _write(tmp_path, "my_losses.py", MY_LOSSES)
    cfg = _config(loss_type=f"{losses}:MarginWeighted", gamma=0.3, beta=0.2)
    obj = cfg.objective()
    assert (type(obj).__name__, obj.gamma, obj.beta) == ("MarginWeighted", 0.3, 0.2)
    with pytest.raises(ConfigError, match="unknown config key 'gama'"):
        _config(loss_type=f"{losses}:MarginWeighted", gama=0.3)


def test_user_objective_without_beta_trains(tmp_path):
    """A user objective with no `beta` field could not be trained at all: the config's beta (default 0.1) was always
    passed to it ("NoBeta has no parameter 'beta'"); built-in objectives without beta (sft) get none."""
    losses = _write(tmp_path, "my_losses.py", MY_LOSSES)
    obj = _config(loss_type=f"{losses}:NoBeta", tau=2.0).objective()
    assert (type(obj).__name__, obj.tau) == ("NoBeta", 2.0)
    both = _config(loss_type=[f"{losses}:NoBeta", "sft"], loss_weights=[1.0, 0.5]).objective()
    assert [type(p).__name__ for p in both.parts] == ["NoBeta", "SFT"] and both.weights == (1.0, 0.5)


def test_user_objective_file_with_future_annotations_and_objectives_listing(tmp_path, capsys):
    """A plugin file starting with `from __future__ import annotations` (as preflab's own objectives do) was
    refused with "no 'MarginWeighted'" (its dataclass could not be built outside sys.modules), and
    `preflab objectives my_losses.py:MarginWeighted` crashed with ModuleNotFoundError: preflab_user_my_losses."""
    from preflab.cli import main
    from preflab.objectives import get_objective

    losses = _write(tmp_path, "my_losses.py", "from __future__ import annotations\n" + MY_LOSSES)
    assert get_objective(f"{losses}:MarginWeighted", gamma=0.25).gamma == 0.25
    assert main(["objectives", f"{losses}:MarginWeighted"]) == 0
    out = capsys.readouterr().out
    assert "gamma = 0.5  # margin scale" in out and "extras: ['margin', 'weight']" in out
    assert "paper: a researcher, 2026" in out


@pytest.mark.parametrize("body, message", [
    ("import torch\ndef f(:\n    pass\n", r"bad\.py line 2: SyntaxError"),
    ("x = 1\ny = undefined_name + 1\n", r"raised at .*bad\.py line 2: NameError: name 'undefined_name'"),
])
def test_user_objective_file_that_fails_to_run_is_a_config_error_naming_file_and_line(tmp_path, body, message):
    """A syntax error or an exception while the plugin file ran came out as a raw traceback of preflab's loader."""
    from preflab.objectives import get_objective

    bad = _write(tmp_path, "bad.py", body)
    with pytest.raises(ConfigError, match=message):
        get_objective(f"{bad}:Loss")


MISUSE = '''
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives.base import Objective, logratios


class Undecorated(Objective):
    beta = 0.1


@dataclass
class NotFrozen(Objective):
    beta: float = 0.1

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        return -F.logsigmoid(self.beta * (h_w - h_l)).mean()


def a_function(batch):
    return None


@dataclass(frozen=True)
class ReturnsTensor(Objective):
    beta: float = 0.1

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        return -F.logsigmoid(self.beta * (h_w - h_l)).mean()


@dataclass(frozen=True)
class ReturnsScalarLosses(Objective):
    beta: float = 0.1

    def compute(self, batch):
        from preflab.objectives import ObjectiveOutput

        h_w, h_l = logratios(batch)
        loss = -F.logsigmoid(self.beta * (h_w - h_l)).mean()
        return ObjectiveOutput(loss, loss, {})
'''


@pytest.mark.parametrize("name, message", [
    ("Undecorated", "Undecorated is not a dataclass; decorate it with @dataclass"),
    ("a_function", "is a function, not an objective: write a subclass of preflab.objectives.Objective"),
])
def test_user_loss_type_that_is_not_an_objective_dataclass_is_a_config_error(tmp_path, name, message):
    """A function or an undecorated class as loss_type crashed with "TypeError: must be called with a dataclass
    type or instance" from deep in get_objective / the config check."""
    misuse = _write(tmp_path, "misuse.py", MISUSE)
    with pytest.raises(ConfigError, match=message):
        _config(loss_type=f"{misuse}:{name}")


def test_a_user_objective_that_is_not_frozen_is_refused_naming_its_class_and_file(tmp_path):
    """A plain @dataclass objective trained although docs/extending.md says objectives are frozen: nothing it wrote
    onto itself in compute() is saved (resume rebuilds it from the config) nor shared between processes, so it is
    refused before any model loads, naming the class and its file and the fix; an nn.Module objective (SparsePO's
    kind, whose state_dict is saved) needs no frozen=True."""
    import re

    from preflab.objectives import get_objective
    from preflab.objectives.sparsepo import SparsePO

    misuse = _write(tmp_path, "misuse.py", MISUSE)
    with pytest.raises(ConfigError) as err:
        _config(loss_type=f"{misuse}:NotFrozen")
    assert re.search(rf"NotFrozen \(in {re.escape(str(misuse))}\) is a @dataclass without frozen=True; write "
                     r"@dataclass\(frozen=True\) above it", str(err.value)), str(err.value)
    assert not SparsePO.__dataclass_params__.frozen and get_objective(SparsePO).__class__ is SparsePO


@pytest.mark.parametrize("name, message", [
    ("ReturnsTensor", r"ReturnsTensor.compute returned Tensor; it must return ObjectiveOutput"),
    ("ReturnsScalarLosses", r"losses of shape \(\);.*losses of shape \(2,\)"),
])
def test_user_objective_returning_the_wrong_output_is_named(tmp_path, name, message):
    """compute() returning a bare tensor failed mid-training with "AttributeError: 'Tensor' object has no attribute
    'metrics'"; a scalar `losses` trained (and weighted sums / evaluation read it per example) without a word."""
    from preflab.errors import PreflabError
    from preflab.objectives import PairBatch, get_objective

    misuse = _write(tmp_path, "misuse.py", MISUSE)
    batch = PairBatch.from_sums([-10.0, -3.0], [-12.0, -2.5], [-11.0, -3.2], [-11.5, -2.0])
    with pytest.raises(PreflabError, match=message):
        get_objective(f"{misuse}:{name}")(batch)


MY_REWARDS = '''
def wrong_signature(completion):
    return 1.0


def returns_scalar(prompts, completions, **kwargs):
    return 0.5


def returns_strings(prompts, completions, **kwargs):
    return ["good" for _ in completions]


def no_kwargs(prompts, completions):
    return [float(len(c)) for c in completions]
'''


def test_user_reward_function_with_a_wrong_signature_is_refused_up_front(tmp_path):
    """reward_funcs: my_rewards.py:f with f(completion) dropped every completion as a judge failure and the run
    stopped with "the judge failed ... for 64 of 64 completions", the TypeError never shown."""
    from preflab.loops.judge import Judge
    from preflab.online.tasks import resolve_judge

    rewards = _write(tmp_path, "my_rewards.py", MY_REWARDS)
    with pytest.raises(ConfigError, match=r"'wrong_signature' \(.*my_rewards.py\) takes \(completion\) and cannot "
                                          r"be called with prompts and completions"):
        Judge(resolve_judge(f"{rewards}:wrong_signature"))


@pytest.mark.parametrize("name, message", [
    ("returns_scalar", r"returned float 0.5; it must return a list with one number \(or None\) per completion"),
    ("returns_strings", r"returned 'good' \(str\) for a completion; each value must be a number, or None"),
])
def test_user_reward_function_returning_non_numbers_is_a_config_error(tmp_path, name, message):
    """A reward function returning a float, or a list of strings, counted every completion as a judge failure
    (the cause unseen); its return value is now refused by name."""
    from preflab.loops.judge import Judge
    from preflab.online.tasks import resolve_judge

    judge = Judge(resolve_judge(f"{_write(tmp_path, 'my_rewards.py', MY_REWARDS)}:{name}"))
    with pytest.raises(ConfigError, match=message):
        judge(["p1", "p2"], ["a", "bb"])


def test_judge_failures_name_the_first_exception(tmp_path):
    """A reward function without **kwargs raises on the completion_ids preflab passes: the run's error said only
    "judge/failed counts exceptions"; the Judge now keeps the first failure for that message."""
    from preflab.loops.judge import Judge
    from preflab.online.tasks import resolve_judge

    judge = Judge(resolve_judge(f"{_write(tmp_path, 'my_rewards.py', MY_REWARDS)}:no_kwargs"))
    assert judge(["p1", "p2"], ["a", "bb"])[0].tolist() == [1.0, 2.0]  # without completion_ids it works
    # user-trial-4: the keyword it cannot take is refused before any call, not counted completion by completion
    with pytest.raises(ConfigError, match=r"cannot be called with completion_ids=\.\.\.: .* Add \*\*kwargs"):
        judge(["p3", "p4"], ["c", "dd"], completion_ids=[[1], [2, 3]])
    assert judge.failed == 0 and judge.failure_note() == ""

    def raises(prompts, completions, **kwargs):
        raise ValueError("no score for these")

    judge = Judge(raises)
    scores, _ = judge(["p3", "p4"], ["c", "dd"], completion_ids=[[1], [2, 3]])
    assert torch.isnan(scores).all() and judge.failed == 2
    assert judge.failure_note() == " The first failure: judge 'raises' raised ValueError: no score for these."


def test_judge_failure_note_ends_with_one_full_stop():
    """An exception text that ends a sentence itself (a reward function naming the completion's columns:
    `... solution=[...].`) was shown with a second full stop, `solution=[...]..`; the note now ends with one."""
    from preflab.loops.judge import Judge

    def checks_solution(prompts, completions, solution=None, **kwargs):
        raise ValueError(f"cannot parse solution={solution!r}.")

    judge = Judge(checks_solution)
    scores, _ = judge(["p"], ["c"], columns=[{"solution": "[1, 2]"}])
    assert torch.isnan(scores).all() and judge.failed == 1
    assert judge.failure_note() == (" The first failure: judge 'checks_solution' raised ValueError: cannot parse "
                                    "solution=['[1, 2]'].")


def test_online_dpo_refuses_a_user_objective_whose_extras_online_pairs_lack(tmp_path):
    """trainer: online_dpo with loss_type my_losses.py:MarginWeighted (extras margin, weight) sampled and judged a
    whole round, then failed at the first step with MissingExtraError; now refused before any model loads, naming
    what online pairs do carry (score_chosen / score_rejected), which an objective may read."""
    from preflab.online.run import OnlineRun

    losses = _write(tmp_path, "my_losses.py", MY_LOSSES + '''

@dataclass(frozen=True)
class ScoreMargin(MarginWeighted):
    required_extras = ("score_chosen", "score_rejected")
''')
    online = dict(task="online", online_task="demo", trainer="online_dpo", model_name_or_path="builtin:tiny-llama",
                  max_steps=1, use_cpu=True)
    cfg = _config(loss_type=f"{losses}:MarginWeighted", **online)
    with pytest.raises(ConfigError, match=r"needs batch.extras \['margin', 'weight'\], which trainer 'online_dpo' "
                                          r"does not build.*\['score_chosen', 'score_rejected'\]"):
        OnlineRun(cfg)
    from preflab.online.run import check_online_pair_extras
    from preflab.online.trainers import TRAINERS

    ok = _config(loss_type=f"{losses}:ScoreMargin", **online)
    check_online_pair_extras(ok.objective(), TRAINERS["online_dpo"], ok)  # extras the pairs carry: accepted


MY_BUILDERS = '''
import torch


def best_vs_median(scores, generator):
    """The best completion against the median one of each prompt."""
    pairs = []
    for p, row in enumerate(scores):
        valid = torch.nonzero(~row.isnan()).flatten()
        order = valid[torch.argsort(row[valid], descending=True)]
        if len(order) >= 2 and row[order[0]] > row[order[len(order) // 2]]:
            pairs.append((p, int(order[0]), int(order[len(order) // 2])))
    return pairs


def pairs_a_nan(scores, generator):
    return [(0, 0, 1)]
'''


def test_online_pair_builder_from_a_user_file(tmp_path):
    """pair_builder took only best_vs_worst | all_pairs | rso: a researcher's own rule (best vs median) needed a
    fork. It now takes module:function or file.py:function; each triple is checked, and a misspelt name is refused
    when the config is read, not after the first generation round."""
    from preflab.loops.pair_builders import build_pairs

    builders = _write(tmp_path, "my_builders.py", MY_BUILDERS)
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [1.0, 1.0, 1.0, 1.0], [0.2, float("nan"), 0.7, 0.4]])
    plan = build_pairs(scores, f"{builders}:best_vs_median")
    assert plan.triples == [(0, 1, 3), (2, 2, 3)] and plan.unscorable == 1
    with pytest.raises(ConfigError, match=r"paired completion 1 of prompt 0, which the judge could not score"):
        build_pairs(torch.tensor([[0.5, float("nan")]]), f"{builders}:pairs_a_nan")
    online = dict(task="online", online_task="demo", trainer="online_dpo", max_steps=1)
    assert _config(pair_builder=f"{builders}:best_vs_median", **online).pair_builder.endswith(":best_vs_median")
    with pytest.raises(ConfigError, match="Did you mean 'best_vs_median'"):
        _config(pair_builder=f"{builders}:best_vs_medain", **online)


def test_objectives_listing_of_a_user_subclass_claims_nothing_of_its_parent(tmp_path):
    """`preflab objectives my.py:HalfDPO` (a subclass of DPO with another compute) printed "(aliases: sigmoid)" and
    "checked against: reference code: TRL 1.16 ... 1e-9": DPO's alias (which does not name the user's class) and
    DPO's verification record, for a formula nobody checked."""
    from preflab.objectives import objective_info

    sub = _write(tmp_path, "my_sub.py", '''
from dataclasses import dataclass

from preflab.objectives.dpo import DPO


@dataclass(frozen=True)
class HalfDPO(DPO):
    def compute(self, batch):
        out = super().compute(batch)
        out.loss, out.losses = out.loss / 2, out.losses / 2
        return out


@dataclass(frozen=True)
class CheckedDPO(HalfDPO):
    checked_against = "paper text: my derivation, section 2"
''')
    info = objective_info(f"{sub}:HalfDPO")
    assert info["aliases"] == [] and info["checked_against"] == "not recorded"
    assert objective_info(f"{sub}:CheckedDPO")["checked_against"] == "paper text: my derivation, section 2"
    assert objective_info("dpo")["aliases"] == ["sigmoid"]


def test_missing_relative_plugin_file_names_the_current_directory(tmp_path, monkeypatch):
    """`preflab train` from another folder than the one holding my_losses.py said only "the file my_losses.py does
    not exist" (the run's saved config.yaml keeps the relative path); the error now names the folder it looked in."""
    from preflab.objectives import get_objective

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"my_losses.py does not exist \(a relative path is read from the current "
                                          rf"directory, {tmp_path}\)"):
        get_objective("my_losses.py:MarginWeighted")


def test_get_objective_takes_the_user_class_itself(tmp_path, monkeypatch):
    """In Python (a notebook), get_objective(MarginWeighted, gamma=0.3) crashed with "TypeError: argument of type
    'type' is not iterable"; the class itself now works alone and in a weighted list, with the DPO value at
    gamma = 0 and unit weights."""
    from preflab.objectives import PairBatch, get_objective

    monkeypatch.syspath_prepend(str(tmp_path))
    _write(tmp_path, "my_losses_cls.py", MY_LOSSES)
    from my_losses_cls import MarginWeighted

    batch = PairBatch.from_sums([-10.0, -3.0], [-12.0, -2.5], [-11.0, -3.2], [-11.5, -2.0],
                                extras={"margin": torch.zeros(2), "weight": torch.ones(2)})
    mine = get_objective(MarginWeighted, beta=0.1, gamma=0.0)
    assert torch.allclose(mine(batch).losses, get_objective("dpo", beta=0.1)(batch).losses, rtol=0, atol=1e-12)
    both = get_objective([MarginWeighted, "sft"], loss_weights=[1.0, 0.5], gamma=0.3)
    assert both.names == ("MarginWeighted", "sft") and both.parts[0].gamma == 0.3


def _grad_batch(extras=None):
    from preflab.objectives import PairBatch

    pc = torch.tensor([-10.0, -3.0, -7.5], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-12.0, -2.5, -9.0], dtype=torch.float64, requires_grad=True)
    return PairBatch.from_sums(pc, pr, torch.tensor([-11.0, -3.2, -7.0], dtype=torch.float64),
                               torch.tensor([-11.5, -2.0, -8.0], dtype=torch.float64), extras=extras)


def test_check_objective_runs_the_contract_on_a_user_objective(tmp_path):
    """The contract test (tests/objectives/test_contract.py) runs over registered modules only: an objective in
    the user's own file had no way to be checked against it. check_objective runs those checks on any objective
    and a batch the user gives, and names what fails (here a needs_reference = False that reads the reference)."""
    from preflab.errors import PreflabError
    from preflab.objectives import check_objective, get_objective

    losses = _write(tmp_path, "my_losses.py", MY_LOSSES + '''

@dataclass(frozen=True)
class ClaimsNoReference(MarginWeighted):
    needs_reference = False
''')
    extras = {"margin": torch.tensor([0.1, 0.5, 0.0], dtype=torch.float64),
              "weight": torch.ones(3, dtype=torch.float64)}
    passed = check_objective(get_objective(f"{losses}:MarginWeighted"), _grad_batch(extras))
    assert passed[-3:] == ["a missing extra is named (margin, weight)", "needs a reference (declared)",
                           "splits over micro-batches: the halves' loss sums and gradients are the batch's"]
    assert "reference-free (declared): same losses without a reference" in check_objective(
        get_objective(f"{losses}:NoBeta"), _grad_batch())
    assert len(check_objective(get_objective("dpo"), _grad_batch())) == 9
    with pytest.raises(PreflabError, match="declares needs_reference = False but fails without reference log-probs"):
        check_objective(get_objective(f"{losses}:ClaimsNoReference"), _grad_batch(extras))


MISTAKES = '''
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, logratios


@dataclass(frozen=True)
class TwoArgs(Objective):
    beta: float = 0.1

    def compute(self, batch, extra):
        raise AssertionError("never called")


@dataclass(frozen=True)
class Detached(Objective):
    beta: float = 0.1

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        losses = -F.logsigmoid(self.beta * (h_w - h_l)).detach()
        return ObjectiveOutput(losses.mean(), losses, {})


@dataclass(frozen=True)
class FloatLoss(Objective):
    beta: float = 0.1

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        losses = -F.logsigmoid(self.beta * (h_w - h_l))
        return ObjectiveOutput(float(losses.mean()), losses, {})


@dataclass(frozen=True)
class Undeclared(Objective):
    beta: float = 0.1

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        losses = batch.extra("weight") * -F.logsigmoid(self.beta * (h_w - h_l))
        return ObjectiveOutput(losses.mean(), losses, {})


@dataclass(frozen=True)
class SaysReferenceFree(Objective):
    beta: float = 0.1
    needs_reference = False

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        losses = -F.logsigmoid(self.beta * (h_w - h_l))
        return ObjectiveOutput(losses.mean(), losses, {})


@dataclass(frozen=True)
class NoDefault(Objective):
    tau: float

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        losses = -F.logsigmoid((h_w - h_l) / self.tau)
        return ObjectiveOutput(losses.mean(), losses, {})
'''


def test_user_objective_compute_with_another_signature_is_refused_before_training(tmp_path):
    """`def compute(self, batch, extra)` passed every check at start and crashed at the first step, after the models
    had loaded, with a raw TypeError traceback from Objective.__call__."""
    mistakes = _write(tmp_path, "mistakes.py", MISTAKES)
    with pytest.raises(ConfigError, match=r"TwoArgs \(in .*mistakes\.py\) has compute\(self, batch, extra\); it must "
                                          r"take the batch alone: def compute\(self, batch\)"):
        _config(loss_type=f"{mistakes}:TwoArgs")


def test_user_objective_losses_without_gradient_are_named_alone_or_in_a_weighted_sum(tmp_path):
    """Detached per-example losses crashed the step with "RuntimeError: element 0 of tensors does not require grad"
    (no objective named); as a part of `loss_type: [sigmoid, my.py:Detached]` the part was a constant that trained
    nothing, silently. Under no_grad (evaluation) the same objective still scores."""
    from preflab.errors import PreflabError
    from preflab.objectives import get_objective

    mistakes = _write(tmp_path, "mistakes.py", MISTAKES)
    message = r"Detached\.compute returned per-example losses that do not depend on the policy.* Detached is defined " \
              r"in .*mistakes\.py\."
    with pytest.raises(PreflabError, match=message):
        get_objective(f"{mistakes}:Detached")(_grad_batch())
    with pytest.raises(PreflabError, match=message):
        get_objective(["sigmoid", f"{mistakes}:Detached"], loss_weights=[1.0, 1.0])(_grad_batch())
    with torch.no_grad():
        scored = get_objective(f"{mistakes}:Detached")(_grad_batch()).losses
    assert torch.allclose(scored, get_objective("sigmoid")(_grad_batch()).losses.detach())


def test_user_objective_errors_name_the_class_its_file_and_the_fix(tmp_path):
    """A float loss was "loss of shape ()" (the shape it must have); an extra read without declaring it said "this
    objective needs ..."; a needs_reference = False objective that reads the reference died with "AttributeError:
    'NoneType' object has no attribute 'sum'"."""
    from preflab.errors import MissingExtraError, MissingReferenceError, PreflabError
    from preflab.objectives import get_objective

    mistakes = _write(tmp_path, "mistakes.py", MISTAKES)
    with pytest.raises(PreflabError, match=r"FloatLoss\.compute returned loss as a float, not a tensor and losses of "
                                           r"shape \(3,\).* FloatLoss is defined in .*mistakes\.py\."):
        get_objective(f"{mistakes}:FloatLoss")(_grad_batch())
    with pytest.raises(MissingExtraError, match=r"Undeclared \(in .*mistakes\.py\) reads batch\.extra\('weight'\) but "
                                                r"does not declare it: add 'weight' to its class attribute "
                                                r"required_extras"):
        get_objective(f"{mistakes}:Undeclared")(_grad_batch())
    bare = _grad_batch()
    bare.ref_chosen = bare.ref_rejected = None
    with pytest.raises(MissingReferenceError, match=r"SaysReferenceFree \(in .*mistakes\.py\): logratios\(batch\) "
                                                    r"reads the reference log-probs.*declares needs_reference = False"):
        get_objective(f"{mistakes}:SaysReferenceFree")(bare)


def test_user_objective_parameter_without_default_is_named(tmp_path):
    """A field without a default (`tau: float`) left unset was "TypeError: NoDefault.__init__() missing 1 required
    positional argument: 'tau'" with a traceback, alone or in a loss_type list; set, it trains with that value."""
    mistakes = _write(tmp_path, "mistakes.py", MISTAKES)
    message = r"NoDefault \(in .*mistakes\.py\) has parameter\(s\) \['tau'\] without a default, and none was given"
    with pytest.raises(ConfigError, match=message):
        _config(loss_type=f"{mistakes}:NoDefault").objective()
    with pytest.raises(ConfigError, match=message):
        _config(loss_type=[f"{mistakes}:NoDefault", "sft"], loss_weights=[1.0, 0.5]).objective()
    assert _config(loss_type=f"{mistakes}:NoDefault", tau=2.0).objective().tau == 2.0


def test_user_objective_beta_default_overridden_by_the_run_is_said(tmp_path, capsys):
    """A user class declaring `beta: float = 2.0` trained with beta 0.1 (the run's option, passed to every objective
    with a beta field) without a word, while `preflab objectives my.py:Class` listed beta = 2.0."""
    losses = _write(tmp_path, "my_losses.py", MY_LOSSES + '''

@dataclass(frozen=True)
class BigBeta(MarginWeighted):
    beta: float = 2.0
''')
    capsys.readouterr()
    assert _config(loss_type=f"{losses}:BigBeta").objective().beta == 0.1
    assert ("preflab: note: beta is not set: BigBeta trains with the run's beta=0.1 (the beta option's default), not "
            "its own field default beta=2; set beta to choose (beta=2 for the class's own).") in capsys.readouterr().err
    assert _config(loss_type=[f"{losses}:BigBeta", "sft"], beta=0.5).objective().parts[0].beta == 0.5
    _config(loss_type=f"{losses}:MarginWeighted")  # its default is the run's 0.1: nothing to say
    assert "beta is not set" not in capsys.readouterr().err


def test_objectives_listing_of_a_parameter_without_default_says_to_set_it(tmp_path, capsys):
    """`preflab objectives my.py:NoDefault` printed `tau = <dataclasses._MISSING_TYPE object at 0x...>`."""
    from preflab.cli import main

    mistakes = _write(tmp_path, "mistakes.py", MISTAKES)
    assert main(["objectives", f"{mistakes}:NoDefault"]) == 0
    assert "      tau = (no default: set it)\n" in capsys.readouterr().out


@pytest.mark.parametrize("spec, message", [
    ("my_losses.py", r"unknown objective 'my_losses.py': an objective in a file is named with its class, "
                     r"'my_losses.py:ClassName'"),
    ("my_losses.MarginWeighted", r"named 'package.module:ClassName' \(here perhaps 'my_losses:MarginWeighted'\)"),
])
def test_user_objective_named_without_its_class_says_how_to_name_it(spec, message):
    """`loss_type: my_losses.py` or `my_losses.MarginWeighted` said only "unknown objective ... Run `preflab
    objectives` to list them", which lists the built-in ones."""
    with pytest.raises(ConfigError, match=message):
        _config(loss_type=spec)


def test_objective_nonfinite_from_the_first_step_is_not_blamed_on_the_learning_rate(tmp_path):
    """An objective whose loss is NaN on the starting weights stopped with "... Lower the learning rate or check the
    data.": no update had been applied, so the learning rate could not be the cause."""
    from preflab.errors import NonFiniteError
    from preflab.loops.offline import Trainer

    losses = _write(tmp_path, "my_losses.py", MY_LOSSES + '''

@dataclass(frozen=True)
class NaNLoss(MarginWeighted):
    required_extras = ()

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        losses = -F.logsigmoid(self.beta * (h_w - h_l)) * float("nan")
        return ObjectiveOutput(losses.mean(), losses, {})
''')
    cfg = _config(loss_type=f"{losses}:NaNLoss", output_dir=str(tmp_path / "run"), max_steps=3,
                  per_device_train_batch_size=2, max_length=64, logging_steps=1)
    with pytest.raises(NonFiniteError, match=r"saved in .*checkpoint-3\. Every step from the first was non-finite on "
                                             r"the starting weights \(no update was applied, so the learning rate is "
                                             r"not the cause\): check the objective \(loss_type .*my_losses\.py:NaNLoss"):
        Trainer(cfg).train()
