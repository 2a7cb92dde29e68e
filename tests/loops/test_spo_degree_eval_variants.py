"""spo_degree's evaluation scores the eval pairs' own degree variants (preflab.loops.degree_head): the producer's
degree_logits and labels of an eval batch equal the eval examples' variants scored one by one."""
import torch

from test_spo_degree_run import make, reference_degree_logits

DEGREES = 3  # two- and three-word responses: 3 or 4 variants, so a missing variant (label -100) occurs


def test_eval_batches_score_the_eval_examples_variants(tmp_path):
    trainer = make(tmp_path, objective_params={"degrees": DEGREES, "degree_weight": 1.0}, eval_fraction=0.25)
    with torch.no_grad():  # a head that is not zero, so every variant's logits tell the variants apart
        for p in trainer.producer.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    positions = list(range(4))
    with torch.no_grad():
        batch = trainer.score(trainer.collate(trainer.eval_data[:4]), train=False, positions=positions)
    logits, labels = batch.extras["degree_logits"], batch.extras["degree_labels"]
    want_logits = reference_degree_logits(trainer, positions, "eval", DEGREES)
    want_labels = torch.full((4, 2, DEGREES + 1), -100)
    for b, i in enumerate(positions):
        for s, side in enumerate(("chosen", "rejected")):
            for j, _ in trainer.producer.variants["eval"][i][side]:
                want_labels[b, s, j] = j
    assert torch.equal(labels, want_labels) and (labels == -100).any()
    torch.testing.assert_close(logits, want_logits, rtol=0, atol=1e-5)
