"""The MaxMin EM mixture of BT reward models exists twice: tabular (numpy, Newton M-step: preflab.lab.maxmin) and
for any torch reward model (Adam M-step: preflab.reward_models.maxmin). On tabular rewards they must agree: the
same user -> group assignment and the same centred BT rewards per group."""
import numpy as np
import torch
from torch import nn

from preflab.lab.maxmin import bt_fit, em_mixture
from preflab.reward_models.maxmin import fit_reward_mixture

K = 3
PREFERS_FIRST = np.array([[0, 6, 8], [2, 0, 6], [1, 2, 0]], dtype=np.float64)  # C[i, j]: times i beat j
# users 0, 3 prefer response 0, users 1, 2 response 2; user 0 labels twice as much, so that the round-robin start
# ({0, 2} vs {1, 3}) is not symmetric and both fits leave it the same way
USER_COUNTS = np.stack([2 * PREFERS_FIRST, PREFERS_FIRST.T, PREFERS_FIRST.T, PREFERS_FIRST])


class TabularReward(nn.Module):
    def __init__(self):
        super().__init__()
        self.r = nn.Parameter(torch.zeros(K))

    def forward(self, response_index):
        return self.r[response_index]


def pairs_from_counts(counts):
    chosen, rejected, users = [], [], []
    for u, c in enumerate(counts):
        for i in range(K):
            for j in range(K):
                chosen += [i] * int(c[i, j])
                rejected += [j] * int(c[i, j])
                users += [u] * int(c[i, j])
    return torch.tensor(chosen), torch.tensor(rejected), users


def test_torch_em_matches_the_tabular_em():
    lab = em_mixture(USER_COUNTS, 2, iterations=5, hard=True, l2=0.0)
    chosen, rejected, users = pairs_from_counts(USER_COUNTS)
    mix = fit_reward_mixture(lambda k: TabularReward(), chosen, rejected, users, 2, iterations=5, hard=True,
                             init="round_robin", steps=1500, lr=0.05)
    assert lab.assignments.tolist() == mix.assignments.tolist() == [0, 1, 1, 0]
    rewards = mix.rewards(torch.arange(K)).double()
    rewards = (rewards - rewards.mean(1, keepdim=True)).numpy()
    np.testing.assert_allclose(rewards, lab.rewards, atol=2e-3)
    # and the tabular M-step is the BT maximum-likelihood fit of the group's pooled counts
    np.testing.assert_allclose(lab.rewards[0], bt_fit(3 * PREFERS_FIRST, l2=0.0), atol=1e-9)
    assert lab.rewards[0][0] > lab.rewards[0][1] > lab.rewards[0][2]
