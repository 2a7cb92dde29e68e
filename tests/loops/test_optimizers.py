"""optim / optim_args (TRL's TrainingArguments names): the optimizer preflab builds equals the one transformers'
Trainer builds (Trainer.get_optimizer_cls_and_kwargs, with create_optimizer's weight-decay group): the same class,
param-group hyperparameters and defaults, and bit-equal parameters after the same steps on the same gradients; a
preflab run's every optimizer step equals transformers' optimizer replayed on that step's gradients and rate; the
state (Adafactor's factored row / column moments and int step, SGD's momentum, ...) goes through the checkpoint's
safetensors + JSON bit-exactly, and a resumed run ends on the uninterrupted run's weights."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from preflab.loops import optimizer as optimizer_module
from preflab.loops.optimizer import build_optimizer

sys.path.insert(0, str(Path(__file__).parent))
from optimizer_state_files import assert_restored_state_steps_exactly  # noqa: E402
from tiny_run import run  # noqa: E402

CASES = [("adafactor", None), ("sgd", "momentum=0.9,dampening=0.1"), ("sgd", "momentum=0.8, nesterov=True"),
         ("adagrad", "lr_decay=0.01,eps=1e-6"), ("rmsprop", "momentum=0.5,alpha=0.9,centered=true"),
         ("adamw_torch", None), ("adamw_torch_fused", None)]


class Net(torch.nn.Module):
    """Parameters transformers' get_decay_parameter_names all decays (no bias, no norm), of the three shapes
    Adafactor treats differently: a matrix and a 3-d tensor (factored second moments), a vector (not factored)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(5, 3, generator=gen))
        self.cube = torch.nn.Parameter(torch.randn(2, 3, 4, generator=gen))
        self.scale = torch.nn.Parameter(torch.randn(4, generator=gen))


def _config(optim, optim_args, **extra):
    return SimpleNamespace(optim=optim, optim_args=optim_args, learning_rate=0.05, weight_decay=0.1, adam_beta1=0.8,
                           adam_beta2=0.95, adam_epsilon=1e-6, **extra)


def _transformers_optimizer(model, optim, optim_args, tmp_path, weight_decay=0.1):
    """What transformers' Trainer.create_optimizer builds for `model` (its two weight-decay groups)."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), optim=optim, optim_args=optim_args, learning_rate=0.05,
                             weight_decay=weight_decay, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6,
                             use_cpu=True, report_to=[])
    decay = Trainer.get_decay_parameter_names(None, model)
    groups = [{"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": weight_decay},
              {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0}]
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return cls(groups, **kwargs)


def _hyper(group: dict) -> dict:
    return {k: v for k, v in group.items() if k != "params"}


@pytest.mark.parametrize("optim, optim_args", CASES)
def test_optimizer_equals_transformers_trainers_and_its_steps_are_bit_equal(tmp_path, optim, optim_args):
    ours_model, theirs_model = Net(), Net()
    ours = build_optimizer(_config(optim, optim_args), list(ours_model.parameters()))
    theirs = _transformers_optimizer(theirs_model, optim, optim_args, tmp_path)
    assert type(ours) is type(theirs)
    assert not theirs.param_groups[1]["params"]  # every parameter is decayed in transformers' grouping too
    assert _hyper(ours.param_groups[0]) == _hyper(theirs.param_groups[0])
    if not optim.startswith("adamw"):  # AdamW's default weight_decay is never read (every group sets its own)
        assert ours.defaults == theirs.defaults
    if optim == "adafactor":
        assert (ours.defaults["scale_parameter"], ours.defaults["relative_step"], ours.defaults["lr"]) == \
            (False, False, 0.05)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, q in zip(ours_model.parameters(), theirs_model.parameters(), strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    moved = 0
    for p, q, start in zip(ours_model.parameters(), theirs_model.parameters(), Net().parameters(), strict=True):
        assert torch.equal(p, q)
        moved += int(not torch.equal(p, start))
    assert moved == 3
    for p, q in zip(ours_model.parameters(), theirs_model.parameters(), strict=True):
        mine, their = ours.state[p], theirs.state[q]
        assert mine.keys() == their.keys() and all(
            torch.equal(mine[k], their[k]) if torch.is_tensor(mine[k]) else mine[k] == their[k] for k in mine)


def test_adafactor_state_is_factored_and_goes_through_the_checkpoint_files_bit_exactly(tmp_path):
    """Adafactor's state: row / column second moments of other shapes than the parameter, python int steps and a
    0-d RMS tensor; split into safetensors + JSON and joined again it loads into a new optimizer that then steps
    exactly as the original."""
    model, again = Net(), Net()
    optimizer = build_optimizer(_config("adafactor", None), list(model.parameters()))
    gen = torch.Generator().manual_seed(2)
    grads = [[torch.randn(p.shape, generator=gen) for p in model.parameters()] for _ in range(4)]

    def step(net, opt, k):
        for p, g in zip(net.parameters(), grads[k], strict=True):
            p.grad = g.clone()
        opt.step()

    for k in range(2):
        step(model, optimizer, k)
    proj, cube, scale = (optimizer.state[p] for p in model.parameters())
    assert (proj["exp_avg_sq_row"].shape, proj["exp_avg_sq_col"].shape) == ((5,), (3,))
    assert (cube["exp_avg_sq_row"].shape, cube["exp_avg_sq_col"].shape) == ((2, 3), (2, 4))
    assert scale["exp_avg_sq"].shape == (4,) and "exp_avg_sq_row" not in scale
    assert proj["step"] == 2 and isinstance(proj["step"], int)
    assert_restored_state_steps_exactly(
        model, optimizer, again, lambda net: build_optimizer(_config("adafactor", None), list(net.parameters())),
        step, tmp_path)


def _recording(monkeypatch, record: list):
    """build_optimizer wrapped: each optimizer step of the run records (parameters, gradients, rate) before it and
    the parameters after it."""
    real = optimizer_module.build_optimizer

    def build(cfg, params, owners=None):
        opt = real(cfg, params, owners)

        def before(optimizer, args, kwargs):
            record.append({"params": [p.detach().clone() for p in params], "lr": optimizer.param_groups[0]["lr"],
                           "grads": [p.grad.clone() for p in params]})

        def after(optimizer, args, kwargs):
            record[-1]["after"] = [p.detach().clone() for p in params]

        opt.register_step_pre_hook(before)
        opt.register_step_post_hook(after)
        return opt

    monkeypatch.setattr(optimizer_module, "build_optimizer", build)


@pytest.mark.parametrize("optim, optim_args", [("adafactor", None), ("sgd", "momentum=0.9,nesterov=true"),
                                               ("adagrad", None), ("rmsprop", "momentum=0.5,centered=true")])
def test_a_runs_steps_equal_transformers_optimizer_and_a_resume_equals_the_uninterrupted_run(
        tmp_path, monkeypatch, optim, optim_args):
    """A 6-step DPO run (warmup + linear decay, gradient clipping) with `optim`: every optimizer step equals
    transformers' optimizer (get_optimizer_cls_and_kwargs) stepped on the run's gradients at the run's rate; resumed
    from its step-3 checkpoint, the run ends on the same weights, bit for bit."""
    from transformers import Trainer, TrainingArguments

    record = []
    _recording(monkeypatch, record)
    options = dict(optim=optim, optim_args=optim_args, learning_rate=3e-3, warmup_steps=2, max_steps=6, save_steps=3,
                   max_grad_norm=0.5)
    _, full = run(tmp_path / "full", **options)
    assert len(record) == 6 and record[0]["lr"] == 0.0 and record[2]["lr"] == 3e-3
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), optim=optim, optim_args=optim_args, learning_rate=3e-3,
                             use_cpu=True, report_to=[])
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, None)
    params = [torch.nn.Parameter(p.clone()) for p in record[0]["params"]]
    reference = cls([{"params": params, "weight_decay": 0.0}], **kwargs)
    for k, step in enumerate(record):
        assert all(torch.equal(p, q) for p, q in zip(params, step["params"], strict=True)), k
        for p, g in zip(params, step["grads"], strict=True):
            p.grad = g.clone()
        reference.param_groups[0]["lr"] = step["lr"]
        reference.step()
        assert all(torch.equal(p, q) for p, q in zip(params, step["after"], strict=True)), k
    moved = sum(int(not torch.equal(a, b)) for a, b in zip(record[-1]["after"], record[0]["params"], strict=True))
    assert moved > len(params) // 2
    record.clear()
    _, resumed = run(tmp_path / "resumed", **options, resume_from_checkpoint=str(tmp_path / "full/checkpoint-3"))
    assert len(record) == 3
    for (name, p), q in zip(full.policy.named_parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_a_resume_with_another_optimizer_is_refused_even_with_allow_config_change(tmp_path):
    """Each optimizer has its own hyperparameters and state: torch's load_state_dict would put Adafactor's on SGD
    (which then fails, or steps with the wrong state). The config check names the change; with
    allow_config_change the checkpoint's optimizer is named instead of a crash."""
    from preflab.errors import ConfigError

    options = dict(learning_rate=3e-3, max_steps=4, save_steps=2)
    run(tmp_path / "full", optim="adafactor", **options)
    checkpoint = str(tmp_path / "full/checkpoint-2")
    with pytest.raises(ConfigError, match=r"optim \('adafactor' -> 'sgd'\)"):
        run(tmp_path / "sgd", optim="sgd", resume_from_checkpoint=checkpoint, **options)
    assert json.loads((tmp_path / "full/checkpoint-2/optimizer.json").read_text())["optimizer"] == "Adafactor"
    with pytest.raises(ConfigError, match=r"holds Adafactor optimizer state, and this run's optim builds "
                                          r"SGD; .*Resume with the checkpoint's optim"):
        run(tmp_path / "sgd", optim="sgd", resume_from_checkpoint=checkpoint, allow_config_change=True, **options)
    summary, _ = run(tmp_path / "same", optim="adafactor", resume_from_checkpoint=checkpoint, **options)
    assert summary["resumed_from_step"] == 2


def test_a_checkpoint_naming_no_optimizer_class_is_an_older_preflabs_adamw():
    """optimizer.json of a preflab before optim names no class: it holds AdamW state (all it built), which an AdamW
    run resumes and another optimizer refuses."""
    from preflab.checkpoint import check_same_optimizer
    from preflab.errors import ConfigError

    net = Net()
    check_same_optimizer("old", {}, build_optimizer(_config("adamw_torch", None), list(net.parameters())))
    check_same_optimizer("new", {"optimizer": "SGD"}, build_optimizer(_config("sgd", None), list(net.parameters())))
    with pytest.raises(ConfigError, match="old holds AdamW optimizer state, and this run's optim builds Adagrad"):
        check_same_optimizer("old", {}, build_optimizer(_config("adagrad", None), list(net.parameters())))


@pytest.mark.parametrize("optim, optim_args", [("adafactor", None), ("adagrad", "lr_decay=0.1"), ("sgd", None),
                                               ("rmsprop", "alpha=0.9"), ("adamw_torch", None)])
def test_the_weight_guards_bound_holds_at_every_step_and_spares_the_copy(optim, optim_args):
    """preflab.weight_guard copies weights and optimizer state before a step only when the step could overflow,
    decided by a bound on max |p'|. For each optimizer with a bound: every step's largest weight (at scales of the
    gradient from 1e-3 to 1e3 and weight decay 0.1) is within it, a normal rate needs no copy, and an absurd one
    (1e38) does."""
    from preflab.weight_guard import _group_bound, max_abs_bound, update_could_overflow

    net = Net()
    params = list(net.parameters())
    optimizer = build_optimizer(_config(optim, optim_args), params)
    gen = torch.Generator().manual_seed(3)
    for scale in (1e-3, 1.0, 1e3, 1.0, 1e-3):
        for p in params:
            p.grad = scale * torch.randn(p.shape, generator=gen)
        w = max_abs_bound(params).item()
        grad_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])).item()
        bound = _group_bound(optimizer, optimizer.param_groups[0], w, grad_norm)
        assert not update_could_overflow(optimizer, w, grad_norm)
        optimizer.step()
        assert max(p.abs().max().item() for p in params) <= bound
    optimizer.param_groups[0]["lr"] = 1e38
    assert update_could_overflow(optimizer, w, grad_norm)


@pytest.mark.parametrize("optim, optim_args", [("sgd", "momentum=0.9"), ("rmsprop", "centered=true"),
                                               ("rmsprop", "momentum=0.5")])
def test_optimizers_whose_buffers_carry_earlier_steps_copy_before_every_step(optim, optim_args):
    from preflab.weight_guard import update_could_overflow

    optimizer = build_optimizer(_config(optim, optim_args), list(Net().parameters()))
    assert update_could_overflow(optimizer, 1.0, 1.0)


@pytest.mark.parametrize("optim, optim_args, tight", [("adafactor", None, False), ("adagrad", None, True),
                                                      ("rmsprop", "alpha=0.9", True), ("sgd", None, False)])
def test_the_step_term_of_the_bound_holds_from_zero_weights(optim, optim_args, tight):
    """From zero weights without weight decay the bound is the step term alone: every element of the first update
    is within it, and Adagrad's lr and RMSprop's lr / sqrt(1 - alpha) are reached (to float rounding)."""
    from preflab.weight_guard import _group_bound

    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    params = list(net.parameters())
    optimizer = build_optimizer(SimpleNamespace(**{**vars(_config(optim, optim_args)), "weight_decay": 0.0}), params)
    gen = torch.Generator().manual_seed(4)
    for p in params:
        p.grad = 10 * torch.randn(p.shape, generator=gen)
    grad_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])).item()
    bound = _group_bound(optimizer, optimizer.param_groups[0], 0.0, grad_norm)
    optimizer.step()
    largest = max(p.abs().max().item() for p in params)
    assert 0 < largest <= bound * (1 + 1e-6)
    if tight:
        assert largest == pytest.approx(bound, rel=1e-5)


def test_sgds_bound_holds_when_the_coupled_decay_overshoots():
    """SGD without momentum at lr x weight_decay = 3: p' = p (1 - lr wd) - lr g flips and doubles the weights, so
    the bound w + lr (grad_norm + wd w) needs its decay term (w + lr grad_norm alone is exceeded)."""
    from preflab.weight_guard import _group_bound, max_abs_bound

    net = Net()
    params = list(net.parameters())
    optimizer = build_optimizer(SimpleNamespace(**{**vars(_config("sgd", None)), "learning_rate": 30.0}), params)
    assert optimizer.param_groups[0]["lr"] * optimizer.param_groups[0]["weight_decay"] == pytest.approx(3.0)
    gen = torch.Generator().manual_seed(5)
    for p in params:
        p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
    w = max_abs_bound(params).item()
    grad_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])).item()
    bound = _group_bound(optimizer, optimizer.param_groups[0], w, grad_norm)
    optimizer.step()
    largest = max(p.abs().max().item() for p in params)
    assert w + 30.0 * grad_norm < largest <= bound


@pytest.mark.parametrize("optim", ["adagrad", "rmsprop", "sgd"])
def test_the_coupled_decay_that_would_overflow_the_squared_gradient_makes_the_step_risky(optim):
    """Adagrad, RMSprop and SGD add wd p to the gradient (Adagrad and RMSprop square it into their state): with
    weights of 1e20, weight decay 0.1 and a gradient norm of 1, (g + wd w)^2 = 1e38 exceeds a quarter of float32's
    largest value although the weight bound itself does not; the step is risky. Without weight decay it is not."""
    from preflab.weight_guard import update_could_overflow

    optimizer = build_optimizer(_config(optim, "alpha=0.9" if optim == "rmsprop" else None), list(Net().parameters()))
    assert update_could_overflow(optimizer, 1e20, 1.0)
    optimizer.param_groups[0]["weight_decay"] = 0.0
    assert not update_could_overflow(optimizer, 1e20, 1.0)
