"""`preflab eval RUN --held-out`: exactly the rows a run's eval_fraction held out (preflab.eval.held_out), rebuilt by
the rule the run split by (data.holdout.hold_out_rows over the rows kept after skipping bad ones), so its metrics are
the run's own final eval_* metrics."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAIRS = ROOT / "examples" / "data" / "loud_echo_pairs.jsonl"


def _data(path: Path) -> Path:
    """20 pairs of the example file with a bad row (no 'rejected') first: skipped rows shift every position after."""
    lines = PAIRS.read_text().splitlines()[:20]
    path.write_text("\n".join([json.dumps({"prompt": "echo: bad\n", "chosen": "BAD"})] + lines) + "\n")
    return path


def _train(out: Path, data: Path, **kw) -> Path:
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer

    Trainer(config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
                              "eval_fraction": 0.25, "on_bad_row": "skip", "loss_type": "sigmoid", "beta": 0.1,
                              "max_steps": 1, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 3,
                              "max_length": 128, "learning_rate": 1e-2, "use_cpu": True, "disable_tqdm": True,
                              "seed": 3, "report_to": "none", "output_dir": str(out), **kw})).train()
    return out


def _eval(*args) -> int:
    from preflab.cli import main

    return main(["eval", *map(str, args)])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("held_out")
    return _train(tmp / "run", _data(tmp / "pairs.jsonl"))


def test_held_out_metrics_are_the_runs_own_final_eval_metrics(run):
    """Same rows, same batch (the run's per_device_eval_batch_size 3): every eval_* metric both compute agrees
    within 1e-6 with the run's last evaluation in metrics.jsonl. The held-out rows are not those a split counting
    the skipped row would pick (asserted), so a split that ignored skipped rows would fail here."""
    from preflab.data.holdout import held_out_positions
    from preflab.data.rows import load_rows
    from preflab.eval.held_out import held_out_rows
    from preflab.models.run_config import run_config

    assert _eval(run, "--held-out") == 0
    result = json.loads((run / "eval.json").read_text())
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in logged if "eval_rewards/accuracies" in r][-1]
    rows, _ = held_out_rows(run_config(run))
    assert result["num_pairs"] == len(rows) == 5  # max(1, round(0.25 * 20)) of the 20 good rows
    assert result["data"] == "--held-out"
    compared = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "ranking_accuracy",
                "ranking_accuracy_norm", "reference_ranking_accuracy", "logps_drift/chosen", "logps_drift/rejected",
                "logps_drift/suppression_rate")
    for key in compared:
        assert result["metrics"][key] == pytest.approx(final[f"eval_{key}"], abs=1e-6), key
    for key in ("logps/chosen", "logps/rejected"):  # float32 sums near -58: within 1e-6 relative (1 ulp is 4e-6)
        assert result["metrics"][key] == pytest.approx(final[f"eval_{key}"], rel=1e-6), key
    assert result["overlap_with_training"]["pairs"] == 0  # none of them was a training row
    good, _ = load_rows(str(run.parent / "pairs.jsonl"), kind="pairwise", on_bad_row="skip")
    assert [g.row_id for g in good][:2] == [1, 2]  # row 0 is the bad row
    counting_bad = held_out_positions(21, 0.25, 3)  # positions among all 21 rows (a split ignoring the skip)
    assert {r["prompt"] for r in rows} != {g.prompt for g in good if g.row_id in counting_bad}


def test_a_run_with_an_eval_dataset_or_no_eval_fraction_is_refused_with_what_to_pass(run, capsys):
    from preflab.errors import ConfigError
    from preflab.eval.held_out import held_out_rows
    from preflab.models.run_config import run_config

    cfg = run_config(run)
    with pytest.raises(ConfigError, match=r"had no eval_fraction .*pass --data with held-out pairs"):
        held_out_rows({**cfg, "eval_fraction": 0}, "RUN")
    with pytest.raises(ConfigError, match=r"evaluated on eval_dataset_name=ev.jsonl \(split test\), not on rows held "
                                          r"out of its training data; pass --data ev.jsonl --split test instead"):
        held_out_rows({**cfg, "eval_dataset_name": "ev.jsonl"}, "RUN")
    assert _eval(run, "--held-out", "--data", run.parent / "pairs.jsonl") == 2
    assert "needs --data (held-out pairs) or --held-out (the rows the run's eval_fraction held out), not both" \
        in capsys.readouterr().err
    assert _eval(run) == 2
    assert "and got neither" in capsys.readouterr().err
    assert _eval(run, "--held-out", "--task", "reward") == 2  # a routed task reads --data only
    assert "does not use --held-out" in capsys.readouterr().err
    assert _eval(run, "--task", "reward") == 2  # neither: a routed task names --data
    assert "preflab eval --task reward needs --data (the held-out rows to evaluate)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"a task: sft run\. Pass --data with held-out rows"):
        held_out_rows({**cfg, "task": "sft"}, "RUN")
    with pytest.raises(ConfigError, match=r"RUN has none; pass --data with held-out pairs"):
        held_out_rows({}, "RUN")
    with pytest.raises(ConfigError, match=r"RUN's objective reads the row columns \['similarity'\] and it skipped "
                                          r"bad rows \(on_bad_row: skip\)"):
        held_out_rows({**cfg, "loss_type": "sem_dpo"}, "RUN")


def test_the_training_data_note_points_a_dpo_run_to_held_out_and_no_other_task(run):
    """`--data` naming the run's own training file: a DPO-family run's note says --held-out evaluates exactly the
    held-out rows; a reward run's (whose eval refuses --held-out) does not send the user to a refused option."""
    from preflab.eval.run import training_data_note
    from preflab.models.run_config import run_config

    cfg = run_config(run)
    data = cfg["dataset_name"]
    assert "(--held-out instead of --data evaluates exactly those)" in training_data_note(data, cfg, "train")
    reward = training_data_note(data, {**cfg, "task": "reward"}, "train")
    assert "were not trained on, so these metrics are not held-out" in reward and "--held-out" not in reward


def test_held_out_rows_read_the_training_data_once_and_give_the_rows_a_second_read_gave(tmp_path, monkeypatch):
    """held_out_rows takes the held-out rows' raw dicts from the read that splits them (RowReader's keep), where it
    read the file a second time: one pass over the data (counted), and the same rows, in the same order, with the
    data's own column names (not dataset_columns' fields), as that second read gave them (rebuilt here as before:
    the ids held_out_rows' split holds out, then a RowReader over the file). No trained run needed: the config."""
    from preflab.data.configured_source import data_source
    from preflab.data.holdout import hold_out_rows
    from preflab.data.sources import RowReader
    from preflab.eval.held_out import held_out_rows
    from preflab.eval.run import policy_training_rows

    data = tmp_path / "renamed.jsonl"
    named = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    lines = [json.loads(line) for line in _data(tmp_path / "pairs.jsonl").read_text().splitlines()]
    lines[0]["rejected"] = None  # the bad row, with the mapped column (a row without it is a renaming error)
    data.write_text("".join(json.dumps({named[k]: v for k, v in row.items()}) + "\n" for row in lines))
    cfg = {"dataset_name": str(data), "dataset_columns": named, "eval_fraction": 0.25, "seed": 3,
           "on_bad_row": "skip", "loss_type": "sigmoid"}
    held: list = []

    def note_held(rows, fraction, seed):
        kept, out, _ = hold_out_rows(rows, fraction, seed)
        held.extend(out)
        return kept

    policy_training_rows(cfg, hold_out=note_held)
    ids = {r.row_id for r in held}
    before = [dict(raw.data) for raw in RowReader(data_source(str(data), None), split="train") if raw.row_id in ids]
    passes = []
    iterate = RowReader.__iter__

    def counted(reader):
        passes.append(reader.name)
        return iterate(reader)

    monkeypatch.setattr(RowReader, "__iter__", counted)
    rows, said = held_out_rows(cfg)
    assert passes == [str(data)]  # one pass over the training data
    assert rows == before and len(rows) == 5  # max(1, round(0.25 * 20)) of the 20 good rows
    assert [list(r) for r in rows] == [["question", "good", "bad"]] * 5  # the data's own columns, its order
    assert 0 not in ids and [r["question"] for r in rows] == [lines[i]["prompt"] for i in sorted(ids)]
    assert said.startswith("--held-out: the 5 rows the run held out of the run's training data")
