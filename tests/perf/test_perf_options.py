"""Trainer options for speed and memory, end to end on CPU: layouts train like the padded baseline, num_tokens is
the data's token count whatever the layout, gradient checkpointing changes nothing numerically, bf16 autocast is
applied, torch.compile is wired (eager backend here: inductor compiles for minutes on a 2-core machine)."""
import functools
import json
import sys
from pathlib import Path

import pytest
import torch

from preflab.loops.batches import sequence_tokens

sys.path.insert(0, str(Path(__file__).parents[1] / "loops"))
from tiny_run import run, synthetic_pairs  # noqa: E402


def metric_rows(out):
    return [json.loads(line) for line in open(Path(out) / "metrics.jsonl") if '"loss"' in line]


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_layouts_train_like_padded_and_count_the_same_tokens(tmp_path):
    results = {name: run(tmp_path / name, layout=name, max_steps=4) for name in
               ("padded", "prefix_shared", "packed", "prefix_packed")}
    base = metric_rows(tmp_path / "padded")
    pairs = synthetic_pairs()
    plan = results["padded"][1].plan
    expected_tokens = sum(sequence_tokens([pairs[i] for mb in plan.indices(s, 0) for i in mb]) for s in range(4))
    assert base[-1]["num_tokens"] == expected_tokens
    for name, (summary, trainer) in results.items():
        assert summary["layout"] == name
        rows = metric_rows(tmp_path / name)
        assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in base], abs=1e-5)
        assert [r["num_tokens"] for r in rows] == [r["num_tokens"] for r in base]
        assert max_diff(weights(trainer), weights(results["padded"][1])) < 1e-5


def test_gradient_checkpointing_is_exact(tmp_path):
    # gradient checkpointing keeps the dense attention mask (models.segment_attention): compared on that path
    plain, t_plain = run(tmp_path / "plain", max_steps=3, attention="dense")
    ckpt, t_ckpt = run(tmp_path / "ckpt", max_steps=3, gradient_checkpointing=True)
    assert t_ckpt.policy.is_gradient_checkpointing and not t_plain.policy.is_gradient_checkpointing
    assert [r["loss"] for r in metric_rows(tmp_path / "ckpt")] == pytest.approx(
        [r["loss"] for r in metric_rows(tmp_path / "plain")], abs=1e-6)
    assert max_diff(weights(t_ckpt), weights(t_plain)) < 1e-6


def test_bf16_autocast_is_applied(tmp_path):
    from preflab.loops.batches import collate_pairs

    layout = collate_pairs(synthetic_pairs()[:4], 0, "prefix_shared")
    _, fp32 = run(tmp_path / "fp32", max_steps=2)
    with torch.no_grad():
        high = fp32.score(layout).policy_chosen.sum
    _, bf16 = run(tmp_path / "bf16", max_steps=2, bf16=True)  # after a float32 run: make_accelerator resets
    assert bf16.accelerator.mixed_precision == "bf16"
    with torch.no_grad():
        low = bf16.score(layout).policy_chosen.sum
    assert low.dtype == torch.float32  # the log-softmax runs in float32 under autocast
    gap = (low - high).abs().max().item()
    assert 0 < gap < 0.05 * high.abs().max().item()  # bf16 matmuls: close to, but not equal to, float32
    bf16_losses = [r["loss"] for r in metric_rows(tmp_path / "bf16")]
    assert bf16_losses == pytest.approx([r["loss"] for r in metric_rows(tmp_path / "fp32")], abs=0.01)


def test_torch_compile_is_wired(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    _, compiled = run(tmp_path / "compiled", max_steps=2, torch_compile=True)
    _, eager = run(tmp_path / "eager", max_steps=2, attention="dense")  # a compiled scorer keeps the dense mask
    assert type(compiled.scorer).__name__ == "OptimizedModule"
    assert [r["loss"] for r in metric_rows(tmp_path / "compiled")] == pytest.approx(
        [r["loss"] for r in metric_rows(tmp_path / "eager")], abs=1e-6)
    assert max_diff(weights(compiled), weights(eager)) < 1e-6
