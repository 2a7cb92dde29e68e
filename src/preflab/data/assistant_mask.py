"""assistant_only_loss (TRL 1.16 SFTConfig): the loss of a conversation on the assistant's tokens only.

The chat template says which rendered characters the assistant wrote by wrapping them in `{% generation %}` ...
`{% endgeneration %}`; transformers' `apply_chat_template(..., return_assistant_tokens_mask=True)` turns those spans
into a 0/1 mask over the tokens (a token is 1 when it overlaps a span). TRL 1.16 (`SFTTrainer._prepare_dataset`)
sets the label of every token whose mask is 0 to -100, so the loss is the token mean of the NLL over the assistant
tokens of the whole batch. This module asks the template for that mask, as TRL does, and checks the template first:

- no markers: TRL 1.16 swaps in a training template of its own when the template is one of the ~30 it ships
  (trl/chat_templates/*_training.jinja, matched by exact text) and raises otherwise. preflab does not swap templates
  behind the user's back: it refuses, and names TRL's file for the template when TRL is installed and knows it.
- markers that leave the assistant's end-of-turn token out of the mask (the model never learns to stop): TRL warns
  (`is_chat_template_stop_token_trained`); preflab says the same as a note.
- a conversation whose mask has no 1 (no assistant turn, or a template whose markers are never reached): TRL raises
  for the whole dataset; preflab makes it a bad row (named by file and row; on_bad_row decides).
"""
from __future__ import annotations

import re
from pathlib import Path

from preflab.data.report import RowProblem
from preflab.errors import ConfigError

_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")  # TRL's has_generation_markers: {% generation %}, {%- ... -%}


def template_text(tokenizer) -> str | None:
    """The tokenizer's chat template (the `default` one of a template shipped as named variants), or None."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template or None


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and _MARKER.search(template) is not None


def _trl_training_template(tokenizer) -> str | None:
    """The file TRL 1.16 would swap this tokenizer's template for (a path), when TRL is installed and knows it."""
    try:
        import trl
        from trl.chat_template_utils import get_training_chat_template
    except ImportError:  # not installed (or another TRL): the message then describes TRL's rule in words
        return None
    try:
        patched = get_training_chat_template(tokenizer)
    except Exception:  # TRL raises for a template it cannot patch
        return None
    if not patched:
        return None
    for path in sorted((Path(trl.__file__).parent / "chat_templates").glob("*_training.jinja")):
        if path.read_text(encoding="utf-8") == patched:
            return str(path)
    return None


def check_assistant_template(tokenizer) -> str | None:
    """ConfigError unless the tokenizer's chat template marks the assistant's tokens; a note (str) when the marked
    span of an assistant turn does not end on an end-of-turn token (TRL 1.16's warning), else None."""
    name = getattr(tokenizer, "name_or_path", "") or ""
    where = f"the tokenizer of {name}" if name else "the tokenizer"
    template = template_text(tokenizer)
    if template is None:
        raise ConfigError(f"assistant_only_loss: true needs a chat template, and {where} has none. Save one whose "
                          "assistant turns are wrapped in {% generation %} ... {% endgeneration %} with the tokenizer, "
                          "or remove assistant_only_loss.")
    if not has_generation_markers(template):
        trl_file = _trl_training_template(tokenizer)
        swap = (f"TRL 1.16 would swap it for its training template {trl_file}; preflab does not swap templates: "
                "save that file as the tokenizer's chat template (tokenizer.chat_template = open(path).read(); "
                "tokenizer.save_pretrained(dir)) and point model_name_or_path at that dir."
                if trl_file else
                "TRL 1.16 swaps the templates of the families it knows (Qwen2.5/3, Llama 3, Gemma, Phi-3, ...) for "
                "the training templates in trl/chat_templates/*_training.jinja and raises for any other; preflab "
                "does not swap templates: save a template with the markers with the tokenizer "
                "(tokenizer.chat_template = ...; tokenizer.save_pretrained(dir)) and point model_name_or_path at "
                "that dir.")
        raise ConfigError(f"assistant_only_loss: true needs a chat template that wraps each assistant message (and "
                          f"its end-of-turn token) in {{% generation %}} ... {{% endgeneration %}}, and the chat "
                          f"template of {where} has no such markers. {swap} Or remove assistant_only_loss to train "
                          "on the whole conversation.")
    if getattr(tokenizer, "is_fast", True) is False:
        raise ConfigError(f"assistant_only_loss: true maps the template's {{% generation %}} spans to tokens by their "
                          f"character offsets, which only a fast (tokenizers-backed) tokenizer gives, and {where} is "
                          f"a {type(tokenizer).__name__}. Save the tokenizer as a fast one (tokenizer.json), or remove "
                          "assistant_only_loss.")
    return _stop_token_note(tokenizer, where)


def _stop_token_note(tokenizer, where: str) -> str | None:
    """TRL 1.16's is_chat_template_stop_token_trained: render user / assistant / user; the last non-blank masked token
    must be an added (special) token, e.g. <|im_end|>, or the end of the turn is never trained."""
    probe = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "dummy"},
             {"role": "user", "content": "dummy"}]
    try:
        out = tokenizer.apply_chat_template(probe, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    except Exception:  # TRL: a template that rejects the probe counts as not training the stop token
        ids, mask = [], []
    added = set(tokenizer.get_added_vocab().values())
    for token in reversed([t for t, m in zip(ids, mask) if m]):
        if tokenizer.decode([token]).strip():
            if token in added:
                return None
            break
    return (f"the chat template of {where} leaves the assistant's end-of-turn token out of the "
            "{% generation %} span, so with assistant_only_loss the model is not trained to stop (TRL 1.16 warns "
            "the same). Move the end-of-turn token inside {% generation %} ... {% endgeneration %}, or remove "
            "assistant_only_loss.")


def assistant_tokens(tokenizer, messages: list[dict], extras: dict, field_name: str) -> tuple[list[int], list[int]]:
    """(input_ids, assistant mask) of the rendered conversation, as TRL 1.16 tokenizes a conversational SFT row:
    apply_chat_template(tokenize=True, return_assistant_tokens_mask=True) with the row's tools and
    chat_template_kwargs. RowProblem when the template fails or marks no token of this conversation."""
    from preflab.data.tokenize import chat_template_options

    tools, kwargs = chat_template_options(extras)
    try:
        out = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True, **kwargs)
    except Exception as exc:  # a template may raise on purpose (e.g. "roles must alternate")
        raise RowProblem("chat_template_error", field_name, f"the chat template failed: {type(exc).__name__}: "
                         f"{exc}"[:500], "Fix the messages so the template accepts them.") from exc
    ids, mask = list(out["input_ids"]), [int(m) for m in out["assistant_masks"]]
    if 1 not in mask:
        raise RowProblem("no_assistant_tokens", field_name, "with assistant_only_loss: true the chat template marks "
                         "no token of this conversation as the assistant's (no assistant message, or no "
                         "{% generation %} span reached)", "Give every row an assistant message, or remove "
                         "assistant_only_loss.")
    return ids, mask
