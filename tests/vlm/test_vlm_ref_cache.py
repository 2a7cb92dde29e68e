"""precompute_ref_log_probs with task: vlm: the reference cache keyed by token ids AND the processor's pixel tensors
(preflab.data.vision.vision_pairs_fingerprint). Cached runs train exactly like a reference forward every step; rows
with the same text and other images never share values; a second run / resume reads the file, a changed image or
processor setting misses it; sharded scoring gives each row its own value. (The 2-process FSDP2 run with the cache,
test_two_fsdp2_processes_with_cache_equal_one_process_without, is in tests/loops/test_scale_matrix.py's FSDP2
launch.)"""
import copy
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from preflab.config import config_from_dict
from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs, vision_pairs_fingerprint
from preflab.loops.vlm import VisionTrainer
from preflab.models.clue_aggregator import clue_aggregator_of
from preflab.models.load import frozen_copy
from preflab.scoring.lm import backbone_and_head
from preflab.scoring.ref_cache import compute_ref_logps, pairs_fingerprint, score_rows
from preflab.scoring.vlm import VisionLogProbScorer, collate_vision_pairs, naive_vision_token_logps

from vlm_helpers import image, pair_row, tiny

COLOURS = [((200, 20, 20), "red"), ((20, 200, 20), "green"), ((20, 20, 200), "blue"), ((200, 200, 20), "yellow")]


def _rows(shift=0):
    """Four pairs; shift moves every image to another colour (same text, same image size: same token ids)."""
    return [pair_row("what colour is the image?", f"it is {c}", f"it is {COLOURS[(i + 1) % 4][1]}",
                     COLOURS[(i + shift) % 4][0], seed=i) for i, (_, c) in enumerate(COLOURS)]


def _pairs(processor, rows):
    return tokenize_vision_pairs(read_vision_pairs(rows)[0], processor)[0]


def _cfg(out, **kw):
    return config_from_dict({**dict(task="vlm", model_name_or_path="builtin:tiny-qwen2-vl", dataset_name="unused",
                                    output_dir=str(out), per_device_train_batch_size=2, per_device_eval_batch_size=2,
                                    learning_rate=1e-2, max_steps=3, logging_steps=1, disable_tqdm=True,
                                    report_to="none", use_cpu=True, seed=1, beta=0.5), **kw})


def _trainer(out, pairs, processor, eval_pairs=None, ref=None, arch="qwen2_vl", **kw):
    policy = tiny(arch)[0]
    return VisionTrainer(_cfg(out, model_name_or_path=f"builtin:tiny-{arch.replace('_', '-')}", **kw), policy=policy, ref=ref if ref is not None else frozen_copy(policy),
                         processor=processor, train_data=pairs, eval_data=eval_pairs)


def _metrics(out):
    return [json.loads(line) for line in open(out / "metrics.jsonl") if '"loss"' in line]


def _counting(model):
    """A list that grows by one per forward of `model`'s backbone (what the vision scorer runs)."""
    calls = []
    backbone_and_head(model)[0].register_forward_hook(lambda *a: calls.append(1))
    return calls


@pytest.mark.parametrize("arch", ["qwen2_vl", "llava"])  # image_grid_thw + padded layout; prefix_shared layout
def test_cached_reference_trains_like_a_reference_forward_every_step(tmp_path, monkeypatch, arch):
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    _, processor = tiny(arch)
    pairs, eval_pairs = _pairs(processor, _rows()), _pairs(processor, _rows(shift=2)[:2])
    live = _trainer(tmp_path / "live", pairs, processor, eval_pairs, arch=arch)
    live_summary = live.train()
    ref = frozen_copy(tiny(arch)[0])
    calls = _counting(ref)
    cached = _trainer(tmp_path / "cached", pairs, processor, eval_pairs, ref=ref, arch=arch,
                      precompute_ref_log_probs=True)
    assert cached.layout == ("padded" if arch == "qwen2_vl" else "prefix_shared")
    calls.clear()
    summary = cached.train()
    assert len(calls) == 4 // 2 + 2 // 2, "the reference runs once per precompute batch, never during training"
    assert cached.ref is None and cached.ref_scorer is None  # released after the precompute
    assert summary["reference_cache"]["train"]["hit"] is False
    a, b = _metrics(tmp_path / "live"), _metrics(tmp_path / "cached")
    assert len(a) == len(b) == 3
    for key in ("loss", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert [m[key] for m in b] == pytest.approx([m[key] for m in a], abs=1e-6), key
    assert summary["final_metrics"]["eval_loss"] == pytest.approx(live_summary["final_metrics"]["eval_loss"],
                                                                  abs=1e-6)
    for (name, p), q in zip(live.policy.named_parameters(), cached.policy.parameters()):
        assert float((p - q).detach().abs().max()) < 1e-6, name
    # the first step's loss is DPO on the full forwards of the batch (the cached values are the reference's)
    first = cached.micro_batches(0)[0].layout
    with torch.no_grad():
        pol = naive_vision_token_logps(tiny(arch)[0], first).sum(-1)
        rf = naive_vision_token_logps(ref, first).sum(-1)
    z = (pol[:2] - rf[:2]) - (pol[2:] - rf[2:])
    assert b[0]["loss"] == pytest.approx(float(-F.logsigmoid(0.5 * z).mean()), abs=1e-5)


def test_same_text_other_images_never_share_cached_values(tmp_path, monkeypatch):
    """Regression: with the text cache's key (token ids only) the second dataset would read the first one's file."""
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    _, processor = tiny("qwen2_vl")
    first, second = _pairs(processor, _rows()), _pairs(processor, _rows(shift=1))
    assert pairs_fingerprint(first) == pairs_fingerprint(second)  # the token ids cannot tell them apart
    assert vision_pairs_fingerprint(first) != vision_pairs_fingerprint(second)
    negatives = [{**row, "rejected": row["chosen"], "rejected_images": [image((90, 90, 90), seed=7)]} for row in _rows()]
    other_negatives = [{**row, "rejected_images": [image((10, 10, 10), seed=7)]} for row in negatives]
    a, b = _pairs(processor, negatives), _pairs(processor, other_negatives)  # input-side negatives: rejected images
    assert pairs_fingerprint(a) == pairs_fingerprint(b) and vision_pairs_fingerprint(a) != vision_pairs_fingerprint(b)
    ref = frozen_copy(tiny("qwen2_vl")[0])
    values = {}
    for name, pairs in (("first", first), ("second", second)):
        trainer = _trainer(tmp_path / name, pairs, processor, ref=ref, precompute_ref_log_probs=True)
        trainer._precompute_reference()
        assert trainer.ref_cache_info["train"]["hit"] is False, name
        values[name] = trainer.ref_logps["train"]
    layout = collate_vision_pairs(second, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        direct = VisionLogProbScorer(ref)(layout)
    looked_up = values["second"].scores(list(range(len(second))), layout.response_mask)
    torch.testing.assert_close(looked_up.token_logps, direct.token_logps, atol=1e-6, rtol=0)
    for i in range(len(first)):  # same tokens, other image: other reference log-probs
        assert float((values["first"].chosen[i] - values["second"].chosen[i]).abs().max()) > 1e-4


def test_resume_reads_the_cache_and_a_changed_image_or_processor_misses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    _, processor = tiny("qwen2_vl")
    pairs = _pairs(processor, _rows())
    ref = frozen_copy(tiny("qwen2_vl")[0])
    calls = _counting(ref)
    straight = _trainer(tmp_path / "a", pairs, processor, ref=ref, precompute_ref_log_probs=True, save_steps=2)
    assert straight.train()["reference_cache"]["train"]["hit"] is False
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    resumed = _trainer(tmp_path / "b", pairs, processor, ref=ref, precompute_ref_log_probs=True,
                       resume_from_checkpoint=True)
    calls.clear()
    assert resumed.train()["reference_cache"]["train"]["hit"] is True
    assert calls == []  # the file was read: no reference forward at all
    for (name, p), q in zip(straight.policy.named_parameters(), resumed.policy.parameters()):
        assert float((p - q).abs().max()) < 1e-6, name
    # one row's image changed (same text, same size): a miss, and that row's values are its own
    rows = _rows()
    rows[3] = pair_row("what colour is the image?", "it is yellow", "it is red", (30, 30, 30), seed=3)
    changed = _trainer(tmp_path / "c", _pairs(processor, rows), processor, ref=ref, precompute_ref_log_probs=True)
    changed._precompute_reference()
    assert changed.ref_cache_info["train"]["hit"] is False
    before, after = straight.ref_logps["train"], changed.ref_logps["train"]
    torch.testing.assert_close(after.chosen[0], before.chosen[0], atol=1e-6, rtol=0)  # unchanged rows: same values
    assert float((after.chosen[3] - before.chosen[3]).abs().max()) > 1e-4
    # the same images through another processor setting (normalisation): other pixel tensors, a miss
    other = copy.deepcopy(processor)
    other.image_processor.image_mean = [m + 0.1 for m in other.image_processor.image_mean]
    renormalised = _trainer(tmp_path / "d", _pairs(other, _rows()), other, ref=ref, precompute_ref_log_probs=True)
    renormalised._precompute_reference()
    assert renormalised.ref_cache_info["train"]["hit"] is False


@pytest.mark.parametrize("lockstep", [False, True], ids=["ddp", "fsdp2-lockstep"])
def test_sharded_scoring_gives_each_vision_row_its_own_value(lockstep):
    """Several processes score the positions rank::world and gather (preflab.scoring.ref_cache), for vision pairs
    as for text; lockstep (FSDP2) re-runs a last batch on the rank with fewer rows and drops it."""
    model, processor = tiny("qwen2_vl")
    pairs = _pairs(processor, _rows() + _rows(shift=1)[:1])  # 5 pairs: rank 0 scores 3, rank 1 scores 2
    scorer = VisionLogProbScorer(model)
    collate = lambda ps: collate_vision_pairs(ps, processor.tokenizer.pad_token_id)  # noqa: E731
    single = compute_ref_logps(scorer, pairs, collate, batch_size=2)
    shards = [score_rows(scorer, pairs, collate, 2, rank=rank, world=2, lockstep=lockstep) for rank in range(2)]
    assert sorted(r[0] for r in shards[0]) == [0, 2, 4] and sorted(r[0] for r in shards[1]) == [1, 3]
    both = compute_ref_logps(scorer, pairs, collate, 2, rank=1, world=2, gather=lambda rows: shards[0] + rows,
                             lockstep=lockstep)
    for i in range(len(pairs)):
        torch.testing.assert_close(both.chosen[i], single.chosen[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(both.rejected[i], single.rejected[i], atol=1e-6, rtol=0)
    positions = [4, 1, 2]  # a shuffled batch reads its rows' own values
    layout = collate([pairs[i] for i in positions])
    with torch.no_grad():
        direct = scorer(layout)
    torch.testing.assert_close(single.scores(positions, layout.response_mask).token_logps, direct.token_logps,
                               atol=1e-6, rtol=0)


def test_clue_aggregator_under_lora_keeps_the_reference_at_the_start_and_can_be_cached(tmp_path, monkeypatch):
    """CAT + LoRA without a reference model: the reference is the policy with its adapters off AND its clue
    aggregator at the weights training started from (the aggregator trains with the adapters; before, the reference
    used the trained aggregator and drifted). So the reference's log-probs after 3 steps equal those before, and a
    run with precomputed reference log-probs trains exactly like the live one."""
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    _, processor = tiny("llava")
    pairs = _pairs(processor, _rows())
    kw = dict(model_name_or_path="builtin:tiny-llava", clue_aggregator=True, use_peft=True, lora_r=4)

    live = VisionTrainer(_cfg(tmp_path / "live", **kw), processor=processor, train_data=pairs)
    layout = live.collate(pairs[:2])
    before = live._reference(layout)[0].token_logps.clone()
    live.train()
    aggregator = clue_aggregator_of(live.policy)
    assert float(aggregator.out.weight.detach().abs().sum()) > 0  # the aggregator did train (it starts at zero)
    after = live._reference(live.collate(pairs[:2]))[0].token_logps
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    with aggregator.as_initial():  # the frozen start differs from the trained weights
        assert float(aggregator._stand_in[0].out.weight.abs().sum()) == 0

    cached = VisionTrainer(_cfg(tmp_path / "cached", precompute_ref_log_probs=True, **kw), processor=processor,
                           train_data=pairs)
    cached.train()
    a, b = _metrics(tmp_path / "live"), _metrics(tmp_path / "cached")
    assert len(a) == len(b) == 3
    for key in ("loss", "rewards/chosen", "rewards/rejected"):
        assert [m[key] for m in b] == pytest.approx([m[key] for m in a], abs=1e-6), key
