"""`preflab train` under DDP (examples/accelerate/ddp.yaml, 2 CPU processes, gloo) against one plain process with the
same global batch, for the run kinds whose 2-process check is one DDP run: a streaming run (from
tests/loops/test_streaming.py), examples/spo_degree.yaml (from tests/loops/test_spo_degree_run.py), a user's objective named by path
(docs/extending.md) and a
distillation run (from tests/loops/test_distill_run.py) and a diffusion run (from tests/diffusion/test_diffusion_run.py),
and tests/loops/tiny_run.py's tiny DPO run (from tests/loops/test_trainer.py; with a precomputed reference, from
tests/perf/test_ref_cache.py), and GRPO's clip extrema step on each rank (from
tests/objectives/test_grpo_clip_extrema.py), a tiny run uploading to a recorded hub (from tests/test_hub_push.py),
and load_best_model_at_end runs (examples/quickstart.yaml, and the runs with checkpoint extras; from
tests/loops/test_best_model.py), examples/sft.yaml with packing (from tests/loops/test_accelerate_configs.py), and a
resume from a damaged checkpoint (from tests/loops/test_resume_verify.py). Their
2-process runs share one launch (tests/loops/scale_matrix_run.py's `cli` and `tiny` runs, one after another in the
same two processes, each into its own folder; each `preflab train` seeds itself from its config, the tiny run from its
own seed; PREFLAB_CACHE_DIR a folder of the launch's own, empty at the start): a launch costs a launcher and two
ranks' imports, more than a tiny run. Each test then does its one-process run in this process and reads its own run's
folder."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import preflab

from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_streaming import PAIRS, max_diff, train  # noqa: E402  (the streaming tests' one-process run)
from test_best_model import EXTRA_OBJECTIVES, _best, _checkpoints, _evals, _same_weights  # noqa: E402

STREAMING = ["model_name_or_path=builtin:tiny-llama", "streaming=true", "streaming_shuffle_buffer=6", "max_steps=6",
             "logging_steps=1", "disable_tqdm=true", "max_length=64", "learning_rate=1e-3", "seed=3", "use_cpu=true"]
SPO_DEGREE = ["examples/spo_degree.yaml", "max_steps=6", "save_steps=0", "eval_fraction=0.1", "eval_steps=6",
              "use_cpu=true"]  # the yaml's dataset path is relative to the repository (the launch's cwd)
DISTILL = ["eval_fraction=0", "eval_steps=0", "logging_steps=1", "disable_tqdm=true", "max_steps=3", "lmbda=0.5",
           "seq_kd=true", "max_completion_length=6", "lr_scheduler_type=constant", "warmup_steps=0"]
DIFFUSION = ["task=diffusion", "loss_type=diffusion_dpo", "beta=200", "resolution=16", "max_steps=2",
             "learning_rate=1e-3", "lr_scheduler_type=constant", "logging_steps=1", "use_cpu=true", "disable_tqdm=true",
             "adam_epsilon=1e-5"]

BEST_COMMON = ["eval_fraction=0.25", "eval_steps=1", "save_steps=1", "save_total_limit=1", "logging_steps=1",
               "disable_tqdm=true", "max_steps=6", "load_best_model_at_end=true", "learning_rate=1.0",
               "warmup_steps=0"]  # test_best_model's quickstart run (the two processes' and the one process's)
SFT_PACKED = [str(ROOT / "examples/sft.yaml"), "packing=true", "eval_fraction=0", "eval_steps=0", "save_steps=0",
              "logging_steps=1", "disable_tqdm=true", "max_steps=3", "lr_scheduler_type=constant",
              "warmup_steps=0"]  # test_accelerate_configs' DDP run (the two processes' and the one process's)


def _streaming_runs(d: Path) -> list:
    data = write_jsonl(d / "rows.jsonl", PAIRS[:40])
    return [["cli", d / "two", *STREAMING, f"dataset_name={data}", "per_device_train_batch_size=4"]]


def _diffusion_runs(d: Path) -> list:
    """The tiny pipeline and pair data of tests/diffusion/test_diffusion_run.py's `assets`, written into d."""
    from preflab.diffusion.pipeline import tiny_text_to_image_pipeline
    from preflab.diffusion.shapes import write_pair_dataset

    tiny_text_to_image_pipeline(0).save_pretrained(d / "tiny")
    train_rows = write_pair_dataset(d / "data", 8, seed=0)
    write_pair_dataset(d / "data", 4, seed=1, name="test")
    return [["cli", d / "two", *DIFFUSION, f"model_name_or_path={d / 'tiny'}", f"dataset_name={train_rows}",
             "per_device_train_batch_size=2"]]


# a user's objective named by path (docs/extending.md's MarginWeighted), reading two data columns as extras
USER_LOSS = '''
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives.base import Objective, ObjectiveOutput, logratios, reward_metrics


@dataclass(frozen=True)
class MarginWeighted(Objective):
    beta: float = 0.1
    gamma: float = 0.5
    required_extras = ("margin", "weight")

    def compute(self, batch):
        h_w, h_l = logratios(batch)
        margin, weight = batch.extra("margin").to(h_w), batch.extra("weight").to(h_w)
        losses = weight * -F.logsigmoid(self.beta * (h_w - h_l) - self.gamma * margin)
        return ObjectiveOutput(losses.mean(), losses, reward_metrics(batch, self.beta))
'''
USER_RUN = ["model_name_or_path=builtin:tiny-llama", "max_steps=3", "logging_steps=1", "disable_tqdm=true",
            "max_length=64", "learning_rate=1e-3", "seed=3", "use_cpu=true", "gamma=0.3", "eval_steps=0"]


def _user_objective_runs(d: Path) -> list:
    (d / "my_losses.py").write_text(USER_LOSS)
    rows = [{**row, "margin": (i % 5) / 4, "weight": 0.5 + (i % 3) / 2} for i, row in enumerate(PAIRS[:48])]
    data = write_jsonl(d / "pairs_w.jsonl", rows)
    return [["cli", d / "two", *USER_RUN, f"loss_type={d / 'my_losses.py'}:MarginWeighted", f"dataset_name={data}",
             "per_device_train_batch_size=4"]]


# KTO on unpaired rows of one prompt: a micro-batch's KL pairs are its own completions rotated to other rows of the
# same prompt, so the KL pairs of 2 processes x 4 rows hold the same sequences as 1 process x 8 rows' (each in
# another row): z0, the mean over them, is the same on both sides exactly when it is taken over both processes'
# micro-batches, as TRL gathers it. Two desirable rows for each undesirable one: the policy raises the completions'
# log-probs, so z0 > 0 from step 2 on (balanced labels left it clamped at 0, where any mean agrees)
KTO_WORDS = ("cat", "dog", "owl", "bee", "elk", "yak", "ant", "emu", "cow", "pig", "hen", "fox")
KTO_RUN = ["model_name_or_path=builtin:tiny-llama", "loss_type=kto", "max_steps=3", "logging_steps=1",
           "disable_tqdm=true", "max_length=64", "learning_rate=1e-2", "beta=1.0", "seed=3", "use_cpu=true", "eval_steps=0",
           "eval_fraction=0", "lr_scheduler_type=constant", "warmup_steps=0", "save_steps=2"]


def _kto_runs(d: Path) -> list:
    rows = [row for i, w in enumerate(KTO_WORDS) for row in (
        {"prompt": "Say it loudly:\n", "completion": w.upper(), "label": True},
        {"prompt": "Say it loudly:\n", "completion": w if i % 2 else w.title(), "label": i % 3 == 0})]
    data = write_jsonl(d / "one_prompt.jsonl", rows)  # 24 rows, 16 desirable: 3 steps of 8
    return [["cli", d / "two", *KTO_RUN, f"dataset_name={data}", "per_device_train_batch_size=4"]]


# Each test's 2-process runs, given the test's folder (the folder exists; a run may write its inputs there).
LAUNCHED = {
    "test_two_processes_streaming_equal_one_process_with_double_batch": _streaming_runs,
    "test_spo_degree_two_processes_equal_one_process_double_batch": lambda d: [
        ["cli", d / "two", *SPO_DEGREE, "per_device_train_batch_size=4"]],
    "test_distill_two_processes_equal_one_process_with_sampled_steps": lambda d: [
        ["cli", d / "two", str(ROOT / "examples/distill.yaml"), "per_device_train_batch_size=4", "save_steps=2",
         *DISTILL]],
    "test_diffusion_two_gloo_processes_equal_one_process_with_double_batch": _diffusion_runs,
    "test_user_objective_two_processes_equal_one_process_with_double_batch": _user_objective_runs,
    "test_kto_two_processes_take_z0_over_both_and_equal_one_process_double_batch": _kto_runs,
    "test_ref_cache_two_processes_with_cache_equal_one_process_without": lambda d: [
        ["tiny", d / "two", "per_device_train_batch_size=2", "precompute_ref_log_probs=true"]],
    "test_tiny_run_two_processes_equal_one_process_double_batch": lambda d: [
        ["tiny", d / "two", "per_device_train_batch_size=2"]],
    "test_grpo_low_min_high_max_on_two_processes_equal_trls_gathered": lambda d: [["grpo_extrema", d / "two"]],
    "test_two_processes_upload_from_the_main_process_only": lambda d: [["hub_push", d / "two"]],
    "test_two_processes_pick_the_same_best_checkpoint_as_one": lambda d: [
        ["cli", d / "two", str(ROOT / "examples/quickstart.yaml"), *BEST_COMMON]],
    **{f"test_two_processes_restore_the_best_checkpoints_extras_on_every_rank[{name}]":
       (lambda d, name=name: [["best_extras", d / "two", name]]) for name in EXTRA_OBJECTIVES},
    "test_ddp_config_two_processes_equal_one_process_with_the_same_global_batch": lambda d: [
        ["cli", d / "two", *SFT_PACKED, "per_device_train_batch_size=4"]],
    # last: its cases end in refused resumes (tests/loops/resume_verify_run.py)
    "test_two_ddp_ranks_share_the_check_of_a_full_tensor_checkpoint": lambda d: [["resume_verify", d / "run", "ddp"]],
}
if importlib.util.find_spec("trl") is None:  # the GRPO extrema test skips itself (TRL is its oracle)
    del LAUNCHED["test_grpo_low_min_high_max_on_two_processes_equal_trls_gathered"]
if importlib.util.find_spec("diffusers") is None:  # the diffusion test skips itself; no run for it
    del LAUNCHED["test_diffusion_two_gloo_processes_equal_one_process_with_double_batch"]


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory, accelerate_launch):
    """`launched(test_name)`: the folder holding that test's 2-process runs (LAUNCHED), after checking that the
    launch succeeded. The first use launches the runs of every selected test of this module in one
    `accelerate launch --config_file examples/accelerate/ddp.yaml --num_processes 2`."""
    names = [n for n in LAUNCHED if any(item.name == n and item.module is request.module
                                        for item in request.session.items)] or [request.node.name]
    root = tmp_path_factory.mktemp("ddp-cli")
    runs = []
    for name in names:
        (root / name).mkdir()
        runs += LAUNCHED[name](root / name)
    # the preflab this test imported (the worktree's src, or benchmarks/mutation.py's planted copy), not ROOT/src
    # whatever was imported: a mutant in the copy was launched as the unmodified source and could not be caught
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(preflab.__file__).resolve().parents[1]),
           "PREFLAB_CACHE_DIR": str(root / "cache")}  # the reference cache test's run must miss
    env.pop("WORLD_SIZE", None)
    args = [str(a) for i, run in enumerate(runs) for a in ([] if i == 0 else ["--"]) + run]
    cmd = accelerate_launch("--config_file", str(ROOT / "examples/accelerate/ddp.yaml"), "--num_processes", "2",
                            str(HERE / "scale_matrix_run.py"), *args)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300 * (1 + len(runs)), cwd=ROOT)

    def folder(name: str) -> Path:
        assert name in names
        assert proc.returncode == 0, proc.stderr[-3000:]
        return root / name

    folder.stderr = proc.stderr  # what the launch's processes said, all runs together
    return folder


@pytest.mark.slow
def test_two_processes_streaming_equal_one_process_with_double_batch(tmp_path, launched):
    """`accelerate launch --num_processes 2` with streaming: every rank reads the stream and takes its slices of each
    global batch (with a shuffle buffer, over 2 passes of 40 rows); 2 x 4 equals 1 x 8 in losses and weights."""
    base = launched("test_two_processes_streaming_equal_one_process_with_double_batch")
    data = base / "rows.jsonl"  # PAIRS[:40], written before the launch
    train(tmp_path / "one", data, per_device_train_batch_size=8, streaming=True, streaming_shuffle_buffer=6,
          max_steps=6, on_bad_row="error")
    summary = json.loads((base / "two/summary.json").read_text())
    assert summary["environment"]["world_size"] == 2 and summary["data"]["streaming"]["passes_started"] == 2
    losses = {name: [json.loads(x)["loss"] for x in (folder / "metrics.jsonl").read_text().splitlines()
                     if '"loss"' in x] for name, folder in (("one", tmp_path / "one"), ("two", base / "two"))}
    assert len(losses["two"]) == 6 and losses["two"] == pytest.approx(losses["one"], abs=1e-5)
    two, one = (load_file(str(folder / "model.safetensors")) for folder in (base / "two", tmp_path / "one"))
    assert max_diff(two, one) < 1e-5


@pytest.mark.slow
def test_spo_degree_two_processes_equal_one_process_double_batch(tmp_path, launched, monkeypatch):
    """examples/spo_degree.yaml under DDP (2 CPU processes x 4 pairs) ends where 1 process x 8 pairs ends: the
    variants' second forward through the DDP-wrapped scorer and the head's all-reduced gradient (extra_params).
    The one plain process is `preflab train` in this process (preflab.cli.main; a subprocess cost an interpreter's
    imports)."""
    from preflab.cli import main

    base = launched("test_spo_degree_two_processes_equal_one_process_double_batch")
    monkeypatch.chdir(ROOT)  # the yaml's dataset path is relative to the repository
    assert main(["train", *SPO_DEGREE, f"output_dir={tmp_path / 'one'}", "per_device_train_batch_size=8"]) == 0
    for name in ("model.safetensors", "degree_head.safetensors"):
        a, b = load_file(str(tmp_path / "one" / name)), load_file(str(base / "two" / name))
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5, name
    one, two = (json.loads((d / "summary.json").read_text())["final_metrics"] for d in (tmp_path / "one", base / "two"))
    assert two["eval_degree/accuracy"] == pytest.approx(one["eval_degree/accuracy"], abs=1e-6)


@pytest.mark.slow
def test_distill_two_processes_equal_one_process_with_sampled_steps(tmp_path, launched):
    """examples/accelerate/ddp.yaml, 2 CPU processes (gloo) x batch 4 against 1 process x batch 8 on
    examples/distill.yaml with seq_kd and lmbda 0.5 (steps 0 and 1 sampled by the teacher, step 2 by the student):
    each row samples from its own seed (seed, step, dataset index), so both runs train on the same completions:
    the same losses and final weights to 1e-6. The 2-process run's checkpoint-2, resumed by 1 process x batch 8
    for its last (student-sampled) step, ends at the same weights: a 2-process checkpoint holds the optimizer, the
    data position and the step that seeds the draws (no second launch)."""
    from preflab.cli import main

    two, one = launched("test_distill_two_processes_equal_one_process_with_sampled_steps") / "two", tmp_path / "one"
    assert json.loads((two / "summary.json").read_text())["environment"]["world_size"] == 2
    assert main(["train", str(ROOT / "examples/distill.yaml"), f"output_dir={one}", "per_device_train_batch_size=8",
                 "save_steps=0", *DISTILL]) == 0
    rows = lambda p: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]  # noqa
    got, want = rows(two), rows(one)
    assert [r["step"] for r in got] == [1, 2, 3]
    for key in ("loss", "nll_loss", "num_tokens"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in want], abs=1e-6), key
    a, b = load_file(two / "model.safetensors"), load_file(one / "model.safetensors")
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    resumed = tmp_path / "resumed"
    shutil.copytree(two / "checkpoint-2", resumed / "checkpoint-2")
    assert main(["train", str(ROOT / "examples/distill.yaml"), f"output_dir={resumed}", "overwrite_output_dir=true",
                 "per_device_train_batch_size=8", "save_steps=0", *DISTILL,
                 f"resume_from_checkpoint={resumed / 'checkpoint-2'}"]) == 0
    assert json.loads((resumed / "summary.json").read_text())["resumed_from_step"] == 2
    assert [r["step"] for r in rows(resumed)] == [3] and rows(resumed)[0]["loss"] == pytest.approx(want[2]["loss"],
                                                                                                  abs=1e-6)
    c = load_file(resumed / "model.safetensors")
    for key in b:
        torch.testing.assert_close(c[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_diffusion_two_gloo_processes_equal_one_process_with_double_batch(tmp_path, launched):
    pytest.importorskip("diffusers")
    import preflab.cli

    base = launched("test_diffusion_two_gloo_processes_equal_one_process_with_double_batch")
    common = [f"model_name_or_path={base / 'tiny'}", f"dataset_name={base / 'data' / 'train.jsonl'}", *DIFFUSION]
    # the one-process run in this process (the CLI in a subprocess is the 2-process launch)
    assert preflab.cli.main(["train", *common, f"output_dir={tmp_path / 'one'}", "per_device_train_batch_size=4"]) == 0
    losses = lambda d: [json.loads(x)["loss"] for x in open(d / "metrics.jsonl") if '"loss"' in x]  # noqa: E731
    assert losses(tmp_path / "one") == pytest.approx(losses(base / "two"), abs=1e-5)
    weights = lambda d: load_file(str(d / "unet" / "diffusion_pytorch_model.safetensors"))  # noqa: E731
    a, b = weights(tmp_path / "one"), weights(base / "two")
    # Adam divides by sqrt(v) + eps: on a gradient at the all-reduce's summation-order noise (~1e-9) the default
    # eps 1e-8 still lets the noise's sign move the weight by a whole step (16 of 793k weights on an AVX-512 CPU,
    # 1.2e-3); adam_epsilon 1e-5 damps those to ~5e-6 (AVX2 and AVX-512) while every real gradient still takes
    # a full step, so a wrong split of the batch or of the draws still moves weights by ~lr = 1e-3
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 5e-5
    # importing diffusers imports bitsandbytes, whose import logs a warning on CPUs with AVX-512 BF16 (none
    # elsewhere): once per launch, by the main process (preflab.quiet.quiet_bitsandbytes); it was once per process
    assert launched.stderr.count("Failed to load CPU gemm_4bit_forward") <= 1
    assert launched.stderr.count("Skipping publisher trust check") <= 1  # kernels', bitsandbytes' loader (offline)


@pytest.mark.slow
def test_user_objective_two_processes_equal_one_process_with_double_batch(tmp_path, launched):
    """A user's objective named by path (loss_type: FILE.py:Class, docs/extending.md) gets a built-in's 2-process
    guarantee: each rank loads the file, the extras columns are sliced with their rows, and 2 x 4 pairs end where
    1 x 8 ends (losses, reward margins and weights)."""
    from preflab.cli import main

    base = launched("test_user_objective_two_processes_equal_one_process_with_double_batch")
    spec = f"loss_type={base / 'my_losses.py'}:MarginWeighted"
    assert main(["train", *USER_RUN, spec, f"dataset_name={base / 'pairs_w.jsonl'}", f"output_dir={tmp_path / 'one'}",
                 "per_device_train_batch_size=8"]) == 0
    rows = {name: [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
            for name, folder in (("one", tmp_path / "one"), ("two", base / "two"))}
    assert [r["step"] for r in rows["two"]] == [1, 2, 3]
    for key in ("loss", "rewards/margins"):
        assert [r[key] for r in rows["two"]] == pytest.approx([r[key] for r in rows["one"]], abs=1e-5), key
    two, one = (load_file(str(folder / "model.safetensors")) for folder in (base / "two", tmp_path / "one"))
    assert max(float((two[k] - one[k]).abs().max()) for k in one) < 1e-5
    summary = json.loads((base / "two/summary.json").read_text())
    assert summary["environment"]["world_size"] == 2
    # peak_memory (preflab.peak_memory): each rank's peak RSS carried by the end-of-run agreement, and their max
    memory = summary["peak_memory"]
    assert memory["measure"] == "process_rss" and len(memory["per_rank_gib"]) == 2
    assert memory["gib"] == max(memory["per_rank_gib"]) and min(memory["per_rank_gib"]) > 0.05  # > 50 MiB: torch


@pytest.mark.slow
def test_kto_two_processes_take_z0_over_both_and_equal_one_process_double_batch(tmp_path, launched, capsys):
    """loss_type kto under DDP, 2 processes x 4 examples against 1 process x 8 (3 steps of one-prompt rows: see
    KTO_RUN). KTO's reference point z0 = max(0, mean KL estimate) is taken over both processes' micro-batches, as
    TRL 1.16's KTOTrainer gathers its `kl` before the mean and the clamp; it was each process's own micro-batch
    mean, so 2 x 4 equalled 1 x 4 x accumulation 2 and not 1 x 8. Now every step's loss, kl, rewards/chosen,
    rewards/rejected and grad_norm and the final weights equal 1 x 8's to 1e-5 (measured: 1e-6 and 2.6e-6; float
    summation order and the padding of 4 vs 8 rows); with each process's own z0 they differed by 2.4e-4 (loss),
    7.9e-3 (grad_norm) and 1.3e-2 (weights) at beta 1. z0 is positive after step 1, so the clamp does not make them
    agree. After `preflab train` returned neither rank holds a DDP wrapper (moved from test_scale_matrix.py's KTO
    test, whose launch this replaces). Its checkpoint-2 resumed on 1 process is refused: no split of 1 process forms
    the same KL pairs and takes z0 over the same examples in general."""
    from preflab.cli import main

    base = launched("test_kto_two_processes_take_z0_over_both_and_equal_one_process_double_batch")
    one, two = tmp_path / "one", base / "two"
    data = f"dataset_name={base / 'one_prompt.jsonl'}"
    assert main(["train", *KTO_RUN, data, f"output_dir={one}", "per_device_train_batch_size=8"]) == 0
    assert json.loads((two / "summary.json").read_text())["environment"]["world_size"] == 2
    for rank in (0, 1):  # (the shared launch keeps its process group open between its runs)
        assert json.loads((two / f"after-train-rank{rank}.json").read_text())["live_ddp_wrappers"] == 0
    rows = {name: {r["step"]: r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                   if "loss" in r} for name, d in (("one", one), ("two", two))}
    assert sorted(rows["two"]) == sorted(rows["one"]) == [1, 2, 3]
    for step in (1, 2, 3):
        for key in ("loss", "kl", "rewards/chosen", "rewards/rejected", "grad_norm"):
            assert rows["two"][step][key] == pytest.approx(rows["one"][step][key], abs=1e-5), (step, key)
    assert min(rows["one"][s]["kl"] for s in (2, 3)) > 0.1  # (0.19 and 1.07 here)
    a, b = (load_file(str(d / "model.safetensors")) for d in (two, one))
    assert max_diff(a, b) < 1e-5
    capsys.readouterr()
    assert main(["train", *KTO_RUN, data, f"output_dir={tmp_path / 'resumed'}", "per_device_train_batch_size=8",
                 f"resume_from_checkpoint={two / 'checkpoint-2'}"]) == 2
    assert "takes its reference point over the processes" in capsys.readouterr().err


def losses(summary_dir: Path) -> list:
    """The logged training losses of a run folder (metrics.jsonl's rows with a loss)."""
    return [json.loads(line)["loss"] for line in open(summary_dir / "metrics.jsonl") if '"loss"' in line]


@pytest.mark.slow
def test_ref_cache_two_processes_with_cache_equal_one_process_without(tmp_path, launched):
    """tests/loops/tiny_run.py's tiny DPO run (moved here from tests/perf/test_ref_cache.py to join the launch) with
    precompute_ref_log_probs under DDP, 2 processes x 2 (the launch's empty PREFLAB_CACHE_DIR: the cache misses and
    is computed): its losses equal one process x 4 computing the reference forward every step."""
    from tiny_run import run

    two = launched("test_ref_cache_two_processes_with_cache_equal_one_process_without") / "two"
    run(tmp_path / "one", per_device_train_batch_size=4)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["reference_cache"]["train"]["hit"] is False
    assert losses(two) == pytest.approx(losses(tmp_path / "one"), abs=1e-5)


@pytest.mark.slow
def test_tiny_run_two_processes_equal_one_process_double_batch(tmp_path, launched):
    """tests/loops/tiny_run.py's tiny DPO run (moved here from tests/loops/test_trainer.py to join the launch): 2
    processes x 2 under DDP end at the losses and weights of 1 process x 4."""
    from tiny_run import run

    two = launched("test_tiny_run_two_processes_equal_one_process_double_batch") / "two"
    run(tmp_path / "one", per_device_train_batch_size=4)
    assert losses(tmp_path / "one") == pytest.approx(losses(two), abs=1e-5)
    assert max_diff(load_file(str(tmp_path / "one" / "model.safetensors")),
                    load_file(str(two / "model.safetensors"))) < 1e-5


@pytest.mark.slow
def test_grpo_low_min_high_max_on_two_processes_equal_trls_gathered(launched):
    """accelerate launch, 2 processes (gloo on CPU), 4 micro-batches each: rank 1's micro-batch 1 has no completion
    token and its micro-batch 2 is a weight-0 one. Both ranks log, for each key, TRL's value: per micro-batch the
    nanmin (nanmax) over both ranks' completions, averaged over the micro-batches with a value; it differs from each
    rank's own (rank 1's low_min in micro-batch 0 and high_max in micro-batch 3 win over rank 0's). (Moved from
    tests/objectives/test_grpo_clip_extrema.py to join the launch: tests/objectives/grpo_clip_extrema_ranks.py's
    write_rank_metrics on each rank.)"""
    pytest.importorskip("trl.trainer.grpo_trainer")
    sys.path.insert(0, str(HERE.parent / "objectives"))
    from test_grpo_clip_extrema import run_step, trl_window

    two = launched("test_grpo_low_min_high_max_on_two_processes_equal_trls_gathered") / "two"
    want = trl_window(2, 4, zero={(1, 2)})
    for rank in (0, 1):
        got = json.loads((two / f"rank{rank}.json").read_text())
        for name, (value, count) in want.items():
            assert got["metrics"][name] == pytest.approx(value, abs=1e-7), (rank, name)
            assert got["counts"][name] == count == 4
    for name in want:  # each rank alone would log another value
        alone = [trl_window(1, 4)[name][0], run_step(1, 4, zero_index=2).metrics[name]]
        assert all(a != pytest.approx(want[name][0], abs=1e-6) for a in alone), (name, alone, want[name])


@pytest.mark.slow
def test_two_processes_upload_from_the_main_process_only(launched):
    """push_to_hub under DDP (2 processes, hub_strategy checkpoint, saves at steps 2 and 4), huggingface_hub.HfApi
    replaced by tests/test_hub_push.py's recorder in each rank: the main process creates the repository and uploads
    both checkpoints and the final model; the other rank makes no call. (Moved from tests/test_hub_push.py to join
    the launch: tests/loops/scale_matrix_run.py's `hub_push` run.)"""
    two = launched("test_two_processes_upload_from_the_main_process_only") / "two"
    calls = [json.loads((two / f"hub-calls-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert calls == [["create_repo", "upload_folder", "upload_folder", "upload_folder"], []]


@pytest.mark.slow
def test_two_processes_pick_the_same_best_checkpoint_as_one(tmp_path, launched):
    """2 processes x batch 8 train as 1 process x batch 16; every rank takes the same best-model decisions (the
    metric is the main process's on every rank), so both runs name the same best step and save its weights.
    The 2-process run: `preflab train examples/quickstart.yaml *BEST_COMMON` in the shared launch. (Moved from
    tests/loops/test_best_model.py to join the launch.)"""
    from preflab.cli import main

    two, one = launched("test_two_processes_pick_the_same_best_checkpoint_as_one") / "two", tmp_path / "one"
    assert main(["train", str(ROOT / "examples/quickstart.yaml"), f"output_dir={one}",
                 "per_device_train_batch_size=16", *BEST_COMMON]) == 0
    got, want = (json.loads((d / "summary.json").read_text()) for d in (two, one))
    assert got["environment"]["world_size"] == 2
    step = _best(_evals(two))[0]
    assert 1 < step < 6 and got["best_global_step"] == want["best_global_step"] == step
    assert _checkpoints(two) == _checkpoints(one) == [step]  # save_total_limit 1: only the best is left
    assert _same_weights(load_file(str(two / "model.safetensors")),
                         load_file(str(two / f"checkpoint-{step}" / "model.safetensors")))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXTRA_OBJECTIVES))
def test_two_processes_restore_the_best_checkpoints_extras_on_every_rank(name, launched):
    """2 CPU processes (DDP): after load_best_model_at_end every rank holds the best checkpoint's extras, byte for
    byte (the offline trainer reloaded spo_degree's head on the main process only, in save_model). The runs:
    tests/loops/scale_matrix_run.py's `best_extras` (test_best_model's _cfg at batch 2 per rank). (Moved from
    tests/loops/test_best_model.py to join the launch.)"""
    greater = EXTRA_OBJECTIVES[name][1]
    run = launched(f"test_two_processes_restore_the_best_checkpoints_extras_on_every_rank[{name}]") / "two"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["environment"]["world_size"] == 2
    step = summary["best_global_step"]
    assert step == _best(_evals(run), greater=greater)[0] and step < 5
    best, last = (load_file(str(run / f"checkpoint-{s}" / "extra.safetensors")) for s in (step, 5))
    assert any(not torch.equal(best[k], last[k]) for k in best)
    for rank in (0, 1):
        final = load_file(str(run / f"extras-rank{rank}.safetensors"))
        assert final.keys() == best.keys() and all(torch.equal(final[k], best[k]) for k in best), rank


@pytest.mark.slow
def test_two_ddp_ranks_share_the_check_of_a_full_tensor_checkpoint(launched):
    """DDP (examples/accelerate/ddp.yaml, 2 gloo processes): both ranks load every file; each file is hashed by one
    of them (together: every file of COMPLETE), and a changed model.safetensors stops both with the same error.
    (Moved from tests/loops/test_resume_verify.py to join the launch: scale_matrix_run.py's `resume_verify` run,
    tests/loops/resume_verify_run.py's ddp case.)"""
    out = launched("test_two_ddp_ranks_share_the_check_of_a_full_tensor_checkpoint") / "run"
    ranks = [json.loads((out / f"rank{r}.json").read_text())["model"] for r in (0, 1)]
    ckpt = out / "checkpoint-2"
    assert ranks[0]["error"] == ranks[1]["error"]
    assert f"the sha256 of {ckpt / 'model.safetensors'} differs" in ranks[0]["error"]
    hashed = ranks[0]["hashed"] + ranks[1]["hashed"]
    assert sorted(hashed) == sorted(json.loads((ckpt / "COMPLETE").read_text())["files"])  # once each
    assert ranks[0]["hashed"] and ranks[1]["hashed"]


@pytest.mark.slow
def test_ddp_config_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, launched):
    """examples/accelerate/ddp.yaml, 2 CPU processes (gloo) x batch 4 vs 1 process x batch 8, task: sft with
    packing: same losses to 1e-5 and the same final weights to 1e-5 (float32 all-reduce order); the final model
    reloads in plain transformers. (Moved from tests/loops/test_accelerate_configs.py to join the launch, where it
    launched the `preflab` console script: here `preflab train` is scale_matrix_run.py's `cli` run, the
    preflab.cli.main the console script calls.)"""
    from transformers import AutoModelForCausalLM

    from preflab.cli import main

    two, one = launched("test_ddp_config_two_processes_equal_one_process_with_the_same_global_batch") / "two", \
        tmp_path / "one"
    assert json.loads((two / "summary.json").read_text())["environment"]["world_size"] == 2
    assert main(["train", *SFT_PACKED, f"output_dir={one}", "per_device_train_batch_size=8"]) == 0
    rows = lambda p: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    got, want = rows(two), rows(one)
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-5)
    a, b = load_file(two / "model.safetensors"), load_file(one / "model.safetensors")
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)
    reloaded = AutoModelForCausalLM.from_pretrained(two)
    torch.testing.assert_close(reloaded.state_dict()["model.embed_tokens.weight"], b["model.embed_tokens.weight"],
                               rtol=0, atol=1e-5)
