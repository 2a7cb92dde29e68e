"""`preflab eval --task vlm` and `--task diffusion` decided the split with one RowReader (preflab.eval.run.
open_eval_split) and then let the run open the data again from its dataset_name (a hub dataset loaded twice, a .json
file parsed twice). Now the run reads the reader that decided the split: the data is opened once, and the metrics are
the run's own end-of-run eval of the same file (another code path: the trainer's eval set, opened by the run).
The run's config.yaml is read once as well (it was read 6 times by the vlm eval, 3 by the diffusion one: the task
check, the config, the saved values, the model's and the processor's reload each read it again)."""
import os
from pathlib import Path

import pytest

import preflab.data.sources as sources


@pytest.fixture
def opened(monkeypatch):
    """The sources of every RowReader opened while the test runs, in order."""
    seen = []
    init = sources.RowReader.__init__

    def counting(self, source, **kwargs):
        seen.append(str(source))
        init(self, source, **kwargs)

    monkeypatch.setattr(sources.RowReader, "__init__", counting)
    return seen


@pytest.fixture
def config_reads(monkeypatch):
    """Every config.yaml read while the test runs (by any reader: they all read the file's text)."""
    seen = []
    read_text = Path.read_text

    def counting(self, *args, **kwargs):
        if self.name == "config.yaml":
            seen.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    return seen


def test_vlm_eval_opens_its_data_once_and_equals_the_runs_final_eval(tmp_path, opened, config_reads):
    from preflab.config import load_config
    from preflab.loops.vlm import VisionTrainer
    from preflab.loops.vlm_eval import evaluate_vlm_run

    data = "examples/vlm/data/pairs.jsonl"
    run = tmp_path / "vlm"
    summary = VisionTrainer(load_config("examples/vlm/dpo.yaml", [f"output_dir={run}", "max_steps=1",
                                                                  f"eval_dataset_name={data}"])).train()
    final = {k[len("eval_"):]: v for k, v in summary["final_metrics"].items() if k.startswith("eval_")}
    opened.clear()
    config_reads.clear()
    result = evaluate_vlm_run(str(run), data)
    # was [data, data]: open_eval_split's reader, then the run's own; now the eval data once, then the run's training
    # data (its dataset_name, the same file here, read by the absolute path launch.json recorded: preflab.launch_paths)
    # once for the overlap count, which finds every pair trained on
    assert opened == [data, os.path.abspath(data)]
    assert result["overlap_with_training"] == {"prompts": 8, "pairs": 8, "rows": 8, "checked_against": os.path.abspath(data),
                                               "split": "train", "training_pairs": 8}
    assert config_reads == [run / "config.yaml"]  # was 6 reads
    assert result["split"] == "train" and result["num_pairs"] == 8
    assert final and set(result["metrics"]) == set(final)
    for key, value in final.items():
        assert result["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_diffusion_eval_opens_its_data_once_and_equals_the_runs_final_eval(tmp_path, opened, config_reads):
    pytest.importorskip("diffusers")
    from preflab.config import load_config
    from preflab.loops.diffusion import DiffusionRun
    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    data = "examples/diffusion/data/test.jsonl"
    run = tmp_path / "diffusion"
    summary = DiffusionRun(load_config("examples/diffusion/diffusion_dpo.yaml", [
        f"output_dir={run}", "max_steps=1", "sample_steps=0", f"eval_dataset_name={data}"])).train()
    final = summary["final_metrics"]
    opened.clear()
    config_reads.clear()
    result = evaluate_diffusion_run(str(run), data)
    # the run's dataset_name, read once for the overlap count (by the absolute path launch.json recorded)
    train = os.path.abspath("examples/diffusion/data/train.jsonl")
    assert opened == [data, train]  # was [data, data, ...]: the eval data once
    assert result["overlap_with_training"]["pairs"] == 0  # test.jsonl is held out of train.jsonl
    assert config_reads == [run / "config.yaml"]  # was 3 reads
    assert result["split"] == "train" and result["num_pairs"] == 8
    assert result["metrics"]["implicit_accuracy"] == pytest.approx(final["eval_implicit_accuracy"], abs=1e-9)
    assert result["metrics"]["loss"] == pytest.approx(final["eval_loss"], rel=1e-5)
