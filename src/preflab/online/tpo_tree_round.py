"""TPO's preference tree for trainer tpo: multi-branch, multi-step trees of the policy's samples (tpo_tree_depth).

Liao, Chu, Wang 2024, "TPO: Aligning Large Language Models with Multi-branch & Multi-step Preference Trees"
(arXiv:2410.12854); spec methods/reasoning-multimodal-diffusion.md §33. A step is the tokens up to and including the
first tpo_step_delimiter (or eos). Per prompt, with b = num_generations branches and D = tpo_tree_depth levels:

    level 1    b samples from the prompt; each sample's first step is a node (the last level keeps the whole sample)
    level l    b samples from every unfinished node's prefix (prompt + its steps), each sample's first step a child
    leaves     b^D responses in tree order (siblings adjacent); the responses under a node share its steps, so their
               token log-ratios on those steps are equal and the list ranks what the branches add; a node that ended
               (eos) before level D is one leaf, its other b^(D-l) - 1 slots are copies marked invalid
    steps      leaf i's step k = its level-k step (step_index k on its tokens), capped at the list's fewest steps
               (the spec's cap: the last step absorbs the rest)

The list, the judge's scores of the leaves and the step indices feed objective tpo_tree (adaptive step weights
w_ik = 1 + cos(hbar_ik, hbar_1k) now over several steps). With D = 1 the tree is the flat group: b samples of the
prompt, each one step (what trainer tpo did before, tested equal).

Derived, not the paper's: the paper's trees come from ToT sampling (and the released data: a gold chain + branches
from a random step, scored by an LLM); here every node branches b ways, a leaf is cut to max_completion_length
tokens, and the judge scores only the leaves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from preflab.errors import ConfigError
from preflab.online.mcts import first_step


@dataclass
class Leaf:
    tokens: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)   # token count of each step
    done: bool = False
    copy: bool = False


def delimiter_id(tokenizer, delimiter: str) -> int:
    ids = tokenizer(delimiter, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ConfigError(f"tpo_step_delimiter {delimiter!r} is {len(ids)} tokens for this tokenizer; choose a string "
                          "that is one token (e.g. '\\n' or ' ').")
    return ids[0]


def grow_trees(generate, prompt_ids: list[list[int]], branches: int, depth: int, delimiter: int, seed: int,
               max_tokens: int) -> list[list[Leaf]]:
    """Per prompt the b^depth leaves of its tree (module docstring). generate(prefixes, n, seed) -> n samples per
    prefix, prefix-major (an online generator's .generate); level 1 uses `seed` itself, level l seed + l - 1."""
    trees = [[Leaf()] for _ in prompt_ids]
    for level in range(1, depth + 1):
        last = level == depth
        open_nodes = [(p, n) for p, nodes in enumerate(trees) for n in nodes if not n.done]
        samples = generate([prompt_ids[p] + n.tokens for p, n in open_nodes], branches, seed + level - 1) \
            if open_nodes else []
        children = {id(n): samples[i * branches:(i + 1) * branches] for i, (_, n) in enumerate(open_nodes)}
        grown = []
        for nodes in trees:
            out = []
            for node in nodes:
                if node.done:   # ended early: one real leaf, the rest of its slots are copies
                    out += [node] + [Leaf(node.tokens, node.steps, True, True) for _ in range(branches - 1)]
                    continue
                for sample in children[id(node)]:
                    step, done = first_step(sample, delimiter, last)
                    out.append(Leaf(node.tokens + step, node.steps + [len(step)], done or last, node.copy))
            grown.append(out)
        trees = grown
    for nodes in trees:
        for leaf in nodes:
            leaf.tokens, leaf.steps = cut(leaf.tokens, leaf.steps, max_tokens)
    return trees


def cut(tokens: list[int], steps: list[int], max_tokens: int) -> tuple[list[int], list[int]]:
    """tokens[:max_tokens] and the step lengths that cover them."""
    if len(tokens) <= max_tokens:
        return tokens, steps
    kept, left = [], max_tokens
    for n in steps:
        if left <= 0:
            break
        kept.append(min(n, left))
        left -= n
    return tokens[:max_tokens], kept


def step_index(steps: list[int], cap: int) -> list[int]:
    """Per token of a response, its step number (1-based), steps after `cap` merged into step `cap`."""
    return [min(k + 1, cap) for k, n in enumerate(steps) for _ in range(n)]


def tree_round(run, rows, seed: int) -> tuple[list[list[int]], list[list[Leaf]]]:
    """(flat leaf token ids, prompt-major; the trees) of one round of trainer tpo with tpo_tree_depth > 1 (the
    online run calls it only where it generates from token prompts: OnlineRun._generate, not overridden)."""
    cfg = run.cfg
    trees = grow_trees(run.generator.generate, [row.prompt_ids for row in rows], cfg.num_generations,
                       cfg.tpo_tree_depth, delimiter_id(run.tokenizer, cfg.tpo_step_delimiter), seed,
                       cfg.max_completion_length)
    return [leaf.tokens for nodes in trees for leaf in nodes], trees


def mark_tree(examples, trees: list[list[Leaf]]) -> None:
    """Each group example (one per prompt, in order) gets its leaves' step lengths; copies become invalid."""
    for e, nodes in zip(examples, trees):
        e.extras["steps"] = [leaf.steps for leaf in nodes]
        e.extras["valid"] = [ok and not leaf.copy for ok, leaf in zip(e.extras["valid"], nodes)]


def tree_step_index(examples) -> list[list[int]]:
    """Per completion (group-major) its tokens' step numbers, capped at the group's fewest steps among valid leaves."""
    out = []
    for e in examples:
        counts = [len(s) for s, ok in zip(e.extras["steps"], e.extras["valid"]) if ok and s]
        cap = max(1, min(counts)) if counts else 1
        out += [step_index(s, cap) for s in e.extras["steps"]]
    return out
