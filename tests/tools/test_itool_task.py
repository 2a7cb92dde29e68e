"""iTool's synthetic function-calling task: calls are parsed (never run), graded order-insensitively; planted
code in a model's reply is an invalid call, counted, and nothing runs."""
import sys

import pytest

from preflab.tool_use.itool_search import (
    Sample,
    SearchConfig,
    StepSearch,
    letter_confidence,
    tree_pairs,
)
from preflab.tool_use.itool_task import (
    Call,
    bucket,
    grade_outputs,
    is_correct,
    make_itool_rows,
    parse_calls,
    rule_grade,
    schema_valid,
)

GOLD = "[get_weather(city='Paris', unit='C')]"


def test_parse_and_compare_ignore_argument_order_but_not_types():
    assert parse_calls(GOLD) == (Call("get_weather", (("city", "str", "Paris"), ("unit", "str", "C"))),)
    assert is_correct("[get_weather(unit='C', city='Paris')]", GOLD)
    assert is_correct("  [get_weather(unit='C', city='Paris')]\n", GOLD)
    assert not is_correct("[get_weather(city='Paris', unit='F')]", GOLD)
    assert not is_correct("[get_weather(city='Paris')]", GOLD)
    gold = "[convert_currency(amount=20, src='USD', dst='EUR')]"
    assert not is_correct("[convert_currency(amount='20', src='USD', dst='EUR')]", gold)  # a string is not 20
    assert not is_correct("[convert_currency(amount=20.0, src='USD', dst='EUR')]", gold)
    assert is_correct("[g(b=-1), f(a=True)]", "[f(a=True), g(b=-1)]")  # several calls: as a multiset
    assert not is_correct("[f(a=1)]", "[f(a=True)]")  # True == 1 in Python, not here
    assert is_correct("Hi Ann!", "Hi Ann!") and not is_correct("Hi Ann", "Hi Ann!")


def test_schema_check_through_the_tool_interface():
    assert schema_valid(parse_calls(GOLD))
    assert not schema_valid(parse_calls("[get_weather(city='Paris', unit='K')]"))  # enum
    assert not schema_valid(parse_calls("[set_alarm(hour='7', minute=0)]"))  # type
    assert not schema_valid(parse_calls("[delete_all(x=1)]"))  # unknown function


def test_rule_grader_letters():
    assert rule_grade("[get_weather(unit='C', city='Paris')]", GOLD, True) == "A"
    assert rule_grade("[get_weather(city='Rome', unit='C')]", GOLD, True) == "B"
    assert rule_grade("[get_weather(town='Paris', unit='C')]", GOLD, True) == "C"
    assert rule_grade("[get_time(city='Paris')]", GOLD, True) == "D"
    assert rule_grade("[get_weather(city='Paris'", GOLD, True) == "D"  # finished but not a call
    assert rule_grade("[get_weather(city='Pa", GOLD, False) == "A"  # a fragment of the gold
    assert rule_grade("[get_weather(city='Ro", GOLD, False) == "C"
    assert rule_grade("Hello", GOLD, False) == "D"
    assert rule_grade("Hi Bob!", "Hi Ann!", True) == "C" and rule_grade("[f(a=1)]", "Hi Ann!", True) == "D"


def test_rows_are_distinct_held_out_and_bucketed():
    train = make_itool_rows(200, seed=1)
    test = make_itool_rows(50, seed=2, exclude={r["request"] for r in train})
    assert len({r["request"] for r in train}) == 200
    assert not {r["request"] for r in train} & {r["request"] for r in test}
    for row in train + test:
        gold_calls = parse_calls(row["gold"])
        assert (row["kind"] == "tool") == (gold_calls is not None) == (")" in row["gold"])  # the spec's split agrees
        assert row["difficulty"] == (sum(len(c.arguments) for c in gold_calls) if gold_calls else 0)
        assert gold_calls is None or schema_valid(gold_calls)
    assert {bucket(r["difficulty"]) for r in train} == {"easy", "medium", "hard"}
    assert make_itool_rows(30, seed=5) == make_itool_rows(30, seed=5)


def _planted(tmp_path):
    target = tmp_path / "pwned"
    return target, [
        f"[__import__('os').system('touch {target}')]",
        f"[get_weather(city=open('{target}', 'w').write('x'), unit='C')]",
        "[get_weather(city=__import__('subprocess').run(['sh', '-c', 'echo hi']), unit='C')]",
        "[get_weather(**{'city': 'Paris', 'unit': 'C'})]",
        "[(lambda: [0 for _ in iter(int, 1)])()]",  # an infinite loop, were it run
        "[get_weather(city='Paris' * 10**9, unit='C')]",
        "[" * 100_000 + "]" * 100_000,
        "[get_weather(city=x, unit='C')]",
        "[exec('import os; os.fork()')]",
    ]


DANGEROUS_EVENTS = ("os.system", "subprocess.Popen", "os.fork", "os.exec", "os.posix_spawn", "exec")


def test_planted_calls_are_invalid_and_never_run(tmp_path):
    target, planted = _planted(tmp_path)
    events = []

    def hook(event, args):
        if event in DANGEROUS_EVENTS or (event == "open" and str(target) in str(args)):
            events.append(event)

    sys.addaudithook(hook)  # cannot be removed; it only records
    assert [parse_calls(text) for text in planted] == [None] * len(planted)
    metrics = grade_outputs(planted, [GOLD] * len(planted))
    assert metrics["invalid_calls"] == len(planted) and metrics["call_accuracy"] == 0.0
    assert [rule_grade(text, GOLD, True) for text in planted] == ["D"] * len(planted)
    assert not target.exists() and events == []


class OneShotSampler:
    def __init__(self, texts):
        self.texts = texts

    def sample(self, request):
        return [Sample([ord(c) for c in t] + [-1], [0.0] * (len(t) + 1), True, list(t) + [""])
                for t in self.texts[:request.n]]


def test_planted_output_inside_the_search_is_graded_poor_and_never_run(tmp_path):
    target, planted = _planted(tmp_path)
    search = StepSearch([1], GOLD, lambda text, fin: letter_confidence(rule_grade(text, GOLD, fin)),
                        SearchConfig(num_actions=2, mcts_iters=1, max_new_tokens=200))
    root = search.run(OneShotSampler(planted[:2]))
    assert root.visits == 1 and root.value == pytest.approx(-0.5)  # graded D: the leaf reward of a poor reply
    tree_pairs(root)
    assert not target.exists()


def test_a_negative_number_argument_keeps_its_sign():
    """`-1` in a call is a literal (a unary minus on a number): parsed as -1, and a reply with the opposite sign is
    not the gold call."""
    (call,) = parse_calls("[set_alarm(hour=-1, minute=0)]")
    assert call == Call.of("set_alarm", {"hour": -1, "minute": 0}) and call.as_dict()["hour"] == -1
    assert not is_correct("[convert_currency(amount=-20, src='USD', dst='EUR')]",
                          "[convert_currency(amount=20, src='USD', dst='EUR')]")


def test_difficulty_buckets_by_argument_count():
    """easy <= 1 argument (plain text is 0), medium = 2, hard >= 3 (the warm-up's easy-to-hard stages)."""
    assert [bucket(d) for d in range(5)] == ["easy", "easy", "medium", "hard", "hard"]
    rows = make_itool_rows(60, seed=2)
    time_rows = [r for r in rows if r["gold"].startswith("[get_time(")]
    assert time_rows and all(r["difficulty"] == 1 and bucket(r["difficulty"]) == "easy" for r in time_rows)
