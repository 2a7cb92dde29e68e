"""0.2 renamed three rooms; the old import paths give the very same module objects for one release."""
import importlib
import warnings

import pytest

RENAMED = [
    ("preflab.reward.bt", "preflab.reward_models.bt"),
    ("preflab.reward.interface", "preflab.reward_models.interface"),
    ("preflab.reward.train", "preflab.reward_models.train"),
    ("preflab.preference.common", "preflab.reward_models.protocols"),
    ("preflab.preference.maxmin", "preflab.reward_models.maxmin"),
    ("preflab.preference.uncertainty", "preflab.reward_models.uncertainty"),
    ("preflab.rewards.otc", "preflab.verifiers.otc"),
    ("preflab.rewards.dstc", "preflab.verifiers.dstc"),
]


@pytest.mark.parametrize("old,new", RENAMED)
def test_old_module_path_is_the_new_module(old, new):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert importlib.import_module(old) is importlib.import_module(new)


def test_old_package_names_keep_their_exports():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from preflab.preference import RewardModel as protocol
        from preflab.reward import BTHead
        from preflab.rewards import OTCReward
    from preflab.reward_models import BTHead as new_head
    from preflab.reward_models.protocols import RewardModel
    from preflab.verifiers import OTCReward as new_otc
    assert BTHead is new_head and OTCReward is new_otc and protocol is RewardModel


def test_commands_live_beside_their_rooms():
    from preflab.cli import SUBCOMMANDS
    from preflab.objectives import list_objectives
    assert SUBCOMMANDS["train"] == "preflab.loops.cli" and SUBCOMMANDS["objectives"] == "preflab.objectives.cli"
    assert "cli" not in list_objectives()
