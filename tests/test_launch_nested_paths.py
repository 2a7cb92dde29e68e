"""Relative paths nested inside options (preflab.launch_paths NESTED_PATH_OPTIONS), read from another directory
than the one the run started in: an online run trained in A with `reward_funcs: [rewards.py:score, rm]` (a judge
in a local Python file and a local reward-model folder) is read back and resumed from B. Before, run_config from B
gave reward_funcs as written (relative names that meant nothing in B), and a resume from B naming the same judges as
`../A/rewards.py:score`, `../A/rm` was refused as a change of reward_funcs."""
import json

import pytest
import torch
from safetensors.torch import load_file

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.launch_paths import launch_record, resolve_saved_paths, same_path
from preflab.models.run_config import run_config
from preflab.online.run import OnlineRun
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest
from launch_dirs import assert_resumed_equals_the_run, trained_in_a

PROMPTS = [{"prompt": f"say {w}"} for w in ("a", "bb", "ccc", "dddd", "e", "ff")]
REWARDS = "def score(prompts, completions, **kw):\n    return [float(c.count('a')) for c in completions]\n"


def _online(output_dir, **kw):
    return {"task": "online", "trainer": "online_dpo", "online_task": "dataset", "model_name_or_path": "models/base",
            "dataset_name": "data/prompts.jsonl", "reward_funcs": ["rewards.py:score", "rm"],
            "reward_weights": [1.0, 0.5], "output_dir": output_dir, "learning_rate": 1e-2, "max_steps": 2,
            "save_steps": 1, "num_generations": 2, "prompts_per_generation": 4, "steps_per_generation": 1,
            "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_completion_length": 4,
            "logging_steps": 1, "disable_tqdm": True, "use_cpu": True, "seed": 3, "report_to": "none", **kw}


def _train(options):
    torch.set_num_threads(1)
    return OnlineRun(config_from_dict(options)).train()


def _reward_model(folder, tok):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


@pytest.fixture(scope="module")
def online_in_a(tmp_path_factory):
    """(A, B): a two-step online DPO run started in A judged by A/rewards.py:score and the reward model A/rm (a
    checkpoint at step 1), and another directory B beside it."""
    def write_files(a, tok):
        _reward_model(a / "rm", tok)
        (a / "rewards.py").write_text(REWARDS)
        write_jsonl(a / "data" / "prompts.jsonl", PROMPTS)

    return trained_in_a(tmp_path_factory.mktemp("nested"), write_files, lambda: _train(_online("outputs/run")))


def test_launch_json_records_the_judges_paths_and_the_saved_config_reads_them_from_another_directory(
        online_in_a, monkeypatch):
    a, b = online_in_a
    run = a / "outputs" / "run"
    record = json.loads((run / "launch.json").read_text())
    assert record["local_paths"]["reward_funcs"] == {"value": ["rewards.py:score", "rm"],
                                                     "path": [f"{a}/rewards.py:score", f"{a}/rm"]}
    monkeypatch.chdir(b)
    for folder in (run, run / "checkpoint-1"):  # config.yaml + launch.json; the checkpoint's trainer_state copy
        assert run_config(folder)["reward_funcs"] == [f"{a}/rewards.py:score", f"{a}/rm"]
    state = json.loads((run / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["launch"]["local_paths"]["reward_funcs"] == record["local_paths"]["reward_funcs"]


def test_a_resume_from_another_directory_naming_the_same_judges_is_no_config_change(online_in_a, monkeypatch,
                                                                                   tmp_path):
    """From B, resuming A's checkpoint-1 with every path named from B (../A/...) passes the config check and ends
    with the weights of the uninterrupted run; a judge from another file (same function, same bytes, in B) is still
    a change of reward_funcs."""
    a, b = online_in_a
    monkeypatch.chdir(b)
    resumed = _online(str(tmp_path / "resumed"), model_name_or_path="../A/models/base",
                      dataset_name="../A/data/prompts.jsonl", reward_funcs=["../A/rewards.py:score", "../A/rm"],
                      resume_from_checkpoint=str(a / "outputs/run/checkpoint-1"))
    _train(resumed)
    full = assert_resumed_equals_the_run(a, tmp_path / "resumed")
    base = load_file(str(a / "models/base/model.safetensors"))
    assert max((full[k] - base[k]).abs().max().item() for k in full if k in base) > 1e-4  # the steps moved it
    (b / "rewards.py").write_text(REWARDS)
    with pytest.raises(ConfigError, match=r"reward_funcs \(\['rewards.py:score', 'rm'\] -> \['rewards.py:score'"):
        _train({**resumed, "reward_funcs": ["rewards.py:score", "../A/rm"], "output_dir": str(tmp_path / "other")})


def test_nested_local_paths_forms_and_names_that_stay_names(tmp_path, monkeypatch):
    """reward_funcs: a file.py:function (the file), a folder, maxmin:RUN (the folder), verifier and hub names
    untouched; a mapping option (recipe_params) at any depth, where a bare word stays a name even where a folder
    of that name exists (stop_after_stage: sft). Read from elsewhere: the recorded absolute forms; the same judges
    named from there are the same paths, another file is not."""
    for folder in ("rm", "em", "sft", "data", "org/model", "demo_true_reward"):  # the last: a builtin judge's name
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "rewards.py").write_text(REWARDS)
    (tmp_path / "data" / "u.jsonl").write_text("")
    options = {"reward_funcs": ["rewards.py:score", "rm", "maxmin:em", "verifier:math", "org/model",
                                "demo_true_reward"],
               "recipe_params": {"data_file": "data/u.jsonl", "stop_after_stage": "sft", "iterations": 2,
                                 "stages": [{"ref_model_name_or_path": "rm/", "chat_template_path": "none.jinja"}]},
               "objective_params": {"beta": 0.1}}
    record = launch_record(options, str(tmp_path))
    assert record["local_paths"] == {
        "reward_funcs": {"value": options["reward_funcs"],
                         "path": [f"{tmp_path}/rewards.py:score", f"{tmp_path}/rm", f"maxmin:{tmp_path}/em",
                                  "verifier:math", f"{tmp_path}/org/model", "demo_true_reward"]},
        "recipe_params": {"value": options["recipe_params"],
                          "path": {"data_file": f"{tmp_path}/data/u.jsonl", "stop_after_stage": "sft",
                                   "iterations": 2, "stages": [{"ref_model_name_or_path": f"{tmp_path}/rm",
                                                                "chat_template_path": "none.jinja"}]}}}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    got = resolve_saved_paths(options, record, note=pytest.fail)
    assert got == {**options, "reward_funcs": record["local_paths"]["reward_funcs"]["path"],
                   "recipe_params": record["local_paths"]["recipe_params"]["path"]}
    named_here = ["../rewards.py:score", "../rm", "maxmin:../em", "verifier:math", "../org/model", "demo_true_reward"]
    assert same_path("reward_funcs", options["reward_funcs"], named_here, record)
    assert not same_path("reward_funcs", options["reward_funcs"], named_here[:-1], record)
    (elsewhere / "rewards.py").write_text(REWARDS)
    assert not same_path("reward_funcs", options["reward_funcs"], ["rewards.py:score"] + named_here[1:], record)
    stages = [{"ref_model_name_or_path": "../rm", "chat_template_path": "none.jinja"}]
    assert same_path("recipe_params", options["recipe_params"],
                     {**options["recipe_params"], "data_file": str(tmp_path / "data/u.jsonl"), "stages": stages}, record)
    assert not same_path("recipe_params", options["recipe_params"],  # rm/ names nothing here
                         {**options["recipe_params"], "data_file": str(tmp_path / "data/u.jsonl")}, record)
    assert resolve_saved_paths(options, None) is options  # a run without launch.json: as written


def test_a_gone_nested_path_is_said_naming_the_option_and_entry(tmp_path, monkeypatch):
    """The run's rewards.py is gone: the one of that name here is read (its function kept), said; the reward model
    folder exists neither there nor here: its recorded path, said, naming the option and the entry."""
    start, here = tmp_path / "start", tmp_path / "here"
    (start / "rm").mkdir(parents=True)
    (start / "rewards.py").write_text(REWARDS)
    options = {"reward_funcs": ["rewards.py:score", "rm"]}
    record = launch_record(options, str(start))
    (start / "rewards.py").unlink()
    (start / "rm").rmdir()
    here.mkdir()
    (here / "rewards.py").write_text(REWARDS)
    monkeypatch.chdir(here)
    notes = []
    got = resolve_saved_paths(options, record, "RUN/config.yaml", notes.append)
    assert got["reward_funcs"] == [f"{here}/rewards.py:score", f"{start}/rm"]
    assert notes == [
        f"RUN/config.yaml: reward_funcs entry 'rewards.py:score' was {start}/rewards.py when the run started in "
        f"{start}, which no longer exists; read {here}/rewards.py (relative to the current directory) instead",
        f"RUN/config.yaml: reward_funcs entry 'rm' exists neither where the run was started ({start}/rm) nor "
        f"relative to the current directory ({here}/rm); it is read as {start}/rm (a moved or deleted file), not "
        "looked up on the hub"]


def test_a_trl_dataset_mixture_of_one_local_file_is_recorded_as_dataset_name(tmp_path):
    """`datasets: [{path: data/p.jsonl}]` (TRL's DatasetMixtureConfig) is dataset_name once the config is read, so
    the run's launch record holds its absolute path like any dataset_name."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.jsonl").write_text("")
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "datasets": [{"path": "data/p.jsonl"}],
                            "max_steps": 1})
    assert launch_record(cfg.to_dict(), str(tmp_path))["local_paths"]["dataset_name"] == {
        "value": "data/p.jsonl", "path": f"{tmp_path}/data/p.jsonl"}


def test_a_recipe_resumed_from_another_directory_naming_the_same_files_keeps_its_params(tmp_path, monkeypatch):
    """A recipe's state file records its recipe_params' local paths absolute where it started: a resume from B
    naming the same data file as ../A/... is no change of recipe_params (it was refused: "recipe_params
    ['data_file'] differ"); another file (B's data/u.jsonl) still is."""
    from preflab.recipe_state import RecipeStateFile

    a, b = tmp_path / "A", tmp_path / "B"
    (a / "data").mkdir(parents=True)
    b.mkdir()
    (a / "data" / "u.jsonl").write_text("")
    state = a / "out" / "recipe_state.json"
    monkeypatch.chdir(a)
    RecipeStateFile(state, {"data_file": "data/u.jsonl", "iterations": 2}, resume=False, every_process=False)
    assert json.loads(state.read_text())["params_local_paths"] == {"data_file": f"{a}/data/u.jsonl", "iterations": 2}
    monkeypatch.chdir(b)
    RecipeStateFile(state, {"data_file": "../A/data/u.jsonl", "iterations": 2}, resume=True, every_process=False)
    (b / "data").mkdir()
    (b / "data" / "u.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"recipe_params \['data_file'\] differ"):
        RecipeStateFile(state, {"data_file": str(b / "data/u.jsonl"), "iterations": 2}, resume=True,
                        every_process=False)
    with pytest.raises(ConfigError, match=r"recipe_params \['iterations'\] differ"):
        RecipeStateFile(state, {"data_file": "../A/data/u.jsonl", "iterations": 3}, resume=True, every_process=False)


def test_a_loss_or_pair_builder_in_a_local_file_is_recorded_and_a_loss_name_stays_a_name(tmp_path, monkeypatch):
    """loss_type / pair_builder `file.py:name` (an objective class, a pair builder in a local file): the file made
    absolute; `sigmoid` or `best_vs_worst` stay names even where a file of that name exists. From elsewhere the same
    file named another way is the same loss (a resume was refused: loss_type changed)."""
    (tmp_path / "my_losses.py").write_text("")
    (tmp_path / "sigmoid").write_text("")
    (tmp_path / "best_vs_worst").write_text("")
    options = {"loss_type": ["my_losses.py:MyDPO", "sigmoid"], "pair_builder": "best_vs_worst"}
    record = launch_record(options, str(tmp_path))
    assert record["local_paths"] == {"loss_type": {"value": options["loss_type"],
                                                   "path": [f"{tmp_path}/my_losses.py:MyDPO", "sigmoid"]}}
    assert launch_record({"pair_builder": "my_losses.py:build"}, str(tmp_path))["local_paths"] == {
        "pair_builder": {"value": "my_losses.py:build", "path": f"{tmp_path}/my_losses.py:build"}}
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    assert resolve_saved_paths(options, record, note=pytest.fail)["loss_type"] == [f"{tmp_path}/my_losses.py:MyDPO",
                                                                                  "sigmoid"]
    assert same_path("loss_type", options["loss_type"], ["../my_losses.py:MyDPO", "sigmoid"], record)
    assert not same_path("loss_type", options["loss_type"], ["../my_losses.py:Other", "sigmoid"], record)


def test_an_online_runs_tool_in_a_local_file_is_recorded_and_builtin_tools_stay_names(tmp_path, monkeypatch):
    """tools (TRL GRPOTrainer's tools=, preflab.online.tool_calling) `file.py:function`: the file made absolute, so a
    resume from another directory naming it `../my_tools.py:lookup` is no change of tools; `calculator` and `python`
    stay built-in names even where a file of that name exists."""
    (tmp_path / "my_tools.py").write_text("")
    (tmp_path / "calculator").write_text("")
    options = {"tools": ["my_tools.py:lookup", "calculator", "python"]}
    record = launch_record(options, str(tmp_path))
    assert record["local_paths"] == {"tools": {"value": options["tools"],
                                               "path": [f"{tmp_path}/my_tools.py:lookup", "calculator", "python"]}}
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    assert resolve_saved_paths(options, record, note=pytest.fail)["tools"] == [f"{tmp_path}/my_tools.py:lookup",
                                                                              "calculator", "python"]
    assert same_path("tools", options["tools"], ["../my_tools.py:lookup", "calculator", "python"], record)
    assert not same_path("tools", options["tools"], ["../my_tools.py:other", "calculator", "python"], record)
