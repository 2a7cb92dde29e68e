"""A CAT run (clue aggregator, LoRA and full) reloads with its trained aggregator: final directory and checkpoint-N
score a batch as the trained policy did; a run whose aggregator file is missing or does not fit is refused, naming
the file; the reloaded model trains on (continued training) and serves as a reference with its aggregator."""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from preflab.config import config_from_dict
from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs
from preflab.errors import ConfigError
from preflab.loops.vlm import VisionTrainer
from preflab.models.clue_aggregator import clue_aggregator_of
from preflab.models.vlm_run import load_vlm_run, processor_source
from preflab.scoring.vlm import VisionLogProbScorer, collate_vision_pairs

from vlm_helpers import pair_row, tiny

_, PROCESSOR = tiny("llava")
ROWS = [pair_row("what colour?", f"it is c{i}", f"it is d{i}", (60 * i, 100, 20), seed=i) for i in range(4)]
PAIRS = tokenize_vision_pairs(read_vision_pairs(ROWS)[0], PROCESSOR)[0]


def _cfg(out, **kw):
    return config_from_dict({**dict(task="vlm", model_name_or_path="builtin:tiny-llava", dataset_name="unused",
                                    output_dir=str(out), clue_aggregator=True, per_device_train_batch_size=2,
                                    learning_rate=2e-2, max_steps=2, save_steps=2, logging_steps=1,
                                    disable_tqdm=True, report_to="none", use_cpu=True, seed=0), **kw})


def _scores(model):
    layout = collate_vision_pairs(PAIRS, PROCESSOR.tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        return VisionLogProbScorer(model)(layout).token_logps


@pytest.fixture(scope="module", params=[True, False], ids=["lora", "full"])
def trained(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("cat") / "run"
    trainer = VisionTrainer(_cfg(out, use_peft=request.param, **({"lora_r": 4} if request.param else {})),
                            processor=PROCESSOR, train_data=PAIRS)
    trainer.train()
    assert float(clue_aggregator_of(trainer.policy).out.weight.detach().abs().max()) > 0  # it trained
    return out, _scores(trainer.policy), request.param


def test_final_and_checkpoint_score_as_the_trained_policy(trained):
    out, live, lora = trained
    for path in (out, out / "checkpoint-2"):
        model, _ = load_vlm_run(path, PROCESSOR)
        if lora:  # the adapters are merged into the base weights: equal up to that rounding
            torch.testing.assert_close(_scores(model), live, atol=1e-6, rtol=0)
        else:
            assert torch.equal(_scores(model), live)
    clue_aggregator_of(model).out.weight.data.zero_()  # without the trained aggregator the scores differ
    assert float((_scores(model) - live).abs().max()) > 1e-4


def test_missing_or_mismatched_aggregator_is_refused_naming_the_file(trained, tmp_path):
    out, _, lora = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    weights = copy / ("clue_aggregator.safetensors" if lora else "model.safetensors")
    state = load_file(str(weights))
    key = ("" if lora else "clue_aggregator.") + "out.weight"
    save_file({**state, key: state[key][:, :4].contiguous()}, str(weights))
    with pytest.raises(ConfigError, match=rf"{weights}.*'out.weight' of shape \(32, 4\)"):
        load_vlm_run(copy, PROCESSOR)
    if lora:
        weights.unlink()
        with pytest.raises(ConfigError, match=rf"{weights} is missing"):
            load_vlm_run(copy, PROCESSOR)
    else:
        save_file({k: v for k, v in state.items() if k != key}, str(weights))
        with pytest.raises(ConfigError, match=rf"{weights}.*lacks 1 of its tensors, e.g. 'out.weight'"):
            load_vlm_run(copy, PROCESSOR)
    checkpoint = copy / "checkpoint-2" / "model.safetensors"
    saved = load_file(str(checkpoint))
    save_file({k: v for k, v in saved.items() if "clue_aggregator" not in k}, str(checkpoint))
    with pytest.raises(ConfigError, match=rf"{checkpoint} lacks '.*clue_aggregator.*' \(the clue aggregator\)"):
        load_vlm_run(copy / "checkpoint-2", PROCESSOR)


def test_a_run_continues_training_and_serves_as_reference_with_its_aggregator(trained, tmp_path):
    out, live, lora = trained
    saved = clue_aggregator_of(load_vlm_run(out, PROCESSOR)[0]).state_dict()
    cfg = _cfg(tmp_path / "more", model_name_or_path=str(out), ref_model_name_or_path=str(out), max_steps=1,
               use_peft=lora, **({"lora_r": 4} if lora else {}))
    trainer = VisionTrainer(cfg, train_data=PAIRS)  # the processor too comes from the run (its config.yaml's)
    assert trainer.processor.tokenizer.get_vocab() == PROCESSOR.tokenizer.get_vocab()
    assert processor_source(str(out / "checkpoint-2")) == "builtin:tiny-llava"  # followed back to the builtin base
    aggregator = clue_aggregator_of(trainer.policy)  # the trained one, kept (not a fresh zero one beside it)
    assert all(torch.equal(v, saved[k]) for k, v in aggregator.state_dict().items())
    assert any(p is aggregator.out.weight for p in trainer.params)
    torch.testing.assert_close(_scores(trainer.ref), live, atol=2e-5, rtol=0)  # the reference has it too
    before = aggregator.out.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, aggregator.out.weight)  # and it trains on
    assert processor_source(str(tmp_path / "more")) == "builtin:tiny-llava"  # through the continued run too


def _write_pairs(path, rows):
    """rows as a JSONL file at `path`, each row's image saved beside it as <stem>-<i>.png (a relative path)."""
    import json

    with path.open("w") as f:
        for i, row in enumerate(rows):
            row["images"][0].save(path.parent / f"{path.stem}-{i}.png")
            f.write(json.dumps({**row, "images": [f"{path.stem}-{i}.png"]}) + "\n")
    return path


def _vlm_eval_json(run, data, tmp_path, *split):
    import json

    from preflab.cli import main

    assert main(["eval", str(run), "--task", "vlm", "--data", str(data), "--out", str(tmp_path / "e.json"),
                 *split]) == 0
    return json.loads((tmp_path / "e.json").read_text())


def _train_test_source(tmp_path, form):
    """A source with the split 'train' (4 pairs: ROWS) and 'test' (2): a folder of train.jsonl and test.jsonl, or
    a DatasetDict saved with save_to_disk (images as absolute paths)."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    train, test = _write_pairs(folder / "train.jsonl", ROWS), _write_pairs(folder / "test.jsonl", ROWS[:2])
    if form == "folder":
        return folder
    import json

    from datasets import Dataset, DatasetDict

    def rows(path):  # the JSONL rows, their image paths made absolute
        return [{**row, "images": [str(folder / row["images"][0])]}
                for row in map(json.loads, path.read_text().splitlines())]

    DatasetDict({"train": Dataset.from_list(rows(train)), "test": Dataset.from_list(rows(test))}).save_to_disk(
        tmp_path / "saved")
    return tmp_path / "saved"


@pytest.mark.parametrize("form", ["folder", "save_to_disk"])
def test_preflab_eval_task_vlm_reads_the_test_split_by_default(trained, tmp_path, capsys, form):
    """--task vlm read the split 'train' of a source with 'train' and 'test' when no --split was given (training
    pairs reported as held out); it now reads 'test' as the policy and reward evals do (open_eval_split), says so
    in a note, and writes the split into eval.json."""
    source = _train_test_source(tmp_path, form)
    result = _vlm_eval_json(trained[0], source, tmp_path)
    assert result["num_pairs"] == 2 and result["split"] == "test"  # test: 2 pairs; train: 4
    note = (f"read split 'test' of {source}: no --split was given and it has a split 'test', read by default as a "
            "run's eval_split is; pass --split to read another")
    assert result["notes"] == [note] and f"  note: {note}" in capsys.readouterr().out.splitlines()


def test_preflab_eval_task_vlm_reads_train_of_a_folder_without_test(trained, tmp_path):
    folder = tmp_path / "only"
    folder.mkdir()
    _write_pairs(folder / "train.jsonl", ROWS[:3])
    result = _vlm_eval_json(trained[0], folder, tmp_path)
    assert result["num_pairs"] == 3 and result["split"] == "train"
    assert result["notes"] == [f"read split 'train' of {folder}: no --split was given and it has no split 'test' (a "
                               "single file or a folder without one reads as 'train'); pass --split to read another"]


def test_preflab_eval_task_vlm_scores_a_test_split_smaller_than_the_training_batch(trained, tmp_path):
    """A held-out split of 1 pair under a run trained with 2 pairs per batch: eval takes no step, so the training
    batch plan must not refuse it ("1 training rows are fewer than one global batch ...; lower the batch size")."""
    folder = tmp_path / "small"
    folder.mkdir()
    _write_pairs(folder / "train.jsonl", ROWS[:3])
    _write_pairs(folder / "test.jsonl", ROWS[3:4])
    result = _vlm_eval_json(trained[0], folder, tmp_path)
    assert result["num_pairs"] == 1 and result["split"] == "test"
    whole = _vlm_eval_json(trained[0], _write_pairs(tmp_path / "one.jsonl", ROWS[3:4]), tmp_path)
    assert whole["metrics"] == result["metrics"]          # the same pair scored as a single file


def test_preflab_eval_task_vlm_split_train_overrides_the_test_default(trained, tmp_path):
    source = _train_test_source(tmp_path, "folder")
    result = _vlm_eval_json(trained[0], source, tmp_path, "--split", "train")
    assert result["num_pairs"] == 4 and result["split"] == "train"
    assert result["notes"] == [f"read split 'train' of {source} (--split)"]


def test_preflab_eval_task_vlm_scores_the_reloaded_run(trained, tmp_path):
    """`preflab eval RUN --task vlm --data PAIRS` (final directory and checkpoint-2): eval.json's metrics are the
    run's objective on the trained policy (aggregator included) against the run's starting model."""
    import json

    import torch.nn.functional as F

    from preflab.cli import main
    from preflab.models.tiny_vlm import tiny_vlm

    out, live, _ = trained
    data = _write_pairs(tmp_path / "pairs.jsonl", ROWS)
    start = _scores(tiny_vlm(PROCESSOR, "llava", seed=0))
    sums, ref_sums = live.sum(-1), start.sum(-1)
    b = len(PAIRS)
    z = (sums[:b] - ref_sums[:b]) - (sums[b:] - ref_sums[b:])
    expected = float((-F.logsigmoid(0.1 * z)).mean())  # sigmoid DPO, beta 0.1 (the run's)
    for path in (out, out / "checkpoint-2"):
        assert main(["eval", str(path), "--task", "vlm", "--data", str(data), "--out", str(tmp_path / "e.json")]) == 0
        result = json.loads((tmp_path / "e.json").read_text())
        assert result["num_pairs"] == 4 and result["reference"] == "builtin:tiny-llava"
        assert abs(result["metrics"]["loss"] - expected) < 1e-5
        assert "logits/chosen" in result["metrics"]


def test_preflab_eval_task_vlm_prints_its_note_after_the_metric_block(trained, tmp_path, capsys):
    """The note that --data is the run's training data was printed between the headline metrics and `loss` (the
    VLM eval printed its own metric after format_summary's notes); every eval task now prints header, metrics,
    notes, `wrote`, in that order."""
    import json
    import re

    import yaml

    from preflab.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    data = _write_pairs(tmp_path / "pairs.jsonl", ROWS)
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "dataset_name": str(data)}))  # trained on --data
    capsys.readouterr()
    assert main(["eval", str(run), "--task", "vlm", "--data", str(data), "--out", str(tmp_path / "e.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    lines = lines[lines.index("preflab eval: 4 pairs, beta=0.1"):]  # the summary, after the data lines
    metrics = json.loads((tmp_path / "e.json").read_text())["metrics"]
    shown = [re.fullmatch(r"  (\S+) +(-?\d+\.\d{4})", line) for line in lines[1:-2]]
    assert all(shown), lines
    from preflab.eval.cli import HEADLINE

    assert [m.group(1) for m in shown] == [k for k in HEADLINE + ("loss",) if isinstance(metrics.get(k), float)]
    assert "loss" in metrics and "loss" not in HEADLINE
    assert [float(m.group(2)) for m in shown] == [round(metrics[m.group(1)], 4) for m in shown]
    assert lines[-2] == (f"  note: --data {data} (split train) is the run's training data (dataset_name): every row "
                         "was trained on, so these metrics are not held-out; evaluate a held-out file for "
                         "generalization")
    assert lines[-1] == f"  wrote {tmp_path / 'e.json'}"


def test_a_cat_lora_run_resumes_exactly_with_its_aggregator(tmp_path):
    """Stopped after its step-2 checkpoint and resumed from it, a LoRA + clue aggregator run ends with the
    uninterrupted run's aggregator and adapters."""
    def run(name, **kw):
        trainer = VisionTrainer(_cfg(tmp_path / name, use_peft=True, lora_r=4, max_steps=4, **kw),
                                processor=PROCESSOR, train_data=PAIRS)
        trainer.train()
        return {k: v for k, v in trainer.policy.state_dict().items() if "clue_aggregator" in k or "lora_" in k}

    straight = run("a")
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    resumed = run("b", resume_from_checkpoint=True)
    assert straight.keys() == resumed.keys() and any("clue_aggregator" in k for k in straight)
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, atol=1e-6, rtol=0)
