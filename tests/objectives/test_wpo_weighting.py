"""TRL's use_weighting (WPO, arXiv:2406.11827 Eq. 2) through the trainer equals a hand computation from the
model's own full logits: loss_i * exp(mean_t[log p - logsumexp(2 log p)] chosen + same for rejected), not clamped
(TRL 1.16's DPOTrainer; TRL 0.x clamped at 1)."""
import pytest
import torch
import torch.nn.functional as F

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.offline import Trainer
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.objectives import WPOWeighted, get_objective
from preflab.scoring.lm import naive_token_logps

DATA = "examples/data/loud_echo_pairs.jsonl"


def wpo_terms(model, layout) -> torch.Tensor:
    """[N, L] per-token log p(y_t) - log sum_v p(v)^2 from full logits, zeros off the response mask."""
    from preflab.models.attention import model_mask

    kwargs = {"attention_mask": model_mask(layout.attention_mask, model, torch.float32)}
    if layout.position_ids is not None:
        kwargs["position_ids"] = layout.position_ids
    logits = model(input_ids=layout.input_ids, **kwargs).logits.float()
    logprobs = F.log_softmax(logits, -1).reshape(-1, logits.shape[-1])
    mask = layout.response_mask
    idx = layout.pred_index[mask]
    terms = logprobs[idx, layout.target_ids[mask]] - torch.logsumexp(2 * logprobs[idx], -1)
    return torch.zeros(mask.shape).masked_scatter(mask, terms)


@pytest.mark.parametrize("beta,layout", [(0.1, "padded"), (2.0, "prefix_shared")])
def test_wpo_losses_equal_the_hand_computation(tmp_path, beta, layout):
    tok = tiny_tokenizer("char")
    model = tiny_causal_lm(tok, arch="llama", hidden_size=32, num_layers=2, num_heads=4, seed=3)
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": DATA, "use_weighting": True,
                            "beta": beta, "layout": layout, "max_length": 64, "per_device_train_batch_size": 4,
                            "output_dir": str(tmp_path / "run"), "use_cpu": True, "disable_tqdm": True})
    ref = tiny_causal_lm(tok, arch="llama", hidden_size=32, num_layers=2, num_heads=4, seed=4)  # differs from policy
    trainer = Trainer(cfg, policy=model, ref=ref, tokenizer=tok)
    assert isinstance(trainer.objective, WPOWeighted) and "wpo" in trainer.objective.token_needs
    mb = trainer.micro_batches(0)[0]
    with torch.no_grad():
        out = trainer.forward(mb)
        layout = mb.layout
        logps = naive_token_logps(model, layout)
        ref_logps = naive_token_logps(ref, layout)
        terms = wpo_terms(model, layout)
    mask = layout.response_mask.float()
    b = mask.shape[0] // 2
    means = (terms * mask).sum(-1) / mask.sum(-1)
    weights = torch.exp(means[:b] + means[b:])
    sums, ref_sums = (logps * mask).sum(-1), (ref_logps * mask).sum(-1)
    dpo = -F.logsigmoid(beta * ((sums[:b] - ref_sums[:b]) - (sums[b:] - ref_sums[b:])))
    assert torch.allclose(out.losses, dpo * weights, atol=1e-5)
    assert float(weights.min()) != pytest.approx(1.0, abs=1e-3)  # a weight that differs from 1 was tested
    assert out.metrics["policy_weights"] == pytest.approx(float(weights.mean()), abs=1e-6)


def test_wpo_scales_each_pairs_loss_and_leaves_gradients_of_the_weights_out():
    from preflab.objectives import PairBatch

    inner = get_objective("sigmoid", beta=0.5)
    batch = PairBatch.from_sums(torch.tensor([-3.0, -1.0], requires_grad=True), torch.tensor([-4.0, -2.0]),
                                torch.tensor([-3.5, -1.5]), torch.tensor([-3.0, -2.5]))
    batch.extras["chosen_wpo"] = torch.tensor([[-0.2], [-1.0]], requires_grad=True)
    batch.extras["rejected_wpo"] = torch.tensor([[0.5], [-0.5]])
    out = WPOWeighted(inner)(batch)
    # e^0.3 > 1 stays e^0.3 (TRL 1.16 does not clamp; TRL 0.x's min(1, w) made it 1), e^-1.5
    expected_w = torch.tensor([float(torch.exp(torch.tensor(0.3))), float(torch.exp(torch.tensor(-1.5)))])
    assert torch.allclose(out.losses, inner(batch).losses * expected_w, atol=1e-6)
    out.loss.backward()
    assert batch.extras["chosen_wpo"].grad is None  # the weight carries no gradient


def test_wpo_is_refused_where_it_cannot_apply(tmp_path):
    with pytest.raises(ConfigError, match="aot"):
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": DATA, "use_weighting": True,
                          "loss_type": "aot"})
    with pytest.raises(ConfigError, match="use_weighting"):
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": DATA, "use_weighting": True,
                          "task": "reward"})


def test_each_side_is_weighted_by_its_own_tokens_when_the_responses_differ_in_length():
    """The scorer's wpo terms reach the objective side by side (chosen_wpo from the chosen half): with responses of
    5 and 2 tokens (and 2 and 5), each side's mean runs over its own tokens. With ref = policy the sigmoid loss is
    log 2 per pair, so the losses are log 2 * exp(mean chosen term + mean rejected term), from full logits."""
    from types import SimpleNamespace

    from preflab.data.layout import pair_sequences, padded
    from preflab.scoring.lm import LogProbScorer, split_pairs

    pairs = [SimpleNamespace(prompt_ids=[1, 5, 9], chosen_ids=[20, 21, 22, 23, 2], rejected_ids=[40, 2]),
             SimpleNamespace(prompt_ids=[1, 7], chosen_ids=[30, 2], rejected_ids=[8, 9, 10, 11, 2])]
    model = tiny_causal_lm(vocab_size=64, seed=3)
    layout = padded(pair_sequences(pairs), pad_id=0)
    with torch.no_grad():
        scores = LogProbScorer(model, chunk_tokens=3)(layout, want_wpo=True)
        terms = wpo_terms(model, layout)
    batch = split_pairs(scores, scores)
    torch.testing.assert_close(batch.extras["chosen_wpo"], terms[:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.extras["rejected_wpo"], terms[2:], atol=1e-5, rtol=1e-5)
    mask = layout.response_mask.float()
    means = (terms * mask).sum(-1) / mask.sum(-1)
    out = WPOWeighted(get_objective("sigmoid", beta=0.1))(batch)
    torch.testing.assert_close(out.losses, torch.log(torch.tensor(2.0)) * torch.exp(means[:2] + means[2:]),
                               atol=1e-5, rtol=1e-5)
