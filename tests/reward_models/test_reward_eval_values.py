"""evaluate_reward_model (reward_models/eval.py) on a reward model whose score is known: the number of real tokens in
the sequence. Ties count as wrong (TRL's accuracy is mean(chosen > rejected)), each subset's accuracy is its own
pairs', rows with an empty subset form no subset, and an in-memory model goes back to the mode it came in."""
from types import SimpleNamespace

import torch
from torch import nn

from preflab.data.rows import load_rows
from preflab.models.tiny import tiny_tokenizer
from preflab.reward_models.data import tokenize_reward_pairs
from preflab.reward_models.eval import evaluate_reward_model


class LengthReward(nn.Module):
    """reward = scale x the number of real tokens (attention_mask's ones)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.config = SimpleNamespace(max_position_embeddings=512)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return SimpleNamespace(logits=(self.scale * mask.sum(-1).float())[:, None])


def _row(chosen_words: int, rejected_words: int, subset: str, i: int) -> dict:
    return {"prompt": f"question {i}", "chosen": " yes" * chosen_words, "rejected": " no" * rejected_words,
            "subset": subset, "id": i}


def test_each_subsets_accuracy_is_its_own_and_an_empty_subset_forms_none():
    rows = [_row(3, 1, "long", 0), _row(4, 2, "long", 1),  # chosen longer: right
            _row(1, 3, "short", 2),                        # chosen shorter: wrong
            _row(5, 1, "", 3)]                             # right, in no subset
    result = evaluate_reward_model(LengthReward(), rows, tokenizer=tiny_tokenizer(), batch_size=2)
    assert result["accuracy"] == 0.75 and result["num_pairs"] == 4
    assert result["per_subset"] == {"long": {"accuracy": 1.0, "num_pairs": 2},
                                    "short": {"accuracy": 0.0, "num_pairs": 1}}


def test_a_tied_pair_counts_as_ranked_wrong_and_the_model_keeps_its_mode():
    model = LengthReward(scale=0.0).train()  # every pair scores 0 - 0: a tie
    result = evaluate_reward_model(model, [_row(3, 1, "a", 0), _row(1, 3, "a", 1)], tokenizer=tiny_tokenizer())
    assert result["accuracy"] == 0.0 and result["mean_logit"] == 0.0
    assert model.training


def test_min_and_max_reward_are_trls_mean_over_eval_batches():
    tok = tiny_tokenizer()
    rows = [_row(3, 1, "a", 0), _row(1, 3, "a", 1), _row(6, 2, "a", 2)]
    pairs, _ = tokenize_reward_pairs(load_rows(rows)[0], tok)
    lengths = [[len(p.prompt_ids) + len(p.chosen_ids), len(p.prompt_ids) + len(p.rejected_ids)] for p in pairs]
    result = evaluate_reward_model(LengthReward(), rows, tokenizer=tok, batch_size=2)
    # batches {0, 1} and {2}: TRL logs the mean of each batch's min / max over both sides
    first, second = lengths[0] + lengths[1], lengths[2]
    assert result["min_reward"] == (min(first) + min(second)) / 2 > min(first + second)  # not the whole set's min
    assert result["max_reward"] == (max(first) + max(second)) / 2
