"""CI (.ci/run) runs the README's test command, on 2 pytest-xdist workers that take whole files (`-n 2 --dist
loadfile`: a module-scoped fixture, e.g. a trained model or a shared launch, is built once, by the worker that runs
the file). Two workers launch process groups at the same time, so every `accelerate launch` of the tests goes through
the `accelerate_launch` fixture (tests/conftest.py), which gives it a free port instead of accelerate's 29500."""
import re
import shlex
import socket
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pytest_words(text: str) -> list[str]:
    """The words after `python -m pytest` on its line (up to the end of the shell command)."""
    return shlex.split(re.search(r"python -m pytest ([^\n&|;]*)", text).group(1))


def test_ci_runs_the_readme_test_command_on_two_workers_by_file():
    readme = re.search(r"^## Two commands\n(.*?)^## ", (ROOT / "README.md").read_text(), re.S | re.M).group(1)
    words = _pytest_words(readme.split("run the tests:")[1])
    assert words == ["-n", "2", "--dist", "loadfile", "-q", "tests"]
    ci = _pytest_words((ROOT / ".ci/run").read_text())
    # CI adds only: stop at the first failure (-x) and no .pytest_cache in the clean clone
    assert ci == ["-x", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadfile", "tests"]
    assert sorted(w for w in ci if w not in ("-x", "-p", "no:cacheprovider")) == sorted(words)
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert any(d.startswith("pytest-xdist") for d in dev)


def test_every_accelerate_launch_of_the_tests_gets_a_free_port(accelerate_launch):
    here = Path(__file__).resolve()
    spelled = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")
                     if p.name != "conftest.py" and p != here and "accelerate.commands.launch" in p.read_text())
    assert spelled == [], f"build the launch with the accelerate_launch fixture: {spelled}"
    cmd = accelerate_launch("--num_processes", "2", "script.py", "a=1")
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and cmd[3] == "--main_process_port"
    assert cmd[5:] == ["--num_processes", "2", "script.py", "a=1"]
    with socket.socket() as sock:  # nothing listens there: it binds
        sock.bind(("127.0.0.1", int(cmd[4])))


def test_the_slowest_files_go_first_and_the_rest_keep_xdists_order():
    """Under `--dist loadfile` the workers take the files of file_order.SLOW_FILES_SECONDS first, longest first, then
    the others by their number of tests (pytest-xdist's default), ties in collection order; every file named there
    exists (a renamed file would silently lose its place)."""
    from file_order import SLOW_FILES_SECONDS, slowest_files_first

    missing = sorted(p for p in SLOW_FILES_SECONDS if not (ROOT / p).is_file())
    assert missing == [], f"file_order.SLOW_FILES_SECONDS names files that do not exist: {missing}"
    slow = sorted(SLOW_FILES_SECONDS, key=SLOW_FILES_SECONDS.get, reverse=True)[:2]
    paths = ["tests/a.py"] * 2 + ["tests/b.py"] * 3 + [slow[1]] + ["tests/c.py"] * 2 + [slow[0]] * 2
    assert slowest_files_first(paths) == [slow[0], slow[1], "tests/b.py", "tests/a.py", "tests/c.py"]
