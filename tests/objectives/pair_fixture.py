"""The shared toy pair of methods/objectives.md §0: S_theta(y_w) = -10, S_theta(y_l) = -12, S_ref(y_w) = -11,
S_ref(y_l) = -11.5 (so h_w = 1, h_l = -0.5, Delta = 1.5)."""
import torch

from preflab.objectives import PairBatch


def toy(dtype=torch.float64, grad=False):
    """(PairBatch of the toy pair, policy_chosen leaf, policy_rejected leaf)."""
    t = lambda v, g=False: torch.tensor([v], dtype=dtype, requires_grad=g)  # noqa: E731
    pc, pr = t(-10.0, grad), t(-12.0, grad)
    return PairBatch.from_sums(pc, pr, t(-11.0), t(-11.5)), pc, pr
