"""The distillation loss (preflab.objectives._distill_task) against TRL 1.16's own generalized_jsd_loss, against
hand-computed KLs, and its chunked form (preflab.scoring.distill) against the one-shot form."""
import math

import pytest
import torch

from preflab.errors import ConfigError
from preflab.objectives._distill_task import DistillBatch, DistillLoss, token_generalized_jsd
from preflab.objectives.base import SequenceLogps

gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
trl_jsd = gkd.GKDTrainer.generalized_jsd_loss


def _logits(seed, shape=(3, 5, 11)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * 2


def _ours(student, teacher, mask, beta, temperature):
    """DistillLoss on per-token divergences of the tempered logits, the batch's own token mean."""
    d = token_generalized_jsd(student / temperature, teacher / temperature, beta)
    d = torch.where(mask, d, torch.zeros_like(d))
    batch = DistillBatch(SequenceLogps(d, mask), SequenceLogps(torch.zeros_like(d), mask))
    return DistillLoss(beta=beta, temperature=temperature)(batch).loss


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 0.2])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_loss_equals_trl_generalized_jsd_loss(beta, temperature):
    student, teacher = _logits(0), _logits(1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    labels = torch.where(mask, torch.ones(mask.shape, dtype=torch.long), torch.full(mask.shape, -100))
    want = trl_jsd(student, teacher, labels=labels, beta=beta, temperature=temperature, reduction="batchmean")
    got = _ours(student, teacher, mask, beta, temperature)
    assert abs(float(got) - float(want)) < 1e-10, (float(got), float(want))


def test_end_points_are_the_hand_computed_kls():
    """beta 0 = KL(p_T || p_S), beta 1 = KL(p_S || p_T), beta 0.5 = the JSD with the mid mixture, by hand."""
    s, t = torch.tensor([[0.0, 1.0, -1.0]], dtype=torch.float64), torch.tensor([[2.0, 0.0, 0.5]], dtype=torch.float64)
    ps, pt = torch.softmax(s, -1)[0].tolist(), torch.softmax(t, -1)[0].tolist()
    fwd = sum(b * math.log(b / a) for a, b in zip(ps, pt))
    rev = sum(a * math.log(a / b) for a, b in zip(ps, pt))
    mid = [(a + b) / 2 for a, b in zip(ps, pt)]
    jsd = 0.5 * sum(b * math.log(b / m) for b, m in zip(pt, mid)) + 0.5 * sum(a * math.log(a / m)
                                                                           for a, m in zip(ps, mid))
    assert float(token_generalized_jsd(s, t, 0.0)) == pytest.approx(fwd, abs=1e-12)
    assert float(token_generalized_jsd(s, t, 1.0)) == pytest.approx(rev, abs=1e-12)
    assert float(token_generalized_jsd(s, t, 0.5)) == pytest.approx(jsd, abs=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_student_equal_to_teacher_gives_zero(beta):
    z = _logits(3)
    mask = torch.ones(z.shape[:2], dtype=torch.bool)
    assert abs(float(_ours(z, z.clone(), mask, beta, 0.8))) < 1e-12


def test_step_token_mean_with_examples_per_token():
    """With the step's N / T ratio the per-example losses average to sum(D) / T (TRL's num_items_in_batch)."""
    d = torch.tensor([[1.0, 2.0, 0.0], [4.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    batch = DistillBatch(SequenceLogps(d, mask), SequenceLogps(torch.zeros_like(d), mask),
                         {"examples_per_token": 4 / 10})  # the step: 4 sequences, 10 tokens
    out = DistillLoss()(batch)
    assert out.losses.tolist() == pytest.approx([3.0 * 0.4, 4.0 * 0.4])
    assert float(out.loss) == pytest.approx(7.0 * 0.4 / 2)


def test_beta_and_temperature_ranges_are_refused():
    with pytest.raises(ConfigError, match="beta must be in"):
        DistillLoss(beta=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        DistillLoss(temperature=0.0)


def test_chunked_divergence_equals_one_shot_and_its_gradient():
    """preflab.scoring.distill.token_divergence over chunks of 2 positions (checkpointed) equals one chunk, values
    and gradients, and equals token_generalized_jsd of the heads' full logits."""
    from preflab.scoring.distill import token_divergence
    from preflab.scoring.head import LMHead
    from preflab.scoring.lm import Scores

    torch.manual_seed(0)
    proj_s, proj_t = torch.nn.Linear(4, 9, bias=False).double(), torch.nn.Linear(4, 9, bias=False).double()
    head_s, head_t = LMHead(proj_s, None, "llama"), LMHead(proj_t, None, "llama")
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    slots = mask.reshape(-1).nonzero().squeeze(-1)

    class Plan:
        slot = slots

    class Layout:
        @staticmethod
        def gather_plan():
            return Plan

    h_t = torch.randn(5, 4, dtype=torch.float64)
    results = []
    for chunk in (2, 100):
        h_s = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        d = token_divergence(Scores(None, mask, hidden_flat=h_s), Scores(None, mask, hidden_flat=h_t), Layout,
                             head_s, head_t, beta=0.3, temperature=0.9, chunk_tokens=chunk)
        d.sum().backward()
        results.append((d.detach(), h_s.grad.clone()))
        want = token_generalized_jsd(proj_s(h_s) / 0.9, proj_t(h_t) / 0.9, 0.3)
        assert torch.allclose(d[mask].double(), want.double(), atol=1e-5)  # LMHead gives float32 logits
        assert float(d.detach()[~mask].abs().sum()) == 0.0
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)
