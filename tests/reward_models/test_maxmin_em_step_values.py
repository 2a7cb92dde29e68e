"""MaxMin-RLHF's EM round by hand (arXiv:2402.08925, spec methods/models-and-loops.md #35): the E-step's
responsibilities, priors and mixture log-likelihood on fixed pair log-likelihoods, the M-step's row weights, and the
weighted BT fit of one component (a row of weight 2 is that row twice)."""
import torch
from torch import nn

from preflab.reward_models.maxmin import _fit_weighted_bt, em_iteration

ROW_USER = torch.tensor([0, 0, 1, 2, 2])
# [N, K] log sigmoid(r_k(chosen) - r_k(rejected)) of 5 pairs under 2 fitted models
PAIR_LL = torch.tensor([[-0.2, -1.5], [-0.3, -0.9], [-1.0, -0.8], [-2.0, -0.1], [-1.2, -0.4]], dtype=torch.float64)
START = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # users 0, 1 in group 0; user 2 in 1


def _round(hard, resp=START, pair_ll=PAIR_LL):
    seen = {}
    step = em_iteration(resp, ROW_USER, lambda k, w: seen.__setitem__(k, w.clone()), lambda: pair_ll, hard)
    return step, seen


def test_soft_e_step_is_the_posterior_with_the_priors_and_the_m_step_sees_gamma_per_row():
    step, seen = _round(hard=False)
    user_ll = torch.stack([PAIR_LL[:2].sum(0), PAIR_LL[2], PAIR_LL[3:].sum(0)])      # l_{u,k}
    log_prior = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64).log()              # w_k = mean_u gamma_{u,k}
    joint = log_prior + user_ll
    torch.testing.assert_close(step.user_loglik, user_ll)
    torch.testing.assert_close(step.responsibilities, joint.exp() / joint.exp().sum(1, keepdim=True))
    torch.testing.assert_close(step.responsibilities.sum(1), torch.ones(3, dtype=torch.float64))
    assert abs(step.loglik - float(joint.exp().sum(1).log().sum())) < 1e-12
    # the priors handed on are the new responsibilities' means: a distribution over groups
    torch.testing.assert_close(step.priors, step.responsibilities.mean(0))
    assert abs(float(step.priors.sum()) - 1.0) < 1e-12
    for k in range(2):
        torch.testing.assert_close(seen[k], START[ROW_USER, k])


def test_hard_e_step_argmax_includes_the_log_prior():
    # user 1's one pair: -1.0 under group 0, -0.8 under group 1; the prior 2/3 vs 1/3 keeps it in group 0
    step, _ = _round(hard=True)
    assert step.responsibilities.argmax(1).tolist() == [0, 0, 1]
    assert step.changed is False
    torch.testing.assert_close(step.priors.double(), torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    # a clearer preference for group 1 moves user 1 and the round reports the change
    moved = PAIR_LL.clone()
    moved[2] = torch.tensor([-3.0, -0.1], dtype=torch.float64)
    step, _ = _round(hard=True, pair_ll=moved)
    assert step.responsibilities.argmax(1).tolist() == [0, 1, 1] and step.changed is True
    torch.testing.assert_close(step.priors.double(), torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))


def test_weighted_m_step_fit_equals_the_fit_on_repeated_rows():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)

    def fit(c, r, w):
        torch.manual_seed(0)
        model = nn.Linear(4, 1, bias=False)
        _fit_weighted_bt(model, c, r, w, steps=25, lr=0.05, weight_decay=0.0)
        return model.weight.detach().flatten()

    weighted = fit(chosen, rejected, torch.tensor([2.0, 1.0, 0.0]))      # row 2 (weight 0) is not this group's
    repeated = fit(chosen[[0, 0, 1]], rejected[[0, 0, 1]], torch.ones(3))
    torch.testing.assert_close(weighted, repeated, rtol=1e-5, atol=1e-6)
    unweighted = fit(chosen[:2], rejected[:2], torch.ones(2))
    assert (weighted - unweighted).abs().max() > 1e-3


def test_an_emptied_cluster_takes_the_worst_fitting_user_of_a_cluster_that_keeps_members():
    # five users, one pair each; no user prefers group 2, user 4 alone in group 1 fits worst of all
    pair_ll = torch.tensor([[-0.1, -3.0, -50.0], [-2.0, -3.5, -50.0], [-0.3, -3.0, -50.0], [-1.0, -4.0, -50.0],
                            [-5.0, -4.0, -50.0]], dtype=torch.float64)
    start = torch.eye(3, dtype=torch.float64)[[0, 0, 1, 1, 2]]
    step = em_iteration(start, torch.arange(5), lambda k, w: None, lambda: pair_ll, hard=True)
    # the E-step alone gives [0, 0, 0, 0, 1]; group 2 gets user 1 (per-pair fit -2.0, the worst outside a singleton)
    assert step.responsibilities.argmax(1).tolist() == [0, 2, 0, 0, 1] and step.changed is True
    assert step.responsibilities.sum(0).tolist() == [3.0, 1.0, 1.0]


def test_new_users_posterior_carries_the_fitted_priors():
    """RewardMixture.assign (the E-step for held-out users): gamma_{u,k} = w_k exp(l_{u,k}) / sum_j w_j exp(l_{u,j})
    with l_{u,k} the sum of the user's pairs' log sigma(r_k(chosen) - r_k(rejected)); with priors (0.9, 0.1) a
    user whose one pair slightly favours group 1 still lands in group 0."""
    import torch.nn.functional as F

    from preflab.reward_models.maxmin import RewardMixture

    def linear(weight):
        m = nn.Linear(2, 1, bias=False).double()
        m.weight.data = torch.tensor([weight], dtype=torch.float64)
        return m

    models = nn.ModuleList([linear([1.0, 0.0]), linear([0.0, 1.0])])
    mix = RewardMixture(models, torch.tensor([0.9, 0.1], dtype=torch.float64), ["a", "b"], START[:2], START[:2])
    chosen = torch.tensor([[0.5, 0.8], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    rejected = torch.zeros(3, 2, dtype=torch.float64)
    users, posterior = mix.assign(chosen, rejected, ["u", "v", "v"])
    assert users == ["u", "v"]
    ll = torch.stack([F.logsigmoid(torch.tensor([0.5, 0.8], dtype=torch.float64)),
                      F.logsigmoid(torch.tensor([1.0, 0.0], dtype=torch.float64))
                      + F.logsigmoid(torch.tensor([0.0, 2.0], dtype=torch.float64))])
    joint = ll + torch.tensor([0.9, 0.1], dtype=torch.float64).log()
    torch.testing.assert_close(posterior, joint.exp() / joint.exp().sum(1, keepdim=True), rtol=0, atol=1e-12)
    assert posterior.argmax(1).tolist() == [0, 0] and ll[0].argmax().item() == 1
