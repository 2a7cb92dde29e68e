"""2 processes equal 1 process for the online trainers that had no 2-process test (docs/guarantees.md's matrix):
`accelerate launch --multi_gpu --num_processes 2` (gloo on CPU) of test_online_run's tiny run with
per_device_train_batch_size 2, against one process with 4 (an online step takes its round's examples on any number
of processes; the ranks generate and judge the round together and each trains on its half of the step's examples).
The preference-game trainers run the shipped examples/online/nash_game.yaml through `preflab train` on both sides.
The vision online run (online_task: vision_dataset) is refused on several processes, the launch's last run.
All the runs share one launch (tests/loops/scale_matrix_run.py's online and cli modes): a launch costs a launcher
and two ranks' imports (about 60-70 s here, 2 busy cores)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from test_online_run import tiny_cfg, tiny_run  # noqa: E402

# learning rate 1e-3 for the GRPO family: at the tiny run's 1e-2 grpo and gspo differ by 1.1e-5 in the weights (the
# losses agree), AdamW's division by sqrt(v) enlarging float32 summation order where a gradient is near zero, which
# scales with the rate (docs/scaling.md measured 4.9e-6 for grpo by hand at 1e-2)
GROUP_RUN = dict(beta=0.04, steps_per_generation=2, num_iterations=2, learning_rate=1e-3)
RUNS = {"rloo": dict(trainer="rloo", beta=0.05, normalize_advantages=True, reward_clip_range=[-1.0, 1.0],
                     steps_per_generation=2, num_iterations=2),
        **{name: dict(trainer=name, **GROUP_RUN)
           for name in ("grpo", "bnpo", "dapo", "dr_grpo", "cispo", "sapo", "luspo", "vespo")},
        "gspo": dict(trainer="gspo", **GROUP_RUN),
        "tpo": dict(trainer="tpo"),
        "rso": dict(trainer="rso", rso_num_samples=2, num_generations=4),
        "upo": dict(trainer="upo", upo_selection="sample"),
        "mcts_dpo": dict(trainer="mcts_dpo", mcts_step_delimiter=" ", mcts_iterations=3),
        "sppo": dict(trainer="sppo"),
        "gpo": dict(trainer="gpo", preference_temperature=0.5),
        "hypo_online_pairs": dict(trainer="hypo_online_pairs"),
        "dpa_rsf": dict(trainer="dpa_rsf"),
        "iterative_dpo": dict(trainer="iterative_dpo")}
SHARED = dict(generation_batch_size=2, max_steps=4)
ROOT = Path(__file__).parents[2]
GAME = ROOT / "examples" / "online" / "nash_game.yaml"
GAME_TRAINERS = ("inpo", "apo", "nash_md", "online_ipo", "sppo")      # egpo, spo: tests/online/test_game.py
GAME_ARGS = ["max_steps=12", "steps_per_generation=4", "logging_steps=4", "disable_tqdm=true",
             "per_device_train_batch_size=6"]
VISION = ["task=online", "online_task=vision_dataset", "trainer=rloo", "model_name_or_path=builtin:tiny-qwen2-vl",
          f"dataset_name={ROOT / 'examples' / 'vlm' / 'data' / 'grounding.jsonl'}", "reward_funcs=verifier:vision_r1_format",
          "num_generations=2", "prompts_per_generation=2", "max_completion_length=4", "max_steps=1", "use_cpu=true",
          "disable_tqdm=true"]
VISION_REFUSAL = "online_task: vision_dataset generates on one process; run it without a launcher."


def _arg(key, value):
    """k=v as scale_matrix_run.py reads it (yaml): lists and strings with spaces JSON-quoted."""
    return f"{key}={json.dumps(value) if isinstance(value, (list, str)) else value}"


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, accelerate_launch):
    """One launch of 2 processes running every trainer of RUNS, then of GAME_TRAINERS (root / name: that trainer's
    run, root / game-<name> a game run), then the vision run that must be refused: the launch fails with that
    refusal (returns root and the launch's stderr)."""
    root = tmp_path_factory.mktemp("online-trainers-two-processes")
    runs = [a for i, (name, over) in enumerate(RUNS.items())
            for a in [*(["--"] if i else []), "online", str(root / name), "per_device_train_batch_size=2",
                      *(_arg(k, v) for k, v in {**SHARED, **over}.items())]]
    runs += [a for name in GAME_TRAINERS
             for a in ["--", "cli", str(root / f"game-{name}"), str(GAME), f"trainer={name}", *GAME_ARGS]]
    runs += ["--", "cli", str(root / "vision"), *VISION]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    env.pop("WORLD_SIZE", None)
    cmd = accelerate_launch("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                            "--dynamo_backend", "no", str(Path(__file__).parents[1] / "loops" / "scale_matrix_run.py"),
                            *runs)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and VISION_REFUSAL in proc.stderr, proc.stderr[-3000:]
    return root, proc.stderr


def _losses(path):
    return [r["loss"] for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_online_trainer_on_two_processes_equals_one_process(tmp_path, two_processes, name):
    """2 processes x batch 2 against 1 process x batch 4, the same seed and rounds: the logged losses and the final
    weights agree to 1e-5 (float summation order; losses also to 1e-7 relative: sppo and gpo at their own beta 0.001
    regress onto targets of order 1/beta, losses of ~4e6 whose summation order moved gpo's by 0.11, 1.7e-8
    relative), both runs say their world size, and the weights moved."""
    one = tmp_path / "one"
    tiny_run(tiny_cfg(one, per_device_train_batch_size=4, **SHARED, **RUNS[name])).train()
    two = two_processes[0] / name
    assert json.loads((two / "summary.json").read_text())["environment"]["world_size"] == 2
    assert json.loads((one / "summary.json").read_text())["environment"]["world_size"] == 1
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-7, abs=1e-5) and len(_losses(one)) == 4
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    start = tiny_causal_lm(tiny_tokenizer("char"), hidden_size=32, seed=1).state_dict()
    assert any(float((a[k] - start[k]).abs().max()) > 1e-3 for k in a)           # and the weights did move


@pytest.mark.slow
@pytest.mark.parametrize("trainer", GAME_TRAINERS)
def test_game_trainer_on_two_processes_equals_one_process(tmp_path, two_processes, trainer):
    """The shipped game under `preflab train` on 2 processes (each rank trains on its part of every step's examples,
    the gradients averaged) and on one: the same final and average policy distributions to 1e-6, the policy moved."""
    from preflab.config import load_config
    from preflab.online.run import OnlineRun

    one = OnlineRun(load_config(GAME, [f"output_dir={tmp_path / 'one'}", f"trainer={trainer}", *GAME_ARGS])).train()
    two = json.loads((two_processes[0] / f"game-{trainer}" / "summary.json").read_text())
    assert two["environment"]["world_size"] == 2 and one["environment"]["world_size"] == 1
    for key in ("policy_distribution", "policy_distribution_average"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    assert sum(abs(p - q) for p, q in zip(one["policy_distribution"], one["reference_distribution"])) > 0.01


@pytest.mark.slow
def test_the_vision_online_run_on_two_processes_is_refused_naming_the_launch_to_drop(two_processes):
    """online_task: vision_dataset generates on one process: under a launch of 2 it stops with the reason (after its
    model loads), every rank alike, and trains nothing."""
    root, stderr = two_processes
    assert stderr.count(VISION_REFUSAL) >= 2                       # both ranks said it
    assert not (root / "vision" / "model.safetensors").exists() and not (root / "vision" / "checkpoint-1").exists()
