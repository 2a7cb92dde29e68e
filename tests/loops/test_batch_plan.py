"""The training data's order and step count (preflab.loops.batches.BatchPlan, make_plan) as exact values: each epoch
is its own seeded permutation read window by window, ranks take interleaved slices of the global batch, and
fractional epochs round the step count up as transformers does."""


def test_each_epoch_reads_every_row_once_in_its_own_seeded_order():
    """Epoch e reads the permutation randperm(n) seeded with seed + e, window by window: over one epoch of full
    global batches every row is read exactly once, and the next epoch reads another order."""
    import torch

    from preflab.loops.batches import BatchPlan

    plan = BatchPlan(num_rows=12, per_device=2, world=1, grad_accum=2, seed=5)  # 3 steps of 4 rows per epoch
    for epoch in (0, 1):
        rows = [i for step in range(3 * epoch, 3 * epoch + 3) for mb in plan.indices(step, 0) for i in mb]
        assert rows == torch.randperm(12, generator=torch.Generator().manual_seed(5 + epoch)).tolist()
    assert plan.indices(3, 0) != plan.indices(0, 0)
    # two ranks read the slices of one rank with a double micro-batch: micro-batch m of rank r is
    # window[(m * world + r) * b:(m * world + r + 1) * b]
    two = BatchPlan(num_rows=12, per_device=1, world=2, grad_accum=2, seed=5)
    window = [i for mb in plan.indices(1, 0) for i in mb]
    assert [two.indices(1, r) for r in (0, 1)] == [[window[0:1], window[2:3]], [window[1:2], window[3:4]]]


def test_fractional_epochs_round_the_steps_up_and_one_full_epoch_says_its_left_over_rows(capsys):
    """num_train_epochs x steps per epoch rounds up (transformers: math.ceil); a run of exactly one epoch still says
    the rows its incomplete last global batch leaves out (they are never trained on)."""
    from preflab.config import config_from_dict
    from preflab.loops.batches import make_plan

    def cfg(**kw):
        return config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="x.jsonl",
                                     per_device_train_batch_size=5, **kw))

    assert make_plan(cfg(num_train_epochs=1.1), 24, 1)[1] == 5  # ceil(1.1 x 4)
    capsys.readouterr()
    plan, total = make_plan(cfg(num_train_epochs=1), 24, 1)
    assert (total, plan.steps_per_epoch) == (4, 4)
    assert "the 4 left over in each epoch's shuffled order" in capsys.readouterr().out
