"""The step's metrics are exact means over what they average (preflab.step): KTO's chosen / rejected means over the
step's desirable / undesirable examples (and tokens) whatever the micro-batches hold, over a logging window too; and
on several processes the ranks' metric names are checked once, not exchanged every step."""
import contextlib
import json

import pytest
import torch

from preflab.errors import PreflabError


def _sequence_stats(model, prompt, completion):
    """(sum of log p of the completion tokens, [C] mean logit over the vocabulary at the positions predicting them),
    straight from the model's full logits of prompt + completion (no padding, no preflab scoring)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    at = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
    logps = torch.log_softmax(logits[at], -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
    return logps.sum(), logits[at].mean(-1)


def test_kto_logged_means_are_over_the_steps_examples_when_a_micro_batch_has_no_desirable_one(tmp_path):
    """4 examples, one desirable, 2 micro-batches of 2 (gradient accumulation): whatever the order, one micro-batch
    has no desirable example. The step-1 row of metrics.jsonl (the weights before the update) equals the direct
    computation over the 4 examples: rewards/logps over the desirable (undesirable) examples, logits over their
    completion tokens. Before, a micro-batch without a desirable example left rewards/chosen and logits/chosen out
    and the step divided by all 4 examples (logged: half the value), and the rejected means were example-weighted
    means of the micro-batches' means."""
    from preflab.config import config_from_dict
    from preflab.data.tokenize import TokenizedUnpaired
    from preflab.loops.offline import Trainer
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    policy, ref = tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=1)
    rows = [([1, 40, 41], [50, 51, 52, 2], True), ([1, 42], [53, 2], False), ([1, 43, 44, 45], [54, 55, 2], False),
            ([1, 46], [56, 57, 58, 59, 60, 2], False)]
    items = [TokenizedUnpaired(i, p, c, label) for i, (p, c, label) in enumerate(rows)]
    beta = 0.1
    want_sums = {"chosen": [], "rejected": []}
    logits = {"chosen": [], "rejected": []}
    for prompt, completion, label in rows:
        side = "chosen" if label else "rejected"
        lp, mean_logits = _sequence_stats(policy, prompt, completion)
        lp_ref, _ = _sequence_stats(ref, prompt, completion)
        want_sums[side].append((lp, beta * (lp - lp_ref)))
        logits[side].append(mean_logits)
    want = {}
    for side in ("chosen", "rejected"):
        want[f"logps/{side}"] = float(torch.stack([lp for lp, _ in want_sums[side]]).mean())
        want[f"rewards/{side}"] = float(torch.stack([r for _, r in want_sums[side]]).mean())
        want[f"logits/{side}"] = float(torch.cat(logits[side]).mean())
    want["rewards/margins"] = want["rewards/chosen"] - want["rewards/rejected"]

    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", loss_type="kto",
                                beta=beta, output_dir=str(tmp_path), learning_rate=1e-3, per_device_train_batch_size=2,
                                gradient_accumulation_steps=2, max_steps=1, logging_steps=1, save_strategy="no",
                                disable_tqdm=True, use_cpu=True))
    trainer = Trainer(cfg, policy=policy, ref=ref, tokenizer=tok, train_data=items)
    labels = [[items[i].label for i in mb.index] for mb in trainer.micro_batches(0)]
    assert len(labels) == 2 and not all(any(lab) for lab in labels)  # a micro-batch without a desirable example
    trainer.train()
    row = next(json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
               if json.loads(line).get("step") == 1 and "loss" in json.loads(line))
    for key, value in want.items():
        assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_a_logging_window_averages_by_the_metrics_counts():
    """Two steps with 3 and 1 desirable examples: the window's rewards/chosen is (3 a + b) / 4, not (a + b) / 2;
    a step without undesirable examples has no rewards/rejected and adds nothing to it; rewards/margins is the
    difference of the window's means; grad_norm is the last step's (transformers logs that step's norm)."""
    from preflab.runlog import average_results
    from preflab.step import StepResult

    margins = {"rewards/margins": ("rewards/chosen", "rewards/rejected")}
    first = StepResult(loss=1.0, metrics={"kl": 0.5, "rewards/chosen": 2.0, "rewards/rejected": -1.0,
                                          "rewards/margins": 3.0}, grad_norm=1.0, skipped=False, num_examples=4,
                       metric_counts={"kl": 4, "rewards/chosen": 3, "rewards/rejected": 1},
                       metric_differences=margins)
    second = StepResult(loss=3.0, metrics={"kl": 1.5, "rewards/chosen": 6.0}, grad_norm=3.0, skipped=False,
                        num_examples=4, metric_counts={"kl": 4, "rewards/chosen": 4}, metric_differences=margins)
    got = average_results([first, second])
    assert got == {"loss": 2.0, "grad_norm": 3.0, "kl": 1.0, "rewards/chosen": (3 * 2.0 + 4 * 6.0) / 7,
                   "rewards/rejected": -1.0, "rewards/margins": (3 * 2.0 + 4 * 6.0) / 7 + 1.0}


class _Twins:
    """A 2-process accelerator on one process: the other rank is this one's twin (its all-reduce doubles every
    sum), so a 2-process step equals the 1-process one; `other` rewrites the twin's copy of the step's tensor."""

    num_processes, device = 2, torch.device("cpu")

    def __init__(self, other=None):
        self.other = other

    def reduce(self, values, reduction):
        return values + (self.other(values.clone()) if self.other is not None else values)

    def backward(self, loss):
        loss.backward()

    def no_sync(self, module):
        return contextlib.nullcontext()


def _kto_steps(accelerator, steps=3):
    """optimizer_step over 2 micro-batches of a linear 'policy' under KTO: step k's first micro-batch has no
    desirable example. Returns the StepResults."""
    from types import SimpleNamespace

    from preflab.objectives import get_objective
    from preflab.objectives.base import SequenceLogps, UnpairedBatch
    from preflab.step import optimizer_step

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3))
    objective = get_objective("kto")
    opt = torch.optim.AdamW([weight], lr=1e-3, fused=True)  # as training (no rollback copy, no step-count read)
    labels = [[False, False], [True, False, True]]

    def forward(mb):
        n = len(mb.row_ids)
        x = torch.randn(n, 3, generator=torch.Generator().manual_seed(mb.seed))
        side = lambda s: SequenceLogps((x @ weight * s)[:, None], torch.ones(n, 1, dtype=torch.bool))  # noqa: E731
        label = torch.tensor(mb.labels)
        return objective(UnpairedBatch(side(1.0), label, side(0.5), side(0.7), side(0.2),
                                       label_counts=(sum(mb.labels), n - sum(mb.labels))))

    results = []
    for step in range(steps):
        mbs = [SimpleNamespace(row_ids=list(range(len(lab))), labels=lab, seed=10 * step + j)
               for j, lab in enumerate(labels)]
        results.append(optimizer_step(mbs, forward, [weight], opt, accelerator=accelerator))
    return results


def test_two_processes_check_the_metric_names_once_not_every_step(monkeypatch):
    """The ranks' metric names are gathered at the first step only (a pickle collective: a host sync on NCCL);
    before, every step gathered them. The 2-process step's metrics equal the 1-process step's (the twin doubles
    sums and counts alike), with rewards/chosen the mean over the step's 2 desirable examples."""
    import accelerate.utils

    calls = []

    def gather_object(obj):
        calls.append(obj)
        return obj * 2

    monkeypatch.setattr(accelerate.utils, "gather_object", gather_object)
    two = _kto_steps(_Twins())
    one = _kto_steps(None)
    assert len(calls) == 1
    for a, b in zip(two, one):
        assert a.metrics.keys() == b.metrics.keys() and "rewards/chosen" in a.metrics
        for key in b.metrics:
            assert a.metrics[key] == pytest.approx(b.metrics[key], rel=1e-12), key
        assert a.metric_counts["rewards/chosen"] == 2 * b.metric_counts["rewards/chosen"] == 4


def test_ranks_with_different_metric_names_are_refused(monkeypatch):
    """First step: the gathered names differ -> PreflabError naming them. A later step: the layout hash inside the
    step's all-reduce differs (the twin's h replaced) -> PreflabError on every rank, with no exchange of names."""
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "gather_object", lambda obj: [obj[0], obj[0][:-1]])
    with pytest.raises(PreflabError, match="different metric names in the first optimizer step"):
        _kto_steps(_Twins(), steps=1)

    def other_layout(values):
        if len(values) == 1:  # the example count
            return values
        for i in range(len(values) - 1):  # the (h, h^2) pair of the layout check
            h = values[i].item()
            if h >= 1 and h == int(h) and values[i + 1].item() == h * h:
                values[i], values[i + 1] = h + 1, (h + 1) ** 2
                return values
        raise AssertionError("no layout hash in the step's sums")

    monkeypatch.setattr(accelerate.utils, "gather_object", lambda obj: obj * 2)
    accelerator = _Twins()
    accelerator._preflab_metric_layout_checked = True
    accelerator.other = other_layout
    with pytest.raises(PreflabError, match="different metric names in this optimizer step"):
        _kto_steps(accelerator, steps=1)


def test_grpo_reward_and_token_ratios_are_exact_over_micro_batches_of_different_sizes():
    """GRPO's reward is a mean over valid completions, kl over completion tokens: 2 micro-batches with 4 and 1 valid
    completions (and different token counts) log the means over all 5 completions and all their tokens, not the
    example-weighted mean of the two micro-batches' means."""
    from types import SimpleNamespace

    from preflab.objectives import get_objective
    from preflab.objectives.base import ListBatch, SequenceLogps
    from preflab.step import optimizer_step

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(2, 3, 4))
    objective = get_objective("grpo", beta=0.04)
    opt = torch.optim.SGD([weight], lr=0.0)
    scores = [torch.tensor([[1.0, 0.0, 2.0], [3.0, 1.0, 5.0]]), torch.tensor([[7.0, 4.0, 0.0], [0.0, 0.0, 0.0]])]
    valid = [torch.tensor([[True, True, False], [True, True, False]]),
             torch.tensor([[True, False, False], [False, False, False]])]
    masks = [torch.tensor([1, 1, 1, 0]).bool().expand(2, 3, 4), torch.tensor([1, 1, 0, 0]).bool().expand(2, 3, 4)]
    refs = [torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(j)) for j in range(2)]

    def forward(mb):
        j = mb.j
        policy = SequenceLogps(torch.log_softmax(weight, -1) * (j + 1), masks[j])
        return objective(ListBatch(policy, scores[j], SequenceLogps(refs[j], masks[j]), valid[j]))

    result = optimizer_step([SimpleNamespace(row_ids=[0, 1], j=j) for j in range(2)], forward, [weight], opt)
    want_reward = float(torch.cat([s[v] for s, v in zip(scores, valid)]).double().mean())
    assert result.metrics["reward"] == pytest.approx(want_reward, rel=1e-12)
    with torch.no_grad():  # k3 KL over every valid completion token of the step
        kls = []
        for j in range(2):
            lp = torch.log_softmax(weight, -1) * (j + 1)
            d = refs[j] - lp
            kls.append(((torch.exp(d) - d - 1)[masks[j] & valid[j][..., None]]).double())
    assert result.metrics["kl"] == pytest.approx(float(torch.cat(kls).mean()), rel=1e-6)
    assert result.metric_counts["reward"] == 5 and result.metric_counts["kl"] == 4 * 3 + 1 * 2


def test_the_token_count_of_all_ranks_rides_in_the_steps_all_reduce():
    """StepResult.num_tokens: the micro-batches' num_tokens summed over the ranks inside the step's one all-reduce
    (the training loop read it with a reduce + .item() of its own every step before)."""
    from types import SimpleNamespace

    from preflab.objectives.base import ObjectiveOutput
    from preflab.step import optimizer_step

    weight = torch.nn.Parameter(torch.ones(2))

    def forward(mb):
        losses = (weight * mb.num_tokens).sum().expand(len(mb.row_ids))
        return ObjectiveOutput(losses.mean(), losses, {"scale": weight.detach().sum()})

    mbs = [SimpleNamespace(row_ids=[0, 1], num_tokens=7), SimpleNamespace(row_ids=[2], num_tokens=5)]
    opt = torch.optim.SGD([weight], lr=0.0)
    assert optimizer_step(mbs, forward, [weight], opt).num_tokens == 12
    assert optimizer_step(mbs, forward, [weight], opt, accelerator=_Twins()).num_tokens == 24


def test_a_two_process_step_reads_the_device_once(monkeypatch):
    """On several processes the step reads the device once, as on one: the window's example count is all-reduced
    and used on the device (before: an `.item()` per step), the names are not gathered after the first step, the
    token count rides in the same all-reduce. Counted with tests/test_step_syncs.py's op set (first step left out:
    it gathers the names once)."""
    import sys
    from pathlib import Path

    import accelerate.utils
    from torch.utils._python_dispatch import TorchDispatchMode

    sys.path.insert(0, str(Path(__file__).parent))
    from test_step_syncs import is_sync

    monkeypatch.setattr(accelerate.utils, "gather_object", lambda obj: obj * 2)
    reads = []
    original_tolist = torch.Tensor.tolist

    def tolist(self):
        reads.append("tolist")
        return original_tolist(self)

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if is_sync(func, args, kwargs or {}):
                reads.append(str(func))
            return func(*args, **(kwargs or {}))

    accelerator = _Twins()
    _kto_steps(accelerator, steps=1)
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    with Count():
        _kto_steps(accelerator, steps=2)
    assert reads == ["tolist", "tolist"], reads


def test_a_two_process_step_copies_its_host_numbers_without_blocking(monkeypatch):
    """On several processes the step sends two host-built tensors to the device (the example count, used for the
    loss scale before the first forward, and the host metrics beside the flags): through
    preflab.data.layout.to_device (non_blocking on an accelerator), never a blocking `.to(device)` or
    `torch.tensor(..., device=)`, which on a GPU waits for all queued work (the previous step's optimizer kernels).
    Counted from step.py's own frames over 2 steps: the old step made 2 blocking copies per step (counted 6 here: on
    CPU its `.to(cpu)` returned the host tensor itself, which the step then moved once more)."""
    import sys

    import preflab.step as step_module

    def from_step() -> bool:
        return sys._getframe(2).f_code.co_filename.replace("\\", "/").endswith("preflab/step.py")

    copies = {"blocking": 0, "to_device": 0}
    host_born = []  # tensors step.py made from Python numbers (in host memory on a GPU machine)
    original_tensor, original_to = torch.tensor, torch.Tensor.to
    original_to_device = getattr(step_module, "to_device", None)  # None: the old step (no such helper)

    def tensor(*args, **kwargs):
        copies["blocking"] += from_step() and kwargs.get("device") is not None
        out = original_tensor(*args, **kwargs)
        if from_step():
            host_born.append(out)
        return out

    def to(self, *args, **kwargs):  # a host-born tensor sent to a device (a dtype cast copies nothing across)
        names_device = any(isinstance(a, (str, torch.device)) for a in (*args, kwargs.get("device")))
        copies["blocking"] += from_step() and names_device and any(self is t for t in host_born) and \
            not kwargs.get("non_blocking", False)
        return original_to(self, *args, **kwargs)

    def to_device(t, device):  # a new tensor, as on a GPU (on CPU .to("cpu") would return t itself)
        copies["to_device"] += from_step()
        moved = original_to_device(t, device)
        return moved.clone() if moved is t else moved

    accelerator = _Twins()
    _kto_steps(accelerator, steps=1)  # the first step gathers the metric names once
    monkeypatch.setattr(torch, "tensor", tensor)
    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(step_module, "to_device", to_device, raising=False)  # raising: the old step had none
    results = _kto_steps(accelerator, steps=2)
    monkeypatch.undo()
    assert len(results) == 2
    assert copies == {"blocking": 0, "to_device": 4}, copies


def test_a_difference_metric_is_recomputed_as_a_minus_b_from_the_steps_means():
    """ObjectiveOutput.metric_differences {d: (a, b)}: the step reports d = mean(a) - mean(b) over its examples
    (each weighted by its micro-batch's examples), not a mean of the micro-batches' d, nor b - a."""
    from types import SimpleNamespace

    from preflab.objectives.base import ObjectiveOutput
    from preflab.step import optimizer_step

    w = torch.nn.Parameter(torch.ones(1))
    values = {(0, 1, 2): (1.0, 4.0), (3,): (5.0, 0.0)}  # a, b of each micro-batch

    def forward(mb):
        a, b = values[tuple(mb.row_ids)]
        losses = (w * 0 + 1).expand(len(mb.row_ids))
        return ObjectiveOutput(losses.mean(), losses, {"a": torch.tensor(a), "b": torch.tensor(b),
                                                       "d": torch.tensor(123.0)}, metric_differences={"d": ("a", "b")})

    result = optimizer_step([SimpleNamespace(row_ids=[0, 1, 2]), SimpleNamespace(row_ids=[3])], forward, [w],
                            torch.optim.SGD([w], lr=0.1))
    mean_a, mean_b = (3 * 1.0 + 5.0) / 4, (3 * 4.0 + 0.0) / 4
    assert (result.metrics["a"], result.metrics["b"]) == pytest.approx((mean_a, mean_b))
    assert result.metrics["d"] == pytest.approx(mean_a - mean_b) == -1.0
