"""User trial 8 (diffusion, VLM, reward models, eval / report): each test reproduces a finding and asserts the fixed
message or value."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_a_pami_vdpo_run_says_its_layout_and_calls_its_rows_single_response(tmp_path, capsys, monkeypatch):
    """Before: the data line called sft.jsonl's one-answer rows "(pairwise)", no `layout:` line was printed, and
    summary.json said layout prefix_shared while every batch was scored padded (each pair's rejected side has its own,
    perturbed, images: collate_vision_pairs falls back per batch, without a word)."""
    from preflab.config import load_config
    from preflab.loops.vlm import VisionTrainer

    monkeypatch.chdir(ROOT)
    trainer = VisionTrainer(load_config("examples/vlm/pami_vdpo.yaml", [f"output_dir={tmp_path / 'pami'}"]))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("preflab: ")]
    data = [line for line in lines if "vision data:" in line]
    assert data == ["preflab: vision data: examples/vlm/data/sft.jsonl (single-response): 8 rows, 8 kept, 0 skipped; "
                    "forms: vision_standard 8; vision_pairs: pami_vdpo built 8 train pairs, 0 eval pairs"]
    layout = [line for line in lines if line.startswith("preflab: layout:")]
    assert layout == ["preflab: layout: prefix_shared shares one prompt per pair, but all 8 pairs score the rejected "
                      "answer on other images than the chosen (input-side negatives: vision_pairs: pami_vdpo's "
                      "perturbed images, or a `rejected_images` column); scoring with the padded layout (the prompt "
                      "computed once per side, same log-probs)."]
    assert trainer.layout == "padded"  # summary.json's `layout` (TrainingRun.summary_extras)
    assert trainer.data_report["train_rows"]["kind"] == "single-response"
    # the batches are padded, as the line says: two rows per pair
    assert trainer.collate(trainer.train_data[:2]).input_ids.shape[0] == 4


def test_the_layout_line_counts_the_pairs_with_their_own_rejected_images(tmp_path, capsys):
    """Given pairs (vision_pairs: given) where some rows have a `rejected_images` column: the line counts them and
    the layout stays prefix_shared for the others; the layout the trainer reports is the one collate builds."""
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "vlm"))
    from vlm_helpers import image, pair_row, tiny

    from preflab.config import config_from_dict
    from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs
    from preflab.loops.vlm import VisionTrainer
    from preflab.models.load import frozen_copy

    model, processor = tiny("llava")
    rows = [pair_row(chosen="it is red", rejected="it is blue", seed=i) for i in range(3)]
    rows[1]["rejected_images"] = [image((20, 20, 200), seed=9)]
    examples, report = read_vision_pairs(rows)
    assert report.kind == "pairwise"  # two answers per row: unchanged
    pairs, _, _ = tokenize_vision_pairs(examples, processor)
    cfg = config_from_dict(dict(task="vlm", model_name_or_path="builtin:tiny-llava", dataset_name="unused",
                                output_dir=str(tmp_path / "run"), per_device_train_batch_size=1, max_steps=1,
                                disable_tqdm=True, use_cpu=True))
    trainer = VisionTrainer(cfg, policy=model, ref=frozen_copy(model), processor=processor, train_data=pairs)
    assert trainer.layout == "prefix_shared"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("preflab: layout:")]
    assert lines == ["preflab: layout: prefix_shared shares one prompt per pair, but 1 of the 3 pairs score the "
                     "rejected answer on other images than the chosen (input-side negatives: vision_pairs: "
                     "pami_vdpo's perturbed images, or a `rejected_images` column); a batch holding one of them is "
                     "scored with the padded layout (same log-probs), the others with prefix_shared."]
    # one pair per batch: row 1's batch is padded (two rows, one per side), the others shared (one row)
    assert [trainer.collate([p]).input_ids.shape[0] for p in pairs] == [1, 2, 1]
    # every pair's own images shared: no line, prefix_shared
    same, _, _ = tokenize_vision_pairs([examples[0], examples[2]], processor)
    trainer2 = VisionTrainer(cfg, policy=model, ref=frozen_copy(model), processor=processor, train_data=same)
    assert trainer2.layout == "prefix_shared"
    assert "preflab: layout:" not in capsys.readouterr().out


@pytest.mark.parametrize("given, layout", [({"layout": "packed"}, "packed"), ({"layout": "prefix_packed"}, "prefix_packed"),
                                           ({"padding_free": True}, "prefix_packed")])
def test_task_vlm_refuses_the_packed_layouts_it_does_not_build(given, layout):
    """Before: layout: packed on task: vlm trained padded and prefix_packed trained prefix_shared (summary.json said
    so afterwards, nothing before): vision_layout_choice maps every other name to padded / prefix_shared."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    base = {"task": "vlm", "model_name_or_path": "builtin:tiny-llava", "dataset_name": "rows.jsonl"}
    with pytest.raises(ConfigError) as err:
        config_from_dict({**base, **given})
    assert (f"layout={layout!r} (or TRL's padding_free: true) is not built for task: vlm, which lays image-text "
            "pairs out as prefix_shared") in str(err.value)
    assert "Set layout: prefix_shared or padded." in str(err.value)
    for ok in ("prefix_shared", "padded"):  # the two it builds: unchanged
        assert config_from_dict({**base, "layout": ok}).layout == ok
