"""RRPO's phrase ids by hand (preflab.data.phrases): which tokens belong to a differing phrase, and which pairs have
one."""
import pytest

from preflab.data.phrases import check_differing_phrase, phrase_spans, token_ids_for_spans
from preflab.data.report import RowProblem


def test_a_token_gets_a_phrase_id_only_when_its_characters_overlap_the_phrase():
    """Phrase 1 is characters [4, 7) ("dog" in "the dog ran"). Token offsets: "the" (0, 3) and " " (3, 4) end where
    the phrase starts and "ran" (8, 11) starts after it: 0; "do" (4, 6) and "g ra" (6, 10) overlap it: 1; a
    zero-width token (5, 5) (a special token inside the text) has no characters: 0."""
    offsets = [(0, 3), (3, 4), (4, 6), (5, 5), (6, 10), (8, 11)]
    assert token_ids_for_spans(offsets, [(4, 7, 1)]) == [0, 0, 1, 0, 1, 0]
    assert token_ids_for_spans(offsets, [(0, 3, 1), (8, 11, 2)]) == [1, 0, 0, 0, 2, 2]


def test_a_multi_word_phrase_spans_from_its_first_word_to_the_end_of_its_last():
    chosen, rejected = "it is a red big cat", "it is one blue small cat"
    c, r = phrase_spans(chosen, rejected)
    assert [(chosen[s:e], k) for s, e, k in c] == [("a red big", 1)]
    assert [(rejected[s:e], k) for s, e, k in r] == [("one blue small", 1)]


def test_a_pair_differing_by_a_word_on_one_side_only_has_a_phrase():
    """"very" inserted on the rejected side: the chosen ids are all 0 and the pair still has a differing phrase
    (no bad row); all 0 on both sides is the bad row no_differing_phrase."""
    check_differing_phrase([0, 0, 0], [0, 1, 0])
    check_differing_phrase([0, 2], [0, 0])
    with pytest.raises(RowProblem) as err:
        check_differing_phrase([0, 0], [0, 0, 0])
    assert err.value.reason == "no_differing_phrase"
