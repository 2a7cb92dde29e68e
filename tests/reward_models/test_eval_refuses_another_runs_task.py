"""`preflab eval RUN --task T` refuses a run of another task up front, from the task in the run's own config.yaml
(preflab.eval.run_files.refuse_other_task), naming the run's task and the command that evaluates it: a DPO run given
`--task reward` went through transformers' from_pretrained, which printed its missing-key lists (the score head),
before the refusal of a random reward head. A reward model saved inside another run's folder without a config.yaml
of its own (an online run's judge, a recipe stage's reward model) is no output of that run and still evaluates."""
import json
import shutil

import pytest
import yaml

from preflab.cli import main
from preflab.errors import ConfigError
from reward_synthetic import marker_rows


def _policy_run(path, task="dpo"):
    """A finished run folder of `task` as `preflab train` leaves it: a tiny causal LM, its tokenizer, config.yaml."""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    tiny_causal_lm(tok, hidden_size=16, num_layers=1).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    (path / "config.yaml").write_text(yaml.safe_dump({"task": task, "model_name_or_path": "builtin:tiny-llama",
                                                      "loss_type": "sigmoid"}))
    return path


def _pairs(tmp_path, n=4):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(n, seed=0)))
    return path


def test_a_dpo_run_given_task_reward_is_refused_naming_its_task_before_it_loads(tmp_path, capsys):
    # seen: `preflab eval outputs/dpo --task reward --data pairs.jsonl` printed transformers' report of the missing
    # score.weight, then "has no trained reward head (score.weight is not in its weights; it is a LlamaForCausalLM
    # checkpoint)": the run's own config.yaml said task: dpo all along
    run = _policy_run(tmp_path / "dpo")
    (run / "checkpoint-2").mkdir()
    (run / "checkpoint-2" / "model.safetensors").write_bytes(b"")
    (run / "checkpoint-2" / "trainer_state.json").write_text("{}")
    data = _pairs(tmp_path)
    for target in (run, run / "checkpoint-2"):
        assert main(["eval", str(target), "--task", "reward", "--data", str(data)]) == 2
        err = capsys.readouterr().err
        assert (f"{target} is a task: dpo run; --task reward evaluates task: reward runs. Evaluate it with "
                f"`preflab eval {target} --data ...` (no --task).") in err
        assert "no trained reward head" not in err
    assert not (run / "eval.json").exists()


@pytest.mark.parametrize("task, given, runs, command", [
    ("reward", "dpo", "dpo, sft or online", "--task reward --data ...`"),
    ("online", "vlm", "vlm", "--data ...` (no --task)"),
    ("vlm", "reward", "reward", "--task vlm --data ...`"),
    ("sft", "diffusion", "diffusion", "--data ...` (no --task)"),
])
def test_every_eval_task_refuses_a_run_of_another_task_with_the_command_that_fits(tmp_path, capsys, task, given, runs,
                                                                                  command):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"task": task, "model_name_or_path": "builtin:tiny-llama"}))
    args = ["eval", str(run), "--data", str(tmp_path / "none.jsonl"), "--task", given]  # without --task: the run's
    assert main(args) == 2
    assert (f"{run} is a task: {task} run; --task {given} evaluates task: {runs} runs. Evaluate it with "
            f"`preflab eval {run} {command}.") in capsys.readouterr().err


def test_a_reward_model_inside_another_runs_folder_still_evaluates_as_task_reward(tiny_rm_dir, tmp_path, capsys):
    # an online run's judge saved into the run's output_dir (no config.yaml of its own: run_config would read the
    # online run's), and a reward run nested in a recipe-like folder with its own config.yaml (task: reward)
    online = _policy_run(tmp_path / "online", task="online")
    judge = shutil.copytree(tiny_rm_dir, online / "judge")  # a reward model saved as preflab saves one
    stage = shutil.copytree(tiny_rm_dir, online / "rm")
    (stage / "config.yaml").write_text(yaml.safe_dump({"task": "reward", "model_name_or_path": "builtin:tiny-llama"}))
    data = _pairs(tmp_path, 4)
    for rm in (judge, stage):
        out = tmp_path / f"{rm.name}.json"
        assert main(["eval", str(rm), "--task", "reward", "--data", str(data), "--out", str(out)]) == 0
        assert json.loads(out.read_text())["num_pairs"] == 4
    capsys.readouterr()


def test_a_policy_run_given_as_a_reward_model_is_refused_by_its_task(tmp_path):
    # --reward-model / a judge path: load_reward_model read the DPO run through from_pretrained (its missing-key
    # lists printed) before refusing a random head
    from preflab.eval_cli.checkpoint import reward_model_fn
    from preflab.reward_models.heads import load_reward_model

    run = _policy_run(tmp_path / "dpo")
    want = (f"{run} is a task: dpo run, not a reward model; give a reward model directory: a `task: reward` run's "
            "output_dir, its checkpoint-<step>, or a sequence-classification checkpoint.")
    for load in (load_reward_model, reward_model_fn):
        with pytest.raises(ConfigError) as err:
            load(str(run))
        assert str(err.value) == want


def test_an_image_text_online_run_is_refused_by_every_eval_task(tmp_path):
    # task: online with online_task: vision_dataset trains a VLM with GRPO: the policy eval (text) cannot feed it
    # images and --task vlm scores pairs with the run's pairwise objective, which GRPO is not; it was left to the
    # loaders (user trial 22: "hf download" advice for builtin:tiny-qwen2-vl, transformers' AutoModelForCausalLM
    # error, and the report's `--task vlm` command refused), now every --task refuses it with one message;
    # run_task reads the folder's own config only
    from preflab.eval.run_files import refuse_other_task, run_task, vision_grpo_eval_refusal

    run = tmp_path / "vision"
    (run / "checkpoint-3").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "online", "online_task": "vision_dataset",
                                                      "model_name_or_path": "builtin:tiny-qwen2-vl"}))
    for target in (run, run / "checkpoint-3"):
        for given in ("vlm", "dpo", "reward", "diffusion"):
            with pytest.raises(ConfigError) as err:
                refuse_other_task(target, given)
            assert str(err.value) == vision_grpo_eval_refusal(target)
            # the model to load is the run's folder, for a checkpoint too
            assert f"from_pretrained({str(run)!r})" in str(err.value)
            assert f"{target} is an image-text GRPO run" in str(err.value)
    (run / "nested").mkdir()
    assert (run_task(run), run_task(run / "checkpoint-3"), run_task(run / "nested")) == ("online", "online", None)
