"""3D properties of DPO in the token environment (drastic drop, degradation, dispersion) and their remedies."""
import numpy as np
import pytest
import torch

from preflab.lab.bandit import Bandit
from preflab.lab.dpo_3d import (chosen_nll, likelihood_trajectory, pair_weights, probability_gradient_ratio,
                                sample_pairs)
from preflab.lab.lab_objectives import FlexDPOLoss, registered_objective
from preflab.lab.population import population_train
from preflab.lab.token_env import TokenEnv
from preflab.objectives import PairBatch, get_objective


def test_probability_space_gradient_ratio():
    assert probability_gradient_ratio(0.3, 0.05) == pytest.approx(-6.0, abs=1e-12)


@pytest.fixture(scope="module")
def bigram():
    env = TokenEnv(3, 3, context="last", seed=0)
    return env, sample_pairs(env, 3, seed=0)


def test_chosen_and_rejected_likelihood_both_fall_under_dpo(bigram):
    env, pairs = bigram
    run = likelihood_trajectory(env, pairs, steps=300)
    assert run["rejected"][-1] < run["chosen"][-1] - 3.0            # drastic drop of the rejected
    assert run["chosen"][-1] < 0.0 and run["chosen"].max() > 0.0      # degradation: up first, then below pi_ref
    assert run["unseen_mass"][-1] > run["unseen_mass_ref"]            # dispersion to responses outside the data


def test_sft_term_and_flex_dpo_remedies(bigram):
    env, pairs = bigram
    dpo = likelihood_trajectory(env, pairs, steps=300)
    sft = likelihood_trajectory(env, pairs, steps=300, regularizer=chosen_nll(env, pairs, 0.05))
    flex = likelihood_trajectory(env, pairs, FlexDPOLoss(0.1, 0.05), steps=300)
    assert sft["chosen"][-1] > 0.0
    assert flex["rejected"][-1] > dpo["rejected"][-1]
    registered = registered_objective("flex_dpo", {("beta",): 0.1, ("beta_rejected",): 0.05})
    b = PairBatch.from_sums(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0]),
                            torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.5]))
    torch.testing.assert_close(registered(b).losses.float(), FlexDPOLoss(0.1, 0.05)(b).losses.float())


def test_without_shared_parameters_a_single_pair_raises_the_chosen():
    """Full-prefix tabular policy, one pair: the chosen's log-prob gradient is positive along the DPO flow, so
    the drop needs shared parameters (or several conflicting pairs)."""
    env = TokenEnv(3, 3, context="prefix", seed=0)
    run = likelihood_trajectory(env, [(0, 14)], steps=200, record_every=20)
    assert np.all(np.diff(run["chosen"]) > 0) and run["rejected"][-1] < -3.0


def test_rrpo_with_one_phrase_and_no_kl_is_dpo_on_the_token_env():
    registered = registered_objective("rrpo", {("beta",): 0.5, ("alpha",): 0.0})
    env = TokenEnv(2, 3, seed=0)
    r = np.random.default_rng(2).normal(0.0, 1.0, env.n_sequences)
    data = Bandit.from_rewards(env.probs(env.init())[0], r)
    ones = lambda logp, x, i, j: {"chosen_phrase_ids": torch.ones(len(i), env.L, dtype=torch.long),  # noqa: E731
                                  "rejected_phrase_ids": torch.ones(len(i), env.L, dtype=torch.long)}
    pi_rrpo = population_train(registered, data, model=env, steps=200, extras_fn=ones).final
    pi_dpo = population_train(get_objective("dpo", beta=0.5), data, model=env, steps=200).final
    assert np.max(np.abs(pi_rrpo - pi_dpo)) < 1e-6
    assert np.max(np.abs(pi_dpo - data.optimum(0.5).numpy())) < 1e-6


def test_sparsepo_with_initial_masks_reads_the_exact_token_kl():
    """At pi = pi_ref the token KL and its gradient vanish, so SparsePO's all-ones initial masks give DPO's loss and
    gradient there; away from pi_ref its logit is beta (Delta + KL_w - KL_l) with the env's exact token KL."""
    env = TokenEnv(3, 3, seed=0)
    sparse = registered_objective("sparsepo", {("beta",): 0.1, ("hidden_size",): env.n_states})
    i, j = torch.tensor([0, 5, 9]), torch.tensor([3, 7, 26])
    dpo = get_objective("dpo", beta=0.1)
    at_ref = env.init().requires_grad_(True)
    g_sparse = torch.autograd.grad(sparse(env.batch(at_ref, None, i, j)).loss, at_ref)[0]
    g_dpo = torch.autograd.grad(dpo(env.batch(at_ref, None, i, j)).loss, at_ref)[0]
    torch.testing.assert_close(g_sparse, g_dpo)
    moved = env.init() + 0.3 * torch.randn(env.n_states, 3, generator=torch.Generator().manual_seed(0),
                                           dtype=torch.float64)
    batch = env.batch(moved, None, i, j)
    h_w = batch.policy_chosen.sum - batch.ref_chosen.sum
    h_l = batch.policy_rejected.sum - batch.ref_rejected.sum
    kl_w, kl_l = batch.extras["chosen_token_kl"].sum(-1), batch.extras["rejected_token_kl"].sum(-1)
    expected = torch.nn.functional.softplus(-0.1 * (h_w - h_l + kl_w - kl_l))
    torch.testing.assert_close(sparse(batch).losses.double(), expected)


def test_pair_weights_are_hard_labels(bigram):
    env, pairs = bigram
    W = pair_weights(env, pairs)
    assert float(W.sum()) == pytest.approx(1.0) and int((W > 0).sum()) == len(set(pairs))


def test_chosen_nll_reads_the_chosen_responses_of_the_pairs(bigram):
    """The SFT remedy's term by hand: lam * mean over pairs of -log pi(y_w), on the pairs' chosen indices only."""
    env, _ = bigram
    logp = -torch.arange(1.0, env.n_sequences + 1, dtype=torch.float64).unsqueeze(0)  # log pi(y_k) = -(k + 1)
    pairs = [(0, 3), (2, 1), (5, 0)]
    assert chosen_nll(env, pairs, 0.5)(logp).item() == pytest.approx(0.5 * (1 + 3 + 6) / 3, abs=1e-12)
