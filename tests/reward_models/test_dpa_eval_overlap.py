"""A DPA attribute reward run (`task: reward`, `reward_head: multi_objective`) counts the eval rows whose prompt it
also trains on, says so when it starts and keeps the count in summary.json's data report, as the pairwise (BT / GPM)
reward runs do; the report's headline then calls its eval_mse held-out only when no eval prompt was trained on."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from reward_synthetic import rated_rows  # noqa: E402

WORDS = ["cat", "dog", "sat", "on", "the", "mat", "ran", "to", "park"]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _dpa_run(tmp_path, name: str, eval_rows: list[dict], capsys):
    from preflab.cli import main
    from preflab.report.headline import headline_rows
    from preflab.report.runs import load_run

    train = _write(tmp_path / "rated.jsonl", rated_rows(16, 0, WORDS))
    held = _write(tmp_path / f"{name}.jsonl", eval_rows)
    out = tmp_path / name
    capsys.readouterr()
    assert main(["train", "task=reward", "reward_head=multi_objective",
                 "reward_head_params={attributes: [helpfulness, verbosity]}", "model_name_or_path=builtin:tiny-llama",
                 f"dataset_name={train}", f"eval_dataset_name={held}", f"output_dir={out}", "max_steps=1",
                 "per_device_train_batch_size=8", "eval_strategy=steps", "eval_steps=1", "max_length=64",
                 "disable_tqdm=true", "use_cpu=true"]) == 0
    printed = capsys.readouterr().out.splitlines()
    summary = json.loads((out / "summary.json").read_text())
    meaning = {r["metric"]: r["meaning"] for r in headline_rows(load_run(out))}["eval_mse"]
    return summary["data"], printed, meaning


def test_a_dpa_run_counts_eval_prompts_it_trains_on_and_its_headline_says_so(tmp_path, capsys):
    # before: a DPA run's summary.json had no data.overlap (BT / GPM runs had, user trial 13), and its report's
    # headline showed no eval number at all (its eval_mse was not among the reward task's headline keys)
    train_prompts = [r["prompt"] for r in rated_rows(16, 0, WORDS)]
    shared = rated_rows(5, 7, WORDS)
    for i, row in enumerate(shared):  # 3 of the 5 eval rows ask a training prompt (two ask the same one)
        row["prompt"] = train_prompts[[0, 0, 5][i]] if i < 3 else f"a prompt never trained on {i}"
    data, printed, meaning = _dpa_run(tmp_path, "seen", shared, capsys)
    assert data["overlap"] == {"duplicate_train_examples": 0, "eval_prompts_in_train": 3}
    assert data["eval_tokenize"]["total"] == 5
    assert ("preflab: note: data: 3 of 5 eval example(s) have a prompt that is also a train prompt: the eval then "
            "measures prompts the reward model was trained on.") in printed
    assert meaning == ("mean squared rating error over every rated attribute (lower is better), on the run's eval set: "
                       "3 of its 5 examples have a prompt the run trained on (prompts not held-out)")


def test_a_dpa_run_with_a_disjoint_eval_set_is_held_out(tmp_path, capsys):
    disjoint = rated_rows(4, 7, WORDS)
    for i, row in enumerate(disjoint):
        row["prompt"] = f"a prompt never trained on {i}"
    data, printed, meaning = _dpa_run(tmp_path, "held", disjoint, capsys)
    assert data["overlap"] == {"duplicate_train_examples": 0, "eval_prompts_in_train": 0}
    assert not any("train prompt" in line for line in printed)
    assert meaning == "mean squared rating error over every rated attribute (lower is better), held-out"


def test_rated_rows_repeated_in_training_are_counted():
    from preflab.reward_models.multi_objective import rated_overlap_report

    rows = rated_rows(6, 1, WORDS)
    again = dict(rows[2], ratings=dict(rows[2]["ratings"]))  # the same prompt, response and ratings
    other = dict(rows[2], ratings={"helpfulness": 9.0, "verbosity": 9.0})  # another rating: not a repeat
    assert rated_overlap_report(rows + [again, other], [rows[4], {"prompt": "new", "response": " x"}]) == {
        "duplicate_train_examples": 1, "eval_prompts_in_train": 1}
