"""recipe_params.sft_lr_scale of the recipes whose warm-up SFT precedes a DPO-family stage (raft_ladder, dstc, itool;
preflab.recipe_sft_lr): the SFT stages train at learning_rate x scale (Wang et al. 2025, "Implicit Reward as the
Bridge", methods/objectives.md §C #10: lower the SFT learning rate before DPO), read back from each stage's optimizer
and scheduler; the preference stages and the SFT controls that stand in for them are untouched, and 1.0 is the recipe
as before (stage configs, weights, state params and summary). The recipes without such a stage refuse the option."""
import json

import pytest
import yaml

import preflab.loops.offline as offline
from preflab.errors import ConfigError
from preflab.ladder import recipe as ladder
from preflab.recipes import RECIPES, check_recipe_params
from preflab.tool_use import dstc, itool
from preflab.tool_use.dstc_task import assert_line, program

# recipe -> (its function, tiny options, state file, the SFT stages' learning rate, {other stage: its learning rate})
RECIPE_RUNS = {
    "raft_ladder": (ladder.run_raft_ladder, {"n_train": 16, "n_test": 2, "sft_steps": 1, "dpo_steps": 1},
                    ladder.STATE_FILE, ladder.SFT["learning_rate"],
                    {"dpo": ladder.DPO["learning_rate"], "control": ladder.DPO["learning_rate"]}),
    "dstc": (dstc.run_dstc, {"n_sft_tasks": 12, "n_dstc_tasks": 3, "n_test": 2, "sft_per_task": 1, "sft_steps": 1,
                             "n_codes": 2, "n_tests": 1, "iterations": 1, "dpo_steps": 1, "batch_size": 4,
                             "hidden_size": 32, "timeout_s": 1.0, "control": True},
             dstc.STATE_FILE, 3e-3, {"dpo": 3e-4, "control": 3e-4}),
    "itool": (itool.run_itool, {"n_train": 40, "n_test": 2, "pool_size": 14, "sft_steps": 1, "iterations": 1,
                                "mcts_iters": 1, "num_actions": 2, "hidden_size": 32, "max_new_tokens": 8,
                                "accept_value": -10.0},
              itool.STATE_FILE, itool.SFT["learning_rate"], {"simpo": 1e-4, "control_1": 1e-4}),
}
SFT_STAGES = {"raft_ladder": {"sft"}, "dstc": {"sft"}, "itool": {"sft_1_easy", "sft_2_medium", "sft_3_hard"}}


@pytest.fixture
def stage_lrs(monkeypatch):
    """[(stage folder name, the optimizer's initial lr of every param group, the scheduler's base lrs)] of every
    offline Trainer (SFTTrainer included) a recipe trains."""
    seen = []
    train = offline.Trainer.train

    def recording(self, *args, **kwargs):
        seen.append((self.out.name, [g["initial_lr"] for g in self.optimizer.param_groups],
                     list(self.scheduler.base_lrs)))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(offline.Trainer, "train", recording)
    return seen


@pytest.fixture(autouse=True)
def dstc_pairs(monkeypatch):
    """dstc's sampler plus, per task, the gold program, the buggy one and a right test, so that the tiny model's
    iteration has pairs to train DPO on (as tests/tools/dstc_launch.py's, without its sandbox timeout)."""
    real = dstc.sample_candidates

    def sample(model, tokenizer, tasks, n_codes, n_tests, *, temperature, seed, **kw):
        out = real(model, tokenizer, tasks, n_codes, n_tests, temperature=temperature, seed=seed, **kw)
        return [(codes + [program(t.first, t.second), program(t.first, t.second, True)],
                 tests + [assert_line(0, t.gold(0))]) for t, (codes, tests) in zip(tasks, out)]

    monkeypatch.setattr(dstc, "sample_candidates", sample)


def _run(task: str, out, **options) -> dict:
    fn, tiny, *_ = RECIPE_RUNS[task]
    return fn(str(out), quiet=True, **tiny, **options)


@pytest.mark.parametrize("task", sorted(RECIPE_RUNS))
def test_sft_lr_scale_sets_the_sft_stages_optimizer_lr_and_leaves_dpo_alone(task, tmp_path, stage_lrs):
    _, _, state_file, sft_lr, others = RECIPE_RUNS[task]
    summary = _run(task, tmp_path / "scaled", sft_lr_scale=0.2)
    stages = {name for name, _, _ in stage_lrs}
    assert SFT_STAGES[task] <= stages and set(others) <= stages
    for name, groups, base in stage_lrs:
        want = sft_lr * 0.2 if name in SFT_STAGES[task] else others[name]
        assert groups == base == [pytest.approx(want, rel=1e-12)] * len(groups), name
    assert summary["sft_lr_scale"] == 0.2 and summary["sft_learning_rate"] == pytest.approx(sft_lr * 0.2, rel=1e-12)
    state = json.loads((tmp_path / "scaled" / state_file).read_text())
    assert state["params"]["sft_lr_scale"] == 0.2  # a resume with another scale is refused (recipe_state)


@pytest.mark.parametrize("task", sorted(RECIPE_RUNS))
def test_sft_lr_scale_one_is_the_recipe_as_before(task, tmp_path, stage_lrs):
    _, _, state_file, sft_lr, others = RECIPE_RUNS[task]
    _run(task, tmp_path / "default")
    first = len(stage_lrs)
    _run(task, tmp_path / "one", sft_lr_scale=1.0)
    assert [name for name, _, _ in stage_lrs[:first]] == [name for name, _, _ in stage_lrs[first:]]
    for name, groups, base in stage_lrs:  # exactly the recipe's learning rates, not a product that rounds
        assert set(groups + base) == {sft_lr if name in SFT_STAGES[task] else others[name]}, name
    default, one = tmp_path / "default", tmp_path / "one"
    assert json.loads((one / state_file).read_text())["params"] == json.loads(
        (default / state_file).read_text().replace(str(default), str(one)))["params"]
    configs = sorted(p.relative_to(one) for p in one.rglob("config.yaml"))
    assert configs and configs == sorted(p.relative_to(default) for p in default.rglob("config.yaml"))
    for rel in configs:
        strip = lambda run: {k: v for k, v in yaml.safe_load((run / rel).read_text()).items()  # noqa: E731
                             if k not in ("output_dir", "dataset_name")}
        assert strip(one) == strip(default), rel
    weights = sorted(p.relative_to(one) for p in one.rglob("model.safetensors"))
    assert weights == sorted(p.relative_to(default) for p in default.rglob("model.safetensors"))
    for rel in weights:
        assert (one / rel).read_bytes() == (default / rel).read_bytes(), rel
    summary = json.loads((one / "summary.json").read_text())
    assert "sft_lr_scale" not in summary and "sft_learning_rate" not in summary
    assert "sft_lr_scale" not in json.dumps(summary.get("params", {}))


@pytest.mark.parametrize("task", sorted(RECIPE_RUNS))
@pytest.mark.parametrize("bad", [0, -0.5, float("inf"), float("nan")])
def test_sft_lr_scale_must_be_positive(task, tmp_path, bad):
    with pytest.raises(ConfigError, match=rf"task {task}: recipe_params.sft_lr_scale must be a number > 0"):
        _run(task, tmp_path / "bad", sft_lr_scale=bad)
    assert not (tmp_path / "bad").exists()  # refused before anything ran


@pytest.mark.parametrize("task", sorted(set(RECIPES) - set(RECIPE_RUNS)))
def test_sft_lr_scale_is_refused_by_recipes_without_an_sft_stage_before_dpo(task):
    """icpl, themis, fspo (no SFT stage), otc and pro_orchestrator (SFT before GRPO, not a DPO-family stage): the
    option is refused before anything runs, naming the recipe and its options."""
    from preflab.recipe_sft_lr import NOT_TAKEN, TASKS

    with pytest.raises(ConfigError, match=rf"recipe_params \['sft_lr_scale'\] are not options of task '{task}'") as err:
        check_recipe_params(task, {"sft_lr_scale": 0.5})
    assert (f"sft_lr_scale scales the learning rate of the SFT stage before DPO (Wang et al. 2025) in raft_ladder, "
            f"dstc, itool; task {task} does not take it: {NOT_TAKEN[task]}.") in str(err.value)
    assert set(TASKS) == set(RECIPE_RUNS) and set(NOT_TAKEN) == set(RECIPES) - set(TASKS)


def test_the_recipes_that_take_sft_lr_scale_are_those_whose_function_has_it():
    import inspect

    from preflab.recipe_sft_lr import TASKS
    from preflab.recipes import recipe_function

    assert {t for t in RECIPES if "sft_lr_scale" in inspect.signature(recipe_function(t)).parameters} == set(TASKS)


def test_sft_lr_scale_is_a_recipe_option_of_dstc_and_itool():
    for task in RECIPE_RUNS:
        params = {"sft_lr_scale": "5e-1"}  # YAML's text number, as the other float options
        check_recipe_params(task, params)
        assert params == {"sft_lr_scale": 0.5}


@pytest.mark.parametrize("bad", [{"retrieve_k": -1}, {"retrieve_k": 16}, {"n_test": 0}, {"n_train": 1},
                                 {"sft_steps": 0}, {"dpo_steps": -3}])
def test_raft_ladder_sizes_are_checked_before_anything_is_built(tmp_path, monkeypatch, bad):
    def built(*args, **kwargs):
        raise AssertionError("the task was built: the check came too late")

    monkeypatch.setattr(ladder, "make_ladder_rows", built)
    params = {**RECIPE_RUNS["raft_ladder"][1], **bad}
    with pytest.raises(ConfigError) as err:
        ladder.run_raft_ladder(str(tmp_path / "bad"), **params)
    assert str(err.value) == (
        "raft_ladder recipe_params: need n_train >= 2, n_test >= 1 (held-out instructions), 0 <= retrieve_k < "
        "n_train (examples retrieved into each prompt) and sft_steps, dpo_steps >= 1 when set; got "
        f"n_train={params['n_train']}, n_test={params['n_test']}, retrieve_k={params.get('retrieve_k', 1)}, "
        f"sft_steps={params['sft_steps']}, dpo_steps={params['dpo_steps']}.")
    assert not (tmp_path / "bad").exists()
