"""Evaluation findings of the data and evaluation user trial (changes/trial-data.md)."""
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
