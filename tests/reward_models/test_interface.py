"""The judge interface: P + P^T = 1 for every preference model, symmetrisation by hand, BT transitivity, a tabular
oracle, and the judge tokenizing exactly as training does."""
import math

import pytest
import torch

from preflab.errors import ConfigError
from preflab.reward_models.interface import (BTPreference, MatrixPreference, PreferenceModel, RewardFunction, RewardModel,
                                      SymmetrizedPreference)


class TableReward:
    """r(x, y) = table[y] (prompts ignored)."""

    def __init__(self, table):
        self.table = table

    def score(self, prompts, responses):
        return torch.tensor([self.table[r] for r in responses], dtype=torch.float64)


NAMES = ["a", "b", "c", "d", "e"]


def test_bt_preference_is_complementary_and_transitive():
    g = torch.Generator().manual_seed(0)
    reward = TableReward(dict(zip(NAMES, torch.randn(5, generator=g, dtype=torch.float64).tolist())))
    pm = BTPreference(reward, tau=0.7)
    assert isinstance(reward, RewardFunction) and isinstance(pm, PreferenceModel)
    p = pm.win_rate_matrix("x", NAMES)
    torch.testing.assert_close(p + p.T, torch.ones(5, 5, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.equal(torch.diagonal(p), torch.full((5,), 0.5, dtype=torch.float64))
    for i in range(5):
        for j in range(5):
            for k in range(5):
                if p[i, j] > 0.5 and p[j, k] > 0.5:
                    assert p[i, k] > 0.5
    assert pm.prefer(["x"], ["a"], ["c"]).item() == pytest.approx(p[0, 2].item(), abs=1e-12)


def test_symmetrization_removes_a_positional_bias():
    r = {"a": 1.0, "b": 0.0, "c": 0.0}

    def biased(prompts, a, b):  # prefers whatever is shown first by +0.5 logits
        return torch.tensor([1 / (1 + math.exp(-(r[x] - r[y] + 0.5))) for x, y in zip(a, b)], dtype=torch.float64)

    pm = SymmetrizedPreference(biased)
    # (sigma(1.5) + 1 - sigma(-0.5)) / 2
    assert pm.prefer(["x"], ["a"], ["b"]).item() == pytest.approx(0.720016, abs=1e-6)
    assert pm.prefer(["x"], ["b"], ["c"]).item() == pytest.approx(0.5, abs=1e-12)  # the bias is gone
    p = pm.win_rate_matrix("x", ["a", "b", "c"])
    torch.testing.assert_close(p + p.T, torch.ones(3, 3, dtype=p.dtype), atol=1e-6, rtol=0)


def test_matrix_preference_on_the_cyclic_game():
    m = torch.tensor([[0, 1, -2], [-1, 0, 3], [2, -3, 0]], dtype=torch.float64)
    pm = MatrixPreference(0.5 + m / 6, ["r", "p", "s"])
    assert pm.prefer(["x"], ["r", "p", "s"], ["p", "s", "r"]).tolist() == pytest.approx([2 / 3, 1.0, 5 / 6])
    torch.testing.assert_close(pm.win_rate_matrix("x", ["s", "r"]),
                               torch.tensor([[0.5, 5 / 6], [1 / 6, 0.5]], dtype=torch.float64))
    with pytest.raises(ConfigError, match="P \\+ P\\^T = 1"):
        MatrixPreference([[0.5, 0.9], [0.3, 0.5]], ["a", "b"])


def test_judge_scores_equal_the_training_forward():
    """RewardModel.score tokenizes one (prompt, response) at a time; it must equal the rewards the training loss
    sees for the same rows (tokenized as pairs, right-padded in a batch)."""
    from preflab.data.rows import load_rows
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.data import tokenize_reward_pairs
    from preflab.reward_models.eval import pair_outputs
    from preflab.reward_models.heads import build_reward_model

    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-qwen2", 1, tok, seed=3).eval()
    rows = [{"prompt": "the cat", "chosen": " sat on the mat", "rejected": " ran"},
            {"prompt": "what is two plus three ?", "chosen": " five", "rejected": " the answer is eight"},
            {"prompt": [{"role": "user", "content": "hello"}], "chosen": [{"role": "assistant", "content": "hi"}],
             "rejected": [{"role": "assistant", "content": "hello world !"}]}]
    pairs, _ = tokenize_reward_pairs(load_rows(rows)[0], tok)
    out_c, out_r = pair_outputs(model, pairs, tok.pad_token_id, batch_size=3)
    judge = RewardModel(model, tok)
    prompts = [r["prompt"] for r in rows]
    torch.testing.assert_close(judge.score(prompts, [r["chosen"] for r in rows]), out_c[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(judge.score(prompts, [r["rejected"] for r in rows]), out_r[:, 0], atol=1e-5, rtol=0)
    two = RewardModel(build_reward_model("builtin:tiny-qwen2", 2, tok), tok)
    with pytest.raises(ConfigError, match="direction="):
        two.score(prompts[:1], ["x"])


def test_bt_log_odds_are_exact_where_the_probability_saturates():
    """GPO reads log(P / (1 - P)) = (r_i - r_j) / tau; computing it as logit(sigmoid(.)) loses it once P rounds to 1
    (here r differs by 80 / tau = 0.5: P = 1.0 exactly in float64, the log-odds 160 are kept)."""
    pm = BTPreference(TableReward({"a": 80.0, "b": 0.0, "c": -1.0}), tau=0.5)
    T = pm.log_odds_matrix("x", ["a", "b", "c"])
    assert T.tolist() == [[0.0, 160.0, 162.0], [-160.0, 0.0, 2.0], [-162.0, -2.0, 0.0]]
    assert pm.win_rate_matrix("x", ["a", "b", "c"])[0, 1].item() == 1.0
    torch.testing.assert_close(pm.win_rate_matrix("x", ["b", "c"]), torch.sigmoid(T[1:, 1:]), atol=0, rtol=0)


def test_every_win_rate_matrix_entry_is_prefer_of_that_ordered_pair():
    """P[i, j] = P(y_i > y_j | x) = prefer(x, y_i, y_j): P + P^T = 1 holds for the transposed matrix too, so the
    entries are checked against prefer, for the symmetrised judge (its pairs asked once, i < j) and a GPM judge at
    tau != 1 (the score table divided by the head's tau, as prefer is)."""
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.gpm import GPMHead
    from preflab.reward_models.heads import build_reward_model
    from preflab.reward_models.interface import GPMPreference

    r = {"a": 1.0, "b": 0.0, "c": -0.5}

    def biased(prompts, a, b):  # prefers whatever is shown first by +0.5 logits
        return torch.tensor([1 / (1 + math.exp(-(r[x] - r[y] + 0.5))) for x, y in zip(a, b)], dtype=torch.float64)

    sym = SymmetrizedPreference(biased)
    p = sym.win_rate_matrix("x", ["a", "b", "c"])
    sigma = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert p[0, 1].item() == pytest.approx((sigma(1.5) + 1 - sigma(-0.5)) / 2, abs=1e-6)  # a over b: 0.720016
    assert p[1, 0].item() == pytest.approx(1 - p[0, 1].item(), abs=1e-6) and p[1, 1].item() == 0.5
    for i, x in enumerate("abc"):
        for j, y in enumerate("abc"):
            if i != j:
                assert p[i, j].item() == pytest.approx(sym.prefer(["x"], [x], [y]).item(), abs=1e-6)

    tok = tiny_tokenizer()
    gpm = GPMPreference(build_reward_model("builtin:tiny-llama", 4, tok, seed=0), tok, head=GPMHead(dim=4, tau=0.5))
    texts = [" sat on the mat", " ran", " the park"]
    w, log_odds = gpm.win_rate_matrix("the cat", texts), gpm.log_odds_matrix("the cat", texts)
    for i in range(3):
        for j in range(3):
            if i != j:
                one = gpm.prefer(["the cat"], [texts[i]], [texts[j]])
                torch.testing.assert_close(w[i, j], one[0], atol=1e-6, rtol=0)
                torch.testing.assert_close(log_odds[i, j], torch.logit(one[0].double()).float(), atol=1e-4, rtol=0)


def test_a_two_output_head_not_labelled_multi_objective_is_refused_as_a_judge(tmp_path):
    """The one-score check reads the head's width, not only its label: a 2-output `bt` model loaded as a judge
    would stop the run at its first judged round; it is refused when loaded, and scores along a direction."""
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.heads import build_reward_model, set_reward_config
    from preflab.reward_models.interface import RewardModel, load_judge

    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-llama", 2, tok, seed=0)
    set_reward_config(model, {"head": "bt", "tau": 1.0})
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"is a multi-output reward model \(2 outputs\), not a one-score judge"):
        load_judge(str(tmp_path))
    raw = RewardModel(model, tok).outputs(["a"], [" b"])
    torch.testing.assert_close(load_judge(str(tmp_path), direction=[1.0, -1.0]).score(["a"], [" b"]),
                               raw[:, 0] - raw[:, 1], atol=1e-6, rtol=0)
