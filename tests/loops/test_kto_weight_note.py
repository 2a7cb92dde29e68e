"""KTO's label-weight balance note (methods/objectives.md §A5: TRL warns unless lambda_D n_D / (lambda_U n_U) lies in
[1, 4/3]), printed with the data notes of an unpaired run, with the ranges TRL's KTOTrainer names."""
import json

import pytest

from preflab.objectives import get_objective
from preflab.loops.prepare import kto_weight_note


def test_ranges_are_trls_for_unbalanced_labels():
    # n_D = 10, n_U = 30, weights 1: desirable_weight in [3.0, 3.99] or undesirable_weight in [0.25, 0.33]
    note = kto_weight_note(get_objective("kto"), 10, 40, "d.jsonl")
    assert "10 desirable and 30 undesirable" in note and "weighted ratio 0.333" in note
    assert "desirable_weight in [3.0, 3.99] OR undesirable_weight in [0.25, 0.33]" in note
    # either weight inside its range: no note (3.5 * 10 / 30 = 1.17; 0.3 -> 10 / (0.3 * 30) = 1.11)
    assert kto_weight_note(get_objective("kto", desirable_weight=3.5), 10, 40, "d.jsonl") is None
    assert kto_weight_note(get_objective("kto", undesirable_weight=0.3), 10, 40, "d.jsonl") is None
    # too much weight on the desirable side is out of range too: 5 * 10 / 30 = 1.67 > 4/3
    assert "desirable_weight in [3.0, 3.99]" in kto_weight_note(get_objective("kto", desirable_weight=5.0), 10, 40,
                                                                  "d.jsonl")


@pytest.mark.parametrize("desirable,total", [(20, 40), (0, 40), (40, 40)])
def test_no_note_for_equal_counts_or_one_label(desirable, total):
    assert kto_weight_note(get_objective("kto"), desirable, total, "d.jsonl") is None


def test_objectives_without_label_weights_get_no_note():
    assert kto_weight_note(get_objective("dpo"), 10, 40, "d.jsonl") is None
    assert kto_weight_note(None, 10, 40, "d.jsonl") is None
    # TRL's KTOTrainer checks its apo_zero_unpaired loss too, which has the same two weights
    assert "OR undesirable_weight in [0.25, 0.33]" in kto_weight_note(get_objective("apo_zero_unpaired"), 10, 40, "d")
    # a weighted sum: the part with the weights is checked
    mixed = get_objective(["kto", "apo_zero_unpaired"], loss_weights=[1.0, 0.5], desirable_weight=3.5)
    assert kto_weight_note(mixed, 10, 40, "d.jsonl") is None


def test_unpaired_run_prints_the_balance_note(tmp_path, capsys):
    """Before: a KTO file with 1 desirable and 3 undesirable rows at weights (1, 1) trained without a word, where
    TRL's KTOTrainer warns; now the data notes name the weight ranges."""
    from preflab.config import config_from_dict
    from preflab.loops.prepare import prepare_unpaired
    from preflab.models.tiny import tiny_tokenizer

    data = tmp_path / "kto.jsonl"
    rows = [{"prompt": f"q{i}", "completion": f" a{i}", "label": i == 0} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = dict(model_name_or_path="builtin:tiny-llama", dataset_name=str(data), loss_type="kto")
    prepare_unpaired(config_from_dict(base), tiny_tokenizer("bytelevel"))
    out = capsys.readouterr().out
    assert "1 desirable and 3 undesirable" in out
    assert "desirable_weight in [3.0, 3.99] OR undesirable_weight in [0.25, 0.33]" in out
    prepare_unpaired(config_from_dict({**base, "desirable_weight": 3.0}), tiny_tokenizer("bytelevel"))
    assert "undesirable training examples" not in capsys.readouterr().out


def test_streaming_run_prints_the_balance_note_at_its_end(tmp_path, capsys):
    """A streaming run says its data notes from the rows it read (loops.streaming.stream_notes): the balance note
    among them, from the run's own objective."""
    import torch

    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer

    torch.set_num_threads(1)
    data = tmp_path / "kto.jsonl"
    rows = [{"prompt": f"echo: q{i}\n", "completion": f" a{i}", "label": i < 2} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name=str(data), loss_type="kto",
                                output_dir=str(tmp_path / "out"), streaming=True, per_device_train_batch_size=4,
                                max_steps=2, max_length=64, disable_tqdm=True, use_cpu=True, seed=3))
    Trainer(cfg).train()
    out = capsys.readouterr().out
    assert "2 desirable and 6 undesirable" in out
    assert "desirable_weight in [3.0, 3.99] OR undesirable_weight in [0.25, 0.33]" in out
