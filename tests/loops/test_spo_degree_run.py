"""spo_degree in a real `preflab train` run (methods/objectives.md §C #9): the degree head as the objective's extras
producer (preflab.loops.degree_head) on the built-in tiny Llama and the loud-echo pairs. The spec's checks in the
training step: degree_weight 0 is the DPO step (loss and policy gradient), a zero-initialised head gives
L_deg = log(J+1), the head gets no gradient from the DPO term; the head learns (degree accuracy above chance), is
saved, and a resumed run ends where the uninterrupted run ends."""
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.offline import Trainer
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.objectives import get_objective

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "data" / "loud_echo_pairs.jsonl"
J = 2  # the loud-echo responses have three words: degrees 0, 1, 2 (chance 1/3)


def make(out, **overrides):
    torch.set_num_threads(1)
    params = dict(model_name_or_path="builtin:tiny-llama", dataset_name=str(DATA), output_dir=str(out),
                  learning_rate=5e-4, per_device_train_batch_size=8, max_steps=4, logging_steps=1, max_length=128,
                  disable_tqdm=True, use_cpu=True, seed=0, loss_type="spo_degree",
                  objective_params={"degrees": J, "degree_weight": 1.0})
    params.update(overrides)
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    return Trainer(config_from_dict(params), policy=policy, ref=frozen_copy(policy), tokenizer=tok)


def step_grads(trainer):
    mb = trainer.micro_batches(0)[0]
    out = trainer.forward(mb)
    out.loss.backward()
    return mb, out, {n: p.grad.detach().clone() for n, p in trainer.policy.named_parameters()}


def test_spo_degree_weight_zero_step_is_the_dpo_step(tmp_path):
    spo = make(tmp_path / "spo", objective_params={"degrees": J, "degree_weight": 0.0})
    dpo = make(tmp_path / "dpo", loss_type="sigmoid", objective_params={})
    mb_s, out_s, g_s = step_grads(spo)
    mb_d, out_d, g_d = step_grads(dpo)
    assert mb_s.row_ids == mb_d.row_ids
    torch.testing.assert_close(out_s.losses, out_d.losses, rtol=0, atol=1e-7)
    assert max((g_s[k] - g_d[k]).abs().max().item() for k in g_d) <= 1e-8
    assert any(g.abs().sum() > 0 for g in g_d.values())
    assert out_s.metrics["loss/degree"].item() > 0  # the degree term was computed, with weight 0


def test_spo_degree_zero_head_gives_log_classes_in_the_run_step(tmp_path):
    trainer = make(tmp_path)
    head = trainer.producer.parameters()
    assert all(p.abs().sum().item() == 0 for p in head) and len(head) == 2
    assert any(p is head[0] for p in trainer.extra_params)  # trained with the policy
    out = trainer.forward(trainer.micro_batches(0)[0])
    assert out.metrics["loss/degree"].item() == pytest.approx(math.log(J + 1), abs=1e-6)
    assert out.metrics["degree/accuracy"].item() == pytest.approx(1 / (J + 1), abs=1e-6)  # argmax of ties: class 0


def test_spo_degree_head_gets_no_gradient_from_the_dpo_term(tmp_path):
    trainer = make(tmp_path)
    mb = trainer.micro_batches(0)[0]
    batch = trainer.score(mb.layout, positions=mb.index)
    head = trainer.producer.parameters()
    full = get_objective("spo_degree", degrees=J, degree_weight=1.0, align_weight=1.0)(batch).loss
    degree_only = get_objective("spo_degree", degrees=J, degree_weight=1.0, align_weight=0.0)(batch).loss
    align_only = get_objective("spo_degree", degrees=J, degree_weight=0.0, align_weight=1.0)(batch).loss
    g_full = torch.autograd.grad(full, head, retain_graph=True)
    g_degree = torch.autograd.grad(degree_only, head, retain_graph=True)
    for a, b in zip(g_full, g_degree):  # adding the DPO term changes nothing in the head's gradient
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert g_degree[0].abs().sum() > 0  # the head does learn from the degree loss
    g_align = torch.autograd.grad(align_only, head + [trainer.policy.get_input_embeddings().weight],
                                  retain_graph=True, allow_unused=True)
    assert g_align[2].abs().sum() > 0  # the DPO term moves the policy ...
    assert all(g is None or g.abs().sum() == 0 for g in g_align[:2])  # ... and not the head


def test_spo_degree_train_run_learns_degrees_and_resumes(tmp_path):
    steps = dict(max_steps=24, save_steps=12, eval_fraction=0.1, eval_steps=24, learning_rate=1e-3)
    summary = make(tmp_path / "full", **steps).train()
    accuracy = summary["final_metrics"]["eval_degree/accuracy"]
    assert accuracy > 0.45, accuracy  # chance is 1/3 (J = 2)
    first = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl") if '"loss/degree"' in line][0]
    assert first["loss/degree"] == pytest.approx(math.log(J + 1), abs=1e-6)  # step 1: the zero head
    assert summary["data"]["spo_degree_variants"]["train"]["variants_missing"] == 0
    saved = load_file(str(tmp_path / "full" / "checkpoint-12" / "extra.safetensors"))
    assert sorted(saved) == ["producer.0", "producer.1"]
    resumed = make(tmp_path / "resumed", resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-12"),
                   **steps).train()
    assert resumed["resumed_from_step"] == 12
    for name in ("model.safetensors", "degree_head.safetensors"):
        a, b = load_file(str(tmp_path / "full" / name)), load_file(str(tmp_path / "resumed" / name))
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, name
    head = load_file(str(tmp_path / "full" / "degree_head.safetensors"))
    assert head["linear.weight"].shape == (J + 1, 32) and head["linear.weight"].abs().sum() > 0
    assert resumed["final_metrics"]["eval_degree/accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_spo_degree_head_saved_with_the_best_model(tmp_path):
    """load_best_model_at_end: degree_head.safetensors is the best checkpoint's head, as model.safetensors is its
    model (greater_is_better on eval_loss picks the first checkpoint, not the last step)."""
    summary = make(tmp_path, max_steps=6, save_steps=2, eval_steps=2, eval_fraction=0.1, learning_rate=1e-3,
                   load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=True).train()
    best = Path(summary["best_model_checkpoint"])
    assert best.name == "checkpoint-2"
    saved = load_file(str(best / "extra.safetensors"))
    head = load_file(str(tmp_path / "degree_head.safetensors"))
    assert torch.equal(head["linear.weight"], saved["producer.0"]) and torch.equal(head["linear.bias"],
                                                                                   saved["producer.1"])


def test_spo_degree_after_another_base_loss_logs_and_reports_its_degree_metrics(tmp_path):
    """loss_type [ipo, spo_degree] with align_weight 0 (the docstring's way to use SPO's degree term with another
    base loss): the run logs spo_degree's declared metrics (they were dropped after the first part) train and eval,
    step 1's are the zero head's closed forms, and `preflab report` draws their panels."""
    from preflab.report.html import write_report

    summary = make(tmp_path, loss_type=["ipo", "spo_degree"], max_steps=2, eval_fraction=0.1, eval_steps=2,
                   objective_params={"degrees": J, "degree_weight": 1.0, "align_weight": 0.0}).train()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    first = next(r for r in rows if r["step"] == 1 and "loss" in r)
    assert first["loss/degree"] == pytest.approx(math.log(J + 1), abs=1e-6)
    assert first["degree/accuracy"] == pytest.approx(1 / (J + 1), abs=1e-6)  # argmax of ties: class 0
    assert first["loss/spo_degree"] == pytest.approx(math.log(J + 1), abs=1e-6)  # align_weight 0: the degree term
    assert "rewards/margins/spo_degree" not in first and "eval_degree/accuracy" in summary["final_metrics"]
    html = write_report([tmp_path], tmp_path / "report.html").read_text()
    assert 'alt="Degree loss (SPO)"' in html and 'alt="Degree accuracy (SPO)"' in html


def test_spo_degree_refuses_its_extras_as_data_columns(tmp_path):
    data = tmp_path / "pairs.jsonl"
    row = {"prompt": "echo: a b c\n", "chosen": "A B C", "rejected": "a b c", "degree_logits": 0.5}
    data.write_text("\n".join(json.dumps(row) for _ in range(4)) + "\n")
    with pytest.raises(ConfigError, match=r"pairs.jsonl' \(train\), row 0: column 'degree_logits' is what "
                                          "loss_type spo_degree computes"):
        make(tmp_path / "out", dataset_name=str(data))


def reference_degree_logits(trainer, positions, split="train", degrees=J):
    """degree_logits [B, 2, J+1, J+1] computed the plain way: every variant (j = 0 included) of the `split`
    ("train" / "eval") examples at `positions` alone through the policy's backbone (one sequence, no padding), its
    final hidden states averaged over the response-predicting positions (the last prompt token .. the one before the
    response's last), through the head. Variants a response lacks stay 0."""
    from preflab.scoring.head import backbone_and_head

    backbone = backbone_and_head(trainer.policy)[0]
    head = trainer.producer.head
    examples = trainer.train_data if split == "train" else trainer.eval_data
    out = torch.zeros(len(positions), 2, degrees + 1, degrees + 1)
    for b, i in enumerate(positions):
        prompt = list(examples[i].prompt_ids)
        for s, side in enumerate(("chosen", "rejected")):
            for j, ids in trainer.producer.variants[split][i][side]:
                hidden = backbone(input_ids=torch.tensor([prompt + ids]), use_cache=False).last_hidden_state[0]
                out[b, s, j] = head(hidden[len(prompt) - 1:len(prompt) + len(ids) - 1].mean(0))
    return out


@pytest.mark.parametrize("layout", ["padded", "prefix_shared"])
def test_spo_degree_logits_and_gradients_equal_scoring_each_variant_alone(tmp_path, layout):
    """The producer's degree_logits (j = 0 pooled from the pair forward, j >= 1 from the hidden-only variant
    forward) equal each variant scored alone, and so do the gradients they give the policy and the head (a random
    weighting of the logits, so every entry counts). Measured: about 1e-7."""
    trainer = make(tmp_path, layout=layout)
    with torch.no_grad():
        for p in trainer.producer.parameters():  # a head that is not zero, so the policy gets a gradient
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    mb = trainer.micro_batches(0)[0]
    params = [p for p in trainer.policy.parameters() if p.requires_grad] + trainer.producer.parameters()
    weights = torch.randn(len(mb.index), 2, J + 1, J + 1, generator=torch.Generator().manual_seed(2))
    labels = trainer.score(mb.layout, positions=mb.index).extras["degree_labels"]
    ours = trainer.score(mb.layout, positions=mb.index).extras["degree_logits"]
    present = (labels != -100).unsqueeze(-1)
    assert present.all()  # every variant exists (three words, J = 2): each entry compared
    ref = reference_degree_logits(trainer, mb.index)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    g_ours = torch.autograd.grad((ours * weights).sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad((ref * weights).sum(), params, allow_unused=True)
    assert [g is None for g in g_ours] == [g is None for g in g_ref]  # the LM head: in neither
    for a, b in zip(g_ours, g_ref):  # float32 sums in another order: 1e-6 of the gradient's own size
        if a is not None:
            assert (a - b).abs().max().item() <= 1e-6 * b.abs().max().item(), (a - b).abs().max().item()
    assert all(g.abs().sum() > 0 for g in g_ref[-2:]) and g_ref[0].abs().sum() > 0


def test_spo_degree_variant_pass_runs_j_ge_1_only_and_no_lm_head(tmp_path):
    """One training forward runs the policy's backbone twice: the pair forward (2B sequences) and the variant
    forward on the J variants j >= 1 of each response only (j = 0 is the pair forward's own sequence, pooled from
    its hidden states); the LM head sees the pair forward's response positions only (the variant forward reads no
    log-prob). The old producer ran all J+1 variants through the full scorer, LM head included."""
    trainer = make(tmp_path)
    policy = trainer.policy
    mb = trainer.micro_batches(0)[0]
    trainer.forward(mb)  # first: the once-per-model probes (right_padding_needs_no_mask) are not counted
    rows, head_rows = [], []
    hooks = [policy.get_input_embeddings().register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0])),
             policy.get_output_embeddings().register_forward_hook(lambda m, a, o: head_rows.append(a[0].shape[0]))]
    try:
        trainer.forward(mb)
    finally:
        for h in hooks:
            h.remove()
    B = len(mb.index)
    variants = sum(len(trainer.producer.variants["train"][i][side]) for i in mb.index
                   for side in ("chosen", "rejected"))
    assert variants == B * 2 * (J + 1)
    assert rows == [mb.layout.input_ids.shape[0], B * 2 * J]  # the pair rows, then the j >= 1 variants only
    assert head_rows == [int(mb.layout.response_mask.sum())]  # the pair forward's response tokens, once


def test_spo_degree_micro_batch_without_deletable_units_keeps_one_variant_forward(tmp_path):
    """Responses of stop words only have no key unit: only j = 0 (pooled from the pair forward) has a label. The
    variant forward still runs, on one pair sequence with weight 0 (every rank of an FSDP / DDP run runs the same
    forwards), and changes neither the logits nor the loss."""
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"echo {i}:\n", "chosen": "the and", "rejected": "of to"} for i in range(8)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    trainer = make(tmp_path / "out", dataset_name=str(data))
    with torch.no_grad():
        for p in trainer.producer.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    mb = trainer.micro_batches(0)[0]
    trainer.forward(mb)  # the once-per-model probes first
    rows_seen = []
    hook = trainer.policy.get_input_embeddings().register_forward_hook(lambda m, a, o: rows_seen.append(a[0].shape[0]))
    try:
        extras = trainer.score(mb.layout, positions=mb.index).extras
    finally:
        hook.remove()
    assert rows_seen == [mb.layout.input_ids.shape[0], 1]
    labels, logits = extras["degree_labels"], extras["degree_logits"]
    assert (labels[..., 0] == 0).all() and (labels[..., 1:] == -100).all()
    torch.testing.assert_close(logits[:, :, 0], reference_degree_logits(trainer, mb.index)[:, :, 0], rtol=0,
                               atol=1e-6)
    assert (logits[:, :, 1:] == 0).all()
    out = trainer.forward(mb)
    ce = torch.nn.functional.cross_entropy(logits[:, :, 0].reshape(-1, J + 1), labels[..., 0].reshape(-1))
    assert out.metrics["loss/degree"].item() == pytest.approx(ce.item(), abs=1e-6)


def test_spo_degree_eval_metrics_over_batches_equal_one_batch(tmp_path):
    """Eval over batches of one pair equals one batch of all eval pairs for the degree metrics: with degrees 3 the
    two- and three-word responses have 3 and 4 variants (j = 0..units), so degree/accuracy is the fraction of all
    scored variants (ObjectiveOutput.metric_counts), not the mean of the batches' fractions; loss/degree the mean
    over the pairs of each pair's mean CE, as the loss averages it."""
    def evaluate(batch):
        trainer = make(tmp_path / f"b{batch}", objective_params={"degrees": 3, "degree_weight": 1.0},
                       eval_fraction=0.25, per_device_eval_batch_size=batch)
        trainer.out, trainer.step, trainer.main = tmp_path / f"b{batch}", 0, False
        with torch.no_grad():  # a head that is not zero: the predicted degree differs between variants
            for p in trainer.producer.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
        return trainer.evaluate(), len(trainer.eval_data)

    ones, n = evaluate(1)
    whole, _ = evaluate(64)
    assert n > 1 and 0 < whole["eval_degree/accuracy"] < 1
    for key in ("eval_degree/accuracy", "eval_loss/degree", "eval_loss"):
        assert ones[key] == pytest.approx(whole[key], abs=1e-6), key
