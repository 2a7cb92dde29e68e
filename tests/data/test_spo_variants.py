"""SPO's degree-variant builder (preflab.data.spo_variants, methods/objectives.md §C #9): the default extractor's
rule, nested deletions with label j, deterministic for a seed, the prompt never touched, missing and too-long
variants counted."""
from types import SimpleNamespace

import pytest

from preflab.data.spo_variants import build_degree_variants, longest_words, report_note
from preflab.errors import ConfigError
from preflab.models.tiny import tiny_tokenizer
from preflab.loops.degree_head import variant_sequences

TOK = tiny_tokenizer()


def ids(text):
    return TOK(text, add_special_tokens=False).input_ids


def pair(row_id, prompt, chosen, rejected):
    return SimpleNamespace(row_id=row_id, prompt_ids=[1] + ids(prompt), chosen_ids=ids(chosen) + [TOK.eos_token_id],
                           rejected_ids=ids(rejected) + [TOK.eos_token_id], extras={})


def text(token_ids):
    return TOK.decode(token_ids, skip_special_tokens=True)


def test_longest_words_ranks_content_words_by_length_then_position():
    response = ids("The quick brown fox jumps over the lazy dog") + [TOK.eos_token_id]
    units = [text([response[p] for p in u]).strip() for u in longest_words(response, TOK)]
    # stop words (the, over) and the EOS are never units; ties of length keep the order of the response
    assert units == ["quick", "brown", "jumps", "lazy", "fox", "dog"]


def test_variants_delete_nested_units_with_label_j_and_keep_the_rest():
    ex = pair(7, "say it:\n", "alpha beta gamma delta", "one two")
    (per,), report = build_degree_variants([ex], TOK, degrees=3, seed=0)
    chosen = per["chosen"]
    assert [j for j, _ in chosen] == [0, 1, 2, 3]
    assert chosen[0][1] == ex.chosen_ids
    words = [set(text(v).split()) for _, v in chosen]
    for j in range(1, 4):  # variant j = variant j-1 minus exactly one of the three longest words
        assert words[j - 1] - words[j] <= {"alpha", "gamma", "delta"} and len(words[j - 1] - words[j]) == 1
        assert words[j] < words[j - 1]
    assert words[3] == {"beta"}  # "beta" is the 4th longest (ties by position): never deleted with J = 3
    # "one two" has two units: degree 3 is missing for it, counted
    assert [j for j, _ in per["rejected"]] == [0, 1, 2]
    assert report == {"responses": 2, "degrees": 3, "responses_with_fewer_units_than_degrees": 1,
                      "variants_missing": 1, "variants_over_max_length": 0}
    assert "1 of 2 responses have fewer than J=3 key units; 1 degree variants are missing" in report_note(report,
                                                                                                          "train")


def test_variants_are_deterministic_for_a_seed_and_depend_on_it():
    rows = [pair(i, "q:\n", "red green blue black white", "cats dogs birds fish") for i in range(6)]
    first, _ = build_degree_variants(rows, TOK, degrees=3, seed=1)
    again, _ = build_degree_variants(rows, TOK, degrees=3, seed=1)
    other, _ = build_degree_variants(rows, TOK, degrees=3, seed=2)
    assert first == again
    assert first != other  # another seed deletes the units in another order for some response


def test_variant_sequences_keep_each_prompt_whole_and_place_labels():
    rows = [pair(0, "first prompt words:\n", "apple banana cherry", "pear plum"),
            pair(1, "second:\n", "kiwi lime", "grape melon peach")]
    variants, _ = build_degree_variants(rows, TOK, degrees=2, seed=0)
    seqs, slots, labels, originals = variant_sequences(rows, variants, 3)
    assert all(slot % 3 > 0 for slot in slots)  # j >= 1 only: j = 0 is the pair forward's own sequence ...
    assert originals == [(0, 0), (3, 2), (6, 1), (9, 3)]  # ... (its slot, its row: chosen_0, chosen_1, rejected_0..)
    for (prompt, response), slot in zip(seqs, slots):
        b = slot // 6
        assert prompt == rows[b].prompt_ids  # the prompt of every variant is its example's, untouched
        side = ("chosen", "rejected")[slot // 3 % 2]
        response_ids = getattr(rows[b], f"{side}_ids")
        assert set(response) <= set(response_ids)  # tokens are only ever taken out of the response
    assert labels.tolist() == [[[0, 1, 2], [0, 1, 2]], [[0, 1, 2], [0, 1, 2]]]


def test_a_variant_over_max_length_is_dropped_and_counted():
    ex = pair(0, "p:\n", "longword short", "x")
    budget = len(ex.prompt_ids) + len(ids(" short")) + 1  # room for " short" + EOS only
    (per,), report = build_degree_variants([ex], TOK, degrees=1, seed=0, max_length=budget)
    # the whole chosen response (j = 0) is over max_length: dropped, never cut; j = 1 deletes "longword"
    assert [(j, text(v)) for j, v in per["chosen"]] == [(1, " short")]
    assert report["variants_over_max_length"] == 1 and report["variants_missing"] == 1


def test_degrees_below_one_are_refused():
    with pytest.raises(ConfigError, match="degrees"):
        build_degree_variants([pair(0, "p:\n", "a", "b")], TOK, degrees=0, seed=0)


def test_deleting_a_word_deletes_the_space_before_it_and_an_eos_ends_a_word():
    """A whitespace-only token belongs to the word after it: deleting "cccccc" from "aa bb cccccc" leaves "aa bb",
    not "aa bb " (the variant is a response the model could have written)."""
    ex = pair(0, "q:\n", "aa bb cccccc", "dd")
    (per,), _ = build_degree_variants([ex], TOK, degrees=1, seed=0)
    assert [(j, TOK.decode(v)) for j, v in per["chosen"]] == [(0, "aa bb cccccc</s>"), (1, "aa bb</s>")]


def test_chosen_and_rejected_draw_their_deletion_orders_apart():
    """The order is drawn from Random(f"{seed}:{row_id}:{side}"): a rejected response with the chosen one's words
    does not repeat its deletions in every row."""
    rows = [pair(i, "q:\n", "red green blue black white", "red green blue black white") for i in range(6)]
    variants, _ = build_degree_variants(rows, TOK, degrees=3, seed=0)
    assert any(per["chosen"] != per["rejected"] for per in variants)
