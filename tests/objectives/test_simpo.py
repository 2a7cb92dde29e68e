"""SimPO (objectives.md §A7): fixture value, gamma naming, reductions, length invariance."""
import pytest
import torch

from preflab.errors import ConfigError
from preflab.objectives import PairBatch, SequenceLogps, get_objective


def seq(total, n, dtype=torch.float64, pad=2):
    return SequenceLogps(torch.tensor([[total / n] * n + [-7.0] * pad], dtype=dtype),
                         torch.tensor([[True] * n + [False] * pad]))


def toy(dtype=torch.float64):
    return PairBatch(seq(-10.0, 5, dtype), seq(-12.0, 8, dtype))  # A_w = -2, A_l = -1.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_value(dtype):
    out = get_objective("simpo", beta=2.0, simpo_gamma=1.0)(toy(dtype))
    assert out.loss.item() == pytest.approx(2.1269280110, abs=1e-6)  # softplus(2): z = 2 * (-0.5) - 1
    assert out.metrics["logps/chosen"].item() == pytest.approx(-2.0, abs=1e-6)  # TRL CPO logs the mean log-prob
    assert get_objective("simpo", beta=2.0, gamma_beta_ratio=0.5)(toy(dtype)).loss.item() == pytest.approx(
        2.1269280110, abs=1e-6)


def test_gamma_zero_unit_lengths_is_reference_free_dpo():
    rows = torch.tensor([[-3.0, -1.0], [-5.0, -0.5], [-4.0, -1.5], [-4.5, -1.0]], dtype=torch.float64)
    batch = PairBatch.from_sums(*rows)
    simpo = get_objective("simpo", beta=0.7, simpo_gamma=0.0)(batch).loss
    ref_free = get_objective("dpo_gamma", beta=0.7, gamma=0.0)(batch).loss
    assert simpo.item() == pytest.approx(ref_free.item(), abs=1e-12)


def test_doubling_a_response_changes_nothing_and_nll_term_adds():
    a = get_objective("simpo")(PairBatch(seq(-4.0, 4), seq(-6.0, 3))).losses
    b = get_objective("simpo")(PairBatch(seq(-8.0, 8), seq(-6.0, 3))).losses
    torch.testing.assert_close(a, b)
    with_nll = get_objective("simpo", cpo_alpha=0.5)(PairBatch(seq(-4.0, 4), seq(-6.0, 3))).loss
    assert with_nll.item() == pytest.approx(a.mean().item() + 0.5 * 1.0, abs=1e-12)


def test_both_gamma_names_rejected():
    with pytest.raises(ConfigError, match="either"):
        get_objective("simpo", simpo_gamma=1.0, gamma_beta_ratio=0.5)


def _official_simpo_losses(a_w, a_l, beta=2.0, gamma_beta_ratio=0.25, label_smoothing=0.0):
    """A transcription of princeton-nlp/SimPO `scripts/simpo_trainer.py::SimPOTrainer.simpo_loss` (loss_type
    sigmoid) on `get_batch_logps(average_log_prob=True)` log-probs, at `scripts/simpo_config.py`'s defaults
    (beta 2.0, gamma_beta_ratio 0.25, label_smoothing 0): logits = (A_w - A_l) - gamma_beta_ratio."""
    logits = (a_w - a_l) - gamma_beta_ratio
    return (-torch.nn.functional.logsigmoid(beta * logits) * (1 - label_smoothing)
            - torch.nn.functional.logsigmoid(-beta * logits) * label_smoothing)


def test_class_defaults_are_the_official_simpo_config_and_a_run_keeps_trls_01():
    """get_objective("simpo") with no parameters = the official SimPOConfig's beta 2.0, gamma = 2.0 x 0.25 = 0.5;
    a preflab run whose config leaves beta out trains at TRL CPOConfig's 0.1 instead (the drop-in TRL behaviour,
    preflab.objectives._own_beta), which is another loss: the difference the paper audit documents."""
    from preflab.config import config_from_dict

    rows = [(-4.0, 4, -6.0, 3), (-9.0, 6, -5.0, 2), (-3.0, 1, -8.0, 5)]
    batch = PairBatch(SequenceLogps(torch.tensor([[t / n] * n + [-7.0] * (6 - n) for t, n, _, _ in rows],
                                                 dtype=torch.float64),
                                    torch.tensor([[True] * n + [False] * (6 - n) for _, n, _, _ in rows])),
                      SequenceLogps(torch.tensor([[t / n] * n + [-7.0] * (6 - n) for _, _, t, n in rows],
                                                 dtype=torch.float64),
                                    torch.tensor([[True] * n + [False] * (6 - n) for _, _, _, n in rows])))
    a_w = torch.tensor([t / n for t, n, _, _ in rows], dtype=torch.float64)
    a_l = torch.tensor([t / n for _, _, t, n in rows], dtype=torch.float64)
    official = _official_simpo_losses(a_w, a_l)
    torch.testing.assert_close(get_objective("simpo")(batch).losses, official, rtol=1e-12, atol=0)
    run = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl",
                            "loss_type": "simpo"}).objective()
    assert run.beta == 0.1 and run.simpo_gamma == 0.5  # TRL CPOConfig's beta and simpo_gamma
    torch.testing.assert_close(run(batch).losses, _official_simpo_losses(a_w, a_l, beta=0.1, gamma_beta_ratio=5.0),
                               rtol=1e-12, atol=0)
