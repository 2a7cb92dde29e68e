"""TRL's DPO token metrics (logits/chosen, logits/rejected, entropy, mean_token_accuracy) for VLM DPO runs and for
KTO runs: equal to a direct computation from the model's full logits on a tiny batch, logged on logged steps only,
and asking for them changes neither the loss nor the gradients (bit for bit)."""
import torch

from preflab.config import config_from_dict
from preflab.data.tokenize import TokenizedUnpaired
from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs
from preflab.loops.offline import Trainer
from preflab.loops.vlm import VisionTrainer
from preflab.models.attention import model_mask
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.scoring.vlm import VisionLogProbScorer, collate_vision_pairs

from vlm_helpers import pair_row, tiny

METRICS = ("logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy")


def full_logit_stats(logits, layout):
    """(mean logit, entropy, argmax == target) [N, L] at the response positions, from full [R, T, V] logits."""
    z = logits.float().reshape(-1, logits.shape[-1])[layout.pred_index]  # [N, L, V]
    logp = torch.log_softmax(z, -1)
    return z.mean(-1), -(logp.exp() * logp).sum(-1), z.argmax(-1) == layout.target_ids


def token_mean(values, mask):
    return float((values * mask).sum() / mask.sum())


def expected_metrics(stats, chosen_mask, rejected_mask):
    """TRL 1.16 DPOTrainer.compute_loss's four metrics, given the chosen and rejected token masks [N, L]."""
    mean_logit, entropy, top1 = stats
    return {"logits/chosen": token_mean(mean_logit, chosen_mask), "logits/rejected": token_mean(mean_logit,
                                                                                                rejected_mask),
            "entropy": token_mean(entropy, chosen_mask | rejected_mask),
            "mean_token_accuracy": token_mean(top1.float(), chosen_mask)}


def forward_and_grads(trainer, mb, logged: bool):
    """trainer.forward(mb) on a logged (or not logged) step, its loss backpropagated: (metrics, loss, grads)."""
    trainer.step = 1 if logged else 0  # logging_steps 2: step 2 is logged, step 1 is not
    for p in trainer.params:
        p.grad = None
    out = trainer.forward(mb)
    out.loss.backward()
    return out.metrics, out.loss.detach(), [None if p.grad is None else p.grad.clone() for p in trainer.params]


def check_bit_identical_and_logged_only(trainer, mb):
    plain, loss0, g0 = forward_and_grads(trainer, mb, logged=False)
    logged, loss1, g1 = forward_and_grads(trainer, mb, logged=True)
    assert not set(METRICS) & set(plain)
    assert torch.equal(loss0, loss1) and sum(g is not None for g in g0) > 0
    assert all(a is b is None or torch.equal(a, b) for a, b in zip(g0, g1))
    return logged


def test_vlm_dpo_logs_the_token_metrics_of_the_full_logits(tmp_path, arch):
    model, processor = tiny(arch)
    rows = [pair_row("what colour?", "it is red", "it is blue", (200, 20, 20), seed=0),
            pair_row("and this?", "green it is", "no", (20, 200, 20), seed=3, n=2)]
    pairs, _, _ = tokenize_vision_pairs(read_vision_pairs(rows)[0], processor)
    # the scorer's per-token statistics, directly against the model's own .logits
    layout = collate_vision_pairs(pairs, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        stats = full_logit_stats(model(**layout.model_inputs(model)).logits, layout)
        scores = VisionLogProbScorer(model, chunk_tokens=3)(layout, want_token_stats=True)
    mask = layout.response_mask
    torch.testing.assert_close(scores.token_stats[..., 0], stats[0] * mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.token_stats[..., 1], stats[1] * mask, atol=1e-5, rtol=1e-5)
    assert torch.equal(scores.token_stats[..., 2], (stats[2] & mask).float())
    # through the trainer (its own layout), on a logged step only, with bit-identical loss and gradients
    cfg = config_from_dict(dict(task="vlm", model_name_or_path=f"builtin:tiny-{arch.replace('_', '-')}",
                                dataset_name="unused", output_dir=str(tmp_path), per_device_train_batch_size=2,
                                max_steps=2, logging_steps=2, disable_tqdm=True, report_to="none", use_cpu=True,
                                chunk_tokens=3))
    trainer = VisionTrainer(cfg, policy=model, ref=frozen_copy(model), processor=processor, train_data=pairs)
    mb = trainer.micro_batches(0)[0]
    logged = check_bit_identical_and_logged_only(trainer, mb)
    with torch.no_grad():
        stats = full_logit_stats(model(**mb.layout.model_inputs(model)).logits, mb.layout)
    mask, b = mb.layout.response_mask, len(pairs)
    chosen, rejected = mask.clone(), mask.clone()
    chosen[b:], rejected[:b] = False, False
    for key, value in expected_metrics(stats, chosen, rejected).items():
        assert abs(float(logged[key]) - value) < 1e-5, key
    assert abs(float(logged["logits/chosen"]) - float(logged["logits/rejected"])) > 1e-6


def _kto_trainer(tmp_path, labels):
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    with torch.no_grad():  # a sharper head: entropies and mean logits differ from token to token
        policy.lm_head.weight.mul_(30.0)
    items = [TokenizedUnpaired(i, tok.encode(f"q{i}:")[:4], tok.encode(f"{'zyx'[i % 3]}{i}{'!?' * i}")[:8] + [2],
                               label) for i, label in enumerate(labels)]
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", loss_type="kto",
                                output_dir=str(tmp_path), per_device_train_batch_size=len(labels), max_steps=2,
                                logging_steps=2, disable_tqdm=True, use_cpu=True))
    return Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=items), policy


def test_kto_logs_the_token_metrics_of_its_completions(tmp_path):
    """Desirable completions are "chosen", undesirable ones "rejected"; the mismatched completions (KTO's
    reference point) are not counted."""
    labels = [True, False, True, False, True]
    trainer, policy = _kto_trainer(tmp_path, labels)
    mb = trainer.micro_batches(0)[0]
    logged = check_bit_identical_and_logged_only(trainer, mb)
    layout = mb.layout
    with torch.no_grad():
        logits = policy(input_ids=layout.input_ids,
                        attention_mask=model_mask(layout.attention_mask, policy, policy.dtype)).logits
    stats = full_logit_stats(logits, layout)
    mask = layout.response_mask.clone()
    desirable = torch.tensor([labels[i] for i in mb.index] * 2)  # rows: completions, then mismatched ones
    completion = torch.arange(mask.shape[0]) < len(labels)
    chosen = mask & (desirable & completion)[:, None]
    rejected = mask & (~desirable & completion)[:, None]
    for key, value in expected_metrics(stats, chosen, rejected).items():
        assert abs(float(logged[key]) - value) < 1e-4 * max(1.0, abs(value)), key
    # the mismatched completions really are left out: counting them moves the entropy
    assert abs(token_mean(stats[1], mask) - float(logged["entropy"])) > 1e-3


def test_kto_batch_without_desirable_examples_has_chosen_metrics_of_count_zero(tmp_path):
    """Every micro-batch reports the same names (the step's all-reduce needs one layout on every rank); a side
    without examples has value 0 and count 0, so it adds nothing to the step's sums."""
    trainer, _ = _kto_trainer(tmp_path, [False, False, False])
    trainer.step = 1
    with torch.no_grad():
        out = trainer.forward(trainer.micro_batches(0)[0])
    assert float(out.metric_counts["logits/rejected"]) > 0 and float(out.metric_counts["entropy"]) > 0
    for key in ("logits/chosen", "mean_token_accuracy", "rewards/chosen", "logps/chosen"):
        assert float(out.metric_counts[key]) == 0 and float(out.metrics[key]) == 0, key


def test_vlm_dpo_counts_the_real_tokens_of_both_sides_as_the_padded_layout_holds_them():
    """VisionPairKind.count_tokens (the step's num_tokens): (prompt + chosen) + (prompt + rejected) per pair, image
    tokens included, padding never: the real tokens of the padded layout of the same pairs."""
    from preflab.loops.vlm import VisionPairKind

    _, processor = tiny("qwen2_vl")
    rows = [pair_row("what colour?", "it is red", "it is blue", (200, 20, 20), seed=0),
            pair_row("and this?", "green it is", "no", (20, 200, 20), seed=3, n=2)]
    pairs, _, _ = tokenize_vision_pairs(read_vision_pairs(rows)[0], processor)
    layout = collate_vision_pairs(pairs, processor.tokenizer.pad_token_id)
    assert VisionPairKind.count_tokens(pairs) == int(layout.attention_mask.sum())
    assert VisionPairKind.count_tokens(pairs[:1]) == 2 * len(pairs[0].prompt_ids) + len(pairs[0].chosen_ids) + len(
        pairs[0].rejected_ids)
