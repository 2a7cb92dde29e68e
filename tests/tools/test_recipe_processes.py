"""The tool / program recipes under a multi-process launch (`accelerate launch --num_processes N`): a recipe that
cannot run on several processes is refused before anything runs, naming why and what to do; `task: themis` runs its
two reward-model trainings data parallel and equals the one-process recipe, and so do `task: dstc` (its sandbox
matrix and pairs on the main process, its SFT and DPO stages data parallel), `task: itool`, `task: fspo` (held-out
scoring on the main process, both DPO stages data parallel) and `task: pro_orchestrator` (adapter fit and evaluations
on the main process, SFT and GRPO data parallel)."""
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preflab import recipe_state, recipes
from preflab.config import load_config
from preflab.errors import ConfigError
from preflab.ladder import recipe as ladder_recipe
from preflab.online import pro_recipe
from preflab.reward_models import fspo, themis_toy
from preflab.tool_use import dstc, itool, otc

ROOT = Path(__file__).resolve().parents[2]


def test_icpl_under_a_launch_of_two_runs_only_on_the_main_process(tmp_path, monkeypatch, capsys):
    """ICPL trains no model (nothing to split): a process other than the main one ends at once, before anything is
    written; the main process runs the recipe as a plain run would, after a note that says so."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")

    from preflab.reward_design import recipe as icpl_recipe

    calls = []

    def recipe(**kwargs):  # the recipe's own options (checked on every process), recording each run
        calls.append(kwargs)
        Path(kwargs["output_dir"]).mkdir(parents=True)
        return {"metric_name": "best_true_reward"}

    recipe.__signature__ = inspect.signature(icpl_recipe.run_icpl_recipe)
    monkeypatch.setattr(icpl_recipe, "run_icpl_recipe", recipe)
    out = tmp_path / "out"
    cfg = load_config(str(ROOT / "examples/tools/icpl.yaml"), [f"output_dir={out}"])
    assert recipes.run_recipe(cfg) == {} and calls == []
    assert not out.exists() and capsys.readouterr().out == ""
    cfg.recipe_params["unknown"] = 1  # the options are checked on every process, before any of them ends
    with pytest.raises(ConfigError, match=r"recipe_params \['unknown'\] are not options of task 'icpl'"):
        recipes.run_recipe(cfg)
    del cfg.recipe_params["unknown"]
    monkeypatch.setenv("RANK", "0")
    assert recipes.run_recipe(cfg) == {"metric_name": "best_true_reward"} and len(calls) == 1
    said = capsys.readouterr().out
    assert "task 'icpl' runs on the main process only; the other 1 process(es) of this launch have ended: it trains " \
           "no model" in said and "equals `preflab train CONFIG.yaml` without a launcher" in said
    assert (out / "config.yaml").exists()


def test_a_recipe_of_one_process_under_a_launch_of_two_is_refused_before_it_starts(tmp_path, monkeypatch):
    """No recipe is refused today; the refusal stays for one that cannot run on several processes."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setitem(recipes.ONE_PROCESS, "themis", "a reason")
    out = tmp_path / "out"
    cfg = load_config(str(ROOT / "examples/tools/themis.yaml"), [f"output_dir={out}"])
    with pytest.raises(ConfigError, match=r"task 'themis' runs as one process, not 2 \(WORLD_SIZE=2\): a reason. "
                                          r"Run it without a launcher: `preflab train CONFIG.yaml`"):
        recipes.run_recipe(cfg)
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="preflab.sandbox is Linux-only")
def test_icpl_on_two_processes_equals_one_process(tmp_path, two_process_runs):
    """`accelerate launch --num_processes 2` of task icpl: the same programs, outcomes, ratings, state and summary as
    the one-process run (runtime_s aside), the result printed once. Before, it was refused under a launcher."""
    params = TWO_PROCESS_RUNS["test_icpl_on_two_processes_equals_one_process"][2]
    two, one = two_process_runs("test_icpl_on_two_processes_equals_one_process"), tmp_path / "one"
    recipes.recipe_function("icpl")(str(one), seed=0, quiet=True, **params)
    s2, s1 = (json.loads((d / "summary.json").read_text()) for d in (two, one))
    assert _drop(s2, ("runtime_s",)) == _drop(s1, ("runtime_s",)) and s1["trainer_calls"] == 6
    assert (two / "icpl_state.json").read_text() == (one / "icpl_state.json").read_text()


def test_themis_is_not_refused_and_its_batch_must_split_over_the_processes(tmp_path, monkeypatch):
    recipes.check_processes("themis", 2)  # runs on several processes (the test below)
    assert not recipes.ONE_PROCESS
    monkeypatch.setattr(recipe_state, "start_processes", lambda: 3)
    with pytest.raises(ConfigError, match="batch of 16 rows does not split over 3 processes"):
        themis_toy.run_themis_arithmetic(str(tmp_path / "out"), steps=1, n_train=16, n_test=1)
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(recipe_state, "start_processes", lambda: 4)
    assert recipe_state.per_process_batch(16, "themis") == 4


@pytest.mark.parametrize("engine", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_themis_on_several_processes_under_fsdp_or_deepspeed_is_refused(engine, tmp_path, monkeypatch):
    """Its evaluation runs the reward models on the main process, outside the engine: data parallel only (and so do
    dstc's, itool's, fspo's and pro_orchestrator's sampling, searches and evaluations)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(engine, "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(ConfigError, match="runs data parallel only: .*examples/accelerate/ddp.yaml"):
        themis_toy.run_themis_arithmetic(str(tmp_path / "out"), steps=1, n_train=16, n_test=1)
    with pytest.raises(ConfigError, match="runs data parallel only: .*examples/accelerate/ddp.yaml"):
        dstc.run_dstc(str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="runs data parallel only: .*examples/accelerate/ddp.yaml"):
        itool.run_itool(str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="runs data parallel only: .*examples/accelerate/ddp.yaml"):
        fspo.run_fspo(str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="runs data parallel only: .*examples/accelerate/ddp.yaml"):
        pro_recipe.run_pro(str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _weights(folder: Path) -> dict:
    return {f"{name}/{k}": v for name in ("model.safetensors", "value_head.safetensors")
            for k, v in load_file(str(folder / name)).items()}


def _losses(folder: Path) -> list:
    return [json.loads(x)["loss"] for x in (folder / "metrics.jsonl").read_text().splitlines()]


# The 2-process run of each test below: (entry, config, recipe_params). The runs of the tests selected in a session
# share one `accelerate launch` (the two_process_runs fixture); icpl last (it ends the other process's part at once).
TWO_PROCESS_RUNS = {
    "test_themis_on_two_processes_equals_one_process": (
        "module", "examples/tools/themis.yaml", {"steps": 3, "n_train": 16, "n_test": 2}),
    "test_dstc_on_two_processes_equals_one_process": (
        "dstc", "examples/tools/dstc.yaml",
        {"n_sft_tasks": 12, "n_dstc_tasks": 4, "n_test": 4, "sft_per_task": 1, "sft_steps": 4, "n_codes": 2,
         "n_tests": 1, "iterations": 1, "dpo_steps": 2, "batch_size": 4, "hidden_size": 32, "timeout_s": 0.5,
         "control": True}),
    "test_itool_on_two_processes_equals_one_process": (
        "module", "examples/tools/itool.yaml",
        {"n_train": 40, "n_test": 6, "pool_size": 14, "sft_steps": 3, "iterations": 2, "mcts_iters": 2,
         "num_actions": 2, "hidden_size": 32, "max_new_tokens": 24, "accept_value": -10.0}),
    "test_fspo_on_two_processes_equals_one_process": (
        "module", "examples/fspo.yaml",
        {"users_per_group": 3, "rows_per_user": 4, "heldout_fraction": 0.34, "hidden_size": 32, "num_layers": 1,
         "steps": 3, "batch_size": 4, "instruction": "Answer.", "loss_type": "ipo", "learning_rate": 3e-4}),
    "test_fspo_with_the_sft_loss_on_two_processes_equals_one_process": (
        "module", "examples/fspo.yaml", lambda root: _fspo_sft_params(root)),
    "test_pro_orchestrator_on_two_processes_equals_one_process": (
        "pro", "examples/pro_orchestrator.yaml",
        {"n_train": 24, "n_heldout": 4, "hidden_size": 32, "sft_steps": 3, "adapter_steps": 20, "grpo_steps": 2,
         "prompts_per_generation": 4, "num_generations": 2, "max_completion_length": 6}),
    "test_raft_ladder_on_two_processes_equals_one_process": (
        "module", "examples/tools/raft_ladder.yaml", {"n_train": 24, "n_test": 3, "sft_steps": 3, "dpo_steps": 2}),
    "test_otc_on_two_processes_equals_one_process": (
        "module", "examples/tools/otc.yaml",
        {"n_train": 24, "n_heldout": 4, "sft_steps": 4, "sft_batch_size": 4, "grpo_steps": 2,
         "prompts_per_generation": 2, "num_generations": 2, "max_completion_length": 16, "hidden_size": 32,
         "save_steps": 1, "control": False}),
    "test_icpl_on_two_processes_equals_one_process": (
        "module", "examples/tools/icpl.yaml", {"iterations": 2, "samples": 3, "arms": 4, "dims": 2}),
}


@pytest.fixture(scope="module")
def two_process_runs(request, tmp_path_factory, accelerate_launch):
    """`accelerate launch` of 2 gloo processes (examples/accelerate/ddp.yaml) of tests/tools/recipes_launch.py, which
    runs `preflab train CONFIG output_dir=OUT disable_tqdm=true recipe_params=...` for each selected test of
    TWO_PROCESS_RUNS in turn, in the same processes. `two_process_runs(test_name)`: that run's OUT, after checking
    that the launch succeeded and that each run printed its result once."""
    skipped = lambda item: any(m.args and m.args[0] is True for m in item.iter_markers("skipif"))  # noqa: E731
    names = [n for n in TWO_PROCESS_RUNS if any(item.name == n and item.module is request.module and not skipped(item)
                                                for item in request.session.items)]
    if not names:  # a test requested it outside a session's collection: its own run only
        names = [request.node.name]
    root = tmp_path_factory.mktemp("two-process-runs")
    outs = {name: root / name for name in names}
    params = {name: spec[2](root) if callable(spec[2]) else spec[2] for name, spec in TWO_PROCESS_RUNS.items()
              if name in names}  # a callable writes its run's data into the launch's folder and gives the params
    args = [a for i, name in enumerate(names) for a in ([] if i == 0 else ["--"]) + [
        TWO_PROCESS_RUNS[name][0], str(ROOT / TWO_PROCESS_RUNS[name][1]), str(outs[name]),
        json.dumps(params[name])]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    cmd = accelerate_launch("--config_file", str(ROOT / "examples/accelerate/ddp.yaml"), "--num_processes", "2",
                            str(ROOT / "tests/tools/recipes_launch.py"), *args)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300 * len(names), cwd=ROOT,
                          check=False)

    def launched(name: str) -> Path:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count('"metric_name"') == len(names), proc.stdout
        assert proc.stdout.count(f'"output_dir": {json.dumps(str(outs[name]))}') == 1, proc.stdout
        return outs[name]

    return launched


def _assert_same_weights(two: Path, one: Path, stage: str, atol: float = 1e-6) -> None:
    w2, w1 = (load_file(str(d / stage / "model.safetensors")) for d in (two, one))
    assert w2.keys() == w1.keys()
    assert max(float((w2[k] - w1[k]).abs().max()) for k in w1) < atol, stage


def test_themis_on_two_processes_equals_one_process(tmp_path, two_process_runs):
    """2 processes x 8 pairs = the recipe's batch of 16 on one process: the same losses and final weights of both
    reward models to 1e-6 / 2e-6, the same state and summary numbers; summary.json, the state and the tool cache
    written once (by the main process), the result printed once. Before, each rank trained with batch 16 (a global
    batch of 32) and the second training crashed (the first one's end destroyed the process group)."""
    params = TWO_PROCESS_RUNS["test_themis_on_two_processes_equals_one_process"][2]
    two, one = two_process_runs("test_themis_on_two_processes_equals_one_process"), tmp_path / "one"
    themis_toy.run_themis_arithmetic(str(one), seed=0, quiet=True, **params)
    for stage in ("with_traces", "without_traces"):
        got, want = json.loads((two / stage / "summary.json").read_text()), \
            json.loads((one / stage / "summary.json").read_text())
        assert (got["environment"]["world_size"], want["environment"]["world_size"]) == (2, 1)
        assert got["train_examples_seen"] == want["train_examples_seen"] == 3 * 16
        assert _losses(two / stage) == pytest.approx(_losses(one / stage), abs=1e-6)
        w2, w1 = _weights(two / stage), _weights(one / stage)
        assert w2.keys() == w1.keys()
        assert max(float((w2[k] - w1[k]).abs().max()) for k in w1) < 2e-6
    s2, s1 = (json.loads((d / "summary.json").read_text()) for d in (two, one))
    assert {k: v for k, v in s2.items() if k != "runtime_s"} == {k: v for k, v in s1.items() if k != "runtime_s"}
    assert json.loads((two / "themis_state.json").read_text()) == json.loads((one / "themis_state.json").read_text())
    assert json.loads((two / "tool_cache.json").read_text()) == json.loads((one / "tool_cache.json").read_text())
    assert not list(two.glob("*.tmp"))


def test_dstc_is_not_refused_its_batch_must_split_and_kto_is_refused(tmp_path, monkeypatch):
    recipes.check_processes("dstc", 2)
    monkeypatch.setattr(recipe_state, "start_processes", lambda: 3)
    with pytest.raises(ConfigError, match="batch of 16 rows does not split over 3 processes"):
        dstc.run_dstc(str(tmp_path / "out"))
    monkeypatch.setattr(recipe_state, "start_processes", lambda: 2)
    monkeypatch.setattr(dstc, "start_processes", lambda: 2)
    with pytest.raises(ConfigError, match="KTO's reference point z0 is a micro-batch mean"):
        dstc.run_dstc(str(tmp_path / "out"), loss="kto")
    assert not (tmp_path / "out").exists()
    # an iteration's DPO batch: min(batch_size, rows) rows a step, as one process trains, split over the processes
    assert dstc.dpo_batch_per_process(40, 16, 2, 1) == 8 and dstc.dpo_batch_per_process(6, 16, 2, 1) == 3
    assert dstc.dpo_batch_per_process(5, 16, 1, 1) == 5
    with pytest.raises(ConfigError, match="iteration 2 built 5 training rows .* does not split over 2 processes. "
                                          "Resume it as one process"):
        dstc.dpo_batch_per_process(5, 16, 2, 2)


def _drop(record: dict, keys: tuple) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="preflab.sandbox is Linux-only")
def test_dstc_on_two_processes_equals_one_process(tmp_path, monkeypatch, two_process_runs):
    """2 processes x 2 rows = the recipe's batch_size 4 on one process, in the warm-up SFT, the DPO iteration and the
    control SFT: the same losses and final weights to 1e-6, the same pairs, state and summary (but the sandbox's
    seconds); the sampling and the sandbox matrix (a program that never ends included) ran once, on the main
    process (the same sandbox run count as one process); the result printed once."""
    monkeypatch.syspath_prepend(str(ROOT / "tests/tools"))
    from dstc_launch import planted_sampler

    params = TWO_PROCESS_RUNS["test_dstc_on_two_processes_equals_one_process"][2]
    two, one = two_process_runs("test_dstc_on_two_processes_equals_one_process"), tmp_path / "one"
    monkeypatch.setattr(dstc, "sample_candidates", planted_sampler())
    dstc.run_dstc(str(one), seed=0, quiet=True, **params)
    for stage, steps in (("sft", 4), ("dstc_1/dpo", 2), ("control", 2)):
        got, want = (json.loads((d / stage / "summary.json").read_text()) for d in (two, one))
        assert (got["environment"]["world_size"], want["environment"]["world_size"]) == (2, 1)
        assert got["train_examples_seen"] == want["train_examples_seen"] == steps * 4
        assert _losses(two / stage) == pytest.approx(_losses(one / stage), abs=1e-6)
    for stage in ("sft", "dstc_1", "control"):
        _assert_same_weights(two, one, stage)
    assert (two / "dstc_1/pairs.jsonl").read_text() == (one / "dstc_1/pairs.jsonl").read_text()
    s2, s1 = (json.loads((d / "summary.json").read_text()) for d in (two, one))
    timing = ("runtime_s", "sandbox_seconds", "seconds_per_run")
    assert _drop(s2, timing) == _drop(s1, timing)
    assert s1["pairs_per_iteration"] == [4] and s1["run_statuses"]["timeout"] == 2 and s1["sandbox_runs"] > 0
    t2, t1 = (json.loads((d / dstc.STATE_FILE).read_text()) for d in (two, one))
    assert _drop(t2["sandbox"], ("seconds",)) == _drop(t1["sandbox"], ("seconds",))
    assert _drop(t2, ("sandbox",)) == _drop(t1, ("sandbox",))
    assert not list(two.glob("*.tmp"))


def _leaves(record, path: str = "") -> dict:
    """A state or summary as {path: value}, without its clock readings (runtime_s, search_seconds, ...)."""
    if isinstance(record, dict):
        return {p: v for k, x in record.items() if not (k == "runtime_s" or k.endswith("_seconds"))
                for p, v in _leaves(x, f"{path}/{k}").items()}
    if isinstance(record, list):
        return {p: v for i, x in enumerate(record) for p, v in _leaves(x, f"{path}/{i}").items()}
    return {path: record}


def _assert_same_numbers(got: dict, want: dict) -> None:
    """The same keys and values; floats (means of losses, log-probs, perplexities) to 1e-6 relative."""
    got, want = _leaves(got), _leaves(want)
    assert got.keys() == want.keys()
    exact = [k for k, v in want.items() if not isinstance(v, float)]
    assert {k: got[k] for k in exact} == {k: want[k] for k in exact}
    floats = [k for k in want if k not in exact]
    assert [got[k] for k in floats] == pytest.approx([want[k] for k in floats], rel=1e-6, abs=1e-6)


def test_itool_is_not_refused_and_its_batches_must_split(tmp_path, monkeypatch):
    recipes.check_processes("itool", 2)
    monkeypatch.setattr(itool, "start_processes", lambda: 4)  # the easy warm-up of 40 rows has 6 rows: 6 / 4
    with pytest.raises(ConfigError, match="stage sft_1_easy trains on 6 rows a step, which do not split over 4 "
                                          "processes"):
        itool.run_itool(str(tmp_path / "out"), n_train=40, pool_size=14)
    assert not (tmp_path / "out").exists()
    assert itool.batch_per_process(8, 2, "iter_1") == 4
    with pytest.raises(ConfigError, match="stage iter_2 trains on 5 rows .* resume it as one process"):
        itool.batch_per_process(5, 2, "iter_2")


@pytest.mark.slow
def test_itool_on_two_processes_equals_one_process(tmp_path, two_process_runs):
    """2 processes x half of each stage's batch = the one-process recipe (warm-up SFT 6/16/16 rows a step, SimPO and
    the control SFT): the same losses and final weights of every stage to 1e-6, the same pairs, selections and
    accuracies, the state's and summary's other numbers to 1e-6 relative (but the clock readings); the searches ran once, on the main process; the result printed once."""
    params = TWO_PROCESS_RUNS["test_itool_on_two_processes_equals_one_process"][2]
    two, one = two_process_runs("test_itool_on_two_processes_equals_one_process"), tmp_path / "one"
    itool.run_itool(str(one), seed=0, quiet=True, **params)
    t2, t1 = (json.loads((d / itool.STATE_FILE).read_text()) for d in (two, one))
    _assert_same_numbers(t2, t1)
    assert t1["weights"] == {"itool": "iter_2/simpo", "control": "control_2"}
    for stage in ("sft_1_easy", "sft_2_medium", "sft_3_hard", "iter_1/simpo", "iter_2/simpo", "control_1",
                  "control_2"):
        got, want = (json.loads((d / stage / "summary.json").read_text()) for d in (two, one))
        assert (got["environment"]["world_size"], want["environment"]["world_size"]) == (2, 1)
        assert got["train_examples_seen"] == want["train_examples_seen"] > 0
        assert _losses(two / stage) == pytest.approx(_losses(one / stage), abs=1e-6)
        _assert_same_weights(two, one, stage)
    for t in (1, 2):
        assert (two / f"iter_{t}/pairs.jsonl").read_text() == (one / f"iter_{t}/pairs.jsonl").read_text()
    s2, s1 = (json.loads((d / "summary.json").read_text()) for d in (two, one))
    _assert_same_numbers(s2, s1)
    assert all(s1["iterations"][t]["simpo_steps"] > 0 for t in ("iter_1", "iter_2"))
    assert not list(two.glob("*.tmp"))


def test_whether_a_stage_folder_is_an_interrupted_one_is_the_main_process_s_verdict(tmp_path, monkeypatch):
    """A process that looks after the main process's stage has made its folder must not take it for an interrupted
    stage (it removed nothing but waited in a barrier while the main process trained: themis hung at times)."""
    state = recipe_state.RecipeState(tmp_path, "x_state.json", {}, resume=False)
    made = tmp_path / "stage_1" / "metrics.jsonl"
    made.parent.mkdir()
    made.write_text("the main process's run\n")
    monkeypatch.setattr(recipe_state, "main_result", lambda compute: False)  # the main process saw no folder
    monkeypatch.setattr(recipe_state, "main_writes", lambda write: pytest.fail("a barrier the main process skips"))
    assert state.stage("stage_1", lambda folder: {"ran": folder.name}, lambda folder: None) == {"ran": "stage_1"}
    assert made.exists()


def test_fspo_is_not_refused_its_batch_must_split_and_a_batch_coupled_loss_is_refused(tmp_path, monkeypatch):
    recipes.check_processes("fspo", 2)
    monkeypatch.setattr(recipe_state, "start_processes", lambda: 3)
    with pytest.raises(ConfigError, match="task fspo: its batch of 16 rows does not split over 3 processes"):
        fspo.run_fspo(str(tmp_path / "out"))
    monkeypatch.setattr(recipe_state, "start_processes", lambda: 2)
    with pytest.raises(ConfigError, match=r"loss_type='aot' on 2 processes: only a per-pair mean loss .* or "
                                          r"\['sft'\] \(its token mean over the whole step\)"):
        fspo.run_fspo(str(tmp_path / "out"), loss_type="aot")
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(recipe_state, "start_processes", lambda: 1)  # one process: every loss_type, as before
    with pytest.raises(ConfigError, match="steps and batch_size must be >= 1"):
        fspo.run_fspo(str(tmp_path / "out"), loss_type="aot", steps=0)


def _assert_close(got, want, where="") -> None:
    """The same JSON record: the same keys, lists and strings; floats to 1e-5."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for k in want:
            _assert_close(got[k], want[k], f"{where}/{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_close(g, w, f"{where}/{i}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-5), where
    else:
        assert got == want, where


@pytest.mark.slow
def test_fspo_on_two_processes_equals_one_process(tmp_path, two_process_runs):
    """2 processes x 2 episodes = batch_size 4 on one process, in the fspo stage and the pooled baseline: the same
    losses and final weights to 1e-6 (measured: losses 6.4e-7, weights 4.3e-7), the same held-out accuracies, state
    and summary (their scores to 1e-5; runtime_s aside); the episode files, state and summary written once, by the main process, the result printed once. Before, the recipe was
    refused under a launcher (each rank would have trained batch_size 4, a global batch of 8)."""
    params = TWO_PROCESS_RUNS["test_fspo_on_two_processes_equals_one_process"][2]
    two, one = two_process_runs("test_fspo_on_two_processes_equals_one_process"), tmp_path / "one"
    fspo.run_fspo(str(one), seed=0, quiet=True, **params)
    for stage in fspo.STAGES:
        got, want = (json.loads((d / stage / "summary.json").read_text()) for d in (two, one))
        assert (got["environment"]["world_size"], want["environment"]["world_size"]) == (2, 1)
        assert got["train_examples_seen"] == want["train_examples_seen"] == 3 * 4
        assert _losses(two / stage) == pytest.approx(_losses(one / stage), rel=1e-7, abs=1e-6)  # fp32 sums: 5e-8 rel. measured
        _assert_same_weights(two, one, stage)
    for name in ("episodes.jsonl", "pooled.jsonl"):
        assert (two / "data" / name).read_text() == (one / "data" / name).read_text()
    # the held-out scores of weights 1e-7 apart: the same accuracies, the same record, numbers to 1e-5
    s2, s1 = (json.loads((d / "summary.json").read_text()) for d in (two, one))
    _assert_close(_drop(s2, ("runtime_s",)), _drop(s1, ("runtime_s",)))
    assert s2["by_group_after"]["quiet"]["accuracy"] == s1["by_group_after"]["quiet"]["accuracy"] == 0.75
    t2, t1 = (json.loads((d / fspo.STATE_FILE).read_text()) for d in (two, one))
    _assert_close(t2, t1)
    assert not list(two.glob("*.tmp")) and not list((two / "data").glob("*.tmp"))


@pytest.mark.slow
def _fspo_sft_params(root: Path) -> dict:
    """The fspo sft run's recipe params, its data file written into `root`: the toy's users with chosen answers of
    1 to 3 echoes (different lengths)."""
    rows = fspo.toy_user_rows(2, 4, seed=0)
    for i, row in enumerate(rows):
        row["chosen"] = " ".join([row["chosen"]] * (1 + i % 3))
    data = root / "fspo_sft_users.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"data_file": str(data), "heldout_fraction": 0.25, "hidden_size": 32, "num_layers": 1, "steps": 2,
            "batch_size": 4, "instruction": "Answer.", "loss_type": "sft", "learning_rate": 3e-3, "baseline": False}


def test_fspo_with_the_sft_loss_on_two_processes_equals_one_process(tmp_path, two_process_runs):
    """loss_type sft was refused on several processes (each process's token mean of its own pairs is another
    objective than the token mean of the whole batch): it now runs data parallel with the sft token mean over the
    step's chosen tokens (token_mean "step", as raft_ladder's sft terms), so 2 processes x 2 episodes = batch_size 4
    on one process: the same losses and final weights to 1e-6, the same held-out accuracies. The chosen answers
    differ in length (1 to 3 echoes), so each process's own token mean is not the step's (the toy's are all 7
    characters, where the two agree)."""
    two = two_process_runs("test_fspo_with_the_sft_loss_on_two_processes_equals_one_process")
    params, one = _fspo_sft_params(two.parent), tmp_path / "one"
    fspo.run_fspo(str(one), seed=0, quiet=True, **params)
    got, want = (json.loads((d / "fspo" / "summary.json").read_text()) for d in (two, one))
    assert (got["environment"]["world_size"], want["environment"]["world_size"]) == (2, 1)
    assert got["train_examples_seen"] == want["train_examples_seen"] == 2 * 4
    assert _losses(two / "fspo") == pytest.approx(_losses(one / "fspo"), abs=1e-6)
    _assert_same_weights(two, one, "fspo")
    s2, s1 = (json.loads((d / "summary.json").read_text()) for d in (two, one))
    assert (s2["metric_before"], s2["metric_after"]) == (s1["metric_before"], s1["metric_after"])
    for group, record in s1["by_group_after"].items():
        assert s2["by_group_after"][group] == pytest.approx(record, rel=1e-5, abs=2e-6), group  # fp32 rounding of a 0.08 reward


def test_pro_orchestrator_is_not_refused_and_its_sft_batch_must_split(tmp_path, monkeypatch):
    recipes.check_processes("pro_orchestrator", 2)
    monkeypatch.setattr(recipe_state, "start_processes", lambda: 3)
    with pytest.raises(ConfigError, match="task pro_orchestrator: its batch of 16 rows does not split over 3"):
        pro_recipe.run_pro(str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_pro_orchestrator_on_two_processes_equals_one_process(tmp_path, monkeypatch, two_process_runs):
    """2 processes x 8 rows = the SFT batch of 16 on one process, and the GRPO rounds (4 prompts x 2 completions, all
    processes together) split over the processes: the same losses, gradient norms and final weights to 1e-6 (measured:
    weights 1.0e-7 after SFT, 4.1e-7 after GRPO, 1.8e-7 after the control), the same adapter, held-out rewards, state and summary (runtime_s aside); the
    adapter fitted, the data files, state and summary written once, by the main process; the result printed once."""
    params = TWO_PROCESS_RUNS["test_pro_orchestrator_on_two_processes_equals_one_process"][2]
    two, one = two_process_runs("test_pro_orchestrator_on_two_processes_equals_one_process"), tmp_path / "one"
    monkeypatch.syspath_prepend(str(ROOT / "tests/tools"))
    from pro_launch import dense_echo

    monkeypatch.setattr(pro_recipe, "_echo", dense_echo)  # GRPO groups with different rewards: a gradient
    pro_recipe.run_pro(str(one), seed=0, quiet=True, **params)
    for stage, examples in (("sft", 3 * 16), ("grpo", None), ("control", None)):
        got, want = (json.loads((d / stage / "summary.json").read_text()) for d in (two, one))
        assert (got["environment"]["world_size"], want["environment"]["world_size"]) == (2, 1)
        assert got["train_examples_seen"] == want["train_examples_seen"] == (examples or got["train_examples_seen"])
        assert _losses(two / stage) == pytest.approx(_losses(one / stage), abs=1e-6)
        _assert_same_weights(two, one, stage)
        norms = [[json.loads(x)["grad_norm"] for x in (d / stage / "metrics.jsonl").read_text().splitlines()]
                 for d in (two, one)]
        assert norms[0] == pytest.approx(norms[1], rel=1e-5) and min(norms[1]) > 0.1, stage
    s, g = (load_file(str(one / stage / "model.safetensors")) for stage in ("sft", "grpo"))
    assert max(float((s[k] - g[k]).abs().max()) for k in s) > 1e-4  # GRPO trained (its loss value is 0 at beta 0)
    w2, w1 = (load_file(str(d / "adapter/adapter.safetensors")) for d in (two, one))
    assert all(torch.equal(w2[k], w1[k]) for k in w1)
    for name in ("adapter_rows.jsonl", "sft.jsonl"):
        assert (two / "data" / name).read_text() == (one / "data" / name).read_text()
    s2, s1 = (json.loads((d / "summary.json").read_text()) for d in (two, one))
    _assert_close(_drop(s2, ("runtime_s",)), _drop(s1, ("runtime_s",)))
    _assert_close(*(json.loads((d / pro_recipe.STATE_FILE).read_text()) for d in (two, one)))
    assert not list(two.glob("*.tmp")) and not list((two / "data").glob("*.tmp"))


def test_raft_ladder_is_not_refused_and_its_batch_must_split(tmp_path, monkeypatch):
    recipes.check_processes("raft_ladder", 2)
    monkeypatch.setattr(recipe_state, "start_processes", lambda: 3)
    with pytest.raises(ConfigError, match="task raft_ladder: its batch of 16 rows does not split over 3 processes"):
        ladder_recipe.run_raft_ladder(str(tmp_path / "out"), n_train=24, n_test=3, sft_steps=1, dpo_steps=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_raft_ladder_on_two_processes_equals_one_process(tmp_path, two_process_runs):
    """2 processes x 8 rows = the recipe's batch of 16 on one process, in the SFT stage (loss_type sft) and the DPO
    stage (sigmoid + sft): the sft terms' token mean over the whole step's chosen tokens (token_mean "step"), so the
    same losses to 1e-6 and final weights to 2e-6 (float32 rounding through Adam), the same data files, program
    accuracies, examples, state and summary (runtime_s aside); the evaluations ran once, on the main process; the
    result printed once. Before, the recipe was refused under a launcher (each process's token mean of 8 rows is
    another objective than that of 16)."""
    params = TWO_PROCESS_RUNS["test_raft_ladder_on_two_processes_equals_one_process"][2]
    two, one = two_process_runs("test_raft_ladder_on_two_processes_equals_one_process"), tmp_path / "one"
    ladder_recipe.run_raft_ladder(str(one), seed=0, quiet=True, **params)
    for stage, steps in (("sft", 3), ("dpo", 2)):
        got, want = (json.loads((d / stage / "summary.json").read_text()) for d in (two, one))
        assert (got["environment"]["world_size"], want["environment"]["world_size"]) == (2, 1)
        assert got["train_examples_seen"] == want["train_examples_seen"] == steps * 16
        assert _losses(two / stage) == pytest.approx(_losses(one / stage), abs=1e-6)
        _assert_same_weights(two, one, stage, atol=2e-6)  # measured 1.4e-7 after SFT, 9.4e-7 after DPO
    for name in ("sft.jsonl", "dpo.jsonl"):
        assert (two / "data" / name).read_text() == (one / "data" / name).read_text()
    s2, s1 = (json.loads((d / "summary.json").read_text()) for d in (two, one))
    _assert_close(_drop(s2, ("runtime_s",)), _drop(s1, ("runtime_s",)))
    _assert_close(*(json.loads((d / ladder_recipe.STATE_FILE).read_text()) for d in (two, one)))
    assert not list(two.glob("*.tmp"))


@pytest.mark.slow
def test_otc_on_two_processes_equals_one_process(tmp_path, two_process_runs):
    """`task: otc` under a launch of 2: every process opened otc_state.json before any process group formed, so a
    process that looked after the main process had written it stopped with "otc_state.json exists: set
    resume_from_checkpoint" (exit 2) and the launch failed; the data file, the stage folders (resume_or_clean) and
    the summary were written by every process. Now the group forms first and the main process writes: 2 processes x
    2 rows = the SFT batch of 4 on one process, the GRPO rounds generated and judged whole on each process (one OTC
    tracker state, checkpointed by the main process): the same SFT and GRPO weights to 1e-6, tracker checkpoints,
    state and summary (runtime aside) as the one-process recipe."""
    params = TWO_PROCESS_RUNS["test_otc_on_two_processes_equals_one_process"][2]
    two, one = two_process_runs("test_otc_on_two_processes_equals_one_process"), tmp_path / "one"
    otc.run_otc(str(one), seed=0, quiet=True, **params)
    for stage in ("sft", "grpo"):
        got, want = (json.loads((d / stage / "summary.json").read_text()) for d in (two, one))
        assert (got["environment"]["world_size"], want["environment"]["world_size"]) == (2, 1)
        assert got["train_examples_seen"] == want["train_examples_seen"]
        _assert_same_weights(two, one, stage)
    for step in (1, 2):  # the tracker, as the online run checkpoints it beside each checkpoint
        assert (two / "grpo/online-state" / f"step-{step}/task.json").read_text() == \
            (one / "grpo/online-state" / f"step-{step}/task.json").read_text()
    assert (two / "data/sft.jsonl").read_text() == (one / "data/sft.jsonl").read_text()
    s2, s1 = (json.loads((d / "otc_state.json").read_text()) for d in (two, one))
    assert s2["params"] == s1["params"]
    assert {k: _drop(v, ("runtime_s",)) for k, v in s2["finished"].items()} == \
        {k: _drop(v, ("runtime_s",)) for k, v in s1["finished"].items()}
    s2, s1 = (json.loads((d / "summary.json").read_text()) for d in (two, one))
    assert _drop(s2, ("runtime_s", "stage_runtime_s")) == _drop(s1, ("runtime_s", "stage_runtime_s"))
    assert not list(two.glob("*.tmp"))
