"""User trial 19: a recipe run whose folder was moved (`mv RUN RUN2`) resumes as the unmoved run would (its stages'
data files inside the run folder are recorded relative to it; paths outside keep being compared as written), and a
recipe run's config.yaml lists the options the recipe reads, not every option at a default it never reads."""
import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from preflab.config import config_from_dict, load_config
from preflab.launch_paths import launch_record
from preflab.resume_check import compare_configs

TINY_FSPO = {"users_per_group": 3, "rows_per_user": 4, "heldout_fraction": 0.34, "hidden_size": 32, "num_layers": 1,
             "steps": 3, "batch_size": 4, "instruction": "Answer.", "save_steps": 1, "baseline": False}


def test_fspo_run_folder_moved_mid_stage_resumes_to_the_uninterrupted_summary(tmp_path, stop_runs_at_step):
    """Interrupted in its stage after checkpoint-2 (of 3 steps), moved, resumed from the new folder: the summary and
    the stage's weights equal an uninterrupted run's, the stage continued from its checkpoint (not rerun), and the
    stage's launch record holds its data file relative to the run folder. Before, the resume was refused:
    dataset_name ('RUN/data/episodes.jsonl' -> 'RUN2/data/episodes.jsonl')."""
    from preflab.loops.offline import Trainer
    from preflab.reward_models.fspo import run_fspo

    full = run_fspo(str(tmp_path / "full"), quiet=True, **TINY_FSPO)
    part = tmp_path / "part"
    with stop_runs_at_step(Trainer, 2):
        run_fspo(str(part), quiet=True, **TINY_FSPO)
    assert (part / "fspo" / "checkpoint-2").is_dir() and not (part / "fspo" / "model.safetensors").exists()
    launch = json.loads((part / "fspo" / "launch.json").read_text())
    assert launch["run_dir"] == str(part)
    assert launch["run_paths"] == {"dataset_name": {"value": str(part / "data" / "episodes.jsonl"),
                                                    "path": "data/episodes.jsonl"}}
    moved = tmp_path / "moved"
    shutil.move(str(part), str(moved))
    resumed = run_fspo(str(moved), quiet=True, resume=True, **TINY_FSPO)
    assert json.loads((moved / "fspo" / "summary.json").read_text())["resumed_from_step"] == 2  # not rerun
    drop = lambda s: {k: v for k, v in s.items() if k != "runtime_s"}  # noqa: E731
    assert drop(resumed) == drop(full)
    a, b = (load_file(str(d / "fspo" / "model.safetensors")) for d in (tmp_path / "full", moved))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _data_file(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    return str(path)


def test_only_paths_inside_the_run_folder_follow_it_when_it_moves(tmp_path, monkeypatch):
    """A stage path inside the recipe's run folder (absolute, or relative to the launch directory) is recorded
    relative to it and matches the same place in the moved folder; a path outside it is not recorded and a changed
    one stays a change of meaning; so does a file at another place in the moved folder, and the same move without the
    run folder of the resume (a plain run)."""
    monkeypatch.chdir(tmp_path)
    inside = _data_file(tmp_path / "RUN" / "data" / "x.jsonl")
    outside = _data_file(tmp_path / "shared" / "y.jsonl")
    record = launch_record({"dataset_name": inside, "eval_dataset_name": outside}, run_dir=str(tmp_path / "RUN"))
    assert record["run_paths"] == {"dataset_name": {"value": inside, "path": "data/x.jsonl"}}
    relative = launch_record({"dataset_name": "RUN/data/x.jsonl"}, run_dir="RUN")  # output_dir: RUN, cwd tmp_path
    assert relative["run_paths"]["dataset_name"]["path"] == "data/x.jsonl" and "run_dir" not in launch_record({})

    moved = tmp_path / "RUN2"
    shutil.move(str(tmp_path / "RUN"), str(moved))
    _data_file(moved / "data" / "z.jsonl")
    _data_file(tmp_path / "shared2" / "y.jsonl")
    saved = {"dataset_name": inside, "eval_dataset_name": outside}
    same = {"dataset_name": str(moved / "data" / "x.jsonl"), "eval_dataset_name": outside}
    assert compare_configs(saved, same, launch=record, run_dir=str(moved)) == ({}, {})
    assert compare_configs({"dataset_name": "RUN/data/x.jsonl"}, {"dataset_name": "RUN2/data/x.jsonl"},
                           launch=relative, run_dir="RUN2") == ({}, {})
    assert compare_configs(saved, same, launch=record)[1] == {"dataset_name": (inside, same["dataset_name"])}
    other = {**same, "dataset_name": str(moved / "data" / "z.jsonl")}
    assert list(compare_configs(saved, other, launch=record, run_dir=str(moved))[1]) == ["dataset_name"]
    elsewhere = {**same, "eval_dataset_name": str(tmp_path / "shared2" / "y.jsonl")}
    assert list(compare_configs(saved, elsewhere, launch=record, run_dir=str(moved))[1]) == ["eval_dataset_name"]


def test_a_recipe_stage_config_needs_its_run_folder():
    """Every recipe builds its stages through stage_config, which takes the recipe's run folder by keyword (a recipe
    that left it out would record no run folder, and a moved run would again be refused)."""
    from preflab.recipe_options import stage_config

    with pytest.raises(TypeError, match="run_dir"):
        stage_config("fspo", {"task": "dpo", "dataset_name": "x.jsonl"}, {})


def test_recipe_config_yaml_lists_the_options_the_recipe_reads(tmp_path, monkeypatch):
    """The recipe's config.yaml holds the options it reads itself and the stage option the user set, not
    `learning_rate: 1.0e-06` or `dataset_name: ''` at defaults it never reads, with a comment saying so; read back it
    is the same recipe config. A stage folder's config.yaml is unchanged (every option)."""
    from preflab import recipes

    def recipe(output_dir, seed=0, quiet=False, stage_options=None, depth: int = 1):
        assert stage_options == {"attention": "dense"}
        (tmp_path / "run").mkdir()
        return {"metric_name": "m", "metric_before": 0.0, "metric_after": float(depth)}

    monkeypatch.setattr(recipes, "recipe_function", lambda task: recipe)
    cfg = config_from_dict({"task": "fspo", "recipe_params": {"depth": 2}, "output_dir": str(tmp_path / "run"),
                            "seed": 7, "attention": "dense"})
    recipes.run_recipe(cfg)
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert list(yaml.safe_load(text)) == ["task", "seed", "attention", "output_dir", "resume_from_checkpoint",
                                          "allow_config_change", "disable_tqdm", "recipe_params"]
    assert text.splitlines()[1].startswith("# task fspo is a recipe: listed are the options it reads itself")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert (again.task, again.seed, again.attention, again.recipe_params) == ("fspo", 7, "dense", {"depth": 2})
    assert again.to_dict() == cfg.to_dict()  # nothing the run used is lost



def _eval(stage, data, out):
    """`preflab eval STAGE --data DATA --out OUT` as a user runs it; eval.json."""
    from preflab.cli import main

    assert main(["eval", str(stage), "--data", str(data), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_eval_of_a_moved_recipe_stage_reads_its_data_in_the_moved_folder(tmp_path, capsys):
    """`preflab eval RUN2/fspo` after `mv RUN RUN2` equals `preflab eval RUN/fspo` before the move: the same metrics,
    and the overlap with the stage's training data is checked against RUN2/data/episodes.jsonl (the stage's saved
    dataset_name, recorded inside its recipe's run folder: launch_paths.run_path, the rule its resume compares by).
    Before, the saved RUN/data/episodes.jsonl was read: gone, so the overlap check was skipped with a note. A
    checkpoint of the moved stage (its run's config.yaml one level up) is checked against the same file; a stage folder
    copied out of its run under another name is not rebased."""
    from preflab.launch_paths import read_launch_record, run_folder_now
    from preflab.reward_models.fspo import run_fspo

    run = tmp_path / "run"
    run_fspo(str(run), quiet=True, **{**TINY_FSPO, "steps": 2, "save_steps": 2})
    before = _eval(run / "fspo", run / "data" / "episodes.jsonl", tmp_path / "before.json")
    moved = tmp_path / "run2"
    shutil.move(str(run), str(moved))
    capsys.readouterr()
    after = _eval(moved / "fspo", moved / "data" / "episodes.jsonl", tmp_path / "after.json")
    said = capsys.readouterr().err
    assert after["metrics"] == before["metrics"] and after["num_pairs"] == before["num_pairs"]
    assert "overlap_with_training" not in after["missing"]
    overlap = before["overlap_with_training"]
    assert overlap["pairs"] == overlap["rows"] == before["num_pairs"]  # --data is the stage's training data
    assert after["overlap_with_training"] == {**overlap, "checked_against": str(moved / "data" / "episodes.jsonl")}
    assert f"lies in its recipe's run folder {run}, now {moved}" in said
    checkpoint = _eval(moved / "fspo" / "checkpoint-2", moved / "data" / "episodes.jsonl", tmp_path / "c.json")
    assert checkpoint["overlap_with_training"] == after["overlap_with_training"]
    record = read_launch_record(moved / "fspo")
    options = {"output_dir": str(run / "fspo")}
    assert run_folder_now(record, options, moved / "fspo") == str(moved)
    assert run_folder_now(record, options, tmp_path / "elsewhere") is None  # not the stage's folder name
    assert run_folder_now({**record, "run_dir": None}, options, moved / "fspo") is None  # no recipe stage


def _user_rows_file(run):
    from preflab.reward_models.fspo import toy_user_rows

    path = run / "in" / "users.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in toy_user_rows(3, 4, 0)))
    return str(path)


def test_fspo_moved_between_stages_with_its_data_file_inside_resumes_to_the_uninterrupted_summary(tmp_path):
    """Stopped after stage fspo (before pooled started), its recipe_params.data_file inside the run folder, moved, and
    resumed with data_file naming the same file in the moved folder: the summary equals an uninterrupted run's. The
    state file records the data_file relative to the run folder (params_run_paths), and compares it by the stages'
    rule (launch_paths.run_path); another file of the moved folder is still a change. Before, the resume was refused:
    recipe_params ['data_file'] differ."""
    from preflab.errors import ConfigError
    from preflab.reward_models.fspo import run_fspo

    tiny = {**TINY_FSPO, "baseline": True, "steps": 2, "save_steps": 0}
    full = run_fspo(str(tmp_path / "full"), quiet=True, data_file=_user_rows_file(tmp_path / "full"), **tiny)
    part = tmp_path / "part"
    run_fspo(str(part), quiet=True, data_file=_user_rows_file(part), stop_after_stage="fspo", **tiny)
    state = json.loads((part / "fspo_state.json").read_text())
    assert list(state["stages"]) == ["fspo"] and not (part / "pooled").exists()
    assert state["params_run_paths"] == {"data_file": {"value": str(part / "in" / "users.jsonl"),
                                                       "path": "in/users.jsonl"}}
    moved = tmp_path / "moved"
    shutil.move(str(part), str(moved))
    shutil.copy(moved / "in" / "users.jsonl", moved / "in" / "other.jsonl")
    with pytest.raises(ConfigError, match=r"recipe_params \['data_file'\] differ"):
        run_fspo(str(moved), quiet=True, resume=True, data_file=str(moved / "in" / "other.jsonl"), **tiny)
    resumed = run_fspo(str(moved), quiet=True, resume=True, data_file=str(moved / "in" / "users.jsonl"), **tiny)
    drop = lambda s: {k: v for k, v in s.items() if k not in ("runtime_s", "params")}  # noqa: E731
    assert drop(resumed) == drop(full) and "pooled_accuracy_after" in resumed
    unmoved = lambda s: {k: v for k, v in s["params"].items() if k != "data_file"}  # noqa: E731
    assert unmoved(resumed) == unmoved(full)
    a, b = (load_file(str(d / "pooled" / "model.safetensors")) for d in (tmp_path / "full", moved))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((moved / "fspo_state.json").read_text())["params_run_paths"]["data_file"]["value"] == \
        str(moved / "in" / "users.jsonl")
