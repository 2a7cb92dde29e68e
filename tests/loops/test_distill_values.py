"""Distillation (preflab.loops.distill) beyond the dataset's plain completions (mutation-mx round): an on-policy step on
rows whose labels leave tokens out of the loss (every sampled token carries loss, none of the row's mask is kept),
and eval_loss as the divergence's token mean over the eval set, against TRL's generalized_jsd_loss."""
import json

import pytest
import torch

from test_distill_run import _cfg, _trl_loss  # tests/loops, beside this file

from preflab.loops.distill import DistillTrainer
from preflab.models.tiny import tiny_tokenizer

pytest.importorskip("trl.experimental.gkd.gkd_trainer")


def _masked_rows(tmp_path):
    """Tokenized rows whose labels skip a token in the middle of the completion (a loss_mask with a False)."""
    tok = tiny_tokenizer("char")
    rows = []
    for text in ("echo: kit cat\nKIT CAT", "echo: red log\nRED LOG", "echo: a b\nA B", "echo: sun\nSUN"):
        ids = tok(text)["input_ids"]
        cut = text.index("\n") + 1
        labels = [-100 if t < cut or t == cut + 1 else x for t, x in enumerate(ids)]
        rows.append({"input_ids": ids, "labels": labels})
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_an_on_policy_step_trains_every_sampled_token_of_rows_with_a_loss_mask(tmp_path):
    data = _masked_rows(tmp_path)
    trainer = DistillTrainer(_cfg(tmp_path, dataset_name=data, lmbda=1.0, max_completion_length=5))
    assert any(x.loss_mask is not None and not all(x.loss_mask) for x in trainer.train_data)
    mb = trainer.micro_batches(0)[0]
    sampled = trainer.sampled_completions
    assert int(mb.layout.response_mask.sum()) == sum(len(c) for c in sampled)


def test_eval_loss_is_the_token_mean_of_trls_divergence_over_the_eval_set(tmp_path):
    torch.manual_seed(0)
    trainer = DistillTrainer(_cfg(tmp_path, beta=0.5, temperature=0.9, eval_fraction=0.25,
                                  per_device_eval_batch_size=2))
    items = list(trainer.eval_data)
    assert len(items) >= 2 and len({len(x.completion_ids) for x in items}) > 1
    got = trainer.evaluate()["eval_loss"]
    assert got == pytest.approx(_trl_loss(trainer, items, 0.5, 0.9), rel=1e-4, abs=1e-7)


def test_eval_nll_accuracy_and_entropy_are_token_means_over_the_eval_set(tmp_path):
    """eval_nll_loss, eval_mean_token_accuracy and eval_entropy: the student's -log p(token), argmax == token and
    softmax entropy at each completion token (its own logits, each sequence run alone through model(...)), averaged
    over the eval set's completion tokens (not over rows: the rows' completions have different lengths)."""
    torch.manual_seed(0)
    trainer = DistillTrainer(_cfg(tmp_path, beta=0.5, temperature=0.9, eval_fraction=0.25,
                                  per_device_eval_batch_size=2))
    items = list(trainer.eval_data)
    assert len({len(x.completion_ids) for x in items}) > 1
    nll, right, entropy, count = 0.0, 0, 0.0, 0
    with torch.no_grad():
        for x in items:
            ids = torch.tensor([x.prompt_ids + x.completion_ids])
            logits = trainer.policy(ids).logits[0, len(x.prompt_ids) - 1:-1].double()
            target = ids[0, len(x.prompt_ids):]
            logp = torch.log_softmax(logits, -1)
            nll -= float(logp.gather(-1, target[:, None]).sum())
            right += int((logits.argmax(-1) == target).sum())
            entropy -= float((logp.exp() * logp).sum())
            count += len(target)
    got = trainer.evaluate()
    assert got["eval_nll_loss"] == pytest.approx(nll / count, rel=1e-4)
    assert got["eval_mean_token_accuracy"] == pytest.approx(right / count, abs=1e-12)
    assert got["eval_entropy"] == pytest.approx(entropy / count, rel=1e-4)


def test_sampling_reads_min_p_and_the_sampling_temperature_not_the_divergences(tmp_path):
    """seq_kd's off-policy step 0 with temperature 0.8, divergence_temperature 1.0 and min_p 0.5 (one that cuts
    tokens of the tiny teacher's flat next-token distributions): the completions are the teacher's row-seeded samples
    at temperature 0.8 with min_p 0.5, which differ from the ones without min_p and from the ones at 1.0."""
    from preflab.generate_seeded import generate_ids_row_seeded

    trainer = DistillTrainer(_cfg(tmp_path, seq_kd=True, lmbda=0.5, max_completion_length=5, temperature=0.8,
                                  divergence_temperature=1.0, min_p=0.5))
    assert not trainer.on_policy(0)
    mb = trainer.micro_batches(0)[0]
    prompts = [trainer.train_data[i].prompt_ids for i in mb.index]
    seeds = [trainer.row_seed(0, i, "teacher") for i in mb.index]

    def sampled(**settings):
        return generate_ids_row_seeded(trainer.ref, prompts, seeds, eos_id=trainer.tokenizer.eos_token_id,
                                       pad_id=trainer.pad_id, max_new_tokens=5, **settings)

    want = sampled(temperature=0.8, min_p=0.5)
    assert trainer.sampled_completions == want
    assert want != sampled(temperature=0.8) and want != sampled(temperature=1.0, min_p=0.5)
