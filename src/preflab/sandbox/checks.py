"""`run_tests`: run candidate code against assertion-style test snippets, one sandboxed process per test.

A test passes when `code` followed by the test runs to the end: exit status 0 *and* a random marker printed after
the test reaches stdout. The marker stops code that exits early with status 0 (`sys.exit(0)`, `os._exit(0)` at
import time) from passing every test; code that reads its own source to find the marker is not defended against.
"""
from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from preflab.sandbox.runner import SandboxError, SandboxResult, run_python


@dataclass(frozen=True)
class TestOutcome:
    """One test's verdict; `result` holds the run's status, output and timings."""

    __test__ = False  # not a pytest test class

    test: str
    passed: bool
    result: SandboxResult


def program_for_test(code: str, test: str, marker: str) -> str:
    """The program run for one test: the code, the test, then the marker written straight to fd 1."""
    return f"{code}\n\n\n{test}\n\nimport os as _preflab_os\n_preflab_os.write(1, b'\\n{marker}\\n')\n"


def run_tests(code: str, tests: list[str], *, timeout_s: float = 2.0, max_workers: int = 1,
              **sandbox_kwargs) -> list[TestOutcome]:
    """Run `code` against each snippet in `tests` (e.g. "assert add(1, 2) == 3"), each in its own sandbox run.

    A timeout, crash, memory or output limit counts as a failure. `max_workers` runs that many tests at once
    (threads waiting on subprocesses); `sandbox_kwargs` go to `run_python` (memory_mb, max_output_bytes, ...).
    """
    if isinstance(tests, str) or not all(isinstance(t, str) for t in tests):
        raise SandboxError("tests must be a list of strings, one test snippet each.")
    if max_workers < 1:
        raise SandboxError(f"max_workers={max_workers!r} is invalid: use 1 or more.")

    def one(test: str) -> TestOutcome:
        marker = "preflab-test-passed-" + secrets.token_hex(16)
        result = run_python(program_for_test(code, test, marker), timeout_s=timeout_s, **sandbox_kwargs)
        passed = result.status == "ok" and marker in result.stdout
        return TestOutcome(test=test, passed=passed, result=result)

    if max_workers == 1 or len(tests) <= 1:
        return [one(t) for t in tests]
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(one, tests))
