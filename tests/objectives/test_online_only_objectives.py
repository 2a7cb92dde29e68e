"""grpo and rloo are policy gradients on completions sampled from the policy being trained (TRL's GRPOTrainer and
RLOOTrainer; TRL 1.16's DPOTrainer has no such loss_type). `task: dpo` with `loss_type: grpo` / `rloo` trained them
offline on ranked lists from the data, where the sampling policy is unknown and the importance ratio is 1: the loss
value does not move with the policy, and the gradient only pushes above-mean completions up and the others down.
Every task but online now refuses them (preflab.objectives.base.check_online_only), naming task: online with the
trainer (objective.online_trainer) and rrhf for ranked lists."""
import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.objectives import get_objective, list_objectives, objective_class
from preflab.objectives.base import ListBatch, SequenceLogps
from preflab.online_recipes import TRAINERS

OFFLINE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "examples/data/loud_echo_lists.jsonl"}


def test_grpo_on_task_dpo_is_refused_naming_the_online_trainer_and_rrhf():
    with pytest.raises(ConfigError) as err:
        config_from_dict({**OFFLINE, "task": "dpo", "loss_type": "grpo"})
    assert str(err.value) == (
        "loss_type 'grpo' (GRPO) is a policy-gradient loss on completions sampled from the policy being trained "
        "(TRL: GRPOTrainer, not a DPOTrainer loss_type); task 'dpo' reads fixed completions from the data, where its "
        "importance ratio is always 1: it would raise the likelihood of the completions scored above their group's "
        "mean and lower the others', with no importance correction and no clip. Set task: online, trainer: grpo "
        "(completions sampled from the policy and scored by reward_funcs or a judge), or, for ranked lists in the "
        "data, a listwise loss_type that reads them offline (rrhf).")


@pytest.mark.parametrize("loss_type", ["rloo", ["rloo"]])
def test_rloo_alone_or_in_a_list_is_refused_naming_trainer_rloo(loss_type):
    with pytest.raises(ConfigError, match=r"loss_type 'rloo' \(RLOO\) .*TRL: RLOOTrainer.* Set task: online, "
                                          r"trainer: rloo \("):
        config_from_dict({**OFFLINE, "task": "dpo", "loss_type": loss_type})


def test_the_online_recipes_still_train_them():
    for trainer, cls in (("grpo", "GRPO"), ("rloo", "RLOO")):
        cfg = config_from_dict({**OFFLINE, "task": "online", "trainer": trainer, "reward_funcs": "x",
                                "online_task": "dataset", "max_steps": 2})
        assert type(cfg.objective()).__name__ == cls


def test_the_declared_online_trainers_are_the_recipes_that_train_those_objectives():
    """Every objective declaring online_trainer names a task: online trainer whose objective it is; only grpo and
    rloo declare one (the listwise rrhf, the named alternative, reads ranked lists offline)."""
    declared = {name: objective_class(name).online_trainer for name in list_objectives()
                if objective_class(name).online_trainer}
    assert declared == {"grpo": "grpo", "rloo": "rloo"}
    for name, trainer in declared.items():
        assert TRAINERS[trainer].loss_type == name
    assert objective_class("rrhf").online_trainer == ""


def test_offline_the_grpo_loss_value_does_not_move_with_the_policy():
    """Why: on rows from data (no old_logps) the ratio is pi / pi.detach() = 1, so the loss is -A weighted by
    length whatever the log-probs: two policies 5 nats apart give the same value, the length-weighted mean of -A
    (closed form), while the gradient is -A / (tokens) per token."""
    scores = torch.tensor([[1.0, 0.0, 2.0]])
    mask = torch.tensor([[[True, True, False], [True, True, True], [True, False, False]]])
    objective = get_objective("grpo", loss_type="dapo")
    values = []
    for shift in (0.0, -5.0):
        logps = (torch.full((1, 3, 3), -1.0) + shift).requires_grad_(True)
        out = objective(ListBatch(SequenceLogps(logps, mask), scores))
        out.loss.backward()
        values.append(out.loss.item())
    advantages = (scores - scores.mean()) / (scores.std() + 1e-4)
    lengths = mask.sum(-1).float()
    expected = -(advantages * lengths).sum() / lengths.sum()
    assert values[0] == pytest.approx(values[1], abs=1e-7)
    assert values[0] == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(logps.grad[0, :, 0], -advantages[0] / lengths.sum(), atol=1e-6)
