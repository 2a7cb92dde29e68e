"""DCPO (methods §45): Diffusion-DPO's loss with beta = 500; per-image captions are a scorer input (see
tests/diffusion/test_pair_scoring.py for c_w = c_l == Diffusion-DPO and the native target)."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, get_objective


def test_toy_numbers_with_beta_500():
    e = [torch.tensor([v], dtype=torch.float64) for v in (0.1000, 0.1002, 0.1001, 0.1001)]
    out = get_objective("dcpo")(PairBatch.from_sums(*[-v for v in e]))
    # inside = -(500/2)(-0.0002 - 0) = 0.05
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.05)), abs=1e-12)
    assert out.loss.item() == pytest.approx(0.668460, abs=1e-6)


def test_equals_diffusion_dpo_at_the_same_beta():
    g = torch.Generator().manual_seed(0)
    e = 0.1 + 1e-2 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    batch = PairBatch.from_sums(-e[0], -e[1], -e[2], -e[3])
    torch.testing.assert_close(get_objective("dcpo")(batch).losses,
                               get_objective("diffusion_dpo", beta=500.0)(batch).losses, atol=0, rtol=0)
