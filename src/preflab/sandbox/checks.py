"""`run_tests`: run candidate code against assertion-style test snippets, one sandboxed process per test.

A test passes when `code` followed by the test runs to the end, judged from the caller's side: exit status 0 *and*
a fresh random nonce arriving on a private verdict pipe. The caller writes the nonce into a pipe the program
inherits; only the statement after the test moves it from that pipe to the verdict pipe. The nonce is never in
the program's source, constants, argv, environment or output, so code that prints a marker, reads the harness's
source or constants, monkeypatches functions, or exits early with status 0 (`sys.exit(0)`, `os._exit(0)`) fails.

Not defended: code that deliberately drives the inherited pipes itself (reads the nonce pipe and writes the verdict
pipe, then exits) — code and test share one process, and no in-process secret survives code that inspects its own
file descriptors. Use rewards that compare outputs computed in the sandbox with expected values on the caller's side
when that matters.
"""
from __future__ import annotations

import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from preflab.sandbox.runner import SandboxError, SandboxResult, _run_python


@dataclass(frozen=True)
class TestOutcome:
    """One test's verdict; `result` holds the run's status, output and timings."""

    __test__ = False  # not a pytest test class

    test: str
    passed: bool
    result: SandboxResult


def program_for_test(code: str, test: str, nonce_fd: int, verdict_fd: int) -> str:
    """The program run for one test: the code, the test, then the nonce moved from `nonce_fd` to `verdict_fd`."""
    return (f"{code}\n\n\n{test}\n\nimport os as _preflab_os\n"
            f"_preflab_os.write({verdict_fd}, _preflab_os.read({nonce_fd}, 64))\n")


def _run_one(code: str, test: str, timeout_s: float, sandbox_kwargs: dict) -> TestOutcome:
    nonce = secrets.token_bytes(32)
    nonce_r, nonce_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    try:
        os.write(nonce_w, nonce)
        os.close(nonce_w)
        nonce_w = -1
        result = _run_python(program_for_test(code, test, nonce_r, verdict_w), timeout_s=timeout_s,
                             pass_fds=(nonce_r, verdict_w), **sandbox_kwargs)
        os.close(verdict_w)
        verdict_w = -1
        os.set_blocking(verdict_r, False)
        try:
            verdict = os.read(verdict_r, 4096)
        except BlockingIOError:
            verdict = b""
    finally:
        for fd in (nonce_r, nonce_w, verdict_r, verdict_w):
            if fd >= 0:
                os.close(fd)
    passed = result.status == "ok" and result.returncode == 0 and verdict == nonce
    return TestOutcome(test=test, passed=passed, result=result)


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
        return _run_one(code, test, timeout_s, sandbox_kwargs)

    if max_workers == 1 or len(tests) <= 1:
        return [one(t) for t in tests]
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(one, tests))
