"""Extras that must carry gradient are refused as data columns (issue 11, item 3): `rationale_dpo`'s rationale
log-probs, `hypo`'s on-policy term and `vpo` with calibration=extra, read from data, are constants, so the run was
plain DPO with a different logged loss."""
import json
from pathlib import Path

import pytest

from preflab.cli import main
from preflab.errors import ConfigError, MissingExtraError
from preflab.objectives import PairBatch, check_gradient_extras, get_objective, list_objectives, objective_class

ROOT = Path(__file__).resolve().parents[2]


def _data(tmp_path, **columns):
    rows = [json.loads(x) for x in (ROOT / "examples/data/loud_echo_pairs.jsonl").read_text().splitlines()[:16]]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({**r, **columns}) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name, params, columns, fix", [
    ("rationale_dpo", [], {"rationale_logps": -5.0}, "rationale"),
    ("rationale_orpo", [], {"rationale_logps": -1.0}, "rationale"),
    # preflab train runs hypo with the paper's split (preflab.online.hypo_offline): it computes these, and refuses the columns
    ("hypo", ["max_completion_length=16"], {"online_policy_logps": [-5.0, -6.0], "online_ref_logps": [-5.5, -6.5]},
     "Remove the column"),
    ("vpo", ["calibration=extra"], {"calibration_logps": -4.0}, "calibration=chosen"),
    # computed by its degree head (preflab.loops.degree_head), the objective's extras producer
    ("spo_degree", ["degrees=2"], {"degree_logits": [0.0, 0.0, 0.0], "degree_labels": 1}, "Remove the column"),
])
def test_train_refuses_constant_columns_for_gradient_extras(tmp_path, capsys, name, params, columns, fix):
    code = main(["train", str(ROOT / "examples/quickstart.yaml"), f"loss_type={name}", *params,
                 f"dataset_name={_data(tmp_path, **columns)}", f"output_dir={tmp_path / 'out'}", "max_steps=1",
                 "eval_fraction=0", "disable_tqdm=true"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "with gradient" in err and "constants" in err and fix in err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_vpo_with_chosen_calibration_still_trains_offline():
    check_gradient_extras(get_objective("vpo"))
    with pytest.raises(ConfigError, match="calibration_logps"):
        check_gradient_extras(get_objective("vpo", calibration="extra"))
    check_gradient_extras(get_objective("vpo", calibration="extra"), computed=("calibration_logps",))


def test_declared_gradient_extras():
    declared = {n: objective_class(n).gradient_extras for n in list_objectives()
                if isinstance(objective_class(n).gradient_extras, tuple) and objective_class(n).gradient_extras}
    assert declared == {"rationale_dpo": ("rationale_logps",), "rationale_orpo": ("rationale_logps",),
                        "hypo": ("online_policy_logps",), "spo_degree": ("degree_logits",)}


def test_missing_gradient_extra_says_the_loop_must_score_it_not_add_a_column():
    batch = PairBatch.from_sums([-1.0], [-2.0], [-1.0], [-2.0])
    with pytest.raises(MissingExtraError) as err:
        get_objective("hypo")(batch)
    assert "must carry gradient" in str(err.value) and "Add a" not in str(err.value)
    with pytest.raises(MissingExtraError) as err:
        get_objective("vpo", calibration="extra")(batch)
    assert "must carry gradient" in str(err.value) and "Add a" not in str(err.value)
    with pytest.raises(MissingExtraError, match="Add a 'similarity' column"):  # a data extra keeps the data hint
        get_objective("sem_dpo")(batch)
