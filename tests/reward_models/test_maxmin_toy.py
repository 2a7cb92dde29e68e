"""MaxMin-RLHF's toy data (preflab.reward_models.maxmin_toy): the minority's reward, word by word, and the user rows
each preferring by its own group's reward with ties dropped."""
from collections import Counter

from preflab.reward_models.maxmin_toy import group_reward, quiet_reward, toy_rows


def test_quiet_reward_scores_lower_case_echoes_in_place_and_a_wrong_word_count_as_zero():
    prompt = "echo: sun cat\n"
    assert [quiet_reward(prompt, r) for r in ("sun cat", "sun CAT", "SUN CAT", "cat sun")] == [1.0, 0.5, 0.0, 0.0]
    assert quiet_reward(prompt, "sun") == 0.0 and quiet_reward(prompt, "sun cat map") == 0.0  # not 1/2, not 1
    assert [group_reward(g, prompt, "SUN CAT") for g in ("loud", "quiet")] == [1.0, 0.0]


def test_each_users_rows_prefer_by_its_groups_reward_and_ties_are_dropped():
    rows = toy_rows(seed=0, users=10, minority=2, pairs_per_user=12)
    assert len(rows) == 120 and Counter(r["user_id"] for r in rows) == {f"user{u}": 12 for u in range(10)}
    groups = {r["user_id"]: r["group"] for r in rows}
    assert Counter(groups.values()) == {"loud": 8, "quiet": 2}
    for r in rows:  # strictly: a pair the group scores equal is never written
        assert group_reward(r["group"], r["prompt"], r["chosen"]) > group_reward(r["group"], r["prompt"],
                                                                                  r["rejected"]), r
    assert toy_rows(seed=0, users=10, minority=2, pairs_per_user=12) == rows
