"""Sem-DPO (methods/objectives.md §C #38): spec weight and loss, reductions to DPO, the weight carries no gradient."""
import pytest
import torch

from preflab.errors import MissingExtraError
from preflab.objectives import PairBatch, get_objective

F64 = dict(dtype=torch.float64)


def fixture(similarity, grad=False):
    pol = [torch.tensor(v, **F64, requires_grad=grad) for v in ([-10.0], [-12.0])]
    batch = PairBatch.from_sums(pol[0], pol[1], torch.tensor([-11.0], **F64), torch.tensor([-11.5], **F64),
                                extras={"similarity": torch.as_tensor(similarity, **F64)})
    return batch, pol


def test_spec_weight_and_loss():
    e_x, e_w = torch.tensor([1.0, 0.0], **F64), torch.tensor([0.6, 0.8], **F64)
    cos = torch.nn.functional.cosine_similarity(e_x, e_w, dim=0).reshape(1)
    out = get_objective("sem_dpo", beta=0.1, alpha=1.0)(fixture(cos)[0])
    assert out.metrics["sem/weight"].item() == pytest.approx(0.6703200460, abs=1e-9)
    assert out.loss.item() == pytest.approx(0.4162399569, abs=1e-9)


@pytest.mark.parametrize("alpha,sim", [(0.0, [0.3]), (2.5, [1.0])])
def test_reduces_to_dpo(alpha, sim):
    batch = fixture(sim)[0]
    torch.testing.assert_close(get_objective("sem_dpo", alpha=alpha)(batch).losses,
                               get_objective("dpo")(batch).losses, rtol=0, atol=1e-12)


def test_gradient_is_weighted_dpo_gradient():
    batch, pol = fixture([0.6], grad=True)
    get_objective("sem_dpo", beta=0.1, alpha=1.0)(batch).loss.backward()
    # w * dl/dS_w = exp(-0.4) * -0.0462570155 (DPO's closed-form gradient on the fixture)
    assert pol[0].grad.item() == pytest.approx(0.6703200460 * -0.0462570155, abs=1e-9)
    assert pol[1].grad.item() == pytest.approx(-pol[0].grad.item(), abs=1e-12)


def test_missing_similarity_names_it():
    batch = fixture([0.5])[0]
    batch.extras.clear()
    with pytest.raises(MissingExtraError, match="similarity"):
        get_objective("sem_dpo")(batch)
