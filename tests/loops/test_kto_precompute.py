"""KTO with precompute_ref_log_probs, as TRL 1.16 does it: each example's mismatched completion (KTO's reference
point pair) is fixed at data preparation by TRL's rotation inside chunks of per_device_train_batch_size examples
(preflab.data.mismatched), the reference log-probs of both pairs are cached per example, the reference is released.
Before, preflab refused the combination (the pairs were formed inside each micro-batch)."""
import json
import random

import pytest
import torch

from preflab.config import config_from_dict
from preflab.data.mismatched import fix_mismatched, trl_unpaired_order
from preflab.data.tokenize import TokenizedUnpaired
from preflab.errors import DataError
from preflab.loops.offline import Trainer
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

TOK = tiny_tokenizer()
LOGGED = ("loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")


def unpaired(n=12, seed=0):
    """KTO rows with distinct completions (so each pairing gives other sequences)."""
    rng = random.Random(seed)
    draw = lambda k: [rng.randrange(6, 200) for _ in range(k)]  # noqa: E731
    return [TokenizedUnpaired(i, [1] + draw(rng.randrange(2, 6)), draw(rng.randrange(1, 5)) + [2], i % 3 != 0)
            for i in range(n)]


def make(out, train, precompute, calls=None, eval_data=None, **overrides):
    """A KTO Trainer on tiny models; `calls` (a list) records "ref" / "policy" for each backbone forward."""
    params = dict(model_name_or_path="unused", dataset_name="unused", output_dir=str(out), loss_type="kto",
                  precompute_ref_log_probs=precompute, per_device_train_batch_size=4, per_device_eval_batch_size=3,
                  max_steps=3, logging_steps=1, learning_rate=1e-3, use_cpu=True, disable_tqdm=True, seed=3)
    params.update(overrides)
    policy = tiny_causal_lm(TOK, seed=0)
    ref = frozen_copy(policy)
    if calls is not None:
        ref.model.register_forward_hook(lambda *a: calls.append("ref"))
        policy.model.register_forward_hook(lambda *a: calls.append("policy"))
    return Trainer(config_from_dict(params), policy=policy, ref=ref, tokenizer=TOK, train_data=train,
                   eval_data=unpaired(6, seed=9) if eval_data is None else eval_data)


def logged(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in LOGGED} for r in rows if "loss" in r and "eval_loss" not in r]


def test_cached_run_equals_a_live_reference_on_the_same_fixed_pairs(tmp_path, monkeypatch):
    """(a), (c): 3 steps with the cache == 3 steps scoring the reference live on the same fixed pairs (examples
    given with their mismatched completion): losses, kl, rewards/*, logps/*, eval loss and weights, to 1e-6."""
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    cached = make(tmp_path / "cached", unpaired(), True, calls=calls)
    calls.clear()  # construction probes the layout once
    summary = cached.train()
    assert "ref" in calls and "ref" not in calls[calls.index("policy"):], "the reference runs before training only"
    assert cached.ref is None and summary["reference_cache"]["train"]["hit"] is False
    fixed_train = fix_mismatched(unpaired(), 4, trl_unpaired_order(unpaired()))
    fixed_eval = fix_mismatched(unpaired(6, seed=9), 4)  # TRL's eval pairing: chunks of the train batch size
    live = make(tmp_path / "live", fixed_train, False, eval_data=fixed_eval)
    live_summary = live.train()
    a, b = logged(tmp_path / "cached"), logged(tmp_path / "live")
    assert len(a) == 3
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=1e-6)
    assert summary["final_metrics"]["eval_loss"] == pytest.approx(live_summary["final_metrics"]["eval_loss"],
                                                                  abs=1e-6)
    for k, v in live.policy.state_dict().items():
        torch.testing.assert_close(cached.policy.state_dict()[k], v, atol=1e-6, rtol=0)
    # the comparison can fail: the default run (mismatched pairs rotated inside each shuffled micro-batch) logs
    # another kl
    default = make(tmp_path / "default", unpaired(), False)
    default.train()
    assert max(abs(x["kl"] - y["kl"]) for x, y in zip(logged(tmp_path / "default"), a)) > 1e-4


def test_eval_pairing_is_the_one_evaluate_forms_without_the_cache(tmp_path, monkeypatch):
    """Eval examples are paired as TRL pairs them (chunks of per_device_train_batch_size) with the cache or
    without: the eval loss with the cache equals the default run's."""
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    runs = {name: make(tmp_path / name, unpaired(), precompute, max_steps=1)
            for name, precompute in (("cached", True), ("default", False))}
    loss = {name: run.train()["final_metrics"]["eval_loss"] for name, run in runs.items()}
    assert loss["cached"] == pytest.approx(loss["default"], abs=1e-6)


def _trl_add_kl(dataset, batch_size):
    """TRL 1.16 KTOTrainer._prepare_dataset's KL step, verbatim (trl/trainer/kto_trainer.py, add_kl_completion_ids)."""
    def add_kl_completion_ids(examples):
        examples["KL_completion_ids"] = [examples["completion_ids"][-1]] + examples["completion_ids"][:-1]
        return examples

    return dataset.map(add_kl_completion_ids, batched=True, batch_size=batch_size)


@pytest.mark.parametrize("batch", [1, 3, 4, 5])
def test_fixed_pairing_equals_trls_on_kto_rows(batch):
    """(b) KTO rows: the same KL completion ids as TRL's map over the dataset (a last short chunk included)."""
    datasets = pytest.importorskip("datasets")
    items = unpaired(13, seed=1)
    trl = _trl_add_kl(datasets.Dataset.from_dict({"prompt_ids": [x.prompt_ids for x in items],
                                                  "completion_ids": [x.completion_ids for x in items],
                                                  "label": [x.label for x in items]}), batch)
    ours = fix_mismatched(items, batch, trl_unpaired_order(items))
    assert [x.mismatched_completion_ids for x in ours] == trl["KL_completion_ids"]
    assert [x.completion_ids for x in ours] == [x.completion_ids for x in items]  # the examples are not changed


def test_fixed_pairing_equals_trls_on_pairs_split_in_two():
    """(b) Pairwise rows: TRL unpairs them with a batched map ([chosen..., rejected...] per map batch), then rotates;
    preflab keeps a row's two examples together, and pairs them in TRL's order, so each example gets TRL's KL
    completion (in preflab's own order every rejected example would get its own prompt's chosen completion)."""
    datasets = pytest.importorskip("datasets")
    from trl.data_utils import unpair_preference_dataset

    rows = unpaired(14, seed=4)
    pairs = [(rows[i].prompt_ids, rows[i].completion_ids, rows[i + 1].completion_ids) for i in range(0, 14, 2)]
    trl = unpair_preference_dataset(datasets.Dataset.from_dict(
        {"prompt_ids": [p for p, _, _ in pairs], "chosen": [c for _, c, _ in pairs],
         "rejected": [r for _, _, r in pairs]}), batch_size=3)  # map batches of 3 rows (TRL's default: 1000)
    trl = _trl_add_kl(trl.rename_column("completion", "completion_ids"), 4)
    expected = {(tuple(p), tuple(c), bool(lab)): k for p, c, lab, k in
                zip(trl["prompt_ids"], trl["completion_ids"], trl["label"], trl["KL_completion_ids"])}
    items = [TokenizedUnpaired(row, p, y, label) for row, (p, c, r) in enumerate(pairs)
             for y, label in ((c, True), (r, False))]  # preflab's order (preflab.data.rows._build_unpaired)
    ours = fix_mismatched(items, 4, trl_unpaired_order(items, rows_per_batch=3))
    assert len(expected) == len(ours) == 14
    for x in ours:
        assert x.mismatched_completion_ids == expected[(tuple(x.prompt_ids), tuple(x.completion_ids), x.label)]
    own_chosen = {x.row_id: x.completion_ids for x in items if x.label}
    matched = lambda xs: sum(x.mismatched_completion_ids == own_chosen[x.row_id]  # noqa: E731
                             for x in xs if not x.label)
    assert matched(ours) == 1  # as in TRL: the last map batch holds one row, whose two examples form a chunk
    naive = fix_mismatched(items, 4)  # rotation in preflab's own order: the pitfall trl_unpaired_order avoids
    assert matched(naive) == 7  # every rejected example paired with its own prompt's chosen completion


def test_changed_batch_size_misses_the_cache_and_resume_reads_it(tmp_path, monkeypatch):
    """(d) per_device_train_batch_size changes the pairing, hence the cache key: a miss (another file).
    (e) a run resumed from its checkpoint reads the cache (no reference forward) and trains the remaining steps as
    the uninterrupted run did."""
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    full = make(tmp_path / "full", unpaired(), True, max_steps=4, save_steps=2).train()
    assert full["reference_cache"]["train"]["hit"] is False
    uninterrupted = logged(tmp_path / "full")
    other = make(tmp_path / "b2", unpaired(), True, per_device_train_batch_size=2, max_steps=1).train()
    assert other["reference_cache"]["train"]["hit"] is False
    assert other["reference_cache"]["train"]["file"] != full["reference_cache"]["train"]["file"]
    assert other["reference_cache"]["eval"]["hit"] is False  # TRL pairs the eval set in train-batch chunks too
    calls = []
    resumed = make(tmp_path / "full", unpaired(), True, calls=calls, max_steps=4, save_steps=2,
                   overwrite_output_dir=True, resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    calls.clear()
    summary = resumed.train()
    assert summary["resumed_from_step"] == 2
    assert summary["reference_cache"]["train"] == {"file": full["reference_cache"]["train"]["file"], "hit": True}
    assert "ref" not in calls and "policy" in calls
    after = logged(tmp_path / "full")  # the metrics file holds steps 1-2 of the first run, then the resumed run's
    assert len(after) == len(uninterrupted) == 4
    for x, y in zip(after, uninterrupted):
        assert x == pytest.approx(y, abs=1e-6)


def test_mixed_fixed_and_unfixed_examples_are_refused():
    items = unpaired(4)
    fixed = fix_mismatched(items, 2)
    with pytest.raises(DataError, match="row 1: .*mismatched_completion_ids"):
        fix_mismatched([fixed[0], items[1], fixed[2], fixed[3]], 2)
    from preflab.loops.kinds import UnpairedKind

    with pytest.raises(DataError, match="row 2: this micro-batch mixes"):
        UnpairedKind.collate([fixed[0], fixed[1], items[2]], pad_id=0, layout="padded")


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_pairwise_file_trains_with_the_cache(tmp_path, monkeypatch, loss_type):
    """From a pairwise JSONL file (each row split into a desirable and an undesirable example): the prepared examples
    are paired in TRL's order (no example with its own row's other completion: fewer than 1000 rows, chunks of 4),
    the run reads the reference from the cache and its eval loss equals the default run's (same eval pairing);
    apo_zero_unpaired (no reference point) runs with the cache too, its completions only."""
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    words = ["red", "blue", "green", "small", "large", "quick", "slow", "bright", "dark", "warm"]
    rows = [{"prompt": f"The {w} thing is", "chosen": f" {w} and good.", "rejected": f" not {w} at all."}
            for w in words]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = {}
    for name, precompute in (("cached", True), ("default", False)):
        runs[name] = make(tmp_path / name, None, precompute, eval_data=[], dataset_name=str(data), eval_fraction=0.2,
                          loss_type=loss_type, max_steps=2)
    cached = runs["cached"]
    assert len(cached.train_data) == 16 and [x.label for x in cached.train_data[:2]] == [True, False]
    if loss_type == "kto":
        by_completion = {tuple(x.completion_ids): x.row_id for x in cached.train_data}
        assert all(by_completion[tuple(x.mismatched_completion_ids)] != x.row_id for x in cached.train_data)
    else:  # no reference point: no mismatched completion is paired, scored or cached
        assert all(x.mismatched_completion_ids is None for x in cached.train_data)
    assert all(x.mismatched_completion_ids is None for x in runs["default"].train_data)
    summaries = {name: run.train() for name, run in runs.items()}
    assert summaries["cached"]["reference_cache"]["train"]["hit"] is False and cached.ref is None
    assert summaries["cached"]["final_metrics"]["eval_loss"] == pytest.approx(
        summaries["default"]["final_metrics"]["eval_loss"], abs=1e-6)


def test_default_rotation_never_pairs_a_split_pair_with_its_own_prompt():
    """Pairs split in two and batched in row order ([chosen_0, rejected_0, chosen_1, rejected_1, ...], as
    evaluate() batches an eval set) are rotated in TRL's unpaired order (desirable first): every mismatched pair
    has another row's completion. Before, each rejected example took its own prompt's chosen completion (a matched
    pair in KTO's reference point); and the precomputed eval pairing equals the default one chunk by chunk."""
    from preflab.data.mismatched import rotation_order
    from preflab.loops.kinds import UnpairedKind

    rows = [TokenizedUnpaired(r, [1, 10 + r], [50 + 2 * r + side, 2], side == 0) for r in range(6) for side in (0, 1)]
    owner = {tuple(x.completion_ids): x.row_id for x in rows}
    for start in range(0, len(rows), 4):  # eval chunks of 4: two whole rows each
        chunk = rows[start:start + 4]
        mismatched = UnpairedKind.mismatched(chunk)
        assert all(owner[tuple(m)] != x.row_id for x, m in zip(chunk, mismatched))
    fixed = fix_mismatched(rows, 4, rotation_order(rows, 4))
    assert [x.mismatched_completion_ids for x in fixed] == \
        [m for start in range(0, 12, 4) for m in UnpairedKind.mismatched(rows[start:start + 4])]


def test_eval_pairing_is_trls_in_chunks_of_the_train_batch_size(tmp_path):
    """TRL 1.16's KTOTrainer fixes its eval dataset's KL_completion_ids with the same map as the train set's (chunks
    of per_device_train_batch_size, not per_device_eval_batch_size), cache or not; preflab's eval examples get the
    same pairing (train batch 4, eval batch 3 here), and evaluate() scores it: the eval loss equals that of eval
    examples given with TRL's KL completions. Before, the pairs were formed inside each eval batch of 3."""
    datasets = pytest.importorskip("datasets")
    import copy

    evals = unpaired(11, seed=9)
    trl = _trl_add_kl(datasets.Dataset.from_dict({"prompt_ids": [x.prompt_ids for x in evals],
                                                  "completion_ids": [x.completion_ids for x in evals],
                                                  "label": [x.label for x in evals]}), 4)
    trainer = make(tmp_path / "a", unpaired(), False, eval_data=evals, max_steps=1)
    assert [x.mismatched_completion_ids for x in trainer.eval_data] == trl["KL_completion_ids"]
    given = [copy.copy(x) for x in evals]
    for x, kl in zip(given, trl["KL_completion_ids"]):
        x.mismatched_completion_ids = kl
    reference = make(tmp_path / "b", unpaired(), False, eval_data=given, max_steps=1)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(reference.evaluate()["eval_loss"], abs=1e-7)
    pairs = [TokenizedUnpaired(r, [1, 10 + r], [50 + 2 * r + side, 2], side == 0) for r in range(5) for side in (0, 1)]
    owner = {tuple(x.completion_ids): x.row_id for x in pairs}  # a pair split in two: never its own prompt's pair
    split = make(tmp_path / "c", unpaired(), False, eval_data=pairs, max_steps=1).eval_data
    assert all(owner[tuple(x.mismatched_completion_ids)] != x.row_id for x in split[:8])  # whole chunks of 4
