"""FSPO (arXiv:2502.19312): episode builder invariants, the text data path, the spec's 2-user closed form, and
few-shot conditioning recovering held-out users' planted preference directions (feature level)."""
import pytest
import torch

from preflab.data.rows import load_rows
from preflab.data.tokenize import tokenize_pairs
from preflab.errors import ConfigError, DataError
from preflab.models.tiny import tiny_tokenizer
from preflab.objectives import PairBatch, get_objective
from preflab.reward_models.fewshot_episodes import DEFAULT_INSTRUCTION, build_episodes, plan_episodes, user_pairs
from preflab.reward_models.fewshot_scorer import FewShotPairScorer, episode_tensors, fit_fewshot_scorer


def text_users(num_users=3, rows=6):
    """User u prefers the short answer when u is even, the long one when u is odd."""
    out = []
    for u in range(num_users):
        for i in range(rows):
            short, long = f"answer {i}", f"answer {i} with many more words to read"
            good, bad = (short, long) if u % 2 == 0 else (long, short)
            out.append({"user_id": f"user{u}", "prompt": f"question {i} ?", "chosen": good, "rejected": bad})
    return out


def test_episode_invariants_hold_for_every_episode():
    rows = text_users()
    pairs = user_pairs(rows)
    episodes, report = build_episodes(rows, shots=3, passes=2, seed=0)
    assert report.episodes == len(episodes) == 2 * 18 and report.truncated_episodes == 0
    per_pass_queries = {}
    for ep in episodes:
        query = pairs[ep["query_row"]]
        shots = [pairs[i] for i in ep["shot_rows"]]
        assert len(shots) == 3 and all(s.user_id == query.user_id == ep["user_id"] for s in shots)
        assert ep["query_row"] not in ep["shot_rows"] and all(s.prompt != query.prompt for s in shots)
        assert ep["chosen"] == f"## Preferred Response \n{query.chosen}\n"
        assert ep["rejected"] == f"## Preferred Response \n{query.rejected}\n"
        assert ep["prompt"].endswith(f"# Task\n{DEFAULT_INSTRUCTION}\n## Question \n{query.prompt}\n")
        for i, s in enumerate(shots, 1):
            assert f"# Example {i}\n## Question \n{s.prompt}\n## Preferred Response \n{s.chosen}\n" in ep["prompt"]
        per_pass_queries.setdefault(ep["query_row"], 0)
        per_pass_queries[ep["query_row"]] += 1
    assert set(per_pass_queries.values()) == {2}  # each row is a query exactly once per pass
    assert report.label_consistency == {"user0": None, "user1": None, "user2": None}


def test_episode_text_is_the_released_code_shots_to_text():
    """Byte for byte what FSPO's preference_datasets.py `shots_to_text` (include_dispreferred=True, no persona)
    returns for 2 shots: headers end in a space, a blank line closes each example, texts are stripped, and both
    completions start with the "## Preferred Response " header and end in a newline (the old builder put the header
    at the end of the prompt, without the space, and returned the bare responses)."""
    rows = [{"user_id": "u", "prompt": " q0 ", "chosen": "a0", "rejected": "b0 "},
            {"user_id": "u", "prompt": "q1", "chosen": " a1", "rejected": "b1"},
            {"user_id": "u", "prompt": "q2", "chosen": "a2", "rejected": "b2"}]
    episodes, _ = build_episodes(rows, shots=2, seed=0)
    ep = next(e for e in episodes if e["query_row"] == 2)
    s1, s2 = (rows[i] for i in ep["shot_rows"])
    strip = str.strip
    expected = (f"# Example 1\n## Question \n{strip(s1['prompt'])}\n## Preferred Response \n{strip(s1['chosen'])}\n"
                f"## Dispreferred Response \n{strip(s1['rejected'])}\n\n"
                f"# Example 2\n## Question \n{strip(s2['prompt'])}\n## Preferred Response \n{strip(s2['chosen'])}\n"
                f"## Dispreferred Response \n{strip(s2['rejected'])}\n\n"
                "# Task\nGiven the examples above, generate a preferred response to the following question.\n"
                "## Question \nq2\n")
    assert ep["prompt"] == expected
    assert (ep["chosen"], ep["rejected"]) == ("## Preferred Response \na2\n", "## Preferred Response \nb2\n")
    with pytest.raises(DataError, match="row 1, field 'rejected'"):  # equal once stripped: refused, not trained on
        build_episodes([rows[0], {"user_id": "u", "prompt": "q1", "chosen": "a1", "rejected": " a1\n"}], shots=1)
    assert "## Question \nq0\n## Preferred Response \na0\n## Dispreferred Response \nb0\n\n" in (
        next(e for e in episodes if 0 in e["shot_rows"])["prompt"])


def test_episodes_go_through_the_pairwise_data_path():
    episodes, _ = build_episodes(text_users(), shots=2, seed=1)
    examples, data_report = load_rows(episodes, kind="pairwise")
    assert data_report.kept == len(episodes) and examples[0].extras["user_id"] == episodes[0]["user_id"]
    assert examples[0].extras["shot_rows"] == episodes[0]["shot_rows"]
    tok = tiny_tokenizer("char")
    tokenized, tok_report = tokenize_pairs(examples, tok, max_length=None)
    assert len(tokenized) == len(episodes)
    first = tokenized[0]
    query_text = episodes[0]["prompt"].rsplit("## Question ", 1)[1]
    assert tok.decode(first.prompt_ids, skip_special_tokens=True).endswith(query_text)
    assert tok.decode(first.chosen_ids, skip_special_tokens=True).startswith(episodes[0]["chosen"])


def test_token_budget_drops_shots_never_the_query():
    rows = text_users(num_users=1, rows=8)
    tok = tiny_tokenizer("char")
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    full, _ = build_episodes(rows, shots=4, seed=0)
    budget = count(full[0]["prompt"]) - 1
    cut, report = build_episodes(rows, shots=4, min_shots=1, max_prompt_length=budget, length_fn=count, seed=0)
    assert report.truncated_episodes >= 1 and all(count(e["prompt"]) <= budget for e in cut)
    assert all(e["prompt"].endswith(f"## Question \n{rows[e['query_row']]['prompt']}\n") for e in cut)
    assert all(len(e["shot_rows"]) >= 1 for e in cut)
    tiny, report = build_episodes(rows, shots=4, min_shots=1, max_prompt_length=50, seed=0)
    assert tiny == [] and report.dropped_episodes["too_long"] == 8


def test_a_bool_label_of_an_xy_row_is_refused_not_read_as_one():
    """label: true passed `label in (0, 1)` and made response_y the chosen one, silently (which side is "true"?)."""
    with pytest.raises(DataError, match=r"^row 0, field 'label': must be 0 \(response_x preferred\) or 1, got True"):
        user_pairs([{"user_id": 1, "prompt": "q", "response_x": "a", "response_y": "b", "label": True}])

def test_row_forms_validation_and_consistency_report():
    pairs = user_pairs([{"user_id": 1, "prompt": "q", "response_x": "a", "response_y": "b", "label": 1}])
    assert (pairs[0].chosen, pairs[0].rejected) == ("b", "a")
    with pytest.raises(DataError, match=r"row 1, field 'rejected'"):
        user_pairs([{"user_id": 1, "prompt": "q", "chosen": "a", "rejected": "b"},
                    {"user_id": 1, "prompt": "q", "chosen": "a"}])
    with pytest.raises(DataError, match="label"):
        user_pairs([{"user_id": 1, "prompt": "q", "response_x": "a", "response_y": "b", "label": 2}])
    with pytest.raises(ConfigError):
        plan_episodes([0, 0], shots=0)
    rows = [{"user_id": "u", "prompt": "q", "chosen": "a", "rejected": "b"}] * 3 + \
           [{"user_id": "u", "prompt": "q", "chosen": "b", "rejected": "a"}, {"user_id": "v", "prompt": "q2",
                                                                              "chosen": "a", "rejected": "b"}]
    episodes, report = build_episodes(rows, shots=1)
    assert report.label_consistency == {"u": 0.75, "v": None}
    assert report.skipped_users == {"v": "1 rows < min_shots + 1 = 2"}
    assert episodes == [] and report.dropped_episodes["too_few_shots"] == 4  # user u has a single prompt


def test_context_separates_users_that_a_context_free_policy_cannot():
    """Spec #15 closed form: two users with opposite labels on the same pairs. Tabular IPO (beta = 0.01) keyed by
    the query prompt must settle at gap 0 (accuracy 1/2); keyed by the episode prompt it reaches 1/(2 beta) = 50."""
    rows = [{"user_id": u, "prompt": f"q{i}", "chosen": a if u == "A" else b, "rejected": b if u == "A" else a}
            for u in ("A", "B") for i in range(4) for a, b in [(f"short {i}", f"long {i}")]]
    episodes, _ = build_episodes(rows, shots=2, seed=0)
    ipo = get_objective("ipo", beta=0.01, token_agg="sum")

    def fit(key):
        keys = sorted({key(e) for e in episodes})
        table = torch.zeros(len(keys), dtype=torch.float64, requires_grad=True)  # h(short) - h(long) per key
        idx = torch.tensor([keys.index(key(e)) for e in episodes])
        sign = torch.tensor([1.0 if rows[e["query_row"]]["chosen"].startswith("short") else -1.0 for e in episodes],
                            dtype=torch.float64)
        zeros = torch.zeros(len(episodes), dtype=torch.float64)
        opt = torch.optim.LBFGS([table], max_iter=100, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = ipo(PairBatch.from_sums(sign * table[idx], zeros, zeros, zeros)).loss
            loss.backward()
            return loss

        opt.step(closure)
        return (sign * table[idx]).detach()

    context_free = fit(lambda e: rows[e["query_row"]]["prompt"])
    conditioned = fit(lambda e: e["prompt"])
    assert torch.allclose(context_free, torch.zeros_like(context_free), atol=1e-6)
    assert torch.allclose(conditioned, torch.full_like(conditioned, 50.0), atol=1e-6)
    assert len({e["prompt"] for e in episodes}) == len(episodes)  # the two users' episodes never share a prompt


def planted_users(seed, num_users, pairs=30, dim=4, scale=4.0):
    """Each user has a preference direction w_u uniform on the sphere; BT-sampled labels on Gaussian features."""
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.functional.normalize(torch.randn(num_users, dim, generator=g), dim=1)
    user = torch.arange(num_users).repeat_interleave(pairs)
    a, b = torch.randn(len(user), dim, generator=g), torch.randn(len(user), dim, generator=g)
    first = torch.rand(len(user), generator=g) < torch.sigmoid(scale * ((a - b) * w[user]).sum(1))
    return torch.where(first[:, None], a, b), torch.where(first[:, None], b, a), user, w


def held_out_agreement(shots):
    """Train on 60 users, test on 40 new users (new directions): agreement of the predicted preference with the
    held-out user's planted direction on each query pair, for the conditioned model and the unconditioned one."""
    chosen, rejected, user, _ = planted_users(0, 60)
    episodes, _, _ = plan_episodes(user.tolist(), shots=shots, seed=0)
    train = episode_tensors(chosen, rejected, episodes)
    conditioned, baseline = FewShotPairScorer(4), FewShotPairScorer(4, conditioned=False)
    fit_fewshot_scorer(conditioned, *train, steps=200)
    fit_fewshot_scorer(baseline, *train, steps=200)
    t_chosen, t_rejected, t_user, t_w = planted_users(1, 40)
    t_episodes, _, _ = plan_episodes(t_user.tolist(), shots=shots, seed=1)
    test = episode_tensors(t_chosen, t_rejected, t_episodes)
    query, query_user = torch.tensor([e.query for e in t_episodes]), torch.tensor([e.user_id for e in t_episodes])
    planted = ((t_chosen - t_rejected)[query] * t_w[query_user]).sum(1) > 0
    with torch.no_grad():
        agree = lambda m: ((m(*test) > 0) == planted).float().mean().item()  # noqa: E731
        return agree(conditioned), agree(baseline), conditioned.W.detach()


def test_few_shot_conditioning_recovers_held_out_users_preferences():
    cond8, base8, W = held_out_agreement(8)
    cond1, _, _ = held_out_agreement(1)
    # measured: conditioned 0.824 (8 shots) / 0.618 (1 shot); unconditioned 0.482; the 8-shot mean-difference
    # estimator with the true map W = I scores 0.821, so the learned scorer is at that ceiling
    assert cond8 > 0.75 and base8 < 0.6 and cond8 - base8 > 0.2
    assert cond8 > cond1 + 0.1  # more of the user's examples, better personalization
    off_diagonal = W - torch.diag(W.diag())
    assert (W.diag() > 0).all() and off_diagonal.abs().max() < 0.3 * W.diag().min()  # learned W ~ c I
