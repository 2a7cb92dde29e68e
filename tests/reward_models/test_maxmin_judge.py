"""The `maxmin:<dir>` (= `maxmin_group:<dir>`) / `maxmin_pointwise:<dir>` (the released code's rule) online judges
over an em_mixture run: the min rules on hand-computed scores, the saved z-scores, and the loop's judge never caching
the batch-dependent group rule."""
import json

import pytest
import torch

from preflab.errors import ConfigError
from preflab.loops.judge import Judge
from preflab.online.tasks import resolve_judge
from preflab.reward_models.interface import load_judge
from preflab.reward_models.maxmin_aggregate import MaxMinReward, Standardizer, load_maxmin_judge


@pytest.fixture(scope="module")
def mixture_dir(tmp_path_factory):
    """An em_mixture output_dir written by hand: two untrained tiny BT reward models (seeds 0 and 1) and a
    mixture.json with z-score statistics."""
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.heads import build_reward_model, set_reward_config

    root = tmp_path_factory.mktemp("mixture")
    tok = tiny_tokenizer("bytelevel")
    for k in range(2):
        model = build_reward_model("builtin:tiny-llama", 1, tok, seed=k)
        set_reward_config(model, {"head": "bt", "tau": 1.0})
        model.save_pretrained(root / f"em-iter-1/component-{k}", safe_serialization=True)
        tok.save_pretrained(root / f"em-iter-1/component-{k}")
    (root / "mixture.json").write_text(json.dumps({
        "components": ["em-iter-1/component-0", "em-iter-1/component-1"], "priors": [0.8, 0.2],
        "standardizer": {"mean": [0.05, -0.1], "std": [0.5, 2.0]}}))
    return root


PROMPTS = ["echo: sun cat\n"] * 4
RESPONSES = ["SUN CAT", "sun cat", "Sun CAT", "sun dog"]


def test_maxmin_judges_group_rule_on_z_scores_pointwise_rule_on_raw_rewards(mixture_dir):
    raw = torch.stack([load_judge(str(mixture_dir / f"em-iter-1/component-{k}")).score(PROMPTS, RESPONSES)
                       for k in range(2)])  # [K, N]
    z = torch.stack([(raw[0] - 0.05) / 0.5, (raw[1] + 0.1) / 2.0])
    pointwise = resolve_judge(f"maxmin_pointwise:{mixture_dir}")
    released = [min(float(raw[0, i]), float(raw[1, i])) for i in range(4)]  # robust_rlhf.py: min of the raw rewards
    assert pointwise.score(PROMPTS, RESPONSES).tolist() == pytest.approx(released, abs=1e-6)
    assert pointwise.standardizer is None
    z_pointwise = load_maxmin_judge(str(mixture_dir), "pointwise", standardize=True)  # the library's opt-in
    assert z_pointwise.score(PROMPTS, RESPONSES).tolist() == pytest.approx(
        [min(float(z[0, i]), float(z[1, i])) for i in range(4)], abs=1e-6)
    group = resolve_judge(f"maxmin_group:{mixture_dir}")
    k_min = 0 if float(z[0].mean()) < float(z[1].mean()) else 1
    assert group.score(PROMPTS, RESPONSES).tolist() == pytest.approx(z[k_min].tolist(), abs=1e-6)
    assert group.last_group == k_min and group.batch_dependent and not pointwise.batch_dependent
    with pytest.raises(ConfigError, match="holds no mixture.json"):
        resolve_judge(f"maxmin:{mixture_dir / 'em-iter-1'}")


def test_maxmin_is_the_group_rule_and_maxmin_pointwise_the_released_raw_min(mixture_dir):
    """`maxmin:<dir>` and `maxmin_group:<dir>` are the z-scored group rule; `maxmin_pointwise:<dir>` is the released
    code's reward (josephxu1234/MaxMinRLHF `training/robust_rlhf.py` L351-353): min_k r_k(x, y) of the raw rewards."""
    raw = torch.stack([load_judge(str(mixture_dir / f"em-iter-1/component-{k}")).score(PROMPTS, RESPONSES)
                       for k in range(2)])  # [K, N]
    z = torch.stack([(raw[0] - 0.05) / 0.5, (raw[1] + 0.1) / 2.0])  # the fixture's saved statistics
    k_min = 0 if float(z[0].mean()) < float(z[1].mean()) else 1
    default = resolve_judge(f"maxmin:{mixture_dir}")
    assert default.rule == "group" and default.batch_dependent
    assert default.score(PROMPTS, RESPONSES).tolist() == pytest.approx(z[k_min].tolist(), abs=1e-6)
    assert load_maxmin_judge(str(mixture_dir)).score(PROMPTS, RESPONSES).tolist() == pytest.approx(
        z[k_min].tolist(), abs=1e-6)  # the Python default is the same rule
    released = resolve_judge(f"maxmin_pointwise:{mixture_dir}")
    got = released.score(PROMPTS, RESPONSES).tolist()
    assert got == pytest.approx([min(float(raw[0, i]), float(raw[1, i])) for i in range(4)], abs=1e-6)
    assert all(abs(g - float(z[k_min, i])) > 1e-3 for i, g in enumerate(got))  # the two rules are told apart
    assert released.rule == "pointwise" and released.standardizer is None and not released.batch_dependent
    assert Judge([released]).cache_enabled and not Judge([default]).cache_enabled


def test_an_unknown_maxmin_judge_name_is_refused_with_the_names(mixture_dir):
    with pytest.raises(ConfigError, match=r"no max-min judge 'maxmin_groups'.*maxmin_group:<dir>.*Did you mean "
                                          r"'maxmin_group'"):
        resolve_judge(f"maxmin_groups:{mixture_dir}")


class Table:
    """A reward model with a fixed reward per response text."""

    def __init__(self, rewards: dict):
        self.rewards = rewards

    def score(self, prompts, responses):
        return torch.tensor([self.rewards[r] for r in responses])


def test_group_rule_by_hand_and_never_served_from_the_judge_cache():
    r1 = Table({"a": 1.0, "b": 0.0, "c": 0.5, "d": 0.9})
    r2 = Table({"a": 0.0, "b": 1.0, "c": 0.5, "d": 0.2})
    mm = MaxMinReward([r1, r2], "group", Standardizer(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 1.0])))
    # z1 = (r1 - 1) / 2 = (0, -0.5, -0.25, -0.05): U1 = -0.2; z2 = r2: U2 = 0.425 -> every sample gets z1
    assert mm.score(["x"] * 4, list("abcd")).tolist() == pytest.approx([0.0, -0.5, -0.25, -0.05])
    assert mm.last_utilities.tolist() == pytest.approx([-0.2, 0.425])
    assert MaxMinReward([r1, r2], "pointwise").score(["x"] * 4, list("abcd")).tolist() == \
        pytest.approx([0.0, 0.0, 0.5, 0.2])
    mm.batch_dependent = True
    judge = Judge([mm])
    assert not judge.cache_enabled
    first, _ = judge(["x", "x"], ["b", "c"])   # z1 = (-0.5, -0.25), z2 = (1, 0.5): k_min = 0
    second, _ = judge(["x", "x"], ["a", "c"])  # z1 = (0, -0.25) mean -0.125, z2 = (0, 0.5): k_min = 0 again
    third, _ = judge(["x", "x"], ["d", "c"])   # z1 = (-0.05, -0.25) mean -0.15, z2 = (0.2, 0.5): k_min = 0
    assert first.tolist() == pytest.approx([-0.5, -0.25]) and second.tolist() == pytest.approx([0.0, -0.25])
    assert third.tolist() == pytest.approx([-0.05, -0.25])
    mm.standardizer = Standardizer(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    fourth, _ = judge(["x", "x"], ["a", "c"])  # raw: U1 = 0.75, U2 = 0.25 -> k_min = 1: "c" now scores r2 = 0.5
    assert fourth.tolist() == pytest.approx([0.0, 0.5]) and judge.cache_hits == 0


class Refuses(Table):
    """A reward model that raises on a response holding a control token (as a tokenizer's special-token check)."""

    def score(self, prompts, responses):
        if any("<|user|>" in r for r in responses):
            raise ValueError("special token")
        return super().score(prompts, responses)


def test_a_sample_a_model_cannot_score_is_nan_and_left_out_of_the_group_utilities():
    """The loop's judge retries a raising judge one sample at a time, which would turn the group rule into the
    pointwise one for that round (measured: every round after the policy first wrote '<|user|>'); the max-min judge
    scores the rest of the batch itself and gives the failed sample NaN (the loop drops and counts it)."""
    rewards = {"a": 1.0, "b": 0.0, "c": 0.5, "<|user|>": 0.0}
    r1 = Refuses(rewards)
    r2 = Table({"a": 0.0, "b": 1.0, "c": 0.5, "<|user|>": 0.0})
    mm = MaxMinReward([r1, r2], "group")
    mm.batch_dependent = True
    scores, _ = Judge([mm])(["x"] * 4, ["a", "b", "<|user|>", "c"])
    # U over a, b, c: r1 mean 0.5, r2 mean 0.5 -> k_min = 0 (first of the tie): r1, NaN for the refused sample
    assert scores[[0, 1, 3]].tolist() == [1.0, 0.0, 0.5] and scores[2].isnan()
    assert mm.failed == 1 and mm.last_utilities.tolist() == [0.5, 0.5]
    assert MaxMinReward([r1, r2], "pointwise").score(["x"] * 2, ["<|user|>", "a"])[0].isnan()


def test_pointwise_rule_is_the_released_robust_rlhf_reward_on_numbers():
    """josephxu1234/MaxMinRLHF@ec74f15 `training/robust_rlhf.py` L351-353 (commits by co-author Jiahao Qiu):
    rewards = [min(rewards1[i], rewards2[i])] on the two models' raw logits (reward_baseline 0), no per-group
    standardisation. Its PPO recipe (`jobrrlhf.slurm`) runs --batch_size 1, where the group rule gives the same
    reward. Hand values: the min per sample, and on a batch of one the group rule equals it."""
    r1 = Table({"a": 2.0, "b": -1.0, "c": 0.5})
    r2 = Table({"a": 0.3, "b": 0.4, "c": 3.0})
    assert MaxMinReward([r1, r2], "pointwise").score(["x"] * 3, ["a", "b", "c"]).tolist() == \
        pytest.approx([0.3, -1.0, 0.5])
    for response, released in (("a", 0.3), ("b", -1.0), ("c", 0.5)):
        assert MaxMinReward([r1, r2], "group").score(["x"], [response]).tolist() == pytest.approx([released])
    # a z-score before the min changes the reward the released code gives (group 2 rescaled: 0.3 -> (0.3-1)/0.5)
    z = MaxMinReward([r1, r2], "pointwise", Standardizer(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5])))
    assert z.score(["x"] * 3, ["a", "b", "c"]).tolist() == pytest.approx([-1.4, -1.2, 0.5])
