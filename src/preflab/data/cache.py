"""A disk cache for tokenization, keyed by a fingerprint of (examples, tokenizer, settings). JSON only: no pickle.

    pairs, report = tokenize_cached(examples, tokenizer, cache_dir="runs/cache", max_length=512)

The fingerprint hashes every example's content (row id, prompt, responses, label, extras), the tokenizer
(its full `tokenizers` JSON when it is a fast tokenizer: vocab, merges, normalizer, pre-tokenizer, added tokens;
else its vocab), its special tokens and chat template, the function and its settings, and `CACHE_FORMAT`.
A hit returns objects equal to a fresh call, with `report.from_cache = True`. The file stores only ids and the
example index; `row_id`, `label` and `extras` come back from the examples themselves. A missing, unreadable or
mismatched file is a miss (and is rewritten atomically: temp file, then rename).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import astuple
from pathlib import Path

from preflab.atomic_file import write_atomically
from preflab.data.examples import PairExample, PromptExample, UnpairedExample
from preflab.data.report import TokenizeReport
from preflab.data.token_columns import cut_token_columns
from preflab.data.tokenize import (KLCut, TokenizedPair, TokenizedPrompt, TokenizedUnpaired, tokenize_indexed,
                                   tokenize_pairs, tokenize_parallel, tokenize_prompts, tokenize_unpaired,
                                   with_derived, with_token_cuts)
from preflab.errors import ConfigError

CACHE_FORMAT = 6  # 2: rows with special tokens as text or unrendered tool calls are refused; 3: text rows get
# bos only where the tokenizer adds one (data.tokenize.text_bos); 4: truncation_mode keep_end cuts each sequence's
# start (TRL 1.16), storing the rejected side's own prompt when the two cuts differ; 5: unpaired items keep their
# KLCut (KTO's mismatched sequences cut to max_length as TRL 1.16 cuts them); 6: per-token columns are cut with
# their response (data.token_columns; an item stores its cut spans)
_KINDS = {PairExample: ("pairs", tokenize_pairs), UnpairedExample: ("unpaired", tokenize_unpaired),
          PromptExample: ("prompts", tokenize_prompts)}  # each function's keyword defaults apply


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=True, default=repr, separators=(",", ":"))


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of everything about `tokenizer` that changes token ids or templates."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode("utf-8", "surrogatepass"))
    else:
        h.update(_json(sorted(tokenizer.get_vocab().items())).encode())
    specials = {name: getattr(tokenizer, name, None) for name in ("bos_token", "eos_token", "pad_token",
                                                                   "unk_token", "bos_token_id", "eos_token_id")}
    h.update(_json([specials, list(getattr(tokenizer, "all_special_tokens", [])),
                    getattr(tokenizer, "chat_template", None)]).encode())
    return h.hexdigest()


def examples_fingerprint(examples) -> str:
    """sha256 over the content of every example, in order."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(_json([type(ex).__name__, *astuple(ex)]).encode())
        h.update(b"\n")
    return h.hexdigest()


def _row(item) -> list:
    """The stored ids of one item; an item whose per-token columns were cut (`with_token_cuts`) adds its
    {side: [start, end]} last (after a null where the optional slot before it is empty)."""
    cuts = getattr(item, "token_cuts", None)
    if isinstance(item, TokenizedPair):  # a MAPL intra row (or a keep_end cut apart) adds its rejected prompt, a
        # pair whose RRPO phrase ids were derived (data.tokenize.with_derived) those ids, uncut; empty tail slots go
        slots = [item.rejected_prompt_ids, cuts or None, getattr(item, "derived_phrase_ids", None) or None]
        while slots and slots[-1] is None:
            slots.pop()
        return [item.prompt_ids, item.chosen_ids, item.rejected_ids, *slots]
    if isinstance(item, TokenizedUnpaired):  # with max_length: its KLCut, ids equal to the item's stored as null
        cut = item.kl_cut
        if cut is None:
            return [item.prompt_ids, item.completion_ids, *([None, cuts] if cuts else [])]
        same = lambda before, after: None if before == after else before  # noqa: E731
        return [item.prompt_ids, item.completion_ids, [cut.max_length, cut.truncation_mode,
                                                       same(cut.prompt_ids, item.prompt_ids),
                                                       same(cut.completion_ids, item.completion_ids)],
                *([cuts] if cuts else [])]
    return [item.prompt_ids]


def _cut_extras(ex, ids: list, slot: int, derived: dict | None = None) -> tuple[dict, dict | None]:
    """(the example's extras, with `derived` columns added, its per-token columns cut as stored at ids[slot], the
    cuts or None)."""
    cuts = ids[slot] if len(ids) > slot else None
    extras = {**ex.extras, **(derived or {})}
    return (cut_token_columns(extras, cuts) if cuts else extras), cuts


def _rebuild(kind: str, ex, ids: list):
    if kind == "pairs":
        derived = ids[5] if len(ids) > 5 else None
        extras, cuts = _cut_extras(ex, ids, 4, derived)
        rejected_prompt = ids[3] if len(ids) > 3 else None
        pair = with_derived(with_token_cuts(TokenizedPair(ex.row_id, ids[0], ids[1], ids[2], extras,
                                                          rejected_prompt), cuts), derived)
        return pair.marked_cut_apart() if rejected_prompt is not None and ex.rejected_prompt is None else pair
    if kind == "unpaired":
        extras, cuts = _cut_extras(ex, ids, 3)
        item = with_token_cuts(TokenizedUnpaired(ex.row_id, ids[0], ids[1], ex.label, extras), cuts)
        if len(ids) > 2 and ids[2] is not None:
            length, mode, prompt, completion = ids[2]
            item.kl_cut = KLCut(length, mode, ids[0] if prompt is None else prompt,
                                ids[1] if completion is None else completion)
        return item
    return TokenizedPrompt(ex.row_id, ids[0], dict(ex.extras))


def _load(path: Path, key: str, kind: str, examples):
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
        if blob.get("format") != CACHE_FORMAT or blob.get("key") != key:
            return None
        items = [_rebuild(kind, examples[index], ids) for index, ids in blob["items"]]
        report = TokenizeReport.from_dict(blob["report"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    report.from_cache = True
    return items, report


def _store(path: Path, payload: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, separators=(",", ":"))
    write_atomically(path, write)


def tokenize_cached(examples, tokenizer, *, cache_dir: str | os.PathLike, num_proc: int = 1, **settings):
    """`tokenize_pairs` / `tokenize_unpaired` / `tokenize_prompts` (picked by the examples' type) through a
    cache under `cache_dir`. `settings` are that function's keyword arguments; `num_proc` > 1 tokenizes a cache
    miss in that many processes (same result, not part of the cache key). Returns (items, report)."""
    examples = list(examples)
    kinds = {type(ex) for ex in examples}
    if len(kinds) > 1 or (kinds and next(iter(kinds)) not in _KINDS):
        raise ConfigError(f"tokenize_cached needs examples of one type (PairExample, UnpairedExample or "
                          f"PromptExample); got {sorted(k.__name__ for k in kinds)}.")
    if not examples:
        return [], TokenizeReport(source=settings.get("source", ""))
    kind, tokenize = _KINDS[next(iter(kinds))]
    defaults = _defaults(tokenize)
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ConfigError(f"{tokenize.__name__} has no setting(s) {unknown}; it takes {sorted(defaults)}.")
    settings = {**defaults, **settings}
    key = hashlib.sha256(_json([CACHE_FORMAT, kind, sorted(settings.items()), tokenizer_fingerprint(tokenizer),
                               examples_fingerprint(examples)]).encode()).hexdigest()
    path = Path(cache_dir) / f"tokenized-{kind}-{key[:32]}.json"
    hit = _load(path, key, kind, examples)
    if hit is not None:
        return hit
    if num_proc > 1:
        items, report, positions = tokenize_parallel(kind, examples, tokenizer, num_proc, **settings)
    else:
        items, report, positions = tokenize_indexed(kind, examples, tokenizer, **settings)
    _store(path, {"format": CACHE_FORMAT, "key": key, "kind": kind, "report": report.to_dict(),
                  "items": [[pos, _row(item)] for pos, item in zip(positions, items)]})
    return items, report


def _defaults(function) -> dict:
    """The keyword defaults of a public `tokenize_*` function (so max_length=1024 applies as documented)."""
    import inspect

    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.kind is p.KEYWORD_ONLY}
