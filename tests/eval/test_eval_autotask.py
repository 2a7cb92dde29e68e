"""`preflab eval RUN` without --task evaluates RUN with the --task its saved config names (preflab.eval_cli.cli.
eval_task_of, preflab.eval.run_files.eval_task_of_run): task: reward / diffusion / vlm, and task: sft with a teacher
(distill), said in one line; a policy run, a run no --task evaluates as it trained and a folder without a config keep
the policy eval (dpo). Found in a user trial: `preflab eval outputs/my-diffusion-run --data ...` was refused with
"--task dpo evaluates task: dpo, sft or online runs" although the run's config.yaml said task: diffusion. An explicit
--task is kept as given, a wrong one refused as before; an option the routed task does not read is refused naming it."""
import json
from pathlib import Path

import pytest
import yaml

import preflab.eval_cli.cli
import preflab.loops.diffusion_eval
import preflab.loops.distill_eval
import preflab.loops.vlm_eval
import preflab.reward_models.cli
from preflab.cli import main

ROOT = Path(__file__).resolve().parents[2]
ROUTED = {"reward": preflab.reward_models.cli, "diffusion": preflab.loops.diffusion_eval,
          "vlm": preflab.loops.vlm_eval, "distill": preflab.loops.distill_eval}
DISTILL = {"task": "sft", "model_name_or_path": "builtin:tiny-llama",
           "teacher_model_name_or_path": "builtin:tiny-qwen2"}


def _run(tmp_path, config: dict | None) -> Path:
    """A run folder with `config` as its saved config.yaml (none: no config) and an (empty) checkpoint-2 in it."""
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "model.safetensors").write_bytes(b"")
    (run / "checkpoint-2" / "trainer_state.json").write_text("{}")
    if config is not None:
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


@pytest.fixture
def called(monkeypatch):
    """Which evaluator `preflab eval` ran, with its args.task: each routed task's eval_task and the policy eval's run
    record their call instead of evaluating."""
    calls = []
    for task, module in ROUTED.items():
        monkeypatch.setattr(module, "eval_task", lambda args, task=task: calls.append((task, args.task)) or 0)
    monkeypatch.setattr(preflab.eval_cli.cli, "run", lambda args: calls.append(("dpo", args.task)) or 0)
    return calls


@pytest.mark.parametrize("config, task, said", [
    ({"task": "reward", "model_name_or_path": "builtin:tiny-llama"}, "reward", "task: reward"),
    ({"task": "diffusion", "model_name_or_path": "builtin:tiny-sd"}, "diffusion", "task: diffusion"),
    ({"task": "vlm", "model_name_or_path": "builtin:tiny-vlm"}, "vlm", "task: vlm"),
    (DISTILL, "distill", "task: sft with teacher_model_name_or_path: builtin:tiny-qwen2"),
])
def test_a_run_without_task_is_evaluated_with_the_task_its_saved_config_names(tmp_path, capsys, called, config,
                                                                              task, said):
    run = _run(tmp_path, config)
    for target in (run, run / "checkpoint-2"):  # a checkpoint reads its run's config.yaml
        called.clear()
        assert main(["eval", str(target), "--data", str(tmp_path / "rows.jsonl")]) == 0
        assert called == [(task, task)]
        err = capsys.readouterr().err
        assert f"preflab eval: {target}'s saved config says {said}; evaluating with --task {task}" in err
        assert err.count("evaluating with --task") == 1
    called.clear()
    assert main(["eval", str(run), "--task", task, "--data", str(tmp_path / "rows.jsonl")]) == 0  # as given
    assert called == [(task, task)] and "evaluating with" not in capsys.readouterr().err


@pytest.mark.parametrize("config", [
    {"task": "dpo", "model_name_or_path": "builtin:tiny-llama"},
    {"task": "sft", "model_name_or_path": "builtin:tiny-llama"},
    {"task": "online", "model_name_or_path": "builtin:tiny-llama", "reward_funcs": ["demo_true_reward"]},
    {"task": "online", "model_name_or_path": "builtin:tiny-vlm", "online_task": "vision_dataset"},
    None,
])
def test_a_policy_run_or_one_no_task_evaluates_keeps_the_policy_eval(tmp_path, capsys, called, config):
    run = _run(tmp_path, config)
    for target in (run, run / "checkpoint-2"):
        called.clear()
        assert main(["eval", str(target), "--data", str(tmp_path / "pairs.jsonl")]) == 0
        assert called == [("dpo", "dpo")]
        assert "evaluating with" not in capsys.readouterr().err


@pytest.mark.parametrize("task, config", [("diffusion", {"task": "diffusion", "model_name_or_path": "builtin:tiny-sd"}),
                                          ("reward", {"task": "reward", "model_name_or_path": "builtin:tiny-llama"}),
                                          ("distill", DISTILL)])
def test_an_explicit_other_task_is_refused_as_before_and_routed_options_are_checked(tmp_path, capsys, task, config):
    run = _run(tmp_path, config)
    data = str(tmp_path / "rows.jsonl")
    if task != "distill":  # a distillation run is also a task: sft policy: --task dpo gives its pair metrics
        assert main(["eval", str(run), "--task", "dpo", "--data", data]) == 2
        err = capsys.readouterr().err
        assert (f"{run} is a task: {task} run; --task dpo evaluates task: dpo, sft or online runs. Evaluate it with "
                f"`preflab eval {run} --task {task} --data ...`.") in err
        assert "evaluating with" not in err
    assert main(["eval", str(run), "--task", "vlm", "--data", data]) == 2
    assert f"{run} is a task: {config['task']} run; --task vlm evaluates task: vlm runs" in capsys.readouterr().err
    assert main(["eval", str(run), "--data", data, "--beta", "0.1"]) == 2  # the routed task reads no --beta
    err = capsys.readouterr().err
    assert f"evaluating with --task {task}" in err
    assert f"preflab eval --task {task} does not use --beta" in err
    assert not (run / "eval.json").exists()


def test_a_distillation_run_without_task_writes_the_eval_json_of_task_distill(tmp_path, capsys):
    # end to end: the routed eval and `--task distill` write the same eval.json (the student's divergence to the
    # run's teacher on the rows), which is not the policy eval's
    pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    from preflab.config import config_from_dict
    from preflab.loops.distill import DistillTrainer

    data = str(ROOT / "examples/data/loud_echo_sft.jsonl")
    run = tmp_path / "run"
    DistillTrainer(config_from_dict({**DISTILL, "dataset_name": data, "per_device_train_batch_size": 4,
                                     "max_length": 64, "max_steps": 1, "use_cpu": True, "disable_tqdm": True,
                                     "seed": 0, "output_dir": str(run)})).train()
    out = {}
    for name, task in (("routed", []), ("given", ["--task", "distill"])):
        assert main(["eval", str(run), *task, "--data", data, "--limit", "4", "--out", str(tmp_path / name)]) == 0
        out[name] = json.loads((tmp_path / name / "eval.json").read_text())
    assert "evaluating with --task distill" in capsys.readouterr().err
    assert out["routed"] == out["given"]
    assert out["routed"]["task"] == "distill" and out["routed"]["num_rows"] == 4
    assert out["routed"]["teacher"] == "builtin:tiny-qwen2" and out["routed"]["metrics"]["eval_loss"] > 0
