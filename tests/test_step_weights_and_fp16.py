"""preflab.step.optimizer_step: uneven micro-batches weight examples, not micro-batches; under an fp16 GradScaler the
gradients are unscaled before clipping, and an overflow lowers the scale and skips the update without counting as a
non-finite step."""
import math
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from preflab.objectives.base import ObjectiveOutput
from preflab.step import optimizer_step

X = torch.tensor([[1.0, 2.0, -1.0], [0.5, -3.0, 2.0], [4.0, 1.0, 0.0], [-2.0, 0.5, 3.0]])
Y = torch.tensor([1.0, -2.0, 5.0, 0.5])


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def micro_batch(rows):
    return SimpleNamespace(row_ids=list(rows))


def squared_error(net, scale=1.0):
    def forward(mb):
        losses = (net(X[mb.row_ids]).squeeze(-1) - Y[mb.row_ids]) ** 2 * scale
        return ObjectiveOutput(losses.mean(), losses, {"err": losses.detach().mean()})
    return forward


def test_uneven_micro_batches_weight_examples_not_micro_batches():
    """One step over micro-batches of 3 and 1 examples = one step over the batch of 4 (mean over examples); a step
    that averaged per micro-batch would weight the lone example 3x more."""
    nets = [model(), model()]
    results = []
    for net, mbs in zip(nets, ([micro_batch([0, 1, 2]), micro_batch([3])], [micro_batch([0, 1, 2, 3])])):
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        results.append(optimizer_step(mbs, squared_error(net), list(net.parameters()), opt, max_grad_norm=None))
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with torch.no_grad():  # independent closed form: mean squared error of the initial model, example-weighted
        initial = ((model()(X).squeeze(-1) - Y) ** 2)
    assert results[0].loss == pytest.approx(float(initial.mean()), rel=1e-6)
    assert results[0].metrics["err"] == pytest.approx(float(initial.mean()), rel=1e-6)
    assert results[0].num_examples == 4 and results[0].row_ids == [0, 1, 2, 3]
    assert any((p0 - p1).abs().max() > 1e-3 for p0, p1 in zip(model().parameters(), nets[0].parameters()))


def fp16_accelerator(init_scale: float):
    """accelerate's fp16 path (backward through scaler.scale, AcceleratedOptimizer.step through scaler.step +
    update) with torch's CPU GradScaler: accelerate only builds a scaler on accelerators, so set it before prepare."""
    acc = Accelerator(cpu=True)
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1000)
    return acc


def sgd_step(net, acc, max_grad_norm, loss_scale=1.0, lr=0.1):
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    if acc is not None:
        opt = acc.prepare(opt)
    return optimizer_step([micro_batch([0, 1, 2, 3])], squared_error(net, loss_scale), list(net.parameters()), opt,
                          accelerator=acc, max_grad_norm=max_grad_norm)


@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_fp16_clipping_sees_unscaled_gradients(max_grad_norm):
    plain, scaled = model(), model()
    expected = sgd_step(plain, None, max_grad_norm)
    acc = fp16_accelerator(init_scale=2.0 ** 12)
    got = sgd_step(scaled, acc, max_grad_norm)
    assert got.grad_norm == pytest.approx(expected.grad_norm, rel=1e-5)  # not 4096x
    assert expected.grad_norm > 0.5  # the clip at 0.5 is active
    assert not got.skipped and not got.overflow
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_fp16_overflow_lowers_the_scale_skips_the_update_and_training_continues():
    net = model()
    before = [p.detach().clone() for p in net.parameters()]
    acc = fp16_accelerator(init_scale=2.0 ** 16)
    opt = acc.prepare(torch.optim.SGD(net.parameters(), lr=0.01))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    huge = squared_error(net, 1e36)  # finite loss (~1e37); times the scale (>= 8192) the gradients overflow float32
    scales = []
    for _ in range(3):
        result = optimizer_step([micro_batch([0, 1, 2, 3])], huge, list(net.parameters()), opt, scheduler=sched,
                                accelerator=acc, max_grad_norm=1.0)
        assert result.overflow and not result.skipped  # not a non-finite step: max_nonfinite_steps never trips
        assert math.isfinite(result.loss)
        scales.append(acc.scaler.get_scale())
    assert scales == [2.0 ** 15, 2.0 ** 14, 2.0 ** 13]  # halved on every overflow (backoff_factor 0.5)
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p, b)  # no update on an overflow
    assert sched.last_epoch == 0  # the schedule does not advance on a skipped update
    result = optimizer_step([micro_batch([0, 1, 2, 3])], squared_error(net), list(net.parameters()), opt,
                            scheduler=sched, accelerator=acc, max_grad_norm=1.0)
    assert not result.overflow and not result.skipped and sched.last_epoch == 1
    assert any(not torch.equal(p, b) for p, b in zip(net.parameters(), before))


def test_fp16_non_finite_loss_is_still_a_non_finite_step():
    net = model()
    acc = fp16_accelerator(init_scale=2.0 ** 8)
    opt = acc.prepare(torch.optim.SGD(net.parameters(), lr=0.01))

    def nan_loss(mb):
        losses = squared_error(net)(mb).losses * float("nan")
        return ObjectiveOutput(losses.mean(), losses)
    result = optimizer_step([micro_batch([0, 1])], nan_loss, list(net.parameters()), opt, accelerator=acc)
    assert result.skipped and not result.overflow
    # the scaler's per-iteration unscale_ state was closed: the next step on the same optimizer runs
    result = optimizer_step([micro_batch([0, 1])], squared_error(net), list(net.parameters()), opt, accelerator=acc)
    assert not result.skipped and not result.overflow


def test_losses_must_match_row_ids():
    """The step divides by the number of row ids: an objective returning another number of losses is refused."""
    from preflab.errors import PreflabError

    net = model()

    def forward(mb):
        losses = (net(X[:2]).squeeze(-1) - Y[:2]) ** 2  # 2 losses for 3 examples
        return ObjectiveOutput(losses.mean(), losses)
    with pytest.raises(PreflabError, match="shape \\(2,\\) for 3 examples"):
        optimizer_step([micro_batch([0, 1, 2])], forward, list(net.parameters()),
                       torch.optim.SGD(net.parameters(), lr=0.1))


def test_clipping_scales_the_update_to_max_grad_norm():
    """Closed form: SGD step = -lr * g * min(1, c / ||g||) with g the example-mean gradient; grad_norm = ||g||."""
    net, reference = model(), model()
    loss = squared_error(reference)(micro_batch([0, 1, 2, 3])).loss
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    assert norm > 2.0  # the clip at 0.5 is active
    result = sgd_step(net, None, max_grad_norm=0.5, lr=0.1)
    assert result.grad_norm == pytest.approx(float(norm), rel=1e-5)
    for p, p0, g in zip(net.parameters(), reference.parameters(), grads):
        torch.testing.assert_close(p, p0 - 0.1 * g * (0.5 / norm), atol=1e-6, rtol=1e-5)


def test_a_finite_loss_with_an_infinite_gradient_skips_the_update_and_the_schedule():
    """Without a GradScaler a non-finite gradient norm skips the step as a non-finite loss does: d sqrt(w) / dw at
    w = 0 is inf while the loss, sqrt(0) = 0, is finite. The weight and the schedule stay where they were."""
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))

    def forward(mb):
        losses = torch.sqrt(w).expand(len(mb.row_ids))
        return ObjectiveOutput(losses.mean(), losses, {})

    result = optimizer_step([micro_batch([0, 1])], forward, [w], opt, sched, max_grad_norm=1.0)
    assert result.skipped and result.loss == 0.0 and math.isinf(result.grad_norm)
    # skipped as a non-finite gradient, before any update: not an update rolled back by the weight guard (which
    # would blame the learning rate in the run's error)
    assert not result.nonfinite_weights
    assert w.item() == 0.0 and sched.last_epoch == 0 and w.grad is None
