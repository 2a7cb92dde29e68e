"""The configurations a local copy of a hub dataset declares in its dataset card (README.md YAML front matter,
`configs:`), so that a folder holding several of them is never read as one mixed dataset.

A hub dataset with several configurations (languages, subsets) lists each one's files in its card:

    configs:
    - config_name: en
      data_files:
      - split: train
        path: en/train-*

`datasets.load_dataset(folder)` refuses such a folder without a config name ("Config name is missing"); preflab has
no `dataset_config` option, so it refuses too and names each configuration's files, to be given as dataset_name.
"""
from __future__ import annotations

from pathlib import Path

from preflab.errors import DataError


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


def refuse_mixed_configs(folder: Path) -> None:
    """A DataError when folder's dataset card declares two or more configurations: reading every data file under it
    would train on all of them at once."""
    configs = card_configs(folder)
    if len(configs) < 2:
        return
    shown = "; ".join(f"{c['config_name']!r}" + (" (default)" if c.get("default") else "")
                      + (f": {', '.join(_paths(c.get('data_files')))}" if _paths(c.get("data_files")) else "")
                      for c in configs[:8])
    more = f" and {len(configs) - 8} more" if len(configs) > 8 else ""
    raise DataError(f"directory {folder} is a hub dataset whose README.md declares {len(configs)} configurations "
                    f"({shown}{more}); reading the whole folder would mix them (datasets.load_dataset asks for a "
                    "config name here). Set dataset_name (or eval_dataset_name, --data) to one configuration's "
                    "folder or file; preflab has no dataset_config option.")
