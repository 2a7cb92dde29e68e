"""The configurations a local copy of a hub dataset declares in its dataset card (README.md YAML front matter,
`configs:`), so that a folder holding several of them is never read as one mixed dataset.

A hub dataset with several configurations (languages, subsets) lists each one's files in its card:

    configs:
    - config_name: en
      data_files:
      - split: train
        path: en/train-*

`datasets.load_dataset(folder)` refuses such a folder without a config name ("Config name is missing"); so does
preflab, naming each configuration: `dataset_config` (preflab.data.configured_source) picks one, and its
`data_files` (relative to its `data_dir`, if any) say which files each split reads, as `datasets` reads them.

A card with ONE configuration is honoured the same way without dataset_config: its `data_files` say which files of
the folder each split reads (`card_split_files`), so files it does not name are never read; so is the one configuration marked `default: true`
among several (`default_entry`), as datasets reads it, with the data report naming it.
"""
from __future__ import annotations

from pathlib import Path

from preflab.errors import DataError, SplitMissing


def card_configs(folder: Path) -> list[dict]:
    """The `configs` entries (dicts with a config_name) of folder/README.md's YAML front matter; [] when there is
    no card, no front matter or no configs (a card that does not parse is not ours to judge: [])."""
    import yaml

    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return []
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return []
    end = text.find("\n---", 3)
    if end < 0:
        return []
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return []
    configs = meta.get("configs") if isinstance(meta, dict) else None
    if not isinstance(configs, list):
        return []
    return [c for c in configs if isinstance(c, dict) and c.get("config_name") is not None]


def _paths(data_files) -> list[str]:
    """Every path pattern in a config's data_files (a string, a list of strings or of {split, path} entries, or a
    {split: path} mapping)."""
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        return [p for v in data_files.values() for p in _paths(v)]
    if isinstance(data_files, list):
        return [p for item in data_files
                for p in (_paths(item.get("path")) if isinstance(item, dict) else _paths(item))]
    return []


def _shown(configs: list[dict]) -> str:
    """The configurations as a message lists them: 'en' (default): en/train-*; 'fr': ... (eight at most)."""
    shown = "; ".join(f"{c['config_name']!r}" + (" (default)" if c.get("default") else "")
                      + (f": {', '.join(_paths(c.get('data_files')))}" if _paths(c.get("data_files")) else "")
                      for c in configs[:8])
    return shown + (f" and {len(configs) - 8} more" if len(configs) > 8 else "")


def default_entry(configs: list[dict]) -> dict | None:
    """The configuration read when none is named, as datasets.load_dataset(folder) picks it: the only one, else the
    one entry marked `default: true`; None when there are several and not exactly one is marked."""
    if len(configs) == 1:
        return configs[0]
    marked = [c for c in configs if c.get("default") is True]
    return marked[0] if len(marked) == 1 else None


def default_config_name(folder: Path) -> str | None:
    """The name of the configuration marked `default: true` where folder's card declares several (datasets reads
    that one without a config name; preflab reads it too and names it in the data report); None otherwise."""
    configs = card_configs(folder)
    entry = default_entry(configs) if len(configs) > 1 else None
    return None if entry is None else str(entry["config_name"])


def refuse_mixed_configs(folder: Path) -> None:
    """A DataError when folder's dataset card declares two or more configurations and none was chosen (neither by
    dataset_config nor by marking one `default: true`: preflab.data.sources reads that one): reading every data
    file under it would train on all of them at once."""
    configs = card_configs(folder)
    if len(configs) < 2:
        return
    names = ", ".join(repr(str(c["config_name"])) for c in configs)
    raise DataError(f"directory {folder} is a hub dataset whose README.md declares {len(configs)} configurations "
                    f"({_shown(configs)}) and marks not exactly one `default: true`; reading the whole folder "
                    f"would mix them (datasets.load_dataset asks for a config name here). Set dataset_config "
                    f"(eval_dataset_config for eval_dataset_name, --data-config for preflab eval's --data) to one of "
                    f"{names}, or point the data option (dataset_name, "
                    "eval_dataset_name, --data) at one configuration's folder or files.")


def card_config(folder: Path, config: str, option: str = "dataset_config") -> dict:
    """The entry of folder's dataset card named `config`; a DataError naming `option` and listing the
    configurations the card declares when there is none of that name (datasets: "BuilderConfig not found")."""
    configs = card_configs(folder)
    for entry in configs:
        if str(entry["config_name"]) == str(config):
            return entry
    from preflab.errors import nearest

    names = [str(c["config_name"]) for c in configs]
    raise DataError(f"{option}={config!r}: directory {folder} declares no configuration {config!r} in its README.md; "
                    f"it declares {names} ({_shown(configs)}). Set {option} to one of them."
                    + nearest(str(config), names))


def card_split_patterns(folder: Path, config: str | None = None) -> tuple[dict[str, list[str]], bool] | None:
    """({split: path patterns}, named) of the configuration `config` of folder's card (None: the one configuration
    the card declares, or its default: `default_entry`), or None when the card declares no configuration (or several,
    none marked default, and none is chosen: refused by `refuse_mixed_configs`) or gives it no data_files. Patterns are relative to the folder (a configuration's
    data_dir prefixes its own). named: the card names the splits ({split, path} entries or a {split: path}
    mapping); a bare pattern or list of patterns is the split 'train', as datasets reads it."""
    if config is not None:
        entry = card_config(folder, config)
    else:
        entry = default_entry(card_configs(folder))
    if entry is None or not entry.get("data_files"):
        return None
    found = _split_patterns(entry["data_files"])
    base = str(entry.get("data_dir") or "").strip("/")
    if base:
        found = ({k: [f"{base}/{p.lstrip('/')}" for p in v] for k, v in found[0].items()}, found[1])
    return found


def _split_patterns(data_files) -> tuple[dict[str, list[str]], bool]:
    """({split: patterns}, named) of one configuration's data_files (see card_split_patterns)."""
    if isinstance(data_files, dict):
        return {str(k): _paths(v) for k, v in data_files.items()}, True
    if isinstance(data_files, list) and any(isinstance(item, dict) for item in data_files):
        out: dict[str, list[str]] = {}
        for item in data_files:
            if isinstance(item, dict):
                out.setdefault(str(item.get("split", "train")), []).extend(_paths(item.get("path")))
        return out, True
    return {"train": _paths(data_files)}, False


def card_split_files(folder: Path, split: str, explicit: bool, config: str | None = None) -> list[Path] | None:
    """The files the card's configuration `config` (None: its one configuration) reads for `split` (None: the card
    says nothing, read the folder as usual). A split the card does not name is a DataError naming the card's
    splits (a card whose data_files name no split is the split 'train'; with `explicit` False it is read whatever
    the split); a pattern that matches no file is a DataError too (datasets raises FileNotFoundError)."""
    found = card_split_patterns(folder, config)
    if found is None:
        return None
    patterns, named = found
    if split not in patterns:
        if not named and not explicit:
            split = "train"
        else:
            which = f"configuration {config!r}" if config is not None else "configuration"
            raise SplitMissing(f"directory {folder}: its README.md {which} names the split(s) "
                               f"{sorted(patterns)} in data_files and no split {split!r}. Set the split "
                               "(dataset_split / eval_split, --split) to one of them.")
    files: list[Path] = []
    for pattern in patterns[split]:
        matched = sorted(p for p in Path(folder).glob(pattern.lstrip("/")) if p.is_file()
                         and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if not matched:
            raise DataError(f"directory {folder}: README.md's data_files pattern {pattern!r} (split {split!r}) "
                            "matches no file. Fix the card or the folder.")
        files += [p for p in matched if p not in files]
    return files
