"""docs/extending.md's snippets run as written (docs-walk-3): `my_losses.py` is the page's two objective blocks, the
data script, the Python checks (`check_objective`, the exact `solve` on B4) and the `preflab objectives` / `preflab
lab check` lines run in a fresh folder holding the shipped pairs. The page's training lines are the same runs as
tests/test_user_trial_extend.py's; here nothing trains, so the page's text itself is what is checked."""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from preflab.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "extending.md").read_text()
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", PAGE, re.S | re.M)]


def _block(lang: str, containing: str) -> str:
    found = [body for kind, body in BLOCKS if kind == lang and containing in body]
    assert len(found) == 1, (lang, containing, len(found))
    return found[0]


def _lines(block: str) -> list[str]:
    """The commands of a shell block: continuations joined, `# ...` comments and comment-only lines dropped."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        command = line.split(" # ")[0].strip()
        if command and not command.startswith("#"):
            out.append(" ".join(command.split()))
    return out


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    (tmp_path / "examples" / "data").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "data" / "loud_echo_pairs.jsonl", tmp_path / "examples" / "data")
    (tmp_path / "my_losses.py").write_text(_block("python", "class MarginWeighted") + "\n\n"
                                           + _block("python", "class MarginDPO"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_extending_md_python_snippets_run_as_written(user_folder, capsys):
    script = _block("bash", "random.seed(0)")
    subprocess.run(["bash", "-c", script.replace("python - <<", f"{shlex.quote(sys.executable)} - <<")],
                   check=True, cwd=user_folder)
    rows = (user_folder / "pairs_w.jsonl").read_text().splitlines()
    assert len(rows) == len((ROOT / "examples/data/loud_echo_pairs.jsonl").read_text().splitlines())
    assert '"margin": ' in rows[0] and '"weight": ' in rows[0]
    exec(compile(_block("python", "kl_optimum"), "docs/extending.md#solve", "exec"), {})  # asserts to 1e-6
    exec(compile(_block("python", "check_objective"), "docs/extending.md#check_objective", "exec"), {})
    printed = capsys.readouterr().out
    assert "a missing extra is named (margin, weight)" in printed and "loss = mean(losses)" in printed


def test_extending_md_lab_check_and_objectives_lines_pass(user_folder, capsys):
    lines = _lines(_block("", "preflab lab check"))
    assert len(lines) == 3, lines
    for line in lines:
        args = shlex.split(line)
        assert args[0] == "preflab"
        assert main(args[1:]) == 0, line
        out = capsys.readouterr().out
        assert "verdict: passed" in out, (line, out)
    assert "reduces to dpo" in out or "kl-optimum" in out
    first = _lines(_block("bash", "preflab objectives my_losses.py:MarginWeighted"))[0]
    assert main(shlex.split(first)[1:]) == 0
    out = capsys.readouterr().out
    assert "gamma = 0.5  # scale of the per-pair margin" in out and "extras: ['margin', 'weight']" in out
