"""DPA eval direction pairs given as an angle (`direction_angle`, v = (cos t, sin t)) and rows with a `context`
(preflab.reward_models.attribute_eval): an angle row scores exactly as its unit-vector row; per-direction accuracies
of a hand-set counting model equal hand-computed fractions, on the terminal (one line) and in `preflab report`'s
eval table; an angle on a model of three attributes, a bad angle, two directions in one row and a context are bad
rows naming file, row and field (counted when skipped)."""
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from preflab.errors import DataError
from preflab.models.tiny import tiny_tokenizer
from preflab.reward_models.attribute_eval import evaluate_attribute_model

sys.path.insert(0, str(Path(__file__).parent))
from test_attribute_eval import PAIRS, RATED, CountingRewardModel  # noqa: E402

ANGLES = [0, 30, 90, -45, 120, 200.5]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _angle_pairs(key):
    """One pair per angle; `key` "angle" gives it as direction_angle, "vector" as [cos t, sin t]."""
    rows = []
    for i, t in enumerate(ANGLES):
        row = {"prompt": "q?", "chosen": " x" * (i % 3) + " y", "rejected": " y" * (i % 2 + 1) + " x"}
        if key == "angle":
            row["direction_angle"] = t
        else:
            row["direction"] = [math.cos(math.radians(t)), math.sin(math.radians(t))]
        rows.append(row)
    return rows


def test_an_angle_row_gives_exactly_what_its_unit_vector_row_gives():
    """The whole result (accuracy, margin, per_direction keys, counts and labels) is equal, in a file that also
    holds rated rows and weight pairs, and an angle row and a [1, 0] row are one direction."""
    tokenizer = tiny_tokenizer()
    model = CountingRewardModel(tokenizer)
    by_angle = evaluate_attribute_model(model, RATED + _angle_pairs("angle") + PAIRS, tokenizer, batch_size=3)
    by_vector = evaluate_attribute_model(model, RATED + _angle_pairs("vector") + PAIRS, tokenizer, batch_size=3)
    assert by_angle == by_vector
    assert by_angle["num_pairs"] == len(ANGLES) + len(PAIRS)
    assert by_angle["per_direction"]["[1.0, 0.0]"]["num_pairs"] == 2  # angle 0 and PAIRS[0]'s [1, 0]
    # angle 90 is (6.1e-17, 1), not PAIRS[1]'s (0, 1): both would be "90deg", so both are named by their whole key
    assert [e["label"] for e in by_angle["per_direction"].values()] == [
        "0deg", "30deg", json.dumps([math.cos(math.radians(90)), 1.0]), "-45deg", "120deg", "-159.5deg",
        "[0.0, 1.0]", "[0.5,0.5]", "[1,1]"]


# counts r = (#x, #y); rows: (chosen, rejected, how the direction is given); v^T r(chosen) - v^T r(rejected)
HAND = [
    (" x x", " y", {"direction_angle": 0}),             # 2 - 0 > 0: right
    (" y y y", " x", {"direction": [1, 0]}),             # 0 - 1: wrong          -> 0deg 1/2
    (" y y", " x x x", {"direction_angle": 90}),        # 2 - 3 cos 90 > 0: right
    (" x", " y", {"direction_angle": 90}),              # cos 90 - 1: wrong
    (" x y y", " y", {"direction_angle": 90.0}),        # cos 90 + 1: right      -> 90deg 2/3
    (" x y y", " x", {"direction_angle": 45}),          # 2 sin 45: right        -> 45deg 1/1
    (" x", " y y", {"direction": [0.5, 0.5]}),          # 0.5 - 1: wrong         -> [0.5,0.5] 0/1
    (" y", " x", {"direction": {"verbosity": 2}}),     # 2 - 0: right           -> [0,2] 1/1
    (" y", " x", {"direction_angle": -90}),             # -1 - cos 90: wrong     -> -90deg 0/1
]


def _hand_rows():
    return [{"prompt": "q?", "chosen": c, "rejected": r, **how} for c, r, how in HAND]


def test_per_direction_accuracy_of_a_counting_model_equals_the_hand_computed_fractions():
    tokenizer = tiny_tokenizer()
    result = evaluate_attribute_model(CountingRewardModel(tokenizer), _hand_rows(), tokenizer, batch_size=2)
    assert {e["label"]: (e["accuracy"], e["num_pairs"]) for e in result["per_direction"].values()} == {
        "0deg": (1 / 2, 2), "90deg": (2 / 3, 3), "45deg": (1.0, 1), "[0.5,0.5]": (0.0, 1), "[0,2]": (1.0, 1),
        "-90deg": (0.0, 1)}
    assert result["direction_accuracy"] == 5 / 9
    c90, s45 = math.cos(math.radians(90)), math.sin(math.radians(45))
    assert result["direction_margin"] == pytest.approx(
        (2 - 1 + (2 - 3 * c90) + (c90 - 1) + (1 + c90) + 2 * s45 + (0.5 - 1) + 2 + (-1 - c90)) / 9)


def test_preflab_eval_prints_per_direction_on_one_line_and_the_report_lists_them(tmp_path, capsys):
    """A saved 2-attribute model: eval.json's metrics hold reward_model/direction/<label>/accuracy (equal to
    per_direction's), the terminal says them on one compact line (not a line each), the report's eval table has a
    row each with its meaning."""
    from preflab.cli import main
    from preflab.reward_models.attribute_eval import per_direction_lines
    from preflab.reward_models.heads import build_reward_model, set_reward_config
    from preflab.report.html import _eval_section
    from preflab.report.runs import load_run

    tokenizer = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-llama", 2, tokenizer, seed=0)
    set_reward_config(model, {"head": "multi_objective", "attributes": ["helpfulness", "verbosity"]})
    run = tmp_path / "rm"
    model.save_pretrained(run, safe_serialization=True)
    tokenizer.save_pretrained(run)
    (run / "config.yaml").write_text("task: reward\nreward_head: multi_objective\n"
                                     "reward_head_params: {attributes: [helpfulness, verbosity]}\n")
    data = _write(tmp_path / "held.jsonl", RATED + _hand_rows())
    assert main(["eval", str(run), "--data", str(data)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((run / "eval.json").read_text())
    per = report["reward_eval"]["per_direction"]
    names = {f"reward_model/direction/{e['label']}/accuracy": e["accuracy"] for e in per.values()}
    assert len(names) == 6 and {k: report["metrics"][k] for k in names} == names
    line = ", ".join(f"{e['label']} {e['accuracy']:.4f} ({e['num_pairs']})" for e in per.values())
    assert " ".join(printed.split()).count(f"per direction (accuracy, pairs): {line}") == 1
    assert "\n".join(per_direction_lines(per)) in printed
    assert not any(name in printed for name in names)  # not a line each
    assert "reward_model/direction_accuracy" in printed
    section = _eval_section([load_run(run)])
    for name in names:
        assert f"<td>{name}</td>" in section
    assert section.count("fraction of the pairs judged along this direction") == len(names)


def test_per_direction_lines_wrap_and_equal_labels_fall_back_to_the_whole_key():
    from preflab.reward_models.attribute_eval import direction_labels, per_direction_lines

    keys = [json.dumps(v) for v in ([2.0, 0.00001], [2.0, 0.000010001], [0.6, 0.8], [2.0, 1.0])]
    assert direction_labels(keys) == {keys[0]: keys[0], keys[1]: keys[1], keys[2]: "53.1301deg", keys[3]: "[2,1]"}
    per = {str(i): {"label": f"{i}deg", "accuracy": i / 20, "num_pairs": i} for i in range(20)}
    lines = per_direction_lines(per, width=60)
    assert len(lines) > 1 and all(len(line) <= 60 for line in lines)
    assert lines[0].startswith("  per direction (accuracy, pairs): 0deg 0.0000 (0),")
    assert " ".join(" ".join(lines).split()).endswith("19deg 0.9500 (19)")
    assert per_direction_lines({}) == []


class CountingModel3(CountingRewardModel):
    """The counting model with a third attribute (always 0)."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.table = nn.Parameter(torch.cat([self.table.data, torch.zeros(len(tokenizer), 1)], 1),
                                  requires_grad=False)
        self.config = SimpleNamespace(preflab_reward={"head": "multi_objective",
                                                      "attributes": ["helpfulness", "verbosity", "honesty"]},
                                      max_position_embeddings=64)


PAIR = {"prompt": "q?", "chosen": " x", "rejected": " y"}


@pytest.mark.parametrize("row, field, said", [
    ({**PAIR, "direction_angle": "thirty"}, "direction_angle", "the angle 'thirty' is not a finite number of degrees"),
    ({**PAIR, "direction_angle": True}, "direction_angle", "the angle True is not a finite number"),
    ({**PAIR, "direction_angle": float("inf")}, "direction_angle", "the angle inf is not a finite number"),
    ({**PAIR, "direction_angle": 30, "direction": [1, 0]}, "direction_angle",
     "gives both direction=[1, 0] and direction_angle=30"),
    ({**PAIR, "direction_angle": 30, "context": "prefer brevity"}, "context",
     "the row gives the context 'prefer brevity', which a DPA attribute reward model cannot read"),
    ({**PAIR, "direction": [1, 0], "context": {"profile": "a nurse"}}, "context", "cannot read"),
    ({**RATED[0], "context": "prefer brevity"}, "context", "cannot read"),
    (PAIR, "direction", "or direction_angle: t in degrees"),
])
def test_a_bad_angle_or_a_context_is_an_error_naming_file_row_and_field(tmp_path, row, field, said):
    tokenizer = tiny_tokenizer()
    data = _write(tmp_path / "held.jsonl", [RATED[0], row, PAIRS[0]])
    with pytest.raises(DataError) as err:
        evaluate_attribute_model(CountingRewardModel(tokenizer), str(data), tokenizer)
    assert f"held.jsonl row 1 (line 2), field '{field}'" in str(err.value) and said in str(err.value)


def test_an_angle_on_a_model_of_three_attributes_is_refused_naming_the_row(tmp_path):
    tokenizer = tiny_tokenizer()
    rows = [{**PAIR, "direction": [1, 0, 0]}, {**PAIR, "direction_angle": 30}]
    data = _write(tmp_path / "held.jsonl", rows)
    with pytest.raises(DataError) as err:
        evaluate_attribute_model(CountingModel3(tokenizer), str(data), tokenizer)
    assert "held.jsonl row 1 (line 2), field 'direction_angle'" in str(err.value)
    assert "the model has 3 attributes ['helpfulness', 'verbosity', 'honesty']" in str(err.value)
    skipped = evaluate_attribute_model(CountingModel3(tokenizer), str(data), tokenizer, on_bad_row="skip")
    assert skipped["skipped"] == {"angle_needs_two_attributes": 1} and skipped["num_pairs"] == 1
    assert skipped["per_direction"] == {"[1.0, 0.0, 0.0]": {"accuracy": 1.0, "num_pairs": 1, "label": "[1,0,0]"}}


def test_bad_rows_of_every_form_are_skipped_counted_and_a_null_context_is_no_context(tmp_path):
    """A mixed file: rated rows, weight pairs, angle pairs, and one bad row of each new kind; skipped, the metrics
    are those of the good rows alone. A null or empty context is no context (as a context-aware model's rows)."""
    tokenizer = tiny_tokenizer()
    model = CountingRewardModel(tokenizer)
    bad = [{**PAIR, "direction_angle": 30, "context": "c"}, {**RATED[1], "context": "c"},
           {**PAIR, "direction_angle": None}, {**PAIR, "direction_angle": 1, "direction": [1, 1]},
           {**PAIR, "direction_angle": "x"}]
    good = RATED + _angle_pairs("angle") + PAIRS
    blank = [{**row, "context": None if i % 2 else ""} for i, row in enumerate(good)]
    data = _write(tmp_path / "held.jsonl", blank[:3] + bad + blank[3:])
    result = evaluate_attribute_model(model, str(data), tokenizer, on_bad_row="skip")
    assert result["skipped"] == {"context_not_scored": 2, "missing_direction": 1, "two_directions": 1,
                                 "bad_direction": 1}
    assert "line 4, field 'context'" in result["first_skipped"]
    full = evaluate_attribute_model(model, good, tokenizer)
    same = ("mse", "mae", "ranking_accuracy", "direction_accuracy", "direction_margin", "per_direction", "counts")
    assert {k: result[k] for k in same} == {k: full[k] for k in same}


def test_training_reads_a_context_as_the_eval_does(tmp_path):
    """The rule is shared: the DPA training rows (load_rated) refuse a context naming the field, and take a null
    one as none."""
    from preflab.reward_models.multi_objective import load_rated

    data = _write(tmp_path / "train.jsonl", [{**RATED[0], "context": None}, {**RATED[1], "context": "be brief"}])
    with pytest.raises(DataError, match=r"train.jsonl row 1 \(line 2\), field 'context'.*cannot read"):
        load_rated(str(data), ["helpfulness", "verbosity"])
    rows, report = load_rated(str(data), ["helpfulness", "verbosity"], on_bad_row="skip")
    assert len(rows) == 1 and report.skipped == {"context_not_scored": 1}
