"""The rows an epoch leaves out (its incomplete last global batch) are said on the console, not only counted in
summary.json's unused_rows_per_epoch: a TRL user expects every row trained (transformers trains a smaller last
batch), and with one epoch those rows are never seen."""
from preflab.config import config_from_dict
from preflab.loops.batches import make_plan


def _cfg(**kw):
    return config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="x.jsonl", **kw))


def test_the_rows_left_out_of_each_epoch_are_said(capsys):
    plan, total = make_plan(_cfg(per_device_train_batch_size=5), 24, 1)
    assert (total, plan.unused_rows_per_epoch) == (4, 4)
    assert ("preflab: note: data: 24 training examples make 4 steps of 5 per epoch; the 4 left over in each epoch's "
            "shuffled order are not trained on in that epoch") in capsys.readouterr().out
    make_plan(_cfg(per_device_train_batch_size=4, gradient_accumulation_steps=2), 24, 1)  # 3 full steps: none left
    make_plan(_cfg(per_device_train_batch_size=5, max_steps=3), 24, 1)  # the run ends before the epoch's end
    assert "left over" not in capsys.readouterr().out
