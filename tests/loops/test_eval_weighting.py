"""Evaluation over several batches weights each batch by its size: eval metrics with eval batches of 2, 2 and 1 pairs
equal those of one batch of all 5, and an independent per-pair DPO computation."""
import torch
import torch.nn.functional as F

from preflab.config import config_from_dict
from preflab.data.layout import padded
from preflab.loops.offline import Trainer
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.scoring.lm import naive_token_logps

from tiny_run import synthetic_pairs

EVAL = synthetic_pairs(5, seed=3)


def evaluate(tmp_path, eval_batch):
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic",
                                output_dir=str(tmp_path / f"b{eval_batch}"), per_device_eval_batch_size=eval_batch,
                                max_steps=1, disable_tqdm=True, use_cpu=True, beta=0.5, layout="padded"))
    tok = tiny_tokenizer()
    policy, ref = tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=1)  # ref != policy: losses differ per pair
    trainer = Trainer(cfg, policy=policy, ref=ref, tokenizer=tok, train_data=synthetic_pairs(8), eval_data=EVAL)
    trainer.out, trainer.step, trainer.main = tmp_path / f"b{eval_batch}", 0, False
    return trainer.evaluate(), policy, ref


def test_eval_metrics_are_example_weighted_over_batches(tmp_path):
    uneven, policy, ref = evaluate(tmp_path, 2)
    whole, _, _ = evaluate(tmp_path, 5)
    assert uneven.keys() == whole.keys() and "eval_loss" in whole
    for key in whole:
        assert abs(uneven[key] - whole[key]) < 1e-5, key
    with torch.no_grad():  # independent: per-pair DPO loss from full logits, mean over the 5 pairs
        def s(model, p, side):
            return naive_token_logps(model, padded([(p.prompt_ids, getattr(p, side))], pad_id=0)).sum()
        h = torch.stack([(s(policy, p, "chosen_ids") - s(ref, p, "chosen_ids"))
                         - (s(policy, p, "rejected_ids") - s(ref, p, "rejected_ids")) for p in EVAL])
    assert abs(uneven["eval_loss"] - F.softplus(-0.5 * h).mean().item()) < 1e-5
    assert h.std() > 1e-3  # the pairs differ, so a per-batch mean would not equal the example mean
