"""The demo task's judges (preflab.online.tasks): values by hand."""
from preflab.online.tasks import demo_echo_reward, demo_true_reward


def test_demo_echo_reward_is_the_share_of_words_echoed_case_insensitively_and_zero_for_another_word_count():
    prompt = "echo: red cat sun"
    completions = ["RED cat Sun", "red dog sun", "red cat", "red cat sun sun", ""]
    assert demo_echo_reward([prompt] * 5, completions) == [1.0, 2 / 3, 0.0, 0.0, 0.0]
    # the true reward wants the words in capitals: only the first completion's first word counts there
    assert demo_true_reward([prompt] * 2, ["RED CAT SUN", "RED cat Sun"]) == [1.0, 1 / 3]
