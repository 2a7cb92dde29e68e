"""TRL 1.16's DPO token metrics (logits/chosen, logits/rejected, entropy, mean_token_accuracy): the chunked scorer's
per-token statistics equal a full-logits computation, the metrics equal TRL's formula on it whatever the layout and
chunking, and asking for them changes neither the log-probs nor the gradients (bit for bit)."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from preflab.config import config_from_dict
from preflab.data.layout import pair_sequences, padded
from preflab.data.prefix import prefix_shared
from preflab.loops.offline import Trainer
from preflab.models.attention import model_mask
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.scoring.lm import LogProbScorer
from preflab.scoring.token_metrics import pair_token_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loops"))
from tiny_run import synthetic_pairs  # noqa: E402

PAIRS = [SimpleNamespace(prompt_ids=[1, 5, 9, 14], chosen_ids=[20, 21, 2], rejected_ids=[40, 2]),
         SimpleNamespace(prompt_ids=[1, 7], chosen_ids=[30, 31, 32, 33, 2], rejected_ids=[8, 2]),
         SimpleNamespace(prompt_ids=[1, 3, 3], chosen_ids=[12, 2], rejected_ids=[50, 51, 52, 2])]
LAYOUTS = {"padded": lambda: padded(pair_sequences(PAIRS), pad_id=0),
           "prefix_shared": lambda: prefix_shared(PAIRS, pad_id=0)}


def naive_stats(model, layout):
    """(mean logit, entropy -sum p log p, argmax == target) per response token [N, L], from full [R, T, V] logits."""
    kwargs = {"attention_mask": model_mask(layout.attention_mask, model, model.dtype)}
    if layout.position_ids is not None:
        kwargs["position_ids"] = layout.position_ids
    logits = model(input_ids=layout.input_ids, **kwargs).logits.float()
    z = logits.reshape(-1, logits.shape[-1])[layout.pred_index]  # [N, L, V]
    logp = torch.log_softmax(z, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    top1 = z.argmax(-1) == layout.target_ids
    return z.mean(-1), entropy, top1


def trl_metrics(mean_logits, entropy, is_top1, mask):
    """DPOTrainer.compute_loss (TRL 1.16) on one process, its code transcribed."""
    chosen_mask, rejected_mask = mask.chunk(2, dim=0)
    chosen_mean_logits, rejected_mean_logits = mean_logits.chunk(2, dim=0)
    chosen_is_top1, _ = is_top1.chunk(2, dim=0)
    return {"logits/chosen": chosen_mean_logits[chosen_mask.bool()].sum() / chosen_mask.sum(),
            "logits/rejected": rejected_mean_logits[rejected_mask.bool()].sum() / rejected_mask.sum(),
            "entropy": (entropy * mask).sum() / mask.sum(),
            "mean_token_accuracy": (chosen_is_top1 & chosen_mask.bool()).sum() / chosen_mask.sum()}


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
@pytest.mark.parametrize("chunk", [1, 4, 1000])  # one position per chunk, several chunks, one chunk
def test_token_stats_and_metrics_equal_full_logits(layout_name, chunk):
    torch.manual_seed(0)
    model = tiny_causal_lm(vocab_size=64, seed=3)
    layout = LAYOUTS[layout_name]()
    with torch.no_grad():
        mean_logits, entropy, top1 = naive_stats(model, layout)
    scores = LogProbScorer(model, chunk_tokens=chunk)(layout, want_token_stats=True)  # under autograd
    mask = scores.mask
    assert scores.token_stats.requires_grad is False
    torch.testing.assert_close(scores.token_stats[..., 0], mean_logits * mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.token_stats[..., 1], entropy * mask, atol=1e-5, rtol=1e-5)
    assert torch.equal(scores.token_stats[..., 2], (top1 & mask).float())
    got = pair_token_metrics(scores.token_stats, mask)
    want = trl_metrics(mean_logits, entropy, top1, mask)
    for key in want:
        torch.testing.assert_close(got[key], want[key].float(), atol=1e-5, rtol=1e-5)
    # the chosen and rejected halves are told apart (a swap of the halves would fail here)
    assert abs(float(got["logits/chosen"]) - float(got["logits/rejected"])) > 0


def test_metrics_equal_across_layouts_and_chunkings():
    model = tiny_causal_lm(vocab_size=64, seed=5)
    with torch.no_grad():
        runs = [pair_token_metrics(s.token_stats, s.mask) for s in
                (LogProbScorer(model, chunk_tokens=c)(LAYOUTS[name](), want_token_stats=True)
                 for name in LAYOUTS for c in (2, 5, 1000))]
    for other in runs[1:]:
        for key in runs[0]:
            torch.testing.assert_close(other[key], runs[0][key], atol=1e-5, rtol=1e-5)


def test_closed_form_with_a_zero_head():
    """All logits 0: mean logit 0, entropy log V on every token, and the argmax (first maximum, as TRL) is token 0,
    never a target here: accuracy 0."""
    model = tiny_causal_lm(vocab_size=64, seed=0)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        for name in LAYOUTS:
            scores = LogProbScorer(model, chunk_tokens=3)(LAYOUTS[name](), want_token_stats=True)
            got = pair_token_metrics(scores.token_stats, scores.mask)
            assert float(got["logits/chosen"]) == 0.0 and float(got["logits/rejected"]) == 0.0
            assert float(got["mean_token_accuracy"]) == 0.0
            torch.testing.assert_close(got["entropy"], torch.tensor(torch.log(torch.tensor(64.0)).item()))


def test_accuracy_counts_chosen_tokens_only():
    """A head with two live rows, +w for EOS (2) and -w for token 3: the argmax is 2 exactly where h.w > 0, so some
    of the chosen EOS tokens (3 of the 10 chosen tokens) are right; rejected tokens never count."""
    model = tiny_causal_lm(vocab_size=64, seed=0)
    w = torch.randn(model.lm_head.weight.shape[1], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[2], model.lm_head.weight[3] = w, -w
        layout = LAYOUTS["padded"]()
        hidden = model.model(input_ids=layout.input_ids,
                             attention_mask=model_mask(layout.attention_mask, model, model.dtype)).last_hidden_state
        h = hidden.reshape(-1, hidden.shape[-1])[layout.pred_index]  # [N, L, H]
        right = ((h @ w > 0) & (layout.target_ids == 2) & layout.response_mask)[:3]
        for chunk in (1, 4, 1000):
            scores = LogProbScorer(model, chunk_tokens=chunk)(layout, want_token_stats=True)
            got = pair_token_metrics(scores.token_stats, scores.mask)
            assert float(got["mean_token_accuracy"]) == pytest.approx(right.sum().item() / 10)
    assert 0 < right.sum().item() < 3  # the case is not vacuous: some EOS right, some wrong


@pytest.mark.parametrize("chunk", [2, 1000])  # checkpointed chunks (recomputed in backward) and one kept chunk
@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
def test_dpo_loss_and_gradients_are_bit_identical_with_and_without_stats(chunk, layout_name):
    layout = LAYOUTS[layout_name]()
    results = []
    for want in (False, True):
        model = tiny_causal_lm(vocab_size=64, seed=7)
        scores = LogProbScorer(model, chunk_tokens=chunk)(layout, want_token_stats=want)
        sums = scores.token_logps.sum(-1)
        b = sums.shape[0] // 2
        loss = -torch.nn.functional.logsigmoid(0.1 * (sums[:b] - sums[b:])).mean()  # sigmoid DPO, reference-free
        loss.backward()
        results.append((scores.token_logps.detach(), loss.detach(), [p.grad for p in model.parameters()]))
        assert (scores.token_stats is not None) == want
    (lp0, loss0, g0), (lp1, loss1, g1) = results
    assert torch.equal(lp0, lp1) and torch.equal(loss0, loss1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_training_logs_the_four_metrics_as_trl_computes_them_on_the_step_batch(tmp_path):
    """One step over all 16 pairs in one micro-batch: metrics.jsonl's step-1 values (the policy before the update)
    and the eval metrics (eval_ prefix, eval batch of 16 pairs, before training) equal TRL's formula on full logits of
    those pairs."""
    torch.set_num_threads(1)
    pairs = synthetic_pairs(16)
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic",
                                output_dir=str(tmp_path), learning_rate=1e-3, per_device_train_batch_size=16,
                                per_device_eval_batch_size=16, max_steps=1, logging_steps=1, disable_tqdm=True, use_cpu=True))
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    ref = frozen_copy(policy)
    layout = padded(pair_sequences(pairs), pad_id=tok.pad_token_id)
    with torch.no_grad():
        mean_logits, entropy, top1 = naive_stats(ref, layout)  # the policy before the update
    want = trl_metrics(mean_logits, entropy, top1, layout.response_mask)
    trainer = Trainer(cfg, policy=policy, ref=ref, tokenizer=tok, train_data=pairs, eval_data=pairs)
    trainer.out, trainer.step, trainer.main = tmp_path, 0, False
    evaluated = trainer.evaluate()
    trainer.main = True
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    step1 = next(r for r in rows if r.get("step") == 1 and "logits/chosen" in r)
    for key, value in want.items():
        assert step1[key] == pytest.approx(float(value), rel=1e-4, abs=1e-6), key
        assert evaluated["eval_" + key] == pytest.approx(float(value), rel=1e-4, abs=1e-6), key


def test_token_metrics_only_on_logged_steps_and_averaged_over_the_steps_that_have_them(tmp_path):
    from preflab.runlog import average_results
    from preflab.step import StepResult

    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic",
                                output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4,
                                logging_steps=2, disable_tqdm=True, use_cpu=True))
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    trainer = Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=synthetic_pairs(16))
    mb = trainer.micro_batches(0)[0]
    with torch.no_grad():
        trainer.step = 0  # step 1 is not logged (logging_steps 2)
        assert "entropy" not in trainer.forward(mb).metrics and "logps/chosen" in trainer.forward(mb).metrics
        trainer.step = 1  # step 2 is
        assert set(("logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy")) <= set(
            trainer.forward(mb).metrics)
    plain = StepResult(loss=1.0, metrics={"logps/chosen": -4.0}, grad_norm=1.0, skipped=False, num_examples=4)
    logged = StepResult(loss=3.0, metrics={"logps/chosen": -2.0, "entropy": 5.0}, grad_norm=1.0, skipped=False,
                        num_examples=4)
    assert average_results([plain, logged]) == {"loss": 2.0, "grad_norm": 1.0, "logps/chosen": -3.0, "entropy": 5.0}


def test_a_step_that_logs_the_token_metrics_still_reads_the_device_once(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_step_syncs import run_counted

    per_step, names, summary = run_counted(tmp_path, monkeypatch, logging_steps=1)
    assert per_step == [1] * 4, names
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]  # its output_dir
    assert all("mean_token_accuracy" in r for r in rows if "loss" in r)


@pytest.mark.parametrize("chunk", [2, 1000])  # several chunks (each recomputed in backward) and one
def test_the_differentiable_token_entropy_equals_full_logits(chunk):
    """token_entropy (GRPO's entropy bonus, a second head pass over the scorer's hidden states) is -sum_v p_v log p_v
    of the full logits at every response token, zeros off the mask, and its gradient reaches the model."""
    from preflab.scoring.lm import backbone_and_head, token_entropy

    model = tiny_causal_lm(vocab_size=64, seed=3)
    layout = LAYOUTS["padded"]()
    with torch.no_grad():
        _, entropy, _ = naive_stats(model, layout)
    scores = LogProbScorer(model, chunk_tokens=chunk)(layout)
    got = token_entropy(scores, layout, backbone_and_head(model)[1], chunk_tokens=chunk)
    torch.testing.assert_close(got, entropy * scores.mask, atol=1e-5, rtol=1e-5)
    got.sum().backward()
    assert model.lm_head.weight.grad.abs().sum() > 0
