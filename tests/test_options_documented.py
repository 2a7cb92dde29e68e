"""Every option preflab accepts is named in docs/configuration.md.

The options are TrainConfig's fields and the rows of the option table (preflab.config_options.OPTIONS, which holds
the online and recipe options too: `preflab train --help` reads it). `reward_weights` (task: online) and 53 other
options had no row; a user reading the configuration reference could not find them. An option counts as named when
it appears as code: `` `name` `` or `` `name: ...` `` / `` `name=...` ``.

The reverse holds too: each option a row of the reference's option tables (header `| option | default | ...`) names
in its first cell exists, so a removed or renamed option leaves no stale row. The "Coming from TRL" table (header
`| TRL key | ...`) names TRL's keys on purpose and is not such a table; neither are the TRL / transformers names a
row gives in parentheses beside preflab's (`ref_model_name_or_path` (TRL: `ref_model`)).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from preflab.config import TrainConfig
from preflab.config_options import OPTIONS

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

# Options deliberately left out of docs/configuration.md, each with the reason. Empty: every option is documented.
# Add a name here only with a comment saying why a user never needs to read about it.
UNDOCUMENTED: dict[str, str] = {}


def _accepted_options() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)} | set(OPTIONS)


def _named_as_code(name: str, text: str) -> bool:
    return re.search(r"`" + re.escape(name) + r"(`|[:=\s.\[])", text) is not None


def test_every_accepted_option_is_named_in_configuration_md():
    text = DOC.read_text(encoding="utf-8")
    missing = sorted(n for n in _accepted_options() - set(UNDOCUMENTED) if not _named_as_code(n, text))
    assert missing == [], (f"options with no mention in docs/configuration.md: {missing}; add a row (what it does, "
                           "its default, which tasks read it), or list it in UNDOCUMENTED with the reason")


def _option_table_names(text: str) -> dict[str, int]:
    """{name: line} of each option named in the first cell of a row of an `| option | default | ...` table, without
    the parenthesised TRL / transformers names beside it."""
    names, in_table = {}, False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|"):
            in_table = False
            continue
        if line.startswith("| option | default |"):
            in_table = True
            continue
        if in_table and not line.startswith("|---"):
            first = re.sub(r"\((TRL|transformers)[^)]*\)", "", line.split(" | ")[0])
            for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)", first):
                names.setdefault(name, number)
    return names


def test_every_option_row_of_configuration_md_names_an_accepted_option():
    names = _option_table_names(DOC.read_text(encoding="utf-8"))
    assert len(names) > 100  # both option tables were read (the main one and "Options of one task")
    stale = {n: line for n, line in names.items() if n not in _accepted_options()}
    assert stale == {}, (f"docs/configuration.md rows name options preflab does not accept (name: line): {stale}; "
                         "remove the row or rename the option in it")


def test_the_table_reader_sees_a_stale_row():
    """A row naming a removed option is reported; a TRL name in parentheses beside a preflab option is not."""
    page = ("| option | default | meaning |\n|---|---|---|\n| `beta` (TRL: `old_beta`) | 0.1 | x |\n"
            "| `removed_option` | 1 | y |\n\n| TRL key | in preflab |\n|---|---|\n| `ref_model` | z |\n")
    assert _option_table_names(page) == {"beta": 3, "removed_option": 4}


def test_the_allowlist_names_only_options_that_exist_and_are_undocumented():
    """A stale allowlist entry (an option removed, or documented since) would hide nothing; it is refused too."""
    text = DOC.read_text(encoding="utf-8")
    assert sorted(set(UNDOCUMENTED) - _accepted_options()) == []
    assert sorted(n for n in UNDOCUMENTED if _named_as_code(n, text)) == []


def test_the_check_sees_a_missing_option():
    """The matcher is not vacuous: it finds `reward_weights` in the reference and not in a page without it, and does
    not take a longer name (`reward_weights_x`) or a prefix of one for it."""
    text = DOC.read_text(encoding="utf-8")
    assert _named_as_code("reward_weights", text)
    assert not _named_as_code("reward_weights", text.replace("reward_weights", "REDACTED"))
    assert not _named_as_code("reward_weights", "`reward_weights_x` and `reward_weight`")
    assert _named_as_code("reward_weights", "set `reward_weights: [1, 2]`")
