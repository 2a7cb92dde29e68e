"""tpo_tree against reasoning-multimodal-diffusion.md §33: ranking toys, N = 2 reduction to DPO, adaptive step weights,
and regressions for the defects of the released loss (§A2): objective direction, ties, double counting."""
import math

import pytest
import torch

from preflab.objectives import ListBatch, PairBatch, SequenceLogps, get_objective

F64 = dict(dtype=torch.float64)
ell = lambda u: math.log1p(math.exp(-u))  # noqa: E731


def flat(R, v, valid=None, dtype=torch.float64, grad=False):
    """One prompt, single-token single-step responses with log-ratio R (reference 0)."""
    R = torch.tensor([R], dtype=dtype, requires_grad=grad)
    b = ListBatch(SequenceLogps.from_sums(R), torch.tensor([v], dtype=dtype),
                  SequenceLogps.from_sums(torch.zeros_like(R.detach())), None if valid is None else torch.tensor([valid]))
    b.extras["step_index"] = torch.ones(1, len(v), 1, dtype=torch.long)
    b.extras["hidden"] = torch.ones(1, len(v), 1, 2, dtype=dtype)
    return b, R


def test_ranking_toy_values():
    # v = [9, 5, 1], R = [0.3, 0.1, 0.2], beta = 0.5: s = [0.15, 0.05, 0.10], ranks tau = [1, 3, 2]
    b = flat([0.3, 0.1, 0.2], [9.0, 5.0, 1.0])[0]
    uniform = get_objective("tpo_tree", lambda_weight="uniform")(b).loss.item()
    assert uniform == pytest.approx(0.677105, abs=1e-6)
    assert uniform == pytest.approx((ell(0.1) + ell(0.05) + ell(-0.05)) / 3, abs=1e-12)
    d = lambda tau: 1 / math.log(1 + tau)  # noqa: E731
    lam = {(0, 1): 480 * (d(1) - d(3)), (0, 2): 510 * (d(1) - d(2)), (1, 2): 30 * (d(2) - d(3))}
    assert [round(x, 3) for x in lam.values()] == [346.247, 271.552, 5.667]
    hand = (lam[0, 1] * ell(0.1) + lam[0, 2] * ell(0.05) + lam[1, 2] * ell(-0.05)) / sum(lam.values())
    ranked = get_objective("tpo_tree", beta=0.5)(b).loss.item()
    assert ranked == pytest.approx(0.655551, abs=1e-6) and ranked == pytest.approx(hand, abs=1e-12)


def test_two_responses_reduce_to_dpo_on_mean_log_ratios():
    # single step, multi-token responses; any step weighting cancels with one step
    mask = torch.tensor([[[True, True, True, False], [True, True, False, False]]])
    pol = torch.tensor([[[-1.0, -2.0, -0.5, 7.0], [-3.0, -1.0, 0.0, 0.0]]], **F64)
    ref = torch.tensor([[[-1.2, -2.1, -1.1, 0.0], [-2.7, -1.1, 0.0, 0.0]]], **F64)
    b = ListBatch(SequenceLogps(pol, mask), torch.tensor([[1.0, 0.0]], **F64), SequenceLogps(ref, mask))
    b.extras["step_index"] = mask.long()
    b.extras["hidden"] = torch.randn(1, 2, 4, 3, generator=torch.Generator().manual_seed(0), **F64)
    h = ((pol - ref) * mask).sum(-1) / mask.sum(-1)                    # mean token log-ratios [0.3, -0.1]
    dpo = get_objective("dpo", beta=0.5)(PairBatch.from_sums(h[:, 0], h[:, 1], torch.zeros(1, **F64),
                                                             torch.zeros(1, **F64))).loss.item()
    assert dpo == pytest.approx(ell(0.2), abs=1e-12)
    for kw in ({}, {"lambda_weight": "uniform"}, {"step_weights": "uniform"}):
        assert get_objective("tpo_tree", **kw)(b).loss.item() == pytest.approx(dpo, abs=1e-12)


def test_adaptive_step_weights():
    # gold (top score): step means [0, 0], step hidden means (1,0), (0,1); other: step means [0, -0.5], hidden (1,0), (1,0)
    # -> w_other = [1 + 1, 1 + 0] = [2, 1], R_other = (2*0 + 1*(-0.5))/3 = -1/6
    mask = torch.ones(1, 2, 4, dtype=torch.bool)
    pol = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.3, -0.3, -0.4, -0.6]]], **F64)
    b = ListBatch(SequenceLogps(pol, mask), torch.tensor([[1.0, 0.0]], **F64), SequenceLogps(torch.zeros_like(pol), mask))
    b.extras["step_index"] = torch.tensor([[[1, 1, 2, 2], [1, 1, 2, 2]]])
    b.extras["hidden"] = torch.tensor([[[[1.0, 0], [1, 0], [0, 1], [0, 1]], [[2.0, 0], [0, 0], [1, 0], [1, 0]]]], **F64)
    obj = get_objective("tpo_tree", lambda_weight="uniform", beta=0.5)
    assert obj(b).loss.item() == pytest.approx(ell(0.5 / 6), abs=1e-12)
    flat_w = get_objective("tpo_tree", lambda_weight="uniform", beta=0.5, step_weights="uniform")
    assert flat_w(b).loss.item() == pytest.approx(ell(0.5 * 0.25), abs=1e-12)


def random_list(perm=None):
    g = torch.Generator().manual_seed(3)
    K, T = 4, 5
    mask = torch.arange(T) < torch.tensor([[5, 3, 4, 2]]).unsqueeze(-1)
    pol, ref = -torch.rand(1, K, T, generator=g, **F64) * 2, -torch.rand(1, K, T, generator=g, **F64) * 2
    step = torch.where(mask, 1 + (torch.arange(T) >= 1).long(), 0)
    hid = torch.randn(1, K, T, 3, generator=g, **F64)
    v = torch.tensor([[2.0, 7.0, 4.0, 1.0]], **F64)
    p = torch.arange(K) if perm is None else torch.tensor(perm)
    b = ListBatch(SequenceLogps(pol[:, p], mask[:, p]), v[:, p], SequenceLogps(ref[:, p], mask[:, p]))
    b.extras.update(step_index=step[:, p], hidden=hid[:, p])
    return b


@pytest.mark.parametrize("kw", [{}, {"lambda_weight": "uniform"}, {"step_weights": "pairwise"}])
def test_invariant_to_list_order(kw):
    obj = get_objective("tpo_tree", **kw)
    base = obj(random_list()).loss.item()
    for perm in ([3, 2, 1, 0], [1, 3, 0, 2]):
        assert obj(random_list(perm)).loss.item() == pytest.approx(base, abs=1e-12)


def test_loss_decreases_as_the_top_response_rises():
    # the released code minimised -log sigmoid(beta * rank_loss), i.e. *raised* the ranking loss
    b, R = flat([0.3, 0.1, 0.2], [9.0, 5.0, 1.0], grad=True)
    get_objective("tpo_tree")(b).loss.backward()
    assert R.grad[0, 0] < 0 and R.grad[0, 2] > 0


def test_ties_and_invalid_entries_add_nothing():
    obj = get_objective("tpo_tree", lambda_weight="uniform")
    two = obj(flat([0.3, 0.1], [1.0, 0.0])[0]).loss.item()
    # a tied copy of the worse response: no tie pair (no log 2 term), each ordered pair counted once
    assert obj(flat([0.3, 0.1, 0.1], [1.0, 0.0, 0.0])[0]).loss.item() == pytest.approx(two, abs=1e-12)
    assert obj(flat([0.3, 0.1], [1.0, 1.0])[0]).loss.item() == 0.0
    padded = flat([0.3, 0.1, 5.0], [1.0, 0.0, 9.0], valid=[True, True, False])[0]
    assert obj(padded).loss.item() == pytest.approx(two, abs=1e-12)


def test_large_scores_are_finite_and_shift_invariant():
    obj = get_objective("tpo_tree")
    a = obj(flat([0.3, 0.1, 0.2], [200.0, 150.0, 0.0], dtype=torch.float32)[0]).loss
    b = obj(flat([0.3, 0.1, 0.2], [0.0, -50.0, -200.0], dtype=torch.float32)[0]).loss
    assert torch.isfinite(a) and a.item() == pytest.approx(b.item(), abs=1e-6)
    scaled = get_objective("tpo_tree", gain_scale=0.1)(flat([0.3, 0.1, 0.2], [90.0, 50.0, 10.0])[0]).loss.item()
    assert scaled == pytest.approx(0.655551, abs=1e-6)   # gain_scale 0.1 on scores x10 = the toy


def test_sum_reduction_is_the_papers_eq_7_by_hand():
    # TPO §3.1 (ICLR 2025 submission text): L = -sum_{v_i > v_j} lam_ij log sigmoid(r_i - r_j),
    # lam_ij = |2^v_i - 2^v_j| |1/log(1 + tau(i)) - 1/log(1 + tau(j))|, scores in [0, 1], tau the rank under r.
    # v = [0.9, 0.5, 0.1], R = [0.3, 0.1, 0.2], beta = 0.5: r = [0.15, 0.05, 0.10], tau = [1, 3, 2]
    b = flat([0.3, 0.1, 0.2], [0.9, 0.5, 0.1])[0]
    d = lambda tau: 1 / math.log(1 + tau)  # noqa: E731
    lam01 = (2 ** 0.9 - 2 ** 0.5) * (d(1) - d(3))
    lam02 = (2 ** 0.9 - 2 ** 0.1) * (d(1) - d(2))
    lam12 = (2 ** 0.5 - 2 ** 0.1) * (d(2) - d(3))
    hand = lam01 * ell(0.1) + lam02 * ell(0.05) + lam12 * ell(-0.05)
    assert get_objective("tpo_tree", lambda_reduction="sum")(b).loss.item() == pytest.approx(hand, abs=1e-12)
    normalized = get_objective("tpo_tree")(b).loss.item()
    assert normalized == pytest.approx(hand / (lam01 + lam02 + lam12), abs=1e-12)
    # without lambda weights Eq. 7 sums the pair losses (N = 2: the DPO loss on r)
    uniform = get_objective("tpo_tree", lambda_weight="uniform", lambda_reduction="sum")(b).loss.item()
    assert uniform == pytest.approx(ell(0.1) + ell(0.05) + ell(-0.05), abs=1e-12)


def test_sum_reduction_refuses_overflowing_gains_and_bad_names():
    from preflab.errors import ConfigError, PreflabError
    with pytest.raises(PreflabError, match="overflows"):
        get_objective("tpo_tree", lambda_reduction="sum")(flat([0.3, 0.1], [2000.0, 0.0])[0])
    with pytest.raises(PreflabError, match="underflows"):  # 2^-2000 = 0 would silently zero the pair's weight
        get_objective("tpo_tree", lambda_reduction="sum")(flat([0.3, 0.1], [0.0, -2000.0])[0])
    padded = flat([0.3, 0.1, 5.0], [0.9, 0.1, -5000.0], valid=[True, True, False])[0]  # invalid entries are ignored
    assert torch.isfinite(get_objective("tpo_tree", lambda_reduction="sum")(padded).loss)
    with pytest.raises(ConfigError, match="lambda_reduction"):
        get_objective("tpo_tree", lambda_reduction="mean")


def test_pairwise_step_weights_are_the_papers_eq_10_by_hand():
    # TPO §3.2 (ICLR 2025 submission text), Eq. 10: RM_ij = sum_k (1 + cos(emb(s_ik), emb(s_jk)))
    # (beta log-ratio of s_ik - beta log-ratio of s_jk), the step log-ratios summed over the step's tokens (Eq. 9).
    # Two steps of two tokens. Response 0 (v = 1): step sums S_0 = [0.0, 0.4]; response 1 (v = 0): S_1 = [0.5, -1.0].
    # Step 1 embeddings (1, 0) and (1, 0): cos 1, weight 2; step 2: (0, 1) and (1, 0): cos 0, weight 1.
    # RM_01 = 0.5 * (2 * (0 - 0.5) + 1 * (0.4 + 1.0)) = 0.2
    mask = torch.ones(1, 2, 4, dtype=torch.bool)
    pol = torch.tensor([[[0.1, -0.1, 0.3, 0.1], [0.2, 0.3, -0.4, -0.6]]], **F64)
    b = ListBatch(SequenceLogps(pol, mask), torch.tensor([[1.0, 0.0]], **F64), SequenceLogps(torch.zeros_like(pol), mask))
    b.extras["step_index"] = torch.tensor([[[1, 1, 2, 2], [1, 1, 2, 2]]])
    b.extras["hidden"] = torch.tensor([[[[1.0, 0], [1, 0], [0, 1], [0, 1]], [[2.0, 0], [0, 0], [1, 0], [1, 0]]]], **F64)
    eq10 = get_objective("tpo_tree", beta=0.5, step_weights="pairwise")(b)
    assert eq10.loss.item() == pytest.approx(ell(0.2), abs=1e-12)
    # unweighted, Eq. 10 is Eq. 9: DPO on the responses' summed log-ratios (0.4 and -0.5), beta 0.5
    b.extras["hidden"] = torch.zeros(1, 2, 4, 2, **F64)  # cos of zero vectors is 0: every weight 1
    assert get_objective("tpo_tree", beta=0.5, step_weights="pairwise")(b).loss.item() == \
        pytest.approx(ell(0.5 * 0.9), abs=1e-12)


def test_pairwise_step_weights_refuse_responses_with_different_steps():
    from preflab.errors import PreflabError
    b = random_list()  # responses of 5, 3, 4, 2 tokens: the 2-token one still has 2 steps, so make one single-step
    b.extras["step_index"] = b.extras["step_index"].clone()
    b.extras["step_index"][0, 3] = torch.where(b.policy.mask[0, 3], 1, 0)
    with pytest.raises(PreflabError, match="response 0 .2 steps. against response 3 .1 steps"):
        get_objective("tpo_tree", step_weights="pairwise")(b)
    assert torch.isfinite(get_objective("tpo_tree")(b).loss)  # the released code's weighting takes it
