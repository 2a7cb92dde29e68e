"""PPD (methods §28): Diffusion-DPO's loss on user-conditioned scores (the user branch is tested in
tests/diffusion/test_user_branch.py: identical to the base at init, only the branch trains, two users)."""
import math

import pytest
import torch

from preflab.objectives import PairBatch, get_objective


def test_equals_diffusion_dpo_and_log2_at_init():
    g = torch.Generator().manual_seed(0)
    e = 0.1 + 1e-4 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    batch = PairBatch.from_sums(-e[0], -e[1], -e[2], -e[3])
    ppd = get_objective("ppd")
    torch.testing.assert_close(ppd(batch).losses, get_objective("diffusion_dpo", beta=5000.0)(batch).losses,
                               atol=0, rtol=0)
    at_init = PairBatch.from_sums(-e[0], -e[1], -e[0], -e[1])  # zero-initialised W_V^u: policy == reference
    assert ppd(at_init).loss.item() == pytest.approx(math.log(2), abs=1e-15)
