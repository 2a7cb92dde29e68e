"""FSPO episodes (arXiv:2502.19312; preflab.reward_models.fewshot_episodes) by value: which rows become shots, and
which shots a prompt budget drops (from the front, never below min_shots)."""
from preflab.reward_models.fewshot_episodes import build_episodes, plan_episodes, render_episode, user_pairs


def test_a_user_with_shots_plus_one_rows_uses_every_other_row_in_cyclic_order():
    episodes, skipped, dropped = plan_episodes(["u"] * 4 + ["v"] * 2, shots=3, seed=0)
    assert skipped == {"v": "2 rows < min_shots + 1 = 4"} and not dropped
    assert len(episodes) == 4 and sorted(e.query for e in episodes) == [0, 1, 2, 3]
    order = [e.query for e in episodes]  # the pass visits the user's shuffled order
    for pos, e in enumerate(episodes):
        assert e.shots == tuple(order[(pos + step) % 4] for step in (1, 2, 3))


def rows(n=5):
    return [{"user_id": "u", "prompt": f"question {i} ?", "chosen": f"yes {i}", "rejected": f"no {i}"}
            for i in range(n)]


def test_a_budget_drops_the_first_shots_and_never_goes_below_min_shots():
    data = rows()
    pairs = user_pairs(data)
    full, _ = build_episodes(data, shots=4, seed=0)
    ep = full[0]
    query_prompt = data[ep["query_row"]]["prompt"]
    last_two = [pairs[i] for i in ep["shot_rows"][2:]]
    budget = len(render_episode(last_two, query_prompt))   # room for exactly the two shots nearest the query
    assert len(render_episode([pairs[i] for i in ep["shot_rows"][1:]], query_prompt)) > budget
    cut, report = build_episodes(data, shots=4, min_shots=1, max_prompt_length=budget, seed=0)
    kept = next(e for e in cut if e["query_row"] == ep["query_row"])
    assert kept["shot_rows"] == ep["shot_rows"][2:]
    assert kept["prompt"] == render_episode(last_two, query_prompt)
    assert report.truncated_episodes >= 1
    # min_shots = 3: two shots would fit, but fewer than 3 is refused: the episode is dropped as too long
    strict, report = build_episodes(data, shots=4, min_shots=3, max_prompt_length=budget, seed=0)
    assert ep["query_row"] not in [e["query_row"] for e in strict]
    assert all(len(e["shot_rows"]) >= 3 for e in strict) and report.dropped_episodes["too_long"] >= 1
