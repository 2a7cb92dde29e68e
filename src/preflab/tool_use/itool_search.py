"""iTool's data builders (seed #37, spec §37.3): perplexity-based deficiency selection, the MCTS over response steps
with the fast reward and a graded leaf reward, and the step-level preference pairs with their filters.

Zeng et al. 2025, "Boosting Tool Use of Large Language Models via Iterative Reinforced Fine-Tuning" (iTool);
official code zeng-yirong/iTool `mcts/main.py`, `mcts/mcts_vllm.py`, `mcts/mcts/utils.py` (read at 871eceb / de18af1).

    overlap(a, b)      = |W(a) ∩ W(b)| / min(|W(a)|, |W(b)|)        W = set of whitespace-separated words
    fast_reward(x, g)  = (+0.1 if x and g agree on containing ")]" else -0.1) + overlap(g, x) - 0.5   (0 if x blank)
    select(child)      = value / (visits + 1) + w * prior * sqrt(ln N_parent / (visits + 1))
    conf(P)            = (1 P(A) + 0.1 P(B) - 1 P(C) - 2 P(D)) / 4       (the self-evaluation's leaf reward)
    pair at a node with >= 2 children: chosen = max-value child, rejected = min-value child, kept iff
        value gap >= value_threshold (0.1), overlap(chosen, rejected) <= overlap_limit (0.95),
        chosen value >= accept_value (-0.3)

The search follows the official loop: descend by `select` while the node has MORE than num_actions children (so a
node is expanded twice before the search goes below it) and depth < max depth; expand num_actions samples, each cut
into steps (pieces ending in ". ", ", ", "=", "(", grouped step_limit at a time; below `depth` the rest is one step),
each step a chain node valued by the fast reward, its prior exp(mean token log-prob); simulate at most
max_simulation_steps by highest value; grade; add the reward and a visit to the leaf and every ancestor.

Deviations from the official code (each a preflab choice):
- steps are joined exactly (the official joins pieces and appends actions with spaces), so a pair's prompt plus
  its chosen step is token for token what the policy generated; pairs carry token ids, a non-final step gets no
  end-of-sequence token (the official chat template closes every step with <|eot_id|>);
- the leaf grader sees the whole response so far (path plus simulated continuation), not the continuation alone,
  and it is a rule grader (`preflab.tool_use.itool_task.rule_grade`) turned into P = one-hot(letter), as the spec's
  CPU demo allows; `self_eval_confidence` is the official formula for a real self-evaluation;
- a simulation that reaches a childless unfinished node samples one full continuation and stops (the official loop
  samples again from the same state and concatenates);
- `ln N_parent` is taken as 0 when N_parent < 1 (the official code would take log 0).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

STEP_PATTERN = re.compile(r"(\. |, |=|\()")
LETTER_WEIGHTS = {"A": 1.0, "B": 0.1, "C": -1.0, "D": -2.0}


# ---------------------------------------------------------------------------------------------- rewards
def word_overlap(a: str, b: str) -> float:
    """|W(a) ∩ W(b)| / min(|W(a)|, |W(b)|) over whitespace words; 0.0 when either has no word."""
    wa, wb = set(a.split()), set(b.split())
    if not wa or not wb:
        return 0.0
    return len(wa & wb) / min(len(wa), len(wb))


def fast_reward(action: str, gold: str) -> float:
    """The expansion's initial value of a step (official get_reward(fast_reward=True) with a gold answer)."""
    if not action.strip():
        return 0.0
    agree = (")]" in action) == (")]" in gold)
    return (0.1 if agree else -0.1) + word_overlap(gold, action) - 0.5


def self_eval_confidence(p_a: float, p_b: float, p_c: float, p_d: float) -> float:
    """(1 P(A) + 0.1 P(B) - 1 P(C) - 2 P(D)) / 4: iTool's leaf reward from the grading prompt's option probabilities."""
    return (LETTER_WEIGHTS["A"] * p_a + LETTER_WEIGHTS["B"] * p_b + LETTER_WEIGHTS["C"] * p_c
            + LETTER_WEIGHTS["D"] * p_d) / 4


def letter_confidence(letter: str) -> float:
    """conf of a rule grader's verdict: P = one-hot(letter)."""
    return self_eval_confidence(*(1.0 if x == letter else 0.0 for x in "ABCD"))


# ---------------------------------------------------------------------------------------------- selection
def select_deficient(items: list[dict], perplexities: list[float], ratio: float = 0.3) -> list[int]:
    """Indices of the top `ratio` highest-perplexity items of each group (gold contains ")" / does not), each group
    sorted by perplexity descending with ties kept in input order, int(len(group) * ratio) per group; tool-call
    group first (official utils.active_select)."""
    if len(items) != len(perplexities):
        raise ValueError(f"{len(items)} items but {len(perplexities)} perplexities")
    tool = [i for i, it in enumerate(items) if ")" in it["gold"]]
    plain = [i for i, it in enumerate(items) if ")" not in it["gold"]]
    chosen = []
    for group in (tool, plain):
        ranked = sorted(group, key=lambda i: -perplexities[i])  # sorted() is stable: ties keep input order
        chosen += ranked[:int(len(group) * ratio)]
    return chosen


# ---------------------------------------------------------------------------------------------- steps
def split_steps(text: str, step_limit: int) -> list[str]:
    """Pieces ending in ". ", ", ", "=" or "(" (the delimiter stays with the piece before), grouped step_limit at a
    time and joined exactly: "".join(split_steps(t, k)) == t."""
    parts = STEP_PATTERN.split(text)
    pieces = [parts[i] + (parts[i + 1] if i + 1 < len(parts) else "") for i in range(0, len(parts), 2)]
    pieces = [p for p in pieces if p]
    return ["".join(pieces[i:i + step_limit]) for i in range(0, len(pieces), step_limit)]


@dataclass
class Sample:
    """One sampled continuation: token ids (eos included when it stopped), their log-probs, decoded text per token."""

    ids: list[int]
    logps: list[float]
    stopped: bool          # ended with the end-of-sequence token
    token_texts: list[str]  # decoded text of each id ("" for special tokens)

    @property
    def text(self) -> str:
        return "".join(self.token_texts)


def sample_steps(sample: Sample, step_limit: int) -> list[tuple[list[int], str, float]]:
    """(token ids, their text, prior) per step of split_steps(sample.text): a step takes the tokens whose text ends
    inside it (a token across a boundary goes to the next step), the prior is exp(mean token log-prob) of those
    tokens (0.1 when none, as the official code); trailing special tokens (eos) join the last step."""
    steps = split_steps(sample.text, step_limit)
    out, tok, end, consumed = [], 0, 0, 0
    for k, step in enumerate(steps):
        end += len(step)
        first = tok
        while tok < len(sample.ids) and (consumed + len(sample.token_texts[tok]) <= end or k == len(steps) - 1):
            consumed += len(sample.token_texts[tok])
            tok += 1
        logps = sample.logps[first:tok]
        prior = math.exp(sum(logps) / len(logps)) if logps else 0.1
        out.append((sample.ids[first:tok], "".join(sample.token_texts[first:tok]), prior))
    return out


# ---------------------------------------------------------------------------------------------- the tree
@dataclass(eq=False)
class Node:
    step_ids: list[int] = field(default_factory=list)
    text: str = ""
    prior: float = 0.0
    parent: Node | None = None
    value: float = 0.0
    visits: int = 0
    stopped: bool = False   # the sample ended (eos) with this step
    children: list = field(default_factory=list)

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    def path(self) -> list[Node]:
        """Nodes from the root's first child down to this one."""
        nodes, node = [], self
        while node.parent is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]

    def response_ids(self) -> list[int]:
        return [t for n in self.path() for t in n.step_ids]

    def response_text(self) -> str:
        return "".join(n.text for n in self.path())


def selection_score(child: Node, parent_visits: int, exploration_weight: float) -> float:
    """value/(visits+1) + w * prior * sqrt(ln N_parent / (visits+1)) (ln N_parent = 0 for N_parent < 1)."""
    log_n = math.log(parent_visits) if parent_visits >= 1 else 0.0
    return child.value / (child.visits + 1) + exploration_weight * child.prior * math.sqrt(log_n / (child.visits + 1))


def best_child(node: Node, exploration_weight: float) -> Node:
    """The child with the highest selection score (the first one on ties)."""
    scores = [selection_score(c, node.visits, exploration_weight) for c in node.children]
    return node.children[scores.index(max(scores))]


def backpropagate(node: Node, reward: float) -> None:
    """Add `reward` to the value and one visit to `node` and every ancestor up to the root."""
    while node is not None:
        node.visits += 1
        node.value += reward
        node = node.parent


@dataclass(frozen=True)
class SampleRequest:
    """n continuations of prompt_ids + response_ids, at most max_new_tokens each; key seeds them."""

    prompt_ids: tuple
    response_ids: tuple
    n: int
    max_new_tokens: int
    key: tuple


class Sampler(Protocol):
    def sample(self, request: SampleRequest) -> list[Sample]: ...


@dataclass
class SearchConfig:
    num_actions: int = 3
    mcts_iters: int = 5
    depth: int = 3
    step_limit: int = 2
    max_simulation_steps: int = 2
    exploration_weight: float = 1.0
    max_new_tokens: int = 48       # the response's token budget (a node at the budget is terminal)


class StepSearch:
    """The MCTS of one prompt. `steps()` is the search as a generator: it yields a SampleRequest whenever it needs
    the policy and is sent back the samples, so many searches can share one batched generation (run_searches);
    `run(sampler)` drives one search alone. `grader(text, finished)` returns the leaf reward."""

    def __init__(self, prompt_ids: list[int], gold: str, grader: Callable[[str, bool], float], cfg: SearchConfig,
                 key: tuple = ()):
        self.prompt_ids, self.gold, self.grader, self.cfg, self.key = tuple(prompt_ids), gold, grader, cfg, key
        self.root = Node()
        self.calls = 0
        self.skipped_iterations = 0

    def terminal(self, node: Node) -> bool:
        return node.stopped or len(node.response_ids()) >= self.cfg.max_new_tokens

    def _request(self, node: Node, n: int) -> SampleRequest:
        self.calls += 1
        response = node.response_ids()
        return SampleRequest(self.prompt_ids, tuple(response), n, self.cfg.max_new_tokens - len(response),
                             (*self.key, self.calls))

    def expand(self, node: Node, samples: list[Sample]) -> None:
        """Each sample becomes a chain of step nodes under `node`, valued by the fast reward."""
        for sample in samples:
            steps = sample_steps(sample, self.cfg.step_limit)
            current = node
            while steps:
                if current.depth >= self.cfg.depth:  # below the depth limit the rest is one action
                    steps = [([t for s in steps for t in s[0]], "".join(s[1] for s in steps), steps[-1][2])]
                ids, text, prior = steps.pop(0)
                child = Node(ids, text, prior, parent=current, value=fast_reward(text, self.gold),
                             stopped=sample.stopped and not steps)
                current.children.append(child)
                current = child

    def simulate(self, node: Node):
        """Generator: returns (the in-tree leaf reached, the response text to grade, finished)."""
        current, extra, finished = node, "", False
        for _ in range(self.cfg.max_simulation_steps):
            if self.terminal(current):
                break
            if current.children:
                current = max(current.children, key=lambda c: c.value)
                continue
            rollout = (yield self._request(current, 1))[0]
            extra, finished = rollout.text, True  # a full continuation: it ended (eos) or hit the budget
            break
        finished = finished or self.terminal(current)
        return current, current.response_text() + extra, finished

    def steps(self):
        cfg = self.cfg
        for _ in range(cfg.mcts_iters):
            node, depth = self.root, 0
            while len(node.children) > cfg.num_actions and depth < cfg.depth:
                node = best_child(node, cfg.exploration_weight)
                depth += 1
            if len(node.children) > cfg.num_actions or self.terminal(node) or node.depth >= cfg.depth:
                self.skipped_iterations += 1
                continue
            self.expand(node, (yield self._request(node, cfg.num_actions)))
            leaf, text, finished = yield from self.simulate(node)
            backpropagate(leaf, self.grader(text, finished))
        return self.root

    def run(self, sampler: Sampler) -> Node:
        return run_searches([self], lambda requests: [sampler.sample(r) for r in requests])[0]


def run_searches(searches: list[StepSearch], sample_many: Callable[[list[SampleRequest]], list[list[Sample]]]
                 ) -> list[Node]:
    """Run the searches in lockstep: each round, every unfinished search's request goes to one `sample_many` call
    (in search order). A search's tree depends only on the samples it is sent."""
    gens = [s.steps() for s in searches]
    roots: list[Node | None] = [None] * len(searches)
    pending = {}

    def advance(i, value):
        try:
            pending[i] = gens[i].send(value)
        except StopIteration as done:
            roots[i] = done.value

    for i in range(len(gens)):
        advance(i, None)
    while pending:
        order = sorted(pending)
        requests = [pending.pop(i) for i in order]
        for i, samples in zip(order, sample_many(requests)):
            advance(i, samples)
    return roots


# ---------------------------------------------------------------------------------------------- pairs
PAIR_FILTERS = ("value_gap", "overlap", "chosen_value")


def pair_filter(gap: float, overlap: float, chosen_value: float, value_threshold: float = 0.1,
                overlap_limit: float = 0.95, accept_value: float = -0.3) -> str | None:
    """None when a pair is kept, else the first failed filter: value_gap (gap < threshold), overlap (> limit),
    chosen_value (< accept_value)."""
    if gap < value_threshold:
        return "value_gap"
    if overlap > overlap_limit:
        return "overlap"
    if chosen_value < accept_value:
        return "chosen_value"
    return None


def tree_pairs(root: Node, value_threshold: float = 0.1, overlap_limit: float = 0.95,
               accept_value: float = -0.3) -> tuple[list[dict], dict]:
    """Step pairs of a searched tree and the counts {candidates, kept, dropped_<filter>}. Each pair:
    prefix_ids (the response so far), chosen_ids, rejected_ids, the texts, values and the node depth."""
    counts = {"candidates": 0, "kept": 0, **{f"dropped_{f}": 0 for f in PAIR_FILTERS}}
    pairs, stack = [], [root]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if len(node.children) < 2:
            continue
        counts["candidates"] += 1
        best = max(node.children, key=lambda c: c.value)
        worst = min(node.children, key=lambda c: c.value)
        reason = pair_filter(best.value - worst.value, word_overlap(best.text, worst.text), best.value,
                             value_threshold, overlap_limit, accept_value)
        if reason:
            counts[f"dropped_{reason}"] += 1
            continue
        counts["kept"] += 1
        pairs.append({"prefix_ids": node.response_ids(), "prefix": node.response_text(),
                      "chosen_ids": list(best.step_ids), "rejected_ids": list(worst.step_ids),
                      "chosen": best.text, "rejected": worst.text, "chosen_value": best.value,
                      "rejected_value": worst.value, "depth": node.depth})
    return pairs, counts
