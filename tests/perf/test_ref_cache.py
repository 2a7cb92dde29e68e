"""Reference log-probs cache: same training as a reference forward every step (under shuffling, LoRA, resume of
the cache), no reference forward during training, one value per row under sharding, safetensors on disk."""
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.batches import collate_pairs
from preflab.loops.offline import Trainer
from preflab.models.load import add_lora, frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.scoring.lm import LogProbScorer
from preflab.scoring.ref_cache import (assemble, compute_ref_logps, load_ref_logps, model_fingerprint,
                                       reference_cache, save_ref_logps, score_rows)

sys.path.insert(0, str(Path(__file__).parents[1] / "loops"))
from tiny_run import synthetic_pairs  # noqa: E402

TOK = tiny_tokenizer()


def make_trainer(out, policy=None, ref=None, pairs=None, **overrides):
    params = dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", output_dir=str(out),
                  learning_rate=1e-3, per_device_train_batch_size=4, max_steps=6, logging_steps=1,
                  disable_tqdm=True, use_cpu=True, seed=3)
    params.update(overrides)
    policy = policy if policy is not None else tiny_causal_lm(TOK, seed=0)
    if ref is None and not hasattr(policy, "disable_adapter"):
        ref = frozen_copy(policy)
    return Trainer(config_from_dict(params), policy=policy, ref=ref, tokenizer=TOK,
                   train_data=pairs or synthetic_pairs(), eval_data=synthetic_pairs(8, seed=5))


def losses(summary_dir):
    import json

    return [json.loads(line)["loss"] for line in open(Path(summary_dir) / "metrics.jsonl") if '"loss"' in line]


def final_weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}


def test_precomputed_reference_trains_exactly_like_a_reference_forward(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    live = make_trainer(tmp_path / "live")
    live_summary = live.train()
    policy = tiny_causal_lm(TOK, seed=0)
    ref = frozen_copy(policy)
    calls = []
    ref.model.register_forward_hook(lambda *a: calls.append(1))
    cached = make_trainer(tmp_path / "cached", policy=policy, ref=ref, precompute_ref_log_probs=True)
    calls.clear()  # construction probes the layout once (preflab.models.attention); count from training on
    summary = cached.train()
    assert len(calls) == 32 // 4 + 8 // 8, "the reference must run once per precompute batch, never in training"
    assert cached.ref is None  # released after the precompute
    assert summary["reference_cache"]["train"]["hit"] is False
    assert losses(tmp_path / "cached") == pytest.approx(losses(tmp_path / "live"), abs=1e-6)
    assert summary["final_metrics"]["eval_loss"] == pytest.approx(live_summary["final_metrics"]["eval_loss"], abs=1e-6)
    live_w, cached_w = final_weights(live), final_weights(cached)
    assert max((live_w[k] - cached_w[k]).abs().max().item() for k in live_w) < 1e-6
    # a second run (new process in practice) reads the file instead of running the reference
    calls.clear()
    again = make_trainer(tmp_path / "again", policy=tiny_causal_lm(TOK, seed=0), ref=ref,
                         precompute_ref_log_probs=True)
    assert again.train()["reference_cache"]["train"]["hit"] is True
    assert calls == []
    assert losses(tmp_path / "again") == losses(tmp_path / "cached")
    stored = load_file(summary["reference_cache"]["train"]["file"])
    assert set(stored) == {"chosen", "chosen_offsets", "rejected", "rejected_offsets"}
    assert stored["chosen"].numel() == sum(len(p.chosen_ids) for p in synthetic_pairs())


def test_lora_reference_is_the_base_model(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    runs = {}
    for name, precompute in (("live", False), ("cached", True)):
        policy = add_lora(tiny_causal_lm(TOK, seed=0), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
        trainer = make_trainer(tmp_path / name, policy=policy, precompute_ref_log_probs=precompute, max_steps=3)
        trainer.train()
        runs[name] = losses(tmp_path / name)
    assert runs["cached"] == pytest.approx(runs["live"], abs=1e-6)


def test_each_row_gets_its_own_value_under_sharding_and_shuffled_lookup():
    pairs = synthetic_pairs(11, seed=2)
    scorer = LogProbScorer(tiny_causal_lm(TOK, seed=4))
    collate = lambda ps: collate_pairs(ps, pad_id=0, layout="prefix_shared")  # noqa: E731
    single = compute_ref_logps(scorer, pairs, collate, batch_size=3)
    shards = [score_rows(scorer, pairs, collate, 3, rank=rank, world=2) for rank in range(2)]
    assert {r[0] for r in shards[0]} == set(range(0, 11, 2)) and {r[0] for r in shards[1]} == set(range(1, 11, 2))
    both = compute_ref_logps(scorer, pairs, collate, 3, rank=1, world=2, gather=lambda rows: shards[0] + rows)
    for i in range(len(pairs)):
        assert both.chosen[i].numel() == len(pairs[i].chosen_ids)
        torch.testing.assert_close(both.chosen[i], single.chosen[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(both.rejected[i], single.rejected[i], atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="twice"):
        assemble(shards[0] + shards[0] + shards[1], len(pairs))
    positions = [7, 2, 9]  # a shuffled batch reads rows 7, 2, 9; compare with scoring them directly
    layout = collate([pairs[i] for i in positions])
    with torch.no_grad():
        direct = scorer(layout)
    looked_up = single.scores(positions, layout.response_mask)
    torch.testing.assert_close(looked_up.token_logps, direct.token_logps, atol=1e-5, rtol=0)


def test_damaged_or_foreign_files_are_misses(tmp_path):
    pairs = synthetic_pairs(5)
    scorer = LogProbScorer(tiny_causal_lm(TOK, seed=1))
    collate = lambda ps: collate_pairs(ps, pad_id=0, layout="padded")  # noqa: E731
    values, path, hit = reference_cache(scorer, pairs, collate, 2, "k" * 64, tmp_path)
    assert not hit and path.exists()
    assert reference_cache(scorer, pairs, collate, 2, "k" * 64, tmp_path)[2] is True
    assert load_ref_logps(path, "other" * 10, len(pairs)) is None  # another key
    assert load_ref_logps(path, "k" * 64, len(pairs) + 1) is None  # another dataset size
    path.write_bytes(b"not a safetensors file")
    assert load_ref_logps(path, "k" * 64, len(pairs)) is None
    save_ref_logps(path, values, "k" * 64)
    assert load_ref_logps(path, "k" * 64, len(pairs)) is not None


def test_fingerprint_follows_the_weights_and_skips_adapters():
    a, b = tiny_causal_lm(TOK, seed=0), tiny_causal_lm(TOK, seed=0)
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.lm_head.weight[0, 0] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)
    lora = add_lora(tiny_causal_lm(TOK, seed=0), r=2, alpha=4, dropout=0.0, target_modules=["q_proj"])
    assert model_fingerprint(lora, skip_adapters=True) != model_fingerprint(lora)


def test_token_kl_objectives_cannot_precompute(tmp_path):
    from preflab.objectives import list_objectives, objective_class, resolve_name

    needing = [n for n in list_objectives() if "token_kl" in objective_class(resolve_name(n)).token_needs]
    if not needing:
        pytest.skip("no objective needs token_kl")
    with pytest.raises(ConfigError, match="precompute_ref_log_probs"):
        make_trainer(tmp_path, loss_type=needing[0], precompute_ref_log_probs=True)
