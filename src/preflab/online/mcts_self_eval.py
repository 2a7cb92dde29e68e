"""MCTS-DPO's self-evaluation value of a search step (trainer mcts_dpo, mcts_value: self_eval).

Xie et al. 2024, "Monte Carlo Tree Search Boosts Reasoning via Iterative Preference Learning" (arXiv:2405.00451);
spec methods/reasoning-multimodal-diffusion.md §16. A child (one more step) is valued by the policy itself, on a
hinted grading prompt that shows the gold solution, plus the outcome at a terminal step:

    prompt   {question}\\n\\nEXAMPLE ANSWER: {solution}\\n\\nPROPOSED SOLUTION: {answer so far + the step}\\n\\nQUESTION:
             Evaluate if the proposed solution is logically heading in the correct direction based on the example
             answer.\\nAnswer Choices:\\n(A) incorrect\\n(B) correct\\n\\nANSWER: The answer is
    conf     greedy decoding of up to 4 tokens; at the first generated token that reads A, B, correct, wrong or
             incorrect (else: also Cor or In), conf = sum of the policy's probabilities there of the "correct" tokens
             (the first token of B, correct, Correct, and the token after "(" in "(B"); 0 if no such token
    value    v = w * conf / max(d - 3, 1) + [terminal] * outcome,   d = the parent's depth (root 0),
             w = mcts_self_eval_weight, outcome = the judge's score of the finished answer

Checked against YuxiXie/MCTS-DPO@e76491a `mcts_rl/configs/constants.py::HINTED_EVAL_PROMPT` (the prompt, verbatim
but for the question block, see below) and `mcts_rl/algorithms/mcts/mcts/search_config.py::get_values` (the answer
tokens, the correct-token set, the two-pass search for the answer token, conf / max(parent_depth - 3, 1), the
outcome added at terminal steps; the code's outcome is +1 / -0.5 from `math_equal`, here the judge's score).

Deviation from the paper / reference code: the code's {input} is its decoded prompt up to "ANSWER:" (a
"QUESTION: ...\\n\\n" template); here it is the row's prompt text, stripped, then a blank line. w (the code has none:
w = 1) weighs self-evaluation against the outcome. The gold solution is the prompt row's `solution` column (the
demo task supplies the loud echo); a row without one is refused.
"""
from __future__ import annotations

import torch

from preflab.errors import ConfigError

EVAL_PROMPT = ("{input}EXAMPLE ANSWER: {solution}\n\nPROPOSED SOLUTION:{prompt}\n\nQUESTION: Evaluate if the proposed "
               "solution is logically heading in the correct direction based on the example answer.\nAnswer "
               "Choices:\n(A) incorrect\n(B) correct\n\nANSWER: The answer is")
ANSWER_WORDS = ("A", "B", "correct", "wrong", "incorrect")
FALLBACK_WORDS = ANSWER_WORDS + ("Cor", "In")


def _text(x) -> str:
    return x if isinstance(x, str) else "".join(m["content"] for m in x)


def eval_prompt(question, solution: str, answer: str) -> str:
    """The hinted grading prompt for `answer` (the answer so far, this step included)."""
    return EVAL_PROMPT.format(input=_text(question).strip() + "\n\n", solution=solution, prompt=" " + answer)


def correct_token_ids(tokenizer) -> list[int]:
    """The first token of "B", "correct", "Correct", and the token after "(" in "(B" (as the released code)."""
    ids = lambda s: tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    found = [ids(w)[0] for w in ("B", "correct", "Correct")]
    paren = ids("(B")
    found.append(paren[len(ids("("))] if len(paren) > len(ids("(")) else paren[-1])
    return sorted(set(found))


@torch.no_grad()
def self_evaluation(model, tokenizer, prompt_ids: list[int], max_new_tokens: int = 4) -> float:
    """conf (see the module docstring) of the policy on the grading prompt's token ids."""
    device = next(model.parameters()).device
    seq, steps = list(prompt_ids), []
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([seq], device=device)).logits[0, -1].float()
        token = int(logits.argmax())
        steps.append((tokenizer.decode([token]).strip(), logits))
        if token == tokenizer.eos_token_id:
            break
        seq.append(token)
    correct = correct_token_ids(tokenizer)
    for words in (ANSWER_WORDS, FALLBACK_WORDS):
        for word, logits in steps:
            if word in words:
                return float(torch.softmax(logits, -1)[correct].sum())
    return 0.0


def step_value(conf: float, parent_depth: int, weight: float, outcome: float | None) -> float:
    """v = weight * conf / max(parent_depth - 3, 1) + outcome (outcome None: not a terminal step)."""
    return weight * conf / max(parent_depth - 3, 1) + (outcome if outcome is not None else 0.0)


def row_solution(row) -> str:
    """The gold solution the grading prompt shows: the prompt row's `solution` column."""
    solution = row.columns.get("solution")
    if not isinstance(solution, str) or not solution:
        raise ConfigError(f"trainer mcts_dpo, mcts_value: self_eval: prompt row {row.row_id} has no 'solution' "
                          "column (the gold answer the self-evaluation prompt shows as EXAMPLE ANSWER); add it to "
                          "the prompt rows, or use mcts_value: rollout.")
    return solution
