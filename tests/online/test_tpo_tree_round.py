"""trainer tpo with tpo_tree_depth (src/preflab/online/tpo_tree_round.py): multi-branch, multi-step preference trees;
depth 1 is the flat group trainer tpo trained on before."""
import json
import sys
from pathlib import Path

import torch

from preflab.online.examples import Example
from preflab.online.tpo_tree_round import cut, grow_trees, mark_tree, step_index, tree_step_index

sys.path.insert(0, str(Path(__file__).parent))

SPACE = 0   # the step delimiter's token id in these hand-made samples


def scripted(samples_by_prefix):
    """generate(prefixes, n, seed) returning hand-set samples per prefix (a tuple key), recording the calls."""
    calls = []

    def generate(prefixes, n, seed):
        calls.append((prefixes, n, seed))
        return [s for p in prefixes for s in samples_by_prefix[tuple(p)][:n]]
    return generate, calls


def test_depth_two_tree_shares_steps_and_pads_an_early_end_with_invalid_copies():
    # prompt [9]; level 1: "a_" (continues) and "b" (ends: no delimiter); level 2 from [9, a, _]: "c" and "d e"
    a, b, c, d, e = 1, 2, 3, 4, 5
    generate, calls = scripted({(9,): [[a, SPACE, c], [b]], (9, a, SPACE): [[c], [d, SPACE, e]]})
    (leaves,) = grow_trees(generate, [[9]], branches=2, depth=2, delimiter=SPACE, seed=100, max_tokens=16)
    assert [leaf.tokens for leaf in leaves] == [[a, SPACE, c], [a, SPACE, d, SPACE, e], [b], [b]]
    assert [leaf.steps for leaf in leaves] == [[2, 1], [2, 3], [1], [1]]   # the last level keeps the whole sample
    assert [leaf.copy for leaf in leaves] == [False, False, False, True]
    assert [(p, s) for p, _, s in calls] == [([[9]], 100), ([[9, a, SPACE]], 101)]   # ended nodes are not expanded


def test_depth_one_is_the_flat_group():
    samples = [[1, SPACE, 2], [3], [4, 4]]
    generate, calls = scripted({(7,): samples})
    (leaves,) = grow_trees(generate, [[7]], branches=3, depth=1, delimiter=SPACE, seed=5, max_tokens=16)
    assert [leaf.tokens for leaf in leaves] == samples and calls == [([[7]], 3, 5)]   # one call, the round's seed
    assert [leaf.steps for leaf in leaves] == [[3], [1], [2]] and not any(leaf.copy for leaf in leaves)
    ex = Example(0, [7], samples, {"valid": [True] * 3})
    mark_tree([ex], [leaves])
    assert tree_step_index([ex]) == [[1, 1, 1], [1], [1, 1]]       # = the response mask: every token step 1


def test_steps_are_capped_at_the_lists_fewest_and_cut_at_max_tokens():
    assert step_index([2, 1, 3], cap=2) == [1, 1, 2, 2, 2, 2]
    ex = Example(0, [7], [[1] * 3, [1] * 4, [1]], {"valid": [True, True, False], "steps": [[2, 1], [1, 1, 2], [1]]})
    # the invalid copy's one step does not set the cap: 2 (the first leaf's count)
    assert tree_step_index([ex]) == [[1, 1, 2], [1, 2, 2, 2], [1]]
    assert cut([1, 2, 3, 4, 5], [2, 3], 4) == ([1, 2, 3, 4], [2, 2])
    assert cut([1, 2], [1, 1], 4) == ([1, 2], [1, 1])


def test_tree_run_trains_on_b_to_the_d_leaves_with_shared_prefixes(tmp_path):
    from test_online_run import tiny_cfg, tiny_run

    from preflab.objectives import tpo_tree

    seen = []
    real = tpo_tree.TPOTree.compute

    def spy(self, batch):
        seen.append(batch.extra("step_index", "spy").clone())
        return real(self, batch)

    tpo_tree.TPOTree.compute = spy
    try:
        cfg = tiny_cfg(tmp_path, trainer="tpo", num_generations=2, tpo_tree_depth=2, tpo_step_delimiter=" ",
                       max_steps=2, max_completion_length=8)
        run = tiny_run(cfg)
        tok = run.tokenizer
        ids = lambda text: tok(text, add_special_tokens=False).input_ids  # noqa: E731
        # sample i of every prefix: "<x> e<eos>" with x = a, b: two steps, the second ending the answer
        run.generator.generate = lambda prefixes, n, seed: [ids(f"{x} e") + [tok.eos_token_id]
                                                             for _ in prefixes for x in "ab"[:n]]
        run.train()
    finally:
        tpo_tree.TPOTree.compute = real
    rows = [json.loads(x) for x in (tmp_path / "rounds" / "1.jsonl").read_text().splitlines()]
    assert all(len(r["completions"]) == 4 for r in rows)
    # leaves in tree order: siblings (0, 1) share the step "a ", (2, 3) the step "b "
    assert all(r["completions"] == ["a a e", "a b e", "b a e", "b b e"] for r in rows)
    assert seen and all(s.shape[1] == 4 for s in seen)
    # per leaf: step 1 on its first two tokens ("a "), step 2 on the rest (the second sample + eos)
    want = torch.tensor([1, 1, 2, 2, 2, 2])
    assert all(torch.equal(s[b, k, :6], want) and int(s[b, k, 6:].sum()) == 0 for s in seen
               for b in range(s.shape[0]) for k in range(4))
