"""OTC tool-call rewards: the §41 tables, the group example, the running optimum and the TRL plumbing."""
import math

import numpy as np
import pytest

from preflab.errors import ConfigError, MissingExtraError
from preflab.verifiers import OTCReward, otc_grpo_tool_reward, otc_ppo_tool_reward


@pytest.mark.parametrize("c, expected", [(1, [1, 0.5, 0.3090, 0.2225, 0.1736]),
                                         (3, [1, 0.8090, 0.6235, 0.5, 0.4154])])
def test_ppo_table(c, expected):
    # cos(m*pi/(2m+c)): c=1, m=1 -> cos(pi/3) = 0.5; c=3, m=3 -> cos(3pi/9) = 0.5
    assert [otc_ppo_tool_reward(m, c) for m in range(5)] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("n, expected", [(1, [0, 1, 0.8660, 0.7071, 0.5878]),
                                         (2, [0, 0.8660, 1, 0.9511, 0.8660, 0.7818])])
def test_grpo_table(n, expected):
    # sin(f*pi/(2n)), f = 2nm/(m+n): n=1, m=2 -> f=4/3 -> sin(2pi/3) = 0.8660
    assert [otc_grpo_tool_reward(m, n, c=1) for m in range(len(expected))] == pytest.approx(expected, abs=1e-4)


def test_grpo_with_zero_optimum():
    assert otc_grpo_tool_reward(0, 0, c=2) == 1.0
    assert otc_grpo_tool_reward(2, 0, c=2) == pytest.approx(math.cos(2 * math.pi / 6))


def test_grpo_peak_at_optimum_and_decay():
    for n in (1, 2, 5):
        values = [otc_grpo_tool_reward(m, n, c=1) for m in range(60)]
        assert int(np.argmax(values)) == n and values[n] == pytest.approx(1.0)
        assert values[-1] < values[n + 1]
    assert otc_grpo_tool_reward(10**6, 3, c=1) == pytest.approx(0.0, abs=1e-5)


def completions(*pairs):
    """(correct, m) -> a completion with m search calls and a right or wrong answer."""
    return ["<search>q</search>" * m + f"<answer>{'Paris' if ok else 'Lyon'}</answer>" for ok, m in pairs]


def test_group_example_rewards_and_advantages():
    reward = OTCReward(mode="grpo", c=1.0)
    r = reward(["q1"] * 4, completions((1, 1), (1, 2), (0, 0), (1, 3)), answer=["paris"] * 4)
    assert reward.tracker.optimum(repr("q1")) == 1
    assert r == pytest.approx([1, 0.8660, 0, 0.7071], abs=1e-4)
    r = np.array(r)
    advantages = (r - r.mean()) / (r.std(ddof=1) + 1e-4)   # TRL group scaling
    np.testing.assert_allclose(advantages, [0.8010, 0.5001, -1.4444, 0.1433], atol=1e-4)


def test_running_minimum_over_visits_and_question_ids():
    reward = OTCReward(mode="grpo", c=1.0)
    reward(["x"] * 2, completions((1, 1), (0, 0)), answer=["Paris"] * 2, question_id=["q7"] * 2)
    # a later visit whose best correct rollout used 3 calls is still measured against n = 1
    r = reward(["x"] * 2, completions((1, 3), (1, 4)), answer=["Paris"] * 2, question_id=["q7"] * 2)
    assert r == pytest.approx([otc_grpo_tool_reward(3, 1, 1.0), otc_grpo_tool_reward(4, 1, 1.0)])
    # a different question has its own optimum
    assert reward(["x"], completions((1, 3)), answer=["Paris"], question_id=["q8"]) == [1.0]
    restored = OTCReward(mode="grpo", c=1.0)
    restored.tracker.load_state_dict(reward.tracker.state_dict())
    assert restored.tracker.optimum("q7") == 1 and restored.tracker.optimum("q8") == 3


def test_ppo_mode_and_alpha():
    reward = OTCReward(mode="ppo", c=3.0, alpha=2.0)
    assert reward(["q"] * 3, completions((1, 0), (1, 3), (0, 1)), answer=[["Paris", "paris, france"]] * 3) == \
        pytest.approx([2.0, 1.0, 0.0])


def test_given_tool_counts_and_f1_scoring():
    reward = OTCReward(mode="ppo", c=1.0, scoring="f1")
    text = "<answer>the city of Paris</answer>"    # F1 vs "Paris city": p = 2/3, r = 1 -> 0.8
    assert reward(["q"], [text], answer=["Paris city"], num_tool_calls=[1]) == pytest.approx([0.5 * 0.8])
    # malformed tags do not count when counting from text
    assert OTCReward(c=1.0).count_tool_calls("<search>a</search> <search>b <search>c</search>") == 2


def test_conversational_inputs_and_name():
    reward = OTCReward(mode="grpo", c=1.0, name="otc_search")
    prompt = [{"role": "user", "content": "Capital of France?"}]
    comp = [[{"role": "assistant", "content": text}] for text in completions((1, 2), (1, 1))]
    assert reward(prompts=[prompt, prompt], completions=comp, answer=["Paris"] * 2) == pytest.approx([0.8660, 1],
                                                                                                    abs=1e-4)
    assert reward.__name__ == "otc_search"


def test_errors():
    with pytest.raises(ConfigError, match="mode"):
        OTCReward(mode="ppo2", c=1.0)
    with pytest.raises(ConfigError, match="smoothing"):
        OTCReward(c=0)
    with pytest.raises(MissingExtraError, match="answer"):
        OTCReward(c=1.0)(["q"], ["<answer>x</answer>"])


def test_the_last_answer_span_and_the_best_gold_answer_are_scored():
    """r_phi reads the last <answer> span (a rollout may revise its answer) and token F1 is the best over the
    acceptable golds, not the last one: 'Paris' vs ['Paris', 'Paris city'] is F1 1 (p = r = 1), not 2/3."""
    em = OTCReward(mode="ppo", c=1.0)
    assert em(["q"], ["<answer>Lyon</answer> no, <answer>Paris</answer>"], answer=["paris"]) == [1.0]
    assert em(["q"], ["<answer>Paris</answer> no, <answer>Lyon</answer>"], answer=["paris"]) == [0.0]
    f1 = OTCReward(mode="ppo", c=1.0, scoring="f1")
    assert f1(["q"], ["<answer>Paris</answer>"], answer=[["Paris", "Paris city"]]) == pytest.approx([1.0])
    assert f1(["q"], ["<answer>Paris</answer>"], answer=[["Paris city", "Paris"]]) == pytest.approx([1.0])
