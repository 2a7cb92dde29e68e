"""trainer upo (src/preflab/online/upo.py): the round keeps the reliable pairs by BALD over the judges, checked
against a hand computation; with one judge it reduces to a sampled share of all pairs with alpha = 0."""
import math
from types import SimpleNamespace

import torch

from preflab.online.upo import upo_examples


def _cfg(**kw):
    base = {"upo_fraction": 0.5, "upo_mu": 1.0, "upo_selection": "lowest", "upo_temperature": 0.1,
            "upo_alpha_max": 0.1}
    return SimpleNamespace(**{**base, **kw})


def _rows(n):
    return [SimpleNamespace(row_id=i, prompt_ids=[1, 2]) for i in range(n)]


def _h(p):  # binary entropy, natural log
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def _bald(*p0):
    mean = sum(p0) / len(p0)
    return _h(mean) - sum(_h(p) for p in p0) / len(p0)


def test_selection_drops_split_votes_and_the_most_uncertain_pairs():
    # one prompt, K = 4 completions, two judges; combined score = their sum: 2.0, 1.5, 1.0, 0.0
    per_judge = torch.tensor([[[1.0, 1.0], [0.5, 1.0], [1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    scores = per_judge.sum(-1)
    completions = [[[10], [11], [12], [13]]]
    examples, counts = upo_examples(_cfg(), _rows(1), completions, scores, per_judge, torch.Generator().manual_seed(0))
    # by hand: 6 ordered pairs; (1, 2) has judge differences (-0.5, +1.0): one vote each -> undecided, dropped.
    # BALD of the other five (temperature 0.1, s = sigmoid):
    s = lambda d: 1 / (1 + math.exp(-d / 0.1))
    b = {(0, 1): _bald(s(0.5), 0.5), (0, 2): _bald(0.5, s(1.0)), (0, 3): _bald(s(1.0), s(1.0)),
         (1, 3): _bald(s(0.5), s(1.0)), (2, 3): _bald(s(1.0), 0.5)}
    # ceil(0.5 x 5) = 3 kept, the lowest BALD: (0, 3) ~ 0, (1, 3) = 0.0086, (0, 1) = 0.1985; the two most uncertain
    # pairs (0, 2) and (2, 3) (one judge indifferent, the other sure: B = 0.2155) are dropped.
    assert sorted(b, key=b.get)[:3] == [(0, 3), (1, 3), (0, 1)]
    assert counts["upo/pairs"] == 6 and counts["upo/undecided"] == 1 and counts["upo/selected"] == 3
    kept = sorted((e.completions[0][0] - 10, e.completions[1][0] - 10) for e in examples)
    assert kept == [(0, 1), (0, 3), (1, 3)]
    for e in examples:
        pair = (e.completions[0][0] - 10, e.completions[1][0] - 10)
        assert math.isclose(e.extras["alpha"], 0.1 * b[pair] / math.log(2), rel_tol=1e-6, abs_tol=1e-9)
        assert e.extras["score_chosen"] > e.extras["score_rejected"]


def test_one_judge_reduces_to_a_share_of_all_pairs_with_no_smoothing():
    per_judge = torch.tensor([[[3.0], [1.0], [2.0]], [[0.0], [0.0], [1.0]]], dtype=torch.float64)
    scores = per_judge.sum(-1)
    completions = [[[1], [2], [3]], [[4], [5], [6]]]
    examples, counts = upo_examples(_cfg(upo_selection="sample"), _rows(2), completions, scores, per_judge,
                                    torch.Generator().manual_seed(0))
    # 3 pairs in prompt 0, 2 in prompt 1 (one tie dropped): ceil(0.5 x 5) = 3 drawn; T = 1 -> BALD 0 -> alpha 0
    assert counts["pairs/ties_dropped"] == 1 and counts["upo/pairs"] == 5 and counts["upo/selected"] == 3
    assert len(examples) == 3 and all(e.extras["alpha"] == 0.0 for e in examples)


def test_a_pair_a_judge_did_not_score_is_dropped_and_counted():
    per_judge = torch.tensor([[[1.0, 1.0], [0.0, float("nan")], [0.5, 0.5]]], dtype=torch.float64)
    scores = per_judge.nansum(-1)
    examples, counts = upo_examples(_cfg(upo_fraction=1.0), _rows(1), [[[1], [2], [3]]], scores, per_judge,
                                    torch.Generator().manual_seed(0))
    assert counts["upo/unjudged"] == 2 and counts["upo/selected"] == 1
    assert [c[0] for c in examples[0].completions] == [1, 3]
