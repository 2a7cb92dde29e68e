"""The prompt/response token boundary: token ids for a prompt and its responses such that the response ids are
exactly what follows the prompt ids (RELIABILITY.md §2.8, checklist B1-B3).

`split_exact(tokenizer, prompt_text, responses)` tries, per response:
1. "joint": tokenize prompt + response together; if the prompt's own ids are a prefix, the response ids are the
   rest. This is what tokenizing the full text gives, and what TRL does.
2. "merged" (a BPE merge crosses the boundary, e.g. prompt "... on " + response "the mat" where " the" is one
   token): keep the prompt's own ids and tokenize the response separately, the way the model continues the
   prompt at inference. Two candidates, the first that round-trips wins: the response alone, then the
   response after a special token (so tokenizers that prepend a word-start marker to every encode, such as
   SentencePiece-style Metaspace with prepend_scheme="first", do not invent a space). Round-trip means
   decode(prompt_ids + response_ids) == decode(joint ids).
3. "shifted": if no candidate round-trips (e.g. a Metaspace tokenizer with prepend_scheme="always" and a prompt
   ending in a space), fall back to TRL's common-prefix cut: the prompt ids are cut to the longest token
   prefix shared with every joint tokenization, so the response region also holds the end of the prompt text.
   Exact as a concatenation, counted in the report. If that prefix is empty the row is bad.
For a conversational response that does not open with an assistant turn (a multi-turn continuation that starts
with the user's turn, a tool result), the generation prompt is not part of the sequence, so no text boundary exists:
`split_common_tokens` cuts there as TRL 1.16 cuts every row (the tokenized prompt and each prompt + response cut at
their common token prefix).
Why not always tokenize the response alone (the DPO reference) or always cut at the common prefix (TRL)?
The first invents a leading space with word-start-marker tokenizers; the second silently moves prompt text
into the response (trl#2054). Joint-first keeps the usual case identical to TRL and makes every exception
exact and counted.
"""
from __future__ import annotations

from dataclasses import dataclass

from preflab.data.report import RowProblem


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text`, no special tokens added (templates and this module add them explicitly)."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except (TypeError, ValueError, UnicodeError) as exc:  # e.g. a lone surrogate (the fast tokenizer: TypeError)
        raise RowProblem("tokenizer_error", None, f"the tokenizer cannot encode the text ({exc})"[:300],
                         "Check the text is valid UTF-8.") from exc


def decode(tokenizer, ids: list[int]) -> str:
    """Text of `ids`, special tokens kept, no clean-up of spaces (so decoding is comparable)."""
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@dataclass
class Split:
    """Token ids of one prompt and its responses; `how` is "joint", "merged" or "shifted" (see module doc)."""

    prompt_ids: list[int]
    response_ids: list[list[int]]
    how: str


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _anchor_id(tokenizer) -> tuple[str, int] | None:
    for name in ("eos_token", "bos_token", "pad_token"):
        token = getattr(tokenizer, name, None)
        if token:
            return token, tokenizer.convert_tokens_to_ids(token)
    return None


def _separate(tokenizer, prompt_ids: list[int], response: str, joint_text: str) -> list[int] | None:
    """Response ids tokenized apart from the prompt that round-trip after `prompt_ids`, or None."""
    candidates = [encode(tokenizer, response)]
    anchor = _anchor_id(tokenizer)
    if anchor is not None:
        ids = encode(tokenizer, anchor[0] + response)
        if ids[:1] == [anchor[1]]:
            candidates.append(ids[1:])
    for ids in candidates:
        if decode(tokenizer, prompt_ids + ids) == joint_text:
            return ids
    return None


def split_exact(tokenizer, prompt_text: str, responses: list[str], fields: list[str] | None = None,
                joint_only: bool = False) -> Split:
    """Token ids for `prompt_text` and each of `responses`, with an exact boundary (see the module doc).

    prompt_text, responses[i]: text as it will be concatenated (no special tokens are added here).
    fields: the row fields of the responses, for the error when no boundary exists.
    joint_only: skip step 2 ("merged"), so prompt ids + response ids are always the joint tokenization of
    prompt + response (TRL RewardTrainer's `tokenizer(prompt + response)`): a reward model sees one sequence, and
    a plain `tokenizer(prompt + response)` at inference must give the ids it was trained on.
    Returns a `Split`; raises `RowProblem("boundary_unrepresentable", ...)` when none exists.
    """
    prompt_ids = encode(tokenizer, prompt_text)
    n = len(prompt_ids)
    out: list[list[int] | None] = []
    joints: list[list[int]] = []
    how = "joint"
    for response in responses:
        joint = encode(tokenizer, prompt_text + response)
        joints.append(joint)
        if joint[:n] == prompt_ids:
            out.append(joint[n:])
            continue
        ids = None if joint_only else _separate(tokenizer, prompt_ids, response, decode(tokenizer, joint))
        out.append(ids)
        how = "merged" if ids is not None else "shifted"
    if all(ids is not None for ids in out):
        return Split(prompt_ids, out, how)
    cut = min(_common_prefix(prompt_ids, joint) for ids, joint in zip(out, joints) if ids is None)
    if cut == 0:
        bad = next(i for i, ids in enumerate(out) if ids is None)
        raise RowProblem("boundary_unrepresentable", (fields or [None] * len(out))[bad],
                         "the tokenizer merges the end of the prompt with the response so that no token "
                         "boundary between them exists", "End the prompt with a newline or move its trailing "
                         "space into the response.")
    tail = prompt_ids[cut:]
    shifted = [tail + ids if ids is not None else joint[cut:] for ids, joint in zip(out, joints)]
    return Split(prompt_ids[:cut], shifted, "shifted")


def split_common_tokens(tokenizer, prompt_text: str, fulls: list[str], fields: list[str] | None = None) -> Split:
    """TRL 1.16's DPO / KTO cut (its `common_prefix_length`): the prompt ids are the longest token prefix that
    encode(prompt_text) shares with every encode(full), and each response is the rest of its full sequence, so
    prompt ids + response ids = encode(full) exactly. prompt_text: the prompt rendered with the generation prompt;
    fulls: prompt + response rendered, one per response. Used for conversational responses that open with a turn
    other than the assistant's (`tokenize._texts`): the generation prompt then ends where the full text starts the
    next turn's header, and TRL's cut falls where the two first differ (how = "common_tokens"). A row whose full
    sequences share no token with the prompt is bad (`boundary_unrepresentable`)."""
    prompt_ids = encode(tokenizer, prompt_text)
    joints = [encode(tokenizer, full) for full in fulls]
    shared = min(_common_prefix(prompt_ids, joint) for joint in joints)
    if shared == 0:
        raise RowProblem("boundary_unrepresentable", (fields or [None])[0], "the rendered prompt and prompt + "
                         "response share no first token, so no prompt is left to condition the response on",
                         "Check the chat template renders the prompt turns at the start of every conversation.")
    return Split(prompt_ids[:shared], [joint[shared:] for joint in joints], "common_tokens")
