"""Regressions from a second reward-model user's trial (a TRL RewardTrainer user): what was silently different from
TRL or wrong, each now right or loud."""
import json

import pytest
import torch


@pytest.fixture(scope="module")
def tok():
    from preflab.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


def _pair(prompt, chosen, rejected):
    from preflab.data.examples import PairExample

    return PairExample(0, prompt, chosen, rejected)


def test_reward_pairs_are_the_joint_tokenization_of_prompt_and_response_as_trl(tok):
    """A prompt ending in a space ("pick: ") merges with the response's first letter ("Ġa"). TRL's RewardTrainer
    tokenizes prompt + response as one text, and so does a user scoring with AutoModelForSequenceClassification;
    preflab trained on the prompt's own ids + the response tokenized alone (["Ġ", "a"]): another sequence."""
    from preflab.reward_models.data import tokenize_reward_pairs

    (pair,), _ = tokenize_reward_pairs([_pair("pick: ", "apple", "banana")], tok)
    for side, text in ((pair.chosen_ids, "apple"), (pair.rejected_ids, "banana")):
        assert pair.prompt_ids + side == tok("pick: " + text + tok.eos_token)["input_ids"]


def test_a_reward_judge_scores_the_ids_a_plain_transformers_user_scores(tok, tmp_path):
    """load_judge(...).score and AutoModelForSequenceClassification on tokenizer(prompt + response + eos) agree, also
    where a token spans the prompt/response boundary."""
    from transformers import AutoModelForSequenceClassification

    from preflab.reward_models.heads import build_reward_model, set_reward_config
    from preflab.reward_models.interface import load_judge

    model = build_reward_model("builtin:tiny-llama", 1, tok, seed=0)
    set_reward_config(model, {"head": "bt", "tau": 1.0})
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    prompts, responses = ["pick: ", "say "], ["apple", "hello there"]
    judged = load_judge(str(tmp_path)).score(prompts, responses)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = [plain(torch.tensor([tok(p + r + tok.eos_token)["input_ids"]])).logits[0, 0].item()
                    for p, r in zip(prompts, responses)]
    torch.testing.assert_close(judged, torch.tensor(expected), rtol=0, atol=1e-6)
