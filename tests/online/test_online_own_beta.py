"""The online recipes whose objective TRL does not have (`trainer: sppo`, `gpo`, `tpo`) train at their objective's
own beta when the config leaves beta out (preflab.objectives._own_beta, through preflab.online_recipes.
recipe_loss_type), as offline `loss_type: sppo` does: 0.001, 0.001, 0.5. Before, they trained at TrainConfig's 0.1,
so `loss_type: sppo` offline and `trainer: sppo` online disagreed. The preference game (online_task: game) keeps 0.1:
there beta is the game's KL strength too, and the start says so."""
import dataclasses
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_online_run import tiny_cfg, tiny_run  # noqa: E402
from resume_mid_run import logged_losses, resume_mid_run  # noqa: E402  tests/, on sys.path beside conftest

from preflab.config import TrainConfig, config_from_dict, load_config  # noqa: E402
from preflab.errors import ConfigError  # noqa: E402
from preflab.eval.run import eval_beta  # noqa: E402
from preflab.models.run_config import run_config  # noqa: E402
from preflab.report.plots import beta_label  # noqa: E402
from preflab.report.runs import load_run  # noqa: E402

OWN = {"sppo": ("sppo", 0.001), "gpo": ("gpo", 0.001), "tpo": ("tpo_tree", 0.5)}
# gpo regresses on finite preference log-odds: a reward judge needs preference_temperature > 0
EXTRA = {"sppo": {}, "gpo": {"preference_temperature": 0.5}, "tpo": {}}


def _over(trainer, **more):
    return {"trainer": trainer, **EXTRA[trainer], **more}


@pytest.mark.parametrize("trainer", sorted(OWN))
def test_an_unset_beta_is_the_recipe_objectives_own_default_said_once(trainer, tmp_path, capsys):
    objective, own = OWN[trainer]
    cfg = tiny_cfg(tmp_path, **_over(trainer))
    assert (cfg.loss_type, cfg.beta, cfg.objective().beta) == (objective, own, own)
    assert capsys.readouterr().err.count(f"preflab: note: beta: {own} ({objective}'s own default; beta is not set") == 1
    # TrainConfig(...) from Python resolves it the same way (the recipe's objective, before check() sets loss_type)
    assert TrainConfig(task="online", online_task="demo", trainer=trainer, model_name_or_path="builtin:tiny-llama",
                       max_steps=2, **EXTRA[trainer]).beta == own
    # a written beta wins, 0.1 included, without a note
    assert tiny_cfg(tmp_path, **_over(trainer, beta=0.1)).beta == 0.1
    assert "own default" not in capsys.readouterr().err


def test_the_recipes_with_trls_or_a_01_objective_keep_their_default(tmp_path):
    """online_dpo (sigmoid), rso (hinge_norm), upo, mcts_dpo, hypo_online_pairs: 0.1; the GRPO family and rloo:
    TRL's GRPOConfig / RLOOConfig defaults (0.0, 0.05; preflab.config_trl.apply_trl_defaults); a loss_type written
    for a pair recipe takes that objective's own default, as offline."""
    for trainer in ("online_dpo", "iterative_dpo", "rso", "upo", "hypo_online_pairs"):
        assert tiny_cfg(tmp_path, trainer=trainer).beta == 0.1, trainer
    assert tiny_cfg(tmp_path, trainer="grpo").beta == 0.0
    assert tiny_cfg(tmp_path, trainer="rloo").beta == 0.05
    assert tiny_cfg(tmp_path, trainer="iterative_dpo", loss_type="sppo").beta == 0.001


def _weights(run):
    return {k: v.clone() for k, v in run.policy.state_dict().items()}


@pytest.mark.parametrize("trainer", sorted(OWN))
def test_an_unset_beta_trains_exactly_the_written_paper_value_and_not_01(trainer, tmp_path):
    """The run without beta and the run with beta written to the paper's value: the same weights bit for bit and
    the same logged losses; the run at 0.1 (the former default) ends elsewhere. config.yaml records the value with
    its comment, which `preflab eval` and the report read."""
    _, own = OWN[trainer]
    runs = {}
    for name, extra in (("unset", {}), ("written", {"beta": own}), ("old", {"beta": 0.1})):
        run = tiny_run(tiny_cfg(tmp_path / name, **_over(trainer, **extra)))
        run.train()
        runs[name] = _weights(run)
    assert runs["unset"].keys() == runs["written"].keys()
    assert all(bool((runs["unset"][k] == runs["written"][k]).all()) for k in runs["unset"])
    assert logged_losses(tmp_path / "unset") == logged_losses(tmp_path / "written")
    assert max(float((runs["unset"][k] - runs["old"][k]).abs().max()) for k in runs["unset"]) > 1e-4
    assert logged_losses(tmp_path / "unset") != logged_losses(tmp_path / "old")
    text = (tmp_path / "unset" / "config.yaml").read_text()
    assert f"# beta: {own} (" in text and yaml.safe_load(text)["beta"] == own
    assert "own default" not in (tmp_path / "written" / "config.yaml").read_text()
    assert run_config(tmp_path / "unset")["beta"] == own and eval_beta(None, run_config(tmp_path / "unset"))[0] == own
    assert load_config(tmp_path / "unset" / "config.yaml").beta == own
    assert beta_label(load_run(tmp_path / "unset")) == f"{own:g}"  # the report's beta: config.yaml's


def test_a_resume_of_an_unset_sppo_run_keeps_its_beta_and_refuses_01(tmp_path, stop_at_step):
    """A run without beta stopped mid-round and resumed without beta trains on at 0.001 and ends with the
    uninterrupted run's weights; resuming it with beta 0.1 written is refused (the beta moved)."""
    full, resumed = resume_mid_run(lambda folder, **extra: tiny_run(tiny_cfg(folder, **_over("sppo", **extra))),
                                   tmp_path, stop_at_step, stop=4)
    assert resumed.cfg.beta == 0.001 and resumed.objective.beta == 0.001
    assert yaml.safe_load((tmp_path / "cut" / "config.yaml").read_text())["beta"] == 0.001
    with pytest.raises(ConfigError, match="beta"):
        tiny_run(tiny_cfg(tmp_path / "cut", **_over("sppo", beta=0.1, save_steps=3,
                                                    resume_from_checkpoint=True))).train()


GAME = {"model_name_or_path": "builtin:tiny-llama", "task": "online", "online_task": "game",
        "game_preferences": [[0.5, 0.7], [0.3, 0.5]], "max_steps": 2}


def test_the_game_keeps_01_for_sppo_and_says_why(tmp_path, capsys):
    """In online_task: game, beta is the game's KL strength (its equilibrium pi*_beta and duality gap): sppo there
    keeps 0.1 when unset, the start and config.yaml say so; a written beta still wins; the other game trainers'
    objectives have no own default apart from 0.1, so no note."""
    cfg = config_from_dict({**GAME, "trainer": "sppo"})
    assert (cfg.loss_type, cfg.beta, cfg.objective().beta) == ("sppo", 0.1, 0.1)
    note = "beta: 0.1 (beta is not set; in online_task: game beta is the game's KL strength"
    assert capsys.readouterr().err.count(note) == 1 and "sppo's own default (0.001) is not used" in cfg.own_beta_note()
    cfg.save(tmp_path / "config.yaml")
    assert f"# {note}" in (tmp_path / "config.yaml").read_text()
    assert config_from_dict({**GAME, "trainer": "sppo", "beta": 0.001}).beta == 0.001
    # a program's other beta (not written by the user) gets no comment claiming 0.1
    assert dataclasses.replace(cfg, beta=0.3).own_beta_note() is None
    for trainer in ("inpo", "online_ipo", "egpo", "nash_md"):
        assert config_from_dict({**GAME, "trainer": trainer}).beta == 0.1
        assert "beta" not in capsys.readouterr().err
