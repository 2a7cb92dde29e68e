"""Issue 15's resume contract for `task: raft_ladder` and `task: themis`: a run interrupted after stage 1 and
resumed ends with exactly the weights and summary of an uninterrupted run; an existing state without resume and a
resume with other recipe_params are refused."""
import pytest
from safetensors.torch import load_file

from preflab.errors import ConfigError
from preflab.ladder import recipe as ladder_recipe
from preflab.reward_models import themis_toy

pytestmark = pytest.mark.slow


class Interrupted(RuntimeError):
    pass


def _same_weights(a, b):
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert wa[k].equal(wb[k]), k


def _metrics(summary):
    return {k: v for k, v in summary.items() if k != "runtime_s"}


LADDER = dict(seed=0, n_train=24, n_test=3, sft_steps=3, dpo_steps=2, quiet=True)


def test_raft_ladder_resumed_after_stage_1_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    full = ladder_recipe.run_raft_ladder(str(tmp_path / "full"), **LADDER)
    out = tmp_path / "resumed"

    def stop(model):
        raise Interrupted("stage 2 starts")

    with monkeypatch.context() as m:
        m.setattr(ladder_recipe, "frozen_copy", stop)  # the DPO stage's first call
        with pytest.raises(Interrupted):
            ladder_recipe.run_raft_ladder(str(out), **LADDER)
    assert (out / "sft" / "model.safetensors").exists() and not (out / "summary.json").exists()
    with pytest.raises(ConfigError, match="resume_from_checkpoint"):  # an existing state is never overwritten
        ladder_recipe.run_raft_ladder(str(out), **LADDER)
    with pytest.raises(ConfigError, match="dpo_steps"):
        ladder_recipe.run_raft_ladder(str(out), **{**LADDER, "dpo_steps": 3}, resume=True)
    calls = []
    original_trainer = ladder_recipe.Trainer
    monkeypatch.setattr(ladder_recipe, "Trainer", lambda cfg, **kw: calls.append(cfg.loss_type) or
                        original_trainer(cfg, **kw))
    resumed = ladder_recipe.run_raft_ladder(str(out), **LADDER, resume=True)
    assert len(calls) == 2 and calls[1] == "sft"  # only the DPO stage ran again, then the control (more SFT)
    assert _metrics(resumed) == _metrics(full)
    _same_weights(out / "dpo" / "model.safetensors", tmp_path / "full" / "dpo" / "model.safetensors")
    _same_weights(out / "sft" / "model.safetensors", tmp_path / "full" / "sft" / "model.safetensors")
    _same_weights(out / "control" / "model.safetensors", tmp_path / "full" / "control" / "model.safetensors")


THEMIS = dict(steps=3, n_train=16, n_test=2, seed=0, quiet=True)


def test_themis_resumed_after_stage_1_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    full = themis_toy.run_themis_arithmetic(str(tmp_path / "full"), **THEMIS)
    out = tmp_path / "resumed"
    original = themis_toy.train_themis
    calls = []

    def train_until_stage_2(rows, tokenizer, with_trace, output_dir, *args, **kwargs):
        calls.append(with_trace)
        if not with_trace:
            raise Interrupted("stage 2 starts")
        return original(rows, tokenizer, with_trace, output_dir, *args, **kwargs)

    monkeypatch.setattr(themis_toy, "train_themis", train_until_stage_2)
    with pytest.raises(Interrupted):
        themis_toy.run_themis_arithmetic(str(out), **THEMIS)
    assert calls == [True, False] and not (out / "summary.json").exists()
    with pytest.raises(ConfigError, match="resume_from_checkpoint"):
        themis_toy.run_themis_arithmetic(str(out), **THEMIS)
    with pytest.raises(ConfigError, match="steps"):
        themis_toy.run_themis_arithmetic(str(out), **{**THEMIS, "steps": 4}, resume=True)
    monkeypatch.setattr(themis_toy, "train_themis", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    resumed = themis_toy.run_themis_arithmetic(str(out), **THEMIS, resume=True)
    assert calls == [True, False, False]  # the finished stage was loaded, not trained again
    assert _metrics(resumed) == _metrics(full)
    for stage in ("with_traces", "without_traces"):
        for name in ("model.safetensors", "value_head.safetensors"):
            _same_weights(out / stage / name, tmp_path / "full" / stage / name)


ICPL = dict(seed=0, iterations=3, samples=3, quiet=True)


def test_icpl_interrupted_in_iteration_2_and_resumed_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    import json

    from preflab.reward_design import recipe as icpl_recipe
    from preflab.reward_design.toy_bandit import BanditTask

    full = icpl_recipe.run_icpl_recipe(str(tmp_path / "full"), **ICPL)
    out = tmp_path / "resumed"
    original, calls = BanditTask.train, []

    def train_until_iteration_2(task, code):
        calls.append(code)
        if len(calls) == 5:                              # the second program of iteration 2
            raise Interrupted("iteration 2")
        return original(task, code)

    with monkeypatch.context() as m:
        m.setattr(BanditTask, "train", train_until_iteration_2)
        with pytest.raises(Interrupted):
            icpl_recipe.run_icpl_recipe(str(out), **ICPL)
    state = json.loads((out / "icpl_state.json").read_text())
    assert len(state["history"]) == 1 and state["trainer_calls"] == 3 and not (out / "summary.json").exists()
    with pytest.raises(ConfigError, match="resume_from_checkpoint"):   # an existing state is never overwritten
        icpl_recipe.run_icpl_recipe(str(out), **ICPL)
    for changed in ({"samples": 4}, {"seed": 1}, {"rater": "human"}):  # a resume with other recipe_params
        with pytest.raises(ConfigError, match=f"recipe_params \\['{next(iter(changed))}'"):
            icpl_recipe.run_icpl_recipe(str(out), **{**ICPL, **changed}, resume=True)
    calls.clear()
    monkeypatch.setattr(BanditTask, "train", lambda task, code: calls.append(code) or original(task, code))
    resumed = icpl_recipe.run_icpl_recipe(str(out), **ICPL, resume=True)
    assert len(calls) == 6                               # iterations 2 and 3 only
    assert _metrics(resumed) == _metrics(full)
