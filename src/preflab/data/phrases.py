"""RRPO's phrase alignment: which response tokens belong to the k-th phrase where chosen and rejected differ.

    c_ids, r_ids = aligned_phrase_ids(chosen_text, rejected_text, tokenizer)   # one id per response token

The two responses are split into words (runs of letters/digits, or of punctuation) and aligned with difflib's longest
matching blocks; the k-th non-matching block (k = 1, 2, ...) is phrase k on both sides (on one side only when the
other side inserts nothing there). A token gets id k when its characters overlap phrase k, else 0 (text shared by
both responses). Ids come from the same tokenizer call that produces the response ids, so they are aligned with
the response tokens one to one: `len(c_ids) == len(tokenizer(chosen_text, add_special_tokens=False).input_ids)`.

Text rows that give neither `chosen_phrase_ids` nor `rejected_phrase_ids` get them from `derived_phrase_columns`
(called by data.tokenize for a pair when the objective reads them), checked against the ids the response is trained
on (eos appended: 0) and refused where they differ (conversational rows, a merge across the prompt boundary).

Sarkar & Etemad 2025 (RRPO, arXiv:2504.12083) mark the differing sub-sequences with <MASK>...</MASK> tags produced
while building the data; here they are derived from the two responses. Deviation: word-level diff, not tags.
"""
from __future__ import annotations

import difflib
import re

from preflab.data.report import RowProblem
from preflab.data.token_columns import ColumnMismatch

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


def has_phrase_columns(extras: dict) -> tuple[bool, bool]:
    """(whether the row gives chosen_phrase_ids, whether it gives rejected_phrase_ids): a column counts when its
    value is not None (a missing JSONL key and a null cell alike)."""
    return tuple(extras.get(name) is not None for name in PHRASE_COLUMNS)


def derives_phrase_ids(extras: dict) -> bool:
    """True for a row that gives neither phrase column: its ids are derived from its texts
    (`derived_phrase_columns`)."""
    return not any(has_phrase_columns(extras))


def check_both_or_neither(extras: dict) -> None:
    """A row gives both phrase columns or neither (then they are derived); one alone is the bad row `missing_field`
    naming the other: the given side's ids say nothing about how the other side's phrases are numbered."""
    given = has_phrase_columns(extras)
    if any(given) and not all(given):
        have, missing = (PHRASE_COLUMNS if given[0] else PHRASE_COLUMNS[::-1])
        raise RowProblem("missing_field", missing, f"the row gives {have} but not {missing}; RRPO's phrase ids are "
                         "aligned across the pair, so both are given or neither (then preflab derives both from the "
                         "chosen and rejected texts)", f"Add {missing}, or remove {have} to let preflab derive both.")


class PhraseIdsNotDerivable(ColumnMismatch):
    """Phrase ids that cannot be derived aligned with the training tokens: an error whatever on_bad_row says (like
    a column of the wrong length, data.token_columns), since every such row of the data would be dropped."""


def derived_phrase_columns(chosen, rejected, tokenizer, response_ids: dict[str, list[int]]) -> dict[str, list[int]]:
    """{chosen_phrase_ids, rejected_phrase_ids} derived from a text row's two responses (`aligned_phrase_ids`), one
    id per token of `response_ids` ({side: the response's ids as tokenized for training, before any cut, eos
    included}); the eos preflab appends gets 0 (it ends both responses: shared). The ids are aligned with tokens only
    when the training ids are the response's own tokenization (+ eos); where they are not -- a conversational row
    (the chat template renders the response with its turn markers, and may rewrite it), or a text response whose
    first tokens merge with the prompt's end (data.boundary) -- `PhraseIdsNotDerivable` refuses the row rather
    than number the wrong tokens."""
    if not (isinstance(chosen, str) and isinstance(rejected, str)):
        raise PhraseIdsNotDerivable(
            "phrase_ids_not_derivable", "chosen_phrase_ids", "the row is conversational (lists of messages) and "
            "gives no chosen_phrase_ids / rejected_phrase_ids; preflab derives RRPO's phrase ids from text responses "
            "only, since a chat template renders a response with turn markers and may rewrite it, so ids derived "
            "from the messages cannot be guaranteed to fall on the right tokens",
            "Give both columns (one id per token of the chat-templated response, eos / end-of-turn included), or "
            "give the rows as text (prompt, chosen, rejected strings).")
    eos, eos_text = tokenizer.eos_token_id, getattr(tokenizer, "eos_token", None)
    texts = {side: text[:-len(eos_text)] if eos_text and text.endswith(eos_text) else text  # one eos written at
             for side, text in (("chosen", chosen), ("rejected", rejected))}           # the end: shared, as appended
    spans = dict(zip(("chosen", "rejected"), phrase_spans(texts["chosen"], texts["rejected"])))
    out = {}
    for side, text in texts.items():
        try:
            ids, offsets = encode_with_offsets(text, tokenizer)
        except (NotImplementedError, ValueError, KeyError) as err:  # a slow (Python) tokenizer has no offsets
            raise PhraseIdsNotDerivable(
                "phrase_ids_not_derivable", f"{side}_phrase_ids", f"the tokenizer gives no character offsets "
                f"({type(err).__name__}), which deriving phrase ids from the text needs",
                "Load the fast tokenizer (use_fast), or give both phrase columns.") from err
        phrase = token_ids_for_spans(offsets, spans[side])
        ids, phrase = ids + [eos], phrase + [0]  # tokenize._finish_ids appends eos unless the text ends with it
        if ids != list(response_ids[side]):
            raise PhraseIdsNotDerivable(
                "phrase_ids_not_derivable", f"{side}_phrase_ids", f"the {side} response is trained on other tokens "
                "than its own tokenization (its first tokens merge with the end of the prompt), so phrase ids "
                "derived from its text cannot be aligned with them",
                "Give both phrase columns (one id per token the response is trained on), or change the text at the "
                "prompt/response boundary (e.g. end the prompt with a new line) so that the response tokenizes as "
                "it does alone.")
        out[f"{side}_phrase_ids"] = phrase
    return out


def derived_phrase_note(examples, which: str = "training") -> str | None:
    """The data note counting the rows whose phrase ids are derived (None when no row's are)."""
    n = sum(derives_phrase_ids(getattr(ex, "extras", {}) or {}) for ex in examples)
    if not n:
        return None
    return (f"RRPO phrase ids (chosen_phrase_ids / rejected_phrase_ids) derived from the chosen and rejected texts "
            f"for {n} of {len(examples)} {which} rows that give neither column (a word-level diff: "
            "preflab.data.phrases).")
