"""README.md is short and points at docs/*.md (one file per topic): every docs file is listed in README's
Documentation table and every listed one exists; every relative markdown link in README.md and docs/*.md resolves to
a file of the repository, and a link's #anchor names a heading of that file."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _documentation_table():
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Documentation\n(.*?)^## ", readme, re.S | re.M)
    assert section, "README.md has a '## Documentation' section before the next '## ' section"
    return [m.group(1) for row in section.group(1).splitlines() if row.startswith("| [")
            for m in [re.match(r"\| \[[^\]]*\]\(([^)]+)\)", row)] if m]


def _anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path):
    text = FENCE.sub("", path.read_text())
    return {_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_documentation_table_lists_every_docs_file_and_only_existing_ones():
    listed = _documentation_table()
    assert len(listed) == len(set(listed)), listed
    assert sorted(listed) == sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))
    for target in listed:
        assert (ROOT / target).is_file(), target


def test_every_relative_link_in_readme_and_docs_points_at_an_existing_file_and_heading():
    broken = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.is_file() or ROOT not in file.parents:
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file in the repository)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor} in {file.name})")
    assert not broken, "\n".join(broken)


def test_each_docs_file_starts_with_its_title_and_says_where_commands_run():
    for page in sorted(DOCS.glob("*.md")):
        first, blank, note = page.read_text().splitlines()[:3]
        assert first.startswith("# ") and blank == "", page.name
        assert note == "Commands run from the repository root.", page.name


def test_two_commands_stay_first_in_readme():
    """CI (.ci/run) and tests read the README's first section: it must stay 'Two commands'."""
    readme = (ROOT / "README.md").read_text()
    assert re.findall(r"^## (.+)$", readme, re.M)[:3] == ["Two commands", "Quickstart", "What a run writes"]


# paths of other projects' repositories that the docs quote (not files of this one)
OTHER_PROJECTS = {"examples/dreambooth/train_dreambooth_lora_flux.py"}  # diffusers' script (docs/diffusion.md)
REPO_PATH = re.compile(r"(?<![\w/.\-])((?:src|tests|benchmarks|examples|docs|\.ci)/[\w./\-]+"
                       r"\.(?:py|ya?ml|jsonl|json|sh|md|png|csv|jinja))\b")


def test_every_repository_path_in_backticks_in_readme_and_docs_exists():
    """A file named in backticks (`tests/loops/test_step.py`, `examples/rrhf.yaml`) is a file of the repository;
    docs-walk-3 found docs/testing.md naming a test file that no longer existed."""
    missing = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for code in re.findall(r"`([^`\n]+)`", page.read_text()):
            missing += [f"{page.relative_to(ROOT)}: {path}" for path in REPO_PATH.findall(code)
                        if path not in OTHER_PROJECTS and not (ROOT / path).exists()]
    assert not missing, "\n".join(missing)
