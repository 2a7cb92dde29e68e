"""An unset beta with an objective TRL does not have (asft, tpo_tree, rpo, sppo, gpo, f_sft) trains at the objective's
own default, not TrainConfig's 0.1 (preflab.objectives._own_beta); TRL's loss types and an explicit beta keep theirs.
Before, every objective with a beta field got the run's 0.1: asft trained its tempered variant, sppo / gpo regressed
onto targets 100x smaller than their papers', all without a word."""
import dataclasses
import json

import pytest
import torch
import yaml

from preflab.cli import main
from preflab.config import TrainConfig, config_from_dict, load_config
from preflab.errors import ConfigError
from preflab.eval.run import eval_beta
from preflab.loops.offline import Trainer
from preflab.models.run_config import run_config
from preflab.objectives import objective_class
from preflab.resume_check import compare_configs
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest

BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "data.jsonl"}
PAPER_ONLY = {"asft": 1.0, "tpo_tree": 0.5, "rpo": 0.5, "sppo": 0.001, "gpo": 0.001, "f_sft": 1.0}


def _class_default(name):
    return next(f.default for f in dataclasses.fields(objective_class(name)) if f.name == "beta")


@pytest.mark.parametrize("name", sorted(PAPER_ONLY))
def test_an_unset_beta_trains_the_paper_objectives_own_default(name, tmp_path, capsys):
    own = PAPER_ONLY[name]
    assert _class_default(name) == own  # the table above is the classes' own declaration
    cfg = config_from_dict({**BASE, "loss_type": name})
    assert cfg.beta == own and cfg.objective().beta == own
    err = capsys.readouterr().err
    assert err.count(f"preflab: note: beta: {own} ({name}'s own default; beta is not set") == 1
    cfg.save(tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert yaml.safe_load(text)["beta"] == own
    assert f"# beta: {own} ({name}'s own default; beta is not set, so not TRL's 0.1; set beta to override).\n" \
           f"beta: {own}\n" in text
    # the saved config reads back to the same beta (a resume from config.yaml, or `preflab train config.yaml`)
    assert load_config(tmp_path / "config.yaml").beta == own
    # TrainConfig(...) from Python resolves it too
    assert dataclasses.replace(cfg).beta == own
    assert type(cfg)(**BASE, loss_type=name).beta == own


@pytest.mark.parametrize("name", sorted(PAPER_ONLY))
def test_an_explicit_beta_wins_even_at_01(name, tmp_path, capsys):
    cfg = config_from_dict({**BASE, "loss_type": name, "beta": 0.1})
    assert cfg.beta == 0.1 and cfg.objective().beta == 0.1
    assert "own default" not in capsys.readouterr().err
    cfg.save(tmp_path / "c.yaml")
    assert "own default" not in (tmp_path / "c.yaml").read_text()
    (tmp_path / "user.yaml").write_text(yaml.safe_dump({**BASE, "loss_type": name}))
    assert load_config(tmp_path / "user.yaml", ["beta=0.1"]).beta == 0.1  # an override is written too
    assert load_config(tmp_path / "user.yaml").beta == PAPER_ONLY[name]
    assert type(cfg)(**BASE, loss_type=name, beta=0.1).beta == 0.1


def test_vlm_takes_the_rule(capsys):
    cfg = config_from_dict({**BASE, "task": "vlm", "model_name_or_path": "builtin:tiny-llava", "loss_type": "sppo"})
    assert cfg.beta == 0.001 and cfg.objective().beta == 0.001
    capsys.readouterr()


def test_a_beta_inside_objective_params_is_refused_naming_the_beta_option():
    """objective_params: {beta: 0.3} trained the objective at 0.3 while cfg.beta (config.yaml, eval, report, resume)
    said 0.1."""
    with pytest.raises(ConfigError, match=r"objective_params.beta=0.3: .*run's beta \(0.1\).*set `beta: 0.3` instead"):
        config_from_dict({**BASE, "loss_type": "asft", "objective_params": {"beta": 0.3}})


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "nca_pair", "sppo_hard", "apo_zero", "simpo", "alphapo", "cpo"])
def test_trls_loss_types_keep_01(name, capsys):
    """TRL's DPOConfig / CPOConfig default beta 0.1 is the drop-in behaviour, also for simpo and alphapo, whose
    classes declare the papers' 2.0 / 2.5 (used by get_objective alone)."""
    cfg = config_from_dict({**BASE, "loss_type": name})
    assert cfg.beta == 0.1 and cfg.objective().beta == 0.1
    assert "own default" not in capsys.readouterr().err


def test_a_list_takes_the_parts_shared_default_else_keeps_01_and_says_so(capsys):
    cfg = config_from_dict({**BASE, "loss_type": ["sppo", "gpo"], "loss_weights": [1.0, 0.5]})
    assert cfg.beta == 0.001 and [p.beta for p in cfg.objective().parts] == [0.001, 0.001]
    cfg = config_from_dict({**BASE, "loss_type": ["asft", "sft"]})  # sft has no beta: asft's own
    assert cfg.beta == 1.0 and cfg.objective().parts[0].beta == 1.0
    capsys.readouterr()
    cfg = config_from_dict({**BASE, "loss_type": ["dpo", "f_sft"]})  # TRL's 0.1 against f_sft's 1.0
    assert cfg.beta == 0.1 and [p.beta for p in cfg.objective().parts] == [0.1, 0.1]
    assert "parts of loss_type disagree on their own default: dpo 0.1, f_sft 1.0; the run's 0.1 is used" \
        in capsys.readouterr().err
    assert config_from_dict({**BASE, "loss_type": ["dpo", "f_sft"], "beta": 1.0}).beta == 1.0


def test_other_tasks_keep_their_rules():
    """task: online takes the rule for its recipe's objective (trainer: sppo trains sppo: 0.001, as offline; more in
    tests/online/test_online_own_beta.py) but not in the preference game, where beta is the game's KL strength;
    task: reward reads no beta; diffusion has its own default rule (preflab.config._diffusion_beta_default)."""
    online = {"model_name_or_path": "builtin:tiny-llama", "task": "online", "online_task": "demo", "trainer": "sppo",
              "max_steps": 2}
    assert config_from_dict(online).beta == 0.001
    assert config_from_dict({**online, "loss_type": "sppo"}).beta == 0.001  # the recipe's loss_type, written
    assert config_from_dict({**online, "online_task": "game", "game_preferences": [[0.5, 0.7], [0.3, 0.5]]}).beta \
        == 0.1
    assert config_from_dict({**BASE, "task": "reward"}).beta == 0.1


def test_an_old_runs_saved_01_is_kept_and_a_resume_compares_equal():
    """A config.yaml saved with beta: 0.1 (a run before this change) reads back at 0.1: a saved config writes beta.
    The user's own config (no beta) resolves to the same value the run saved, so a resume sees no beta change."""
    old = config_from_dict({**BASE, "loss_type": "asft", "beta": 0.1}).to_dict()
    assert config_from_dict(old).beta == 0.1
    saved = config_from_dict({**BASE, "loss_type": "asft"}).to_dict()
    current = config_from_dict({**BASE, "loss_type": "asft"}).to_dict()
    assert "beta" not in compare_configs(saved, current)[1]
    assert compare_configs(old, current)[1]["beta"] == (0.1, 1.0)  # refused by check_resume_config: the value moved


ROWS = [{"prompt": f"question {i} ?", "chosen": f" answer {i}", "rejected": f" wrong {i}"} for i in range(8)]


@pytest.fixture(scope="module")
def asft_run(tmp_path_factory):
    """A two-step asft run without beta (checkpoint at step 1)."""
    root = tmp_path_factory.mktemp("own_beta")
    write_jsonl(root / "train.jsonl", ROWS)
    options = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": str(root / "train.jsonl"),
               "loss_type": "asft", "output_dir": str(root / "run"), "max_steps": 2, "save_steps": 1,
               "per_device_train_batch_size": 4, "learning_rate": 1e-3, "max_length": 64, "disable_tqdm": True,
               "use_cpu": True, "seed": 3, "report_to": "none"}
    torch.set_num_threads(1)
    Trainer(config_from_dict(options)).train()
    return root, options


def test_the_run_saves_and_eval_reads_the_resolved_beta(asft_run):
    root, _ = asft_run
    cfg = run_config(root / "run")
    assert cfg["beta"] == 1.0
    assert "# beta: 1.0 (asft's own default" in (root / "run" / "config.yaml").read_text()
    assert eval_beta(None, cfg)[0] == 1.0
    assert main(["eval", str(root / "run"), "--data", str(root / "train.jsonl"), "--out", str(root / "eval.json"),
                 "--device", "cpu"]) == 0
    result = json.loads((root / "eval.json").read_text())
    assert (result["beta"], result["beta_source"]) == (1.0, "run config")


def test_a_resume_without_beta_trains_the_same_beta_and_an_explicit_01_is_refused(asft_run, tmp_path):
    root, options = asft_run
    resumed = {**options, "output_dir": str(tmp_path / "resumed"),
               "resume_from_checkpoint": str(root / "run" / "checkpoint-1")}
    trainer = Trainer(config_from_dict(resumed))
    assert trainer.cfg.beta == 1.0 and trainer.objective.beta == 1.0
    trainer.train()
    assert yaml.safe_load((tmp_path / "resumed" / "config.yaml").read_text())["beta"] == 1.0
    with pytest.raises(ConfigError, match="beta"):
        Trainer(config_from_dict({**resumed, "output_dir": str(tmp_path / "other"), "beta": 0.1})).train()


DIFFUSION = {"task": "diffusion", "model_name_or_path": "builtin:tiny-sd", "dataset_name": "x.jsonl"}


def test_a_diffusion_list_takes_its_parts_shared_own_default_and_refuses_disagreeing_ones(capsys):
    """A diffusion loss_type list without beta trained every part at the text objectives' 0.1 without a word (the
    single-name rule, preflab.config._diffusion_beta_default, skipped lists): now the parts' shared own default
    (diffusion_dpo and ppd: 5000) is used and said; parts that disagree (diffusion_dpo 5000, dcpo 500) are refused,
    naming each, and a written beta wins."""
    cfg = config_from_dict({**DIFFUSION, "loss_type": ["diffusion_dpo", "ppd"]})
    assert cfg.beta == 5000.0 and [p.beta for p in cfg.objective().parts] == [5000.0, 5000.0]
    assert "diffusion_dpo, ppd's own default beta=5000 is used" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"disagree on their own default beta \(diffusion_dpo 5000, dcpo 500\)"
                                          r".*set beta"):
        config_from_dict({**DIFFUSION, "loss_type": ["diffusion_dpo", "dcpo"]})
    cfg = config_from_dict({**DIFFUSION, "loss_type": ["diffusion_dpo", "dcpo"], "beta": 1000.0})
    assert [p.beta for p in cfg.objective().parts] == [1000.0, 1000.0]


@pytest.mark.parametrize("loss_type, own", [("diffusion_dpo", 5000.0), ("dcpo", 500.0), (["diffusion_dpo", "ppd"],
                                                                                          5000.0)])
def test_a_diffusion_config_built_in_python_takes_the_objectives_own_beta_as_a_file_does(loss_type, own, capsys):
    """TrainConfig(task="diffusion", ...) trained at 0.1 where the same options in a file trained at the objective's
    own default (only the file loader applied the rule); now both paths go through TrainConfig.__post_init__, and a
    saved config (every option given) keeps its value."""
    options = {**DIFFUSION, "loss_type": loss_type}
    in_python, from_file = TrainConfig(**options), config_from_dict(options)
    assert in_python.beta == from_file.beta == own
    assert capsys.readouterr().err.count(f"own default beta={own:g} is used") == 2
    assert TrainConfig(**options, beta=0.1).beta == 0.1  # a given beta wins, TrainConfig's own default included
    assert dataclasses.replace(in_python, beta=7.0).beta == 7.0
    with pytest.raises(ConfigError, match="disagree on their own default beta"):
        TrainConfig(**{**DIFFUSION, "loss_type": ["diffusion_dpo", "dcpo"]})
