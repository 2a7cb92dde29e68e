"""RRPO's phrase alignment: which response tokens belong to the k-th phrase where chosen and rejected differ.

    c_ids, r_ids = aligned_phrase_ids(chosen_text, rejected_text, tokenizer)   # one id per response token

The two responses are split into words (runs of letters/digits, or of punctuation) and aligned with difflib's longest
matching blocks; the k-th non-matching block (k = 1, 2, ...) is phrase k on both sides (on one side only when the
other side inserts nothing there). A token gets id k when its characters overlap phrase k, else 0 (text shared by
both responses). Ids come from the same tokenizer call that produces the response ids, so they are aligned with
the response tokens one to one: `len(c_ids) == len(tokenizer(chosen_text, add_special_tokens=False).input_ids)`.

Sarkar & Etemad 2025 (RRPO, arXiv:2504.12083) mark the differing sub-sequences with <MASK>...</MASK> tags produced
while building the data; here they are derived from the two responses. Deviation: word-level diff, not tags.
"""
from __future__ import annotations

import difflib
import re

from preflab.data.report import RowProblem

PHRASE_COLUMNS = ("chosen_phrase_ids", "rejected_phrase_ids")


def _words(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(), m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]+", text)]


def phrase_spans(chosen: str, rejected: str) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """([(char_start, char_end, k)] of chosen, the same of rejected): the differing phrases, aligned by k."""
    cw, rw = _words(chosen), _words(rejected)
    matcher = difflib.SequenceMatcher(a=[w for w, _, _ in cw], b=[w for w, _, _ in rw], autojunk=False)
    c_spans, r_spans, k = [], [], 0
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        k += 1
        if i2 > i1:
            c_spans.append((cw[i1][1], cw[i2 - 1][2], k))
        if j2 > j1:
            r_spans.append((rw[j1][1], rw[j2 - 1][2], k))
    return c_spans, r_spans


def token_ids_for_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int, int]]) -> list[int]:
    """Phrase id of each token given its (start, end) character offsets (0 where it overlaps no span)."""
    out = []
    for start, end in offsets:
        ident = 0
        if end > start:
            for s, e, k in spans:
                if start < e and s < end:
                    ident = k
                    break
        out.append(ident)
    return out


def encode_with_offsets(text: str, tokenizer) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def aligned_phrase_ids(chosen: str, rejected: str, tokenizer) -> tuple[list[int], list[int]]:
    """Per-token phrase ids of the chosen and the rejected response (see the module docstring)."""
    c_spans, r_spans = phrase_spans(chosen, rejected)
    _, c_off = encode_with_offsets(chosen, tokenizer)
    _, r_off = encode_with_offsets(rejected, tokenizer)
    return token_ids_for_spans(c_off, c_spans), token_ids_for_spans(r_off, r_spans)


def check_differing_phrase(chosen_ids, rejected_ids, detail: str | None = None, fix: str | None = None) -> None:
    """A pair whose per-token phrase ids are all 0 on both sides is a bad row, `no_differing_phrase`: RRPO sums
    log-ratios over differing phrases only (methods/objectives.md §C #17: the builder drops a pair with no phrase),
    so with none its reward term u is 0 and the pair would train only the KL term (Sarkar & Etemad 2025). detail /
    fix: the message's words (default: ids read from a text row's data columns)."""
    if any(chosen_ids) or any(rejected_ids):
        return
    raise RowProblem("no_differing_phrase", "rejected", detail or "every chosen_phrase_ids and rejected_phrase_ids "
                     "value is 0: chosen and rejected differ in no phrase, so RRPO's reward term is 0 for this pair",
                     fix or "Give the differing tokens phrase ids k >= 1 (phrase k aligned across the pair), or "
                     "drop the row.")
