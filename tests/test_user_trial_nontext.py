"""Regressions from a new-user trial of the non-text-DPO paths (online, self-play, reward models, recipes; see
changes/user-trial.md): each failed (or ran silently as something else) on the code before."""
import pytest

from preflab.config import load_config
from preflab.errors import ConfigError

RSO = "examples/online/rso.yaml"  # num_generations 8, rso_num_samples 4


# ------------------------------------------------------------------------------------------------ online: rso
def test_rso_num_samples_of_one_is_refused_it_could_make_no_pair():
    """rso_num_samples=1 accepted one completion per prompt, so no round had a pair: the run trained nothing and its
    note blamed the judge ('scores every completion of a prompt alike')."""
    with pytest.raises(ConfigError, match=r"rso_num_samples=1: .*makes no pair.*between 2 and num_generations=8"):
        load_config(RSO, ["rso_num_samples=1"])
    with pytest.raises(ConfigError, match=r"rso_num_samples=1"):  # pair_builder: rso under online_dpo too
        load_config(RSO, ["trainer=online_dpo", "pair_builder=rso", "loss_type=sigmoid", "rso_num_samples=1"])


def test_rso_num_samples_above_num_generations_is_refused_it_ran_as_num_generations():
    """rso_num_samples=16 of 8 completions: the sampler stopped when the 8 ran out, so the run accepted all 8 (no
    rejection at all) and said nothing."""
    with pytest.raises(ConfigError, match=r"rso_num_samples=16 exceeds num_generations=8.*at most 8.*at least 16"):
        load_config(RSO, ["rso_num_samples=16"])


def test_rso_num_samples_equal_to_num_generations_runs_with_a_note(capsys):
    cfg = load_config(RSO, ["rso_num_samples=8"])
    assert cfg.rso_num_samples == 8
    assert "every completion is accepted" in capsys.readouterr().out
    load_config(RSO, ["rso_num_samples=2"])  # the smallest that pairs: no note
    assert "every completion is accepted" not in capsys.readouterr().out


def test_rso_num_samples_left_at_its_default_fits_a_smaller_num_generations():
    """online_dpo's TRL default num_generations is 2: pair_builder: rso with the default rso_num_samples (4) takes both,
    as it always did, and is not refused for a value the user did not write."""
    from preflab.config import config_from_dict

    cfg = config_from_dict({"task": "online", "online_task": "demo", "model_name_or_path": "builtin:demo-sft",
                            "max_steps": 2, "trainer": "online_dpo", "pair_builder": "rso"})
    assert (cfg.num_generations, cfg.rso_num_samples) == (2, 2)


# ------------------------------------------------------------------------------------ online: the last round
def test_max_steps_ending_mid_round_is_said_and_counted(tmp_path, capsys):
    """max_steps=3 with steps_per_generation=2: round 2 was generated and judged in full but only 1 of its 2 slices
    trained, with no word (the 'trained on every sampled example' reading of the run was wrong)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "online"))
    from test_online_run import tiny_cfg, tiny_run

    summary = tiny_run(tiny_cfg(tmp_path / "odd", max_steps=3)).train()
    assert summary["online"]["rounds"] == 2  # ceil(3 / 2): the second round is generated for one step
    assert summary["online"]["partial_last_round"] == {"round": 2, "steps_trained": 1, "round_steps": 2}
    out = capsys.readouterr().out
    assert "max_steps=3 is not a multiple of the round length 2" in out and "Set max_steps to 2 or 4" in out
    whole = tiny_run(tiny_cfg(tmp_path / "even", max_steps=2)).train()
    assert "partial_last_round" not in whole["online"] and whole["online"]["rounds"] == 1
    assert "not a multiple of the round length" not in capsys.readouterr().out


def test_the_report_says_a_run_ended_mid_round():
    from preflab.report.data_notes import online_notes

    notes = online_notes({"online": {"rounds": 2, "completions": 64,
                                     "partial_last_round": {"round": 2, "steps_trained": 1, "round_steps": 2}}})
    assert notes == ["generation: the last round (2) trained 1 of its 2 steps: max_steps ended the run mid-round "
                     "(online.partial_last_round)"]
    assert online_notes({"online": {"rounds": 2, "completions": 64}}) == []


# ------------------------------------------------------------------------- report: the eval an online run needs
@pytest.mark.parametrize("config, option", [
    ({"online_task": "demo"}, "--reward-fn demo_true_reward"),                       # the demo's default judge
    ({"online_task": "dataset", "reward_funcs": ["rf.py:score"]}, "--reward-fn rf.py:score"),
    ({"online_task": "dataset", "reward_funcs": "outputs/rm"}, "--reward-model outputs/rm"),
    ({"online_task": "dataset", "reward_funcs": ["a:f", "b:g"]}, "--reward-fn MODULE:FUNCTION"),  # several: yours
])
def test_the_no_eval_json_note_of_an_online_run_names_its_own_judge(config, option):
    """The note said `--reward-fn MODULE:FUNCTION` for every online run; a demo run's user tried the run's judge
    demo_true_reward (refused by --reward-fn then). It now names the run's one judge."""
    from preflab.report.runs import eval_command

    assert eval_command({"task": "online", "trainer": "grpo", **config}) == (
        f"preflab eval RUN_DIR --data HELDOUT_PAIRS {option}")


# ------------------------------------------------------------------- config: a flow mapping without spaces
def test_a_flow_mapping_written_without_a_space_after_the_colon_says_so(tmp_path):
    """reward_head_params={dim:3} (no space) is YAML for the key 'dim:3' with no value: the error was "['dim:3'] are
    not fields of reward_head: gpm (it has ['dim', 'normalize', 'tau'])", naming a field that looked right."""
    with pytest.raises(ConfigError, match=r"reward_head_params: YAML read 'dim:3' as a key with no value.*"
                                          r"'reward_head_params=\{dim: 3\}'"):
        load_config("examples/upo_reward_model.yaml", ["reward_head=gpm", "reward_head_params={dim:3}"])
    config = tmp_path / "c.yaml"  # the same in a config file
    config.write_text("model_name_or_path: builtin:tiny-llama\ndataset_name: x.jsonl\nloss_type: robust\n"
                      "objective_params: {label_smoothing:0.1}\n")
    with pytest.raises(ConfigError, match=r"objective_params: \{label_smoothing: 0.1\}"):
        load_config(config)
    # with the space, the same option loads and holds the number
    cfg = load_config("examples/upo_reward_model.yaml", ["reward_head=gpm", "reward_head_params={dim: 3}"])
    assert cfg.reward_head_params == {"dim": 3}


# ------------------------------------------------------------------ online: a refreshing recipe's reference
@pytest.mark.parametrize("example", ["examples/online/iterative_dpo.yaml", "examples/online/sppo.yaml",
                                     "examples/online/gpo.yaml"])
def test_refresh_reference_every_0_is_refused_for_a_recipe_that_refreshes(example):
    """trainer: iterative_dpo (sppo, gpo, upo) with refresh_reference_every=0 ran with 1 without a word: the user asked
    for a fixed pi_0 reference and got the round-start policy."""
    with pytest.raises(ConfigError, match=r"refresh_reference_every=0 .* does not fit trainer"):
        load_config(example, ["refresh_reference_every=0"])
    assert load_config(example, ["refresh_reference_every=3"]).refresh_reference_every == 3
    cfg = load_config("examples/online/online_dpo.yaml", ["refresh_reference_every=0"])  # online_dpo's own value
    assert cfg.refresh_reference_every == 0


# --------------------------------------------------------------------- eval: runs with no policy of their own
def test_eval_of_a_game_run_or_a_recipe_folder_says_what_to_do(tmp_path, capsys):
    """`preflab eval GAME_RUN` said "no tokenizer found ... save the tokenizer" (a game has no text), and a recipe's
    top folder "holds no model" without naming its stage runs. Both are refused naming the run's kind and, for a
    recipe, the stage folders that hold a model."""
    from preflab.cli import main

    game = tmp_path / "game"
    game.mkdir()
    (game / "config.yaml").write_text("task: online\nonline_task: game\ntrainer: inpo\n")
    recipe = tmp_path / "dstc"
    (recipe / "sft").mkdir(parents=True)
    (recipe / "config.yaml").write_text("task: dstc\n")
    (recipe / "sft" / "config.yaml").write_text("task: sft\nmodel_name_or_path: builtin:tiny-llama\n")
    (recipe / "sft" / "config.json").write_text("{}")
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    for task in ([], ["--task", "reward"]):
        assert main(["eval", str(game), "--data", str(data), *task]) == 2
        assert "is an online_task: game run" in capsys.readouterr().err
    assert main(["eval", str(recipe), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "is a task: dstc recipe run" in err and f"evaluate one of its stage runs ({recipe / 'sft'})" in err


# ----------------------------------------------------------------------- Ctrl-C before the first step
def test_ctrl_c_while_a_run_loads_says_what_its_folder_keeps(tmp_path, monkeypatch, capsys):
    """Ctrl-C (or SIGTERM) while `preflab train` still loaded (an online run builds its policy and evaluates its start
    before the loop) printed "Finished checkpoints are kept: resume_from_checkpoint: true continues from the latest
    one"; the folder held none, and the resume it advised stopped with "holds no checkpoint-* folder"."""
    import preflab.config
    from preflab.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(preflab.config, "preflight", interrupted)
    out = tmp_path / "run"
    assert main(["train", "examples/online/online_dpo.yaml", f"output_dir={out}"]) == 130
    err = capsys.readouterr().err
    assert f"interrupted before the run's first step (while it loaded its data and models). {out} holds no " \
           "finished checkpoint" in err
    assert "continues from the latest one" not in err


def test_ctrl_c_in_another_command_promises_no_checkpoint():
    import argparse

    from preflab.cli import Terminated, interrupted_message

    assert interrupted_message(KeyboardInterrupt(), argparse.Namespace(command="eval")) == "preflab: interrupted."
    assert interrupted_message(Terminated(), argparse.Namespace(command="train")) == (
        "preflab: terminated (SIGTERM) while reading the config; nothing was started.")


# ------------------------------------------------------------- report: an online dataset run with an eval set
def test_report_of_an_online_dataset_run_with_an_eval_set(tmp_path):
    """`preflab report` of an online_task: dataset run with eval_dataset_name / eval_fraction stopped with KeyError
    'steps': its summary.json pair eval_reward_before / _after was read as an eval row of metrics.jsonl. It renders,
    with eval_reward once (the run's own before / after), and the held-out prompts it cut are listed."""
    import json

    from preflab.report.headline import headline_rows
    from preflab.report.html import render_report
    from preflab.report.runs import load_run

    run = tmp_path / "online"
    run.mkdir()
    rows = [{"step": s, "loss": 0.0, "reward": 2.0 + s} for s in (1, 2)]
    rows += [{"step": s, "eval_reward": 6.0 + 2 * s, "eval_win_rate_vs_reference": 0.5 + 0.1 * s} for s in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.yaml").write_text("task: online\nonline_task: dataset\ntrainer: grpo\nreward_funcs: rf.py:rew\n")
    (run / "summary.json").write_text(json.dumps({
        "global_step": 2, "eval_reward_before": 6.7, "eval_reward_after": 10.0, "win_rate_vs_reference": 0.7,
        "data": {"prompt_tokenize": {"source": "p.jsonl", "total": 20, "prompt_truncated": 2},
                 "eval_prompt_tokenize": {"source": "e.jsonl", "total": 10, "prompt_truncated": 3}}}))
    loaded = load_run(run, "online")
    assert [r["metric"] for r in headline_rows(loaded) if r["metric"].startswith("eval_")] == [
        "eval_reward", "eval_win_rate_vs_reference"]  # eval_reward once: the summary's before / after
    html = render_report([loaded])
    assert "data: training prompts (tokenized) of p.jsonl: 2 with the prompt truncated" in html
    assert "data: held-out eval prompts (tokenized) of e.jsonl: 3 with the prompt truncated" in html


def test_online_held_out_prompts_are_counted_and_checked_against_the_positions(tmp_path, capsys):
    """The held-out prompts of online_task: dataset (eval_dataset_name) were never said or counted: cut ones went
    unreported, and one past the policy's positions was generated from anyway (the training prompts were refused)."""
    import json

    from preflab.errors import DataError
    from preflab.online.run import OnlineRun

    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"echo: sun cat {i}"}) + "\n" for i in range(6)))
    held.write_text("".join(json.dumps({"prompt": "echo: " + ("word " * (300 if i < 2 else 2)) + str(i)}) + "\n"
                            for i in range(5)))
    base = ["online_task=dataset", f"dataset_name={train}", f"eval_dataset_name={held}", "eval_steps=1",
            "reward_funcs=preflab.online.tasks:demo_echo_reward", "max_steps=1", "prompts_per_generation=2"]
    with pytest.raises(DataError, match=r"the eval prompts of .*held.jsonl: 2 of 5 prompt\(s\) need more positions"):
        OnlineRun(load_config("examples/online/grpo.yaml", base + [f"output_dir={tmp_path / 'a'}"]))
    run = OnlineRun(load_config("examples/online/grpo.yaml",
                                base + ["max_prompt_length=64", f"output_dir={tmp_path / 'b'}"]))
    assert run.data_report["eval_prompt_tokenize"]["prompt_truncated"] == 2
    assert run.data_report["eval_prompt_tokenize"]["total"] == 5
    assert f"preflab data (eval): 5 held-out prompts ({held})".replace("preflab data", "preflab: data") \
        in capsys.readouterr().out


# ------------------------------------------------------------------------------- recipes: ICPL's human rater
def _candidates(statuses):
    return [{"status": s, "arm": i, "metric": float(i)} for i, s in enumerate(statuses)]


def test_icpl_human_rater_with_one_program_that_ran_asks_nothing():
    """With one program that ran, no answer could be valid and the question repeated forever (the scripted code
    model crashes its last sample on purpose, so samples: 2 always did this). Now: that one is good, no bad, as the
    auto rater picks, and nothing is asked."""
    from preflab.reward_design import AutoRater, HumanRater

    said = []

    def ask(_):
        raise AssertionError("asked with nothing to compare")

    candidates = _candidates(["ok", "error"])
    assert HumanRater(ask=ask, say=said.append).rate(candidates) == AutoRater().rate(candidates) == (0, None)
    assert said == ["icpl: 1 program(s) ran this iteration, so there is no pair to rate; [0] is taken as good."]
    assert HumanRater(ask=ask, say=said.append).rate(_candidates(["error", "error"])) == (None, None)


def test_icpl_human_rater_says_why_an_answer_is_refused_and_stops_when_input_ends():
    from preflab.reward_design import HumanRater

    answers, said = iter(["2,2", "0, 2"]), []
    assert HumanRater(ask=lambda _: next(answers), say=said.append).rate(_candidates(["ok", "error", "ok"])) == (0, 2)
    assert said == ["icpl: '2,2' is not two different indices from [0, 2] (e.g. 0,2); again."]

    def ended(_):
        raise EOFError

    with pytest.raises(ConfigError, match=r"rater: human asks .* standard input, which ended.*rater=auto"):
        HumanRater(ask=ended).rate(_candidates(["ok", "ok"]))


# ------------------------------------------------------------------------ online: max_completion_length null
def test_max_completion_length_null_is_refused_for_an_online_run():
    """max_completion_length=null (no limit, its meaning for preference data) ran as 16 new tokens without a word;
    left out, a grpo run gets TRL's 512, so the two spellings of "no value" differed by 32x."""
    with pytest.raises(ConfigError, match=r"max_completion_length=null \(no limit\) cannot bound sampling"):
        load_config("examples/online/grpo.yaml", ["max_completion_length=null"])
    assert load_config("examples/online/grpo.yaml", []).max_completion_length == 16  # the file's value
    assert load_config("examples/quickstart.yaml", ["max_completion_length=null"]).max_completion_length is None


def test_heldout_prompts_beyond_the_demo_tasks_64_is_refused():
    """heldout_prompts=1000 evaluated the demo's 64 held-out prompts and said nothing (true_reward_before equal to the
    default run's). The bound is the demo task's own count."""
    from preflab.demo.task import make_splits

    assert len(make_splits(0)[2]) == 64
    with pytest.raises(ConfigError, match=r"heldout_prompts=1000 is not allowed: heldout_prompts must be in \[1, 64\]"):
        load_config("examples/online/online_dpo.yaml", ["heldout_prompts=1000"])
    assert load_config("examples/online/online_dpo.yaml", ["heldout_prompts=64"]).heldout_prompts == 64


def test_the_report_names_no_online_trainer_for_a_reward_run(tmp_path):
    """A reward run's config.yaml carries the online default `trainer: online_dpo`; the run list said
    '(task reward, trainer online_dpo, ...)' for a Bradley-Terry or EM reward model."""
    import json

    from preflab.report.html import _purpose
    from preflab.report.runs import load_run

    run = tmp_path / "rm"
    run.mkdir()
    (run / "config.yaml").write_text("task: reward\ntrainer: online_dpo\nloss_type: sigmoid\nmodel_name_or_path: m\n")
    (run / "summary.json").write_text(json.dumps({"global_step": 1}))
    assert _purpose(load_run(run)) == " (task reward, model_name_or_path m)"


def test_dotted_overrides_set_one_key_of_reward_head_params_and_lr_scheduler_kwargs():
    """reward_head_params.em_iterations=1 was "unknown config key" (objective_params.x and recipe_params.x worked): the
    whole mapping had to be rewritten on the command line. Now it sets one key and keeps the file's others."""
    cfg = load_config("examples/maxmin_mixture.yaml", ["reward_head_params.em_iterations=1"])
    assert cfg.reward_head_params == {"num_components": 2, "em_iterations": 1, "user_column": "user_id",
                                      "group_column": "group"}
    cfg = load_config("examples/quickstart.yaml", ["lr_scheduler_kwargs.num_cycles=0.25"])
    assert cfg.lr_scheduler_kwargs == {"num_cycles": 0.25}
