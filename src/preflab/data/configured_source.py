"""A dataset with its configuration (TRL's `dataset_config`, datasets' `name`: `load_dataset(NAME, CONFIG)`), and
the one place every reader gets its data source from.

    training_source(cfg) -> cfg.dataset_name, or ConfiguredSource(dataset_name, dataset_config)
    eval_source(cfg)     -> cfg.eval_dataset_name, or ConfiguredSource(eval_dataset_name, its configuration)

A hub dataset with several configurations (languages, subsets: openai/gsm8k's 'main' and 'socratic') is read as
`datasets.load_dataset(name, config, split=...)`; a local folder whose README.md front matter declares `configs:`
(a downloaded hub dataset) is read as `datasets` reads it: the chosen configuration's `data_files` (and
`data_dir`) per split (preflab.data.card_configs; preflab.data.sources reads both). Rule for the eval set's
configuration: `eval_dataset_config` when given; else `dataset_config` when eval_dataset_name names the same data as
dataset_name (TRL's scripts read dataset_test_split from the one `load_dataset(dataset_name, dataset_config)`);
else none.

Refused rather than ignored (datasets itself ignores a configuration name given with a data file): a configuration
of a single data file, a glob, a save_to_disk folder, a folder whose card declares no configurations
(preflab.data.sources.local_config_problem), or rows given from Python (data_source); a configuration the card does
not declare names the ones it does. A ConfiguredSource's `label` ("NAME (config C)") is the reader's name, so data
reports and the tokenization cache key (which hashes the source's name) tell configurations apart.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from preflab.errors import ConfigError, DataError


@dataclass(frozen=True)
class ConfiguredSource:
    """`name` (a hub dataset name or a local folder) read with its configuration `config`; `option` is the setting
    that named the configuration (dataset_config / eval_dataset_config) and `data_option` the one that named the
    data (dataset_name / eval_dataset_name), for messages."""

    name: str
    config: str
    option: str = field(default="dataset_config", compare=False)  # the same data and configuration compare equal
    data_option: str = field(default="dataset_name", compare=False)

    @property
    def label(self) -> str:
        return f"{self.name} (config {self.config})"

    def __str__(self) -> str:
        return self.label


def data_source(name, config, option: str = "dataset_config", data_option: str = "dataset_name"):
    """`name` as given when `config` is None, else ConfiguredSource(name, config, option). A configuration of rows
    given from Python (a list, a datasets.Dataset) is a ConfigError: it would pick nothing."""
    if config is None:
        return name
    if not isinstance(name, (str, os.PathLike)):
        raise ConfigError(f"{option}={config!r} names a configuration of {data_option}, but the data was given from "
                          f"Python ({type(name).__name__}), which has no configurations: it would be unused. Remove "
                          f"{option}, or select the configuration's rows before passing them.")
    return ConfiguredSource(str(name), str(config), option, data_option)


def eval_config(cfg) -> str | None:
    """The configuration of the eval set (module docstring's rule): eval_dataset_config; else dataset_config when
    eval_dataset_name is dataset_name; else None."""
    own = getattr(cfg, "eval_dataset_config", None)
    if own is not None:
        return own
    name, train = getattr(cfg, "eval_dataset_name", None), getattr(cfg, "dataset_name", None)
    if isinstance(name, (str, os.PathLike)) and isinstance(train, (str, os.PathLike)) and _same_data(name, train):
        return getattr(cfg, "dataset_config", None)
    return None


def _same_data(a, b) -> bool:
    """Two settings naming the same data: equal text, or the same existing path."""
    if str(a) == str(b):
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def training_source(cfg):
    """What the readers read for training: cfg.dataset_name with cfg.dataset_config (data_source), its columns
    renamed by cfg.dataset_columns (preflab.data.columns)."""
    return mapped(cfg, data_source(cfg.dataset_name, getattr(cfg, "dataset_config", None)))


def eval_source(cfg):
    """What the readers read as the eval set: cfg.eval_dataset_name with eval_config(cfg) (data_source), its
    columns renamed by cfg.dataset_columns as the training data's are."""
    option = "eval_dataset_config" if getattr(cfg, "eval_dataset_config", None) is not None else "dataset_config"
    return mapped(cfg, data_source(cfg.eval_dataset_name, eval_config(cfg), option, "eval_dataset_name"))


def mapped(cfg, source):
    """`source` read with cfg.dataset_columns ({preflab field: dataset column}; rows given from Python too)."""
    from preflab.data.columns import with_columns

    return with_columns(source, getattr(cfg, "dataset_columns", None))


@contextmanager
def naming_eval_data(cfg):
    """Around reading eval_source(cfg): a DataError that does not name eval_dataset_name gets it in front
    ("eval_dataset_name='X': ..."). The readers' messages name the data (a path that does not exist, a hub name
    that cannot be reached) but not the option, and with dataset_name overridden on the command line an example's
    eval_dataset_name still names its hub dataset: the error read as one about the data just given."""
    try:
        yield
    except DataError as err:
        if "eval_dataset_name" in str(err):
            raise
        raise type(err)(f"eval_dataset_name={cfg.eval_dataset_name!r}: {err}") from err
