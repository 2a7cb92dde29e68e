"""mcts_step_dpo against reasoning-multimodal-diffusion.md §16: visit-count cDPO toy, stationary point, divergence mask."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective
from preflab.objectives.mcts_step_dpo import visit_smoothing

F64 = dict(dtype=torch.float64)


def toy(z, n_w, n_l):
    pc = torch.tensor([z], **F64, requires_grad=True)
    zero = torch.zeros(1, **F64)
    b = PairBatch.from_sums(pc, zero, zero, zero,
                            extras={"chosen_visits": [n_w], "rejected_visits": [n_l], "diverge_index": [0]})
    return b, pc


def test_toy_value_and_gradient():
    b, pc = toy(2.0, 10.0, 2.0)
    out = get_objective("mcts_step_dpo", beta=0.1)(b)
    out.loss.backward()
    assert out.metrics["label_smoothing"].item() == pytest.approx(1 / 6, abs=1e-12)
    assert out.loss.item() == pytest.approx(0.631472, abs=1e-6)
    assert pc.grad.item() == pytest.approx(-0.028350, abs=1e-6)      # dL/dz


def test_stationary_at_log_odds_of_the_visit_share():
    b, pc = toy(math.log(5.0) / 0.1, 10.0, 2.0)                       # z* = ln((1 - eps)/eps)/beta = 16.0944
    get_objective("mcts_step_dpo", beta=0.1)(b).loss.backward()
    assert pc.grad.item() == pytest.approx(0.0, abs=1e-15)
    b, pc = toy(0.0, 4.0, 4.0)                                         # N_w = N_l: eps = 1/2, flat at z = 0
    get_objective("mcts_step_dpo")(b).loss.backward()
    assert pc.grad.item() == pytest.approx(0.0, abs=1e-15)


def test_smoothing_rule_and_reductions():
    torch.testing.assert_close(visit_smoothing(torch.tensor([10.0, 0.0, 1.0, 3.0]), torch.tensor([2.0, 0.0, 5.0, 0.0])),
                               torch.tensor([1 / 6, 0.0, 0.5, 0.0]))
    b, _ = toy(2.0, 10.0, 2.0)
    cdpo = get_objective("cdpo", beta=0.1, label_smoothing=1 / 6)(b).loss.item()
    assert get_objective("mcts_step_dpo")(b).loss.item() == pytest.approx(cdpo, abs=1e-14)
    dpo = get_objective("dpo", beta=0.1)(b).loss.item()
    assert get_objective("mcts_step_dpo", use_visits=False)(b).loss.item() == pytest.approx(dpo, abs=1e-15)
    assert get_objective("mcts_step_dpo")(toy(2.0, 3.0, 0.0)[0]).loss.item() == pytest.approx(dpo, abs=1e-15)


def step_pair(prefix_shift=0.0):
    """Chosen/rejected share 2 prefix tokens (d = 2); the last row has d = 0 (no shared prefix)."""
    mask_w = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    mask_l = torch.tensor([[True] * 4 + [False], [True] * 4 + [False]])
    g = torch.Generator().manual_seed(0)
    sides = [-torch.rand(2, 5, generator=g, dtype=torch.float64) * 3 for _ in range(4)]
    for s in sides:
        s[0, :2] += prefix_shift                                       # perturb only the shared prefix of row 0
    ex = {"chosen_visits": [5.0, 1.0], "rejected_visits": [1.0, 1.0], "diverge_index": [2, 0]}
    return PairBatch(SequenceLogps(sides[0], mask_w), SequenceLogps(sides[1], mask_l), SequenceLogps(sides[2], mask_w),
                     SequenceLogps(sides[3], mask_l), extras=ex), sides, (mask_w, mask_l)


def test_tokens_before_the_divergence_are_ignored():
    obj = get_objective("mcts_step_dpo", use_visits=False)
    base, sides, (mw, ml) = step_pair()
    moved = step_pair(prefix_shift=-4.0)[0]
    torch.testing.assert_close(obj(base).losses, obj(moved).losses, rtol=0, atol=0)
    # equals DPO on the suffixes (prefix tokens masked out)
    keep = torch.arange(5) >= torch.tensor([[2], [0]])
    cut = PairBatch(*(SequenceLogps(s, m & keep) for s, m in zip(sides, (mw, ml, mw, ml))))
    torch.testing.assert_close(obj(base).losses, get_objective("dpo")(cut).losses)
    assert not torch.equal(obj(base).losses, get_objective("dpo")(PairBatch(*(SequenceLogps(s, m) for s, m in
                                                                               zip(sides, (mw, ml, mw, ml))))).losses)
