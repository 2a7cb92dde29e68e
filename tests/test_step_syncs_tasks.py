"""Device-to-host syncs per optimizer step of the SFT, KTO and reward-model steps, with logging off (issue 17; the
DPO step's are in tests/test_step_syncs.py, with the same op set).

Counted with benchmarks/op_count.py's OpCounter (a TorchDispatchMode; the loop's micro_batches is host work, its
layouts host tensors, as on a GPU machine). Each step makes the shared step's one read (`.tolist()`), plus what
transformers does inside the model's forward that preflab cannot avoid from outside:
  * a right-padded row given without a mask (plain causal attention, the padded layout: SFT, KTO) makes LlamaModel
    look for packed sequences in its position ids, one `.all()` per forward (masking_utils.
    find_packed_sequence_indices; skipped under torch.compile): SFT 1 (policy), KTO 2 (policy + reference);
  * the reward model's right-padded rows (pairs, or DPA's rated rows) go without a mask too (its decoder checked
    causal once by a probe; the sequence-classification head pools at the rightmost non-pad token, found on the
    device without a read, or LastTokenRewardModel at the host's last real token): 1 (a 2-D padding mask cost two
    reads).
Fixed here: SFT's token accuracy was read per micro-batch (`int(...)` per LM-head chunk) and its step's token count
through a device tensor (two reads, in micro_batches); KTO's metrics did `rows.any()` and boolean-mask indexing per
label (6 syncs per micro-batch).
"""
import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "loops"))
sys.path.insert(0, str(ROOT / "tests" / "reward_models"))
from op_count import OpCounter, counted_steps, counting  # noqa: E402
from reward_synthetic import rated_rows  # noqa: E402
from tiny_run import synthetic_pairs  # noqa: E402

STEPS = 4


def _draw(rng, k):
    return [rng.randrange(6, 200) for _ in range(k)]


def unpaired_items(n=16, seed=0):
    from preflab.data.tokenize import TokenizedUnpaired

    rng = random.Random(seed)
    return [TokenizedUnpaired(i, [1] + _draw(rng, rng.randrange(2, 6)), _draw(rng, rng.randrange(1, 5)) + [2],
                              i % 3 != 0) for i in range(n)]


def sft_items(n=16, seed=0):
    from preflab.loops.sft import TokenizedSFT

    rng = random.Random(seed)
    return [TokenizedSFT(i, [1] + _draw(rng, rng.randrange(1, 6)), _draw(rng, rng.randrange(1, 7)) + [2])
            for i in range(n)]


def count(tmp_path, monkeypatch, task: str):
    """The StepOps of steps 2..STEPS-1 of a tiny run of `task` (kto, sft, reward, attributes: the DPA reward)."""
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.reward_models.train import RewardRun

    torch.set_num_threads(1)
    counter = OpCounter()
    owner = RewardRun if task in ("reward", "attributes") else Trainer
    original = owner.micro_batches

    def host_micro_batches(self, step):
        with counter.host_region():
            mbs = original(self, step)
        counter.mark_host(mbs)
        return mbs

    monkeypatch.setattr(owner, "micro_batches", host_micro_batches)
    tok = tiny_tokenizer()
    params = dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", output_dir=str(tmp_path),
                  learning_rate=1e-3, per_device_train_batch_size=4, max_steps=STEPS, logging_steps=1000,
                  save_strategy="no", disable_tqdm=True, use_cpu=True)
    with counting(counter):
        if task == "kto":
            policy = tiny_causal_lm(tok, seed=0)
            Trainer(config_from_dict({**params, "loss_type": "kto"}), policy=policy, ref=frozen_copy(policy),
                    tokenizer=tok, train_data=unpaired_items()).train()
        elif task == "sft":
            from preflab.loops.sft import SFTTrainer

            SFTTrainer(config_from_dict({**params, "task": "sft"}), policy=tiny_causal_lm(tok, seed=0), tokenizer=tok,
                       train_data=sft_items()).train()
        elif task == "attributes":
            from preflab.reward_models.multi_objective import train_multi_objective

            train_multi_objective(config_from_dict({**params, "task": "reward"}), rated_rows(16, seed=0),
                                  ["helpfulness", "verbosity"], tokenizer=tok)
        else:
            from preflab.reward_models.train import train_reward

            train_reward(config_from_dict({**params, "task": "reward"}), tokenizer=tok,
                         train_data=synthetic_pairs(16))
    return counted_steps(counter, STEPS)


@pytest.mark.parametrize("task, model_reads", [("sft", 1), ("kto", 2), ("reward", 1), ("attributes", 1)])
def test_task_step_syncs(tmp_path, monkeypatch, task, model_reads):
    steps = count(tmp_path, monkeypatch, task)
    for step in steps:
        assert dict(step.syncs) == {"Tensor.tolist": 1, "_local_scalar_dense": model_reads}, step.syncs
    if task in ("sft", "reward", "attributes"):
        assert all(step.sync_count <= 2 for step in steps)


@pytest.mark.parametrize("last_token_head", [False, True])
def test_reward_scores_without_the_mask_equal_the_masked_ones(last_token_head):
    """The reward step's unmasked forward (right-padded rows of a causal decoder) gives the masked forward's scores:
    transformers' LlamaForSequenceClassification (pooling at the rightmost non-pad token) and LastTokenRewardModel
    (pooling at the host's last real token), pairs of different lengths (measured: bit-identical on CPU)."""
    from preflab.loops.batches import collate_pairs
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.reward_models.heads import last_real_token, reward_model_from_config, sequence_outputs
    from preflab.reward_models.train import unmasked_rows

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    config = tiny_causal_lm(tok, seed=0).config
    model = reward_model_from_config(config, 2, tok.pad_token_id, seed=3, last_token_head=last_token_head)
    layout = collate_pairs(synthetic_pairs(6), tok.pad_token_id, "padded")
    lengths = layout.attention_mask.sum(-1)
    assert lengths.min() < lengths.max() == layout.input_ids.shape[1]  # some rows padded, some not
    assert unmasked_rows(model, layout)
    with torch.no_grad():
        masked = sequence_outputs(model, layout.input_ids, layout.attention_mask)
        plain = sequence_outputs(model, layout.input_ids, None, last_real_token(layout.attention_mask))
    assert masked.abs().min() > 0
    torch.testing.assert_close(plain, masked, rtol=0, atol=1e-6)


def test_attribute_reward_step_without_the_mask_equals_the_masked_one():
    """The DPA (multi-objective) reward step sends right-padded rated rows without the mask, as the pairwise step
    does (reward_models.train.step_outputs): its outputs equal the masked forward's on rows of different lengths
    (measured: bit-identical on CPU), for d = 2 attribute outputs."""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.reward_models.heads import reward_model_from_config, sequence_outputs
    from preflab.reward_models.multi_objective import collate_rated, tokenize_rated
    from preflab.reward_models.train import step_outputs, unmasked_rows

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    model = reward_model_from_config(tiny_causal_lm(tok, seed=0).config, 2, tok.pad_token_id, seed=3)
    batch = collate_rated(tokenize_rated(rated_rows(8, seed=1), tok, ["helpfulness", "verbosity"]), tok.pad_token_id)
    lengths = batch.attention_mask.sum(-1)
    assert lengths.min() < lengths.max() == batch.input_ids.shape[1]  # some rows padded, some not
    assert batch.causal_only and unmasked_rows(model, batch)
    with torch.no_grad():
        masked = sequence_outputs(model, batch.input_ids, batch.attention_mask)
        plain = step_outputs(model, batch, batch.input_ids, batch.attention_mask)
    assert masked.abs().min() > 0
    torch.testing.assert_close(plain, masked, rtol=0, atol=1e-6)


def test_kto_metrics_with_host_label_counts_equal_the_indexed_means():
    """The sync-free KTO metrics (label counts known on the host) equal the boolean-indexed ones."""
    from preflab.objectives.base import SequenceLogps, UnpairedBatch
    from preflab.objectives.kto import KTO

    g = torch.Generator().manual_seed(0)
    side = lambda: SequenceLogps(torch.randn(6, 5, generator=g, dtype=torch.float64),  # noqa: E731
                                 torch.rand(6, 5, generator=g) > 0.3)
    label = torch.tensor([True, False, True, True, False, True])
    parts = (side(), label, side(), side(), side())
    plain = KTO().compute(UnpairedBatch(*parts))
    counted = KTO().compute(UnpairedBatch(*parts, label_counts=(4, 2)))
    assert set(plain.metrics) == set(counted.metrics) and len(plain.metrics) == 6
    for key, value in plain.metrics.items():
        torch.testing.assert_close(counted.metrics[key], value, rtol=0, atol=1e-12)
    for key, value in plain.metric_counts.items():
        assert float(value) == counted.metric_counts[key] == (4 if key.endswith("chosen") else 2)
    r = 0.1 * (parts[0].sum - parts[2].sum)
    torch.testing.assert_close(plain.metrics["rewards/chosen"], r[label].mean(), rtol=0, atol=1e-12)
    # a batch without undesirable examples reports the same names, rewards/rejected 0 with count 0
    only_desirable = KTO().compute(UnpairedBatch(parts[0], torch.ones(6, dtype=torch.bool), *parts[2:],
                                                 label_counts=(6, 0)))
    assert set(only_desirable.metrics) == set(plain.metrics)
    assert only_desirable.metric_counts["rewards/rejected"] == 0
    assert float(only_desirable.metrics["rewards/rejected"]) == 0
