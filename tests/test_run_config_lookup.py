"""Which config.yaml belongs to a model folder (preflab.models.run_config, the one rule): a folder's own config.yaml;
a checkpoint folder (named checkpoint-<step>, or holding trainer_state.json) its run's one level up, else the copy in
its trainer_state.json; any other folder nothing from its parent; a config.yaml that is not a YAML mapping is a
ConfigError naming it. And each former copy of the rule now asks it: preflab eval's run_config / run_task, the reward
checkpoint loader, reloading a task: vlm run (vlm_parts.run_options, processor_source) and `preflab eval --task vlm`
/ `--task diffusion` (which read a parent's config.yaml for any folder, or only a checkpoint's own)."""
import json
import re

import pytest
import yaml

from preflab.errors import ConfigError
from preflab.models.run_config import is_checkpoint_folder, require_run_config_file, run_config, run_config_file

RUN = {"task": "dpo", "model_name_or_path": "builtin:tiny-llama", "beta": 0.3, "seed": 2}
VLM_RUN = {"task": "vlm", "model_name_or_path": "builtin:tiny-llava", "beta": 0.1}


def _run(tmp_path, config=RUN, name="run"):
    run = tmp_path / name
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


# --- the rule on real folders ---

def test_run_config_lookup_reads_a_folders_own_config_yaml(tmp_path):
    run = _run(tmp_path)
    (run / "child").mkdir()
    (run / "child" / "config.yaml").write_text(yaml.safe_dump({**RUN, "beta": 0.9}))
    assert run_config(run) == RUN and run_config_file(run) == run / "config.yaml"
    assert run_config(run / "child")["beta"] == 0.9  # its own, not its parent's


def test_run_config_lookup_gives_a_checkpoint_step_folder_its_runs_config(tmp_path):
    run = _run(tmp_path)
    (run / "checkpoint-12").mkdir()
    assert is_checkpoint_folder(run / "checkpoint-12")
    assert run_config(run / "checkpoint-12") == RUN
    assert run_config_file(run / "checkpoint-12") == run / "config.yaml"


def test_run_config_lookup_gives_a_folder_with_trainer_state_its_runs_config(tmp_path):
    run = _run(tmp_path)
    (run / "step-3").mkdir()
    (run / "step-3" / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    assert is_checkpoint_folder(run / "step-3") and run_config(run / "step-3") == RUN


def test_run_config_lookup_gives_a_nested_non_checkpoint_folder_nothing(tmp_path):
    run = _run(tmp_path)
    for name in ("policy", "checkpoint-best", "checkpoint-"):  # only checkpoint-<digits> is a checkpoint's name
        (run / name).mkdir()
        assert not is_checkpoint_folder(run / name), name
        assert run_config(run / name) == {} and run_config_file(run / name) is None, name


def test_run_config_lookup_reads_a_moved_checkpoints_trainer_state_copy(tmp_path):
    moved = tmp_path / "checkpoint-4"
    moved.mkdir()
    (moved / "trainer_state.json").write_text(json.dumps({"global_step": 4, "config": RUN}))
    assert run_config_file(moved) is None and run_config(moved) == RUN


def test_run_config_lookup_refuses_malformed_yaml_naming_the_file(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "config.yaml").write_text("task: dpo\nbeta: [0.1\n")
    with pytest.raises(ConfigError) as err:
        run_config(run / "checkpoint-2")
    assert str(err.value).startswith(f"{run / 'config.yaml'} is not valid YAML (line 3: ")
    assert "fix or restore it" in str(err.value)
    (run / "config.yaml").write_text("- task: dpo\n")
    with pytest.raises(ConfigError, match=r"config\.yaml holds a YAML list, not a mapping of options"):
        run_config(run)


def test_run_config_lookup_says_what_to_do_for_a_folder_inside_a_run(tmp_path):
    run = _run(tmp_path)
    (run / "copy").mkdir()
    with pytest.raises(ConfigError) as err:
        require_run_config_file(run / "copy", "preflab eval --task vlm")
    assert str(err.value) == (
        f"{run / 'copy'} has no config.yaml; its parent {run} is a run, but copy is no checkpoint of it (not named "
        "checkpoint-<step>, no trainer_state.json), so the run's config.yaml is not read for it: give "
        f"{run} or one of its checkpoint-N, or copy the run's config.yaml into {run / 'copy'} if the model "
        "there was trained by that run. Point preflab eval --task vlm at a run's output_dir (it holds config.yaml) "
        "or one of its checkpoint-N folders.")
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(ConfigError, match=r"checkpoint-5 is a checkpoint without its run's config\.yaml one level up"):
        require_run_config_file(tmp_path / "checkpoint-5", "preflab eval --task diffusion")



def test_run_config_lookup_requires_the_file_and_reads_it_once(tmp_path, monkeypatch):
    """require_run_config (the --task vlm / diffusion evals): the file require_run_config_file names and the options
    run_config gives, the file read once (they read it by path, then again for its dict)."""
    import preflab.models.run_config as rc

    run = _run(tmp_path, {**RUN, "truncation_mode": "keep_end"})
    (run / "checkpoint-2").mkdir()
    reads = []
    real = rc._read_yaml
    monkeypatch.setattr(rc, "_read_yaml", lambda file: reads.append(file) or real(file))
    found, saved = rc.require_run_config(run / "checkpoint-2", "preflab eval --task vlm")
    assert (found, reads) == (run / "config.yaml", [run / "config.yaml"])
    assert saved == run_config(run / "checkpoint-2") == {**RUN, "truncation_mode": "keep_end"}
    with pytest.raises(ConfigError, match=r"checkpoint-5 is a checkpoint without its run's config\.yaml one level up"):
        rc.require_run_config(tmp_path / "checkpoint-5", "preflab eval --task diffusion")

# --- each former copy asks the one rule ---

def test_run_config_lookup_is_preflab_evals_run_task(tmp_path):
    # eval/run_files.run_config took a parent's config for any name starting checkpoint- (checkpoint-best too)
    from preflab.eval.run_files import run_task

    run = _run(tmp_path)
    (run / "checkpoint-best").mkdir()
    (run / "checkpoint-7").mkdir()
    assert (run_task(run / "checkpoint-7"), run_task(run / "checkpoint-best")) == ("dpo", None)


def test_run_config_lookup_malformed_yaml_is_a_config_error_for_the_policy_eval(tmp_path):
    from preflab.eval.loading import load_for_eval

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model_name_or_path: [\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{run / 'config.yaml'} is not valid YAML")):
        load_for_eval(str(run))


def test_run_config_lookup_malformed_yaml_is_a_config_error_for_a_reward_checkpoint(tmp_path):
    from preflab.reward_models.heads import load_reward_checkpoint

    run = tmp_path / "rm"
    (run / "checkpoint-3").mkdir(parents=True)
    (run / "config.yaml").write_text("task: reward\nmodel_name_or_path: {\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{run / 'config.yaml'} is not valid YAML")):
        load_reward_checkpoint(run / "checkpoint-3")


def test_run_config_lookup_vlm_run_options_reads_a_checkpoint_step_folder(tmp_path):
    # vlm_parts.run_options called a folder a checkpoint only when it held trainer_state.json, and never read the
    # copy of the config a moved checkpoint keeps there: the processor was looked for in the folder itself
    from preflab.models.vlm_parts import processor_source, run_options

    run = _run(tmp_path, VLM_RUN)
    (run / "checkpoint-2").mkdir()
    assert run_options(run / "checkpoint-2") == VLM_RUN
    assert processor_source(str(run / "checkpoint-2")) == "builtin:tiny-llava"
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "trainer_state.json").write_text(json.dumps({"config": VLM_RUN}))
    assert processor_source(str(moved)) == "builtin:tiny-llava"
    assert run_options(_run(tmp_path, RUN, "text")) == {}  # not a task: vlm run's


@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory):
    """A 1-step task: vlm run with beta 0.3 and its checkpoint-1."""
    from preflab.config import load_config
    from preflab.loops.vlm import VisionTrainer

    run = tmp_path_factory.mktemp("lookup") / "vlm"
    VisionTrainer(load_config("examples/vlm/dpo.yaml", [f"output_dir={run}", "max_steps=1", "save_steps=1",
                                                        "beta=0.3", "report_to=none"])).train()
    return run


def test_run_config_lookup_vlm_eval_reads_a_checkpoints_run_config(vlm_run):
    from preflab.loops.vlm_eval import evaluate_vlm_run

    data = "examples/vlm/data/pairs.jsonl"
    final, step = evaluate_vlm_run(str(vlm_run), data), evaluate_vlm_run(str(vlm_run / "checkpoint-1"), data)
    assert step["beta"] == final["beta"] == 0.3  # the run's (TrainConfig's default is 0.1)
    assert step["metrics"]["loss"] == pytest.approx(final["metrics"]["loss"], rel=1e-5)


def test_run_config_lookup_vlm_eval_refuses_a_model_saved_inside_a_run(vlm_run):
    # a copy of the final model saved into the run's folder is no output of the run: the eval read the run's
    # config.yaml for it (its objective, beta, data builder) and scored it as that run
    import shutil

    from preflab.loops.vlm_eval import evaluate_vlm_run

    copy = vlm_run / "copy"
    shutil.copytree(vlm_run, copy, ignore=shutil.ignore_patterns("config.yaml", "checkpoint-*", "copy"))
    said = re.escape(f"{copy} has no config.yaml; its parent {vlm_run} is a run, but copy is no checkpoint of it")
    with pytest.raises(ConfigError, match=f"^{said}.*Point preflab eval --task vlm at"):
        evaluate_vlm_run(str(copy), "examples/vlm/data/pairs.jsonl")


def test_run_config_lookup_diffusion_eval_says_what_to_do_for_a_folder_inside_a_run(tmp_path):
    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    run = _run(tmp_path, {"task": "diffusion", "model_name_or_path": "builtin:tiny-sd"}, "diffusion")
    (run / "sampled").mkdir()
    with pytest.raises(ConfigError, match=r"its parent .* is a run, but sampled is no checkpoint of it .*Point "
                                          r"preflab eval --task diffusion at"):
        evaluate_diffusion_run(str(run / "sampled"), "examples/diffusion/data/test.jsonl")
    (run / "config.yaml").write_text("task: diffusion\nbeta: [\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{run / 'config.yaml'} is not valid YAML")):
        evaluate_diffusion_run(str(run), "examples/diffusion/data/test.jsonl")


def test_a_saved_config_with_a_duplicate_key_is_refused_as_a_written_config_is(tmp_path):
    # the evaluations read a run's config.yaml once through run_config (small-fixes-2); plain yaml.safe_load kept the
    # last of two duplicate keys silently, where load_config refuses them: both now read through strict_yaml
    run = _run(tmp_path)
    (run / "config.yaml").write_text("task: vlm\nbeta: 0.1\nbeta: 0.5\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'beta' \(lines 2 and 3\).*saved training config"):
        run_config(run)
    from preflab.models.run_config import require_run_config

    with pytest.raises(ConfigError, match="duplicate key 'beta'"):
        require_run_config(run, "preflab eval --task vlm")


def test_a_vlm_checkpoint_whose_config_has_no_seed_is_rebuilt_over_the_base_its_run_trained(vlm_run, tmp_path):
    """A task: vlm checkpoint holds the trained parameters only (freeze_vision_tower: the frozen vision tower is the
    builtin base's, its seed's random draw). With no `seed` in the run's config.yaml, load_vlm_run rebuilt that base
    with seed 0; the run trained over TrainConfig's default, 42 (models.run_config.run_seed, the rule of every reader
    of a saved run's seed). Now the checkpoint loads as the same model as with the seed written; seed 0 is another."""
    import shutil

    import torch

    from preflab.models.vlm_run import load_vlm_run

    saved = yaml.safe_load((vlm_run / "config.yaml").read_text())
    assert saved["seed"] == 42 and saved["freeze_vision_tower"]
    copy = tmp_path / "vlm"
    shutil.copytree(vlm_run, copy)
    (copy / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in saved.items() if k != "seed"}))
    (copy / "launch.json").unlink(missing_ok=True)
    trained, unseeded, zero = (load_vlm_run(run / "checkpoint-1", seed=seed)[0].state_dict()
                               for run, seed in ((vlm_run, None), (copy, None), (copy, 0)))
    assert trained.keys() == unseeded.keys() and all(torch.equal(trained[k], unseeded[k]) for k in trained)
    assert not all(torch.equal(trained[k], zero[k]) for k in trained)  # the seed picks the base: 0 is another model
