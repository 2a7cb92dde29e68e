"""The pieces the online loops share around sampling: prompts -> tokenized prompt rows (prepare_prompts, PromptRow),
sampling from the policy's full distribution (full_distribution), the pad id and the decoding of a completion.

    rows = prepare_prompts(["echo: sun cat\n", ...], tokenizer)          # or rows {"prompt": ..., other columns}
    with full_distribution(policy): ...                                  # generate with top-k off

transformers' `generate` keeps only the top 50 tokens unless told otherwise; with top-k off a completion is a draw
from pi(. | x) at the given temperature, as GRPO's importance ratios and RSO's rejection sampler assume. The online
run (preflab.online.run) samples through its generator (preflab.online.generator) and computes TRL's completion
metrics itself (length_metrics); this module held a second sampler and metrics function that no loop called.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Sequence

from preflab.data.examples import PromptExample
from preflab.data.tokenize import tokenize_prompts
from preflab.errors import ConfigError
from preflab.scoring.lm import unwrap


@dataclass
class PromptRow:
    """One prompt: its text (str or messages), token ids [P] and the row's other columns."""

    row_id: int
    prompt: Any
    prompt_ids: list[int]
    columns: dict = field(default_factory=dict)


def prepare_prompts(prompts: Sequence[Any], tokenizer, max_prompt_length: int | None = None,
                    report_to: dict | None = None, truncation_mode: str = "keep_end",
                    chat_template_kwargs: dict | None = None, tools: list | None = None) -> list[PromptRow]:
    """Prompt rows from strings, message lists, or dicts with a "prompt" key (other keys become columns).
    `report_to` (a run's data report) receives the tokenization counts as "prompt_tokenize" (prompts cut to
    max_prompt_length, keeping their end or their start as truncation_mode says, are counted there).
    chat_template_kwargs (TRL GRPOConfig's): arguments of the chat template of every conversational prompt, as TRL's
    apply_chat_template(prompt, add_generation_prompt=True, **chat_template_kwargs); a row's own
    chat_template_kwargs column adds to them (its keys win). They reach the template only: the rows' columns (which
    reward functions receive) are the file's. tools (a run's tool functions, preflab.online.tool_calling): rendered by
    the chat template of every prompt, as TRL's apply_chat_template(prompt, tools=...); every prompt must then be a
    conversation, and a row with a tools column of its own is refused (one set of tools per run, as TRL's). tools may
    also be a function of the row (its PromptExample) giving that row's tools: environment_factory's per-environment
    tools (preflab.online.environments), where a row shows its own environment's tools only."""
    examples = []
    for i, item in enumerate(prompts):
        if isinstance(item, dict):
            if "prompt" not in item:
                raise ConfigError(f"prompt row {i} has no 'prompt' field (it has {sorted(item)}).")
            extras = {k: v for k, v in item.items() if k != "prompt"}
            examples.append(PromptExample(i, item["prompt"], extras))
        else:
            examples.append(PromptExample(i, item, {}))
    if not examples:
        raise ConfigError("online loops need at least one prompt.")
    rendered = [_with_template_kwargs(ex, chat_template_kwargs) for ex in examples] if chat_template_kwargs else \
        examples
    if tools:
        rendered = [_with_tools(ex, tools(ex) if callable(tools) else tools) for ex in rendered]
    items, report = tokenize_prompts(rendered, tokenizer, max_prompt_length=max_prompt_length,
                                     truncation_mode=truncation_mode)
    if report_to is not None:
        report_to["prompt_tokenize"] = report.to_dict()
    return [PromptRow(it.row_id, ex.prompt, it.prompt_ids, dict(ex.extras)) for it, ex in zip(items, examples)]


def _with_tools(ex: PromptExample, tools: list) -> PromptExample:
    """`ex` with the run's tools for its chat template (ConfigError for a text prompt or a row with its own)."""
    if not isinstance(ex.prompt, list):
        raise ConfigError(f"tools: prompt row {ex.row_id} is text ({str(ex.prompt)[:60]!r}); tool calling renders the "
                          "tools and their results with the chat template, so every prompt must be a conversation "
                          "(a list of messages), as TRL's GRPOTrainer needs.")
    if ex.extras.get("tools") is not None:
        raise ConfigError(f"tools: prompt row {ex.row_id} has a 'tools' column of its own; a run with tools: renders "
                          "the same tools (the ones it can call) in every prompt. Remove the column or the option.")
    return PromptExample(ex.row_id, ex.prompt, {**ex.extras, "tools": list(tools)})


def _with_template_kwargs(ex: PromptExample, kwargs: dict) -> PromptExample:
    """`ex` with `kwargs` under its own chat_template_kwargs column (the row's keys win). A row whose column is not a
    mapping (nor its JSON text) is left as it is, so the tokenizer reports it as that row's bad value."""
    from preflab.data.report import RowProblem
    from preflab.data.tokenize import chat_template_options

    try:
        own = chat_template_options({"chat_template_kwargs": ex.extras.get("chat_template_kwargs")})[1]
    except RowProblem:
        return ex
    return PromptExample(ex.row_id, ex.prompt, {**ex.extras, "chat_template_kwargs": {**kwargs, **own}})


@contextlib.contextmanager
def full_distribution(model):
    """Sample from the whole softmax: top_k = 0 on the model's generation config for the duration."""
    import transformers

    config = unwrap(model).generation_config
    old_top_k, verbosity = config.top_k, transformers.logging.get_verbosity()
    config.top_k = 0
    transformers.logging.set_verbosity_error()  # "top_k=0 may be ignored": it is not, it turns top-k off
    try:
        yield
    finally:
        config.top_k = old_top_k
        transformers.logging.set_verbosity(verbosity)


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def decode(tokenizer, ids: list[int], chat: bool) -> Any:
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return [{"role": "assistant", "content": text}] if chat else text
