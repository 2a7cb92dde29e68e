"""Exact mid-round resume for the online trainers that had no resume test of their own (docs/guarantees.md's
matrix): a run stopped right after a mid-round checkpoint and resumed ends with the uninterrupted run's weights.

The text trainers (GRPO's loss types, GSPO, LUSPO, TPO) use test_online_run's tiny run; the preference-game
trainers (online_task: game) the shipped examples/online/nash_game.yaml, cut to 12 steps of rounds of 4 (egpo and
online_ipo: every step is a round) with a checkpoint at step 6 (mid-round for the round-of-4 trainers)."""
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from test_online_run import tiny_cfg, tiny_run  # noqa: E402
from resume_mid_run import logged_losses, resume_mid_run  # noqa: E402  tests/, on sys.path beside conftest

from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer  # noqa: E402

GROUP_RUN = dict(beta=0.04, steps_per_generation=2, num_iterations=2, max_steps=8)


@pytest.mark.parametrize("over", [dict(trainer=name, **GROUP_RUN)
                                  for name in ("grpo", "bnpo", "dr_grpo", "gspo", "cispo", "sapo", "luspo", "vespo")]
                         + [dict(trainer="tpo", num_generations=3),
                            dict(trainer="tpo", num_generations=2, tpo_tree_depth=2, tpo_step_delimiter=" ",
                                 max_completion_length=8)],
                         ids=lambda over: over["trainer"] + ("-tree" if "tpo_tree_depth" in over else ""))
def test_text_trainer_resumed_mid_round_equals_the_uninterrupted_run(tmp_path, over, stop_at_step):
    """Stop at step 4 (the checkpoint is step 3, mid-round: 2 steps a round), resume: the weights equal the
    uninterrupted run's to 1e-6, the judge saw the same texts (the cache came back), and the weights moved."""
    full, resumed = resume_mid_run(lambda folder, **extra: tiny_run(tiny_cfg(folder, **over, **extra)), tmp_path,
                                   stop_at_step, stop=4)
    a = full.policy.state_dict()
    start = tiny_causal_lm(tiny_tokenizer("char"), hidden_size=32, seed=1).state_dict()
    assert any(float((a[k] - start[k]).abs().max()) > 1e-3 for k in a)           # and the weights did move
    assert resumed.judge.calls == full.judge.calls
    assert logged_losses(tmp_path / "cut") == pytest.approx(logged_losses(tmp_path / "full"), abs=1e-6)


GAME = Path(__file__).parents[2] / "examples" / "online" / "nash_game.yaml"
GAME_STEPS = ["max_steps=12", "steps_per_generation=4", "logging_steps=2", "disable_tqdm=true"]


def _game(out, *overrides):
    from preflab.config import load_config
    from preflab.online.run import OnlineRun

    return OnlineRun(load_config(GAME, [f"output_dir={out}", *GAME_STEPS, *overrides])).train()


@pytest.mark.parametrize("trainer", ["inpo", "nash_md", "egpo", "online_ipo", "spo", "sppo"])
def test_game_trainer_resumed_from_a_mid_run_checkpoint_equals_the_uninterrupted_run(tmp_path, trainer):
    """The game run of 12 steps, and the same run resumed (in another folder) from the step-6 checkpoint of a run
    that saved there: the same final and average policy distributions as floats, the same weights bit for bit."""
    extra = ["num_generations=4", "prompts_per_generation=6"] if trainer == "spo" else []
    full = _game(tmp_path / "full", f"trainer={trainer}", *extra)
    _game(tmp_path / "cut", f"trainer={trainer}", *extra, "save_steps=6")
    assert (tmp_path / "cut" / "online-state" / "step-6").is_dir()
    resumed = _game(tmp_path / "resumed", f"trainer={trainer}", *extra,
                    f"resume_from_checkpoint={tmp_path / 'cut' / 'checkpoint-6'}")
    assert resumed["resumed_from_step"] == 6
    for key in ("policy_distribution", "policy_distribution_average"):
        assert resumed[key] == full[key], key
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(
        str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    assert full["policy_distribution"] != full["reference_distribution"]          # and the policy moved
