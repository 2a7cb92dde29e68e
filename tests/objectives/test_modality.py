"""Objectives declare the modality they score; a diffusion objective on a language model (or the reverse) is refused
before any model loads (issue 11, item 2: `loss_type=self_npo` trained an LM with loss 0 / DPO with beta 2500)."""
import json
from pathlib import Path

import pytest

from preflab.cli import main
from preflab.config import load_config
from preflab.errors import ConfigError
from preflab.objectives import check_modality, get_objective, list_objectives, objective_class

ROOT = Path(__file__).resolve().parents[2]
DIFFUSION = ["self_npo", "diffusion_dpo", "smpo_diffusion", "diffusion_inpo", "dcpo", "ppd"]


def test_exactly_the_diffusion_objectives_declare_the_diffusion_modality():
    declared = sorted(n for n in list_objectives() if objective_class(n).modality == "diffusion")
    assert declared == sorted(DIFFUSION)
    assert {objective_class(n).modality for n in list_objectives()} == {"text", "diffusion"}


@pytest.mark.parametrize("name", DIFFUSION)
def test_diffusion_objective_on_a_language_model_is_refused_by_the_config(name):
    with pytest.raises(ConfigError, match="scores diffusion models but task 'dpo' trains text models"):
        load_config(ROOT / "examples" / "quickstart.yaml", [f"loss_type={name}"])


def test_check_modality_by_task_name_instance_and_weighted_sum():
    check_modality(get_objective("diffusion_dpo"), "diffusion")
    check_modality("dpo", "dpo")
    check_modality(get_objective("sigmoid"), "reward")
    with pytest.raises(ConfigError, match="task 'diffusion' trains diffusion models"):
        check_modality("sigmoid", "diffusion")
    with pytest.raises(ConfigError, match="DCPO scores diffusion"):
        check_modality(get_objective(["sigmoid", "dcpo"], loss_weights=[1.0, 1.0]), "dpo")


def test_cli_refuses_before_loading_a_model_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    # a model path that does not exist: the modality error must come first
    code = main(["train", str(ROOT / "examples" / "quickstart.yaml"), "loss_type=self_npo", f"output_dir={out}",
                 "model_name_or_path=/nonexistent/model"])
    assert code != 0
    assert "task: diffusion" in capsys.readouterr().err
    assert not out.exists()


def test_objectives_command_lists_the_modality(capsys):
    assert main(["objectives", "--json"]) == 0
    infos = {i["name"]: i["modality"] for i in json.loads(capsys.readouterr().out)}
    assert infos["self_npo"] == "diffusion" and infos["dpo"] == "text"
    assert main(["objectives", "dcpo"]) == 0
    assert "[diffusion, PairBatch" in capsys.readouterr().out
