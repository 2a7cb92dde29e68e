"""Evaluation findings of the data and evaluation user trial (changes/trial-data.md)."""
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
    assert "pairs are cut as the run's eval set was (max_length=24, max_prompt_length=12, truncation_mode=keep_start, "\
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
