"""Ladder programs (seed #43): the graph type and both builders, against the spec's checks (§43.4)."""
import random

import pytest

from preflab.ladder.builders import (Retriever, dpo_rows, raft_rows, structural_negative, substitution_negative)
from preflab.ladder.program import (LadderError, elements, isomorphic, parse_program, serialize,
                                    substitution_distance)
from preflab.ladder.synthetic import make_ladder_rows

ROWS = make_ladder_rows(120, seed=3, max_rungs=2)


def test_serialise_parse_round_trip():
    for row in ROWS:
        program = parse_program(row["program_text"])
        assert serialize(program) == row["program_text"]
        assert parse_program(serialize(program)) == program


def test_isomorphism_ignores_order_of_commuting_contacts_only():
    a = parse_program("XIC(I0.1) XIO(I0.2) [XIC(M0) | GT(D1,10)] -> OTE(Q0.0)")
    b = parse_program("[GT(D1,10) | XIC(M0)] XIO(I0.2) XIC(I0.1) -> OTE(Q0.0)")
    assert isomorphic(a, b) and substitution_distance(a, b) == 0
    assert not isomorphic(a, parse_program("XIC(I0.1) XIC(I0.2) [XIC(M0) | GT(D1,10)] -> OTE(Q0.0)"))
    assert not isomorphic(a, parse_program("[XIC(I0.1) | XIO(I0.2)] [XIC(M0) | GT(D1,10)] -> OTE(Q0.0)"))
    two = parse_program("XIC(I0.1) -> OTE(Q0.0)\nXIC(I0.2) -> OTE(Q0.1)")
    assert not isomorphic(two, parse_program("XIC(I0.2) -> OTE(Q0.1)\nXIC(I0.1) -> OTE(Q0.0)"))  # scan order


def test_substitution_distance_matches_children_optimally():
    a = parse_program("XIC(I0.1) XIO(I0.2) -> OTE(Q0.0)")
    assert substitution_distance(a, parse_program("XIO(I0.2) XIC(I0.3) -> OTE(Q0.0)")) == 1
    assert substitution_distance(a, parse_program("XIO(I0.2) XIC(I0.3) -> OTL(Q0.0)")) == 2
    assert substitution_distance(a, parse_program("[XIC(I0.1) | XIO(I0.2)] -> OTE(Q0.0)")) is None


@pytest.mark.parametrize("bad", ["", "XIC(I0.1)", "XIC(I0.1) -> XIC(Q0.0)", "[XIC(I0.1)] -> OTE(Q0.0)",
                                 "XIC(I0.1) -> OTE(Q0.0) OTE(Q0.1)", "FOO(I0.1) -> OTE(Q0.0)",
                                 "TON(I0.1) -> OTE(Q0.0)", "XIC(I0.1) -> TON(T1,x)", "[XIC(I0.1) | -> OTE(Q0.0)"])
def test_invalid_programs_are_refused(bad):
    with pytest.raises(LadderError):
        parse_program(bad)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_substitution_negatives_are_valid_non_isomorphic_at_exact_distance(k):
    rng, made, eligible = random.Random(k), 0, 0
    for row in ROWS:
        gold = parse_program(row["program_text"])
        eligible += len([e for r in gold for e in elements(r.condition)]) + len(gold) >= k
        neg = substitution_negative(gold, k, rng)
        if neg is None:
            continue
        made += 1
        assert parse_program(serialize(neg)) == neg
        assert not isomorphic(neg, gold) and substitution_distance(gold, neg) == k
    assert made == eligible > 80  # found for every program with k elements


def test_structural_negatives_change_the_logic():
    rng = random.Random(0)
    for row in ROWS:
        gold = parse_program(row["program_text"])
        neg = structural_negative(gold, rng)
        assert neg is not None and not isomorphic(neg, gold) and substitution_distance(gold, neg) is None
        for rung in neg:  # no repeated contact (a neutral edit)
            ops = [e.args[0] for e in elements(rung.condition)]
            assert len(ops) == len(set(ops))


def test_retrieval_never_returns_the_query_nor_test_items():
    train, test = ROWS[:100], ROWS[100:]
    augmented = raft_rows(train, train, k=3, same_split=True)
    for i, row in enumerate(augmented):
        assert i not in row["retrieved"] and len(row["retrieved"]) == 3
        assert all(train[j]["instruction"] != row["instruction"] for j in row["retrieved"])
    for row in raft_rows(train, test, k=3, same_split=False):
        assert all(0 <= j < 100 for j in row["retrieved"]) and row["prompt"].endswith(f"Q: {row['instruction']}\nA:")
        assert f"Q: {row['instruction']}\nA: " not in row["prompt"]
    duplicate = Retriever(["open valve", "open valve", "close valve"])
    assert duplicate.top_k("open valve", 2) == [2]  # an identical instruction is the query too


def test_dpo_rows_count_every_outcome():
    rows = raft_rows(ROWS, ROWS, k=1, same_split=True)
    pairs, counts = dpo_rows(rows, seed=1)
    assert sum(counts.values()) == len(rows) and len(pairs) == len(rows) - counts.get("no_negative", 0)
    for p in pairs:
        assert p["chosen"] != p["rejected"]
        assert not isomorphic(parse_program(p["chosen"]), parse_program(p["rejected"]))


def test_retrieval_breaks_ties_by_the_lower_index_and_dpo_pairs_keep_the_gold_as_chosen():
    """Equal TF-IDF scores are retrieved in training order (the lower index first); every DPO pair's chosen is its
    row's gold program and its rejected an edit of it (never the reverse)."""
    tied = Retriever(["open valve one", "open valve two", "close pump"])
    assert tied.top_k("open valve", 2) == [0, 1] and tied.top_k("open valve", 1) == [0]
    rows = raft_rows(ROWS[:40], ROWS[:40], k=1, same_split=True)
    gold = {r["prompt"]: r["program_text"] for r in rows}
    pairs, _ = dpo_rows(rows, seed=1)
    assert pairs and all(p["chosen"] == " " + gold[p["prompt"]] for p in pairs)
    assert all(p["rejected"] != " " + gold[p["prompt"]] for p in pairs)
