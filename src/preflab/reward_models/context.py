"""Context-aware preference modeling: rows carry a context (criterion, scenario, user profile) that conditions
the score.

Pitis, S., Xiao, Z., Le Roux, N., Sordoni, A. (2024), "Improving Context-Aware Preference Modeling for Language
Models", arXiv:2407.14916 (NeurIPS 2024). The two-step decomposition

    P(y > y' | x) = sum_c P(c | x) P(y > y' | x, c),      P(y > y' | x, c) = sigma(r(x, c, y) - r(x, c, y'))

is served by a BT reward model whose input holds the context: rows {prompt, context, chosen, rejected} are rendered
with a fixed template (stored in the model config) and trained with the BT loss of `preflab.reward_models.bt`; rows
without a context keep their prompt as is, so the model also works when c is empty. RPR-style rows
{prompt, response_a, response_b, criteria_x, criteria_y} expand to two rows with opposite labels.

Metrics: accuracy per context, and reversal accuracy: over groups of rows with the same prompt and response pair
but different contexts and opposite labels, the fraction of groups whose rows are all right. A context-blind model
scores the pair the same way under every context, so its reversal accuracy is exactly 0.

Deviation from the paper: the paper's exact template and training mixture are not known here (library choice:
"Context: {context}" before the prompt, or a system message for chat prompts).
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict

import torch
from torch import Tensor

from preflab.data.examples import PairExample, Text

CONTEXT_FIELD = "context"
CONTEXT_TEMPLATE = "Context: {context}\n\n{prompt}"


def render_context(prompt: Text, context: str | None, template: str = CONTEXT_TEMPLATE) -> Text:
    """The prompt with the context written in: text via `template`, chat prompts via the system message."""
    if not context:
        return prompt
    if isinstance(prompt, str):
        return template.format(context=context, prompt=prompt)
    head = template.split("{prompt}")[0].format(context=context).rstrip()
    if prompt and prompt[0].get("role") == "system":
        return [{**prompt[0], "content": head + "\n\n" + prompt[0]["content"]}, *prompt[1:]]
    return [{"role": "system", "content": head}, *prompt]


def with_context(examples: list[PairExample], template: str = CONTEXT_TEMPLATE,
                 field: str = CONTEXT_FIELD) -> list[PairExample]:
    """Examples whose prompts hold their `extras[field]` context (examples without one are unchanged)."""
    return [dataclasses.replace(ex, prompt=render_context(ex.prompt, ex.extras.get(field), template),
                                rejected_prompt=None if ex.rejected_prompt is None else  # MAPL intra rows: both
                                render_context(ex.rejected_prompt, ex.extras.get(field), template))
            for ex in examples]


def has_context(examples, field: str = CONTEXT_FIELD) -> bool:
    return any(ex.extras.get(field) for ex in examples)


def expand_rpr_rows(rows: list[dict]) -> list[dict]:
    """RPR rows {prompt, response_a, response_b, criteria_x, criteria_y} -> 2 pairwise rows each:
    (criteria_x: a > b) and (criteria_y: b > a). Other columns are copied; both rows get the RPR row's `parent_id`
    (its index unless it has one), so `eval_fraction` holds out the two together: the same pair under the other
    context must not sit in training (models-and-loops.md #39)."""
    out = []
    for index, row in enumerate(rows):
        rest = {k: v for k, v in row.items() if k not in ("response_a", "response_b", "criteria_x", "criteria_y")}
        rest.setdefault("parent_id", index)
        out.append({**rest, "context": row["criteria_x"], "chosen": row["response_a"], "rejected": row["response_b"]})
        out.append({**rest, "context": row["criteria_y"], "chosen": row["response_b"], "rejected": row["response_a"]})
    return out


def marginal_preference(p_context: Tensor, p_given_context: Tensor) -> Tensor:
    """P(y > y' | x) = sum_c P(c | x) P(y > y' | x, c); inputs [..., C], P(c | x) summing to 1 over C."""
    return (p_context * p_given_context).sum(-1)


def reversal_groups(examples) -> list[list[int]]:
    """Indices of rows sharing a prompt and an unordered response pair, with at least two different winners."""
    groups: dict = defaultdict(list)
    for i, ex in enumerate(examples):
        key = (repr(ex.prompt), frozenset((repr(ex.chosen), repr(ex.rejected))))
        groups[key].append(i)
    return [idx for idx in groups.values()
            if len({repr(examples[i].chosen) for i in idx}) > 1]


def reversal_accuracy(examples, correct: Tensor) -> float | None:
    """Fraction of reversal groups whose rows are all right (None when the data has no reversal group).
    `examples` are the raw (context-free prompt) examples; correct: bool [N] aligned with them."""
    groups = reversal_groups(examples)
    if not groups:
        return None
    return float(torch.tensor([bool(correct[idx].all()) for idx in groups]).float().mean())
