"""preflab.recipe_state: the shared weight loader of the recipes' stages (OTC, DSTC, iTool, raft_ladder, themis)."""
import pytest
import torch
from safetensors.torch import save_file

from preflab.errors import ConfigError
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.recipe_state import load_safetensors_into


def _model(hidden_size=32, seed=0):
    return tiny_causal_lm(tiny_tokenizer("char"), arch="llama", hidden_size=hidden_size, num_layers=2, num_heads=4,
                          seed=seed)


def test_load_safetensors_into_is_exact_and_refuses_a_file_that_does_not_fit(tmp_path):
    saved = _model(seed=0)
    saved.save_pretrained(tmp_path / "stage", safe_serialization=True)   # how a stage's run writes its weights
    path = tmp_path / "stage" / "model.safetensors"
    loaded = _model(seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()))
    load_safetensors_into(loaded, path)       # rotary inv_freq is a non-persistent buffer: in neither, not "missing"
    assert all(torch.equal(saved.state_dict()[k], v) for k, v in loaded.state_dict().items())
    with pytest.raises(ConfigError, match=r"model\.safetensors does not fit .*other shapes \['lm_head\.weight'"):
        load_safetensors_into(_model(hidden_size=64), path)
    state = dict(saved.state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["model.norm.weight"]
    save_file(state, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ConfigError, match=r"odd\.safetensors does not fit .*missing \['model\.norm\.weight'\], "
                                          r"unexpected \['extra\.weight'\]"):
        load_safetensors_into(_model(), tmp_path / "odd.safetensors")


@pytest.mark.parametrize("checkpoints", [False, True])
def test_a_recipe_interrupted_in_a_stage_says_to_resume_the_recipe_not_the_stage(tmp_path, monkeypatch, checkpoints):
    """docs-trial: SIGTERM in raft_ladder's DPO stage printed only the stage's folder, "holds no finished checkpoint
    of this run ...: its steps are lost and a new start begins again at step 0", as if the whole recipe (its finished
    400-step SFT stage too) were lost. The message now names the recipe's resume and what it does with the stage."""
    import preflab.recipes as recipes
    from preflab.cli import Terminated, interrupted_message
    from preflab.config import config_from_dict
    from preflab.recipe_state import RecipeState

    def recipe(output_dir, resume):
        state = RecipeState(output_dir, "toy_state.json", {}, resume)
        state.stage("sft", lambda folder: {"done": 1}, load=lambda folder: None)

        def interrupted(folder, resume=False):
            folder.mkdir(parents=True)
            err = Terminated()
            err.preflab_output_dir = folder  # as TrainingRun.train puts it on the interrupt
            raise err

        state.stage("dpo", interrupted, load=lambda folder: None, checkpoints=checkpoints)

    monkeypatch.setattr(recipes, "recipe_function", lambda task: recipe)
    out = tmp_path / "run"
    with pytest.raises(Terminated) as caught:
        recipes.run_recipe(config_from_dict({"task": "raft_ladder", "output_dir": str(out)}))
    why = "no checkpoint of it was finished" if checkpoints else "this recipe reruns an interrupted stage from its start"
    assert interrupted_message(caught.value) == (
        f"preflab: terminated (SIGTERM). The recipe (task: raft_ladder) keeps its finished stages in {out}: rerun the "
        f"same command with resume_from_checkpoint=true to continue from them. The interrupted stage {out / 'dpo'} "
        f"starts again at step 0 ({why}).")


def test_finish_recipe_writes_the_summary_then_closes_the_process_group(tmp_path, monkeypatch):
    """A recipe's end: summary.json holds the summary it returns, written before the process group is closed (the
    other processes wait for the main one's write; closing first would leave them nothing to wait with)."""
    import json

    import preflab.recipe_state as recipe_state

    closed_after_summary = []
    monkeypatch.setattr(recipe_state, "end_processes",
                        lambda: closed_after_summary.append((tmp_path / "summary.json").is_file()))
    summary = {"metric_before": 0.25, "metric_after": 0.75, "stages": ["sft", "grpo"]}
    assert recipe_state.finish_recipe(tmp_path, summary) is summary
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert closed_after_summary == [True]
