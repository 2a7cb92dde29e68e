"""trainer mcts_dpo (src/preflab/online/mcts.py): the spec's exact checks (PUCT, prior, backup) and a deterministic
mini-tree with a mocked sampler and judge that reproduces a hand-traced list of step pairs."""
import math
from types import SimpleNamespace

import pytest
import torch

from preflab.online.mcts import Node, Search, backup, diverge_index, puct, step_prior


def test_puct_prior_and_backup_match_the_spec():
    parent = Node([], 0, N=8)
    values = [puct(parent, Node([1], 1, prior=p, r=q, N=n)) for q, p, n in ((0.5, 0.6, 5), (0.2, 0.3, 1), (0, 0.1, 0))]
    assert values == pytest.approx([0.782843, 0.624264, 0.282843], abs=1e-6)
    assert step_prior([-0.5, -1.0, -0.2, -0.3]) == pytest.approx(0.702189, abs=1e-6)
    root = Node([], 0)
    root.children = [Node([1], 1, r=0.8, N=3, parent=root), Node([2], 1, r=-0.4, N=1, parent=root)]
    backup(root)
    assert root.V == pytest.approx(0.5) and root.N == 1
    assert diverge_index([3, 4, 5], [3, 4, 6]) == 2 and diverge_index([3, 4], [3, 4, 6]) == 2


def _mock_run():
    # token 0 is the step delimiter, 9 is eos; the answer [1, 0, 3, 9] is right (1.0), everything else wrong (0.0)
    samples = {(5,): [[1, 0, 3, 9], [2, 0, 3, 9]], (5, 1, 0): [[3, 9], [4, 9]], (5, 2, 0): [[3, 9], [3, 9]]}
    cfg = SimpleNamespace(mcts_iterations=2, mcts_num_actions=2, mcts_depth_limit=2, mcts_step_delimiter=" ")

    class Tok:  # the delimiter " " is token 0
        def __call__(self, text, add_special_tokens=False):
            return SimpleNamespace(input_ids=[0])

        def decode(self, ids, skip_special_tokens=True):
            return str(ids)

    return SimpleNamespace(
        cfg=cfg, tokenizer=Tok(),
        generator=SimpleNamespace(generate=lambda prefixes, n, seed: samples[tuple(prefixes[0])][:n]),
        judge=lambda prompts, texts, groups, columns, ids: (
            torch.tensor([1.0 if a == [1, 0, 3, 9] else 0.0 for a in ids], dtype=torch.float64), None),
        _policy_scores=None,
        _token_logps=lambda src, seqs: [[-0.1] * len(step) for _, step in seqs])


def test_mini_tree_gives_the_hand_traced_pairs():
    row = SimpleNamespace(row_id=7, prompt_ids=[5], prompt="p", columns={})
    examples, ties = Search(_mock_run(), row, seed=0).run_search()
    # hand trace (module docstring rules; priors p = exp(-0.2 / 2^1.25) = 0.9193 for every 2-token step). The prompt's
    # decision runs 4 x 2 = 8 simulations (the released search's x4 at its starting point): sim 1 expands the root:
    # A=[1,0] (rollout right, v=1), B=[2,0] (v=0); sim 2 takes A (PUCT 1.919 vs 0.919) and expands it into terminal
    # C=[3,9] (v=1, r=0) and D=[4,9] (v=0, r=-1): V_A = -0.5; sim 3 takes B (1.300 vs 1.150) and expands it into one
    # child [3,9] (the two samples are identical; v=0); sims 4, 5, 8 take A then C, sim 6 A then D, sim 7 B. So
    # N_A = 5, Q_A = 1 + (3*0 + 1*(-1))/4 = 0.75 and N_B = 2, Q_B = 0: pair (A, B), N_w = 5, N_l = 2. Commit A
    # (N (1 + visit gap): 5 * (1 + 3 - 1) = 15 vs 2). At A (2 simulations) both pick C (PUCT 0.514 vs 0.028, then
    # 0.450 vs 0.126): pair (C, D) with N_w = 5, N_l = 1.
    got = [(e.prompt_ids, e.completions, e.extras["chosen_visits"], e.extras["rejected_visits"],
            e.extras["diverge_index"]) for e in examples]
    assert got == [([5], [[1, 0], [2, 0]], 5.0, 2.0, 0.0), ([5, 1, 0], [[3, 9], [4, 9]], 5.0, 1.0, 0.0)]
    assert ties == 0 and all(e.row_id == 7 for e in examples)
    assert examples[0].extras["score_chosen"] == pytest.approx(0.75) and examples[1].extras["score_rejected"] == -1


def test_a_multi_token_delimiter_is_refused():
    from preflab.errors import ConfigError

    run = _mock_run()
    run.tokenizer = lambda text, add_special_tokens=False: SimpleNamespace(input_ids=[0, 1])
    with pytest.raises(ConfigError, match="mcts_step_delimiter"):
        Search(run, SimpleNamespace(row_id=0, prompt_ids=[5], prompt="p", columns={}), seed=0)
    assert math.isfinite(step_prior([]))


def test_judge_failures_drop_children_and_stop_the_round_above_the_fraction(tmp_path):
    from preflab.errors import PreflabError
    from preflab.online.mcts import mcts_round

    run = _mock_run()
    run.judge = lambda prompts, texts, groups, columns, ids: (
        torch.tensor([float("nan") if a[0] == 2 else float(a == [1, 0, 3, 9]) for a in ids], dtype=torch.float64),
        None)
    row = SimpleNamespace(row_id=0, prompt_ids=[5], prompt="p", columns={})
    search = Search(run, row, seed=0)
    examples, _ = search.run_search()
    # the root's child [2, 0] is dropped: no pair at the root (one child), one at [1, 0]; 1 of 4 rollouts failed
    assert search.dropped == 1 and search.samples == 4 and [e.prompt_ids for e in examples] == [[5, 1, 0]]
    run.cfg.max_judge_failure_fraction = 0.1
    run.counts = {"completions": 0, "judge_dropped": 0, "rounds": 0}
    run.policy = torch.nn.Linear(1, 1)
    run._round_seed = lambda r: 0
    with pytest.raises(PreflabError, match="1 of 4 MCTS rollouts"):
        mcts_round(run, 0, [row], torch.Generator().manual_seed(0))


def test_each_decision_commits_to_the_most_visited_child_not_the_highest_q():
    """After the simulations of a decision the search moves to argmax_c (N_c, Q_c) (most visited, Q breaking
    ties), the AlphaZero-style commitment, not to the highest-Q child, which also gives the pair's chosen step."""
    row = SimpleNamespace(row_id=7, prompt_ids=[5], prompt="p", columns={})
    search = Search(_mock_run(), row, seed=0)

    def simulate(node):  # each node: a much-visited low-Q child and a once-visited high-Q one
        if not node.children:
            first = node.step[0] * 10 if node.step else 0
            node.children = [Node([first + 1, 0], node.depth + 1, r=0.1, N=3, parent=node),
                             Node([first + 2, 0], node.depth + 1, r=0.9, N=1, parent=node)]

    search.simulate = simulate
    examples, ties = search.run_search()
    assert [(e.prompt_ids, e.completions) for e in examples] == [([5], [[2, 0], [1, 0]]),
                                                                 ([5, 1, 0], [[12, 0], [11, 0]])]
    assert ties == 0 and [e.extras["chosen_visits"] for e in examples] == [1.0, 1.0]


def test_the_prompts_decision_runs_four_times_the_simulations_of_the_later_ones():
    """The released search (YuxiXie/MCTS-DPO@fb23437 `mcts_rl/algorithms/mcts/mcts/mcts.py::MCTS.search`) runs
    n_iters * 4 simulations while its root is the prompt (depth 0), n_iters at every later decision."""
    row = SimpleNamespace(row_id=7, prompt_ids=[5], prompt="p", columns={})
    search = Search(_mock_run(), row, seed=0)
    calls = []

    def simulate(node):
        calls.append(node.depth)
        if not node.children and node.depth < 2:
            node.children = [Node([node.depth * 10 + k, 0], node.depth + 1, r=0.1 * k, N=k, parent=node,
                                  terminal=node.depth == 1) for k in (1, 2)]

    search.simulate = simulate
    search.run_search()
    assert calls == [0] * 8 + [1] * 2      # mcts_iterations = 2: 8 at the prompt, 2 at the committed step


def test_the_commitment_weighs_visits_by_the_visit_gap_of_the_childs_children():
    """Commit to argmax_c N_c (1 + g_c), g_c = max - min visits of c's children (the released
    `MCTS._get_simulated_pi` at temperature 0 with `calculate_diversity_score`): X (N 3, children visited 1 and 1:
    3 * 1 = 3) loses to Y (N 2, children visited 2 and 0: 2 * 3 = 6), which the most-visited rule would not pick.
    With one action per node (mcts_num_actions 1) the diversity is off and X (most visits) is committed."""
    from preflab.online.mcts import commit_key, visit_gap

    root = Node([], 0)
    x = Node([1, 0], 1, r=0.9, N=3, parent=root)
    y = Node([2, 0], 1, r=0.1, N=2, parent=root)
    x.children = [Node([3], 2, N=1, parent=x), Node([4], 2, N=1, parent=x)]
    y.children = [Node([5], 2, N=2, parent=y), Node([6], 2, N=0, parent=y)]
    assert (visit_gap(x), visit_gap(y), visit_gap(x.children[0])) == (0, 2, 0)
    assert commit_key(x) == (3, x.Q, x.V) and commit_key(y) == (6, y.Q, y.V)
    assert max([x, y], key=commit_key) is y
    assert max([x, y], key=lambda c: commit_key(c, diverse=False)) is x
    # a tie in N (1 + g) goes to the higher Q, then the higher V: a (Q 0.9, V 0) over b (Q 0.5, V 0.5)
    a, b = Node([7], 1, r=0.9, V=0.0, N=2, parent=root), Node([8], 1, r=0.0, V=0.5, N=2, parent=root)
    assert max([b, a], key=commit_key) is a

    row = SimpleNamespace(row_id=7, prompt_ids=[5], prompt="p", columns={})
    search = Search(_mock_run(), row, seed=0)

    seen = []

    def simulate(node):  # the prompt's decision is the tree above; every committed step is terminal
        seen.append(node)
        if node.depth == 0 and not node.children:
            node.children = [x, y]
        elif node.depth > 0:
            node.terminal = True

    search.simulate = simulate
    examples, _ = search.run_search()
    assert [e.completions for e in examples] == [[[1, 0], [2, 0]]]   # the pair is by Q: X chosen
    assert seen[8] is y                     # the search moved on from Y
