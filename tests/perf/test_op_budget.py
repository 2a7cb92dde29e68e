"""Host-side cost of a DPO optimizer step (issue 17): the aten ops it dispatches, pinned to a budget.

On a GPU the step is host-bound: every op is a kernel launch (or at least a dispatch) the host pays for, so a change
that adds ops to the step slows it there even when the CPU benchmarks cannot tell. benchmarks/op_count.py counts
them through a TorchDispatchMode (the same on CPU as on a GPU: the numbers are exact and deterministic); this test
runs that counter on a fixed tiny config (builtin tiny Llama, 2 layers, batch 4, prefix-shared layout, fp32, logging
off) and bounds the ops of steps 2..3 of 4 (step 1 does first-call work; the last step logs).

Measured when the budget was set (branch gpu-host; the commit before it: 907 and 722 ops): reference forward every
step 808 ops (475 kernels, the rest views), precomputed reference log-probs 624 ops (363 kernels); one host read and
9 resp. 10 host -> device copies per step. The budget adds 2%: update it (down, or up with a reason) when the step
changes on purpose. Since the LM head's log-prob backward works in place (preflab.scoring.lm.TargetLogProb) and the policy
reuses the reference's converted mask (layout_scorer_mask): 804 and 622 ops. Segment attention for the prefix-shared
layout (preflab.models.segment_attention, branch prefix-attn; CPU step 0.95x the dense mask's on the benchmark
fixture) adds per attention call 3 gathers, a cat, an output gather and their views and backward: 956 and 730 ops
(of them kernels, on the fixture model with benchmarks/op_count.py: 1124 -> 1203 per step), the budget +2%.
"""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "loops"))
from op_count import OpCounter, counted_steps, counted_trainer, counting  # noqa: E402
from tiny_run import synthetic_pairs  # noqa: E402

STEPS = 4
BUDGET = {"reference": 975, "precomputed": 745}  # ops per optimizer step, see the module docstring


def count_steps(tmp_path, monkeypatch, **overrides):
    """The StepOps of steps 2..STEPS-1 of a tiny offline DPO run, and the trainer."""
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    torch.set_num_threads(1)
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    params = dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", output_dir=str(tmp_path / "run"),
                  learning_rate=1e-3, per_device_train_batch_size=4, max_steps=STEPS, logging_steps=1000,
                  save_strategy="no", disable_tqdm=True, use_cpu=True, layout="prefix_shared")
    params.update(overrides)
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    counter = OpCounter()
    trainer = counted_trainer(Trainer, counter)(config_from_dict(params), policy=policy, ref=frozen_copy(policy),
                                                tokenizer=tok, train_data=synthetic_pairs(n=16))
    assert trainer.layout == "prefix_shared"
    with counting(counter):
        trainer.train()
    return counted_steps(counter, STEPS), trainer


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    try:
        reference, _ = count_steps(tmp_path_factory.mktemp("ref"), monkeypatch)
        precomputed, trainer = count_steps(tmp_path_factory.mktemp("pre"), monkeypatch, precompute_ref_log_probs=True)
    finally:
        monkeypatch.undo()
    assert trainer.ref_logps and trainer.ref_scorer is None  # the cache was used, the reference released
    return {"reference": reference, "precomputed": precomputed}


@pytest.mark.slow  # the fixture: two 4-step runs under the counter
@pytest.mark.parametrize("setting", ["reference", "precomputed"])
def test_dpo_step_stays_within_its_op_budget(measured, setting):
    steps = measured[setting]
    assert all(s.ops == steps[0].ops for s in steps), "the count differs between identical steps"
    ops = steps[0].total
    assert ops <= BUDGET[setting], (
        f"{setting}: {ops} ops per DPO optimizer step, budget {BUDGET[setting]}; every op is a launch on a GPU. "
        f"Most frequent: {steps[0].ops.most_common(12)}")
    assert steps[0].sync_count == 1, steps[0].syncs  # the step's one host read (tests/test_step_syncs.py)


@pytest.mark.slow
def test_precomputed_reference_step_runs_no_reference_forward(measured):
    """With cached reference log-probs a step is the policy's forward and backward only: fewer ops, no more syncs,
    and exactly 3/4 of the matrix multiplies (the reference forward is one more forward pass: each linear layer is
    one mm forward, two backward), one host -> device copy more (the cached values' [2B, L] grid)."""
    ref, pre = measured["reference"][0], measured["precomputed"][0]
    assert pre.total < ref.total and pre.kernels < ref.kernels
    assert pre.sync_count <= ref.sync_count
    assert pre.ops["mm"] * 4 == ref.ops["mm"] * 3, (pre.ops["mm"], ref.ops["mm"])
    assert pre.h2d == ref.h2d + 1, (pre.h2d, ref.h2d)


def test_counter_sees_what_a_step_adds(tmp_path, monkeypatch):
    """The budget can fail: a metric built op by op from a torch.tensor moved to the device (a host -> device copy
    on a GPU) is seen by the counter, op for op."""
    from preflab.objectives.dpo import DPO

    base, _ = count_steps(tmp_path / "base", monkeypatch)
    original = DPO.compute

    def wasteful(self, batch):
        out = original(self, batch)
        extra = out.losses.detach().abs().max() * torch.tensor(2.0).to(out.losses.device)  # abs, max, mul + copy
        out.metrics = {**out.metrics, "extra": extra}
        return out

    monkeypatch.setattr(DPO, "compute", wasteful)
    more, _ = count_steps(tmp_path / "more", monkeypatch)
    assert more[0].h2d == base[0].h2d + 1
    added = more[0].ops - base[0].ops  # the step's metric sums take the new metric in the same stack: no op there
    assert added == {"detach": 1, "abs": 1, "max": 1, "mul": 1, "_to_copy": 1}, added
