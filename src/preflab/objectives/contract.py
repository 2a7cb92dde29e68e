"""The objective contract as a check anyone can run on their own objective (DESIGN.md, "The objective contract").

    from preflab.objectives import PairBatch, check_objective, get_objective
    batch = PairBatch.from_sums(pc, pr, rc, rr, extras={"margin": ..., "weight": ...})   # policy sums requires_grad
    check_objective(get_objective("my_losses.py:MarginWeighted"), batch)                 # the checks it passed

The checks are those tests/objectives/test_contract.py runs over every registered objective, on a batch the caller
gives (it knows its extras): a scalar differentiable loss equal to the mean of one loss per example, detached
metrics, a loss that depends on the policy's log-probs, for a PairBatch objective three checks of its sense
(preflab.objectives._pair_checks: it reads the chosen, prefers the chosen, uses the reference it declares), a
MissingExtraError naming each declared extra when it is absent, a truthful `needs_reference` (refused without a
reference when declared, unchanged without one when not), and a loss that splits over micro-batches unless it declares `micro_batch_statistic`: the sum of the losses of
the batch equals the sums over its two halves, in value and gradient (preflab.step backpropagates that sum, so only
then are 2 processes x b rows the same run as 1 process x 2b; base.couples_micro_batch). A failed check is a
PreflabError saying which and why.
"""
from __future__ import annotations

import copy
import dataclasses

import torch

from preflab.errors import MissingExtraError, MissingReferenceError, PreflabError
from preflab.objectives.base import ListBatch, PairBatch, SequenceLogps, UnpairedBatch, couples_micro_batch
from preflab.objectives._panels import declared_panels
from preflab.objectives._pair_checks import check_pair_sense


def _policy_leaves(batch) -> list[torch.Tensor]:
    sides = [batch.policy_chosen, batch.policy_rejected] if isinstance(batch, PairBatch) else [batch.policy]
    return [s.token_logps for s in sides]


def without_reference(batch):
    """A shallow copy of `batch` with its reference log-probs removed (what a reference-free run passes)."""
    batch = copy.copy(batch)
    if isinstance(batch, PairBatch):
        batch.ref_chosen = batch.ref_rejected = None
    else:
        batch.ref = None
        if isinstance(batch, UnpairedBatch):
            batch.ref_kl = None
    return batch


def _spread(sums, lengths, requires_grad: bool = False) -> SequenceLogps:
    """Sequences whose log-probs sum to `sums` ([B] or [B, K]), spread evenly over `lengths` tokens, padded to 6."""
    sums, lengths = torch.as_tensor(sums, dtype=torch.float64), torch.as_tensor(lengths)
    mask = torch.arange(6) < lengths.unsqueeze(-1)
    tokens = (sums / lengths.clamp_min(1)).unsqueeze(-1).expand(*sums.shape, 6) * mask
    return SequenceLogps(tokens.clone().requires_grad_(requires_grad), mask)


def example_batch(objective):
    """A small batch of `objective`'s kind for `check_objective` (4 examples of different lengths, reference log-probs,
    policy log-probs that require grad, float64), with the extras its class's `example_extras(batch)` gives; a
    required extra it does not give is a PreflabError saying to write that classmethod."""
    cls = type(objective)
    scale = float(getattr(cls, "example_score_scale", 1.0))  # diffusion scores are -MSE gaps of ~1e-4
    if cls.batch_type is PairBatch:
        chosen, rejected = [3, 5, 2, 4], [4, 2, 5, 1]  # lengths
        s = lambda v: [x * scale for x in v]  # noqa: E731
        batch = PairBatch(_spread(s([-10.0, -3.0, -7.5, -2.0]), chosen, True),
                          _spread(s([-12.0, -2.5, -9.0, -4.0]), rejected, True),
                          _spread(s([-11.0, -3.2, -7.0, -2.5]), chosen), _spread(s([-11.5, -2.0, -8.0, -3.0]), rejected))
    elif cls.batch_type is UnpairedBatch:
        lengths = [3, 5, 2, 4]
        labels = torch.tensor([True, False, True, False])
        batch = UnpairedBatch(_spread([-10.0, -3.0, -7.5, -2.0], lengths, True), labels,
                              _spread([-11.0, -3.2, -7.0, -2.5], lengths), _spread([-9.0, -4.0, -6.0, -3.0], lengths),
                              _spread([-9.5, -4.5, -6.5, -2.0], lengths))
    elif cls.batch_type is ListBatch:
        lengths = torch.tensor([[3, 4, 2]] * 4)
        batch = ListBatch(_spread([[-4.0, -6.0, -5.0]] * 4, lengths, True), torch.tensor([[1.0, 0.0, 0.5]] * 4),
                          _spread([[-4.5, -5.5, -5.0]] * 4, lengths))
    else:
        raise PreflabError(f"{cls.__name__}: batch_type {cls.batch_type.__name__} has no example batch; call "
                           "check_objective(objective, batch) with a batch of your own.")
    batch.extras.update(cls.example_extras(batch))
    missing = [k for k in cls.required_extras if k not in batch.extras]
    if missing:
        raise PreflabError(f"{cls.__name__} reads the extras {missing}, which its example_extras(batch) does not give: "
                           "write the classmethod example_extras(cls, batch) returning a plausible tensor for each, "
                           "or call check_objective(objective, batch) with a batch of your own.")
    return batch


def check_objective(objective, batch) -> list[str]:
    """Run the contract checks of `objective` (an instance) on `batch` (its batch kind, with its extras, reference
    log-probs and policy log-probs that require grad); returns the names of the checks passed."""
    name = type(objective).__name__
    leaves = _policy_leaves(batch)
    if not all(t.requires_grad for t in leaves):
        raise PreflabError(f"check_objective({name}): give policy log-probs that require grad (e.g. "
                           "torch.tensor([...], requires_grad=True)), so the loss's dependence on them can be checked.")
    out = objective(batch)  # Objective.__call__ checks the output's type and shapes
    passed = ["returns ObjectiveOutput with a scalar loss and one loss per example"]
    if not out.loss.requires_grad:
        raise PreflabError(f"{name}: loss does not require grad; it must be computed from the policy's log-probs.")
    losses = out.losses.detach()
    if not bool(torch.isfinite(losses).all()) or not bool(torch.isfinite(out.loss.detach())):
        raise PreflabError(f"{name}: loss {float(out.loss.detach()):.6g} and per-example losses {losses.tolist()} on "
                           "this batch (finite log-probs) are not all finite: look for a log or a division of a "
                           "value that can be 0 (log(sigmoid(x)) for F.logsigmoid(x), x / n for x / n.clamp_min(1)).")
    if not torch.allclose(out.loss.detach(), losses.to(out.loss.dtype).mean(), rtol=1e-6, atol=1e-9):
        raise PreflabError(f"{name}: loss {float(out.loss.detach()):.6g} is not the mean of losses "
                           f"({float(losses.mean()):.6g}); the step averages per-example losses over the batch.")
    passed.append("loss = mean(losses)")
    attached = [k for k, v in out.metrics.items() if torch.is_tensor(v) and v.requires_grad]
    if attached:
        raise PreflabError(f"{name}: metrics {attached} carry gradient; .detach() them.")
    passed.append("metrics detached")
    drawn = [k for _, _, keys in declared_panels(objective) for k in keys]  # a malformed declaration is refused
    absent = [k for k in drawn if k not in out.metrics]
    if absent:
        raise PreflabError(f"{name}: metric_panels names {absent}, which compute() does not return in its metrics "
                           f"({sorted(out.metrics)}); `preflab report` would draw nothing for them.")
    if drawn:
        passed.append(f"the metrics its report panels draw are returned ({', '.join(drawn)})")
    grads = torch.autograd.grad(out.loss, leaves, allow_unused=True)
    if not any(g is not None and bool(g.abs().sum() > 0) for g in grads):
        raise PreflabError(f"{name}: the loss's gradient with respect to the policy's log-probs is zero on this batch.")
    passed.append("loss depends on the policy")
    if isinstance(batch, PairBatch):
        passed += check_pair_sense(objective, batch, name)
    for key in objective.required_extras:
        reduced = copy.copy(batch)
        reduced.extras = {k: v for k, v in batch.extras.items() if k != key}
        try:
            objective(reduced)
        except MissingExtraError as err:
            if key not in str(err):
                raise PreflabError(f"{name}: without extra {key!r} the error does not name it: {err}") from err
        else:
            raise PreflabError(f"{name}: ran without its declared extra {key!r}; list only the extras it reads.")
    if objective.required_extras:
        passed.append(f"a missing extra is named ({', '.join(objective.required_extras)})")
    bare = without_reference(batch)
    if objective.needs_reference:
        try:
            objective(bare)
        except PreflabError as err:
            if "reference" not in str(err):
                raise
        else:
            raise PreflabError(f"{name}: declares needs_reference = True but ran without reference log-probs.")
        passed.append("needs a reference (declared)")
    else:
        try:
            again = objective(bare)
        except (AttributeError, TypeError, MissingReferenceError) as err:
            raise PreflabError(f"{name}: declares needs_reference = False but fails without reference log-probs "
                               f"({type(err).__name__}: {err}); set needs_reference = True.") from err
        if not torch.allclose(again.losses.detach(), out.losses.detach()):
            raise PreflabError(f"{name}: declares needs_reference = False but its losses change when the reference "
                               "log-probs are removed; set needs_reference = True.")
        passed.append("reference-free (declared): same losses without a reference")
    if batch.size > 1:
        _check_splits(objective, batch, name)
        passed.append("micro_batch_statistic (declared): loss not split" if couples_micro_batch(objective) else
                      "splits over micro-batches: the halves' loss sums and gradients are the batch's")
    return passed


def _rows(value, index, size: int, where: str):
    """`value` (a batch field or extra) restricted to the rows `index` of a batch of `size` examples; a number (or a
    0-dim tensor) belongs to the whole step and is kept."""
    if value is None or isinstance(value, (bool, int, float)) or (torch.is_tensor(value) and value.dim() == 0):
        return value
    if isinstance(value, SequenceLogps):
        return SequenceLogps(value.token_logps[index], value.mask[index])
    if torch.is_tensor(value) and value.shape[0] == size:
        return value[index]
    raise PreflabError(f"cannot split the batch by example: {where} is {type(value).__name__} "
                       f"{tuple(value.shape) if torch.is_tensor(value) else ''} without an example axis of {size}; give "
                       "tensors with one row per example (or numbers of the whole batch).")


def split_batch(batch, index):
    """The micro-batch of rows `index` (a 1-d index tensor) of `batch`: every SequenceLogps, tensor and extra sliced
    along the examples, numbers kept (label_counts recomputed by the objective: dropped)."""
    fields = {}
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if f.name == "extras":
            fields[f.name] = {k: _rows(v, index, batch.size, f"extras[{k!r}]") for k, v in value.items()}
        else:
            fields[f.name] = None if f.name == "label_counts" else _rows(value, index, batch.size, f.name)
    return type(batch)(**fields)


def loss_sum_and_gradients(objective, batch, leaves, parts, split=None) -> tuple:
    """(sum of the per-example losses over the micro-batches `parts` of `batch`, its gradients wrt `leaves`): what
    preflab.step backpropagates for those micro-batches before dividing by the step's example count. `split(batch,
    index)` forms each micro-batch (default split_batch)."""
    split = split or split_batch
    total = sum(objective(split(batch, index)).losses.sum() for index in parts)
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    return total.detach(), [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]


def _check_splits(objective, batch, name: str) -> None:
    """PreflabError when the loss of `batch` is not the loss of its two halves (value or gradient) and the objective
    does not declare micro_batch_statistic: a resume on another number of processes would train another objective
    unrefused (preflab.resume_check). A declared objective is not checked here (its halves may agree on a batch
    whose rows repeat); tests/objectives/test_micro_batch_coupling.py checks the declarations on generic batches."""
    if couples_micro_batch(objective):
        return
    leaves, k = _policy_leaves(batch), batch.size // 2
    every = torch.arange(batch.size)
    whole, whole_grads = loss_sum_and_gradients(objective, batch, leaves, [every])
    halves, half_grads = loss_sum_and_gradients(objective, batch, leaves, [every[:k], every[k:]])
    tol = {"rtol": 1e-7, "atol": 1e-9} if whole.dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    if not torch.allclose(whole, halves.to(whole.dtype), **tol) or not all(
            torch.allclose(a, b, **tol) for a, b in zip(whole_grads, half_grads)):
        raise PreflabError(
            f"{name}: the losses of this batch of {batch.size} sum to {float(whole):.9g} and their gradient is not "
            f"the same over its halves of {k} and {batch.size - k} (sum {float(halves):.9g}): the loss holds a "
            "statistic of its micro-batch (a mean, a normalisation or a sort over the batch). Declare it as the class "
            "attribute micro_batch_statistic = True (or a property), so that a run resumed on another number of "
            "processes keeps its micro-batches (preflab.resume_check), or compute each example's loss from its own "
            "row.")

