"""HyPO (methods/objectives.md §C #7): lam = 0 equals DPO, value = DPO + lam * KL estimate, the RLOO gradient in
closed form, and its unbiasedness for the reverse KL on a categorical policy."""
import pytest
import torch

from preflab.errors import PreflabError
from preflab.objectives import PairBatch, get_objective

F64 = dict(dtype=torch.float64)


def fixture(pol, ref, B=1):
    one = lambda v: torch.full((B,), v, **F64)  # noqa: E731
    return PairBatch.from_sums(one(-10.0), one(-12.0), one(-11.0), one(-11.5),
                               extras={"online_policy_logps": pol, "online_ref_logps": ref})


def test_lam_zero_is_dpo_and_value_is_kl_estimate():
    pol = torch.tensor([[-5.0, -7.0, -6.0]], **F64)
    ref = torch.tensor([[-5.5, -6.0, -6.6]], **F64)  # rho = [0.5, -1.0, 0.6], mean 1/30
    batch = fixture(pol, ref)
    torch.testing.assert_close(get_objective("hypo", lam=0.0)(batch).losses, get_objective("dpo")(batch).losses,
                               rtol=0, atol=1e-12)
    out = get_objective("hypo", beta=0.1, lam=0.5)(batch)
    assert out.loss.item() == pytest.approx(0.6209570478 + 0.5 / 30, abs=1e-9)
    assert out.metrics["kl/online"].item() == pytest.approx(1 / 30, abs=1e-12)


def test_rloo_gradient_closed_form():
    pol = torch.tensor([[-5.0, -7.0, -6.0], [-1.0, -2.0, -4.0]], **F64, requires_grad=True)
    ref = torch.tensor([[-5.5, -6.0, -6.6], [-1.0, -1.0, -1.0]], **F64)
    get_objective("hypo", lam=0.2)(fixture(pol, ref, B=2)).loss.backward()
    rho = (pol - ref).detach()
    loo = (rho.sum(-1, keepdim=True) - rho) / 2
    torch.testing.assert_close(pol.grad, 0.2 / (2 * 3) * (rho - loo), rtol=0, atol=1e-12)


def test_rloo_is_unbiased_for_reverse_kl_gradient():
    torch.manual_seed(1)
    z = torch.tensor([0.5, -0.3, 0.1, 0.8, -1.0], **F64, requires_grad=True)
    log_ref = torch.log(torch.tensor([0.1, 0.3, 0.2, 0.15, 0.25], **F64))
    logp = torch.log_softmax(z, -1)
    p = logp.exp().detach()
    kl = (p * (logp.detach() - log_ref)).sum()
    exact = p * (logp.detach() - log_ref - kl)  # d KL(pi_z || pi_ref) / dz
    n, k = 50_000, 4
    y = torch.multinomial(p, n * k, replacement=True).reshape(n, k)
    out = get_objective("hypo", lam=1.0)(fixture(logp[y], log_ref[y], B=n))
    (grad,) = torch.autograd.grad(out.loss, z)
    torch.testing.assert_close(grad, exact, rtol=0, atol=6e-3)


def test_needs_two_samples_per_prompt():
    with pytest.raises(PreflabError, match="k>=2"):
        get_objective("hypo")(fixture(torch.zeros(1, 1, **F64), torch.zeros(1, 1, **F64)))
