"""What the docs' prose says a user can type, checked against the code (docs-walk): the commands written inline in
README.md and docs/*.md (`preflab eval RUN --data ...` in a sentence, not in a code block) and the options the pages
name. tests/test_docs_snippets.py checks the fenced blocks; a command or option written in a sentence was checked by
nothing, so a renamed flag or a `preflab train ... key=value` with a key that no longer exists stayed in the prose.

- every `--flag` of a `preflab SUBCOMMAND` command, inline or fenced, is an option of that subcommand's parser;
- every inline (or indented-block) `preflab train CONFIG key=value ...` loads as a config (its file exists, every key is an option with
  an allowed value), as test_docs_snippets checks the fenced ones;
- every TrainConfig option is named, in backticks, on a page (README.md or docs/*.md): a wildcard such as `upo_*`
  in a list of refusals does not say what an option does (docs-walk found 14 options, the UPO selection's, the MCTS
  step's, `rso_beta`, Self-NPO's and PPD's learned-embedding sizes, that only `preflab train --help` named).
"""
import argparse
import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import yaml

from preflab.cli import build_parser
from preflab.config import TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```(\w*)[^\n]*\n(.*?)^\1```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")  # a code span, possibly wrapped over one line break
COMMAND = re.compile(r"(?:^|[\s(])preflab ([a-z][a-z-]*)((?: +[^ ]+)*)")
PLACEHOLDER = re.compile(r"\.\.\.|<[^>]*>|\[[^\]]*\]")  # `...`, `<name>`, `[--user U]`: the reader fills them in


def _inline_spans(page: Path) -> list[tuple[str, str]]:
    """(where, text) of each code span outside fenced blocks, line breaks inside a span read as spaces."""
    text = page.read_text()
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return [(f"{page.name}:{prose[:m.start()].count(chr(10)) + 1}", " ".join(m.group(1).split()))
            for m in INLINE.finditer(prose)]


def _fenced_lines(page: Path) -> list[tuple[str, str]]:
    """(where, line) of each bash line of the fenced blocks, continuations joined, comments cut."""
    text = page.read_text()
    lines = []
    for m in FENCE.finditer(text):
        if m.group(2) not in ("bash", ""):
            continue
        start = text[:m.start()].count("\n") + 1
        for line in m.group(3).replace("\\\n", " ").splitlines():
            lines.append((f"{page.name}:{start}", line.split(" # ")[0].strip()))
    return lines


def _indented_lines(page: Path) -> list[tuple[str, str]]:
    """(where, line) of each command of an indented (4-space) code block outside fences: objectives.md writes
    `    preflab train examples/hypo_offline.yaml` so, and neither other check read those lines."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), page.read_text())
    return [(f"{page.name}:{i + 1}", line.split(" # ")[0].strip()) for i, line in enumerate(text.splitlines())
            if re.match(r"    (preflab|accelerate|python) ", line)]


def _commands(sources) -> list[tuple[str, str, list[str]]]:
    """(where, subcommand, words after it) for each `preflab SUB ...` in the given texts; `&&`, `;`, `|` end one."""
    found = []
    for where, text in sources:
        for part in re.split(r"&&|;|\|", text):
            m = COMMAND.search(part)
            if m:
                found.append((where, m.group(1), m.group(2).split()))
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


ALL_COMMANDS = _commands([s for page in PAGES
                          for s in [*_inline_spans(page), *_fenced_lines(page), *_indented_lines(page)]])
SUBCOMMANDS = _subparsers(build_parser())


def test_the_pages_have_commands_of_every_subcommand_to_check():
    used = {sub for _, sub, _ in ALL_COMMANDS if sub in SUBCOMMANDS}
    assert {"train", "eval", "report", "sample", "lab", "plan", "demo", "push", "objectives"} <= used, used


def test_every_flag_of_a_preflab_command_in_the_docs_is_an_option_of_that_command():
    """`preflab eval RUN --task reward --data-config en`: --task and --data-config are options of `preflab eval`
    (of `preflab lab run` for `preflab lab run NAME --out DIR`); prose such as "preflab refuses ..." is no command."""
    bad = []
    for where, sub, words in ALL_COMMANDS:
        parser = SUBCOMMANDS.get(sub)
        if parser is None:
            continue  # "preflab refuses", "preflab makes": the name in a sentence
        nested = _subparsers(parser)
        if nested and words and words[0] in nested:
            parser = nested[words[0]]
        for word in words:
            flag = word.split("=")[0].strip("`'\",()[]")
            if re.fullmatch(r"--[a-z][a-z0-9-]*", flag) and flag not in parser._option_string_actions:
                bad.append(f"{where}: preflab {sub} ... {flag}")
    assert not bad, "\n".join(bad)


def _inline_train_commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for where, text in [*_inline_spans(page), *_indented_lines(page)]:
            for part in text.split("&&"):
                m = re.search(r"(?:^|[\s)])train( .*)?$", part)
                if not m or not re.search(r"preflab\)? train\b", part) or PLACEHOLDER.search(part):
                    continue
                args = shlex.split(m.group(1) or "")
                if args and "--help" not in args:  # `preflab train` alone names the command in a sentence
                    found.append((where, shlex.join(args)))
    return found


INLINE_TRAIN = _inline_train_commands()


def test_the_pages_have_inline_train_commands_to_check():
    assert len(INLINE_TRAIN) >= 15, INLINE_TRAIN


@pytest.mark.parametrize("where, args", INLINE_TRAIN, ids=[f"{w}:{i}" for i, (w, _) in enumerate(INLINE_TRAIN)])
def test_every_inline_train_command_of_the_docs_loads_as_a_config(where, args, tmp_path, monkeypatch):
    """`preflab train examples/quickstart.yaml task=reward '~loss_type' '~beta'` written in a sentence (or in an
    indented block): the config
    file exists and the overrides are options with allowed values (what `preflab train` checks before loading)."""
    words = shlex.split(args)
    config = words[0] if words and "=" not in words[0] and not words[0].startswith("~") else None
    overrides = words[1:] if config else words
    if config == "CONFIG.yaml":  # the pages' placeholder for the reader's own config
        config = tmp_path / "CONFIG.yaml"
        config.write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama",
                                          "dataset_name": "examples/data/loud_echo_pairs.jsonl"}))
    elif config is not None:
        assert (ROOT / config).is_file(), f"{where}: no file {config}"
        config = ROOT / config
    monkeypatch.chdir(ROOT)
    load_config(config, overrides)


def test_every_option_is_named_on_a_page():
    """Each TrainConfig field appears in backticks in README.md or docs/*.md, as the option itself (`upo_mu`, or
    `upo_mu: 2`), not only inside a wildcard (`upo_*`)."""
    named = set()
    for page in PAGES:
        named |= set(re.findall(r"`~?'?([a-z_][a-z0-9_]*)(?:[`:=. ]|\b)", page.read_text()))
    missing = sorted(f.name for f in dataclasses.fields(TrainConfig) if f.name not in named)
    assert not missing, f"options no page names (add each where its task is described): {missing}"


def test_configuration_md_unknown_keys_come_with_type_errors_and_before_range_errors():
    """docs/configuration.md said a config with an unknown key "gets this message alone"; the type of each known
    key's value is checked in the same pass (docs-walk: `learning_rat=1 max_steps=2.5` printed both lines), while the
    ranges (`logging_steps=0`) are checked once the keys are known. The page now says so; this pins it."""
    from preflab.errors import ConfigError

    base = ROOT / "examples" / "quickstart.yaml"
    with pytest.raises(ConfigError) as both:
        load_config(base, ["learning_rat=1", "max_steps=2.5"])
    lines = str(both.value).splitlines()
    assert lines[:2] == ["max_steps must be int, got 2.5 (float), set by the override 'max_steps=2.5'.",
                         "unknown config key 'learning_rat'. Did you mean 'learning_rate'?"], lines
    with pytest.raises(ConfigError) as unknown_only:
        load_config(base, ["learning_rat=1", "logging_steps=0"])
    assert "logging_steps" not in str(unknown_only.value) and "learning_rat" in str(unknown_only.value)
    with pytest.raises(ConfigError, match="logging_steps=0 is not allowed"):
        load_config(base, ["logging_steps=0"])


def test_every_install_extra_the_pages_name_is_one_of_pyproject():
    """`pip install 'preflab[qlora]'`, `pip install -e ".[dev,diffusion,deepspeed,parity]"`: each extra a page names
    is an optional-dependencies group of pyproject.toml (a renamed extra makes pip warn and install nothing)."""
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = {}
    for page in PAGES:
        for group in re.findall(r"(?:preflab|\.)\[([a-z0-9_,-]+)\]", page.read_text()):
            for extra in group.split(","):
                named.setdefault(extra, page.name)
    assert len(named) >= 5, named
    assert not {e: p for e, p in named.items() if e not in extras}, (named, extras)
