"""The objective contract, run over every registered objective (STYLE.md 9.5, RELIABILITY.md J)."""
import dataclasses

import pytest
import torch

from preflab.errors import ConfigError, MissingExtraError, PreflabError
from preflab.objectives.contract import without_reference
from preflab.objectives import (
    ListBatch, PairBatch, SequenceLogps, UnpairedBatch, _aliases, get_objective, list_objectives, objective_class,
    objective_info,
)

NAMES = list_objectives()


def _seq(values, lengths, T=6, requires_grad=False):
    """[B] or [B,K] sums spread evenly over `lengths` tokens, padded to T."""
    values = torch.as_tensor(values, dtype=torch.float64)
    lengths = torch.as_tensor(lengths)
    mask = torch.arange(T) < lengths.unsqueeze(-1)
    tok = (values / lengths.clamp_min(1)).unsqueeze(-1).expand(*values.shape, T) * mask
    tok = tok.clone().requires_grad_(requires_grad)
    return SequenceLogps(tok, mask)


def make_batch(cls, scale=1.0, requires_grad=False, neutral=False):
    """A small batch of the objective's kind; `neutral` puts policy = reference with equal lengths.
    An objective whose scores live on another scale (diffusion: -MSE gaps ~1e-4) sets `example_score_scale`."""
    B = 4
    scale = scale * getattr(cls, "example_score_scale", 1.0)
    if cls.batch_type is PairBatch:
        lw, ll = ([3] * B, [3] * B) if neutral else ([3, 5, 2, 4], [4, 2, 5, 1])
        pc = [-10.0, -3.0, -7.5, -2.0] if not neutral else [-5.0] * B
        pr = [-12.0, -2.5, -9.0, -4.0] if not neutral else [-5.0] * B
        rc = [-11.0, -3.2, -7.0, -2.5] if not neutral else pc
        rr = [-11.5, -2.0, -8.0, -3.0] if not neutral else pr
        s = lambda v, l, g=False: _seq([x * scale for x in v], l, requires_grad=g)  # noqa: E731
        batch = PairBatch(s(pc, lw, requires_grad), s(pr, ll, requires_grad), s(rc, lw), s(rr, ll))
    elif cls.batch_type is UnpairedBatch:
        lens = [3, 5, 2, 4]
        pv = [-10.0, -3.0, -7.5, -2.0] if not neutral else [-5.0] * B
        rv = [-11.0, -3.2, -7.0, -2.5] if not neutral else pv
        s = lambda v, g=False: _seq([x * scale for x in v], lens, requires_grad=g)  # noqa: E731
        batch = UnpairedBatch(s(pv, requires_grad), torch.tensor([True, False, True, False]), s(rv),
                              s([-9.0, -4.0, -6.0, -3.0]), s([-9.5, -4.5, -6.5, -2.0]))
    else:
        lens = torch.tensor([[3, 4, 2]] * B)
        pv = torch.tensor([[-4.0, -6.0, -5.0]] * B) * scale
        rv = pv if neutral else torch.tensor([[-4.5, -5.5, -5.0]] * B) * scale
        batch = ListBatch(_seq(pv, lens, requires_grad=requires_grad), torch.tensor([[1.0, 0.0, 0.5]] * B),
                          _seq(rv, lens))
    batch.extras.update(cls.example_extras(batch))
    return batch


def _policy_leaves(batch):
    if isinstance(batch, PairBatch):
        return [batch.policy_chosen.token_logps, batch.policy_rejected.token_logps]
    return [batch.policy.token_logps]


@pytest.mark.parametrize("name", NAMES)
def test_builds_with_defaults_and_declares_needs(name):
    cls = objective_class(name)
    obj = get_objective(name)
    assert isinstance(cls.needs_reference, bool)
    assert isinstance(cls.required_extras, tuple)
    assert cls.paper, f"{name} must name its paper"
    assert cls.__module__.endswith(name)
    info = objective_info(name)
    assert info["summary"], f"{name}'s module needs a docstring"
    for alias in cls.aliases:
        assert type(get_objective(alias)) is type(obj)
    # every required extra is supplied by example_extras, else the contract cannot exercise it
    batch = make_batch(cls)
    missing = set(cls.required_extras) - set(batch.extras)
    assert not missing, f"{name}.example_extras must provide {missing}"


CHECKED_PREFIXES = ("reference code: ", "official code: ", "paper text: ", "3rd-party: ", "unverified: ")


@pytest.mark.parametrize("name", NAMES)
def test_declares_what_its_formula_was_checked_against(name):
    """Every objective class states its own `checked_against` (not inherited from a parent), with one of the
    allowed prefixes, and a "reference code" claim names the test that compares against that code."""
    cls = objective_class(name)
    assert "checked_against" in vars(cls), f"{name} must set checked_against itself (base.py lists the prefixes)"
    text = cls.checked_against
    assert text.startswith(CHECKED_PREFIXES), f"{name}.checked_against {text!r} must start with one of " \
                                              f"{CHECKED_PREFIXES}"
    assert len(text) > max(len(p) for p in CHECKED_PREFIXES) + 5, f"{name}.checked_against is empty after its prefix"
    if text.startswith("reference code: "):
        assert "tests/objectives/test_" in text, f"{name}: a reference-code claim must name its equality test"
    assert objective_info(name)["checked_against"] == text


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_mean_of_losses_and_metrics_detached(name):
    cls = objective_class(name)
    batch = make_batch(cls, requires_grad=True)
    out = get_objective(name)(batch)
    assert out.loss.dim() == 0 and out.loss.requires_grad
    assert out.losses.shape == (batch.size,)
    torch.testing.assert_close(out.loss, out.losses.mean())
    for key, value in out.metrics.items():
        assert not value.requires_grad, f"metric {key} must be detached"
    out.loss.backward()
    grads = [t.grad for t in _policy_leaves(batch)]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "loss must depend on the policy"


@pytest.mark.parametrize("name,extra", [(n, e) for n in NAMES for e in objective_class(n).required_extras])
def test_missing_extra_is_a_clear_error(name, extra):
    """Every extra an objective declares, removed one at a time, gives a MissingExtraError naming it."""
    cls = objective_class(name)
    batch = make_batch(cls)
    del batch.extras[extra]
    with pytest.raises(MissingExtraError, match=extra):
        get_objective(name)(batch)


def test_some_objectives_read_extras():  # the parametrisation above is not empty by accident
    assert sum(bool(objective_class(n).required_extras) for n in NAMES) >= 10


@pytest.mark.parametrize("name", NAMES)
def test_reference_declared_truthfully(name):
    cls = objective_class(name)
    batch = without_reference(make_batch(cls))
    if cls.needs_reference:
        with pytest.raises(PreflabError, match="reference"):
            get_objective(name)(batch)
    else:
        out = get_objective(name)(batch)
        assert torch.isfinite(out.loss)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_for_extreme_logps(name, dtype):
    cls = objective_class(name)
    for scale in (1e3, 1.0):
        batch = make_batch(cls, scale=scale)
        for side in [getattr(batch, a) for a in ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected",
                                                  "policy", "ref", "policy_kl", "ref_kl") if hasattr(batch, a)]:
            if side is not None:
                side.token_logps = side.token_logps.to(dtype)
        out = get_objective(name)(batch)
        assert torch.isfinite(out.loss), f"{name} not finite at scale {scale} in {dtype}"
        assert torch.isfinite(out.losses).all()


def _junk_padding(side, value):
    """`side` with every padded (mask False) position overwritten by `value`."""
    return SequenceLogps(torch.where(side.mask, side.token_logps, torch.full_like(side.token_logps, value)), side.mask)


@pytest.mark.parametrize("name", NAMES)
def test_padding_junk_changes_nothing(name):
    """methods/objectives.md §D: padding invariance. Junk in the padded positions of every log-prob side (the
    contract batch pads each response to 6 tokens) leaves every per-example loss unchanged, bit for bit."""
    cls = objective_class(name)
    batch = make_batch(cls)
    before = get_objective(name)(batch).losses
    sides = [a for a in ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected", "policy", "ref",
                         "policy_kl", "ref_kl") if isinstance(getattr(batch, a, None), SequenceLogps)]
    assert any((~getattr(batch, a).mask).any() for a in sides), f"{name}: the contract batch has no padding to test"
    for a in sides:
        setattr(batch, a, _junk_padding(getattr(batch, a), -37.0))
    torch.testing.assert_close(get_objective(name)(batch).losses, before, rtol=0, atol=0)


SURVEY_REFERENCE_FREE = {"orpo", "simpo", "cpo", "asft"}  # objectives.md §C #22's reference-free set


def test_reference_free_tag_agrees_with_needs_reference():
    """methods/objectives.md §C #22: every objective has a tag on each of the survey's axes (data, framework,
    constraint), the survey's reference-free set is tagged so, and the tag tells the truth: an objective tagged
    reference-free never needs a reference, one tagged reference needs it (grpo: only when beta > 0)."""
    tagged_free = set()
    for name in NAMES:
        cls = objective_class(name)
        for axis in ("data", "framework", "constraint"):
            assert cls.tags.get(axis), f"{name} has no {axis!r} tag"
        if "reference-free" in cls.tags["constraint"]:
            tagged_free.add(name)
            assert not get_objective(name).needs_reference, name
        else:
            obj = get_objective(name, beta=0.04) if name == "grpo" else get_objective(name)
            assert obj.needs_reference, f"{name} is tagged {cls.tags['constraint']} but needs no reference"
    assert SURVEY_REFERENCE_FREE <= tagged_free


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    cls = objective_class(name)
    batch = make_batch(cls)
    obj = get_objective(name)
    leaves = _policy_leaves(batch)
    values = [t.detach().clone().requires_grad_(True) for t in leaves]

    def f(*vals):
        if isinstance(batch, PairBatch):
            b = dataclasses.replace(batch, policy_chosen=SequenceLogps(vals[0], batch.policy_chosen.mask),
                                    policy_rejected=SequenceLogps(vals[1], batch.policy_rejected.mask))
        else:
            b = dataclasses.replace(batch, policy=SequenceLogps(vals[0], batch.policy.mask))
        return obj(b).loss

    assert torch.autograd.gradcheck(f, tuple(values), eps=1e-6, atol=1e-5, nondet_tol=1e-7)


@pytest.mark.parametrize("name", [n for n in NAMES if objective_class(n).params()])
def test_unknown_parameter_rejected_with_hint(name):
    params = objective_class(name).params()
    first = sorted(params)[0]
    with pytest.raises(ConfigError, match="Did you mean"):
        get_objective(name, **{first + "x": params[first]})


def test_aliases_unique_and_resolve():
    table = _aliases()
    assert table["sigmoid"] == "dpo"
    assert set(table.values()) <= set(NAMES)


def test_unknown_objective_suggests_nearest():
    with pytest.raises(ConfigError, match="Did you mean 'dpo'"):
        get_objective("dpoo")


PANEL_NAMES = [n for n in NAMES if getattr(objective_class(n), "metric_panels", ())]


def test_metric_panels_are_declared_by_spo_degree():  # the parametrisation below is not empty by accident
    assert "spo_degree" in PANEL_NAMES
    keys = [k for _, _, ks in objective_class("spo_degree").metric_panels for k in ks]
    assert keys == ["loss/degree", "degree/accuracy"]


@pytest.mark.parametrize("name", PANEL_NAMES)
def test_metric_panels_name_metrics_the_objective_returns(name):
    """`preflab report` draws an objective's metric_panels from metrics.jsonl: each name must be a metric compute()
    returns (check_objective says so for a user's objective too)."""
    from preflab.objectives.contract import check_objective

    cls = objective_class(name)
    out = get_objective(name)(make_batch(cls, requires_grad=True))
    for _, _, keys in cls.metric_panels:
        assert set(keys) <= set(out.metrics), (name, keys, sorted(out.metrics))
    passed = check_objective(get_objective(name), make_batch(cls, requires_grad=True))
    assert any(p.startswith("the metrics its report panels draw are returned") for p in passed)


def test_check_objective_refuses_a_metric_panel_the_objective_never_logs():
    from preflab.objectives.contract import check_objective

    cls = objective_class("dpo")
    typo = dataclasses.make_dataclass("TypoPanels", [], bases=(cls,), frozen=True,
                                      namespace={"metric_panels": (("Mine", "y", ("rewards/margin",)),)})
    with pytest.raises(PreflabError, match=r"metric_panels names \['rewards/margin'\], which compute\(\) does not"):
        check_objective(typo(), make_batch(cls, requires_grad=True))
