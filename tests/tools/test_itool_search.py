"""iTool (seed #37): the spec's checks (§37.4) as numbers, and the MCTS on hand-built and scripted trees."""
import math

import pytest
import torch

from preflab.config import config_from_dict
from preflab.objectives import PairBatch, get_objective
from preflab.tool_use.itool import simpo_options
from preflab.tool_use.itool_search import (
    Node,
    Sample,
    SearchConfig,
    StepSearch,
    backpropagate,
    best_child,
    fast_reward,
    letter_confidence,
    pair_filter,
    run_searches,
    sample_steps,
    select_deficient,
    selection_score,
    self_eval_confidence,
    split_steps,
    tree_pairs,
    word_overlap,
)
from preflab.tool_use.itool_task import rule_grade

GOLD = "[get_weather(city='Paris', unit='C')]"


# ---------------------------------------------------------------------------------------------- §37.4 checks
@pytest.mark.parametrize("delta, expected", [(0.2, math.log(2)), (0.6, 0.313262)])
def test_simpo_as_itool_runs_it(delta, expected):
    """SimPO beta 2.5, gamma 0.5: l(2.5 * delta - 0.5); the recipe's config gives the objective these values."""
    cfg = config_from_dict({**simpo_options(2.5, 0.5, 1e-4, 8, 2.0), "model_name_or_path": "builtin:tiny-llama",
                            "dataset_name": "pairs.jsonl"})
    objective = cfg.objective()
    assert objective.beta == 2.5 and objective.gamma == 0.5
    batch = PairBatch.from_sums(torch.tensor([delta], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
    loss = float(objective(batch).loss)
    assert loss == pytest.approx(expected, abs=5e-7)
    if delta == 0.2:
        assert loss == math.log(2)  # exactly: the logit is 0


def test_simpo_gamma_is_llama_factory_simpo_gamma():
    """LLaMA-Factory: logits = delta - gamma/beta, loss = -logsigmoid(beta * logits): gamma in loss units, which
    is preflab's simpo_gamma (not the official SimPO code's gamma_beta_ratio)."""
    delta, beta, gamma = torch.tensor([0.37, -0.2, 1.1], dtype=torch.float64), 2.5, 0.5
    llama_factory = -torch.nn.functional.logsigmoid(beta * (delta - gamma / beta))
    ours = get_objective("simpo", beta=beta, simpo_gamma=gamma)(PairBatch.from_sums(delta, torch.zeros(3, dtype=torch.float64)))
    assert torch.allclose(ours.losses, llama_factory, atol=1e-15, rtol=0)
    ratio = get_objective("simpo", beta=beta, gamma_beta_ratio=gamma)(PairBatch.from_sums(delta, torch.zeros(3, dtype=torch.float64)))
    assert not torch.allclose(ratio.losses, llama_factory)  # the other convention is a different loss


def test_fast_reward_of_the_spec():
    action = "[get_weather(city='Paris', unit='F')]"
    assert word_overlap(GOLD, action) == 0.5
    assert fast_reward(action, GOLD) == pytest.approx(0.1, abs=1e-15)
    assert fast_reward("Paris", GOLD) == pytest.approx(-0.1 + 0.0 - 0.5)  # no ")]" while the gold has one
    assert fast_reward("  ", GOLD) == 0.0


def test_word_overlap_divides_by_the_smaller_word_set():
    """|W(a) & W(b)| / min(|W(a)|, |W(b)|): a step whose words all occur in the gold overlaps it fully, whatever
    the gold's length (so the pair filter's overlap_limit drops a rejected step contained in the chosen one)."""
    assert word_overlap("the weather in Paris today", "Paris today") == 1.0
    assert word_overlap("a b c d", "a x") == 0.5
    assert fast_reward("Paris", "Paris is sunny") == pytest.approx(0.1 + 1.0 - 0.5)  # no ")]" in either: agree


def test_self_evaluation_confidence():
    assert self_eval_confidence(0.6, 0.2, 0.1, 0.1) == pytest.approx(0.08, abs=1e-15)
    assert [letter_confidence(x) for x in "ABCD"] == [0.25, 0.025, -0.25, -0.5]


@pytest.mark.parametrize("gap, overlap, chosen_value, reason", [
    (0.1, 0.95, -0.3, None),            # every boundary is kept
    (0.5, 0.0, 0.2, None),
    (0.09, 0.5, 0.0, "value_gap"),
    (0.2, 0.96, 0.0, "overlap"),
    (0.2, 0.5, -0.31, "chosen_value"),
    (0.05, 0.99, -1.0, "value_gap"),    # the first failed filter is counted
    (0.2, 0.99, -1.0, "overlap"),
])
def test_pair_filter_truth_table(gap, overlap, chosen_value, reason):
    assert pair_filter(gap, overlap, chosen_value) == reason


def test_deficiency_selection_top_30_percent_per_group_stable():
    golds = ["[f(a=1)]"] * 10 + ["hello"] * 4
    items = [{"gold": g} for g in golds]
    ppl = [1.0, 5.0, 3.0, 5.0, 2.0, 9.0, 5.0, 1.0, 0.5, 4.0] + [2.0, 7.0, 7.0, 1.0]
    # tool group: int(10 * 0.3) = 3 -> 9.0 (#5), then the ties at 5.0 in input order: #1, #3 (not #6)
    # plain group: int(4 * 0.3) = 1 -> the first of the tied 7.0s, #11
    assert select_deficient(items, ppl, 0.3) == [5, 1, 3, 11]
    assert select_deficient(items, ppl, 0.5) == [5, 1, 3, 6, 9, 11, 12]


# ---------------------------------------------------------------------------------------------- steps
def test_steps_split_at_the_official_delimiters_and_join_exactly():
    assert split_steps(GOLD, 2) == ["[get_weather(city=", "'Paris', unit=", "'C')]"]
    assert split_steps(GOLD, 1) == ["[get_weather(", "city=", "'Paris', ", "unit=", "'C')]"]
    text = "Sure. I will call it, then (maybe) x=1"
    assert "".join(split_steps(text, 2)) == text


def test_sample_steps_carry_their_tokens_and_priors():
    text = "[f(a=1)]"
    sample = Sample(list(range(len(text))) + [99], [math.log(0.5)] * len(text) + [0.0], True, list(text) + [""])
    steps = sample_steps(sample, 2)
    assert [s[1] for s in steps] == ["[f(a=", "1)]"]
    assert steps[0][0] == [0, 1, 2, 3, 4] and steps[1][0] == [5, 6, 7, 99]  # eos joins the last step
    assert steps[0][2] == pytest.approx(0.5)
    assert steps[1][2] == pytest.approx(math.exp(3 * math.log(0.5) / 4))


# ---------------------------------------------------------------------------------------------- the tree
def test_selection_and_backpropagation_on_a_hand_built_tree():
    root = Node(visits=4)
    a = Node(text="a", prior=0.5, parent=root, value=1.0, visits=3)
    b = Node(text="b", prior=0.9, parent=root, value=0.2, visits=0)
    root.children = [a, b]
    # a: 1/4 + 0.5 * sqrt(ln 4 / 4) = 0.25 + 0.5 * 0.588705 = 0.544353; b: 0.2 + 0.9 * sqrt(ln 4) = 1.259690
    assert selection_score(a, 4, 1.0) == pytest.approx(0.25 + 0.5 * math.sqrt(math.log(4) / 4))
    assert selection_score(b, 4, 1.0) == pytest.approx(0.2 + 0.9 * math.sqrt(math.log(4)))
    assert best_child(root, 1.0) is b
    assert best_child(root, 0.0) is a  # exploitation only
    assert selection_score(b, 0, 1.0) == 0.2  # ln N taken as 0 below one parent visit
    leaf = Node(text="c", parent=b)
    b.children = [leaf]
    backpropagate(leaf, -0.5)
    assert (leaf.value, leaf.visits, b.value, b.visits, root.value, root.visits, a.visits) == (-0.5, 1, -0.3, 1, -0.5,
                                                                                                5, 3)


class ScriptedSampler:
    """Returns scripted texts per call (ids = character codes, every token log-prob 0, each ends with eos)."""

    def __init__(self, script):
        self.script, self.calls = list(script), []

    def sample(self, request):
        self.calls.append((list(request.response_ids), request.n, request.key))
        texts = self.script.pop(0)
        n = request.n
        assert len(texts) == n
        return [Sample([ord(c) for c in t] + [-1], [0.0] * (len(t) + 1), True, list(t) + [""]) for t in texts]


def test_scripted_search_values_and_pairs():
    """Three iterations by hand (gold get_time Oslo; every prior is 1):
    1. expand root: a1 '[get_time(city=' (-0.6) -> a2 "'Oslo')]" (-0.4); b1 -> b2 "'Rome')]"; simulate a1 -> a2
       (finished, right: A = 0.25); backprop: a2 -0.15, a1 -0.35, root 0.25.
    2. root has 2 children (not more than num_actions = 2): expand root again: c1 'Hi' (-0.6), d1 -> d2 'Lima';
       simulate a1 (-0.35) -> a2: 0.25 again: a2 0.1 (2 visits), a1 -0.1, root 0.5.
    3. root has 4 > 2 children: select a1 (-0.1/3 + sqrt(ln 2 / 3) = 0.4474 > -0.6 + sqrt(ln 2) = 0.2326), expand
       a1: e "'Rome')]" (-0.4), f "'Lima')]" (-0.4); simulate a2 (0.1): 0.25: a2 0.35, a1 0.15, root 0.75.
    Pairs: root (a1 vs b1: same text, overlap 1 -> dropped) and a1 (a2 "'Oslo')]" 0.35 vs e "'Rome')]" -0.4: kept).
    """
    gold = "[get_time(city='Oslo')]"
    sampler = ScriptedSampler([[gold, "[get_time(city='Rome')]"], ["Hi", "[get_time(city='Lima')]"],
                               ["'Rome')]", "'Lima')]"]])
    search = StepSearch([1], gold, lambda text, fin: letter_confidence(rule_grade(text, gold, fin)),
                        SearchConfig(num_actions=2, mcts_iters=3, depth=3, step_limit=2, max_simulation_steps=2,
                                     max_new_tokens=60), key=("k",))
    root = search.run(sampler)
    a1, b1, c1, d1 = root.children
    a2 = a1.children[0]
    assert [c.text for c in root.children] == ["[get_time(city=", "[get_time(city=", "Hi", "[get_time(city="]
    assert [c.text for c in a1.children] == ["'Oslo')]", "'Rome')]", "'Lima')]"]
    assert root.value == pytest.approx(0.75) and root.visits == 3
    assert (a1.value, a1.visits) == (pytest.approx(0.15), 3) and (a2.value, a2.visits) == (pytest.approx(0.35), 3)
    assert [c.value for c in (b1, c1, d1)] == pytest.approx([-0.6, -0.6, -0.6])
    assert a2.stopped and not a1.stopped and a2.response_text() == gold
    assert sampler.calls[2][0] == [ord(c) for c in "[get_time(city="]  # a1 was expanded from its response so far
    pairs, counts = tree_pairs(root)
    assert counts == {"candidates": 2, "kept": 1, "dropped_value_gap": 0, "dropped_overlap": 1,
                      "dropped_chosen_value": 0}
    (pair,) = pairs
    assert (pair["prefix"], pair["chosen"], pair["rejected"]) == ("[get_time(city=", "'Oslo')]", "'Rome')]")
    assert pair["prefix_ids"] == [ord(c) for c in "[get_time(city="]
    assert pair["chosen_ids"] == [ord(c) for c in "'Oslo')]"] + [-1]  # the final step ends with eos


def test_depth_limit_merges_the_rest_into_one_step():
    gold = "[convert_currency(amount=20, src='USD', dst='EUR')]"
    search = StepSearch([1], gold, lambda t, f: 0.0,
                        SearchConfig(num_actions=2, mcts_iters=1, depth=2, step_limit=1, max_new_tokens=80))
    root = search.run(ScriptedSampler([[gold, "x"]]))
    chain, node = [], root.children[0]
    while True:
        chain.append(node.text)
        if not node.children:
            break
        node = node.children[0]
    # depth 2: steps at depths 1 and 2, everything after in one step at depth 3
    assert chain == ["[convert_currency(", "amount=", "20, src='USD', dst='EUR')]"]


def _tree(node):
    return [(c.text, round(c.value, 12), c.visits, c.stopped, _tree(c)) for c in node.children]


def test_lockstep_searches_equal_searches_run_alone():
    """run_searches batches the requests of several searches; each tree equals the tree of the search run alone
    when it is sent the same samples (here: a sampler keyed by the request)."""
    def texts_for(request):
        prompt = request.prompt_ids[0]
        pool = ["[get_time(city='Oslo')]", "[get_time(city='Rome')]", "Hi", "'Lima')]", "[get_time(city="]
        return [pool[(prompt + len(request.response_ids) + request.key[-1] + j) % len(pool)]
                for j in range(request.n)]

    class Keyed:
        def sample(self, request):
            return [Sample([ord(c) for c in t] + [-1], [-0.1] * (len(t) + 1), True, list(t) + [""])
                    for t in texts_for(request)]

    gold = "[get_time(city='Oslo')]"
    cfg = SearchConfig(num_actions=2, mcts_iters=5, max_new_tokens=60)

    def make(p):
        return StepSearch([p], gold, lambda text, fin: letter_confidence(rule_grade(text, gold, fin)), cfg, key=(p,))

    alone = [make(p).run(Keyed()) for p in range(4)]
    batches = []

    def sample_many(requests):
        batches.append(len(requests))
        return [Keyed().sample(r) for r in requests]

    together = run_searches([make(p) for p in range(4)], sample_many)
    assert [_tree(r) for r in together] == [_tree(r) for r in alone]
    assert batches[0] == 4
    assert len(batches) < sum(batches)  # requests were batched


def test_a_request_below_the_root_gets_the_budget_left_after_the_response_so_far():
    """A node's continuation request: the prompt, the response so far (its path's step tokens), and the token budget
    max_new_tokens minus that response's length; the key counts the search's calls."""
    search = StepSearch([1, 2], "gold", lambda text, finished: 0.0, SearchConfig(max_new_tokens=10), key=("k",))
    first = Node([5, 6, 7], "abc", 0.5, parent=search.root)
    second = Node([8], "d", 0.5, parent=first)
    search.root.children.append(first)
    first.children.append(second)
    request = search._request(second, 2)
    assert (request.prompt_ids, request.response_ids, request.n) == ((1, 2), (5, 6, 7, 8), 2)
    assert request.max_new_tokens == 6 and request.key == ("k", 1)
    assert search._request(search.root, 3).max_new_tokens == 10
