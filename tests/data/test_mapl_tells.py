"""Review of the MAPL builder: no instruction tells x_w from x_l by its form alone, and words are whole words."""
import random
from collections import Counter

from preflab.data.mapl import (
    Instruction,
    Vocabulary,
    build_mapl_rows,
    check,
    generate,
    words,
)

LONG = ["The river bends twice before it reaches the old mill by the bridge.",
        "Bread rises when the yeast has time, warmth and a little sugar to feed on.",
        "Most maps of the city still show the tram line that closed years ago.",
        "A good lamp on the desk makes long evenings of reading much easier.",
        "The committee met on Tuesday and postponed the vote until next month.",
        "Sea water freezes at a lower temperature than fresh water does, usually."]


def test_end_phrase_length_is_drawn_alike_for_satisfied_and_violated_instructions():
    """Satisfied end phrases are y's last 1 or 2 words; violated ones came only from 2-word phrases, so a one-word
    end phrase marked x_w without reading y. Both sides now draw the length the same way."""
    vocab = Vocabulary.of(LONG)
    lengths = Counter()
    for i, y in enumerate(LONG * 20):
        rng = random.Random(i)
        for satisfied in (True, False):
            made = generate("end_with", y, satisfied, rng, vocab)
            assert check(made, y) == satisfied
            lengths[satisfied, len(made.arg.split())] += 1
    for satisfied in (True, False):
        share = lengths[satisfied, 1] / (lengths[satisfied, 1] + lengths[satisfied, 2])
        assert 0.35 < share < 0.65, (satisfied, lengths)


def test_built_rows_carry_no_end_phrase_length_tell():
    """Where x_w and x_l differ by an end phrase, a one-word phrase occurs on both sides (it was x_w's only)."""
    rows = [{"prompt": f"Q{i}: tell me something.", "chosen": LONG[i % 6], "rejected": LONG[(i + 1) % 6]}
            for i in range(60)]
    out, _ = build_mapl_rows(rows, seed=0, kinds=("end_with",))
    one_word = Counter()
    for row in out:
        (good,), (worse,) = row["instructions_chosen"], row["instructions_rejected"]
        assert good != worse and not check(Instruction.from_dict(worse), row["completion"])
        one_word["x_w"] += len(good["arg"].split()) == 1
        one_word["x_l"] += len(worse["arg"].split()) == 1
    assert len(out) == 60 and min(one_word.values()) > 10, one_word


def test_no_word_limit_is_decided_without_reading_the_response():
    """'fewer than 1 word' fails and 'at least 1 word' holds for every non-empty response: such an instruction tells
    x_l (or x_w) apart without reading y. Every limit is >= 2, and each instruction still holds as generated."""
    vocab = Vocabulary.of(LONG)
    for n in range(1, 9):
        y = " ".join(["word"] * n)
        for seed in range(40):
            rng = random.Random(seed)
            for satisfied in (True, False):
                made = generate("word_limit", y, satisfied, rng, vocab)
                assert check(made, y) == satisfied
                assert made.arg[1] >= 2, (n, satisfied, made.text)


def test_bullet_instruction_names_every_marker_its_checker_counts():
    """The checker counts lines starting with "- " or "* "; an instruction naming only "- " called '* a\\n* b' a
    violation of 'exactly 0 bullet points (lines starting with "- ")', which it literally follows."""
    y = "* one\n* two"
    for seed in range(20):
        for satisfied in (True, False):
            made = generate("bullet_count", y, satisfied, random.Random(seed), Vocabulary.of(LONG))
            assert check(made, y) == satisfied
            assert '"- "' in made.text and '"* "' in made.text, made.text


def test_include_word_takes_whole_words_of_non_ascii_text():
    """Words are runs of letters of any script: 'Müller' is one word, not 'M' + 'ller' (an instruction to include
    the word "ller" that the checker called satisfied)."""
    assert words("Grüße aus München, sagt Herr Müller's Hund.") == ["Grüße", "aus", "München", "sagt", "Herr",
                                                                   "Müller's", "Hund"]
    y = "Grüße aus München"
    for seed in range(20):
        made = generate("include_word", y, True, random.Random(seed), Vocabulary.of([y, "something else"]))
        assert made.arg in {"grüße", "aus", "münchen"}


def test_letter_case_needs_cased_letters():
    """Text without cased letters (CJK) is neither 'all lowercase' nor 'all uppercase': the checker called it both."""
    for arg in ("lower", "upper"):
        assert not check(Instruction("letter_case", arg, ""), "你好，世界")
    assert check(Instruction("letter_case", "lower", ""), "grüße 你好") and check(Instruction("letter_case", "upper", ""), "ÉTÉ")


def test_max_length_keeps_the_same_tokens_of_y_on_both_sides():
    """An intra row compares S(y | x_w) with S(y | x_l) for the same y: when max_length cuts y, both sides keep the
    same tokens of it (the shorter side's count), not as many as each prompt leaves room for; a longer x_l gave
    fewer (negative) log-prob terms on the rejected side."""
    from preflab.data.rows import load_rows
    from preflab.data.tokenize import tokenize_pairs
    from preflab.models.tiny import tiny_tokenizer

    row = {"prompt_chosen": "Q\n\nUse no commas.",
           "prompt_rejected": "Q\n\nUse at least 2 commas, and write them all out in a much longer instruction.",
           "completion": "a long answer without any commas at all and then some more words here"}
    (ex,), _ = load_rows([row], kind="pairwise")
    tok = tiny_tokenizer()
    (whole,), _ = tokenize_pairs([ex], tok, max_length=None)
    assert whole.chosen_ids == whole.rejected_ids
    limit = len(whole.rejected_prompt_ids) + 8
    (cut,), report = tokenize_pairs([ex], tok, max_length=limit)
    assert cut.chosen_ids == cut.rejected_ids == whole.chosen_ids[:8]
    assert report.response_truncated == 1
