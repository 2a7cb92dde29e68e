"""benchmarks/mutation.py's planted bugs still plant something in today's source, checked without running a mutant.

A mutant is an (old, new) replacement in a file under src/preflab. When the code it targeted is rewritten, `old` no
longer occurs (or occurs twice) and the runner reports the mutant as *stale* and leaves it out of the kill rate: a
run by hand shows it, but only among hundreds of lines, and seven had gone unnoticed (changes/stale-mutants.md).
Here, for every mutant: its file exists, each `old` occurs exactly once (the runner's own rule), `new` differs from
it, the mutated code still parses (a syntax error is "caught" by any test and says nothing about the tests), the
test files it runs exist (a missing one fails pytest, which the runner would count as a catch) and its name is its
own (`--only NAME` picks it). About a second: no test runs, each source file is parsed once."""
import ast
import re
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "preflab"


def _mutants():
    spec = importlib.util.spec_from_file_location("preflab_mutation_runner", ROOT / "benchmarks" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @dataclass looks its module up by name
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module.MUTANTS


MUTANTS = _mutants()


def _spans(tree: ast.Module) -> list[tuple[int, int]]:
    """(first line, last line) of every top-level statement and every function (decorators included), shortest
    first: the first that holds an edit is the piece of the file the edit can break. Only statement bodies are
    searched for functions (a walk of every expression took seconds)."""
    spans, todo, top = [], list(tree.body), {id(n) for n in tree.body}
    while todo:
        node = todo.pop()
        if id(node) in top or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            spans.append((min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]),
                          node.end_lineno))
        for field in ("body", "orelse", "finalbody", "handlers"):
            todo += [n for n in getattr(node, field, None) or [] if isinstance(n, (ast.stmt, ast.excepthandler))]
    return sorted(spans, key=lambda s: s[1] - s[0])


def _parses_mutated(text: str, spans: list[tuple[int, int]], edits) -> str | None:
    """None when the mutated code around the edits parses, else the error. Only the enclosing function (or
    top-level statement; the whole file when the edits lie in two) is parsed, indented under `if 1:` when it is
    nested: a whole-file parse per mutant took 15 s for the 600 mutants on a loaded 2-core machine."""
    lines = []
    for old, _ in edits:
        at = text.index(old)
        lines += [text.count("\n", 0, at) + 1, text.count("\n", 0, at + len(old)) + 1]
    # Edits in two top-level statements have no enclosing piece: the whole file is parsed (a cut at the last edit's
    # line could end inside a statement and parse, or fail, for reasons that are not the edit's).
    first, last = next(((a, b) for a, b in spans if a <= min(lines) and max(lines) <= b),
                       (1, text.count("\n") + 1))
    piece = "".join(text.splitlines(keepends=True)[first - 1:last])
    for old, new in edits:
        assert piece.count(old) == 1, old  # the edit lies inside the piece
        piece = piece.replace(old, new)
    nested = piece[:1].isspace()
    try:
        ast.parse("if 1:\n" + piece if nested else piece)
    except SyntaxError as err:
        return f"line {first - 1 - nested + (err.lineno or 1)}: {err.msg}"
    return None


def test_every_mutant_edit_occurs_exactly_once_in_its_file():
    stale = []
    for m in MUTANTS:
        path = SRC / m.file
        text = path.read_text() if path.is_file() else None
        for old, _ in m.edits:
            found = 0 if text is None else text.count(old)
            if found != 1:
                stale.append(f"{m.name} ({m.file}): {old[:70]!r} found {found} times")
    assert not stale, ("stale mutants (the source changed: rewrite the edit so it plants the same bug in today's "
                       "code, or drop the mutant):\n" + "\n".join(stale))


def test_every_mutant_changes_its_file_and_leaves_it_parseable():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
    texts = {f: (SRC / f).read_text() for f in {m.file for m in MUTANTS} if (SRC / f).is_file()}
    spans = {f: _spans(ast.parse(text)) for f, text in texts.items()}
    broken = []
    for m in MUTANTS:
        if m.file not in texts or any(texts[m.file].count(old) != 1 for old, _ in m.edits):
            continue  # reported by the test above
        assert m.edits and all(old != new for old, new in m.edits), m.name
        error = _parses_mutated(texts[m.file], spans[m.file], m.edits)
        if error:
            broken.append(f"{m.name} ({m.file}): {error}")
    assert not broken, "mutants that do not parse (caught by any test, so they measure nothing):\n" + "\n".join(broken)


def test_every_mutant_runs_test_files_that_exist():
    missing = set()
    for m in MUTANTS:
        for arg in m.tests:
            if arg.startswith("tests/") and not (ROOT / arg.split("::")[0]).exists():
                missing.add(f"{m.name}: {arg}")
    assert not missing, "\n".join(sorted(missing))


def test_the_parse_check_finds_a_broken_edit_inside_a_method():
    text = "import math\n\n\nclass A:\n    @staticmethod\n    def f(x):\n        return math.exp(x)\n\n\nY = 1\n"
    spans = _spans(ast.parse(text))
    assert sorted(spans) == [(1, 1), (4, 7), (5, 7), (10, 10)]  # statements; the method with its decorator
    assert _parses_mutated(text, spans, [("return math.exp(x)", "return -math.exp(x)")]) is None
    assert _parses_mutated(text, spans, [("return math.exp(x)", "return math.exp(x")]) == \
        "line 7: '(' was never closed"
    assert _parses_mutated(text, spans, [("Y = 1", "Y = = 1")]) == "line 10: invalid syntax"
    # Edits in two top-level statements: the whole file is parsed, so a break after the last edit is still seen.
    two = [("import math", "import math as m"), ("Y = 1", "Y = (1")]
    assert _parses_mutated(text, spans, two) == "line 10: '(' was never closed"
    # ... and an edit that ends inside a multi-line call is not cut there (the cut read as "'(' never closed").
    call = "import math\n\n\ndef f(x):\n    return math.pow(\n        x,\n        2)\n"
    edits = [("import math", "import cmath"), ("math.pow(\n        x,", "math.pow(\n        -x,")]
    assert _parses_mutated(call, _spans(ast.parse(call)), edits) is None


def test_the_mutant_counts_in_docs_testing_md_are_the_runners():
    """Each `python benchmarks/mutation.py [--only WORDS] ... # N mutants` line of docs/testing.md gives the number
    of mutants that command runs (the runner's rule: a name containing one of the words)."""
    command = re.compile(r"^\s*python benchmarks/mutation\.py(?P<args>[^#\n]*)#\s*(?P<n>\d+) mutants", re.M)
    found = command.findall((ROOT / "docs" / "testing.md").read_text())
    assert found, "docs/testing.md gives no mutant count"
    wrong = []
    for args, n in found:
        words = args.split()
        only = words[words.index("--only") + 1:] if "--only" in words else []
        only = only[:next((i for i, w in enumerate(only) if w.startswith("--")), len(only))]
        runs = sum(1 for m in MUTANTS if not only or any(w in m.name for w in only))
        if runs != int(n):
            wrong.append(f"--only {' '.join(only)}: the docs say {n}, the runner runs {runs}")
    assert not wrong, "\n".join(wrong)
