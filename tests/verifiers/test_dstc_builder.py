"""DSTC minimax selection on hand-made pass matrices, and the sandboxed build of the matrix and pairs."""
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from preflab.errors import DataError
from preflab.verifiers.dstc import MinimaxSelection, build_dstc_dataset, dstc_pair, execution_matrix, minimax_select

TOY = [[1, 1, 0, 1], [1, 0, 0, 1], [0, 0, 0, 1], [1, 1, 1, 1]]


def test_toy_pick():
    # row sums [3, 2, 1, 4] -> y+ = 3, y- = 2; column sums [3, 2, 1, 4];
    # z+ = the least-passed test code 3 passes = 2; z- = the most-passed test code 2 fails = 0
    assert minimax_select(TOY) == MinimaxSelection(chosen_code=3, chosen_test=2, rejected_code=2, rejected_test=0)


def test_ties_break_by_lowest_index():
    m = [[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 1, 0]]
    # rows [2, 2, 1, 1] -> y+ = 0, y- = 2; cols [2, 4, 0]; code 0 passes tests 0, 1 -> z+ = 0;
    # code 2 fails tests 0 and 2 (cols 2 and 0) -> z- = 0
    assert minimax_select(m) == MinimaxSelection(0, 0, 2, 0)


def test_skips():
    assert minimax_select([[1, 0], [0, 1]]) is None            # equal row sums
    assert minimax_select([[1, 1], [1, 1]]) is None            # everything passes
    assert minimax_select([[0, 0], [0, 0]]) is None
    with pytest.raises(DataError, match="0/1"):
        minimax_select([[1, 2]])


@settings(max_examples=200, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(1, 6)), elements=st.integers(0, 1)))
def test_invariants(m):
    pick = minimax_select(m)
    rows = m.sum(1)
    if pick is None:
        return
    assert m[pick.chosen_code, pick.chosen_test] == 1 and m[pick.rejected_code, pick.rejected_test] == 0
    assert pick.chosen_code != pick.rejected_code
    assert rows[pick.chosen_code] == rows.max() and rows[pick.rejected_code] == rows.min()


def test_pairs_from_a_given_matrix():
    codes, tests = ["c0", "c1", "c2", "c3"], ["t0", "t1", "t2", "t3"]
    assert dstc_pair("p", codes, tests, matrix=TOY) == [{"prompt": "p", "chosen": "c3\n\nt2",
                                                          "rejected": "c2\n\nt0"}]
    assert dstc_pair("p", codes, tests, matrix=TOY, fmt="kto") == [
        {"prompt": "p", "completion": "c3\n\nt2", "label": True},
        {"prompt": "p", "completion": "c2\n\nt0", "label": False}]
    with pytest.raises(DataError, match="does not match"):
        dstc_pair("p", codes[:3], tests, matrix=TOY)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="preflab.sandbox is Linux-only")
def test_sandboxed_matrix_and_dataset():
    right = "def inc(x):\n    return x + 1\n"
    wrong = "def inc(x):\n    return x + 2\n"
    runaway = "def inc(x):\n    while True:\n        pass\n"
    tests = ["assert inc(1) == 2", "assert inc(-1) == 0", "assert inc(0) == 2"]   # the last test is wrong
    kwargs = dict(timeout_s=1.5, memory_mb=128, max_workers=3)
    m = execution_matrix([right, wrong, runaway], tests, **kwargs)
    np.testing.assert_array_equal(m, [[1, 1, 0], [0, 0, 1], [0, 0, 0]])          # a timeout counts as 0
    rows = build_dstc_dataset([{"prompt": "write inc", "codes": [right, wrong, runaway], "tests": tests,
                                "matrix": m}])
    assert rows == [{"prompt": "write inc", "chosen": right + "\n\n" + tests[0],
                     "rejected": runaway + "\n\n" + tests[0]}]


def test_a_matrix_with_another_number_of_tests_is_refused():
    """A pass matrix whose columns are not the tests (here 4 columns for 3 tests) would pick a test index past the
    list or the wrong test: refused, naming both shapes."""
    codes, tests = ["c0", "c1", "c2", "c3"], ["t0", "t1", "t2"]
    with pytest.raises(DataError, match=r"matrix shape \(4, 4\) does not match 4 codes x 3 tests"):
        dstc_pair("p", codes, tests, matrix=TOY)
