"""Read raw rows (dicts) from a data source, one at a time, without validating their fields.

Sources: a JSONL / JSON / Parquet / CSV / Arrow file (JSONL, JSON and CSV also gzip-, bz2- or xz-compressed:
train.jsonl.gz); a glob of such files (data/*.jsonl: one source, the split 'train'); a directory saved by
`datasets.save_to_disk` (a `DatasetDict` gives `split`); a directory of data files (the files whose names hold
`split`, or one of datasets' keywords for it, between separators, as datasets matches them: `_names_split`; else all
of them); an in-memory `datasets.Dataset` / `DatasetDict` / list of dicts; or a Hugging Face hub dataset name
(`datasets.load_dataset`, which in datasets >= 4 never runs dataset scripts). A hub name or a folder whose README.md
declares `configs:` may come with a configuration (`ConfiguredSource`, from preflab.data.configured_source:
dataset_config).

JSONL is read line by line here rather than through `datasets`, so that one bad line (invalid UTF-8, truncated
JSON, not an object, too large) becomes one bad row with its line number instead of aborting the file.
Row ids are 0-based and count rows across all files of a source; blank JSONL lines are not rows.

Refused rather than guessed: a JSON object with the same key twice (`duplicate_key`, a bad row: JSON parsers keep
the last value silently), a CSV header that names a column twice (a `DataError`), and a row nested deeper than
`MAX_NESTING_DEPTH` levels (`nested_too_deeply`, a bad row: later stages walk rows recursively). A JSON file that is
an object of several arrays (`{"train": [...], "test": [...]}`) gives the array named by `split`.
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from preflab.data.configured_source import ConfiguredSource
from preflab.errors import DataError, SplitMissing
from preflab.hub import failure_reason, offline
from preflab.data.report import RowProblem, row_error

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4")  # train.jsonl.gz (Anthropic/hh-rlhf)
# compressed text data files read as they are (Python's own gzip, bz2, lzma; the others need packages): the formats
# read line by line or whole (JSONL, JSON, CSV); Parquet and Arrow compress inside the file
READ_COMPRESSED = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}
TEXT_SUFFIXES = (".jsonl", ".json", ".csv")
DEFAULT_MAX_ROW_BYTES = 64 * 2**20
MAX_NESTING_DEPTH = 64  # levels of objects/lists in one row; chat rows with tool calls use fewer than 10


class _DuplicateKeys(dict):
    """A parsed JSON object in which some key appeared more than once (`duplicates`: those keys)."""

    duplicates: list[str]


def _object_hook(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = _DuplicateKeys(out)
        dup.duplicates = sorted({k for k, _ in pairs if k in seen or seen.add(k)})
        return dup
    return out


def _loads(text: str):
    """json.loads that marks objects holding a duplicate key (see `_DuplicateKeys`)."""
    return json.loads(text, object_pairs_hook=_object_hook)


@dataclass
class RawRow:
    """One row as read: `data` (a dict), or `problem` when the row could not even be read as a dict."""

    row_id: int
    file: str
    line: int | None = None
    data: dict | None = None
    problem: RowProblem | None = None
    mapped_columns: dict | None = None  # {preflab field: the dataset's column} under dataset_columns (data.columns)


IN_MEMORY_NAMES = ("<rows>", "<Dataset>")  # a list of dicts, a Dataset: rows without a split (RowReader.read_from)
MAX_NAMED_FILES = 4  # the data files an "is empty" error lists before a count (RowReader.read_from)


class RowReader:
    """Iterates `RawRow`s of a source; `name` is what reports call it, `blank_lines` counts skipped blank lines.

    otherwise: the split read where the source has no split `split` (only then: any other error is raised); the
    source is resolved once, a loaded DatasetDict (save_to_disk folder, hub name) picks from what it loaded.
    `split` is the split read.
    keep: a dict that gets, by row id, a copy of every row read as a dict, as the source holds it (before
    dataset_columns renames it), for a caller that needs the raw rows of the read it validates
    (preflab.eval.held_out: the rows eval_fraction held out), so the source is not read a second time."""

    def __init__(self, source, *, split: str | None = "train", limit: int | None = None,
                 max_row_bytes: int | None = DEFAULT_MAX_ROW_BYTES, streaming: bool = False,
                 otherwise: str | None = None, keep: dict | None = None):
        from preflab.data.columns import columns_of, unmapped

        self.keep = keep
        self.columns, self.columns_option = columns_of(source), getattr(source, "option", None)  # dataset_columns
        source = unmapped(source)
        self.source, self.limit, self.max_row_bytes = source, limit, max_row_bytes
        self.blank_lines = 0
        self._next_id = 0
        try:
            self.name, self._parts, self.split = _resolve(source, split, streaming, otherwise)
        except SplitMissing as first:  # a single file or a glob (no rows read): resolved again; a folder or a
            if otherwise is None:     # DatasetDict fell back in _dir_parts / _pick_split already, and its message
                raise                 # names both splits: that one is raised, not the retry's
            try:
                self.name, self._parts, self.split = _resolve(source, otherwise, streaming)
            except SplitMissing:
                raise first from None

    @property
    def files(self) -> list[Path]:
        """The data files the reader reads, in order ([] for rows in memory, a hub or a save_to_disk dataset)."""
        return [part.file for part in self._parts if hasattr(part, "file")]

    def read_from(self) -> str:
        """What was read, for an "is empty" error: "split 'test' (file /d/test.jsonl)"; a single data file given as
        the source is not named again (nor its split 'train', its own rows); up to MAX_NAMED_FILES files are named, then a count."""
        files = [str(f) for f in self.files]
        said = f"split {self.split!r}" if self.split and self.name not in IN_MEMORY_NAMES else ""  # rows: no split
        if not files or files == [str(self.source)]:  # a single file's own rows, unless a split of a JSON object
            return said if not files or self.split != "train" else ""
        shown = ", ".join(files[:MAX_NAMED_FILES]) + (
            f" and {len(files) - MAX_NAMED_FILES} more" if len(files) > MAX_NAMED_FILES else "")
        return f"{said} ({'file' if len(files) == 1 else 'files'} {shown})".strip()

    def __iter__(self) -> Iterator[RawRow]:
        from preflab.data.columns import renamed_row

        for part in self._parts:
            for raw in part(self):
                if self.limit is not None and raw.row_id >= self.limit:
                    return
                if self.keep is not None and raw.data is not None and raw.problem is None:
                    self.keep[raw.row_id] = dict(raw.data)
                if self.columns and raw.data is not None and raw.problem is None:  # dataset_columns: renamed here,
                    raw.data = renamed_row(raw.data, self.columns, self.columns_option,  # before any kind reads it
                                           raw.file or self.name, raw.row_id, raw.line)
                    raw.mapped_columns = self.columns  # BadRowPolicy names the dataset's column in messages
                yield raw

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def too_large(self, size: int) -> RowProblem | None:
        if self.max_row_bytes is not None and size > self.max_row_bytes:
            return RowProblem("row_too_large", None, f"the row is {size} bytes, over max_row_bytes="
                              f"{self.max_row_bytes}", "Shorten or drop it, or raise max_row_bytes.")
        return None

    def row_problem(self, item: Mapping, size: int | None = None) -> RowProblem | None:
        """Nesting depth, duplicate keys, then size (`size`: bytes when known, else estimated)."""
        problem, estimate = _walk(item)
        return problem or self.too_large(estimate if size is None else size)


def _resolve(source, split: str | None, streaming: bool = False, otherwise: str | None = None):
    """(display name, list of part readers, the split read) for any supported source. streaming: a hub name is read
    through `datasets.load_dataset(..., streaming=True)` (files, directories and in-memory sources are read row by
    row either way; a save_to_disk directory is memory-mapped). split None: `DEFAULT_EVAL_SPLIT` where the source has
    splits, a single data file read whole. otherwise: what a loaded DatasetDict or a folder without `split` gives
    instead (a folder of files from its one listing; a single file raises SplitMissing: RowReader resolves it
    again). A ConfiguredSource reads its configuration (`_resolve_configured`)."""
    if isinstance(source, ConfiguredSource):
        return _resolve_configured(source, split, streaming, otherwise)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_file():
            missing = file_split_missing(path, split)
            if missing:
                raise SplitMissing(f"{missing} Set the split (dataset_split / eval_split) to 'train' or leave it out, "
                                   "or point to a directory with one file per split (train.jsonl, test.jsonl).")
            return str(source), [_file_part(path, streaming)], split
        if path.is_dir():
            from preflab.data.card_configs import default_config_name

            chosen = default_config_name(path)
            if chosen is not None:  # the card's default among several configurations, read as datasets reads it
                _, parts, split = _resolve_configured(ConfiguredSource(str(source), chosen), split, streaming,
                                                      otherwise)
                return f"{source} (config {chosen}: its README.md's default)", parts, split
        explicit, split = split is not None, split or DEFAULT_EVAL_SPLIT
        if path.is_dir():
            parts, split = _dir_parts(path, split, streaming, explicit, otherwise)
            return str(source), parts, split
        text = str(source)
        if any(c in text for c in GLOB_CHARS):
            return text, _glob_parts(text, split if explicit else None, streaming), split if explicit else "train"
        if text.startswith((".", "/", "~")) or data_suffix(Path(text)) in FILE_SUFFIXES or os.sep in text[:1]:
            raise DataError(missing_path_message(text, path))
        if otherwise is None:
            loaded = _load_hub(text, split, streaming)
        else:  # every split at once (datasets prepares them all for one split too), then the one there is
            loaded, split = _pick_split(_load_hub(text, None, streaming), split, f"hub:{text}", otherwise)
        return f"hub:{text}[{split}]", [_dataset_part(loaded, f"hub:{text}[{split}]")], split
    split = split or DEFAULT_EVAL_SPLIT
    datasets = sys.modules.get("datasets")  # a datasets object implies datasets is imported; skip a slow import
    if datasets is not None and isinstance(source, datasets.DatasetDict):
        picked, split = _pick_split(source, split, "<DatasetDict>", otherwise)
        return f"<DatasetDict>[{split}]", [_dataset_part(picked, "<Dataset>")], split
    if datasets is not None and isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        return "<Dataset>", [_dataset_part(source, "<Dataset>")], split
    if isinstance(source, Iterable) and not isinstance(source, (str, bytes, Mapping)):
        return "<rows>", [_dataset_part(source, "<rows>")], split
    raise DataError(f"cannot read data from a {type(source).__name__}; pass a file (.jsonl, .json, .parquet, .csv, .arrow), "
                    "a directory, a hub dataset name, a datasets.Dataset or a list of dicts.")


GLOB_CHARS = "*?["  # a path holding one of them that names no file or folder is a glob (hub names never hold them)


def local_config_problem(name, config, option: str = "dataset_config", data_option: str = "dataset_name") -> str | None:
    """Why configuration `config` cannot be read from `name` when `name` is local (a file, a folder, a glob), as a
    sentence naming `option` (and `data_option`, the setting that named the data); None when it can, or when `name`
    is no local path (a hub name: checked when loaded). Reads no rows (the config check asks it first)."""
    from preflab.data.card_configs import card_config, card_configs

    path = Path(str(name)).expanduser()
    head = f"{option}={config!r}"
    if path.is_file():
        return (f"{head}: {name} is a single data file, which has no configurations (datasets would ignore the "
                f"name and read the file). Remove {option}, or point {data_option} at the folder whose README.md "
                "declares the configurations.")
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return (f"{head}: {name} was saved with save_to_disk, which holds one configuration already (the one it "
                    f"was loaded with). Remove {option}.")
        if not card_configs(path):
            return (f"{head}: directory {name} declares no configurations (no `configs:` in the front matter of its "
                    f"README.md), so there is nothing to pick. Remove {option}, or point {data_option} at that "
                    "configuration's own folder or files.")
        try:
            card_config(path, config, option)
        except DataError as err:
            return str(err)
        return None
    if any(c in str(name) for c in GLOB_CHARS):
        return (f"{head}: {name} is a glob of data files, which have no configurations. Remove {option}, or give "
                "the configuration's files as the glob.")
    return None


def _resolve_configured(source: ConfiguredSource, split: str | None, streaming: bool, otherwise: str | None):
    """_resolve of a name with its configuration: a local folder reads the files its README.md lists for that
    configuration; a hub name loads `datasets.load_dataset(name, config)`; anything else local (a file, a glob, a
    save_to_disk folder, a folder without configurations) is a DataError (local_config_problem):
    the configuration would be unused. The name read is `source.label` ("NAME (config C)")."""
    problem = local_config_problem(source.name, source.config, source.option, source.data_option)
    if problem:
        raise DataError(problem)
    path = Path(source.name).expanduser()
    explicit, split = split is not None, split or DEFAULT_EVAL_SPLIT
    if path.is_dir():
        parts, split = _dir_parts(path, split, streaming, explicit, otherwise, source)
        return source.label, parts, split
    text = source.name
    if text.startswith((".", "/", "~")) or data_suffix(Path(text)) in FILE_SUFFIXES or os.sep in text[:1]:
        raise DataError(missing_path_message(text, path))
    name = f"hub:{source.label}"
    if otherwise is None:
        loaded = _load_hub(text, split, streaming, source)
    else:
        loaded, split = _pick_split(_load_hub(text, None, streaming, source), split, name, otherwise)
    return f"{name}[{split}]", [_dataset_part(loaded, f"{name}[{split}]")], split


def _glob_parts(pattern: str, split: str | None, streaming: bool) -> list:
    """The part readers of the data files a glob matches ('data/*.jsonl', 'shards/**/*.parquet'), in sorted order:
    one source, the split 'train', as datasets.load_dataset(data_files=pattern) reads it. A glob matching nothing,
    or asked for another split, is a DataError (SplitMissing) rather than an empty or a wrong split."""
    import glob

    if split not in (None, "train"):
        raise SplitMissing(f"the glob {pattern!r} is read as one split, 'train' (as datasets reads data_files), so it "
                           f"has no split {split!r}. Set the split (dataset_split / eval_split) to 'train' or leave it "
                           "out, or give that split's files by their own glob as eval_dataset_name.")
    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True) if Path(p).is_file())
    if not files:
        raise DataError(f"data path {pattern!r} matches no file (read as a glob, as it holds * ? or [). Check the "
                        "pattern and the folder it starts from.")
    return [_file_part(p, streaming) for p in files]


def data_suffix(path: Path) -> str:
    """The data format's suffix of `path`: '.jsonl' for train.jsonl and for train.jsonl.gz (bz2, xz) alike."""
    suffix = path.suffix.lower()
    if suffix in READ_COMPRESSED and Path(path.stem).suffix.lower() in TEXT_SUFFIXES:
        return Path(path.stem).suffix.lower()
    return suffix


def open_data(path: Path, mode: str = "rb", **kwargs):
    """open(path, mode) of a data file, through its decompressor when data_suffix says it is compressed."""
    if data_suffix(path) != path.suffix.lower():
        import importlib

        return importlib.import_module(READ_COMPRESSED[path.suffix.lower()]).open(path, mode, **kwargs)
    return open(path, mode, **kwargs)


def _read_bytes(path: Path) -> bytes:
    with open_data(path) as handle:
        return handle.read()


def open_reader(source, **kwargs) -> RowReader:
    """`source` as a RowReader: one already opened (preflab eval's, on the split it decided: see
    preflab.eval.run.open_eval_split) is read as it was opened, its split, limit and max_row_bytes its own, so the
    source is resolved and loaded once; anything else is opened with `kwargs` (RowReader's)."""
    return source if isinstance(source, RowReader) else RowReader(source, **kwargs)


DEFAULT_EVAL_SPLIT = "test"  # the split an eval set is read from when eval_split is not given (TRL's scripts' default)


def eval_default_reader(source, **kwargs) -> RowReader:
    """The reader `preflab eval` reads when --split is not given: split 'test' where the source has one (a run's
    eval_split defaults to it, as TRL's scripts' dataset_test_split), else 'train' (a single file, a folder without
    a test split: its own rows); `.split` says which. The source is resolved and loaded once (the reader that finds
    the split is the one read); an error other than a missing split 'test' is raised as reading 'test' gives it."""
    return RowReader(source, split=DEFAULT_EVAL_SPLIT, otherwise="train", **kwargs)


def file_splits(path: Path) -> tuple[str, ...]:
    """The splits one local data file holds. datasets loads a single file as the split "train"; a JSON object of
    arrays ({"train": [...], "test": [...]}) holds one split per array, and its only array, if it has one, also
    reads as "train" ({"data": [...]})."""
    if data_suffix(path) == ".json":
        with open_data(path) as handle:
            head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
        if head == b"{":
            try:
                obj = _loads(_read_bytes(path).decode("utf-8"))
            except (ValueError, RecursionError):  # JSON lines in a .json file; _json_rows reports bad lines
                return ("train",)
            if isinstance(obj, dict) and obj and all(isinstance(v, list) for v in obj.values()):
                return tuple(obj) if len(obj) > 1 else tuple(dict.fromkeys(("train", *obj)))
    return ("train",)


def file_split_missing(path: Path, split: str | None) -> str | None:
    """None when the local data file `path` holds `split` (None: the file's own rows, any file); else a sentence
    saying which splits it holds instead. A split the file cannot have is refused, never ignored: datasets raises
    for it too (load_dataset("json", data_files=path, split="test"): Unknown split "test")."""
    if split is None or split == "train":  # a JSON object of arrays without "train": _json_split says so
        return None
    splits = file_splits(path)
    if split in splits:
        return None
    return (f"{path} holds the split{'s' if len(splits) > 1 else ''} {sorted(splits)} and no split {split!r} "
            "(datasets loads a single data file as the split 'train').")


def _check_hub_dataset(name: str) -> None:
    """Refuse at once a hub dataset that cannot load: not in a local cache and the hub does not answer (one quick
    request), or no such dataset. datasets.load_dataset would otherwise retry for about half a minute first. Offline
    (HF_HUB_OFFLINE), a cached dataset, or a hub answer other than "not found" (gated, ...) is left to datasets."""
    if offline("HF_DATASETS_OFFLINE"):
        return
    import datasets.config
    from huggingface_hub import constants, dataset_info
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if (Path(datasets.config.HF_DATASETS_CACHE) / name.replace("/", "___")).exists() or \
            (Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}").exists():
        return
    try:
        dataset_info(name, timeout=10)
    except RepositoryNotFoundError as err:
        raise DataError(f"{_taken_as_hub(name)}, and the hub has no dataset of that name (or it is private); check the "
                        "name, or pass a local file or directory.") from err
    except HfHubHTTPError:
        return  # gated, rate-limited, ...: datasets reports it
    except Exception as err:  # noqa: BLE001 - no answer from the hub at all
        raise DataError(f"{_taken_as_hub(name)} and is not in the local cache, and the hub could not be reached "
                        f"({type(err).__name__}: {failure_reason(err)}): no network? Download it where there is one, "
                        "or pass a local file or directory.") from err


def _taken_as_hub(name: str) -> str:
    """The start of every message about a name read as a hub dataset: which local path was tried first."""
    return f"{name!r} was taken as a hub dataset name (it is no local file or folder: tried {Path(name).resolve()})"


def _load_hub(name: str, split: str | None, streaming: bool = False, configured: ConfiguredSource | None = None):
    """datasets.load_dataset(name, split=split) (split None: every split, a DatasetDict); streaming: an
    IterableDataset that reads as it is iterated; configured: load its configuration (datasets' `name`). An unknown
    configuration, or none given where the dataset has several, is a DataError naming the option and the
    configurations datasets lists."""
    import datasets

    _check_hub_dataset(name)
    config = configured.config if configured is not None else None
    try:
        return datasets.load_dataset(name, split=split, **({"name": config} if config is not None else {}),
                                     **({"streaming": True} if streaming else {}))
    except Exception as exc:  # any loading failure becomes one clear message
        said = f"{type(exc).__name__}: {exc}"
        if configured is not None and isinstance(exc, ValueError) and "BuilderConfig" in str(exc):
            raise DataError(f"{configured.option}={config!r}: {_taken_as_hub(name)}, and it has no configuration "
                            f"{config!r} ({said}). Set {configured.option} to one of the configurations it lists."
                            ) from exc
        if configured is None and isinstance(exc, ValueError) and "Config name is missing" in str(exc):
            raise DataError(f"{_taken_as_hub(name)}, and it has several configurations and none was chosen ({said}). "
                            "Set dataset_config (eval_dataset_config for eval_dataset_name, --data-config for "
                            "preflab eval's --data) to one of them.") from exc
        raise DataError(f"{_taken_as_hub(name)}, and it could not be loaded{f' (split {split!r})' if split else ''}: "
                        f"{type(exc).__name__}: {exc}. Check the name and split and your network (or HF_HUB_OFFLINE), "
                        "or pass a local file or directory (a path starting with ./ or / is never taken as a hub "
                        "name).") from exc


def _pick_split(dataset_dict, split: str, name: str, otherwise: str | None = None):
    """(dataset_dict[split], split), or its split `otherwise` where it has no `split`. Neither: a SplitMissing naming
    both and the options that set the split (before: only the fallback, "no split 'train'", where preflab eval had
    asked for 'test' first, and "Set split", an option no command has)."""
    asked = split
    if split not in dataset_dict and otherwise is not None:
        split = otherwise
    if split not in dataset_dict:
        tried = f"no split {asked!r}" + (f" nor {split!r} (read where there is no {asked!r})" if split != asked else "")
        raise SplitMissing(f"{name} has {tried}; it has {sorted(dataset_dict)}. Set the split (dataset_split / "
                           "eval_split, TRL's dataset_train_split / dataset_test_split; preflab eval's --split) to one "
                           "of them.")
    return dataset_dict[split], split


def _dir_parts(path: Path, split: str, streaming: bool = False, explicit: bool = True,
               otherwise: str | None = None, configured: ConfiguredSource | None = None) -> tuple[list, str]:
    """(The part readers of a directory's `split`, the split read: a save_to_disk DatasetDict or a folder of files
    without `split` gives its split `otherwise`, the folder listed once). A directory without splits (a save_to_disk Dataset, data files
    not named after a split) is the split 'train' (and, for a Dataset, the split it was saved from), as datasets
    loads it; another split given explicitly (`explicit`) is refused, as for a single file, never read as the whole
    directory: an eval_split 'test' of it would evaluate on the training rows. split not given: read it whole.
    configured: the folder's README.md configuration to read (its data_files; a data_dir without data_files is
    read as a folder of its own)."""
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise DataError(f"{path}: could not load a dataset saved with save_to_disk: {exc}. "
                            "Check the directory is complete.") from exc
        if isinstance(loaded, datasets.DatasetDict):
            loaded, split = _pick_split(loaded, split, str(path), otherwise)
        else:
            own = str(loaded.split) if getattr(loaded, "split", None) else "train"
            if explicit and split not in ("train", own) and otherwise in ("train", own):
                split = otherwise
            elif explicit and split not in ("train", own):
                raise SplitMissing(f"{path} is one dataset saved with save_to_disk (the split {own!r}, no DatasetDict), "
                                f"so it has no split {split!r}. Set the split (dataset_split / eval_split) to "
                                f"{own!r} or leave it out, or save a DatasetDict with that split.")
        return [_dataset_part(loaded, str(path))], split
    from preflab.data.card_configs import card_config, refuse_mixed_configs

    config = None
    if configured is not None:
        entry, config = card_config(path, configured.config, configured.option), configured.config
        if not entry.get("data_files") and entry.get("data_dir"):
            return _dir_parts(path / str(entry["data_dir"]).strip("/"), split, streaming, explicit, otherwise)
        if not entry.get("data_files"):
            raise DataError(f"{configured.option}={config!r}: directory {path}: its README.md configuration "
                            f"{config!r} lists no data_files and no data_dir. Fix the card, or point the data option "
                            "at that configuration's files.")
    else:
        refuse_mixed_configs(path)
    listing = []  # the folder's data files, walked once: a split 'test' that is missing falls back without a re-walk
    try:
        return _files_parts(path, split, streaming, explicit, listing, config), split
    except SplitMissing:
        if otherwise is None or otherwise == split:
            raise
    return _files_parts(path, otherwise, streaming, True, listing, config), otherwise


def _files_parts(path: Path, split: str, streaming: bool, explicit: bool, listing: list,
                 config: str | None = None) -> list:
    """The part readers of a folder of data files' `split` (see _dir_parts): the files its dataset card's
    configuration `config` (None: its one configuration) lists for it, else the files named after it, else every
    file where none is named after a split. listing: the folder's data files, filled on the first call (empty: walk
    the folder) and reused after."""
    from preflab.data.card_configs import card_split_files

    carded = card_split_files(path, split, explicit, config)
    if carded is not None:  # the card's one configuration lists its files per split: read those, as datasets does
        return [_file_part(p, streaming) for p in carded]
    if not listing:
        listing.append(_data_files(path))
    files = listing[0]
    named = [p for p in files if _names_split(p.relative_to(path), split)]
    if not named:  # no file for this split: every file, unless the files are named after other splits
        others = sorted({s for p in files for s in SPLIT_NAMES if _names_split(p.relative_to(path), s)} |
                        {m.group(1) for p in files if (m := _SHARD.match(p.name.split(".", 1)[0]))} |
                        {d for p in files for d in p.relative_to(path).parts[:-1] if _split_like(d)})
        if others:
            raise SplitMissing(f"directory {path} holds files of the split(s) {others} and none of split {split!r} "
                            f"(reading them all would mix splits). Set the split (dataset_split / eval_split) to "
                            "one of them, or point to a file.")
        if explicit and split != "train":
            raise SplitMissing(f"directory {path} holds data files none of which is named after a split, so it is the "
                            f"split 'train' (as datasets loads it) and has no split {split!r}. Set the split "
                            "(dataset_split / eval_split) to 'train' or leave it out, or name the files after their "
                            "splits (train.jsonl, test.jsonl).")
    return [_file_part(p, streaming) for p in (named or files)]


def _data_files(path: Path) -> list[Path]:
    """The data files under folder `path` (one walk; hidden files and folders left out); compressed data files, or
    none at all, are a DataError."""
    visible = sorted(p for p in path.rglob("*") if p.is_file()
                     and not any(part.startswith(".") for part in p.relative_to(path).parts))
    files = [p for p in visible if data_suffix(p) in FILE_SUFFIXES]
    packed = sorted(str(p.relative_to(path)) for p in visible if len(p.suffixes) > 1
                    and p.suffixes[-2].lower() in FILE_SUFFIXES and p.suffix.lower() in COMPRESSED_SUFFIXES
                    and data_suffix(p) not in FILE_SUFFIXES)
    if packed:  # reading the other files alone would drop these rows without a word
        raise DataError(f"directory {path} holds compressed data files preflab does not read ({', '.join(packed[:4])}"
                        f"{f' and {len(packed) - 4} more' if len(packed) > 4 else ''}; it reads {_READABLE}). "
                        "Decompress them (zstd -d, unzip, ...) or point dataset_name at the files it reads.")
    if not files:
        raise DataError(f"directory {path} holds no data files ({', '.join(FILE_SUFFIXES)}) and was not saved by "
                        "datasets.save_to_disk. Point to a file or a dataset directory.")
    return files


# datasets' split keywords (datasets.data_files.SPLIT_KEYWORDS): the names in a data file's name that give it to
# each of its three splits (my_eval.jsonl is 'test', dev.jsonl 'validation'); another split name is matched as it is
SPLIT_KEYWORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "dev", "val"),
                  "test": ("test", "testing", "eval", "evaluation")}
SPLIT_NAMES = tuple(SPLIT_KEYWORDS)  # the splits a file name can mark without a split of its own name
_ALL_SPLIT_KEYWORDS = tuple(k for names in SPLIT_KEYWORDS.values() for k in names)
# datasets' NON_WORDS_CHARS: what stands beside a split keyword in a file name it gives to that split (my_train.jsonl,
# data-test.parquet, train2.csv)
SPLIT_NAME_SEPARATORS = "-._ 0-9"


# the hub's shard names, as datasets matches them ({split}-[0-9]{5}-of-[0-9]{5}*): train-00000-of-00001.parquet, and
# with the fingerprint datasets 2.x push_to_hub added: train_prefs-00000-of-00001-a09b74b3ef9c3b56.parquet
_SHARD = re.compile(r"^(.+)-\d{5}-of-\d{5}(?:-.*)?$")


def directory_has_split(path: Path, split: str, config: str | None = None) -> bool:
    """Whether the local directory `path` holds `split`: a save_to_disk DatasetDict with it (dataset_dict.json), the
    files its dataset card's configuration `config` (None: the one the folder is read with, its only or its
    `default: true` configuration) lists for it, or data files named after it (test.jsonl,
    test-00000-of-00001.parquet, test/...). Reads no rows (the config check asks it before anything loads); a folder
    it cannot tell about is False."""
    if (path / "dataset_dict.json").is_file():
        try:
            return split in json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        except (ValueError, OSError, AttributeError):
            return False
    if (path / "state.json").is_file():  # one saved Dataset: no splits
        return False
    from preflab.data.card_configs import card_split_files, default_config_name

    try:
        config = config if config is not None else default_config_name(path)  # a data_dir default: its folder
        if card_split_files(path, split, True, config) is not None:
            return True
        if config is not None:  # the configuration's files are all it holds (a data_dir: its own folder)
            from preflab.data.card_configs import card_config

            data_dir = card_config(path, config).get("data_dir")
            return bool(data_dir) and directory_has_split(path / str(data_dir).strip("/"), split)
        return any(_names_split(p.relative_to(path), split) for p in _data_files(path))
    except (DataError, SplitMissing, OSError):
        return False


def _split_like(folder: str) -> bool:
    """A folder named after a split ('train', 'test_prefs', 'validation-2'; the hub's parquet conversion writes
    default/train_prefs/0000.parquet): its files belong to that split, never to another one."""
    return any(folder == s or folder.startswith((s + "-", s + "_")) for s in _ALL_SPLIT_KEYWORDS)


def _names_split(rel: Path, split: str) -> bool:
    """True when a file belongs to `split`: 'train.jsonl', 'train-00000-of-00001.parquet', 'train/x.json', and as
    datasets reads a folder (its pattern '**/*[-._ 0-9]train[-._ 0-9]*') the split's name, or for train, validation
    and test one of its keywords (SPLIT_KEYWORDS), anywhere in the file name between separators: 'my_train.jsonl',
    'hh-train.jsonl.gz', 'data.train.csv', 'training.jsonl'; 'my_eval.jsonl' and 'testing.jsonl' are 'test' (before,
    such a folder's split 'train' read every file, its eval file too). A hub shard name gives its split exactly, as
    datasets reads it: 'train_prefs-00000-of-00001.parquet' is split train_prefs, not train."""
    names = SPLIT_KEYWORDS.get(split, (split,))
    if any(name in rel.parts[:-1] for name in names):
        return True
    shard = _SHARD.match(rel.name.split(".", 1)[0])
    if shard:
        return shard.group(1) == split
    sep = f"[{SPLIT_NAME_SEPARATORS}]"
    return any(re.search(f"(?:^|{sep}){re.escape(name)}{sep}", rel.name) for name in names)


_READABLE = (f"{', '.join(FILE_SUFFIXES)}, and {', '.join(TEXT_SUFFIXES)} compressed as "
             f"{', '.join(READ_COMPRESSED)}")


def _file_part(path: Path, streaming: bool = False):
    suffix = data_suffix(path)
    json_rows = _json_array_or_whole if streaming else _json_rows
    reader = {".jsonl": _jsonl_rows, ".json": json_rows, ".parquet": _parquet_rows, ".csv": _csv_rows,
              ".arrow": _arrow_rows}.get(suffix)
    if reader is None:
        packed = suffix in COMPRESSED_SUFFIXES
        raise DataError(f"{path}: {'compressed' if packed else 'unsupported'} file type {path.suffix!r}; preflab reads "
                        f"{_READABLE}." + (" Decompress it first." if packed else ""))
    if suffix == path.suffix.lower():
        part = lambda rr: reader(rr, path)  # noqa: E731
    else:
        part = lambda rr: _decompressed(reader(rr, path), path)  # noqa: E731
    part.file = path  # RowReader.files: what an "is empty" error names
    return part


def _decompressed(rows: Iterator[RawRow], path: Path) -> Iterator[RawRow]:
    """The rows of a compressed file; a decompression failure (a truncated or damaged file) is a DataError naming
    the file and the rows read before it, never a traceback or a silently shorter file."""
    import lzma
    import zlib

    done = 0
    try:
        for raw in rows:
            done += 1
            yield raw
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise DataError(f"{path}: cannot decompress it after {done} rows ({type(exc).__name__}: {exc}); the file may "
                        "be truncated or damaged. Download it again, or decompress it to see where it breaks.") from exc


def _dataset_part(dataset, name: str):
    def rows(rr: RowReader) -> Iterator[RawRow]:
        for item in dataset:
            row_id = rr.new_id()
            if not isinstance(item, Mapping):
                yield RawRow(row_id, name, problem=_not_object(item))
                continue
            yield RawRow(row_id, name, data=dict(item), problem=rr.row_problem(item))
    return rows


def _not_object(value) -> RowProblem:
    return RowProblem("not_an_object", None, f"the row is a {type(value).__name__}, not an object with fields",
                      'Each row must be an object such as {"prompt": ..., "chosen": ..., "rejected": ...}.')


def _approx_size(value) -> int:
    """A cheap size estimate in bytes (string lengths), for the max_row_bytes check (no recursion)."""
    return _walk(value)[1]


def _walk(row) -> tuple[RowProblem | None, int]:
    """(the first structural problem of `row` or None, its approximate size in bytes), walked without recursion:
    nesting deeper than `MAX_NESTING_DEPTH` or an object with a duplicate key is a problem."""
    size, stack = 0, [(row, 0, None)]
    while stack:
        value, depth, field_name = stack.pop()
        if isinstance(value, str):
            size += len(value)
            continue
        if not isinstance(value, (Mapping, list, tuple)):
            size += 8
            continue
        if depth >= MAX_NESTING_DEPTH:
            return RowProblem("nested_too_deeply", field_name, f"the row is nested more than {MAX_NESTING_DEPTH} "
                              "levels deep", "Flatten the column (e.g. store it as a JSON string) or drop it."), size
        if isinstance(value, _DuplicateKeys):
            return RowProblem("duplicate_key", field_name if depth else value.duplicates[0],
                              f"the object has the key(s) {value.duplicates} more than once"[:300],
                              "Keep one value per key; JSON readers would silently keep the last."), size
        if isinstance(value, Mapping):
            for k, v in value.items():
                size += len(str(k))
                stack.append((v, depth + 1, k if field_name is None else field_name))
        else:
            stack.extend((v, depth + 1, field_name) for v in value)
    return None, size


# a .jsonl file whose first line opens one JSON document (json.dump(rows, f), with or without indent)
WHOLE_JSON_HINT = (" The file looks like one JSON document (an array of rows, or an indented object), not JSON lines: "
                   "write one row per line (json.dumps(row) + '\\n' for each row), or save an array of rows with "
                   "the suffix .json, which is read as one.")


def _jsonl_lines(rr: RowReader, path: Path, lines: Iterable[bytes], first_line: int = 1) -> Iterator[RawRow]:
    for line_no, raw in enumerate(lines, first_line):
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
            raw = raw[3:]
        if not raw.strip():
            rr.blank_lines += 1
            continue
        row_id = rr.new_id()
        problem = rr.too_large(len(raw))
        if problem is None:
            try:
                obj = _loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                problem = RowProblem("invalid_utf8", None, f"the line is not valid UTF-8 (bad byte at offset "
                                     f"{exc.start})", "Re-encode the file as UTF-8.")
            except (ValueError, RecursionError) as exc:  # JSONDecodeError, a 5000-digit number, deep nesting
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)[:200] or "nested too deeply"
                problem = RowProblem("invalid_json", None, f"the line is not valid JSON ({msg}); it may be "
                                     "truncated", "Each line must hold one complete JSON object."
                                     + (WHOLE_JSON_HINT if row_id == 0 and raw.strip() in (b"[", b"{") else ""))
            else:
                problem = _not_object(obj) if not isinstance(obj, dict) else rr.row_problem(obj, len(raw))
                if isinstance(obj, list) and row_id == 0:
                    problem.fix += WHOLE_JSON_HINT
        yield RawRow(row_id, str(path), line_no, data=None if problem else obj, problem=problem)


def _jsonl_rows(rr: RowReader, path: Path) -> Iterator[RawRow]:
    with open_data(path) as handle:
        yield from _jsonl_lines(rr, path, handle)


def _json_rows(rr: RowReader, path: Path) -> Iterator[RawRow]:
    """A JSON array of objects, an object holding one such array (e.g. {"data": [...]}), or JSON lines."""
    blob = _read_bytes(path)
    head = blob.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head != b"[":
        try:
            obj = _loads(blob.decode("utf-8"))
        except (ValueError, RecursionError):  # includes UnicodeDecodeError and JSONDecodeError
            yield from _jsonl_lines(rr, path, blob.splitlines(keepends=True))  # JSON lines in a .json file
            return
        arrays = isinstance(obj, dict) and bool(obj) and all(isinstance(v, list) for v in obj.values())
        _refuse_columns(obj, path)
        if arrays and len(set(obj) & set(ROW_FIELDS)) >= 2 and all(isinstance(x, dict) for v in obj.values()
                                                                   for x in v):
            arrays = False  # one conversational row ({"prompt": [messages], "chosen": [messages], ...}), not splits
        if not arrays and isinstance(obj, dict):  # a single object: JSON lines with one line
            yield from _jsonl_lines(rr, path, blob.splitlines(keepends=True))
            return
        if not arrays:
            raise DataError(f"{path}: expected a JSON array of row objects, an object with one such array, or "
                            "one JSON object per line. Convert the file to JSONL.")
        rows = _json_split(obj, rr.split or DEFAULT_EVAL_SPLIT, path)
    else:
        try:
            rows = _loads(blob.decode("utf-8-sig"))  # a byte-order mark may precede the '['
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not valid UTF-8 at byte {exc.start}, so the JSON array cannot be read "
                            "row by row. Re-encode it as UTF-8 or convert it to JSONL.") from exc
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); a JSON "
                            "array cannot be read row by row. Fix the file or convert it to JSONL.") from exc
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{path}: cannot parse the JSON ({str(exc)[:200] or 'nested too deeply'}). Fix the "
                            "file or convert it to JSONL.") from exc
    for item in rows:
        yield _json_element(rr, path, item)


def _json_element(rr: RowReader, path: Path, item) -> RawRow:
    """One element of a JSON array as a row: an object, else a `not_an_object` problem."""
    if not isinstance(item, dict):
        return RawRow(rr.new_id(), str(path), problem=_not_object(item))
    return RawRow(rr.new_id(), str(path), data=item, problem=rr.row_problem(item))


JSON_CHUNK = 1 << 20  # bytes read at a time from a JSON array when streaming


def _json_array_or_whole(rr: RowReader, path: Path) -> Iterator[RawRow]:
    """Streaming: a .json file holding one JSON array is read element by element (`_json_array_rows`), so memory
    holds about one row; any other .json form is read whole (`_json_rows`)."""
    with open_data(path) as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    yield from (_json_array_rows if head == b"[" else _json_rows)(rr, path)


def _json_array_rows(rr: RowReader, path: Path) -> Iterator[RawRow]:
    """The elements of a JSON array, parsed one at a time with json's raw_decode over a buffer that is refilled
    (doubling the read while an element is incomplete) and trimmed behind the parsed elements."""
    import codecs

    decoder = json.JSONDecoder(object_pairs_hook=_object_hook)
    utf8 = codecs.getincrementaldecoder("utf-8-sig")()
    buf, pos, eof, read_size, done = "", 0, False, JSON_CHUNK, 0

    def fill(handle, size: int) -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        try:
            chunk = handle.read(size)
            text = utf8.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not valid UTF-8 after row {done}, so the JSON array cannot be read further. "
                            "Re-encode it as UTF-8 or convert it to JSONL.") from exc
        eof = not chunk
        buf, pos = buf[pos:] + text, 0
        return True

    def skip_space(handle) -> str:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf) or not fill(handle, JSON_CHUNK):
                return buf[pos:pos + 1]

    def bad(what: str) -> DataError:
        return DataError(f"{path}: not valid JSON after row {done} ({what}); a JSON array cannot be read row by row "
                         "past it. Fix the file or convert it to JSONL.")

    with open_data(path) as handle:
        if skip_space(handle) != "[":
            raise bad("expected '['")
        pos += 1
        if skip_space(handle) == "]":
            return
        while True:
            skip_space(handle)
            while True:
                try:
                    item, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof:
                        break
                except ValueError as exc:  # JSONDecodeError, or a number too long to convert
                    if eof:
                        raise bad(getattr(exc, "msg", str(exc)[:200])) from exc
                except RecursionError as exc:
                    raise bad("nested too deeply") from exc
                fill(handle, read_size)  # the element may go on past the buffer
                read_size *= 2
            read_size, pos, done = JSON_CHUNK, end, done + 1
            yield _json_element(rr, path, item)
            sep = skip_space(handle)
            pos += 1
            if sep == "]":
                if skip_space(handle):
                    raise bad("text after the closing ']'")
                return
            if sep != ",":
                raise bad(f"expected ',' or ']', found {sep!r}" if sep else "the array is not closed")


ROW_FIELDS = ("prompt", "chosen", "rejected", "completion", "label", "messages")


def _refuse_columns(obj, path: Path) -> None:
    """A DataError for a JSON object of columns ({"prompt": [...], "chosen": [...], ...} or pandas' default
    to_json, {"prompt": {"0": ...}, ...}): its arrays would be read as splits, its dicts as one row of dicts."""
    def column(v) -> bool:  # a column of values, not one conversational row's messages
        if isinstance(v, list):
            return bool(v) and not all(isinstance(x, dict) for x in v)
        return isinstance(v, dict) and bool(v) and all(str(k).isdigit() for k in v)

    if not isinstance(obj, dict) or not all(column(v) for v in obj.values()):
        return
    named = sorted(set(obj) & set(ROW_FIELDS))
    if len(named) >= 2:
        raise DataError(f"{path}: the top-level object holds one array (or index->value object) per column "
                        f"({', '.join(named)}): a table stored by columns, not rows. Write one object per row: JSON "
                        "lines ({\"prompt\": ..., \"chosen\": ..., \"rejected\": ...} per line) or a JSON array of "
                        "row objects (pandas: df.to_json(path, orient='records', lines=True)).")


def _json_split(obj: dict, split: str, path: Path) -> list:
    """The rows of a JSON object of arrays: the only array ({"data": [...]}), else the one named `split`."""
    if isinstance(obj, _DuplicateKeys):
        raise DataError(f"{path}: the top-level object has the key(s) {obj.duplicates} more than once. Keep one.")
    if len(obj) == 1:
        return next(iter(obj.values()))
    if split not in obj:
        raise DataError(f"{path}: the file holds the splits {sorted(obj)} and no split {split!r}. Set split (or "
                        "dataset_split / eval_split) to one of them.")
    return obj[split]


def _parquet_rows(rr: RowReader, path: Path) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
        batches = handle.iter_batches(batch_size=512)
        for batch in batches:
            for item in batch.to_pylist():
                yield RawRow(rr.new_id(), str(path), data=item, problem=rr.row_problem(item))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read this Parquet file: {exc}. Check that it is complete.") from exc


def _arrow_rows(rr: RowReader, path: Path) -> Iterator[RawRow]:
    """An Arrow file: a datasets cache / save_to_disk shard (the IPC stream format, as Dataset.from_file reads it)
    or an Arrow IPC file (feather v2, pyarrow.ipc.new_file), read batch by batch."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                source.seek(0)
                opened = pa.ipc.open_file(source)
                reader = (opened.get_batch(i) for i in range(opened.num_record_batches))
            for batch in reader:
                for item in batch.to_pylist():
                    yield RawRow(rr.new_id(), str(path), data=item, problem=rr.row_problem(item))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read this Arrow file: {exc}. Check that it is complete (an Arrow IPC stream "
                        "as datasets writes, or an IPC file).") from exc


def _csv_rows(rr: RowReader, path: Path) -> Iterator[RawRow]:
    """A CSV file with a header row; row ids count data rows. Every cell is text; undecodable bytes become
    lone surrogates (errors='surrogateescape'), which field validation reports as invalid text."""
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, min(rr.max_row_bytes or 2**31 - 1, 2**31 - 1)))
    try:
        with open_data(path, "rt", newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(f"{path}: cannot read the CSV header: {exc}. Fix the file.") from exc
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise DataError(f"{path}: the CSV header names the column(s) {repeated} more than once; a row "
                                "would keep only the last cell. Rename or drop the repeated columns.")
            while True:
                line = reader.line_num + 1  # where the row starts: a quoted cell may span lines (line_num: its end)
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield RawRow(rr.new_id(), str(path), line, problem=RowProblem(
                        "invalid_csv", None, f"malformed CSV ({exc})", "Fix the quoting of this row."))
                    continue
                if not cells:
                    rr.blank_lines += 1
                    continue
                row_id = rr.new_id()
                if len(cells) != len(header):
                    yield RawRow(row_id, str(path), line, problem=RowProblem(
                        "invalid_csv", None, f"the row has {len(cells)} cells but the header has {len(header)}",
                        "Fix the quoting or the number of columns of this row."))
                    continue
                item = dict(zip(header, cells))
                yield RawRow(row_id, str(path), line, data=item, problem=rr.row_problem(item))
    finally:
        csv.field_size_limit(old_limit)


def read_file_rows(path, build, *, option: str, form: str) -> list:
    """[build(raw) for each row] of the data file that the setting `option` names, read by `RowReader` (JSONL, JSON,
    Parquet or CSV; byte-order mark, UTF-8, duplicate keys and row size checked per row; blank lines skipped), for
    readers without `on_bad_row`: a row that cannot be read, or whose `build` raises `RowProblem`, is a `DataError`
    naming the file, row, line and field. `form` shows what a row holds, e.g. '{prompt, chosen_rewards}'."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{option}: {path} is not a file; give a .jsonl file (or .json, .csv, .parquet) of rows "
                        f"{form}.")
    out = []
    for raw in RowReader(path):
        try:
            if raw.problem is not None:
                raise raw.problem
            out.append(build(raw))
        except RowProblem as problem:
            if problem.reason == "not_an_object":
                problem.fix = f"Each row must be an object {form}."
            raise row_error(problem, raw.file, raw.row_id, raw.line, skippable=False) from None
    return out


def missing_path_message(text: str, path: Path) -> str:
    """The error for a data path that does not exist, with the closest name in its folder (a `.json` for a `.jsonl`,
    a typo) or the first folder of it that does not exist; before, only "Check the path"."""
    import difflib

    resolved = path.resolve()
    hint = ""
    if resolved.parent.is_dir():  # close: difflib ratio >= 0.8 (a shared suffix alone, ".jsonl", is not close)
        try:
            siblings = [p.name for _, p in zip(range(1000), resolved.parent.iterdir())]
        except OSError:  # a folder it may not list: no hint
            siblings = []
        close = difflib.get_close_matches(resolved.name, siblings, n=1, cutoff=0.8)
        if close:
            hint = f" Did you mean {str(path.parent / close[0]) if text != path.name else close[0]!r}?"
    else:
        missing = next(p for p in [resolved.parent, *resolved.parent.parents][::-1] if not p.exists())
        hint = f" Its folder {missing} does not exist."
    return (f"data file or directory {text!r} does not exist (tried {resolved}); it is written as a path, so it was "
            f"not looked up on the hub.{hint or ' Check the path.'}")
