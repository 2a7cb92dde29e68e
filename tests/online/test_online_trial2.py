"""Second online user trial: exact resume of the loops with state the first trial did not cover (rso's sampler,
a reference refreshed every 2 rounds, HyPO's online KL, GPO/SPPO's per-round reference, dpa_rsf)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_online_run import tiny_cfg, tiny_run  # noqa: E402


@pytest.mark.parametrize("over", [dict(trainer="rso", rso_num_samples=2, num_generations=4),
                                  dict(trainer="online_dpo", refresh_reference_every=2, max_steps=10),
                                  dict(trainer="hypo_online_pairs"),
                                  dict(trainer="gpo", preference_temperature=0.5),
                                  dict(trainer="sppo"),
                                  dict(trainer="dpa_rsf")])
def test_stateful_online_loops_resume_to_the_uninterrupted_weights(tmp_path, over, stop_at_step):
    full = tiny_run(tiny_cfg(tmp_path / "full", **over))
    full_summary = full.train()
    cut = tiny_run(tiny_cfg(tmp_path / "cut", save_steps=3, **over))
    with stop_at_step(cut, 4):
        cut.train()
    resumed = tiny_run(tiny_cfg(tmp_path / "cut", save_steps=3, resume_from_checkpoint=True, **over))
    summary = resumed.train()
    assert summary["resumed_from_step"] == 3
    a, b = full.policy.state_dict(), resumed.policy.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    if full.ref is not None:
        a, b = full.ref.state_dict(), resumed.ref.state_dict()
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert summary.get("reference_refreshes") == full_summary.get("reference_refreshes")
    assert resumed.judge.calls == full.judge.calls
    if over["trainer"] == "rso":  # the run's RSO totals (summary.json online.rso_*) survive the resume
        totals = {k: full_summary["online"][k] for k in ("rso_accepted", "rso_scanned")}
        assert {k: summary["online"][k] for k in totals} == totals
        assert 0 < totals["rso_accepted"] <= totals["rso_scanned"]


def test_rso_summary_totals_are_the_sum_of_every_rounds_counts(tmp_path):
    """summary.json online.rso_accepted / rso_scanned are the run's totals: the sum of each round's rso/accepted and
    rso/scanned (three rounds here), not the last round's."""
    run = tiny_run(tiny_cfg(tmp_path, trainer="rso", rso_num_samples=2, num_generations=4))
    played, new_round = [], run._new_round

    def recording(r):
        out = new_round(r)
        played.append(out.metrics)
        return out

    run._new_round = recording
    summary = run.train()
    assert len(played) == 3 and all(m["rso/accepted"] > 0 for m in played)
    for key in ("accepted", "scanned"):
        assert summary["online"][f"rso_{key}"] == sum(int(m[f"rso/{key}"]) for m in played), key


def _one_short(prompts, completions, **kwargs):
    return [0.0] * (len(completions) - 1)


def test_a_judge_returning_the_wrong_count_names_its_file_and_the_count_it_was_called_with():
    """A reward function returning one value too few was named without its file, and the count it was called with
    (the distinct (prompt, completion) pairs not judged before: 3 of the 4 completions below) read as a preflab bug
    against the round's 4 completions."""
    from preflab.errors import ConfigError
    from preflab.loops.judge import Judge

    with pytest.raises(ConfigError) as err:
        Judge([_one_short])(["p"] * 4, ["a", "b", "a", "c"])
    assert str(err.value) == (f"judge '_one_short' ({__file__}) returned 2 values when called with 3 completions (the "
                              "round's distinct (prompt, completion) pairs not judged before); it must return one "
                              "per completion in `completions`, in order (None where it does not apply).")


def test_a_reward_file_without_its_function_or_a_missing_path_is_said_so(tmp_path):
    """`reward_funcs: rewards.py` (no `:function`) and a mistyped path got the generic "is not demo_true_reward, ...,
    or an existing model directory": now the file's functions (read from its syntax tree, not run) and "no such
    file" with the directory relative paths are read from."""
    from preflab.errors import ConfigError
    from preflab.online.tasks import resolve_judge

    rewards = tmp_path / "rewards.py"
    rewards.write_text("raise SystemExit('never run')\n\ndef length(prompts, completions, **kw):\n    return []\n\n"
                       "async def polite(prompts, completions, **kw):\n    return []\n\ndef _helper():\n    pass\n")
    with pytest.raises(ConfigError) as err:
        resolve_judge(str(rewards))
    assert str(err.value) == (f"reward_funcs: '{rewards}' is a Python file without the function to call; write "
                              f"{rewards}:FUNCTION (its top-level functions: length, polite).")
    with pytest.raises(ConfigError) as err:
        resolve_judge(str(tmp_path / "reward_modle"))
    assert str(err.value) == (f"reward_funcs: '{tmp_path / 'reward_modle'}': no such file or directory (relative "
                              f"paths are read from {Path.cwd()}); give a reward model directory or "
                              "path/to/file.py:FUNCTION.")


def test_gpo_with_reward_judges_and_hard_preferences_is_refused_before_any_generation(tmp_path):
    """trainer gpo with a reward function and preference_temperature 0 (its default) failed only after the first
    round had been generated and judged: P = 1[r_i > r_j] has infinite log-odds for every pair but ties."""
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        tiny_run(tiny_cfg(tmp_path, trainer="gpo"))
    assert str(err.value) == (
        "trainer gpo with reward judges only (e_judge) and preference_temperature 0 gives hard preferences P = "
        "1[r_i > r_j], whose log-odds GPO regresses on are infinite for every pair that is not a tie. Set "
        "preference_temperature > 0 (P = sigmoid((r_i - r_j) / t); examples/online/gpo.yaml uses 0.5) or judge with "
        "a preference model (e.g. a GPM directory).")
    assert not (tmp_path / "rounds").exists()


def test_a_trl_online_trainer_preflab_lacks_is_named_not_matched_to_a_near_name():
    """`trainer: rloo` (a TRL RLOOTrainer user) got "Did you mean 'rso'?": rejection sampling optimization, another
    method. RLOO is now a recipe (tests/online/test_rloo_recipe.py); TRL's PPO, which preflab lacks, says so and
    names the group recipes, as `from preflab import PPOTrainer` does."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        config_from_dict(dict(task="online", trainer="ppo", online_task="demo", model_name_or_path="builtin:demo-sft"))
    assert ("trainer: ppo: PPO is not a preflab recipe (the online RL recipes are task: online with trainer: grpo, "
            "dapo, dr_grpo, bnpo, gspo, cispo, sapo, luspo, vespo or rloo).") in str(err.value)
    assert config_from_dict(dict(task="online", trainer="rloo", online_task="demo",
                                 model_name_or_path="builtin:demo-sft", max_steps=1)).loss_type == "rloo"


def test_a_classifier_judge_with_two_labels_says_what_to_give(tmp_path):
    """A transformers classifier with num_labels 2 given in reward_funcs: refused naming its label count and the two
    kinds of model that judge (num_labels 1, or a preflab reward-model directory); the old error said only that a
    reward model needs one output label."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from preflab.errors import ConfigError
    from preflab.models.tiny import tiny_tokenizer
    from preflab.online.tasks import SequenceClassifierJudge

    tok = tiny_tokenizer("bytelevel")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=2, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "clf", safe_serialization=True)
    tok.save_pretrained(tmp_path / "clf")
    with pytest.raises(ConfigError) as err:
        SequenceClassifierJudge(str(tmp_path / "clf"))
    assert "num_labels 2" in str(err.value) and "num_labels 1" in str(err.value)
    assert "preflab_reward" in str(err.value)
