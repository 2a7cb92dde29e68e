"""preflab eval counts the evaluated pairs the run's training rows already hold (eval.json overlap_with_training):
the report trial's `preflab eval outputs/demo/dpo --data examples/data/loud_echo_pairs.jsonl` shared 117 of 256
pairs and every prompt with the training data and said nothing, because --data was not the training file itself."""

import pytest

from preflab.data.holdout import held_out_positions
from preflab.eval.run import evaluate_models, training_overlap
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest

TRAIN = [{"prompt": f"question number {i} ?", "chosen": f" answer {i}", "rejected": f" wrong {i}"} for i in range(6)]


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer("bytelevel")
    return tok, tiny_causal_lm(tok, seed=1).eval(), tiny_causal_lm(tok, seed=2).eval()


def _examples(path: str):
    from preflab.data.rows import load_rows

    return load_rows(path, kind="pairwise")[0]


def test_a_partly_trained_on_eval_file_gets_exact_counts_and_one_note(tiny, tmp_path):
    tok, policy, ref = tiny
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    evals = write_jsonl(tmp_path / "eval.jsonl", [
        TRAIN[0],                                                        # a training pair
        {**TRAIN[1], "chosen": " another answer"},                       # a training prompt, a new pair
        {"prompt": "a new question ?", "chosen": " yes", "rejected": " no"},
        {**TRAIN[2], "id": 17},                                          # a training pair (extras are not content)
        {"prompt": "another new one ?", "chosen": " fine", "rejected": " bad"}])
    out = evaluate_models(policy, tok, evals, ref=ref, training_run={"dataset_name": train, "seed": 3})
    assert out["overlap_with_training"] == {"prompts": 3, "pairs": 2, "rows": 5, "checked_against": train,
                                            "split": "train", "training_pairs": 6}
    said = [n for n in out["notes"] if "trained on" in n]
    assert len(said) == 1 and said[0].startswith("3 of 5 eval pairs (60.0%) have a prompt the run trained on, and "
                                                 "2 (40.0%) are training pairs")
    assert f"the run's training data {train} (dataset_name, split train)" in said[0]
    assert "overlap_with_training" not in out["missing"]


def test_a_shared_prompt_is_no_shared_pair(tmp_path):
    train = TRAIN[:3]
    from preflab.data.rows import load_rows

    examples = load_rows([{**r, "rejected": r["rejected"] + " !"} for r in train] +          # other rejected
                         [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in train],  # swapped
                         kind="pairwise")[0]
    record, note, why = training_overlap(examples, {"dataset_name": None})
    assert (record, note) == (None, None)                 # no training data named: nothing to compare, and said
    assert why.startswith("the run's config.yaml names no dataset_name (its training data), so whether the eval "
                          "rows were trained on was not checked")
    record, note, why = training_overlap(examples, {"dataset_name": write_jsonl(tmp_path / "t.jsonl", train)})
    assert (record["prompts"], record["pairs"], record["rows"]) == (6, 0, 6) and why is None
    assert note.startswith("6 of 6 eval pairs (100.0%) have a prompt the run trained on, and 0 (0.0%)")


def test_conversational_rows_are_compared_as_the_loader_reads_them(tmp_path):
    """A training row with an explicit conversational prompt and the same pair written as two whole conversations
    (implicit prompt) are one pair after load_rows: counted as a training pair; a text prompt with the same words
    as a one-message conversation is not the same prompt (the loader keeps them different)."""
    user = [{"role": "user", "content": "name a colour"}]
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"prompt": user, "chosen": [{"role": "assistant", "content": "red"}],
         "rejected": [{"role": "assistant", "content": "seven"}]}])
    evals = _examples(write_jsonl(tmp_path / "eval.jsonl", [
        {"chosen": user + [{"role": "assistant", "content": "red"}],
         "rejected": user + [{"role": "assistant", "content": "seven"}]},
        {"prompt": user, "chosen": [{"role": "assistant", "content": "blue"}],
         "rejected": [{"role": "assistant", "content": "seven"}]},
        {"prompt": "name a colour", "chosen": "red", "rejected": "seven"}]))
    record, note, why = training_overlap(evals, {"dataset_name": train})
    assert (record["prompts"], record["pairs"], record["rows"]) == (2, 1, 3)
    assert note.startswith("2 of 3 eval pairs (66.7%)") and why is None


def test_no_overlap_records_zeros_and_says_nothing(tiny, tmp_path):
    tok, policy, ref = tiny
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "new ?", "chosen": " a", "rejected": " b"},
                                             {"prompt": "newer ?", "chosen": " c", "rejected": " d"}])
    out = evaluate_models(policy, tok, evals, ref=ref, training_run={"dataset_name": train})
    assert out["overlap_with_training"] == {"prompts": 0, "pairs": 0, "rows": 2, "checked_against": train,
                                            "split": "train", "training_pairs": 6}
    assert not any("trained on" in n for n in out["notes"]) and "overlap_with_training" not in out["missing"]


def test_training_data_that_cannot_be_read_is_said_once_and_why(tiny, tmp_path):
    tok, policy, ref = tiny
    evals = write_jsonl(tmp_path / "eval.jsonl", TRAIN[:2])
    out = evaluate_models(policy, tok, evals, ref=ref, training_run={"dataset_name": "someone/hub-prefs"})
    assert "overlap_with_training" not in out
    why = out["missing"]["overlap_with_training"]
    assert why.startswith("the run's training data someone/hub-prefs (dataset_name, split train) is no file or "
                          "folder here (a hub dataset name") and "was not checked" in why
    assert not any("someone/hub-prefs" in n for n in out["notes"])          # once: in missing, not also a note
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                        {"role": "assistant", "content": "hello"}]}])
    _, note, why = training_overlap(_examples(evals), {"dataset_name": sft})
    assert note is None and why.startswith(f"the run's training data {sft} (dataset_name, split train) holds no "
                                           "preference pairs")


def test_the_rows_eval_fraction_held_out_are_not_training_rows_and_the_same_file_note_stands(tmp_path):
    """--data = the training file with eval_fraction: the pairs counted are exactly those the run trained on (all
    but the seeded held-out rows), and the same-file note (training_data_note) is the one note: no second one."""
    rows = [{"prompt": f"p{i} ?", "chosen": f" c{i}", "rejected": f" r{i}"} for i in range(20)]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = {"dataset_name": data, "dataset_split": "train", "eval_fraction": 0.25, "seed": 7}
    held = held_out_positions(20, 0.25, 7)
    assert len(held) == 5
    record, note, why = training_overlap(_examples(data), cfg, data, "train")
    assert (record["prompts"], record["pairs"], record["rows"], record["training_pairs"]) == (15, 15, 20, 15)
    assert note is None and why is None
    other = write_jsonl(tmp_path / "copy.jsonl", rows)            # the same rows under another name: the note is given
    _, note, _ = training_overlap(_examples(other), cfg, other, "train")
    assert note.startswith("15 of 20 eval pairs (75.0%)") and "less the eval_fraction=0.25 of its rows" in note


def test_the_report_headline_says_how_many_eval_pairs_were_trained_on(tmp_path):
    from preflab.report.headline import eval_json_rows
    from preflab.report.runs import RunData

    result = {"num_pairs": 256, "metrics": {"ranking_accuracy": 0.7, "reference_ranking_accuracy": 0.5},
              "overlap_with_training": {"prompts": 256, "pairs": 117, "rows": 256}}
    row, = eval_json_rows(RunData("dpo", tmp_path, eval=result))
    assert row["after"] == ("eval.json, 256 pairs, 256 with a prompt the run trained on (117 training pairs; not "
                            "held-out)", 0.7)
    result["overlap_with_training"] = {"prompts": 0, "pairs": 0, "rows": 256}
    row, = eval_json_rows(RunData("dpo", tmp_path, eval=result))
    assert row["after"] == ("eval.json, 256 pairs", 0.7)


def test_an_online_runs_prompt_rows_are_compared_by_prompt_only(tiny, tmp_path, capsys):
    """task: online, online_task: dataset trained on prompt rows: an eval pair is counted when its prompt is one of
    them (pairs is None: the run trained on no responses), less the prompts eval_fraction held out as
    train_and_eval holds them out (data.holdout.split_eval_fraction over the prompt rows)."""
    from preflab.data.holdout import split_eval_fraction

    tok, policy, ref = tiny
    prompts = [{"prompt": f"question number {i} ?", "answer": str(i)} for i in range(10)]
    train = write_jsonl(tmp_path / "prompts.jsonl", prompts)
    kept, held = split_eval_fraction(prompts, 0.2, 5)
    cfg = {"task": "online", "online_task": "dataset", "dataset_name": train, "eval_fraction": 0.2, "seed": 5}
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": r["prompt"], "chosen": " yes", "rejected": " no"}
                                             for r in kept[:3] + held] +
                   [{"prompt": "a new question ?", "chosen": " a", "rejected": " b"}])
    out = evaluate_models(policy, tok, evals, ref=ref, training_run=cfg)
    assert out["overlap_with_training"] == {"prompts": 3, "pairs": None, "rows": 6, "checked_against": train,
                                            "split": "train", "training_prompts": 8}
    said = [n for n in out["notes"] if "trained on" in n]
    assert len(said) == 1 and said[0].startswith(
        f"3 of 6 eval pairs (50.0%) have a prompt the run trained on (its training rows are prompts: the run's "
        f"training data {train} (dataset_name, split train), less the eval_fraction=0.2 of its rows the run held out "
        "(seed 5))")
    record, note, why = training_overlap(_examples(write_jsonl(tmp_path / "new.jsonl", [
        {"prompt": "another new one ?", "chosen": " a", "rejected": " b"}])), cfg)
    assert (record["prompts"], record["pairs"], note, why) == (0, None, None, None)


def test_the_online_demo_runs_prompts_are_the_demos_training_prompts(tmp_path):
    """online_task: demo has no dataset_name: its training prompts are the demo task's (make_splits(0), as
    online.tasks.load_task gives them to the run), read by preflab.eval_cli; the demo's held-out prompts are not."""
    from preflab.demo.task import make_splits
    from preflab.eval_cli.checkpoint import demo_training_prompts

    cfg = {"task": "online", "online_task": "demo", "model_name_or_path": "builtin:demo-sft"}
    _, pairs, heldout = make_splits(0)
    evals = _examples(write_jsonl(tmp_path / "eval.jsonl", pairs[:4] + [
        {"prompt": p + "\n", "chosen": " A", "rejected": " a"} for p in heldout[:3]]))
    training = demo_training_prompts(cfg)
    record, note, why = training_overlap(evals, cfg, training=training)
    assert record == {"prompts": 4, "pairs": None, "rows": 7, "checked_against": "online_task: demo",
                      "split": "train", "training_prompts": 600}
    assert note.startswith("4 of 7 eval pairs (57.1%) have a prompt the run trained on (its training rows are "
                           "prompts: the demo task's training prompts (online_task: demo))") and why is None
    assert demo_training_prompts({"task": "dpo"}) is None
    _, _, why = training_overlap(evals, {"task": "online", "online_task": "game"})
    assert why.startswith("the run (task: online, online_task: game) trained on the preference game's answers")


def test_an_online_runs_held_out_prompts_that_are_training_prompts_are_counted_and_said(tmp_path, capsys):
    """online_task: dataset with eval_dataset_name: the held-out prompts the training rows also hold are counted in
    the data report (summary.json data.overlap, overlap_report's keys as for preference rows) and said; a repeated
    training prompt is counted there but not said (prompt rows repeat by design)."""
    from preflab.config import config_from_dict
    from preflab.online.tasks import load_task

    train = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"echo: w{i}\n"} for i in range(6)] +
                   [{"prompt": "echo: w0\n"}])
    held = write_jsonl(tmp_path / "held.jsonl", [{"prompt": "echo: w1\n"}, {"prompt": "echo: w4\n"},
                                            {"prompt": "echo: new\n"}])
    cfg = config_from_dict({"task": "online", "trainer": "grpo", "online_task": "dataset", "dataset_name": train,
                            "eval_dataset_name": held, "reward_funcs": "demo_true_reward",
                            "model_name_or_path": "builtin:tiny-llama", "max_steps": 1,
                            "output_dir": str(tmp_path / "o")})
    task, _, _ = load_task(cfg)
    assert task.data_report["overlap"] == {"duplicate_train_examples": 1, "eval_prompts_in_train": 2}
    out = capsys.readouterr().out
    assert "note: data: 2 of 3 eval example(s) have a prompt that is also a train prompt" in out
    assert "repeat an earlier one" not in out
