"""Examples -> token ids with an exact prompt/response boundary (DESIGN.md, data path step 2).

    pairs, report = tokenize_pairs(examples, tokenizer, max_length=1024, on_bad_row="skip", source="train.jsonl")

Text rows: prompt_ids = [bos] (when the tokenizer itself puts bos before text: `tokenizer(text)` starts with it, as
for Llama, Mistral and Gemma; not for GPT-2, GPT-NeoX, OLMo, Phi-3 or Qwen, see `text_bos`) + ids of the prompt;
response ids = ids of the response + [eos]. This is TRL's `tokenizer(prompt)` / `tokenizer(prompt + response + eos)`.
Conversational rows: the prompt text is the chat template of the prompt messages with add_generation_prompt=True,
the response text is what the template of prompt + response adds after it (the templated prompt must be a text
prefix, else the row is bad); the template's own special tokens (bos,
end-of-turn) are kept as they are and nothing is added, as in TRL. The boundary itself is computed by
`boundary.split_exact` (joint tokenization when it is prefix-preserving, else the prompt's own ids followed by
separately tokenized response ids; see that module for the choice versus TRL's common-prefix cut). A conversational
response that opens with another turn than the assistant's (TRL 1.16 accepts any turns after the prompt: a multi-turn
continuation [user, assistant, ...], a tool result) is cut as TRL cuts it, at the common token prefix of the rendered
prompt and each prompt + response (`boundary.split_common_tokens`); the user, system and tool turns inside a response
are trained, as in TRL.

Special tokens: text the tokenizer would read as a control token (its special tokens: bos, eos, pad, unk, and
added special tokens such as `<|assistant|>` or `<|im_end|>`) is refused wherever a row holds text: text prompts
and responses and the content of every message (`special_token_in_text`, naming the field). Only preflab and the
chat template place control tokens; a row cannot fake a turn boundary. One eos at the very end of a text response
stays allowed (counted as `eos_already_present`). An assistant turn with `tool_calls` must be rendered by the chat
template (`tool_calls_not_rendered` otherwise), so a template that ignores tool calls never trains an empty turn.

Truncation: a prompt longer than `max_prompt_length` (TRL 0.x's option; TRL 1.16 has none) keeps its start
(truncation_mode "keep_start") or its end ("keep_end" or unset; a leading bos is kept). Then each sequence prompt +
response longer than `max_length` is cut as TRL 1.16's DataCollatorForPreference cuts it: keep_start (or unset, TRL's
default) keeps its start, so the prompt stays whole and each response keeps its start; keep_end keeps its end, so the
prompt's start is cut (bos included), per sequence: the chosen and rejected sequences of one row may keep different
parts of the prompt (the rejected one's is then `rejected_prompt_ids`, with `cut_apart`). Under keep_start a prompt
that leaves no room for one response token is a bad row (`prompt_fills_max_length`; TRL drops it unsaid); pairs
whose two sequences are equal are bad rows (`identical_after_tokenization`). Truncations are counted per row in the
`TokenizeReport`. With token_extras, per-token columns (`<side>_<name>` lists of numbers, RRPO's phrase ids) are
cut to the tokens their response keeps (data.token_columns); with phrase_ids (RRPO), a text pair that gives
neither phrase column gets them derived from its texts (data.phrases.derived_phrase_columns, checked against the
uncut response ids, then cut like given ones), and a pair whose kept phrase ids are all 0 is the bad row
`no_differing_phrase`. Unpaired (KTO) examples keep their ids before the max_length cut
(`KLCut`): KTO's mismatched (KL) sequences pair a prompt with another example's uncut completion and are cut like
any sequence (`kl_sequence`), as TRL 1.16's KTOTrainer cuts them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from preflab.data.boundary import Split, encode, split_common_tokens, split_exact
from preflab.data.examples import PairExample, PromptExample, Text, UnpairedExample
from preflab.data.phrases import PHRASE_COLUMNS, check_differing_phrase, derived_phrase_columns, derives_phrase_ids
from preflab.data.report import MAX_SKIPPED_EXAMPLES, BadRowPolicy, RowProblem, TokenizeReport, place_of, row_error
from preflab.data.token_columns import ColumnMismatch, check_token_columns, cut_token_columns, kept_span
from preflab.errors import ConfigError, DataError

TRUNCATION_MODES = ("keep_end", "keep_start")


@dataclass
class TokenizedPair:
    """Token ids of one pair: prompt_ids [P], chosen_ids [C], rejected_ids [R] (responses end in eos or the
    template's end-of-turn unless truncated). rejected_prompt_ids: None for an ordinary pair; for a MAPL intra row
    (PairExample.rejected_prompt) the ids of x_l, which the rejected side is scored after (`rejected_prompt_of`);
    with truncation_mode keep_end, the part of the prompt the rejected sequence kept when it differs from the chosen
    sequence's (cut_apart: True)."""

    row_id: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    extras: dict = field(default_factory=dict)
    rejected_prompt_ids: list[int] | None = None
    # True: rejected_prompt_ids is the end of the same prompt that keep_end truncation cut differently before each
    # response (`_keep_end`), not a MAPL intra row's second prompt (`is_intra_row`). A class attribute set on the
    # instance, not a field: the fields are what data.fingerprint hashes, and a new field would change the
    # fingerprint of every pair, so checkpoints of earlier versions could not be resumed
    cut_apart = False

    def marked_cut_apart(self) -> "TokenizedPair":
        self.cut_apart = True
        return self


def is_intra_row(pair) -> bool:
    """A MAPL intra row (PairExample.rejected_prompt: one response under two prompts): its own rejected prompt, not
    set by keep_end truncation (TokenizedPair.cut_apart)."""
    return getattr(pair, "rejected_prompt_ids", None) is not None and not getattr(pair, "cut_apart", False)


def rejected_prompt_of(pair) -> list[int]:
    """The prompt ids the rejected response of `pair` is scored after: its own (MAPL intra rows) or the shared one.
    Any object with prompt_ids works (vision and online pairs have no rejected_prompt_ids)."""
    own = getattr(pair, "rejected_prompt_ids", None)
    return pair.prompt_ids if own is None else own


@dataclass
class TokenizedUnpaired:
    """Token ids of one unpaired example: prompt_ids [P], completion_ids [C], and its desirable `label`.
    mismatched_completion_ids: the completion of another example that KTO's reference point pairs with this prompt,
    when it is fixed per example (TRL's KL_completion_ids; preflab.data.mismatched, precompute_ref_log_probs); None:
    formed inside each micro-batch (preflab.loops.kinds.UnpairedKind.collate)."""

    row_id: int
    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    extras: dict = field(default_factory=dict)
    mismatched_completion_ids: list[int] | None = None
    # `KLCut`: how max_length cuts the mismatched (KL) sequences this example takes part in, set on the instance
    # when max_length is set; None: not cut. A class attribute, not a field (data.fingerprint hashes the fields)
    kl_cut = None


class KLCut(NamedTuple):
    """What cuts KTO's mismatched (KL) sequences to max_length as TRL 1.16 cuts them: its KTOTrainer pairs each
    prompt with another example's completion as tokenized (KL_completion_ids, before any cut) and its collator cuts
    prompt + that completion to max_length like every sequence (`kl_sequence`). prompt_ids / completion_ids: this
    example's before the max_length cut (after max_prompt_length / max_completion_length)."""

    max_length: int
    truncation_mode: str | None
    prompt_ids: list[int]
    completion_ids: list[int]


def uncut_completion(item) -> list[int]:
    """The completion ids of an unpaired example before the max_length cut: what TRL 1.16's KTOTrainer pairs with
    other prompts (KL_completion_ids, cut only with the sequence it joins: `kl_sequence`)."""
    cut = getattr(item, "kl_cut", None)
    return item.completion_ids if cut is None else cut.completion_ids


def kl_sequence(item, other: list[int]) -> tuple[list[int], list[int]]:
    """(prompt, completion) of the mismatched (KL) sequence of `item`'s prompt with another example's completion
    `other` (its `uncut_completion`, or a fixed mismatched_completion_ids), cut to max_length by `item.kl_cut` as
    `_truncate` cuts an example's own sequence: keep_start (or unset: TRL 1.16's KTOTrainer, which has no
    truncation_mode, cuts (prompt + KL completion)[:max_length] in its collator) keeps the prompt whole and the
    completion's start, keep_end (`_keep_end`) the sequence's end. Examples without kl_cut (no max_length, or built
    from Python) are not cut."""
    cut = getattr(item, "kl_cut", None)
    if cut is None:
        return item.prompt_ids, other
    if cut.truncation_mode == "keep_end":
        return _keep_end(cut.prompt_ids, other, cut.max_length)
    return cut.prompt_ids, other[:cut.max_length - len(cut.prompt_ids)]


def count_kl_truncated(items, report) -> None:
    """Set report.kl_truncated / kl_truncated_always: of the unpaired `items`, how many have a mismatched (KL)
    sequence that `kl_sequence` cuts (prompt + partner completion over max_length, either truncation_mode) with the
    longest / the shortest uncut completion among them. The partner is another example's completion, drawn per
    micro-batch (or fixed by preflab.data.mismatched), so the KL sequences cut lie between the two counts."""
    cuts = [x.kl_cut for x in items if getattr(x, "kl_cut", None) is not None]
    if not cuts:
        return
    lengths = [len(c.completion_ids) for c in cuts]
    longest, shortest = max(lengths), min(lengths)
    report.kl_truncated = sum(len(c.prompt_ids) + longest > c.max_length for c in cuts)
    report.kl_truncated_always = sum(len(c.prompt_ids) + shortest > c.max_length for c in cuts)


@dataclass
class TokenizedPrompt:
    """Token ids of one prompt [P], ready for generation (chat rows end with the generation prompt)."""

    row_id: int
    prompt_ids: list[int]
    extras: dict = field(default_factory=dict)


@dataclass
class _Settings:
    max_length: int | None
    max_prompt_length: int | None
    truncation_mode: str | None
    max_completion_length: int | None = None
    specials: re.Pattern | None = None  # the tokenizer's special tokens as text (see `special_token_pattern`)
    eos_text: str | None = None
    bos: int | None = None  # the bos id text prompts start with (`text_bos`), None: none
    joint_only: bool = False  # reward models: prompt + response ids = the joint tokenization (split_exact)
    token_extras: bool = False  # per-token columns checked and cut with their response (data.token_columns)
    phrase_ids: bool = False  # RRPO: a pair whose kept phrase ids are all 0 is a bad row (data.phrases)


def text_bos(tokenizer) -> int | None:
    """The bos id that `tokenizer(text)` puts before text (its post-processor / add_bos_token), or None when it adds
    none. Text rows start with it, as TRL's `tokenizer(prompt)` and a plain transformers `tokenizer(prompt)` at
    inference do. A tokenizer that has a bos token but does not add it (GPT-2, GPT-NeoX and OLMo's <|endoftext|>,
    Phi-3's <s>, SmolLM2's <|im_start|>) gets none: prepending it would train on a sequence the model never sees."""
    bos = _special_id(tokenizer, "bos")
    if bos is None:
        return None
    try:
        with_specials = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    except (TypeError, ValueError):
        return bos
    return bos if with_specials[:1] == [bos] and encode(tokenizer, "a")[:1] != [bos] else None


def bos_ids(tokenizer) -> list[int]:
    """[bos] where the tokenizer puts bos before text (`text_bos`), else []: the start of a text prompt built by hand
    (recipes that encode with add_special_tokens=False), so it matches the text rows' prompt_ids."""
    bos = text_bos(tokenizer)
    return [] if bos is None else [bos]


def special_token_pattern(tokenizer) -> re.Pattern | None:
    """A regex matching any of the tokenizer's special tokens written as text, or None when it has none."""
    texts = {str(t) for t in getattr(tokenizer, "all_special_tokens", None) or []}
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            texts.add(str(added.content))
    texts.discard("")
    if not texts:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True)))


def _check_no_special(settings: _Settings, value: Text, field_name: str, response: bool) -> None:
    """Refuse control tokens written as text in a text field or in any message's content."""
    if settings.specials is None:
        return
    if isinstance(value, list):
        places = [(m.get("content"), f"{field_name}[{i}].content") for i, m in enumerate(value)]
    else:
        text = value
        if response and settings.eos_text and text.endswith(settings.eos_text):
            text = text[:-len(settings.eos_text)]  # one eos at the very end: counted as eos_already_present
        if response and settings.eos_text and settings.eos_text in text:
            return  # an eos inside a text response is reported as eos_in_response after tokenization
        places = [(text, field_name)]
    for text, name in places:
        found = settings.specials.search(text) if isinstance(text, str) else None
        if found:
            raise RowProblem("special_token_in_text", name, f"the text contains {found.group()!r}, one of the "
                             "tokenizer's special tokens, which would be read as a control token",
                             "Remove it or write it differently (e.g. with a space inside); preflab and the chat "
                             "template add bos, eos and turn markers themselves."
                             + ("" if isinstance(value, list) else " A text already rendered with a chat template "
                                "(turn markers written out, as some TRL datasets hold them)? Give the conversation as "
                                "messages instead (prompt, chosen and rejected as lists of {\"role\", \"content\"}), "
                                "so that the template is applied once."))


def _check_tool_calls_rendered(tokenizer, prompt: list, response: list, extras: dict, field_name: str,
                               full: str) -> None:
    """A response turn with tool_calls must change the rendered text (else the template dropped the call)."""
    if not any(isinstance(m, dict) and m.get("tool_calls") for m in response):
        return
    without = [{k: v for k, v in m.items() if k != "tool_calls"} for m in response]
    try:
        plain = _render(tokenizer, prompt + without, extras, field_name, generation=False)
    except RowProblem:
        return  # the template needs the tool calls, so it renders them
    if plain == full:
        raise RowProblem("tool_calls_not_rendered", field_name, "an assistant turn has tool_calls, but the chat "
                         "template does not render them, so it would train an empty or partial turn",
                         "Use a chat template that renders tool_calls, or put the call in the message content.")


def _check_settings(max_length, max_prompt_length, truncation_mode, max_completion_length=None) -> _Settings:
    for name, value in (("max_length", max_length), ("max_prompt_length", max_prompt_length),
                        ("max_completion_length", max_completion_length)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{name}={value!r} must be a positive integer or None.")
    if truncation_mode is not None and truncation_mode not in TRUNCATION_MODES:
        raise ConfigError(f"truncation_mode={truncation_mode!r} is not one of {TRUNCATION_MODES} (or None: "
                          "sequences keep their start, a prompt cut to max_prompt_length its end).")
    return _Settings(max_length, max_prompt_length, truncation_mode, max_completion_length)


def _special_id(tokenizer, name: str) -> int | None:
    return getattr(tokenizer, f"{name}_token_id", None)


def chat_template_options(extras: dict) -> tuple[list | None, dict]:
    """(tools, chat_template_kwargs) of a row's extras for apply_chat_template, each given as an object or as its
    JSON text (a CSV cell, a column written as JSON text). The one parser of both columns: preference rows
    (`_render`) and SFT rows with assistant_only_loss (preflab.data.assistant_mask) read them alike."""
    kwargs = extras.get("chat_template_kwargs") or {}
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except ValueError:
            kwargs = None
    if not isinstance(kwargs, dict):
        raise RowProblem("wrong_type", "chat_template_kwargs", "expected an object of chat template arguments (e.g. "
                         f"{{\"enable_thinking\": false}}), got {str(extras.get('chat_template_kwargs'))[:60]!r}",
                         "Write the column as a JSON object (or its JSON text).")
    tools = extras.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError as err:
            raise RowProblem("wrong_type", "tools", f"is text that is not JSON ({err}): {tools[:60]!r}",
                             "Write the column as a list of tool schemas (or its JSON text).") from err
    return tools or None, dict(kwargs)


def _render(tokenizer, messages: list[dict], extras: dict, field_name: str, generation: bool, first: int = 0,
            prompt_field: str = "prompt") -> str:
    """The chat template of `messages` as text, with the row's `tools` / `chat_template_kwargs` if present. first:
    the messages from this index on are `field_name`'s, those before it `prompt_field`'s (prompt + response), each
    named by its index in its own field when the template leaves it out."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "")
        where = f"the tokenizer of {name}" if name else "the tokenizer"
        raise ConfigError(f"conversational rows need a chat template, and {where} has none (no "
                          "chat_template in tokenizer_config.json or chat_template.jinja). Save one with the tokenizer "
                          "(tokenizer.chat_template = ...; tokenizer.save_pretrained(dir)), or give the rows as text.")
    tools, kwargs = chat_template_options(extras)
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=generation, **kwargs)
    except Exception as exc:  # a template may raise on purpose (e.g. "roles must alternate")
        raise RowProblem("chat_template_error", field_name, f"the chat template failed: {type(exc).__name__}: "
                         f"{exc}"[:500], "Fix the messages so the template accepts them.") from exc
    _check_messages_rendered(messages, text, field_name, first, prompt_field)
    return text


RENDER_CHECKED_ROLES = ("system", "developer", "user")  # their text reaches the model unchanged in every template


def _check_messages_rendered(messages: list[dict], text: str, field_name: str, first: int = 0,
                             prompt_field: str = "prompt") -> None:
    """Every system and user message's text (stripped: Llama 3 and Gemma templates trim it) must appear in the
    rendered conversation. A template that handles only the roles it knows (`{% if role == 'user' %} ... {% elif
    role == 'assistant' %} ... {% endif %}`) drops the others without an error, and the model would train without the system prompt
    the row gives, as TRL does silently. Assistant and tool turns are not checked: templates rewrite them on
    purpose (Qwen3 drops earlier turns' <think> text; Llama 3.1 writes tool results as JSON)."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if message.get("role") not in RENDER_CHECKED_ROLES or not isinstance(content, str) or not content.strip():
            continue
        if content.strip() not in text:
            place = f"{field_name}[{i - first}]" if i >= first else f"{prompt_field}[{i}]"
            raise RowProblem("message_not_rendered", place, f"the chat template leaves out this "
                             f"{message['role']!r} message (its text {content.strip()[:40]!r} is not in the rendered "
                             "conversation), so the model would train without it",
                             f"Use a chat template that renders {message['role']!r} messages, or merge the message "
                             "into the next user message.")


def _texts(tokenizer, prompt: Text, responses: list[Text], fields: list[str], extras: dict,
           prompt_field: str = "prompt"):
    """(prompt text, response texts, is_chat, whole): response texts ready for `split_exact`, or with whole=True the
    full texts prompt + response ready for `boundary.split_common_tokens`: a conversational row with a response that
    opens with a turn other than the assistant's (a multi-turn continuation that starts with the user's turn, a tool
    result), where the generation prompt ending the rendered prompt is not in the sequence, so the row is cut as
    TRL 1.16 cuts it (the common token prefix of the rendered prompt and of every prompt + response)."""
    for response, name in zip(responses, fields):
        kinds = {type(prompt), type(response)}
        if kinds != {str} and kinds != {list}:
            raise RowProblem("wrong_type", name, "prompt and response must both be strings or both be lists of "
                             "messages", "Build examples with load_rows, which checks this.")
    if not isinstance(prompt, list):
        return prompt, list(responses), False, False
    prompt_text = _render(tokenizer, prompt, extras, prompt_field, generation=True)
    whole = any(response[:1] and response[0].get("role") != "assistant" for response in responses)
    texts = []
    for response, name in zip(responses, fields):
        full = _render(tokenizer, prompt + response, extras, name, generation=False, first=len(prompt),
                       prompt_field=prompt_field)
        _check_tool_calls_rendered(tokenizer, prompt, response, extras, name, full)
        if whole:
            texts.append(full)
            continue
        if not full.startswith(prompt_text):
            at = next((i for i, (x, y) in enumerate(zip(prompt_text, full)) if x != y), min(len(prompt_text),
                                                                                              len(full)))
            raise RowProblem("template_prefix_mismatch", name, "the chat template renders the prompt (with "
                             "add_generation_prompt=True) as text that is not a prefix of prompt + response: from "
                             f"character {at} the prompt alone has {prompt_text[at:at + 40]!r}, prompt + response "
                             f"has {full[at:at + 40]!r} (TRL 1.16 would cut both at their common token prefix and "
                             "train the response on a context the model does not see at inference)",
                             "Use a chat template that renders earlier turns the same way whatever follows (for a "
                             "reasoning template that opens <think> in the generation prompt, start each response "
                             "with the same text, or pick its no-thinking variant).")
        texts.append(full[len(prompt_text):])
    return prompt_text, texts, True, whole


def _finish_ids(tokenizer, split: Split, fields: list[str], is_chat: bool, report: TokenizeReport,
                bos: int | None = None):
    """Add bos (text rows, when the tokenizer adds one: `text_bos`) and eos (text responses); check that no eos sits
    inside a text response."""
    prompt_ids = list(split.prompt_ids)
    eos = _special_id(tokenizer, "eos")
    if not is_chat and bos is not None and prompt_ids[:1] != [bos]:
        prompt_ids.insert(0, bos)
    responses = []
    present = False
    for ids, name in zip(split.response_ids, fields):
        ids = list(ids)
        if not is_chat:  # chat responses end with the template's own end-of-turn
            if eos in ids[:-1]:
                raise RowProblem("eos_in_response", name, "the text contains the end-of-sequence token "
                                 f"{tokenizer.eos_token!r} before its end", "Remove it; preflab appends one.")
            if ids[-1:] == [eos]:
                present = True
            else:
                ids.append(eos)
        responses.append(ids)
    report.eos_already_present += present
    report.boundary_merged += split.how == "merged"
    report.boundary_shifted += split.how == "shifted"
    return prompt_ids, responses


def no_eos_message(tokenizer) -> str:
    """The tokenizer has no eos token, which ends every response: name its folder and how to give it one."""
    source = getattr(tokenizer, "name_or_path", "") or ""
    where = f"the tokenizer of {source!r}" if source else "the tokenizer"
    return (f"{where} has no eos token, and preflab ends every response with it (TRL does too). Give it one: add "
            "\"eos_token\" to its tokenizer_config.json, or tok.eos_token = '<the end token>'; "
            "tok.save_pretrained(folder), with the token the model was trained to stop on.")


def _cut_prompt(prompt_ids: list[int], settings: _Settings, bos: int | None, report: TokenizeReport) -> list[int]:
    """A prompt longer than max_prompt_length keeps its start (truncation_mode keep_start) or its end (keep_end or
    unset; a leading bos is kept), counted in prompt_truncated. TRL 1.16 has no max_prompt_length (TRL 0.x's)."""
    limit = settings.max_prompt_length
    if limit is None or len(prompt_ids) <= limit:
        return prompt_ids
    report.prompt_truncated += 1
    if settings.truncation_mode == "keep_start":
        return prompt_ids[:limit]
    if bos is not None and prompt_ids[:1] == [bos] and limit >= 2:
        return prompt_ids[:1] + prompt_ids[len(prompt_ids) - (limit - 1):]
    return prompt_ids[len(prompt_ids) - limit:]


def _keep_end(prompt_ids: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """TRL 1.16's keep_end on one sequence: (prompt_ids + response)[-max_length:] (DataCollatorForPreference), split
    back into (prompt, response). When the response alone is longer, the sequence is the end of the response and its
    first token becomes the prompt: TRL scores no token at position 0 (labels are input_ids[1:]), so the same tokens
    are scored."""
    cut = len(prompt_ids) + len(response) - max_length
    if cut <= 0:
        return prompt_ids, response
    if cut < len(prompt_ids):
        return prompt_ids[cut:], response
    tail = response[cut - len(prompt_ids):]
    return tail[:1], tail[1:]


def _no_room_hint(settings: _Settings) -> str:
    """What to do about a prompt that fills max_length. With max_prompt_length set, the prompt was already cut to it,
    so max_prompt_length is not below max_length: the advice to set it would be no advice."""
    if settings.max_prompt_length is not None:
        return (f"max_prompt_length={settings.max_prompt_length} is not below max_length={settings.max_length}, so "
                "a prompt cut to it can still fill every position: set max_prompt_length below max_length (a "
                "response keeps max_length - max_prompt_length tokens at least), raise max_length, or use "
                "truncation_mode: keep_end (which cuts the prompt's start).")
    return ("Shorten the prompt, raise max_length, set max_prompt_length, or use truncation_mode: keep_end (which "
            "cuts the prompt's start).")


def _truncate(prompt_ids: list[int], responses: list[list[int]], settings: _Settings, bos: int | None,
              report: TokenizeReport, fields: list[str], prompt_field: str = "prompt", before: list | None = None):
    """Apply max_prompt_length (`_cut_prompt`), max_completion_length (each response keeps its start, as TRL 0.x
    did), then max_length on each sequence prompt + response as TRL 1.16's DataCollatorForPreference: keep_start (or
    unset) keeps its start (the prompt whole, each response cut to the room left; a prompt with no room is a bad
    row, which TRL drops), keep_end keeps its end (`_keep_end`: the prompt's start is cut, per sequence, so the
    responses of one row may follow different parts of the prompt). Returns (the prompt after max_prompt_length,
    the prompt ids before each response, the responses); truncations are counted (a row counts once in
    prompt_truncated and in response_truncated). `before`, when given, receives (prompt, responses) as they are
    before the max_length cut (KTO cuts its mismatched sequences from them: `KLCut`)."""
    uncut = len(prompt_ids)
    prompt_ids = _cut_prompt(prompt_ids, settings, bos, report)
    cut = False
    if settings.max_completion_length is not None and any(len(ids) > settings.max_completion_length
                                                          for ids in responses):
        responses = [ids[:settings.max_completion_length] for ids in responses]
        cut = True
    if before is not None:
        before[:] = [prompt_ids, responses]
    prompts = [prompt_ids] * len(responses)
    if settings.max_length is not None and settings.truncation_mode == "keep_end" and responses:
        sides = [_keep_end(prompt_ids, ids, settings.max_length) for ids in responses]
        prompts = [p for p, _ in sides]
        if len(prompt_ids) == uncut and any(len(p) < len(prompt_ids) for p in prompts):
            report.prompt_truncated += 1
        cut = cut or any(len(r) < len(ids) for (_, r), ids in zip(sides, responses))
        responses = [r for _, r in sides]
    elif settings.max_length is not None:
        room = settings.max_length - len(prompt_ids)
        if room < 1:
            raise RowProblem("prompt_fills_max_length", prompt_field, f"the prompt is {len(prompt_ids)} tokens, which "
                             f"leaves no room for a response within max_length={settings.max_length}",
                             _no_room_hint(settings))
        if any(len(ids) > room for ids in responses):
            cut = True
            responses = [ids[:room] for ids in responses]
    report.response_truncated += cut
    for ids, name in zip(responses, fields):
        if not ids:
            raise RowProblem("empty_response_tokens", name, "the response has no tokens", "Fix the response.")
    return prompt_ids, prompts, responses


def _tokenize_sides(tokenizer, prompt: Text, responses: list[Text], fields: list[str], extras: dict,
                    settings: _Settings, report: TokenizeReport, prompt_field: str = "prompt",
                    before: list | None = None, uncut: list | None = None, full: list | None = None):
    """(prompt ids of each response, response ids): truncation_mode keep_end may cut the prompt differently before
    each response (`_truncate`); otherwise every response follows the same prompt. `uncut`, when given, receives
    each response's token count before any cut (eos included), which per-token columns must match; `full` the
    response ids themselves before any cut (RRPO's derived phrase ids are checked against them)."""
    _check_no_special(settings, prompt, prompt_field, response=False)
    for response, name in zip(responses, fields):
        _check_no_special(settings, response, name, response=True)
    prompt_text, texts, is_chat, whole = _texts(tokenizer, prompt, responses, fields, extras, prompt_field)
    split = split_common_tokens(tokenizer, prompt_text, texts, fields) if whole else \
        split_exact(tokenizer, prompt_text, texts, fields, joint_only=settings.joint_only)
    prompt_ids, ids = _finish_ids(tokenizer, split, fields, is_chat, report, settings.bos)
    if uncut is not None:
        uncut[:] = [len(one) for one in ids]
    if full is not None:
        full[:] = [list(one) for one in ids]
    _, prompts, ids = _truncate(prompt_ids, ids, settings, _special_id(tokenizer, "bos"), report, fields,
                                prompt_field, before)
    for one in {tuple(p): p for p in prompts}.values():  # a prompt stored once is counted once
        report.prompt_tokens += len(one)
        report.max_prompt_tokens = max(report.max_prompt_tokens, len(one))
    for one in ids:
        report.response_tokens += len(one)
        report.max_response_tokens = max(report.max_response_tokens, len(one))
    return prompts, ids


def _tokenize_one(tokenizer, prompt: Text, responses: list[Text], fields: list[str], extras: dict,
                  settings: _Settings, report: TokenizeReport, prompt_field: str = "prompt",
                  before: list | None = None, uncut: list | None = None):
    """(prompt ids, response ids) for rows whose responses share one prompt (unpaired, MAPL intra sides, listwise
    and SFT rows). Several responses under keep_end with max_length would each keep a different part of the prompt,
    which one shared prompt cannot hold: refused (callers with several responses refuse that mode up front)."""
    prompts, ids = _tokenize_sides(tokenizer, prompt, responses, fields, extras, settings, report, prompt_field,
                                   before, uncut)
    if any(p != prompts[0] for p in prompts[1:]):
        raise ConfigError(f"truncation_mode=keep_end with max_length={settings.max_length} cuts the prompt before "
                          f"each of {len(prompts)} responses differently (TRL 1.16 cuts each sequence's start), and "
                          "these responses share one prompt. Use truncation_mode: keep_start, or max_prompt_length "
                          "with max_length large enough for every response.")
    return (prompts[0] if prompts else []), ids


def _make_pair(ex: PairExample, tokenizer, settings: _Settings, report: TokenizeReport) -> TokenizedPair:
    if ex.rejected_prompt is not None:
        return _make_intra_pair(ex, tokenizer, settings, report)
    uncut: list = []
    full: list = []
    (prompt_ids, rejected_prompt), (chosen, rejected) = _tokenize_sides(
        tokenizer, ex.prompt, [ex.chosen, ex.rejected], ["chosen", "rejected"], ex.extras, settings, report,
        uncut=uncut, full=full)
    if (prompt_ids, chosen) == (rejected_prompt, rejected):
        raise RowProblem("identical_after_tokenization", "rejected", "the chosen and rejected token ids are "
                         "identical (after truncation)", "Raise max_length or drop the row.")
    spans = {side: kept_span(n, len(ids), settings) for side, n, ids in zip(("chosen", "rejected"), uncut,
                                                                            (chosen, rejected))}
    derived = _derived_phrase_ids(ex, tokenizer, dict(zip(("chosen", "rejected"), full)), settings)
    extras, cuts = _token_extras({**ex.extras, **derived}, dict(zip(("chosen", "rejected"), uncut)), spans,
                                 settings)
    if rejected_prompt == prompt_ids:
        return with_derived(with_token_cuts(TokenizedPair(ex.row_id, prompt_ids, chosen, rejected, extras), cuts),
                            derived)
    return with_derived(with_token_cuts(TokenizedPair(ex.row_id, prompt_ids, chosen, rejected, extras,
                                                      rejected_prompt), cuts), derived).marked_cut_apart()


def _derived_phrase_ids(ex: PairExample, tokenizer, full: dict[str, list[int]], settings: _Settings) -> dict:
    """RRPO's phrase columns derived from the row's texts ({} unless the objective reads them and the row gives
    neither column): data.phrases.derived_phrase_columns, aligned with `full`, the uncut response ids. Derived ids
    are then checked and cut exactly as given ones (`_token_extras`); a pair with no differing phrase at all is the
    bad row `no_differing_phrase`, as a row whose given ids are all 0 is when it is read (data.rows)."""
    if not (settings.phrase_ids and settings.token_extras and derives_phrase_ids(ex.extras)):
        return {}
    derived = derived_phrase_columns(ex.chosen, ex.rejected, tokenizer, full)
    check_differing_phrase(*(derived[name] for name in PHRASE_COLUMNS), "the phrase ids derived from the chosen "
                           "and rejected texts are all 0: the two responses differ in no word (only in spacing), "
                           "so RRPO's reward term is 0 for this pair", "Drop the row, or give phrase columns.")
    return derived


def with_derived(item, derived: dict):
    """`item` remembering the phrase columns derived for it, uncut (data.cache stores them: a cached item is rebuilt
    from its example's extras, which lack them), as a plain attribute like `with_token_cuts`. Returns `item`."""
    if derived:
        item.derived_phrase_ids = derived
    return item


def _token_extras(extras: dict, uncut: dict[str, int], spans: dict[str, tuple[int, int]],
                  settings: _Settings) -> tuple[dict, dict | None]:
    """(the row's extras with each per-token column cut to the kept tokens, {side: [start, end]} of the sides cut
    or None): settings.token_extras checks every per-token column against the uncut response ({side: tokens}) and
    cuts it to `spans` (data.token_columns); settings.phrase_ids then refuses a pair whose kept RRPO phrase ids are
    all 0 (`no_differing_phrase`, data.phrases.check_differing_phrase, as the vision path does)."""
    if not settings.token_extras:
        return dict(extras), None
    check_token_columns(extras, uncut)
    cuts = {side: list(span) for side, span in spans.items() if tuple(span) != (0, uncut[side])}
    out = cut_token_columns(extras, cuts) if cuts else dict(extras)
    if settings.phrase_ids and cuts and all(name in out for name in PHRASE_COLUMNS):
        check_differing_phrase(*(out[name] for name in PHRASE_COLUMNS),
                               "after truncation every kept chosen_phrase_ids and rejected_phrase_ids value is 0 "
                               "(max_length / max_completion_length cut the differing tokens), so RRPO's reward "
                               "term is 0 for this pair",
                               "Raise max_length / max_completion_length, shorten the prompt, or drop the row.")
    return out, cuts or None


def with_token_cuts(item, cuts: dict | None):
    """`item` remembering {side: [start, end]} of its per-token columns' cut (data.cache stores it), as a plain
    attribute: not a dataclass field, so the fingerprint of an uncut item is what it was. Returns `item`."""
    if cuts:
        item.token_cuts = cuts
    return item


def _make_intra_pair(ex: PairExample, tokenizer, settings: _Settings, report: TokenizeReport) -> TokenizedPair:
    """A MAPL intra row: (x_w, y) and (x_l, y) tokenized as two sequences, each with its own boundary and truncation
    (so y's ids may differ at the boundary); when a limit cuts y, both sides keep the shorter side's count of its
    tokens (the two sums cover the same y); the two prompts must stay different after truncation."""
    uncut_c, uncut_r = [], []
    chosen_prompt, (chosen,) = _tokenize_one(tokenizer, ex.prompt, [ex.chosen], ["completion"], ex.extras, settings,
                                             report, "prompt_chosen", uncut=uncut_c)
    rejected_prompt, (rejected,) = _tokenize_one(tokenizer, ex.rejected_prompt, [ex.rejected], ["completion"],
                                                 ex.extras, settings, report, "prompt_rejected", uncut=uncut_r)
    spans = {"chosen": kept_span(uncut_c[0], len(chosen), settings),
             "rejected": kept_span(uncut_r[0], len(rejected), settings)}
    if chosen_prompt == rejected_prompt:
        raise RowProblem("identical_after_tokenization", "prompt_rejected", "the prompt_chosen and prompt_rejected "
                         "token ids are identical (after truncation)", "Raise max_prompt_length (the instructions "
                         "sit at the end of the prompt: keep_start truncation cuts them) or drop the row.")
    if report.response_truncated and len(chosen) != len(rejected):  # the same tokens of y on both sides: S(y | x_w)
        keep = min(len(chosen), len(rejected))                      # and S(y | x_l) must sum over the same y
        chosen, rejected = chosen[:keep], rejected[:keep]
        spans = {side: (start, start + keep) for side, (start, _) in spans.items()}
    for name in ("prompt_truncated", "response_truncated", "boundary_merged", "boundary_shifted",
                 "eos_already_present"):  # `report` holds this row's counts: a row counts once, as a pair does
        setattr(report, name, min(getattr(report, name), 1))
    extras, cuts = _token_extras(ex.extras, {"chosen": uncut_c[0], "rejected": uncut_r[0]}, spans, settings)
    return with_token_cuts(TokenizedPair(ex.row_id, chosen_prompt, chosen, rejected, extras, rejected_prompt), cuts)


def _make_unpaired(ex: UnpairedExample, tokenizer, settings: _Settings, report: TokenizeReport) -> TokenizedUnpaired:
    before, uncut = [], []
    prompt_ids, (completion,) = _tokenize_one(tokenizer, ex.prompt, [ex.completion], ["completion"], ex.extras,
                                              settings, report, before=before, uncut=uncut)
    extras, cuts = _token_extras(ex.extras, {"completion": uncut[0]},
                                 {"completion": kept_span(uncut[0], len(completion), settings)}, settings)
    item = with_token_cuts(TokenizedUnpaired(ex.row_id, prompt_ids, completion, ex.label, extras), cuts)
    if settings.max_length is not None:
        item.kl_cut = KLCut(settings.max_length, settings.truncation_mode, before[0], before[1][0])
    return item


def _make_prompt(ex: PromptExample, tokenizer, settings: _Settings, report: TokenizeReport) -> TokenizedPrompt:
    bos = _special_id(tokenizer, "bos")
    _check_no_special(settings, ex.prompt, "prompt", response=False)
    if isinstance(ex.prompt, list):
        ids = encode(tokenizer, _render(tokenizer, ex.prompt, ex.extras, "prompt", generation=True))
    else:
        ids = encode(tokenizer, ex.prompt)
        if settings.bos is not None and ids[:1] != [settings.bos]:
            ids.insert(0, settings.bos)
    if not ids:
        raise RowProblem("empty_prompt_tokens", "prompt", "the prompt has no tokens", "Fix the prompt.")
    ids, _, _ = _truncate(ids, [], settings, bos, report, [])
    report.prompt_tokens += len(ids)
    report.max_prompt_tokens = max(report.max_prompt_tokens, len(ids))
    return TokenizedPrompt(ex.row_id, ids, dict(ex.extras))


def _add_counts(report: TokenizeReport, row: TokenizeReport) -> None:
    for name in ("prompt_truncated", "response_truncated", "boundary_merged", "boundary_shifted",
                 "eos_already_present", "prompt_tokens", "response_tokens"):
        setattr(report, name, getattr(report, name) + getattr(row, name))
    report.max_prompt_tokens = max(report.max_prompt_tokens, row.max_prompt_tokens)
    report.max_response_tokens = max(report.max_response_tokens, row.max_response_tokens)


MAKERS = {"pairs": _make_pair, "unpaired": _make_unpaired, "prompts": _make_prompt}


def tokenize_indexed(kind: str, examples, tokenizer, *, max_length: int | None = None,
                     max_prompt_length: int | None = None, truncation_mode: str | None = None,
                     on_bad_row: str = "error", source: str = "",
                     max_completion_length: int | None = None, joint_only: bool = False,
                     token_extras: bool = False, phrase_ids: bool = False) -> tuple[list, TokenizeReport, list[int]]:
    """The loop behind every `tokenize_*`: (items, report, index in `examples` of each item). kind is one of
    `MAKERS` ("pairs", "unpaired", "prompts")."""
    one = ExampleTokenizer(kind, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                           truncation_mode=truncation_mode, on_bad_row=on_bad_row, source=source,
                           max_completion_length=max_completion_length, joint_only=joint_only,
                           token_extras=token_extras, phrase_ids=phrase_ids)
    items, indices = [], []
    for index, example in enumerate(examples):
        item = one(example)
        if item is not None:
            items.append(item)
            indices.append(index)
    if kind == "unpaired":
        count_kl_truncated(items, one.report)
    one.report.check()
    return items, one.report, indices


class ExampleTokenizer:
    """Tokenizes examples one at a time into one `report`: `tok(example)` -> the tokenized item, or None for a bad
    example that on_bad_row says to skip (counted). Used by tokenize_indexed and by streaming.
    token_extras: per-token columns (`<side>_<name>` lists of numbers) are checked against the uncut response and cut
    with it (data.token_columns; a column of the wrong length is an error whatever on_bad_row says); phrase_ids
    (RRPO): a pair whose kept phrase ids are all 0 is the bad row `no_differing_phrase`."""

    def __init__(self, kind: str, tokenizer, *, max_length: int | None = None, max_prompt_length: int | None = None,
                 truncation_mode: str | None = None, on_bad_row: str = "error", source: str = "",
                 max_completion_length: int | None = None, joint_only: bool = False, token_extras: bool = False,
                 phrase_ids: bool = False):
        self.settings = _check_settings(max_length, max_prompt_length, truncation_mode, max_completion_length)
        self.settings.joint_only = joint_only
        self.settings.token_extras, self.settings.phrase_ids = token_extras, phrase_ids
        self.settings.specials = special_token_pattern(tokenizer)
        self.settings.eos_text = getattr(tokenizer, "eos_token", None)
        self.settings.bos = text_bos(tokenizer)
        if _special_id(tokenizer, "eos") is None:
            raise ConfigError(no_eos_message(tokenizer))
        self.make, self.tokenizer = MAKERS[kind], tokenizer
        self.report = TokenizeReport(source=source)
        self.policy = BadRowPolicy(on_bad_row, self.report)

    def __call__(self, example):
        self.report.total += 1
        row_counts = TokenizeReport()  # truncations etc. of this row, counted only if the row is kept
        try:
            item = self.make(example, self.tokenizer, self.settings, row_counts)
        except ColumnMismatch as problem:  # not a bad row: the data's tokenizer is not the run's
            file, line = place_of(example)
            raise row_error(problem, file or self.report.source, example.row_id, line, skippable=False) from None
        except RowProblem as problem:
            self.policy.handle_item(problem, example)
            return None
        self.report.kept += 1
        _add_counts(self.report, row_counts)
        return item


def _chunk_worker(kind: str, chunk: list, tokenizer, settings: dict):
    """One worker of tokenize_parallel: (result, None), or (None, (message, attributes)) of its first DataError
    (an exception's extra attributes do not survive pickling, so they travel separately)."""
    try:
        return tokenize_indexed(kind, chunk, tokenizer, **settings), None
    except DataError as err:
        return None, (str(err), dict(err.__dict__))


def tokenize_parallel(kind: str, examples, tokenizer, num_proc: int = 1, **settings):
    """`tokenize_indexed` over `num_proc` forked processes (TRL's dataset_num_proc): contiguous chunks, merged in
    order, so the items, the report and the first DataError are those of one process."""
    examples = list(examples)
    if num_proc <= 1 or len(examples) < 2 * num_proc:
        return tokenize_indexed(kind, examples, tokenizer, **settings)
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the Rust tokenizer's pool must not cross a fork
    bounds = [round(i * len(examples) / num_proc) for i in range(num_proc + 1)]
    with ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_chunk_worker, kind, examples[a:b], tokenizer, settings)
                   for a, b in zip(bounds, bounds[1:])]
        results = [f.result() for f in futures]
    items, indices = [], []
    report = TokenizeReport(source=settings.get("source", ""))
    for start, (result, error) in zip(bounds, results):
        if error is not None:
            err = DataError(error[0])
            err.__dict__.update(error[1])
            raise err
        chunk_items, chunk_report, chunk_indices = result
        items += chunk_items
        indices += [start + i for i in chunk_indices]
        report.total += chunk_report.total
        report.kept += chunk_report.kept
        for reason, count in chunk_report.skipped.items():
            report.skipped[reason] = report.skipped.get(reason, 0) + count
        report.skipped_examples = (report.skipped_examples + chunk_report.skipped_examples)[:MAX_SKIPPED_EXAMPLES]
        _add_counts(report, chunk_report)
    if kind == "unpaired":  # over every chunk's completions: a partner may come from another chunk
        count_kl_truncated(items, report)
    report.check()
    return items, report, indices


def tokenize_pairs(examples: list[PairExample], tokenizer, *, max_length: int | None = 1024,
                   max_prompt_length: int | None = None, truncation_mode: str | None = None,
                   on_bad_row: str = "error", source: str = "",
                   max_completion_length: int | None = None, joint_only: bool = False,
                   token_extras: bool = False, phrase_ids: bool = False) -> tuple[list[TokenizedPair], TokenizeReport]:
    """Tokenize pairs: prompt_ids [P], chosen_ids [C], rejected_ids [R] with P + C <= max_length and
    P + R <= max_length (None: no limit). `source` names the file in messages (pass `DataReport.source`).
    joint_only: prompt + response ids are the joint tokenization of the text (reward models; `split_exact`).
    token_extras / phrase_ids: per-token columns cut with their response; RRPO's check (`ExampleTokenizer`)."""
    items, report, _ = tokenize_indexed("pairs", examples, tokenizer, max_length=max_length,
                                        max_prompt_length=max_prompt_length, truncation_mode=truncation_mode,
                                        on_bad_row=on_bad_row, source=source,
                                        max_completion_length=max_completion_length, joint_only=joint_only,
                                        token_extras=token_extras, phrase_ids=phrase_ids)
    return items, report


def tokenize_unpaired(examples: list[UnpairedExample], tokenizer, *, max_length: int | None = 1024,
                      max_prompt_length: int | None = None, truncation_mode: str | None = None,
                      on_bad_row: str = "error", source: str = "",
                      max_completion_length: int | None = None, joint_only: bool = False,
                      token_extras: bool = False) -> tuple[list[TokenizedUnpaired], TokenizeReport]:
    """Tokenize unpaired (KTO) examples: prompt_ids [P], completion_ids [C] with P + C <= max_length.
    joint_only: as in `tokenize_pairs` (reward models); token_extras: `completion_<name>` per-token columns are cut
    with the completion (`ExampleTokenizer`)."""
    items, report, _ = tokenize_indexed("unpaired", examples, tokenizer, max_length=max_length,
                                        max_prompt_length=max_prompt_length, truncation_mode=truncation_mode,
                                        on_bad_row=on_bad_row, source=source,
                                        max_completion_length=max_completion_length, joint_only=joint_only,
                                        token_extras=token_extras)
    return items, report


def tokenize_prompts(examples: list[PromptExample], tokenizer, *, max_prompt_length: int | None = None,
                     truncation_mode: str | None = None, on_bad_row: str = "error",
                     source: str = "") -> tuple[list[TokenizedPrompt], TokenizeReport]:
    """Tokenize prompts for generation: prompt_ids [P <= max_prompt_length]; chat rows end with the
    generation prompt, text rows start with bos."""
    items, report, _ = tokenize_indexed("prompts", examples, tokenizer, max_prompt_length=max_prompt_length,
                                        truncation_mode=truncation_mode, on_bad_row=on_bad_row, source=source)
    return items, report
