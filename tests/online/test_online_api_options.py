"""The online Python API (preflab.online.api): the run each wrapper asks for, by hand from its options (steps per
round, rounds x epochs, the trainer it picks, GRPO's micro-batches and accumulation, the judge weights), without
training (the run is replaced by one that records its config)."""
import pytest

from preflab.online import api


def test_online_options_take_every_prompt_a_round_in_ceil_prompts_over_batch_steps():
    """10 prompts, batch 4 x accumulation 2 = 8 a step: a round is ceil(10 / 8) = 2 steps (the last one partial),
    num_iterations 3 rounds x epochs_per_iteration 2 passes = 12 steps."""
    raw = api.online_options(list("abcdefghij"), {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                                                  "num_iterations": 3, "epochs_per_iteration": 2}, "online_dpo")
    assert raw["prompts_per_generation"] == 10  # prompts_per_iteration unset: every prompt each round
    assert (raw["steps_per_generation"], raw["num_iterations"], raw["max_steps"]) == (2, 2, 12)
    assert (raw["trainer"], raw["task"], raw["online_task"]) == ("online_dpo", "online", "dataset")
    raw = api.online_options(list("abcdefghij"), {"per_device_train_batch_size": 4, "prompts_per_iteration": 5},
                             "online_dpo")
    assert (raw["prompts_per_generation"], raw["steps_per_generation"], raw["max_steps"]) == (5, 2, 6)  # 3 rounds


def _recorded(monkeypatch):
    seen = {}

    def record(policy, tokenizer, prompts, judge, ref, weights, raw, written=None):
        seen.update(raw=raw, weights=weights)
        return {}

    monkeypatch.setattr(api, "run_online", record)
    return seen


@pytest.mark.parametrize("options, trainer, kept", [
    ({}, "online_dpo", {}),
    ({"refresh_reference_every": 1}, "iterative_dpo", {"refresh_reference_every": 1}),
    ({"pair_builder": "rso"}, "rso", {}),                                     # the RSO recipe (its own loss)
    ({"pair_builder": "rso", "loss_type": "ipo"}, "online_dpo", {"pair_builder": "rso", "loss_type": "ipo"}),
])
def test_online_dpo_picks_the_trainer_its_docstring_names(monkeypatch, tmp_path, options, trainer, kept):
    seen = _recorded(monkeypatch)
    api.online_dpo(None, None, ["a", "b"], None, output_dir=str(tmp_path), judge_weights=[0.5], **options)
    assert seen["raw"]["trainer"] == trainer and seen["weights"] == [0.5]
    assert {k: seen["raw"].get(k) for k in kept} == kept
    if trainer == "rso":
        assert "pair_builder" not in seen["raw"]


def test_grpo_options_split_a_step_into_micro_batches_and_a_round_into_steps():
    raw = api.grpo_options({"prompts_per_step": 8, "groups_per_micro_batch": 4, "steps_per_generation": 2})
    assert (raw["per_device_train_batch_size"], raw["gradient_accumulation_steps"]) == (4, 2)
    assert raw["prompts_per_generation"] == 16 and raw["beta"] == 0.0  # TRL >= 0.19's beta
    raw = api.grpo_options({"prompts_per_step": 6, "groups_per_micro_batch": 4})  # 4 does not divide 6: one micro
    assert (raw["per_device_train_batch_size"], raw["gradient_accumulation_steps"]) == (6, 1)
    assert raw["prompts_per_generation"] == 6


def test_the_judge_weights_reach_the_run_config(monkeypatch, tmp_path):
    from preflab.online import run as online_run

    seen = {}

    class Recorded:
        def __init__(self, cfg, policy=None, ref=None, tokenizer=None, task=None):
            seen["cfg"] = cfg

        def train(self):
            return {}

    monkeypatch.setattr(online_run, "OnlineRun", Recorded)
    judges = [lambda prompts, completions, **kw: [0.0] * len(completions)] * 2
    api.online_dpo(None, None, ["a", "b"], judges, judge_weights=(0.25, 0.75), output_dir=str(tmp_path / "o"))
    assert seen["cfg"].reward_weights == [0.25, 0.75]
    api.grpo_train(None, None, ["a", "b"], judges, reward_weights=[2.0, 1.0], output_dir=str(tmp_path / "g"))
    assert seen["cfg"].reward_weights == [2.0, 1.0]
