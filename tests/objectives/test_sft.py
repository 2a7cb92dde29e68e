"""SFT term (TRL `sft`): batch token-mean NLL of the chosen responses (objectives.md §B)."""
import pytest
import torch

from preflab.objectives import PairBatch, SequenceLogps, get_objective


def seqs(rows, dtype=torch.float64, grad=False, T=6):
    """[B, T] from per-row token log-probs, padded with junk that must be ignored."""
    lp = torch.tensor([r + [-50.0] * (T - len(r)) for r in rows], dtype=dtype, requires_grad=grad)
    return SequenceLogps(lp, torch.tensor([[True] * len(r) + [False] * (T - len(r)) for r in rows]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    # S_theta(y_w) = -10 over |y_w| = 5 tokens -> 2 nats per token; rejected and reference play no part
    batch = PairBatch(seqs([[-2.0] * 5], dtype), seqs([[-1.5] * 8], dtype, T=8))
    out = get_objective("sft")(batch)
    assert out.loss.item() == pytest.approx(2.0, abs=1e-6)


def test_token_weighted_batch_mean_and_gradient():
    chosen = seqs([[-1.0, -3.0], [-1.0, -1.0, -1.0, -1.0]], grad=True)
    rejected = seqs([[-9.0], [-9.0]], grad=True)
    out = get_objective("sft")(PairBatch(chosen, rejected))
    assert out.loss.item() == pytest.approx(8.0 / 6.0, abs=1e-12)  # not the per-sequence mean (2 + 1)/2 = 1.5
    assert out.losses.tolist() == pytest.approx([8.0 / 6.0] * 2, abs=1e-12)
    out.loss.backward()
    expected = torch.tensor([[1.0] * 2 + [0.0] * 4, [1.0] * 4 + [0.0] * 2], dtype=torch.float64) * (-1.0 / 6.0)
    torch.testing.assert_close(chosen.token_logps.grad, expected)
    assert rejected.token_logps.grad is None or rejected.token_logps.grad.abs().sum() == 0


def test_sigmoid_plus_sft_is_the_weighted_sum():
    chosen, rejected = seqs([[-2.0] * 5]), seqs([[-1.5] * 8], T=8)
    batch = PairBatch(chosen, rejected, seqs([[-2.2] * 5]), seqs([[-11.5 / 8] * 8], T=8))
    combo = get_objective(["sigmoid", "sft"], loss_weights=[1.0, 0.5], beta=0.1)(batch)
    assert combo.loss.item() == pytest.approx(0.6209570478 + 0.5 * 2.0, abs=1e-9)


def test_token_mean_step_spreads_the_step_token_mean_over_the_pairs():
    """token_mean "step" with examples_per_token = N / T: pair i's loss is its NLL sum x N / T, so two halves of a
    batch (each told the whole batch's ratio) give, weighted by their share of the pairs, the whole batch's token
    mean and gradient; without the extra it is the batch's own token mean (an evaluation batch)."""
    rows = [[-1.0, -3.0], [-1.0, -1.0, -1.0, -1.0], [-0.5]]
    whole = seqs(rows, grad=True)
    want = get_objective("sft")(PairBatch(whole, seqs([[-9.0]] * 3)))
    want.loss.backward()
    step = get_objective("sft", token_mean="step")
    assert step(PairBatch(seqs(rows), seqs([[-9.0]] * 3))).loss.item() == pytest.approx(want.loss.item(), abs=1e-12)
    halves, total = [seqs(rows[:2], grad=True), seqs(rows[2:], grad=True)], 0.0
    for part in halves:
        batch = PairBatch(part, seqs([[-9.0]] * part.mask.shape[0]), extras={"examples_per_token": 3 / 7})
        out = step(batch)
        assert out.loss.item() == pytest.approx(out.losses.mean().item(), abs=1e-12)
        assert out.metrics["nll_loss"].item() == pytest.approx(out.loss.item(), abs=1e-12)
        contribution = out.losses.sum() / 3  # preflab.step: the sum of the losses over the step's N pairs
        contribution.backward()
        total += contribution.item()
    assert total == pytest.approx(8.5 / 7, abs=1e-12) == pytest.approx(want.loss.item(), abs=1e-12)
    grads = torch.cat([halves[0].token_logps.grad, halves[1].token_logps.grad])
    torch.testing.assert_close(grads, whole.token_logps.grad)
    # the default ignores the extra: TRL's mean of each micro-batch's own token mean
    first = get_objective("sft")(PairBatch(seqs(rows[:2]), seqs([[-9.0]] * 2), extras={"examples_per_token": 3 / 7}))
    assert first.loss.item() == pytest.approx(8.0 / 6.0, abs=1e-12)


def test_token_mean_must_be_micro_batch_or_step():
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"token_mean must be one of \['micro_batch', 'step'\], got 'tokens'"):
        get_objective("sft", token_mean="tokens")


def test_step_token_mean_is_seen_through_a_wpo_weighting_and_an_ld_list(tmp_path):
    """The trainer gives each micro-batch the step's examples-per-token ratio when `wants_step_token_mean` says the
    objective has an sft term with token_mean "step": also when use_weighting wraps the loss list in WPOWeighted
    (and, under ld_alpha, the list's other parts in LDWeighted); never for token_mean micro_batch."""
    from preflab.config import config_from_dict
    from preflab.objectives import WPOWeighted
    from preflab.objectives.sft import wants_step_token_mean

    def objective(token_mean, **extra):
        return config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                                 "loss_type": ["sigmoid", "sft"], "objective_params": {"token_mean": token_mean},
                                 "output_dir": str(tmp_path), **extra}).objective()

    weighted = objective("step", use_weighting=True)
    assert isinstance(weighted, WPOWeighted) and wants_step_token_mean(weighted)
    assert wants_step_token_mean(objective("step", ld_alpha=0.5)) and wants_step_token_mean(objective("step"))
    assert not wants_step_token_mean(objective("micro_batch", use_weighting=True))
    assert not wants_step_token_mean(objective("micro_batch"))
