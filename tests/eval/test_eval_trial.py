"""Evaluation findings of the data and evaluation user trial (changes/trial-data.md)."""
from pathlib import Path

import pytest

from preflab.eval.run import evaluate_models
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

ROWS = [{"prompt": "the cat sat on", "chosen": " the mat", "rejected": " a dog"},
        {"prompt": "hello world ,", "chosen": " preference", "rejected": " the cat"}]


def test_eval_without_reference_has_no_note_about_the_idealized_accuracy():
    """--no-reference computes no R*, yet eval.json said "no 'alpha' column: ... the idealized ranking accuracy is
    an upper bound"; the note now comes only with a reference (and R*)."""
    tok = tiny_tokenizer("bytelevel")
    policy = tiny_causal_lm(tok, seed=1)
    alone = evaluate_models(policy, tok, ROWS)
    assert "idealized_ranking_accuracy" not in alone["metrics"]
    assert not any("alpha" in n for n in alone["notes"]), alone["notes"]
    with_ref = evaluate_models(policy, tok, ROWS, ref=tiny_causal_lm(tok, seed=2))
    assert "idealized_ranking_accuracy" in with_ref["metrics"]
    assert any("no 'alpha' column" in n for n in with_ref["notes"])


def test_eval_cuts_pairs_as_the_run_did(tmp_path, capsys):
    """`preflab eval RUN` tokenized with max_length 1024 whatever the run's max_length, so its numbers differed from
    the run's own eval_* metrics on the same pairs, without a word; it now takes the run's max_length (and
    max_prompt_length, truncation_mode, max_completion_length) and says so; --max-length still overrides."""
    import json

    import torch
    import yaml

    from preflab.cli import main
    from preflab.data.layout import padded
    from preflab.data.rows import load_rows
    from preflab.data.tokenize import tokenize_pairs
    from preflab.scoring.lm import naive_token_logps

    tok = tiny_tokenizer("bytelevel")
    model = tiny_causal_lm(tok, seed=1)
    model.save_pretrained(tmp_path / "run")
    tok.save_pretrained(tmp_path / "run")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({
        "model_name_or_path": "builtin:tiny-llama", "beta": 0.1, "seed": 0, "max_length": 24,
        "max_prompt_length": 12, "truncation_mode": "keep_start", "max_completion_length": 8}))
    rows = [{"prompt": "the cat sat on the mat and the dog ran to the park " * 2, "chosen": " the answer is five ." * 3,
             "rejected": " hello world , preference optimization" * 2}] * 2
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def sums(**cuts):
        pairs, _ = tokenize_pairs(load_rows(str(data))[0], tok, **cuts)
        with torch.no_grad():
            return [float(naive_token_logps(model, padded([(p.prompt_ids, p.chosen_ids)], tok.pad_token_id)).sum())
                    for p in pairs]

    assert main(["eval", str(tmp_path / "run"), "--data", str(data), "--no-reference"]) == 0
    assert "the eval rows (pairs, or unpaired completions) are cut as the run's eval set was (max_length=24, max_prompt_length=12, truncation_mode=keep_start, "\
           "max_completion_length=8" in capsys.readouterr().err
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    expected = sums(max_length=24, max_prompt_length=12, truncation_mode="keep_start", max_completion_length=8)
    assert result["per_pair"]["policy_chosen"] == pytest.approx(expected, abs=1e-4)
    assert result["truncation"]["max_length"] == 24
    assert main(["eval", str(tmp_path / "run"), "--data", str(data), "--no-reference", "--max-length", "40",
                 "--out", str(tmp_path / "e40.json")]) == 0
    wide = json.loads((tmp_path / "e40.json").read_text())
    assert wide["per_pair"]["policy_chosen"] == pytest.approx(
        sums(max_length=40, max_prompt_length=12, truncation_mode="keep_start", max_completion_length=8), abs=1e-4)


def test_conversational_extra_responses_as_text_measure_dispersion():
    """With conversational pairs, extra_responses written as strings (as chosen / rejected replies usually are) were
    all skipped as wrong_type, and eval.json then said the data has no extra_responses column; a string is now the
    assistant's reply, scored exactly as the same reply written as a message list."""
    tok = tiny_tokenizer("bytelevel")
    policy, ref = tiny_causal_lm(tok, seed=1), tiny_causal_lm(tok, seed=2)
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in ROWS]
    as_text = [dict(r, extra_responses=["the dog", "five"]) for r in rows]
    as_messages = [dict(r, extra_responses=[[{"role": "assistant", "content": t}] for t in ("the dog", "five")])
                   for r in rows]
    text = evaluate_models(policy, tok, as_text, ref=ref)["metrics"]
    messages = evaluate_models(policy, tok, as_messages, ref=ref)["metrics"]
    assert text["dispersion/num_unseen_responses"] == 4.0
    for key in ("dispersion/unseen_logps_drift", "dispersion/unseen_log_mass_drift"):
        assert text[key] == messages[key]
    empty = evaluate_models(policy, tok, [dict(r, extra_responses=[" "]) for r in rows], ref=ref)
    assert empty["missing"]["dispersion"] == "no 'extra_responses' response could be scored (see the notes)"


def test_extra_responses_drift_is_policy_minus_reference_and_flips_with_them():
    """dispersion/unseen_logps_drift = mean over the further responses of log pi - log pi_ref: non-zero for two
    different models, and exactly negated when policy and reference trade places."""
    tok = tiny_tokenizer("bytelevel")
    a, b = tiny_causal_lm(tok, seed=1), tiny_causal_lm(tok, seed=2)
    rows = [dict(r, extra_responses=["the dog", "five"]) for r in ROWS]
    forward = evaluate_models(a, tok, rows, ref=b)["metrics"]["dispersion/unseen_logps_drift"]
    backward = evaluate_models(b, tok, rows, ref=a)["metrics"]["dispersion/unseen_logps_drift"]
    assert abs(forward) > 1e-3 and backward == pytest.approx(-forward, abs=1e-9)


def test_eval_reads_the_test_split_of_a_folder_with_splits_and_says_which(tmp_path):
    """--split defaulted to 'train' while a run's eval_split defaults to 'test': --data a folder with train/test
    files evaluated its train split, silently. With no split given eval now reads 'test' where the data has one
    (else 'train'), says which split in a note and records it in eval.json."""
    import json

    tok = tiny_tokenizer("bytelevel")
    policy = tiny_causal_lm(tok, seed=1)
    folder = tmp_path / "ds"
    folder.mkdir()
    for name, row in (("train", ROWS[0]), ("test", ROWS[1])):
        (folder / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    result = evaluate_models(policy, tok, str(folder))
    alone = evaluate_models(policy, tok, [ROWS[1]])
    assert result["split"] == "test" and result["num_pairs"] == 1
    assert result["per_pair"]["policy_chosen"] == alone["per_pair"]["policy_chosen"]
    assert any(n.startswith(f"read split 'test' of {folder}: no --split was given and it has a split 'test'")
               for n in result["notes"]), result["notes"]
    from preflab.eval.run import EvalOptions

    train = evaluate_models(policy, tok, str(folder), options=EvalOptions(split="train"))
    assert train["split"] == "train" and f"read split 'train' of {folder} (--split)" in train["notes"]
    (folder / "test.jsonl").unlink()
    only = evaluate_models(policy, tok, str(folder))
    assert only["split"] == "train" and any("it has no split 'test'" in n for n in only["notes"])
    assert not any("split" in n for n in evaluate_models(policy, tok, str(folder / "train.jsonl"))["notes"])


@pytest.mark.parametrize("splits", [("train", "test"), ("train",)])
def test_eval_without_split_loads_the_source_once(tmp_path, monkeypatch, splits):
    """preflab eval without --split probed the source for a split 'test' with one RowReader, then read it with
    another: a save_to_disk DatasetDict loaded twice, a folder of train/test files listed twice (a hub name: two
    dataset loads). The reader that finds the split is now the one read: one load, and the split chosen as before.
    A folder of files without a 'test' file was still walked twice (for 'test', then again for 'train'); now
    once."""
    import json

    import datasets

    import preflab.data.sources as sources

    tok = tiny_tokenizer("bytelevel")
    policy = tiny_causal_lm(tok, seed=1)
    loads = []
    load_from_disk, dir_parts = datasets.load_from_disk, sources._dir_parts
    monkeypatch.setattr(datasets, "load_from_disk", lambda *a, **k: loads.append("disk") or load_from_disk(*a, **k))
    monkeypatch.setattr(sources, "_dir_parts", lambda *a, **k: loads.append("listing") or dir_parts(*a, **k))
    datasets.DatasetDict({name: datasets.Dataset.from_list([row]) for name, row in zip(splits, ROWS)}).save_to_disk(
        str(tmp_path / "saved"))
    result = evaluate_models(policy, tok, str(tmp_path / "saved"))
    assert loads.count("disk") == 1 and result["split"] == splits[-1]
    assert result["per_pair"]["policy_chosen"] == evaluate_models(policy, tok, [ROWS[len(splits) - 1]])[
        "per_pair"]["policy_chosen"]
    # a folder of files: walked once, also without a file of split 'test' (it was walked again for 'train'), and
    # the note says which split was read
    folder = tmp_path / "files"
    folder.mkdir()
    for name, row in zip(splits, ROWS):
        (folder / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    loads.clear()
    rglob = Path.rglob
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: loads.append(f"walk {self}") or rglob(self, pattern))
    result = evaluate_models(policy, tok, str(folder))
    assert result["split"] == splits[-1] and loads == ["listing", f"walk {folder}"], loads
    why = ("it has a split 'test', read by default as a run's eval_split is" if len(splits) == 2 else
           "it has no split 'test' (a single file or a folder without one reads as 'train')")
    assert result["notes"] == [f"read split {splits[-1]!r} of {folder}: no --split was given and {why}; pass --split "
                               "to read another"]


@pytest.mark.parametrize("splits", [("train", "test"), ("train",)])
def test_eval_default_split_of_a_hub_name_loads_it_once(monkeypatch, splits):
    """A hub name without --split: one datasets.load_dataset (every split), then 'test' or 'train' from it."""
    import datasets

    import preflab.data.sources as sources

    tok = tiny_tokenizer("bytelevel")
    policy = tiny_causal_lm(tok, seed=1)
    calls = []

    def load_dataset(name, split=None, **kwargs):
        calls.append(split)
        loaded = datasets.DatasetDict({s: datasets.Dataset.from_list([row]) for s, row in zip(splits, ROWS)})
        if split is None:
            return loaded
        if split not in loaded:
            raise ValueError(f'Unknown split "{split}"')
        return loaded[split]

    monkeypatch.setattr(sources, "_check_hub_dataset", lambda name: None)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    result = evaluate_models(policy, tok, "someone/prefs")
    assert calls == [None] and result["split"] == splits[-1]
    assert any(n.startswith(f"read split {splits[-1]!r} of someone/prefs: no --split") for n in result["notes"])


def test_eval_of_a_run_without_truncation_mode_cuts_as_the_run(tmp_path):
    """A run with truncation_mode unset cuts an over-long pair keeping its start (the prompt whole); preflab eval
    took such a run's truncation_mode as keep_end, so its over-long pairs lost the prompt's start instead: numbers
    unlike the run's eval_* metrics, without a word. The unset mode now reaches the tokenizer as the run's."""
    import yaml

    from preflab.data.rows import load_rows
    from preflab.data.tokenize import tokenize_pairs
    from preflab.eval.run import EvalOptions, run_truncation

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama", "beta": 0.1, "max_length": 16}))
    cuts, _ = run_truncation(str(tmp_path / "run"))
    assert cuts["max_length"] == 16 and cuts["truncation_mode"] is None and EvalOptions().truncation_mode is None
    tok = tiny_tokenizer("bytelevel")
    rows = [{"prompt": "the cat sat on", "chosen": " the mat and the dog ran to the park today ." * 2,
             "rejected": " no"}]
    examples, _ = load_rows(rows)
    run_pairs, _ = tokenize_pairs(examples, tok, max_length=16)  # what the run (truncation_mode unset) trained on
    eval_pairs, _ = tokenize_pairs(examples, tok, **cuts)
    whole, _ = tokenize_pairs(examples, tok, max_length=None)
    assert eval_pairs == run_pairs and eval_pairs[0].prompt_ids == whole[0].prompt_ids  # the prompt kept whole
    assert len(eval_pairs[0].chosen_ids) < len(whole[0].chosen_ids)  # the pair reached max_length


def test_eval_win_rate_generates_for_the_first_win_rate_prompts_distinct_prompts():
    """The win rate answers at most `win_rate_prompts` distinct prompts, in the data's order (a repeated prompt once):
    the reward function sees exactly those prompts, each with the policy's and the reference's answer."""
    from preflab.eval.run import EvalOptions

    tok = tiny_tokenizer("bytelevel")
    rows = [{"prompt": p, "chosen": " the mat", "rejected": " a dog"}
            for p in ("one two", "one two", "three four", "five six", "seven eight")]
    seen = []

    def reward(prompts, completions):
        seen.extend(prompts)
        return [float(len(c)) for c in completions]

    out = evaluate_models(tiny_causal_lm(tok, seed=1), tok, rows, ref=tiny_causal_lm(tok, seed=2),
                          options=EvalOptions(win_rate_prompts=2, max_new_tokens=2), reward_fn=reward)
    assert sorted(set(seen)) == ["one two", "three four"]
    assert out["win_rate"]["n"] + out["win_rate"].get("failed", 0) == 2
