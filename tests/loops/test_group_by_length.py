"""group_by_length (transformers' LengthGroupedSampler): preflab's order equals transformers'
get_length_grouped_indices for the same lengths and generator, is split over processes as the plain order is, and a
resumed run reads the rows the uninterrupted one reads (preflab.loops.batches)."""
import json
from pathlib import Path

import pytest
import torch

from preflab.loops.batches import BatchPlan, length_grouped_order

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("n, group, seed", [(37, 4, 0), (1000, 4, 3), (250, 1, 7), (9, 8, 1)])
def test_order_equals_transformers_get_length_grouped_indices(n, group, seed):
    """Mega-batch sizes k * group with k = 50 (n=1000), k = n // (4 group) (n=250: 62 -> 50; n=37: 2) and k = 1
    (n=9, fewer rows than 4 groups); lengths drawn with many ties, so the stable sort's order of equal lengths and the
    swap of the longest row to the front are both checked."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = torch.randint(1, 12, (n,), generator=torch.Generator().manual_seed(100 + seed)).tolist()
    ours = length_grouped_order(lengths, group, torch.Generator().manual_seed(seed))
    theirs = get_length_grouped_indices(lengths, group, generator=torch.Generator().manual_seed(seed))
    assert ours == theirs
    assert sorted(ours) == list(range(n)) and lengths[ours[0]] == max(lengths)


def test_plan_reads_the_grouped_order_per_epoch_and_splits_it_over_processes_as_the_plain_order():
    """One process: epoch e reads get_length_grouped_indices(lengths, b x grad_accum, seed + e) window by window.
    Two processes x b read the global batches of one process x 2b (the group is the global batch), rank r taking
    the slices [(m * world + r) * b, ...) of each window. 1000 rows: mega-batches of 50 x 4 rows would differ from
    31 x 8 (transformers' per-process group on two processes against the global batch)."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = torch.randint(1, 40, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    one = BatchPlan(num_rows=1000, per_device=4, world=1, grad_accum=2, seed=11, lengths=lengths)  # 125 steps of 8
    for epoch in (0, 1):
        rows = [i for step in range(125 * epoch, 125 * epoch + 125) for mb in one.indices(step, 0) for i in mb]
        assert rows == get_length_grouped_indices(lengths, 8, generator=torch.Generator().manual_seed(11 + epoch))
    two = BatchPlan(num_rows=1000, per_device=2, world=2, grad_accum=2, seed=11, lengths=lengths)
    for step in (0, 5, 30, 130):
        window = [i for mb in one.indices(step, 0) for i in mb]
        assert [two.indices(step, r) for r in (0, 1)] == [[window[0:2], window[4:6]], [window[2:4], window[6:8]]]
    plain = BatchPlan(num_rows=1000, per_device=4, world=1, grad_accum=2, seed=11)
    assert one.indices(0, 0) != plain.indices(0, 0)  # the option changes the order


def _sft_config(tmp_path, name, **kw):
    from preflab.config import config_from_dict

    return config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny-llama", "learning_rate": 1e-3,
                             "dataset_name": str(ROOT / "examples/data/loud_echo_sft.jsonl"), "max_steps": 4,
                             "per_device_train_batch_size": 2, "group_by_length": True, "logging_steps": 1, "max_length": 128,
                             "lr_scheduler_type": "constant", "warmup_steps": 0, "disable_tqdm": True,
                             "use_cpu": True, "output_dir": str(tmp_path / name), **kw})


def test_sft_run_reads_rows_longest_group_first_and_resumes_to_the_same_weights(tmp_path):
    """A task: sft run with group_by_length reads, at each step, the rows of the grouped order of the examples'
    token counts (prompt + completion, transformers' len(input_ids)); its first batch holds the longest example; a
    run resumed from its step-2 checkpoint ends with the weights of the uninterrupted run."""
    from safetensors.torch import load_file
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from preflab.loops.sft import SFTTrainer

    torch.set_num_threads(1)
    full = SFTTrainer(_sft_config(tmp_path, "full", save_steps=2))
    lengths = [len(x.prompt_ids) + len(x.completion_ids) for x in full.train_data]
    expected = get_length_grouped_indices(lengths, 2, generator=torch.Generator().manual_seed(full.cfg.seed))
    assert [i for step in range(4) for mb in full.micro_batches(step) for i in mb.index] == expected[:8]
    assert max(lengths[i] for i in full.micro_batches(0)[0].index) == max(lengths)
    full.train()
    part = SFTTrainer(_sft_config(tmp_path, "part", save_steps=2, max_steps=2))
    part.train()
    resumed = SFTTrainer(_sft_config(tmp_path, "part", save_steps=2, overwrite_output_dir=True,
                                     resume_from_checkpoint=str(tmp_path / "part/checkpoint-2")))
    assert resumed.train()["resumed_from_step"] == 2
    a, b = load_file(tmp_path / "full/model.safetensors"), load_file(tmp_path / "part/model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
    logged = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    assert [r["num_tokens"] for r in logged if "num_tokens" in r and "step" in r][:1] == \
        [sum(lengths[i] for i in expected[:2])]
