"""`preflab eval RUN` on a DPA attribute reward model (task: reward, reward_head: multi_objective): the saved task
routes it to the attribute eval (before: refused as "no pairwise score"); on the run's own eval rows its mse equals
the run's final eval_mse; the ranking and direction accuracies equal a recomputation through the judge interface
(RewardModel), and the rows the run trained on are counted."""
import json
import sys
from itertools import combinations
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from reward_synthetic import rated_rows  # noqa: E402

WORDS = ["cat", "dog", "sat", "on", "the", "mat", "ran", "to", "park", "what", "is", "two", "please", "how", "many"]
ATTRS = ["helpfulness", "verbosity"]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _held_rows() -> list[dict]:
    """12 rated rows, three responses per prompt (so ranking pairs form), two verbosity ratings null."""
    rows = rated_rows(12, 1, WORDS)
    for i, row in enumerate(rows):
        row["prompt"] = f"question {i // 3}: " + rows[3 * (i // 3)]["prompt"]
    rows[4]["ratings"]["verbosity"] = rows[9]["ratings"]["verbosity"] = None
    return rows


def _ranking_accuracy(outputs, rows, attribute: int, name: str) -> float:
    right = formed = 0
    for i, j in combinations(range(len(rows)), 2):
        a, b = rows[i]["ratings"][name], rows[j]["ratings"][name]
        if rows[i]["prompt"] != rows[j]["prompt"] or a is None or b is None or a == b:
            continue
        formed += 1
        right += float((outputs[i, attribute] - outputs[j, attribute]) * (a - b)) > 0
    return right / formed


def test_preflab_eval_of_a_dpa_run_equals_its_eval_mse_and_a_recomputation(tmp_path, capsys):
    from preflab.cli import main
    from preflab.reward_models.interface import RewardModel

    train = rated_rows(32, 0, WORDS)
    held = _held_rows()
    data, heldout = _write(tmp_path / "rated.jsonl", train), _write(tmp_path / "held.jsonl", held)
    out = tmp_path / "rm"
    assert main(["train", "task=reward", "reward_head=multi_objective",
                 "reward_head_params={attributes: [helpfulness, verbosity]}", "model_name_or_path=builtin:tiny-llama",
                 f"dataset_name={data}", f"output_dir={out}", "learning_rate=2e-3", "per_device_train_batch_size=8",
                 "max_steps=6", "lr_scheduler_type=constant", "max_length=64", "disable_tqdm=true", "use_cpu=true",
                 f"eval_dataset_name={heldout}", "per_device_eval_batch_size=4", "eval_strategy=steps",
                 "eval_steps=6"]) == 0
    final = json.loads((out / "summary.json").read_text())["final_metrics"]
    capsys.readouterr()

    # the run's own eval rows, no --task: the saved task (reward) routes to the attribute eval
    assert main(["eval", str(out), "--data", str(heldout)]) == 0
    printed = capsys.readouterr().out
    assert "12 rated rows, 0 pairs" in printed and "reward_model/ranking_accuracy/helpfulness" in printed
    report = json.loads((out / "eval.json").read_text())
    metrics = report["metrics"]
    for key in ("mse", "mse/helpfulness", "mse/verbosity"):
        assert metrics[f"reward_model/{key}"] == pytest.approx(final[f"eval_{key}"], rel=1e-5), key
    judge = RewardModel.from_pretrained(str(out))
    outputs = judge.outputs([r["prompt"] for r in held], [r["response"] for r in held]).double()
    errors = [(outputs[i, a] - r["ratings"][name]).abs() for i, r in enumerate(held)
              for a, name in enumerate(ATTRS) if r["ratings"][name] is not None]
    assert metrics["reward_model/mae"] == pytest.approx(float(sum(errors) / len(errors)), rel=1e-5)
    for a, name in enumerate(ATTRS):
        assert metrics[f"reward_model/ranking_accuracy/{name}"] == pytest.approx(
            _ranking_accuracy(outputs, held, a, name))
    assert report["reward_eval"]["counts"]["ratings/verbosity"] == 10
    assert report["reward_eval"]["max_length"] == 64  # the run's max_length (config.yaml), not --max-length's 1024
    assert report["overlap_with_training"]["pairs"] == 0 and report["overlap_with_training"]["training_rows"] == 32

    # rated rows, two of them training rows and one a new response to a training prompt, and direction pairs, one
    # without its direction (skipped, named)
    pairs = [{"prompt": held[3 * k]["prompt"], "chosen": held[3 * k]["response"],
              "rejected": held[3 * k + 1]["response"], "direction": direction}
             for k, direction in enumerate(([1, 0], {"verbosity": 1.0}, [0.6, 0.8]))]
    bad = {"prompt": "q", "chosen": " a", "rejected": " b"}
    new_response = {**train[2], "response": train[2]["response"] + " again"}
    mixed = _write(tmp_path / "mixed.jsonl", held + train[:2] + [new_response] + pairs + [bad])
    assert main(["eval", str(out), "--task", "reward", "--data", str(mixed), "--out", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["num_rated_rows"] == 15 and report["num_pairs"] == 3
    assert report["reward_eval"]["skipped"] == {"missing_direction": 1}
    assert "line 19, field 'direction'" in printed
    right, margins = 0, []
    for pair in pairs:
        v = pair["direction"] if isinstance(pair["direction"], list) else [0.0, 1.0]
        scored = RewardModel.from_pretrained(str(out), direction=v).score([pair["prompt"]] * 2,
                                                                           [pair["chosen"], pair["rejected"]])
        right += bool(scored[0] > scored[1])
        margins.append(float(scored[0] - scored[1]))
    assert report["metrics"]["reward_model/direction_accuracy"] == right / 3
    assert report["metrics"]["reward_model/direction_margin"] == pytest.approx(sum(margins) / 3, rel=1e-4)
    overlap = report["overlap_with_training"]
    train_prompts = {r["prompt"] for r in train}
    shared = sum(r["prompt"] in train_prompts for r in held + train[:3] + pairs)
    assert shared >= 3 and (overlap["pairs"], overlap["prompts"], overlap["rows"]) == (2, shared, 18)
    assert any("have a response the run trained on" in note for note in report["notes"])

    # the report's headline reads the DPA numbers of eval.json, with its rows and the trained-on count
    from preflab.report.headline import eval_json_rows
    from preflab.report.runs import RunData

    rows = {row["metric"].split("/", 1)[1]: row["after"] for row in eval_json_rows(RunData("rm", out, eval=report))}
    where = f"eval.json, 15 rated rows, 3 pairs, {shared} with a prompt the run trained on (2 with a response it " \
            "trained on; not held-out)"
    assert rows == {key: (where, report["metrics"][f"reward_model/{key}"])
                    for key in ("mse", "ranking_accuracy", "direction_accuracy")}
    assert torch.isfinite(outputs).all()
