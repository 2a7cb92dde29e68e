"""raft_ladder's sft_lr_scale: the SFT stage before DPO trains at learning_rate x scale (Wang et al. 2025, "Implicit
Reward as the Bridge", methods/objectives.md §C #10: lower the SFT learning rate before DPO), read back from the
stage's optimizer and scheduler; the DPO stage is untouched, and 1.0 is the recipe as before."""
import json

import pytest
import yaml

import preflab.ladder.recipe as recipe
from preflab.errors import ConfigError
from preflab.ladder.recipe import DPO, SFT, STATE_FILE, run_raft_ladder

TINY = {"n_train": 16, "n_test": 2, "sft_steps": 1, "dpo_steps": 1, "quiet": True}


@pytest.fixture
def stage_lrs(monkeypatch):
    """[(stage folder name, the optimizer's initial lr of every param group, the scheduler's base lrs)]."""
    seen = []

    class Recording(recipe.Trainer):
        def train(self):
            seen.append((self.out.name, [g["initial_lr"] for g in self.optimizer.param_groups],
                         list(self.scheduler.base_lrs)))
            return super().train()

    monkeypatch.setattr(recipe, "Trainer", Recording)
    return seen


def test_sft_lr_scale_sets_the_sft_stages_optimizer_lr_and_leaves_dpo_alone(tmp_path, stage_lrs):
    summary = run_raft_ladder(str(tmp_path / "scaled"), sft_lr_scale=0.2, **TINY)
    (sft, sft_groups, sft_base), (dpo, dpo_groups, dpo_base) = stage_lrs
    assert (sft, dpo) == ("sft", "dpo")
    assert sft_groups == sft_base == [pytest.approx(6e-4, rel=1e-12)] * len(sft_groups)
    assert dpo_groups == dpo_base == [DPO["learning_rate"]] * len(dpo_groups)
    assert summary["sft_lr_scale"] == 0.2 and summary["sft_learning_rate"] == pytest.approx(6e-4, rel=1e-12)
    state = json.loads((tmp_path / "scaled" / STATE_FILE).read_text())
    assert state["params"]["sft_lr_scale"] == 0.2  # a resume with another scale is refused (recipe_state)


def test_sft_lr_scale_one_is_the_recipe_as_before(tmp_path, stage_lrs):
    run_raft_ladder(str(tmp_path / "default"), **TINY)
    run_raft_ladder(str(tmp_path / "one"), sft_lr_scale=1.0, **TINY)
    assert [name for name, _, _ in stage_lrs] == ["sft", "dpo"] * 2
    assert {lr for _, g, base in stage_lrs[0::2] for lr in g + base} == {SFT["learning_rate"]}  # exactly 3e-3
    assert {lr for _, g, base in stage_lrs[1::2] for lr in g + base} == {DPO["learning_rate"]}
    default, one = tmp_path / "default", tmp_path / "one"
    assert (default / STATE_FILE).read_text() == (one / STATE_FILE).read_text().replace(str(one), str(default))
    for stage in ("sft", "dpo"):
        cfg = {k: v for k, v in yaml.safe_load((one / stage / "config.yaml").read_text()).items()
               if k not in ("output_dir", "dataset_name")}
        assert cfg == {k: v for k, v in yaml.safe_load((default / stage / "config.yaml").read_text()).items()
                       if k not in ("output_dir", "dataset_name")}
        assert (one / stage / "model.safetensors").read_bytes() == (default / stage / "model.safetensors").read_bytes()
    assert "sft_lr_scale" not in json.loads((one / "summary.json").read_text())


@pytest.mark.parametrize("bad", [0, -0.5, float("inf")])
def test_sft_lr_scale_must_be_positive(tmp_path, bad):
    with pytest.raises(ConfigError, match=r"recipe_params.sft_lr_scale must be a number > 0"):
        run_raft_ladder(str(tmp_path / "bad"), sft_lr_scale=bad, **TINY)


@pytest.mark.parametrize("bad", [{"retrieve_k": -1}, {"retrieve_k": 16}, {"n_test": 0}, {"n_train": 1},
                                 {"sft_steps": 0}, {"dpo_steps": -3}])
def test_raft_ladder_sizes_are_checked_before_anything_is_built(tmp_path, monkeypatch, bad):
    def built(*args, **kwargs):
        raise AssertionError("the task was built: the check came too late")

    monkeypatch.setattr(recipe, "make_ladder_rows", built)
    params = {**TINY, **bad}
    with pytest.raises(ConfigError) as err:
        run_raft_ladder(str(tmp_path / "bad"), **params)
    assert str(err.value) == (
        "raft_ladder recipe_params: need n_train >= 2, n_test >= 1 (held-out instructions), 0 <= retrieve_k < "
        "n_train (examples retrieved into each prompt) and sft_steps, dpo_steps >= 1 when set; got "
        f"n_train={params['n_train']}, n_test={params['n_test']}, retrieve_k={params.get('retrieve_k', 1)}, "
        f"sft_steps={params['sft_steps']}, dpo_steps={params['dpo_steps']}.")
    assert not (tmp_path / "bad").exists()
