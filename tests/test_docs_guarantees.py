"""docs/guarantees.md's matrix stays honest: every test it names (`tests/...py::function`) is a test function of that
file, every example it names exists, every cell of the resume / 2 processes / report columns names a test, says
"refused: ..." or says "missing" (or, in the online table, REPORT / GAME REPORT for tests/report/
test_report_every_trainer.py, whose cases are TRAINERS itself), and every training task, online trainer
(preflab.online_recipes.TRAINERS) and recipe (preflab.recipe_names.RECIPE_TASKS) has a row."""
import ast
import re
from pathlib import Path

import pytest

from preflab.online_recipes import TRAINERS
from preflab.recipe_names import RECIPE_TASKS

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "guarantees.md"
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
EXAMPLE = re.compile(r"`(examples/[\w/.-]+\.ya?ml)`")
TASKS = ("dpo", "sft", "reward", "vlm", "diffusion")     # the offline tasks; online: TRAINERS, recipes: RECIPE_TASKS
HEADER = ["resume", "2 processes", "report", "example"]


def _rows() -> list[list[str]]:
    """Each body row of the page's tables as its cells (name, resume, 2 processes, report, example)."""
    rows = []
    for line in PAGE.read_text().splitlines():
        if not line.startswith("| ") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 5, f"docs/guarantees.md: a row of {len(cells)} cells, not 5: {line[:120]}"
        if cells[1:] != HEADER:
            rows.append(cells)
    return rows


def _test_functions(path: Path) -> set[str]:
    """Names of the test functions of a test file: top level, or methods of its Test* classes."""
    tree = ast.parse(path.read_text())
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.startswith("Test")):
        names |= {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return {n for n in names if n.startswith("test_")}


def test_every_named_test_is_a_test_function_of_its_file_and_every_example_exists():
    named = {m.groups() for cells in _rows() for cell in cells[1:] for m in TEST_ID.finditer(cell)}
    assert len(named) > 40
    wrong = [f"{path}::{name}" for path, name in sorted(named)
             if not (ROOT / path).is_file() or name not in _test_functions(ROOT / path)]
    assert not wrong, "docs/guarantees.md names tests that do not exist:\n" + "\n".join(wrong)
    examples = {m.group(1) for cells in _rows() for m in EXAMPLE.finditer(cells[4])}
    assert not [e for e in sorted(examples) if not (ROOT / e).is_file()]


def test_every_cell_names_a_test_or_says_refused_or_missing():
    vague = []
    for cells in _rows():
        for column, cell in zip(HEADER[:3], cells[1:4]):
            if not (TEST_ID.search(cell) or cell.startswith(("refused: ", "missing")) or
                    (column == "report" and re.match(r"(GAME )?REPORT\b", cell))):
                vague.append(f"{cells[0]} / {column}: {cell[:80]}")
        if not (EXAMPLE.search(cells[4]) or cells[4].startswith("missing")):
            vague.append(f"{cells[0]} / example: {cells[4][:80]}")
    assert not vague, "\n".join(vague)


def test_every_task_trainer_and_recipe_has_a_row_and_the_report_markers_fit_the_trainer():
    named = {}
    for cells in _rows():
        for name in re.findall(r"`([a-z_0-9]+)`", cells[0]):
            named.setdefault(name, cells)
    missing = [n for n in (*TASKS, *TRAINERS, *RECIPE_TASKS) if n not in named]
    assert not missing, f"docs/guarantees.md has no row for {missing}"
    for name, spec in TRAINERS.items():
        report = named[name][3]          # the report test's cases: text trainers (not game_only); game trainers
        assert bool(re.search(r"(?<!GAME )REPORT", report)) == (not spec.game_only), name
        assert ("GAME REPORT" in report) == spec.game, name
        assert ("(game)" in named[name][0]) == spec.game_only, name


@pytest.mark.parametrize("path", ["README.md", "docs/reliability.md", "docs/scaling.md"])
def test_the_matrix_is_linked_from_readme_and_the_pages_it_extends(path):
    assert "guarantees.md" in (ROOT / path).read_text()
