"""MCTS-DPO's round (trainer mcts_dpo): a Monte Carlo tree search over the steps of each prompt's answer, whose
committed decisions give step pairs for the `mcts_step_dpo` objective.

Xie et al. 2024, "Monte Carlo Tree Search Boosts Reasoning via Iterative Preference Learning" (arXiv:2405.00451);
spec methods/reasoning-multimodal-diffusion.md §16. A step is the tokens up to and including the first
mcts_step_delimiter (or eos); a node holds one step. Per node: visits N, value V, evaluation v, step reward
r = v - v_parent (the root's v = 0), Q = r + V (gamma = 1). Per prompt:

    prior     p(a) = exp(sum_t log pi(a_t | prefix) / |a|^1.25)
    select    PUCT from the decision node: argmax_c Q_c + p_c sqrt(N_parent) / (1 + N_c)   (w_exp = 1)
    expand    mcts_num_actions samples from the leaf's prefix (temperature); each sample's first step is a child
              (identical steps merged); a step ends the answer at eos or at depth mcts_depth_limit (the sample's
              whole rest is the last step)
    evaluate  v(child), mcts_value rollout: the judge's score of the prompt with (committed steps + the child's
              whole sample): the checkable answer of the task decides the value (a Monte Carlo rollout through the
              child); self_eval: see below; a rollout the judge fails on (NaN) drops its child, counted in judge/dropped (the round stops with
              an error above max_judge_failure_fraction). With several processes the main process judges and
              sends the scores (Search._judged), so every rank grows the same tree
    backup    V(leaf) = sum_c max(1, N_c) Q_c / sum_c max(1, N_c); N += 1; Q = r + V, up to the decision node
    decide    after mcts_iterations simulations (4 x mcts_iterations at the prompt's own decision, the first, as the
              released search iterates more at its starting point) commit the child with the largest
              N_c (1 + g_c), g_c = max - min visits of c's children (the released code's visit-gap diversity; g = 0
              with mcts_num_actions 1), ties by Q, then V; when the
              decision node has >= 2 children with different Q, the pair (highest Q, lowest Q) with prefix = prompt
              + committed steps, N_w, N_l and the first differing token index feeds mcts_step_dpo:
              L = (1 - eps) l(beta z) + eps l(-beta z), eps = min(1 - N_w / (N_w + N_l), 0.5), z over tokens >= d.
    repeat    from the committed child (its subtree reused) until a terminal step.

Two values of a child (mcts_value):
    self_eval  the paper's: the policy's own P("correct") on a hinted grading prompt that shows the row's `solution`,
               weighted by mcts_self_eval_weight and divided by max(d - 3, 1), plus the judge's score of the finished
               answer at a terminal step (preflab.online.mcts_self_eval, checked against the released code)
    rollout    v is the judge's score of one rollout through the child (the spec's CPU-demo substitution of a rule
               checker, as a tiny model cannot answer a grading prompt; on the demo task the judge is the true
               reward, 1 for a fully correct loud echo). A step's text does not absorb single-child descendants. The search policy is the current
policy (on-policy, as the released code in effect); the reference stays pi_0.

Deviations from the released search (YuxiXie/MCTS-DPO@fb23437 `mcts_rl/algorithms/mcts/mcts/mcts.py`, read in
audit 9): its `iterate` descends to a terminal node or the depth limit in every simulation, expanding and evaluating
each node on the way, and backs up after each expansion, so one simulation adds 1 to a node's N once per backup it
takes part in; here a simulation expands one leaf and backs up once (N counts simulations). (A fresh child's Q,
parent.V + r there, is r in both: a node is expanded only while it has no children, so its V is still 0.) A
decision whose children share one Q gives no pair here (counted in mcts/tied_decisions; the code sorts the children
by (Q, pi) and pairs the last with the first, so equal Q values are ordered by the commitment probability pi), and a
step's text does not absorb its single-child descendants.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from preflab.errors import ConfigError, PreflabError
from preflab.online.examples import Example
from preflab.rank_agreement import main_result, ranks_agree


@dataclass
class Node:
    step: list[int]
    depth: int                     # committed steps before this one + 1 (root: 0)
    prior: float = 1.0
    v: float = 0.0
    r: float = 0.0
    V: float = 0.0
    N: int = 0
    terminal: bool = False
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)

    @property
    def Q(self) -> float:
        return self.r + self.V

    def prefix(self) -> list[int]:
        """The steps from the root's child down to this node, concatenated."""
        steps, node = [], self
        while node.parent is not None:
            steps.append(node.step)
            node = node.parent
        return [t for s in reversed(steps) for t in s]


def puct(parent: Node, child: Node, w_exp: float = 1.0) -> float:
    return child.Q + w_exp * child.prior * math.sqrt(parent.N) / (1 + child.N)


def step_prior(token_logps: list[float], length_penalty: float = 1.25) -> float:
    """p(a) = exp(sum log pi(a_t) / |a|^length_penalty)."""
    return math.exp(sum(token_logps) / max(1, len(token_logps)) ** length_penalty)


def backup(leaf: Node, stop: Node | None = None) -> None:
    """V = sum_c max(1, N_c) Q_c / sum_c max(1, N_c) (when the node has children), N += 1, from leaf up to stop."""
    node = leaf
    while node is not None:
        if node.children:
            w = [max(1, c.N) for c in node.children]
            node.V = sum(wi * c.Q for wi, c in zip(w, node.children)) / sum(w)
        node.N += 1
        if node is stop:
            break
        node = node.parent


def first_step(sample: list[int], delimiter: int, last: bool) -> tuple[list[int], bool]:
    """(the sample's first step, whether it ends the answer: the last allowed step, or no delimiter before eos or the
    length limit)."""
    if last or delimiter not in sample:
        return list(sample), True
    return sample[:sample.index(delimiter) + 1], False


ROOT_ITERATION_FACTOR = 4   # the released MCTS.search: n_iters * 4 while the search root is the prompt (depth 0)


def visit_gap(node: Node) -> int:
    """g = max_c N_c - min_c N_c over the node's children, 0 without children: MCTS-DPO's diversity score
    (YuxiXie/MCTS-DPO@fb23437 `mcts_rl/utils.py::calculate_diversity_score`)."""
    return max(c.N for c in node.children) - min(c.N for c in node.children) if node.children else 0


def commit_key(child: Node, diverse: bool = True) -> tuple[float, float, float]:
    """The released commitment at temperature 0 (`MCTS._get_simulated_pi`): the child maximising
    (N (1 + g) with diversity, else N; then Q; then V); diversity is off when one action is sampled per node."""
    return (child.N * (1 + visit_gap(child)) if diverse else child.N, child.Q, child.V)


def diverge_index(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


class Search:
    """One prompt's search; sample(prefixes, n, seed) -> n samples per prefix, judge(texts) -> scores,
    logps([(prefix, step)]) -> token log-probs."""

    def __init__(self, run, row, seed: int):
        cfg = run.cfg
        self.run, self.row, self.cfg, self.seed, self.calls = run, row, cfg, seed, 0
        ids = run.tokenizer(cfg.mcts_step_delimiter, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ConfigError(f"mcts_step_delimiter {cfg.mcts_step_delimiter!r} is {len(ids)} tokens for this "
                              "tokenizer; choose a string that is one token (e.g. '\\n' or ' ').")
        self.delimiter = ids[0]
        self.scores: list[float] = []
        self.samples = self.dropped = 0

    def _expand(self, leaf: Node) -> None:
        run, cfg = self.run, self.cfg
        prefix = self.row.prompt_ids + leaf.prefix()
        self.calls += 1
        samples = run.generator.generate([prefix], cfg.mcts_num_actions, (self.seed + self.calls) % 2 ** 31)
        self.samples += len(samples)
        last = leaf.depth + 1 >= cfg.mcts_depth_limit
        seen, new, answers = set(), [], []
        for s in samples:
            step, terminal = first_step(s, self.delimiter, last)
            if not step or tuple(step) in seen:
                continue
            seen.add(tuple(step))
            new.append(Node(step, leaf.depth + 1, terminal=terminal, parent=leaf))
            answers.append(leaf.prefix() + s)   # committed steps + the whole sample: the rollout
        if not new:
            leaf.terminal = True   # nothing sampled: the answer ends here
            return
        from preflab.loops.rollout import decode

        chat = isinstance(self.row.prompt, list)
        if getattr(cfg, "mcts_value", "rollout") == "self_eval":  # a bare cfg (tests, the API) keeps rollouts
            scores = self._self_eval_values(leaf, new, answers, chat)
        else:
            decoded = [decode(run.tokenizer, t, chat) for t in answers]
            scores = self._judged(decoded, answers)
        logps = run._token_logps(run._policy_scores, [(prefix, n.step) for n in new])
        kept = []
        for node, score, lp in zip(new, scores.tolist(), logps):
            if math.isnan(score):   # the judge failed on this rollout: the child is dropped and counted
                self.dropped += 1
                continue
            node.v = score
            node.r = node.v - leaf.v
            node.prior = step_prior(lp)
            self.scores.append(node.v)
            kept.append(node)
        if not kept:
            leaf.terminal = True
        leaf.children = kept

    def _judged(self, texts: list, answers: list[list[int]]) -> torch.Tensor:
        """The judge's [len(texts)] scores of this prompt's rollouts `texts` (token ids `answers`; NaN: a judge
        failed on it). With several processes every rank runs the same search in step (each expansion's generation
        is sharded and gathered), so the scores must be the same on every rank: the main process judges and sends
        the scores and the judge's first failure to the others (preflab.rank_agreement.main_result, one broadcast
        per judge call). A judge timeout or refusal on the main is sent in their place and raised on every rank;
        before, each rank judged itself, so a timeout on one rank raised there alone mid-search while the others
        waited in the next expansion's gather, and a judge failing on one rank only (NaN, dropped child) or
        scoring differently there grew another tree there, whose expansions no longer matched the others'."""
        run, n = self.run, len(texts)
        judge = run.judge

        def judged():
            scores, _ = judge([self.row.prompt] * n, texts, [0] * n, [self.row.columns] * n, answers)
            return scores, getattr(judge, "first_failure", None)

        scores, first = main_result(judged, getattr(run, "accelerator", None),
                                    "the main process's judging of the MCTS rollouts failed")
        if first is not None and getattr(judge, "first_failure", None) is None:
            judge.first_failure = first  # the round's error names the main's first failure on every rank
        return scores

    def _self_eval_values(self, leaf: Node, new: list[Node], answers: list[list[int]], chat: bool) -> torch.Tensor:
        """[len(new)] values v = w conf / max(d - 3, 1) + outcome at terminal steps (online/mcts_self_eval.py);
        the judge scores only the finished answers (NaN: the child is dropped, as for rollouts)."""
        from preflab.loops.rollout import decode
        from preflab.online.mcts_self_eval import eval_prompt, row_solution, self_evaluation, step_value

        run, solution = self.run, row_solution(self.row)
        done = [i for i, n in enumerate(new) if n.terminal]
        outcome = {}
        if done:
            texts = [decode(run.tokenizer, answers[i], chat) for i in done]
            judged = self._judged(texts, [answers[i] for i in done])
            outcome = dict(zip(done, judged.tolist()))
        values = []
        for i, node in enumerate(new):
            answer = decode(run.tokenizer, leaf.prefix() + node.step, chat)
            ids = run.tokenizer(eval_prompt(self.row.prompt, solution, answer)).input_ids
            conf = self_evaluation(run.policy, run.tokenizer, ids)
            values.append(step_value(conf, leaf.depth, self.cfg.mcts_self_eval_weight, outcome.get(i)))
        return torch.tensor(values, dtype=torch.float64)

    def simulate(self, root: Node) -> None:
        node = root
        while node.children and not node.terminal:
            node = max(node.children, key=lambda c: puct(node, c))
        if not node.terminal:
            self._expand(node)
        backup(node, stop=root)

    def run_search(self) -> tuple[list[Example], int]:
        cfg = self.cfg
        root, examples, ties = Node([], 0), [], 0
        root.N = 0
        while not root.terminal and root.depth < cfg.mcts_depth_limit:
            for _ in range(cfg.mcts_iterations * (ROOT_ITERATION_FACTOR if root.depth == 0 else 1)):
                self.simulate(root)
            if not root.children:
                break
            ranked = sorted(root.children, key=lambda c: c.Q)
            best, worst = ranked[-1], ranked[0]
            if len(ranked) >= 2 and best.Q != worst.Q and best.step != worst.step:
                examples.append(Example(self.row.row_id, self.row.prompt_ids + root.prefix(), [best.step, worst.step],
                                        {"chosen_visits": float(best.N), "rejected_visits": float(worst.N),
                                         "diverge_index": float(diverge_index(best.step, worst.step)),
                                         "score_chosen": best.Q, "score_rejected": worst.Q}))
            elif len(ranked) >= 2:
                ties += 1
            diverse = cfg.mcts_num_actions > 1
            root = max(root.children, key=lambda c: commit_key(c, diverse))
        return examples, ties


def mcts_round(run, r: int, rows, g: torch.Generator):
    """One generation round of trainer mcts_dpo: a search per prompt (see the module docstring); returns a Round."""
    from preflab.online.examples import Round

    examples, ties, calls, scores, dropped, samples = [], 0, 0, [], 0, 0
    run.policy.eval()
    for i, row in enumerate(rows):
        search = Search(run, row, run._round_seed(r) + 1000 * i)
        found, t = search.run_search()
        examples += found
        ties += t
        calls += search.calls
        run.counts["completions"] += search.samples
        dropped += search.dropped
        samples += search.samples
        scores += search.scores
    run.policy.train()
    run.counts["judge_dropped"] += dropped
    # the main judged every rollout (Search._judged), so `dropped` is the same on every rank; the round's own work
    # (the limit's check, the examples' log-probs) is agreed once per round, after the searches' last collective
    # (as OnlineRun._round_agreement): a failure on one rank alone stops every rank with that rank's error
    with ranks_agree(f"round {r + 1}: judging the MCTS rollouts or building the examples failed"):
        if dropped > run.cfg.max_judge_failure_fraction * max(1, samples):
            raise PreflabError(f"round {r + 1}: the judge failed or returned NaN for {dropped} of {samples} MCTS "
                               "rollouts (more than max_judge_failure_fraction = "
                               f"{run.cfg.max_judge_failure_fraction}).{getattr(run.judge, 'failure_note', str)()} "
                               "Fix the judge or raise max_judge_failure_fraction.")
        run._precompute(examples)
    order = torch.randperm(len(examples), generator=g).tolist()
    spg = run.cfg.steps_per_generation
    slices = [order[len(order) * i // spg:len(order) * (i + 1) // spg] for i in range(spg)]
    metrics = {"reward": sum(scores) / len(scores) if scores else math.nan, "round": float(r + 1),
               "examples/count": float(len(examples)), "mcts/expansions": float(calls),
               "mcts/tied_decisions": float(ties), "judge/dropped": float(dropped)}
    run.counts["rounds"] += 1
    return Round(r, examples, slices, metrics)
