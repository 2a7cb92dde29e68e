"""Per-token implicit rewards (methods/objectives.md §C #10, `token_implicit_reward`): beta (lp_theta[t] - lp_ref[t])
on response tokens only, summing to the sequence reward beta h(y) of the DPO scoring path; `preflab eval
--token-rewards N` writes them into eval.json."""
import pytest
import torch

from preflab.data.layout import pair_sequences, padded
from preflab.eval.metrics import PairScores, pair_diagnostics
from preflab.eval.run import EvalOptions, evaluate_models
from preflab.eval.score import score_pairs, score_token_rewards
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.objectives import get_objective
from preflab.scoring.lm import LogProbScorer, naive_token_logps, split_pairs


class Pair:
    def __init__(self, row_id, prompt_ids, chosen_ids, rejected_ids):
        self.row_id, self.prompt_ids, self.chosen_ids, self.rejected_ids = row_id, prompt_ids, chosen_ids, rejected_ids


PAIRS = [Pair(0, [1, 10, 11], [20, 21, 2], [30, 2]), Pair(1, [1, 12], [40, 41, 42, 43, 2], [44, 2]),
         Pair(5, [1, 13, 14, 15, 16], [50, 2], [51, 52, 53, 2])]


def test_token_rewards_sum_to_the_dpo_scoring_paths_sequence_reward():
    tok = tiny_tokenizer("bytelevel")
    policy, ref = tiny_causal_lm(tok, seed=1), tiny_causal_lm(tok, seed=2)
    beta = 0.3
    # batches of 2 with unequal prompts and responses: padding and prompt positions exist in every batch
    rewards = score_token_rewards(policy, ref, PAIRS, pad_id=0, beta=beta, batch_size=2)
    scores = score_pairs(policy, PAIRS, pad_id=0, ref=ref, batch_size=3)
    # the DPO objective's own implicit rewards on one batch of the trainer's scorer (another path again)
    layout = padded(pair_sequences(PAIRS), 0)
    dpo = get_objective("dpo", beta=beta)(split_pairs(LogProbScorer(policy)(layout), LogProbScorer(ref)(layout)))
    assert [r["row_id"] for r in rewards] == [0, 1, 5]
    for side in ("chosen", "rejected"):
        want = beta * (getattr(scores, f"policy_{side}") - getattr(scores, f"ref_{side}"))
        got = torch.tensor([r[side]["sum"] for r in rewards], dtype=torch.float64)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert got.mean().item() == pytest.approx(dpo.metrics[f"rewards/{side}"].item(), abs=1e-5)
        for r, p in zip(rewards, PAIRS):
            ids = getattr(p, f"{side}_ids")
            # one value per response token, none for prompt or padding: each equals the full-logits path's
            assert r[side]["token_ids"] == ids and len(r[side]["rewards"]) == len(ids)
            one = padded([(p.prompt_ids, ids)], 0)
            naive = beta * (naive_token_logps(policy, one) - naive_token_logps(ref, one))[one.response_mask]
            torch.testing.assert_close(torch.tensor(r[side]["rewards"], dtype=torch.float64), naive.double(),
                                       atol=1e-5, rtol=0)


def test_token_rewards_are_zero_everywhere_when_the_policy_is_the_reference():
    tok = tiny_tokenizer("bytelevel")
    policy = tiny_causal_lm(tok, seed=1)
    for r in score_token_rewards(policy, policy, PAIRS, pad_id=0, beta=0.1, batch_size=2):
        for side in ("chosen", "rejected"):
            assert r[side]["rewards"] == [0.0] * len(r[side]["token_ids"]) and r[side]["sum"] == 0.0


ROWS = [{"prompt": "the cat sat on", "chosen": " the mat", "rejected": " a dog"},
        {"prompt": "hello world ,", "chosen": " preference", "rejected": " the cat"},
        {"prompt": "one two", "chosen": " three", "rejected": " four five"}]


def test_eval_token_rewards_option_writes_the_first_pairs_rewards_beside_their_sequence_reward():
    tok = tiny_tokenizer("bytelevel")
    policy, ref = tiny_causal_lm(tok, seed=1), tiny_causal_lm(tok, seed=2)
    out = evaluate_models(policy, tok, ROWS, ref=ref, options=EvalOptions(token_rewards=2), beta=0.5)
    entries = out["token_rewards"]
    assert [e["row_id"] for e in entries] == [0, 1]
    scores = PairScores.from_lists(out["per_pair"])
    for k, e in enumerate(entries):
        for side in ("chosen", "rejected"):
            s = e[side]
            assert s["tokens"] == tok.convert_ids_to_tokens(s["token_ids"]) and len(s["rewards"]) == len(s["tokens"])
            h = getattr(scores, f"policy_{side}")[k] - getattr(scores, f"ref_{side}")[k]
            assert s["sequence_reward"] == pytest.approx(0.5 * h.item(), abs=1e-12)
            assert sum(s["rewards"]) == pytest.approx(s["sequence_reward"], abs=1e-5)
    # eval.json's rewards/chosen is the mean of the same sequence rewards over all pairs
    assert out["metrics"]["rewards/chosen"] == pytest.approx(
        pair_diagnostics(scores, 0.5)["rewards/chosen"].item(), abs=1e-12)
    # off by default; without a reference there is nothing to compare with, and eval.json says so
    assert "token_rewards" not in evaluate_models(policy, tok, ROWS, ref=ref)
    alone = evaluate_models(policy, tok, ROWS, options=EvalOptions(token_rewards=2))
    assert "token_rewards" not in alone and "reference model" in alone["missing"]["token_rewards"]
