"""Field checks for one row, and the implicit-prompt split. Each check returns the clean value or raises
`RowProblem(reason, field, detail, fix)`.

Reasons: missing_field, wrong_type, empty_field, invalid_unicode, invalid_message, mixed_forms, identical,
no_common_prompt, invalid_label, invalid_extra, media_not_read.
"""
from __future__ import annotations

import json
import math
import numbers
import re
import unicodedata

from preflab.data.report import RowProblem
from preflab.errors import nearest
from preflab.option_types import is_number

# developer: OpenAI's chat format (and gpt-oss's template) name the system turn so; a template that does not render
# it is caught where the row is tokenized (tokenize._check_messages_rendered)
ROLES = ("system", "developer", "user", "assistant", "tool")
RESPONSE_ROLES = ("assistant", "tool")


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_text(value, field: str) -> str:
    """A non-empty string (after strip) without lone surrogates."""
    if value is None:
        raise RowProblem("missing_field", field, "missing", f"Add a non-empty string {field!r}.")
    if not isinstance(value, str):
        raise RowProblem("wrong_type", field, f"expected a string, got {type(value).__name__}",
                         "Store text as a JSON string.")
    if _has_surrogate(value):
        raise RowProblem("invalid_unicode", field, "the text holds a lone surrogate or undecodable bytes",
                         "Re-encode the text as valid UTF-8.")
    if not value.strip():
        raise RowProblem("empty_field", field, "empty string" if not value else "only whitespace")
    if _encoded_messages(value):
        raise RowProblem("wrong_type", field, "is the JSON text of a list of messages (a CSV cell, or a list column "
                         "written as a string), which would train as plain text, brackets and all",
                         "Store conversations as lists: a .jsonl / .json / .parquet file with list columns, or "
                         "json.loads the column before training.")
    if _python_messages(value):
        raise RowProblem("wrong_type", field, PYTHON_MESSAGES_DETAIL + ", which would train as plain text, brackets "
                         "and all", PYTHON_MESSAGES_FIX)
    return value


def _encoded_messages(text: str) -> bool:
    """True when `text` is a JSON list of message objects ({"role"/"from", ...}), i.e. a conversation saved as text."""
    if not text.lstrip().startswith("[{"):
        return False
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and ("role" in m or "from" in m) for m in value)


# a list of messages written as Python text: pandas' to_csv of a list column (UltraFeedback's chosen / rejected /
# messages: numpy arrays of dicts, "[{'role': 'user', ...}\n {'role': 'assistant', ...}]", no commas between them);
# not JSON, so it cannot be read back safely; before, it trained as text, quotes and braces included
_PYTHON_MESSAGES = re.compile(r"\s*\[\s*\{\s*'(?:role|from)'\s*:")
PYTHON_MESSAGES_DETAIL = ("is the Python text of a list of messages ([{'role': ...}]: how pandas' to_csv writes a "
                          "list column)")
PYTHON_MESSAGES_FIX = ("Write the file with its list columns kept: JSON lines or Parquet (pandas: df.to_json(path, "
                       "orient='records', lines=True) or df.to_parquet(path); datasets: ds.to_json / ds.to_parquet), "
                       "not CSV.")


def _python_messages(text: str) -> bool:
    """True when `text` opens as the Python repr of a list of message dicts ([{'role': ...)."""
    return _PYTHON_MESSAGES.match(text) is not None


def check_messages(value, field: str, *, response: bool = False) -> list[dict]:
    """A non-empty list of {"role", "content"} messages with roles in `ROLES`; for a response (`response=True`)
    the turns must start and end with an assistant message and contain only assistant/tool turns. An assistant
    message with `tool_calls` may have empty content. Keys whose value is None (Arrow fills absent struct
    fields with None) are dropped from the returned copies."""
    if isinstance(value, str) and _encoded_messages(value):
        raise RowProblem("wrong_type", field, "is the JSON text of a list of messages (a CSV cell, or a list column "
                         "written as a string), not a list", "Store conversations as lists: a .jsonl / .json / "
                         ".parquet file with list columns, or json.loads the column before training.")
    if isinstance(value, str) and _python_messages(value):
        raise RowProblem("wrong_type", field, PYTHON_MESSAGES_DETAIL + ", not a list", PYTHON_MESSAGES_FIX)
    if not isinstance(value, list):
        raise RowProblem("wrong_type", field, f"expected a list of messages, got {type(value).__name__}")
    if not value:
        raise RowProblem("empty_field", field, "empty list of messages")
    out = []
    for i, msg in enumerate(value):
        at = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise RowProblem("invalid_message", at, f"expected a message object, got {type(msg).__name__}",
                             'A message looks like {"role": "user", "content": "..."}.')
        msg = {k: v for k, v in msg.items() if v is not None}
        role = msg.get("role")
        if role is None and "from" in msg and "value" in msg:
            raise RowProblem("invalid_message", at, "a ShareGPT message ({'from', 'value'}), not {'role', 'content'}",
                             "Convert it: role = from (human -> user, gpt -> assistant, system -> system), content = "
                             "value, as TRL's maybe_convert_to_chatml does.")
        if not isinstance(role, str) or role not in ROLES:
            detail = "missing 'role'" if role is None else f"role {role!r} is not one of {', '.join(ROLES)}"
            near = nearest(role, ROLES) if isinstance(role, str) else ""
            raise RowProblem("invalid_message", f"{at}.role", detail, f"Use {', '.join(ROLES[:-1])} or tool.{near} "
                             "(TRL passes any role to the chat template, which may drop or misrender one it does "
                             "not know, silently; a tool result, Llama 3.1's 'ipython', is role 'tool'.)")
        content = msg.get("content")
        if msg.get("tool_calls") and content in (None, ""):
            pass  # a tool call without text
        elif content is None:
            raise RowProblem("invalid_message", f"{at}.content", "missing 'content'",
                             "Give every message a string 'content'.")
        elif not isinstance(content, str):
            raise RowProblem("invalid_message", f"{at}.content", f"expected a string, got {type(content).__name__}",
                             "Text rows read a message's content as a string (TRL would hand a list of parts to "
                             "the template as it is); put the text in a string, or train image-text rows with "
                             "task: vlm.")
        elif _has_surrogate(content):
            raise RowProblem("invalid_unicode", f"{at}.content", "the text holds a lone surrogate or "
                             "undecodable bytes", "Re-encode the text as valid UTF-8.")
        elif not content.strip():
            raise RowProblem("empty_field", f"{at}.content", "empty content")
        out.append(msg)
    if response:
        check_response_turns(out, field)
    return out


def check_response_turns(messages: list[dict], field: str, offset: int = 0, why: str = "") -> None:
    """Response turns: only assistant/tool messages, first and last from the assistant. Text preference and
    unpaired rows do not ask this (any turns, as TRL 1.16: rows.multiturn_form); the row forms that do (task: vlm,
    listwise, SFT completions, MAPL intra rows) say `why` in the refusal."""
    for i, msg in enumerate(messages):
        if msg["role"] not in RESPONSE_ROLES or (i in (0, len(messages) - 1) and msg["role"] != "assistant"):
            raise RowProblem("invalid_message", f"{field}[{i + offset}].role",
                             f"a response turn has role {msg['role']!r}",
                             (why + " " if why else "") + "Responses here are the assistant turn(s) after the "
                             "prompt; move other turns into 'prompt'.")


def check_text_or_messages(value, field: str, *, response: bool = False):
    """Dispatch: a string is checked as text, a list as messages."""
    if isinstance(value, list):
        return check_messages(value, field, response=response)
    return check_text(value, field)


MEDIA_COLUMNS = ("images", "image", "videos", "video")  # TRL's vision columns


def check_no_media(row: dict) -> None:
    """A text task's row must not carry images or videos (TRL's vision columns): text training reads the text alone,
    so the pair would silently train without what it shows."""
    for name in MEDIA_COLUMNS:
        if row.get(name) not in (None, [], ""):
            raise RowProblem("media_not_read", name, "holds images or videos, which this text task does not read "
                             "(the model would train on the text alone)",
                             "Train image-text models with task: vlm (an image-text model_name_or_path), or drop "
                             "the column.")


def check_same_form(values: dict[str, object]) -> None:
    """All given fields are text, or all are message lists (TRL's standard vs conversational form). A field that
    is neither (a number, a single message object) is named as the wrong type, not blamed on the other field."""
    for name, v in values.items():
        if isinstance(v, float) and math.isnan(v):  # pandas' empty cell (to_json / to_parquet of a float column)
            raise RowProblem("missing_field", name, "missing (NaN: how pandas writes an empty cell)",
                             "Fill the value or drop the row (df.dropna(subset=[...]) before saving).")
        if v is not None and not isinstance(v, (str, list)):
            raise RowProblem("wrong_type", name, f"expected a string or a list of messages, got {type(v).__name__}",
                             'Store text as a JSON string, or a conversation as a list of {"role", "content"} '
                             "messages.")
    kinds = {name: isinstance(v, list) for name, v in values.items() if v is not None}
    if len(set(kinds.values())) > 1:
        first = next(iter(kinds))
        odd = next(n for n, conv in kinds.items() if conv != kinds[first])
        raise RowProblem("mixed_forms", odd, f"is {'a list of messages' if kinds[odd] else 'text'} but {first!r} "
                         f"is {'a list of messages' if kinds[first] else 'text'}",
                         "Use one form per row: all strings, or all lists of messages.")


def check_label(value, field: str = "label") -> bool:
    """A desirable/undesirable label: a bool, the numbers 0 / 1 (int or float: 1.0 / 0.0, how pandas writes a label
    column that had a missing value), or their CSV text ('true' / 'false', 'True' / 'False', '1' / '0', '1.0' / '0.0').

    TRL's KTOTrainer reads the column as torch.as_tensor(label, dtype=torch.bool) and counts desirable rows as
    sum(label), so 1 / 0 and 1.0 / 0.0 train exactly as True / False; any other number (2, 0.5, -1) would be
    "desirable" there while counting as that number in its class balance: refused here, as are other strings
    ("yes") and a missing value (None, NaN)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Real) and not math.isnan(value) and value in (0, 1):  # numpy's numbers too
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LABEL_TEXTS:
        return LABEL_TEXTS[value.strip().lower()]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise RowProblem("missing_field", field, "missing" + (" (NaN: how pandas writes an empty cell)" if value
                                                             is not None else ""),
                         "Add a boolean 'label' (true = desirable) or drop the row.")
    raise RowProblem("invalid_label", field, f"expected a boolean (true / false, or 1 / 0), got {value!r}"[:200],
                     "Use true or 1 (desirable) and false or 0 (undesirable); TRL would read any other nonzero "
                     "number as desirable.")


LABEL_TEXTS = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}


def check_different(chosen, rejected) -> None:
    if chosen == rejected:
        raise RowProblem("identical", "rejected", "identical to 'chosen'",
                         "A pair needs two different responses; drop or fix the row.")


def split_implicit_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen_response, rejected_response) from two texts that share a prompt.

    Where TRL 1.16's `extract_prompt` cuts at a word boundary, the cut is TRL's: the prompt is the longest common
    prefix, less one space when a space precedes the first differing character (" yes" / " no" keep it, which BPE
    vocabularies tokenize naturally), so a prompt ending in a newline or in several spaces keeps them as TRL's
    does (preflab moved every whitespace character before the responses into them: "Q?\n" / "A" was "Q?" /
    "\nA", other response tokens than TRL's). Where TRL would cut inside a word ("A: The sky" / "A: They" at
    "A: The"), the prefix is cut back to the last word boundary, the whitespace going with the responses. Without
    such a boundary (text without spaces), the prefix is cut back to the last boundary after punctuation or beside
    a character of a script without spaces (`_unspaced_boundary`: "问题：" / "蓝色"). The cut leaves both responses
    non-empty; if no boundary exists the row is bad (`no_common_prompt`).
    """
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    if 0 < n < limit:  # the texts differ at n: TRL's cut, when it falls at a word boundary
        cut = n - 1 if chosen[n - 1] == " " else n
        if 0 < cut and (chosen[cut - 1].isspace() or (chosen[cut].isspace() and rejected[cut].isspace())):
            return chosen[:cut], chosen[cut:], rejected[cut:]
    for i in range(min(n, limit - 1), 0, -1):  # i < len of both, so neither response is empty
        if chosen[i].isspace() and rejected[i].isspace() and not chosen[i - 1].isspace():
            return chosen[:i], chosen[i:], rejected[i:]
    for i in range(min(n, limit - 1), 0, -1):  # no whitespace before the responses: text without spaces
        if _unspaced_boundary(chosen[i - 1], chosen[i]) and _unspaced_boundary(rejected[i - 1], rejected[i]):
            return chosen[:i], chosen[i:], rejected[i:]
    raise RowProblem("no_common_prompt", "prompt", "no 'prompt' column, and 'chosen' and 'rejected' share no "
                     "prefix that ends at a word boundary", "Add a 'prompt' column.")


def _no_space_script(char: str) -> bool:
    """A character of a script written without spaces between words (CJK ideographs, kana, Hangul syllables,
    fullwidth forms: code points from U+2E80 on, emoji aside)."""
    return 0x2E80 <= ord(char) < 0x1F000


def _unspaced_boundary(before: str, after: str) -> bool:
    """A word boundary between two characters neither of which is whitespace: after punctuation ("A:yes", "回答：蓝色")
    or beside a character of a script without spaces ("天空是蓝色"). The implicit text prompt falls back to it only
    where the two texts share no prefix ending before whitespace: before, such rows (Chinese or Japanese text,
    'Answer:yes') had no implicit prompt at all and were bad rows, where TRL cuts at the first differing character."""
    if after.isspace() or before.isspace():
        return False
    return unicodedata.category(before).startswith("P") or _no_space_script(before) or _no_space_script(after)


def split_implicit_messages(chosen: list[dict], rejected: list[dict]) -> tuple[list, list, list]:
    """(prompt, chosen_turns, rejected_turns) from two conversations that share their first turns, cut as TRL 1.16's
    `extract_prompt` cuts them: the prompt is every message before the first one that differs (when one conversation
    is the start of the other, every shared message but the last), so a response may open with any turn, e.g. the
    user turn where two multi-turn conversations part (`chosen` = [..., a1, u2, a2], `rejected` = [..., a1, u2', b2]
    -> prompt [..., a1], responses [u2, a2] and [u2', b2]; `tokenize` then cuts such rows at TRL's common token
    prefix). A row whose conversations differ from their first message has no prompt: `no_common_prompt` (TRL
    would render an empty prompt, or fail on it)."""
    limit = min(len(chosen), len(rejected))
    n = next((i for i in range(limit) if chosen[i] != rejected[i]), limit - 1)
    if n < 1:
        raise RowProblem("no_common_prompt", "prompt", "no 'prompt' column, and 'chosen' and 'rejected' differ from "
                         "their first message, so they share no prompt turns", "Add a 'prompt' column with the "
                         "shared turns, or start both conversations with the same turns.")
    return chosen[:n], chosen[n:], rejected[n:]


def is_assistant_reply(messages: list[dict]) -> bool:
    """True when a conversational response is the assistant's own turns only: it opens with an assistant message
    and holds only assistant and tool turns. Other responses (a multi-turn continuation with user turns, one that
    opens with a tool result) train on turns the model does not write, as TRL 1.16 trains them; load_rows names
    their form `*_multiturn`."""
    return bool(messages) and messages[0].get("role") == "assistant" and all(
        m.get("role") in RESPONSE_ROLES for m in messages)


def check_numeric_extra(value, field: str, low: float | None = None, high: float | None = None):
    """An objective's per-row extra (e.g. Sem-DPO's `similarity`): a finite number, or a list (of lists) of finite
    numbers, each within [low, high] where given. Numeric text (CSV cells) becomes a float; bools are refused.
    Returns the clean value."""
    fix = f"Every row needs a numeric {field!r} column for this objective (loss_type); fix or drop the row."
    if value is None:
        raise RowProblem("missing_field", field, "missing", fix)
    stack = [(value, None, None)]
    root: list = [None]

    def put(parent, key, clean):
        if parent is None:
            root[0] = clean
        else:
            parent[key] = clean

    while stack:  # iterative, so a deeply nested list cannot exhaust the stack
        item, parent, key = stack.pop()
        if isinstance(item, list):
            copy = [None] * len(item)
            put(parent, key, copy)
            stack.extend((v, copy, i) for i, v in enumerate(item))
            continue
        number = item
        if isinstance(item, str):
            try:
                number = float(item)
            except ValueError:
                raise RowProblem("invalid_extra", field, f"expected a number, got {item!r}"[:200], fix) from None
        if not is_number(number):
            raise RowProblem("invalid_extra", field, f"expected a number, got {type(item).__name__} {item!r}"[:200],
                             fix)
        if not math.isfinite(number):
            raise RowProblem("invalid_extra", field, f"the value {item!r} is not finite", fix)
        if (low is not None and number < low) or (high is not None and number > high):
            raise RowProblem("invalid_extra", field, f"the value {number!r} is outside [{low}, {high}]", fix)
        put(parent, key, number)
    return root[0]
