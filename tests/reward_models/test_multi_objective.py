"""DPA: angle -> weights, direction-dependent best-of-n on a concave front, the masked regression loss, and a tiny
multi-objective RM that recovers two planted attributes and steers best-of-n selection by direction."""
import math
import sys
from pathlib import Path

import pytest
import torch

from preflab.reward_models.multi_objective import (MultiObjectiveHead, angle_to_weights, direction, direction_system_prompt,
                                            directional_best_of_n)

sys.path.insert(0, str(Path(__file__).parent))
from reward_synthetic import rated_rows  # noqa: E402

WORDS = "the cat sat on mat dog ran to park what is two plus three answer five please how many legs spider".split()


@pytest.mark.parametrize("theta, weights", [(-15, (97, -26)), (0, (100, 0)), (10, (98, 17)), (20, (94, 34)),
                                            (30, (87, 50)), (45, (71, 71))])
def test_angle_to_weights(theta, weights):
    assert angle_to_weights(theta) == weights
    assert direction(theta).norm().item() == pytest.approx(1.0, abs=1e-12)
    assert f"helpfulness*{weights[0]} + verbosity*{weights[1]}" in direction_system_prompt(theta)


def test_system_prompt_is_the_dpa_template_verbatim():
    """RLHFlow/Directional-Preference-Alignment README: the template the released DPA model was trained with,
    at -15 degrees (its worked example: weights 97, -26)."""
    assert direction_system_prompt(-15) == (
        "You are a helpful, respectful, and honest assistant who always responds to the user in a harmless way. "
        "Your response should maximize weighted rating = helpfulness*97 + verbosity*-26")


FRONT = {"arm0": (1.0, 0.0), "arm1": (0.9, 0.4), "arm2": (0.6, 0.8), "arm3": (0.0, 1.0)}


def _front_ratings(prompts, responses):
    return torch.tensor([FRONT[r] for r in responses], dtype=torch.float64)


@pytest.mark.parametrize("theta, arm, score", [(0, "arm0", 1.0), (30, "arm1", 0.9 * math.cos(math.pi / 6) + 0.2),
                                               (60, "arm2", 0.3 + 0.8 * math.sin(math.pi / 3)), (90, "arm3", 1.0)])
def test_direction_picks_along_a_concave_front(theta, arm, score):
    rows = directional_best_of_n(["q"], [theta], _front_ratings, candidates=[list(FRONT)])
    assert rows[0]["completion"] == arm and rows[0]["score"] == pytest.approx(score, abs=1e-12)
    assert rows[0]["prompt"].startswith(direction_system_prompt(theta)) and rows[0]["source_prompt"] == "q"


def test_generate_path_sees_the_direction_prompt():
    seen = []

    def generate(prompt, n):
        seen.append(prompt)
        return list(FRONT)[:n]

    rows = directional_best_of_n([[{"role": "user", "content": "q"}]], [60], _front_ratings, generate=generate, n=4)
    assert seen[0][0] == {"role": "system", "content": direction_system_prompt(60)}
    assert rows[0]["completion"] == "arm2" and rows[0]["n"] == 4


def test_regression_loss_skips_unrated_attributes():
    head = MultiObjectiveHead(("helpfulness", "verbosity"))
    out = head.loss(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 2.0], [1.0, 5.0]]),
                    torch.tensor([[True, True], [True, False]]))
    torch.testing.assert_close(out.losses, torch.tensor([0.5, 1.0]))
    assert out.metrics["mse/helpfulness"].item() == 1.0 and out.metrics["mse/verbosity"].item() == 0.0


def test_attribute_reduction_by_hand():
    """squared errors [[1, 4], [9, -], [4, 1]] (row 2 leaves verbosity unrated): row reduction = mean of the rows'
    means (2.5, 9, 2.5) = 14/3; attribute reduction = mean of helpfulness (1 + 9 + 4)/3 and verbosity (4 + 1)/2 =
    43/12. Either way the per-row shares average to the loss."""
    outputs = torch.tensor([[1.0, 2.0], [3.0, 7.0], [0.0, 1.0]])
    targets = torch.tensor([[0.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    observed = torch.tensor([[True, True], [True, False], [True, True]])
    row = MultiObjectiveHead(("helpfulness", "verbosity")).loss(outputs, targets, observed)
    per_attribute = MultiObjectiveHead(("helpfulness", "verbosity"), "attribute").loss(outputs, targets, observed)
    torch.testing.assert_close(row.loss, torch.tensor(14 / 3))
    torch.testing.assert_close(per_attribute.loss, torch.tensor(43 / 12))
    torch.testing.assert_close(per_attribute.losses.mean(), per_attribute.loss)
    torch.testing.assert_close(per_attribute.losses, torch.tensor([1 / 3 + 2.0, 3.0, 4 / 3 + 0.5]) * 3 / 2)
    assert per_attribute.metrics["mse/verbosity"].item() == 2.5


def test_attribute_reduction_is_stationary_at_each_attributes_own_least_squares():
    """A linear head on fixed features, rows rating different attribute subsets (as ArmoRM's mixed-source data):
    the attribute reduction's gradient vanishes at the per-attribute least-squares fit over the rows that rate it
    (RLHFlow/RLHF-Reward-Modeling@fc39179 armo-rm/stage-1_train.py fits Ridge(fit_intercept=False) per attribute on
    those rows; alpha -> 0 here); the row reduction's does not (it weights row i by 1 / its rated count)."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    targets = torch.randn(12, 2, generator=gen, dtype=torch.float64)
    observed = torch.ones(12, 2, dtype=torch.bool)
    observed[:6, 1] = False  # the first six rows rate only attribute 0
    weight = torch.zeros(2, 3, dtype=torch.float64)
    for a in range(2):
        rows = observed[:, a]
        weight[a] = torch.linalg.lstsq(features[rows], targets[rows, a:a + 1]).solution[:, 0]

    def gradient(reduction):
        w = weight.clone().requires_grad_(True)
        MultiObjectiveHead(("a", "b"), reduction).loss(features @ w.T, targets, observed).loss.backward()
        return w.grad

    assert gradient("attribute").abs().max() < 1e-12
    assert gradient("row").abs().max() > 1e-3


def test_attribute_reduction_values_are_checked():
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError
    from preflab.reward_models.multi_objective import attribute_reduction

    cfg = config_from_dict(dict(task="reward", reward_head="multi_objective", model_name_or_path="builtin:tiny-llama",
                                dataset_name="rated.jsonl", reward_head_params={"attributes": ["a"], "attribute_reduction": "attribute"}))
    assert attribute_reduction(cfg) == "attribute"
    cfg.reward_head_params = {"attributes": ["a"]}
    assert attribute_reduction(cfg) == "row"
    cfg.reward_head_params = {"attributes": ["a"], "attribute_reduction": "mean"}
    with pytest.raises(ConfigError, match="attribute_reduction='mean'"):
        attribute_reduction(cfg)


def _rated(n, seed):
    return rated_rows(n, seed, WORDS)


def test_multi_objective_rm_recovers_attributes_and_steers_selection(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.interface import RewardModel
    from preflab.reward_models.multi_objective import train_multi_objective

    cfg = config_from_dict(dict(task="reward", model_name_or_path="builtin:tiny-llama", dataset_name="rated",
                                output_dir=str(tmp_path / "rm"), learning_rate=2e-3, per_device_train_batch_size=16,
                                max_steps=120, logging_steps=20, lr_scheduler_type="constant", max_length=64,
                                disable_tqdm=True, use_cpu=True))
    held_out = _rated(64, seed=1)
    summary = train_multi_objective(cfg, _rated(192, seed=0), ["helpfulness", "verbosity"],
                                    tokenizer=tiny_tokenizer(), eval_rows=held_out)
    final = summary["final_metrics"]
    variance = torch.tensor([[r["ratings"]["helpfulness"], r["ratings"]["verbosity"]] for r in held_out]).var(0)
    assert final["eval_mse/helpfulness"] < 0.05 * variance[0].item()  # held-out R^2 > 0.95 (measured 0.996)
    assert final["eval_mse/verbosity"] < 0.2 * variance[1].item()     # held-out R^2 > 0.8 (measured 0.93)

    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert hf.config.num_labels == 2 and hf.config.preflab_reward["attributes"] == ["helpfulness", "verbosity"]
    judge = RewardModel.from_pretrained(str(tmp_path / "rm"))
    prompts = ["the cat sat", "what is two", "please how many"]
    terse_good, long_plain = " good", " the dog ran to the park on mat"
    candidates = [[long_plain, terse_good, " cat"]] * 3
    helpful = directional_best_of_n(prompts, [0], judge.outputs, candidates=candidates)
    verbose = directional_best_of_n(prompts, [90], judge.outputs, candidates=candidates)
    assert [r["completion"] for r in helpful] == [terse_good] * 3
    assert [r["completion"] for r in verbose] == [long_plain] * 3
    along = RewardModel(judge.model, judge.tokenizer, direction=direction(30).tolist())
    expected = judge.outputs(prompts, [terse_good] * 3) @ direction(30).float()
    torch.testing.assert_close(along.score(prompts, [terse_good] * 3), expected)
