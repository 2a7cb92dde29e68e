"""The tool interface: schema checks, the deterministic cache, errors as the fixed observation, sandboxed code."""
import json

import pytest

from preflab.errors import DataError
from preflab.tools import (TOOL_ERROR_OBSERVATION, Calculator, DateCalculator, PythonInterpreter, ToolBox,
                           evaluate_expression, validate_arguments)


def test_calculator_is_arithmetic_not_eval():
    assert evaluate_expression("3 + 4 * 2") == 11
    assert Calculator().call({"expression": "0.1 + 0.2"}) == "0.3"
    assert Calculator().call({"expression": "(2 ** 10) // 3 - max(1, 2)"}) == str(2 ** 10 // 3 - 2)
    for bad in ("__import__('os').system('true')", "a + 1", "2 ** 10000", "(1).__class__"):
        with pytest.raises((ValueError, SyntaxError)):
            evaluate_expression(bad)


def test_calendar_arithmetic():
    tool = DateCalculator()
    assert tool.call({"operation": "add_months", "date": "2024-01-31", "months": 1}) == "2024-02-29"
    assert tool.call({"operation": "add_months", "date": "2023-12-15", "months": -13}) == "2022-11-15"
    assert tool.call({"operation": "add_days", "date": "2024-02-28", "days": 2}) == "2024-03-01"
    assert tool.call({"operation": "diff_days", "start": "2024-01-01", "end": "2025-01-01"}) == "366"
    assert tool.call({"operation": "weekday", "date": "2026-12-04"}) == "Friday"


def test_schema_validation_names_the_problem():
    schema = Calculator.parameters
    assert validate_arguments(schema, {"expression": "1"}) == ""
    assert "missing required argument 'expression'" in validate_arguments(schema, {})
    assert "must be string" in validate_arguments(schema, {"expression": 3})
    assert "unknown argument 'x'" in validate_arguments(schema, {"expression": "1", "x": 1})
    assert "must be one of" in validate_arguments(DateCalculator.parameters, {"operation": "explode"})


class Flaky:
    name, description = "Flaky", "fails on odd numbers"
    parameters = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

    def __init__(self):
        self.calls = 0

    def call(self, arguments):
        self.calls += 1
        if arguments["n"] % 2:
            raise RuntimeError("odd")
        return f"ok {arguments['n']}"


def test_errors_become_the_fixed_observation_and_are_counted(tmp_path):
    flaky = Flaky()
    box = ToolBox([flaky, Calculator()], cache_path=tmp_path / "cache.json")
    assert box.call("Flaky", {"n": 2}).observation == "ok 2"
    failed = box.call("Flaky", {"n": 3})
    assert (failed.observation, failed.ok) == (TOOL_ERROR_OBSERVATION, False) and "odd" in failed.error
    assert box.call("Nope", {}).observation == TOOL_ERROR_OBSERVATION
    assert box.call("Calculator", {"expression": 5}).observation == TOOL_ERROR_OBSERVATION
    assert box.call("Calculator", {"expression": "1/0"}).observation == TOOL_ERROR_OBSERVATION
    assert box.stats == {"calls": 5, "cache_hits": 0, "errors": 4, "unknown_tool": 1, "bad_arguments": 1,
                         "not_text": 0, "timeouts": 0}


class Forgetful:
    """A plug-in whose call() forgets `return` for unknown countries and returns a number for one."""
    name, description = "Lookup", "capital city of a country"
    parameters = {"type": "object", "properties": {"country": {"type": "string"}}, "required": ["country"]}

    def call(self, arguments):
        if arguments["country"] == "France":
            return "Paris"
        if arguments["country"] == "Number":
            return 42


def test_a_tool_that_returns_no_text_is_a_counted_failure_not_the_text_none(tmp_path):
    box = ToolBox([Forgetful()], cache_path=tmp_path / "cache.json")
    assert box.call("Lookup", {"country": "France"}).observation == "Paris"
    for country, kind in (("Atlantis", "NoneType"), ("Number", "int")):
        result = box.call("Lookup", {"country": country})
        assert (result.observation, result.ok) == (TOOL_ERROR_OBSERVATION, False)
        assert result.error == f"tool 'Lookup' returned {kind}, not str: call() must return the observation as text"
    again = box.call("Lookup", {"country": "Atlantis"})           # from the cache: still the failure, counted
    assert (again.observation, again.ok, again.cached) == (TOOL_ERROR_OBSERVATION, False, True)
    assert box.stats == {"calls": 4, "cache_hits": 1, "errors": 3, "unknown_tool": 0, "bad_arguments": 0,
                         "not_text": 2, "timeouts": 0}


def test_a_broken_tool_cache_names_the_file(tmp_path):
    path = tmp_path / "tool_cache.json"
    for text, why in (("{not json", "the tool cache is not valid JSON"),
                      ("[1, 2]", "(the file is not a JSON object)"),
                      ('{"[\\"Lookup\\"]": {"observation": 42, "ok": true}}',
                       "(entry '[\"Lookup\"]' needs a text 'observation' and a true/false 'ok')")):
        path.write_text(text)
        with pytest.raises(DataError) as err:
            ToolBox([Forgetful()], cache_path=path)
        assert str(err.value).startswith(f"{path}: ") and why in str(err.value)
        assert str(err.value).endswith("delete it to query the tools again.")


def test_cache_makes_reruns_identical_and_never_requeries(tmp_path):
    path = tmp_path / "cache.json"
    first = Flaky()
    box = ToolBox([first], cache_path=path)
    calls = [box.call("Flaky", {"n": n}) for n in (2, 3, 2, 3)]
    assert first.calls == 2 and [c.cached for c in calls] == [False, False, True, True]
    box.save()
    again = Flaky()
    box2 = ToolBox([again], cache_path=path)
    replay = [box2.call("Flaky", {"n": n}) for n in (2, 3)]
    assert again.calls == 0
    assert [(c.observation, c.ok) for c in replay] == [(c.observation, c.ok) for c in calls[:2]]
    box2.save()
    assert json.loads(path.read_text()) == box.cache


@pytest.mark.slow
def test_python_interpreter_runs_in_the_sandbox(tmp_path):
    box = ToolBox([PythonInterpreter(timeout_s=5)])
    assert box.call("PythonInterpreter", {"code": "print(sum(range(10)))"}).observation == "45"
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    secret.chmod(0o600)
    escape = (f"open({str(tmp_path / 'planted.txt')!r}, 'w').write('pwned')\n"
              "import socket; socket.create_connection(('127.0.0.1', 1), timeout=1)")
    result = box.call("PythonInterpreter", {"code": escape})
    assert result.observation == TOOL_ERROR_OBSERVATION and not (tmp_path / "planted.txt").exists()
    assert box.call("PythonInterpreter", {"code": "while True: pass"}).observation == TOOL_ERROR_OBSERVATION


def test_a_failed_cache_save_keeps_the_saved_cache_and_leaves_no_temp_file(tmp_path):
    """ToolBox.save writes through preflab.atomic_file: a save that fails part-way (here an entry json cannot write,
    after the entries before it were written) leaves the cache file as the last save wrote it, and no temp file."""
    path = tmp_path / "cache.json"
    box = ToolBox([Flaky()], cache_path=path)
    box.call("Flaky", {"n": 2})
    box.save()
    saved = path.read_text()
    box.call("Flaky", {"n": 4})
    box.cache["~ sorts last"] = {"observation": object(), "ok": True}  # json.dump fails after writing the others
    with pytest.raises(TypeError):
        box.save()
    assert path.read_text() == saved and json.loads(saved) == {k: box.cache[k] for k in list(box.cache)[:1]}
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]
