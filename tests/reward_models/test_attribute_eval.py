"""Held-out evaluation of DPA attribute reward models (preflab.reward_models.attribute_eval): on a hand-set model
whose outputs are token counts, every metric equals a number computed by hand; bad rows name file, row and field."""
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from preflab.errors import DataError
from preflab.models.tiny import tiny_tokenizer
from preflab.reward_models.attribute_eval import evaluate_attribute_model

ATTRS = ["helpfulness", "verbosity"]


class CountingRewardModel(nn.Module):
    """Hand-set attribute model: r(x, y) = (number of 'x' tokens, number of 'y' tokens) in prompt + response (the
    tiny tokenizer gives ' x' as the two tokens 'Ġ', 'x'; the prompts below hold neither letter)."""

    def __init__(self, tokenizer):
        super().__init__()
        table = torch.zeros(len(tokenizer), 2)
        table[tokenizer.convert_tokens_to_ids("x"), 0] = 1.0
        table[tokenizer.convert_tokens_to_ids("y"), 1] = 1.0
        self.table = nn.Parameter(table, requires_grad=False)
        self.config = SimpleNamespace(preflab_reward={"head": "multi_objective", "attributes": ATTRS},
                                      max_position_embeddings=64)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return SimpleNamespace(logits=(self.table[input_ids] * mask[..., None]).sum(1))


def _rated(prompt, response, helpfulness, verbosity):
    return {"prompt": prompt, "response": response, "ratings": {"helpfulness": helpfulness, "verbosity": verbosity}}


# outputs (x count, y count), ratings, errors (output - rating)
RATED = [
    _rated("q?", " x x y", 3, 1),      # (2, 1): errors (-1, 0)
    _rated("q?", " x", 1, 2),          # (1, 0): errors (0, -2)
    _rated("q?", " y y", 2, None),     # (0, 2): errors (-2, -)
    _rated("r?", " x y", 0, 1),        # (1, 1): errors (1, 0)
    _rated("r?", " y", None, 4),       # (0, 1): errors (-, -3)
    _rated("r?", " x x", 0, None),     # (2, 0): errors (2, -)
]
PAIRS = [
    {"prompt": "q?", "chosen": " x x", "rejected": " y", "direction": [1, 0]},                     # 2 vs 0: right
    {"prompt": "q?", "chosen": " x x", "rejected": " y", "direction": {"verbosity": 1}},           # 0 vs 1: wrong
    {"prompt": "q?", "chosen": " x y y", "rejected": " x x", "direction": [0.5, 0.5]},             # 1.5 vs 1: right
    {"prompt": "r?", "chosen": " x", "rejected": " y", "direction": {"helpfulness": 1, "verbosity": 1}},  # tie: wrong
]


def test_every_metric_equals_the_hand_computed_value():
    tokenizer = tiny_tokenizer()
    result = evaluate_attribute_model(CountingRewardModel(tokenizer), RATED + PAIRS, tokenizer, batch_size=3)
    assert result["num_rated_rows"] == 6 and result["num_pairs"] == 4
    # helpfulness errors -1, 0, -2, 1, 2 (5 rated); verbosity errors 0, -2, 0, -3 (4 rated)
    assert result["mse/helpfulness"] == pytest.approx(10 / 5) and result["mae/helpfulness"] == pytest.approx(6 / 5)
    assert result["mse/verbosity"] == pytest.approx(13 / 4) and result["mae/verbosity"] == pytest.approx(5 / 4)
    assert result["mse"] == pytest.approx(23 / 9) and result["mae"] == pytest.approx(11 / 9)
    # helpfulness, prompt q?: (3 > 1, 2 > 1) right, (3 > 2, 2 > 0) right, (1 < 2, 1 > 0) wrong; prompt r?: rows 4 and
    # 6 rate 0 and 0 (tied, no pair), row 5 does not rate it
    assert result["ranking_accuracy/helpfulness"] == pytest.approx(2 / 3)
    # verbosity, q?: (1 < 2, 1 > 0) wrong; r?: (1 < 4, outputs 1 = 1) a tie, wrong
    assert result["ranking_accuracy/verbosity"] == 0.0
    assert result["ranking_accuracy"] == pytest.approx(2 / 5)
    assert result["counts"] == {"ratings/helpfulness": 5, "ratings/verbosity": 4, "ranking_pairs/helpfulness": 3,
                                "ranking_tied_ratings/helpfulness": 1, "ranking_pairs/verbosity": 2,
                                "ranking_tied_ratings/verbosity": 0}
    assert result["direction_accuracy"] == 0.5
    assert result["direction_margin"] == pytest.approx((2 - 1 + 0.5 + 0) / 4)
    assert result["per_direction"] == {"[1.0, 0.0]": {"accuracy": 1.0, "num_pairs": 1, "label": "0deg"},
                                       "[0.0, 1.0]": {"accuracy": 0.0, "num_pairs": 1, "label": "90deg"},
                                       "[0.5, 0.5]": {"accuracy": 1.0, "num_pairs": 1, "label": "[0.5,0.5]"},
                                       "[1.0, 1.0]": {"accuracy": 0.0, "num_pairs": 1, "label": "[1,1]"}}
    assert result["skipped"] == {} and result["truncated"] == {"prompt": 0, "response": 0}


def test_the_metrics_do_not_depend_on_the_batch_size_or_on_which_rows_share_a_file():
    """Padding (batch 1 vs 4) changes nothing; the rated rows alone and the pairs alone give the same numbers as the
    mixed rows."""
    tokenizer = tiny_tokenizer()
    model = CountingRewardModel(tokenizer)
    mixed = evaluate_attribute_model(model, PAIRS[:2] + RATED + PAIRS[2:], tokenizer, batch_size=1)
    rated = evaluate_attribute_model(model, RATED, tokenizer, batch_size=4)
    pairs = evaluate_attribute_model(model, PAIRS, tokenizer, batch_size=4)
    assert {k: v for k, v in mixed.items() if k.startswith(("mse", "mae", "ranking"))} == \
        {k: v for k, v in rated.items() if k.startswith(("mse", "mae", "ranking"))}
    assert (mixed["direction_accuracy"], mixed["direction_margin"]) == \
        (pairs["direction_accuracy"], pairs["direction_margin"])
    assert "direction_accuracy" not in rated and "mse" not in pairs and pairs["num_rated_rows"] == 0


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row, field, said", [
    ({"prompt": "q?", "chosen": " x", "rejected": " y"}, "direction", "the field 'direction' is missing"),
    ({"prompt": "q?", "chosen": " x", "rejected": " y", "direction": {"helpfulnes": 1}}, "direction.helpfulnes",
     "a misspelt 'helpfulness'"),
    ({"prompt": "q?", "chosen": " x", "rejected": " y", "direction": [1, 0, 0]}, "direction",
     "the direction has 3 weights; the model has 2 attributes"),
    ({"prompt": "q?", "chosen": " x", "rejected": " y", "direction": [1, "a"]}, "direction[1]",
     "the weight 'a' is not a finite number"),
    ({"prompt": "q?", "chosen": " x", "rejected": " y", "direction": [0, 0]}, "direction", "every weight is 0"),
    ({"prompt": "q?", "chosen": " x", "rejected": " x", "direction": [1, 0]}, "rejected", "the same response"),
    ({"prompt": "q?", "response": " x", "ratings": {"helpfulness": "high"}}, "helpfulness", "is not a finite number"),
    ({"prompt": "q?", "ratings": {"helpfulness": 1}}, "response", "the field 'response' is missing"),
])
def test_a_bad_row_is_an_error_naming_file_row_and_field(tmp_path, row, field, said):
    tokenizer = tiny_tokenizer()
    data = _write(tmp_path / "held.jsonl", [RATED[0], row, PAIRS[0]])
    with pytest.raises(DataError) as err:
        evaluate_attribute_model(CountingRewardModel(tokenizer), str(data), tokenizer)
    assert f"held.jsonl row 1 (line 2), field '{field}'" in str(err.value) and said in str(err.value)


def test_skipped_rows_are_counted_and_the_first_is_named(tmp_path):
    tokenizer = tiny_tokenizer()
    bad = [{"prompt": "q?", "chosen": " x", "rejected": " y"}, {"prompt": "q?", "response": " x", "ratings": {}}]
    data = _write(tmp_path / "held.jsonl", RATED + bad + PAIRS)
    result = evaluate_attribute_model(CountingRewardModel(tokenizer), str(data), tokenizer, on_bad_row="skip")
    full = evaluate_attribute_model(CountingRewardModel(tokenizer), RATED + PAIRS, tokenizer)
    assert result["skipped"] == {"missing_direction": 1, "unrated": 1}
    assert "line 7, field 'direction'" in result["first_skipped"]
    assert result["mse"] == full["mse"] and result["direction_accuracy"] == full["direction_accuracy"]
    with pytest.raises(DataError, match="no row left to score.*First skipped: line 1, field 'direction'"):
        evaluate_attribute_model(CountingRewardModel(tokenizer), str(_write(tmp_path / "bad.jsonl", bad)), tokenizer,
                                 on_bad_row="skip")


def test_ranking_pairs_equal_a_loop_over_every_pair_in_any_block_size(monkeypatch):
    """ranking_pairs counts ordered pairs in blocks of rows; a plain loop over unordered pairs gives the same counts
    (integer ratings, so ties occur; some ratings unobserved), with one-row blocks too."""
    from itertools import combinations

    from preflab.reward_models import attribute_eval

    gen = torch.Generator().manual_seed(0)
    n = 40
    outputs = torch.randint(0, 4, (n, 2), generator=gen).double()  # ties in the outputs too
    targets = torch.randint(0, 3, (n, 2), generator=gen).double()
    observed = torch.rand(n, 2, generator=gen) > 0.2
    prompts = [f"p{int(i)}" for i in torch.randint(0, 5, (n,), generator=gen)]
    expected = {}
    for a, name in enumerate(ATTRS):
        right = formed = tied = 0
        for i, j in combinations(range(n), 2):
            if prompts[i] != prompts[j] or not (observed[i, a] and observed[j, a]):
                continue
            if targets[i, a] == targets[j, a]:
                tied += 1
                continue
            formed += 1
            right += float((outputs[i, a] - outputs[j, a]) * (targets[i, a] - targets[j, a])) > 0
        expected[name] = (right / formed, formed, tied)
    for block in (1024, 1, 7):
        monkeypatch.setattr(attribute_eval, "RANKING_BLOCK", block)
        metrics, counts = attribute_eval.ranking_pairs(outputs, targets, observed, prompts, ATTRS)
        for name in ATTRS:
            assert (metrics[f"ranking_accuracy/{name}"], counts[f"ranking_pairs/{name}"],
                    counts[f"ranking_tied_ratings/{name}"]) == pytest.approx(expected[name]), (block, name)
