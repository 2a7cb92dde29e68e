"""Per-step host work the shared step (preflab.step) leaves out, with results bit for bit those of the work it skips:
accelerate's AcceleratedOptimizer.step / zero_grad wrappers (two package look-ups and an inspect.signature a step),
accelerator.backward's division by gradient_accumulation_steps = 1, and weight_guard's one float32 cast per
parameter norm (changes/step-overhead.md)."""
import inspect
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

import preflab.step as step
from preflab import weight_guard
from preflab.objectives.base import ObjectiveOutput

X = torch.tensor([[1.0, 2.0, -1.0], [0.5, -3.0, 2.0], [4.0, 1.0, 0.0], [-2.0, 0.5, 3.0]])
Y = torch.tensor([1.0, -2.0, 5.0, 0.5])


def three_accelerated_steps(max_grad_norm):
    """Three Adam steps through accelerate (prepared model, optimizer and linear scheduler) on a tiny regression:
    (results, parameters, the optimizer's state, the scheduler's last lr)."""
    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / 4)
    net, opt, sched = acc.prepare(net, opt, sched)

    def forward(mb):
        losses = (net(X[mb.row_ids]).squeeze(-1) - Y[mb.row_ids]) ** 2
        return ObjectiveOutput(losses.mean(), losses, {"err": losses.detach().mean()})

    results = [step.optimizer_step([SimpleNamespace(row_ids=[0, 1]), SimpleNamespace(row_ids=[2, 3])], forward,
                                   list(net.parameters()), opt, sched, acc, max_grad_norm) for _ in range(3)]
    state = [{k: v.clone() for k, v in s.items()} for s in opt.optimizer.state.values()]
    return results, [p.detach().clone() for p in net.parameters()], state, sched.get_last_lr()


@pytest.mark.parametrize("max_grad_norm", [None, 0.1])
def test_accelerated_step_skips_the_wrappers_lookups_with_the_same_update(monkeypatch, max_grad_norm):
    """A step on a plain Accelerator calls the inner torch optimizer and loss.backward() itself: accelerate's
    is_lomo_available (importlib find_spec + package metadata, twice per AcceleratedOptimizer.step), zero_grad's
    inspect.signature and accelerator.backward run 0 times in 3 steps (the old step: 6, 3 and 6), and the
    parameters, Adam state, losses, metrics, grad norms and scheduler are bit for bit those of the same steps
    through the wrappers."""
    import accelerate.optimizer as wrapped

    calls = {"lomo": 0, "signature": 0, "backward": 0}

    def counted(name, fn):
        def call(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return call

    with monkeypatch.context() as m:
        m.setattr(wrapped, "is_lomo_available", counted("lomo", wrapped.is_lomo_available))
        m.setattr(wrapped, "inspect", SimpleNamespace(signature=counted("signature", inspect.signature)))
        m.setattr(Accelerator, "backward", counted("backward", Accelerator.backward))
        direct = three_accelerated_steps(max_grad_norm)
    assert calls == {"lomo": 0, "signature": 0, "backward": 0}
    monkeypatch.setattr(step, "_forwarded_to", lambda optimizer, accelerator: None)
    monkeypatch.setattr(step, "_backward_is_plain", lambda accelerator: False)
    through = three_accelerated_steps(max_grad_norm)
    results, params, state, lr = direct
    assert [(r.loss, r.metrics, r.grad_norm, r.skipped) for r in results] == \
        [(r.loss, r.metrics, r.grad_norm, r.skipped) for r in through[0]]
    assert all(torch.equal(a, b) for a, b in zip(params, through[1]))
    assert all(torch.equal(s[k], t[k]) for s, t in zip(state, through[2]) for k in s) and len(state) == 4
    assert lr == through[3] and lr[0] == pytest.approx(0.05 * (1 - 3 / 4))
    assert results[2].loss < results[0].loss and not results[0].skipped  # the steps moved the model


def test_max_abs_bound_of_mixed_dtypes_is_the_largest_norm_cast_once():
    """The bound over bf16, fp16, fp32 and fp64 tensors (an fp64 norm beyond float32's range among them) equals the
    largest of the norms each cast to float32, as the per-norm casts gave it, in float32."""
    tensors = [torch.tensor([3.0, 4.0], dtype=torch.bfloat16), torch.tensor([-6.0, 8.0], dtype=torch.float16),
               torch.tensor([1.0, 2.0, 2.0]), torch.tensor([0.1, 1e-3], dtype=torch.float64)]
    per_norm = torch.stack([n.float() for n in torch._foreach_norm(tensors, 2)]).max()
    got = weight_guard.max_abs_bound(tensors)
    assert got.dtype == torch.float32 and torch.equal(got, per_norm) and float(got) == 10.0
    huge = tensors + [torch.tensor([1e300], dtype=torch.float64)]
    assert torch.equal(weight_guard.max_abs_bound(huge), torch.tensor(float("inf")))
