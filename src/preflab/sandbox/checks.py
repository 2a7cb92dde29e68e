"""`run_tests`: run candidate code against assertion-style test snippets, one sandboxed process per test.

Value tests (`assert EXPR == LITERAL`, or `LITERAL == EXPR`, where LITERAL is a Python literal): the program runs
the code and then writes `repr(EXPR)` to a private verdict pipe; the caller compares that value with LITERAL. The
expected value never enters the sandbox (neither the test statement nor the literal), so code cannot forge a pass
by printing markers, reading the harness, monkeypatching, exiting early, or writing the verdict pipe itself: it
would have to produce the right value, which is what the test asks. `literal_eval` only rebuilds plain values, so
no object with a custom `__eq__` reaches the comparison; a result whose repr is not a literal (a numpy scalar, a
custom object) fails the test.

Other tests (any statement): a test passes when `code` followed by the test runs to the end, judged from the
caller's side: exit status 0 *and* a fresh random nonce arriving on the verdict pipe. The caller writes the nonce
into a pipe the program inherits; only the statement after the test moves it to the verdict pipe. The nonce is never
in the program's source, constants, argv, environment or output, so printing a marker, reading the harness,
monkeypatching or exiting early fails.

Not defended for those other tests: code that deliberately drives the inherited pipes itself (reads the nonce pipe
and writes the verdict pipe, then exits) — code and test share one process. Write tests as value tests (`assert
f(x) == expected`) when that matters: they are judged on the caller's side.
"""
from __future__ import annotations

import ast
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


_NO_VALUE = object()


def value_test(test: str):
    """(expression source, expected value) for `assert EXPR == LITERAL` / `assert LITERAL == EXPR`, else None."""
    try:
        tree = ast.parse(test.strip())
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert) or tree.body[0].msg is not None:
        return None
    cmp = tree.body[0].test
    if not (isinstance(cmp, ast.Compare) and len(cmp.ops) == 1 and isinstance(cmp.ops[0], ast.Eq)):
        return None
    for expr, literal in ((cmp.left, cmp.comparators[0]), (cmp.comparators[0], cmp.left)):
        try:
            expected = ast.literal_eval(literal)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        return ast.unparse(expr), expected
    return None


def _read_all(fd: int, limit: int = 1 << 20) -> bytes:
    os.set_blocking(fd, False)
    chunks, size = [], 0
    while size < limit:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _run_value_test(code: str, test: str, expr: str, expected, timeout_s: float,
                    sandbox_kwargs: dict) -> TestOutcome:
    verdict_r, verdict_w = os.pipe()
    try:
        program = (f"{code}\n\n\nimport os as _preflab_os\n_preflab_value = repr({expr}).encode()\n"
                   f"while _preflab_value:\n    _preflab_value = _preflab_value[_preflab_os.write({verdict_w}, "
                   f"_preflab_value):]\n")
        result = _run_python(program, timeout_s=timeout_s, pass_fds=(verdict_w,), **sandbox_kwargs)
        os.close(verdict_w)
        verdict_w = -1
        raw = _read_all(verdict_r)
    finally:
        for fd in (verdict_r, verdict_w):
            if fd >= 0:
                os.close(fd)
    try:
        value = ast.literal_eval(raw.decode("utf-8"))
    except (ValueError, TypeError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        value = _NO_VALUE
    # plain values only (literal_eval): `==` here is exactly the test's `==`; a result whose repr is not a literal
    # (a numpy scalar, a custom object) fails: value tests compare plain values
    passed = result.status == "ok" and result.returncode == 0 and value is not _NO_VALUE and value == expected
    return TestOutcome(test=test, passed=bool(passed), result=result)


def _run_one(code: str, test: str, timeout_s: float, sandbox_kwargs: dict) -> TestOutcome:
    split = value_test(test)
    if split is not None:
        return _run_value_test(code, test, split[0], split[1], timeout_s, sandbox_kwargs)
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
