"""A fingerprint of the examples a run trains on, saved with every checkpoint and compared at resume.

    training_data_fingerprint(items) -> "sha256:<hex>" (or None when there are no items to hash)

The config names the data file and the tokenizer, not what they hold: a data file edited in place, or a tokenizer
folder whose files changed, leaves the config equal while the resumed run would train on other token ids (and the
saved data order would index other rows). The fingerprint hashes the training examples as the run holds them
(token ids for language models, so a changed tokenizer changes it too; prompts, captions and image references for
diffusion), in order. Values are hashed by content: dataclasses and namespaces field by field, tensors and arrays
by dtype, shape and bytes, PIL images by mode, size and pixels; an object of any other type by its type name only
(its repr may hold a memory address, which would refuse every resume). Cost: one pass over the examples at the
first save or resume of a run (measured: 0.5 s for 5,000 pairs of 700 token ids, one core), then cached.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from array import array
from pathlib import PurePath
from types import SimpleNamespace


def _feed(h, value) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        h.update(json.dumps(value, ensure_ascii=True).encode())
    elif isinstance(value, (bytes, bytearray)):
        h.update(b"bytes%d:" % len(value))
        h.update(value)
    elif isinstance(value, PurePath):
        _feed(h, str(value))
    elif isinstance(value, (list, tuple)) and _int_list(h, value):
        pass
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for item in value:
            _feed(h, item)
            h.update(b",")
        h.update(b"]")
    elif isinstance(value, dict):
        h.update(b"{")
        for key in sorted(value, key=repr):
            _feed(h, key)
            h.update(b":")
            _feed(h, value[key])
            h.update(b",")
        h.update(b"}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(type(value).__name__.encode())
        _feed(h, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    elif isinstance(value, SimpleNamespace):
        _feed(h, vars(value))
    else:
        _feed_array_like(h, value)


def _int_list(h, value) -> bool:
    """Token ids in one update (about 100x faster than one per id); False when `value` is not all int64s."""
    if not value or not all(type(v) is int for v in value):
        return False
    try:
        packed = array("q", value).tobytes()
    except OverflowError:
        return False
    h.update(b"ints%d:" % len(value))
    h.update(packed)
    return True


def _feed_array_like(h, value) -> None:
    name = type(value).__name__
    h.update(name.encode())
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        import torch

        value = value.detach().cpu().contiguous()
        h.update(f"{value.dtype}{tuple(value.shape)}".encode())
        h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    elif hasattr(value, "tobytes") and hasattr(value, "dtype") and hasattr(value, "shape"):  # a numpy array
        h.update(f"{value.dtype}{tuple(value.shape)}".encode())
        h.update(value.tobytes())
    elif hasattr(value, "tobytes") and hasattr(value, "mode") and hasattr(value, "size"):  # a PIL image
        h.update(f"{value.mode}{tuple(value.size)}".encode())
        h.update(value.tobytes())


def training_data_fingerprint(items) -> str | None:
    """"sha256:<hex>" over `items` (a list of training examples) in order; None for None or an empty list."""
    if not items:
        return None
    h = hashlib.sha256()
    for item in items:
        _feed(h, item)
        h.update(b"\n")
    return "sha256:" + h.hexdigest()
