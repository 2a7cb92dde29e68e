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
GAME_TRAINERS = ("inpo", "apo", "nash_md", "online_ipo", "sppo", "egpo", "spo")
GAME_ARGS = ["max_steps=12", "steps_per_generation=4", "logging_steps=4", "disable_tqdm=true",
             "per_device_train_batch_size=6"]
GAME_OWN_ARGS = {"spo": ["num_generations=4", "prompts_per_generation=6"]}  # spo samples a group per prompt
VISION = ["task=online", "online_task=vision_dataset", "trainer=rloo", "model_name_or_path=builtin:tiny-qwen2-vl",
          f"dataset_name={ROOT / 'examples' / 'vlm' / 'data' / 'grounding.jsonl'}", "reward_funcs=verifier:vision_r1_format",
          "num_generations=2", "prompts_per_generation=2", "max_completion_length=4", "max_steps=1", "use_cpu=true",
          "disable_tqdm=true"]
VISION_REFUSAL = "online_task: vision_dataset generates on one process; run it without a launcher."
# The runs of the online_dpo / dapo tests at the end (they had a launch of their own in test_online_run.py), the
# launch's first three: TWO_PROCESS, the same with save_steps=3, CLIP_RUN with 3 examples a process.
TWO_PROCESS = ["per_device_train_batch_size=2", "generation_batch_size=2", "max_steps=4"]
# test_two_processes_log_the_one_process_clip_ratio_extrema's run, without the batch size (one process: 6, two: 3).
# seed 4: rank 1 holds step 4's high_max (rank 0's own max is 1/3 there, checked by making the step use each rank's
# own value: the rows then differ)
CLIP_RUN = ["trainer=dapo", "beta=0.0", "gradient_accumulation_steps=1", "max_steps=4", "epsilon=0.05", "seed=4"]
# test_the_entropy_bonus_under_two_processes_equals_one_process's run (it had a launch of its own in
# test_grpo_trl_options.py): one example per micro-batch, 2 processes x accumulation 2 against 1 x 4
ENTROPY_RUN = dict(trainer="dapo", prompts_per_generation=8, steps_per_generation=2, per_device_train_batch_size=1,
                   generation_batch_size=2, max_steps=4, entropy_coef=0.5, beta=0.0)


def _arg(key, value):
    """k=v as scale_matrix_run.py reads it (yaml): lists and strings with spaces JSON-quoted."""
    return f"{key}={json.dumps(value) if isinstance(value, (list, str)) else value}"


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, accelerate_launch):
    """One launch of 2 processes running the online_dpo / dapo runs `two`, `two-saved` and `two-clip` (TWO_PROCESS,
    the same with save_steps=3, CLIP_RUN), `entropy` (ENTROPY_RUN), every trainer of RUNS, then of GAME_TRAINERS (root / name: that trainer's
    run, root / game-<name> a game run), then the vision run that must be refused: the launch fails with that
    refusal (returns root and the launch's stderr)."""
    root = tmp_path_factory.mktemp("online-trainers-two-processes")
    runs = ["online", str(root / "two"), *TWO_PROCESS, "--",
            "online", str(root / "two-saved"), *TWO_PROCESS, "save_steps=3", "--",
            "online", str(root / "two-clip"), "per_device_train_batch_size=3", *CLIP_RUN, "--",
            "online", str(root / "entropy"), *(_arg(k, v) for k, v in ENTROPY_RUN.items()),
            "gradient_accumulation_steps=2"]
    runs += [a for name, over in RUNS.items()
             for a in ["--", "online", str(root / name), "per_device_train_batch_size=2",
                       *(_arg(k, v) for k, v in {**SHARED, **over}.items())]]
    runs += [a for name in GAME_TRAINERS
             for a in ["--", "cli", str(root / f"game-{name}"), str(GAME), f"trainer={name}", *GAME_ARGS,
                       *GAME_OWN_ARGS.get(name, [])]]
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
    """The shipped game under `preflab train` on 2 processes (gloo on CPU; each rank trains on its part of every step's
    examples, the gradients averaged; spo's answers drawn with the round's seed, egpo's half step on every example on
    each rank) and on one: the same final and average policy distributions to 1e-6, the policy moved. (egpo and spo
    had a launch of their own in tests/online/test_game.py.)"""
    from preflab.config import load_config
    from preflab.online.run import OnlineRun

    one = OnlineRun(load_config(GAME, [f"output_dir={tmp_path / 'one'}", f"trainer={trainer}", *GAME_ARGS,
                                       *GAME_OWN_ARGS.get(trainer, [])])).train()
    two = json.loads((two_processes[0] / f"game-{trainer}" / "summary.json").read_text())
    assert two["environment"]["world_size"] == 2 and one["environment"]["world_size"] == 1
    assert two["environment"]["backend"] == "gloo"
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


def _weights(path):
    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, two_processes):
    """accelerate launch with 2 processes (gloo on CPU): prompts' generation chunks are drawn by both ranks and
    gathered, each rank trains on its half of every step's examples; the result equals one process with the same
    global batch (2 x 2 x accumulation 2 vs 1 x 4 x 2) to 1e-5 (float summation order). The finished run (the
    launch's first: it formed the process group, and the script keeps the group open for the next runs) left no DDP
    wrapper alive on either rank (TrainingRun._drop_ddp_wrapper)."""
    tiny_run(tiny_cfg(tmp_path / "one", per_device_train_batch_size=4, generation_batch_size=2, max_steps=4)).train()
    two = two_processes[0] / "two"     # TWO_PROCESS: 2 processes x per_device_train_batch_size 2
    a, b = _weights(tmp_path / "one"), _weights(two)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    rows = lambda p: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]  # noqa
    assert [r["loss"] for r in rows(tmp_path / "one")] == pytest.approx([r["loss"] for r in rows(two)], abs=1e-5)
    for rank in (0, 1):
        assert json.loads((two / f"after-train-rank{rank}.json").read_text()) == {"live_ddp_wrappers": 0,
                                                                                 "process_group_open": True}


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_on_one_process_with_the_same_config(tmp_path, two_processes):
    """An online step takes its round's examples on any number of processes (per_device_train_batch_size only bounds
    the micro-batches), so the same config resumed on one process from a 2-process checkpoint is the same run. It was
    refused ("trained with a global batch of 4 (per_device_train_batch_size 2 x 2 processes); this run has 2 ...
    every step's batch and the data order from here on would differ"), though it ends with the 2-process weights."""
    two, one = two_processes[0] / "two-saved", tmp_path / "one"   # TWO_PROCESS with save_steps=3
    resumed = tiny_run(tiny_cfg(one, per_device_train_batch_size=2, generation_batch_size=2, max_steps=4,
                                save_steps=3, resume_from_checkpoint=str(two / "checkpoint-3")))
    assert resumed.train()["resumed_from_step"] == 3
    a, b = _weights(two), _weights(one)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


@pytest.mark.slow
def test_two_processes_log_the_one_process_clip_ratio_extrema(tmp_path, two_processes):
    """dapo, off-policy on a round's second step (epsilon 0.05 clips): one micro-batch per process per step, so the
    two ranks' micro-batches together hold the one process's micro-batch, and TRL's min / max over the gathered
    completions is the one process's min / max. Every clip_ratio key of every row is equal (1e-6: float32 sums), and
    some clip. The 2-process run (CLIP_RUN, 3 examples a process) is the two_processes launch's `two-clip`."""
    tiny_run(tiny_cfg(tmp_path / "one", trainer="dapo", beta=0.0, gradient_accumulation_steps=1, max_steps=4,
                      epsilon=0.05, seed=4, per_device_train_batch_size=6)).train()
    rows = lambda p: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]  # noqa
    one, two = rows(tmp_path / "one"), rows(two_processes[0] / "two-clip")
    keys = ["clip_ratio/low_min", "clip_ratio/high_max", "clip_ratio/low_mean", "clip_ratio/high_mean"]
    assert [r[k] for r in two for k in keys] == pytest.approx([r[k] for r in one for k in keys], abs=1e-6)
    assert max(r["clip_ratio/high_max"] for r in one) > 0


@pytest.mark.slow
def test_the_entropy_bonus_under_two_processes_equals_one_process(tmp_path, two_processes):
    """The bonus's second LM-head pass runs outside the DDP-wrapped forward: its gradient still reaches every rank's
    weights through DDP's all-reduce. One example per micro-batch on both sides (1 x 4 accumulation vs 2 x 2), so
    the micro-batches' token means are the same: the weights agree to float summation order (7e-7 measured). The
    2-process run is the two_processes launch's `entropy`."""
    tiny_run(tiny_cfg(tmp_path / "one", **ENTROPY_RUN, gradient_accumulation_steps=4)).train()
    a, b = _weights(tmp_path / "one"), _weights(two_processes[0] / "entropy")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
