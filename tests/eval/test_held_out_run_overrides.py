"""preflab.eval.run.held_out_run_overrides: the config `preflab eval --task vlm` / `--task diffusion` gives a saved
run's own trainer. A run that held out part of its data (or had its own eval set), read another split, accumulated
gradients over big batches and reported to a tracker is evaluated on exactly the split asked for, whole, one example
a step, nothing held out, nothing reported, nothing resumed."""
import pytest
import yaml

from preflab.config import config_with_overrides
from preflab.eval.run import held_out_run_overrides

DATA = "examples/data/loud_echo_pairs.jsonl"


@pytest.mark.parametrize("eval_set", [{"eval_fraction": 0.25}, {"eval_fraction": 0, "eval_dataset_name": DATA}])
def test_the_runs_own_holdout_eval_set_split_and_batch_plan_are_replaced(tmp_path, eval_set):
    with open("examples/quickstart.yaml") as f:
        raw = yaml.safe_load(f)
    raw.update(dataset_split="train", gradient_accumulation_steps=4, per_device_train_batch_size=8,
               per_device_eval_batch_size=16, max_steps=50, report_to="tensorboard", output_dir=str(tmp_path / "run"),
               **eval_set)
    run = config_with_overrides(raw)
    # the run's own values differ from every one the eval must get (else this test could not see one dropped)
    assert (run.eval_fraction, run.eval_dataset_name) == (eval_set["eval_fraction"], eval_set.get("eval_dataset_name"))
    assert (run.dataset_split, run.gradient_accumulation_steps, run.per_device_train_batch_size,
            run.per_device_eval_batch_size, run.max_steps) == ("train", 4, 8, 16, 50)
    out = tmp_path / "throwaway"
    cfg = config_with_overrides(raw, preflab_overrides=held_out_run_overrides(DATA, "test", out, 3))
    assert cfg.dataset_name == DATA and cfg.dataset_split == "test"
    assert cfg.eval_fraction == 0 and cfg.eval_dataset_name is None and cfg.eval_dataset_config is None
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, cfg.per_device_eval_batch_size) == (1, 1, 3)
    assert cfg.output_dir == str(out) and cfg.max_steps == 1 and cfg.resume_from_checkpoint is None
    assert (run.report_to, cfg.report_to) == ("tensorboard", "none")
    assert raw["gradient_accumulation_steps"] == 4  # the saved run's options are not changed
