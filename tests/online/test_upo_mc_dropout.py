"""trainer upo, upo_uncertainty: mc_dropout (src/preflab/online/upo.py): the BALD passes are dropout passes of the
reward model (the paper's MC-dropout estimator) instead of one pass per judge."""
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from preflab.errors import ConfigError
from preflab.loops.pair_builders import build_pairs
from preflab.online.upo import dropout_estimator, dropout_pass_rewards, pass_probs, upo_examples
from preflab.reward_models.uncertainty import select_reliable_pairs

sys.path.insert(0, str(Path(__file__).parent))


class LengthRewardModel:
    """A reward model judge: reward = MLP(one-hot of the text length), with a Dropout of probability p."""

    def __init__(self, p: float, seed: int = 0):
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Dropout(p), nn.Linear(32, 1)).eval()
        self.__name__ = f"length_rm_p{p}"

    def score(self, prompts, responses):
        x = nn.functional.one_hot(torch.tensor([min(len(r), 15) for r in responses]), 16).float()
        with torch.no_grad():
            return self.model(x).squeeze(-1)


def _cfg(**kw):
    base = {"upo_fraction": 0.5, "upo_mu": 1.0, "upo_selection": "lowest", "upo_temperature": 0.1,
            "upo_alpha_max": 0.1}
    return SimpleNamespace(**{**base, **kw})


TEXTS = ["a", "bb", "ccc", "dddd", "e", "ffffff", "ggggggggg", "hh"]   # 2 prompts x K = 4 completions


def _round(rm, passes, seed=5):
    per_pass = dropout_pass_rewards(rm, ["p"] * len(TEXTS), TEXTS, passes, seed).view(2, 4, passes)
    scores = rm.score(["p"] * len(TEXTS), TEXTS).double().view(2, 4)   # the judge: the model in eval mode
    rows = [SimpleNamespace(row_id=i, prompt_ids=[1]) for i in range(2)]
    completions = [[[10 * p + k] for k in range(4)] for p in range(2)]
    return per_pass, scores, rows, completions


def test_dropout_zero_gives_equal_passes_zero_bald_and_the_one_judge_selection():
    rm = LengthRewardModel(p=0.0)
    per_pass, scores, rows, completions = _round(rm, passes=6)
    assert torch.equal(per_pass, per_pass[..., :1].expand_as(per_pass))          # every pass the same
    for rule in ("lowest", "sample"):
        cfg = _cfg(upo_selection=rule)
        mc, mc_counts = upo_examples(cfg, rows, completions, scores, per_pass, torch.Generator().manual_seed(1))
        one, _ = upo_examples(cfg, rows, completions, scores, scores.unsqueeze(-1), torch.Generator().manual_seed(1))
        assert mc_counts["upo/bald_mean"] == 0.0 and all(e.extras["alpha"] == 0.0 for e in mc)
        assert [e.completions for e in mc] == [e.completions for e in one]   # = the deterministic T = 1 rule
    # and "lowest" with all B = 0 takes the first ceil(0.5 x #pairs) pairs in the builder's order
    plan = build_pairs(scores, "all_pairs", torch.Generator().manual_seed(1))
    mc, _ = upo_examples(_cfg(), rows, completions, scores, per_pass, torch.Generator().manual_seed(1))
    want = plan.triples[:math.ceil(0.5 * len(plan.triples))]
    assert [(e.completions[0][0], e.completions[1][0]) for e in mc] == \
        [(completions[p][c][0], completions[p][r][0]) for p, c, r in want]


def test_selection_equals_select_reliable_pairs_on_the_dropout_probabilities():
    rm = LengthRewardModel(p=0.5)
    per_pass, scores, rows, completions = _round(rm, passes=10)
    assert not torch.equal(per_pass[..., 0], per_pass[..., 1])                     # dropout is on in the passes
    assert not rm.model.training                                                   # and the mode is restored
    cfg = _cfg(upo_selection="sample", upo_fraction=0.5)
    g = torch.Generator().manual_seed(7)
    examples, counts = upo_examples(cfg, rows, completions, scores, per_pass, g)
    # by hand: the same pairs, the same probabilities, the same seed drawn after the pair plan
    g2 = torch.Generator().manual_seed(7)
    plan = build_pairs(scores, "all_pairs", g2)
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=g2))
    probs = pass_probs(per_pass.double(), plan.triples, 0.1)
    sel = select_reliable_pairs(probs, 0.5, mu=1.0, rule="sample", seed=seed)
    assert float(sel.bald.max()) > 0.01
    want = [plan.triples[j] for j in sel.index.tolist()]
    assert [(e.completions[0][0], e.completions[1][0]) for e in examples] == \
        [(completions[p][c][0], completions[p][r][0]) for p, c, r in want]
    for e, j in zip(examples, sel.index.tolist()):
        assert e.extras["alpha"] == pytest.approx(0.1 * float(sel.bald[j]) / math.log(2), abs=1e-12)
    assert counts["upo/selected"] == len(sel.index) and counts["upo/disagree"] == sel.counts["disagree"]


def test_passes_are_seeded_and_leave_the_global_rng_alone():
    rm = LengthRewardModel(p=0.3)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = dropout_pass_rewards(rm, ["p"] * 4, TEXTS[:4], 3, seed=9)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a, dropout_pass_rewards(rm, ["p"] * 4, TEXTS[:4], 3, seed=9))
    assert not torch.equal(a, dropout_pass_rewards(rm, ["p"] * 4, TEXTS[:4], 3, seed=10))


def test_the_estimator_is_one_reward_model_with_dropout_else_refused():
    rm = LengthRewardModel(p=0.2)
    assert dropout_estimator([lambda prompts, completions, **kw: [0.0] * len(completions), rm]) is rm
    with pytest.raises(ConfigError, match="length_rm_p0.0.*no active dropout"):
        dropout_estimator([LengthRewardModel(p=0.0)])
    with pytest.raises(ConfigError, match="hold 0 .*none"):
        dropout_estimator([lambda prompts, completions, **kw: [0.0] * len(completions)], ["e_judge"])
    with pytest.raises(ConfigError, match="hold 2"):
        dropout_estimator([rm, LengthRewardModel(p=0.1)])


@pytest.mark.slow
def test_online_run_with_mc_dropout_refuses_a_dropout_free_model_and_trains_with_one(tmp_path):
    from test_online_run import tiny_cfg, tiny_run

    cfg = tiny_cfg(tmp_path / "none", trainer="upo", upo_uncertainty="mc_dropout", upo_passes=4, max_steps=2)
    with pytest.raises(ConfigError, match="length_rm_p0.0"):
        tiny_run(cfg, judge=LengthRewardModel(p=0.0))
    run = tiny_run(tiny_cfg(tmp_path / "rm", trainer="upo", upo_uncertainty="mc_dropout", upo_passes=4,
                            max_steps=2, upo_fraction=1.0), judge=LengthRewardModel(p=0.5))
    run.train()
    import json

    rows = [json.loads(x) for x in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    bald = [r["upo/bald_mean"] for r in rows if "upo/bald_mean" in r]
    assert bald and bald[0] > 0   # with one judge and upo_uncertainty: judges every BALD would be 0


class RefusingRewardModel(LengthRewardModel):
    """A reward model judge that raises on any batch holding the text 'BAD' (as a reward model refuses a completion
    that writes a special token)."""

    def score(self, prompts, responses):
        if "BAD" in responses:
            raise ValueError("cannot score 'BAD'")
        return super().score(prompts, responses)


def test_passes_score_only_the_completions_the_round_scored():
    rm = RefusingRewardModel(p=0.4)
    texts = ["a", "BAD", "ccc", "dddd"]
    with pytest.raises(ValueError, match="BAD"):   # the old call: every text scored again
        dropout_pass_rewards(rm, ["p"] * 4, texts, 3, seed=4)
    got = dropout_pass_rewards(rm, ["p"] * 4, texts, 3, seed=4, scored=[True, False, True, True])
    assert bool(got[1].isnan().all()) and not bool(got[[0, 2, 3]].isnan().any())
    # the scored rows are the passes over the scored texts alone, with the same seed (same dropout masks)
    assert torch.equal(got[[0, 2, 3]], dropout_pass_rewards(rm, ["p"] * 3, ["a", "ccc", "dddd"], 3, seed=4))
    # all scored: the same numbers as without the mask; none scored: no call, all NaN
    assert torch.equal(dropout_pass_rewards(rm, ["p"] * 4, TEXTS[:4], 3, 4, scored=[True] * 4),
                       dropout_pass_rewards(rm, ["p"] * 4, TEXTS[:4], 3, 4))
    assert bool(dropout_pass_rewards(rm, ["p"] * 4, texts, 3, 4, scored=[False] * 4).isnan().all())
    # a dropped completion forms no pair: 3 pairs of prompt 0's other three completions, 6 of prompt 1's four
    per_pass = dropout_pass_rewards(rm, ["p"] * 8, TEXTS[:1] + ["BAD"] + TEXTS[2:], 4, 5,
                                    scored=[i != 1 for i in range(8)]).view(2, 4, 4)
    scores = per_pass.nanmean(-1)
    rows = [SimpleNamespace(row_id=i, prompt_ids=[1]) for i in range(2)]
    completions = [[[10 * p + k] for k in range(4)] for p in range(2)]
    examples, counts = upo_examples(_cfg(upo_fraction=1.0), rows, completions, scores, per_pass,
                                    torch.Generator().manual_seed(1))
    assert counts["upo/pairs"] == 9 and counts["upo/unjudged"] == 0 and examples
    assert all([1] not in e.completions for e in examples)
