"""spo_degree's evaluation scores the eval pairs' own degree variants (preflab.loops.degree_head): the producer's
degree_logits and labels of an eval batch equal the eval examples' variants scored one by one."""
import torch

from preflab.scoring.head import backbone_and_head

from test_spo_degree_run import make

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
    backbone, head, J1 = backbone_and_head(trainer.policy)[0], trainer.producer.head, DEGREES + 1
    want_labels = torch.full((4, 2, J1), -100)
    want_logits = torch.zeros(4, 2, J1, J1)
    with torch.no_grad():
        for b, i in enumerate(positions):
            prompt = list(trainer.eval_data[i].prompt_ids)
            for s, side in enumerate(("chosen", "rejected")):
                for j, ids in trainer.producer.variants["eval"][i][side]:
                    hidden = backbone(input_ids=torch.tensor([prompt + ids]), use_cache=False).last_hidden_state[0]
                    want_logits[b, s, j] = head(hidden[len(prompt) - 1:len(prompt) + len(ids) - 1].mean(0))
                    want_labels[b, s, j] = j
    assert torch.equal(labels, want_labels) and (labels == -100).any()
    torch.testing.assert_close(logits, want_logits, rtol=0, atol=1e-5)
