"""`run_tests`: run candidate code against assertion-style test snippets, one sandboxed process per test.

Tests judged on the caller's side (the usual case): a snippet whose checks are all top-level `assert` statements of
these forms, with any other statements before them (assignments and calls that set values up; no `raise` and no
`assert` inside them) and an `assert` last:

    assert EXPR                      assert not EXPR
    assert EXPR OP LITERAL           assert LITERAL OP EXPR        (OP: == != < <= > >= in, not in; is, is not
    assert LIT OP EXPR OP LIT ...                                   with None/True/False; a chain: one EXPR)
    assert abs(EXPR - LITERAL) OP LITERAL                           (a tolerance)

The program runs the code and the test's other statements; each `assert` is replaced by a statement that returns
`repr(EXPR)` (`repr(bool(EXPR))` for the first two forms) on a private channel, and the caller applies the
comparison, the literals and any `not`. Those never enter the sandbox (neither the assert statement nor its
message), so code cannot forge a pass by printing markers, reading the harness, monkeypatching, exiting early,
skipping lines with a trace function or writing the channel itself: it would have to produce the right values,
which is what the test asks. `literal_eval` only rebuilds plain values, so no object with a custom `__eq__` reaches
the comparison (nan, inf and -inf are read as floats); a value whose repr is not a literal (a numpy scalar, a
custom object) fails the test, and so does a test whose values never all arrive. A condition that is not a
comparison with literals (`assert is_sorted(xs)`, `assert f(1) == f(2)`) runs in the sandbox as Python would run
it; only its truth comes back, and whether it was negated stays outside. `value_test` is the narrower
`assert EXPR == LITERAL` form alone.

Other tests (a loop of asserts, an assert inside a function, `raise`, a statement after the last assert): a test
passes when `code` followed by the test runs to the end, judged by exit status 0 *and* a fresh random nonce
arriving on the verdict pipe. The caller writes the nonce into a pipe the program
inherits; only the statement after the test moves it to the verdict pipe. Printing a marker or exiting early fails.

Not defended for those other tests: code that deliberately drives the inherited pipes itself (reads the nonce pipe
and writes the verdict pipe, e.g. from an `atexit` hook) or installs a trace function that jumps over the test's
lines — code and test share one process, so such a verdict can be forged by a few generic lines that need no
knowledge of the test. `TestOutcome.judged_by_caller` says which kind each test was; write tests in the forms above
when that matters (tests/test_sandbox_attacks.py shows both forgeries).
"""
from __future__ import annotations

import ast
import operator
import os
import secrets
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from preflab.sandbox.runner import SandboxError, SandboxResult, _run_python


@dataclass(frozen=True)
class TestOutcome:
    """One test's verdict; `result` holds the run's status, output and timings."""

    __test__ = False  # not a pytest test class

    test: str
    passed: bool
    result: SandboxResult
    judged_by_caller: bool = False  # the test's asserts were judged on the caller's side (see the module docstring)


def program_for_test(code: str, test: str, nonce_fd: int, verdict_fd: int) -> str:
    """The program run for one test: the code, the test, then the nonce moved from `nonce_fd` to `verdict_fd`."""
    return (f"{code}\n\n\n{test}\n\nimport os as _preflab_os\n"
            f"_preflab_os.write({verdict_fd}, _preflab_os.read({nonce_fd}, 64))\n")


_VALUE_LIMIT = 1 << 20  # bytes of returned values read back; more fails the test
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not}


def value_test(test: str):
    """(expression source, expected value) for `assert EXPR == LITERAL` / `assert LITERAL == EXPR`, else None
    (the narrowest caller-judged form; `tool_use.dstc_task` grades model-written tests with it)."""
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
        found, expected = _literal(literal)
        if found:
            return ast.unparse(expr), expected
    return None


def _literal(node: ast.AST) -> tuple[bool, object]:
    """(True, value) when `node` is a Python literal (ast.literal_eval), else (False, None)."""
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


@dataclass(frozen=True)
class CallerCheck:
    """One `assert` judged on the caller's side: the program returns repr(`shipped`) (repr(bool(`shipped`)) when
    `as_bool`), and `verdict(value)` evaluates the assert's condition on that value (it may raise: a failure)."""

    shipped: ast.expr
    as_bool: bool
    verdict: Callable[[object], object]


def _tolerance(node: ast.expr):
    """(EXPR, LITERAL, EXPR is on the left) for `abs(EXPR - LITERAL)` / `abs(LITERAL - EXPR)`, else None."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "abs"
            and len(node.args) == 1 and not node.keywords and isinstance(node.args[0], ast.BinOp)
            and isinstance(node.args[0].op, ast.Sub)):
        return None
    left, right = node.args[0].left, node.args[0].right
    (left_lit, lv), (right_lit, rv) = _literal(left), _literal(right)
    if left_lit == right_lit:
        return None
    return (left, rv, True) if right_lit else (right, lv, False)


def _as_bool(node: ast.expr) -> CallerCheck:
    """The whole condition runs in the sandbox; only its truth comes back (a bool, nothing else passes)."""
    return CallerCheck(node, True, lambda v: type(v) is bool and v)


def _check_of(cond: ast.expr) -> CallerCheck:
    """How the caller judges `assert cond`: `not` and comparisons with literals stay on the caller's side."""
    if isinstance(cond, ast.UnaryOp) and isinstance(cond.op, ast.Not):
        inner = _check_of(cond.operand)
        return CallerCheck(inner.shipped, inner.as_bool, lambda v, f=inner.verdict: not f(v))
    if not isinstance(cond, ast.Compare):
        return _as_bool(cond)
    operands = [cond.left, *cond.comparators]
    literals = [_literal(o) for o in operands]
    computed = [i for i, (found, _) in enumerate(literals) if not found]
    if len(computed) != 1:  # nothing or several computed operands: Python's own comparison, in the sandbox
        return _as_bool(cond)
    k = computed[0]
    for i, op in enumerate(cond.ops):  # `is` only against the singletons, where identity survives literal_eval
        other = literals[i + 1 if i == k else i][1]
        if k in (i, i + 1) and isinstance(op, (ast.Is, ast.IsNot)) and not any(other is s for s in (None, True,
                                                                                                      False)):
            return _as_bool(cond)
    tolerance = _tolerance(operands[k])
    if tolerance is not None:
        shipped, offset, on_left = tolerance
        operand = (lambda v, c=offset: abs(v - c)) if on_left else (lambda v, c=offset: abs(c - v))
    else:
        shipped, operand = operands[k], (lambda v: v)
    ops = [_COMPARE[type(op)] for op in cond.ops]
    consts = [v for _, v in literals]

    def verdict(value, k=k, ops=ops, consts=consts, operand=operand):
        vals = consts[:k] + [operand(value)] + consts[k + 1:]
        return all(op(vals[i], vals[i + 1]) for i, op in enumerate(ops))

    return CallerCheck(shipped, False, verdict)


def caller_judged(test: str) -> tuple[str, list[CallerCheck]] | None:
    """(the test with each `assert` replaced by a statement that returns its value, the checks) when every check of
    `test` can be judged on the caller's side (the module docstring's forms), else None."""
    try:
        return _caller_judged(ast.parse(test.strip()))
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # e.g. `not not ... x` nested too deep to judge
        return None


def _caller_judged(tree: ast.Module) -> tuple[str, list[CallerCheck]] | None:
    if not tree.body or not isinstance(tree.body[-1], ast.Assert):
        return None
    body, checks = [], []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assert):
            check = _check_of(stmt.test)
            checks.append(check)
            value = check.shipped
            if check.as_bool:
                value = ast.Call(ast.Attribute(ast.Name("_preflab_builtins", ast.Load()), "bool", ast.Load()),
                                 [value], [])
            body.append(ast.Expr(ast.Call(ast.Name("_preflab_ship", ast.Load()), [value], [])))
        elif any(isinstance(n, (ast.Assert, ast.Raise)) for n in ast.walk(stmt)):
            return None  # a check the caller cannot see: the whole test runs in the sandbox (nonce)
        else:
            body.append(stmt)
    return ast.unparse(ast.fix_missing_locations(ast.Module(body, []))), checks


def program_for_checks(code: str, statements: str, value_fd: int) -> str:
    """The code, then `_preflab_ship` (writes repr(value) and a newline to `value_fd`), then the test's statements."""
    return (f"{code}\n\n\nimport builtins as _preflab_builtins, os as _preflab_os\n"
            f"def _preflab_ship(value, _b=_preflab_builtins, _os=_preflab_os):\n"
            f"    data = (_b.repr(value) + '\\n').encode()\n"
            f"    while data:\n        data = data[_os.write({value_fd}, data):]\n\n\n{statements}\n")


def judge_values(raw: bytes, checks: list[CallerCheck]) -> bool:
    """Whether `raw` (what the program returned: one repr per line) holds one plain value per check and every
    check's verdict on its value is true. Anything else (missing, extra or non-literal values) fails."""
    if len(raw) > _VALUE_LIMIT or not raw.endswith(b"\n"):
        return False
    try:
        lines = raw.decode("utf-8").split("\n")[:-1]
    except UnicodeDecodeError:
        return False
    if len(lines) != len(checks):
        return False
    for line, check in zip(lines, checks):
        found, value = _literal_text(line)
        try:
            if not found or not check.verdict(value):
                return False
        except Exception:  # noqa: BLE001 - the comparison fails on these values (TypeError, RecursionError...)
            return False
    return True


_FLOAT_NAMES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _literal_text(text: str) -> tuple[bool, object]:
    """A returned repr rebuilt as a plain value (ast.literal_eval; also the float reprs nan, inf and -inf)."""
    if text in _FLOAT_NAMES:
        return True, _FLOAT_NAMES[text]
    try:
        return True, ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _run_caller_judged(code: str, test: str, statements: str, checks: list[CallerCheck], timeout_s: float,
                       sandbox_kwargs: dict) -> TestOutcome:
    # an unlinked file, not a pipe: a value larger than a pipe's buffer must not block the program until timeout
    with tempfile.TemporaryFile() as values:
        fd = values.fileno()
        result = _run_python(program_for_checks(code, statements, fd), timeout_s=timeout_s, pass_fds=(fd,),
                             **sandbox_kwargs)
        raw = os.pread(fd, _VALUE_LIMIT + 1, 0)
    # plain values only (literal_eval): the caller's comparison is exactly the test's on those values
    passed = result.status == "ok" and result.returncode == 0 and judge_values(raw, checks)
    return TestOutcome(test=test, passed=bool(passed), result=result, judged_by_caller=True)


def _run_one(code: str, test: str, timeout_s: float, sandbox_kwargs: dict) -> TestOutcome:
    judged = caller_judged(test)
    if judged is not None:
        return _run_caller_judged(code, test, judged[0], judged[1], timeout_s, sandbox_kwargs)
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
