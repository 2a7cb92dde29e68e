"""Features whose tests ran on one process, under 2 DDP processes on CPU (gloo): reduce_lr_on_plateau, NEFTune
(neftune_noise_alpha), reward model training (task: reward), optim: adafactor, optim: adamw_8bit (bitsandbytes;
its runs join the launch where the package is installed, else its test is skipped), and an exact resume of a
dropout model. One launch
(tests/loops/features_run.py, a module fixture) runs them all one after the other; each test compares with a
one-process run computed here.

Cost: the launch takes about 50 s on a loaded 2-core machine (the first test here pays it), each test's own
one-process reference a few seconds."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from features_run import reward_run  # noqa: E402
from test_lr_plateau import _torch_replay  # noqa: E402
from tiny_run import run  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "features_run.py"
PLATEAU = dict(lr_scheduler_type="reduce_lr_on_plateau", learning_rate=1e-3, eval_steps=1, max_steps=6, save_steps=3,
               lr_scheduler_kwargs={"patience": 0, "factor": 0.5, "eps": 0})
NEFTUNE = dict(layout="padded", neftune_noise_alpha=5.0, max_steps=3, save_steps=2, learning_rate=1e-2, seed=3)
DRAWS = dict(max_steps=3, save_steps=2, learning_rate=1e-2, seed=5, group_by_length=True)  # the grouped order too
REWARD = dict(max_steps=3)
ADAFACTOR = dict(optim="adafactor", max_steps=4, save_steps=2, learning_rate=1e-2, seed=7)
ADAMW_8BIT = dict(optim="adamw_8bit", max_steps=4, save_steps=2, learning_rate=1e-2, seed=7, weight_decay=0.1)
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def _args(options: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in options.items()]


@pytest.fixture(scope="module")
def two(tmp_path_factory, accelerate_launch) -> Path:
    """The 2-process runs (per_device_train_batch_size 2 each), in one launch: reward (first: the only run of the
    launch that takes a finished run's own teardown, see features_run), plateau and its resume from checkpoint-3,
    neftune and its resume from checkpoint-2, draws and its resume from checkpoint-2, plain (optim: adafactor) and
    its resume from checkpoint-2, and with bitsandbytes installed adamw_8bit and its resume from checkpoint-2 (its
    own launch cost ~45 s; here the launch's processes are already up)."""
    import preflab

    root = tmp_path_factory.mktemp("features-two")
    sys.path.insert(0, str(ROOT / "tests" / "reward_models"))
    from reward_synthetic import marker_rows

    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in marker_rows(16, seed=0)))
    runs = [["reward", root / "reward", f"data={root / 'pairs.jsonl'}", *_args(REWARD)]]
    for mode, options, step in (("plateau", PLATEAU, 3), ("neftune", NEFTUNE, 2), ("draws", DRAWS, 2),
                                ("plain", ADAFACTOR, 2)):
        runs.append([mode, root / mode, *_args(options)])
        runs.append([mode, root / f"{mode}-resumed", *_args(options),
                     f"resume_from_checkpoint={root / mode / f'checkpoint-{step}'}"])
    if HAS_BNB:
        runs += [["plain", root / "adamw_8bit", *_args(ADAMW_8BIT)],
                 ["plain", root / "adamw_8bit-resumed", *_args(ADAMW_8BIT),
                  f"resume_from_checkpoint={root / 'adamw_8bit/checkpoint-2'}"]]
    argv = [str(a) for r in runs for a in [*r, "per_device_train_batch_size=2", "--"]][:-1]
    path = os.pathsep.join([str(Path(preflab.__file__).parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}  # the caller's path too: where bitsandbytes is
    env.pop("WORLD_SIZE", None)
    cmd = accelerate_launch("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                            "--dynamo_backend", "no", str(SCRIPT), *argv)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def facts(run_dir: Path) -> list[dict]:
    return [json.loads((run_dir / f"facts-rank{r}.json").read_text()) for r in (0, 1)]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "model.safetensors"))


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_reduce_lr_on_plateau_steps_every_rank_with_the_eval_loss_of_the_global_batch_run(two, tmp_path):
    """patience 0, an evaluation after every step, 6 steps: each evaluation's eval_loss is the mean over the whole
    eval set (what transformers' Trainer gathers from the ranks), equal to the one-process batch-4 run's; both ranks
    step the scheduler with the same value, the logged one, and hold the same rate after it; the rates equal the
    one-process run's and torch's ReduceLROnPlateau fed the logged eval_loss, and the run both kept and cut the rate.
    Resumed on 2 processes from checkpoint-3: steps 4-6 see the same metrics and rates, bit for bit."""
    rank0, rank1 = facts(two / "plateau")
    assert rank0["plateau_steps"] == rank1["plateau_steps"] and len(rank0["plateau_steps"]) == 6
    logged = rows(two / "plateau")
    evals = [r["eval_loss"] for r in logged if "eval_loss" in r]
    assert [m for m, _ in rank0["plateau_steps"]] == evals  # stepped with the logged metric
    rates = {r["step"]: r["learning_rate"] for r in logged if "learning_rate" in r}
    assert [lr for _, lr in rank0["plateau_steps"][:-1]] == [rates[s] for s in range(2, 7)]  # the next step's rate
    run(tmp_path / "one", n_eval_pairs=8, per_device_train_batch_size=4, **PLATEAU)
    one = rows(tmp_path / "one")
    assert evals == pytest.approx([r["eval_loss"] for r in one if "eval_loss" in r], abs=1e-6)
    assert rates == {r["step"]: r["learning_rate"] for r in one if "learning_rate" in r}
    assert rates == pytest.approx(_torch_replay(evals, 6, patience=0, lr=1e-3), rel=1e-12, abs=0)
    assert len(set(rates.values())) >= 3 and rates[4] == rates[5]  # kept (step 4's evaluation improved) and cut
    resumed = facts(two / "plateau-resumed")
    assert resumed[0]["plateau_steps"] == resumed[1]["plateau_steps"] == rank0["plateau_steps"][3:]
    again = {r["step"]: r["learning_rate"] for r in rows(two / "plateau-resumed") if "learning_rate" in r}
    assert again == {s: rates[s] for s in (4, 5, 6)}


def _expected_noise(rank: int, step: int, shape: list[int]) -> torch.Tensor:
    """Rank `rank`'s noise of its one noisy forward of step `step` (0-based), by the rule of preflab.models.neftune:
    uniform in (-bound, bound) from a generator seeded by rank_noise_seed(seed, rank, step, 0)."""
    from preflab.models.neftune import neftune_bound, rank_noise_seed

    bound = neftune_bound(NEFTUNE["neftune_noise_alpha"], shape[1], shape[2])
    generator = torch.Generator().manual_seed(rank_noise_seed(NEFTUNE["seed"], rank, step, 0))
    return torch.zeros(shape).uniform_(-bound, bound, generator=generator)


class MicroBatchAsRank:
    """The generators of a one-process run with 2 micro-batches a step that draw what 2 ranks draw: the c-th noisy
    forward (micro-batch c % 2 of step c // 2) gets rank c % 2's generator of that step."""

    def __init__(self):
        self.calls = 0

    def __call__(self, device):
        from preflab.models.neftune import rank_noise_seed

        step, rank = divmod(self.calls, 2)
        self.calls += 1
        return torch.Generator(device=device).manual_seed(rank_noise_seed(NEFTUNE["seed"], rank, step, 0))


def test_neftune_ranks_draw_their_own_noise_and_train_as_one_process_with_that_noise(two, tmp_path, monkeypatch):
    """Every rank draws its noise from generators of its own, seeded by (seed, rank, step, forward): at step 1 the
    two ranks' batches have the same shape and their noise still differs (transformers' ranks, sharing one seed,
    draw the same numbers there); every noise tensor is the one the rule gives, so a launch with the same seed draws
    the same noise. The weights and losses equal a one-process run with 2 micro-batches of 2 whose micro-batch m
    draws rank m's noise (to float tolerance: DDP averages the two gradients). Resumed from checkpoint-2 on 2
    processes: step 3 draws the same noise and the final weights are bit-identical."""
    rank0, rank1 = facts(two / "neftune")
    assert len(rank0["noise"]) == len(rank1["noise"]) == 3  # one noisy forward per step ([chosen; rejected])
    assert all(n["own_generator"] for n in rank0["noise"] + rank1["noise"])
    assert rank0["noise"][0]["shape"] == rank1["noise"][0]["shape"]
    assert rank0["noise"][0]["sha256"] != rank1["noise"][0]["sha256"]
    import hashlib

    for rank, seen in enumerate((rank0["noise"], rank1["noise"])):
        for step, noise in enumerate(seen):
            want = _expected_noise(rank, step, noise["shape"])
            assert hashlib.sha256(want.numpy().tobytes()).hexdigest() == noise["sha256"], (rank, step)

    import preflab.loops.driver as driver
    from preflab.models.neftune import add_neftune_hook

    monkeypatch.setattr(driver, "add_neftune_hook", lambda model, alpha, generators=None: add_neftune_hook(
        model, alpha, MicroBatchAsRank()))
    run(tmp_path / "one", per_device_train_batch_size=2, gradient_accumulation_steps=2,
        **{k: v for k, v in NEFTUNE.items() if k != "save_steps"})
    assert max_difference(weights(two / "neftune"), weights(tmp_path / "one")) < 1e-6
    losses = [r["loss"] for r in rows(two / "neftune") if "loss" in r]
    assert losses == pytest.approx([r["loss"] for r in rows(tmp_path / "one") if "loss" in r], abs=1e-6)
    resumed = facts(two / "neftune-resumed")
    assert [r["noise"] for r in resumed] == [rank0["noise"][2:], rank1["noise"][2:]]
    a, b = weights(two / "neftune"), weights(two / "neftune-resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_each_rank_resumes_its_own_rng_stream_on_two_processes(two):
    """Rank r draws 1 + r numbers from torch's RNG after every step (code that draws amounts that differ between
    ranks: NEFTune from the global RNG did, dropout does on a GPU), so the ranks' streams part ways. Resumed from
    checkpoint-2 on 2 processes, each rank's step-3 draws are its own of the uninterrupted run: the checkpoint holds
    every rank's RNG (rng-rank<r>; rng is the main rank's, as before). Before, every rank restored the main rank's,
    and rank 1 went on with rank 0's stream. The final weights are bit-identical."""
    checkpoint = two / "draws" / "checkpoint-2"
    states = [load_file(str(checkpoint / f"rng-rank{r}.safetensors"))["torch"] for r in (0, 1)]
    assert not torch.equal(states[0], states[1])  # one shared state could not resume both
    assert torch.equal(states[0], load_file(str(checkpoint / "rng.safetensors"))["torch"])
    whole, resumed = facts(two / "draws"), facts(two / "draws-resumed")
    assert [[s for s, _ in f["draws"]] for f in whole] == [[1, 2, 3]] * 2
    assert whole[0]["draws"][2][1] != whole[1]["draws"][2][1][:1]
    assert [f["draws"] for f in resumed] == [f["draws"][2:] for f in whole]
    a, b = weights(two / "draws"), weights(two / "draws-resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_group_by_length_on_two_processes_reads_the_one_process_global_batches(two, tmp_path):
    """The draws run orders its rows with group_by_length: 2 processes x batch 2 log the losses of 1 process x batch
    4 (the grouped order depends on the global batch only, and each rank reads its slice of it), which differ from
    the plain order's; its resume from checkpoint-2 ends with the same weights (the test above)."""
    run(tmp_path / "one", **{**DRAWS, "save_steps": 0}, per_device_train_batch_size=4)
    run(tmp_path / "plain", **{**DRAWS, "save_steps": 0, "group_by_length": False}, per_device_train_batch_size=4)
    losses = [r["loss"] for r in rows(two / "draws") if "loss" in r]
    assert len(losses) == 3
    assert losses == pytest.approx([r["loss"] for r in rows(tmp_path / "one") if "loss" in r], abs=1e-6)
    plain = [r["loss"] for r in rows(tmp_path / "plain") if "loss" in r]  # step 1: log 2 in any order (policy = ref)
    assert losses[1:] != pytest.approx(plain[1:], abs=1e-6)


def test_reward_model_on_two_processes_equals_one_process_frees_its_wrapper_and_loads(two, tmp_path):
    """BT reward model, 2 processes x batch 2 for 3 steps: the losses and final weights of 1 process x batch 4 (to
    float tolerance), no DDP wrapper alive on either rank right after train_reward returned (the run, held by its
    evaluation closure until the collector runs, holds the unwrapped model), and the saved model loads with
    load_reward_model: its weights are model.safetensors' and it scores as the one-process model."""
    assert [f["live_ddp_wrappers"] for f in facts(two / "reward")] == [0, 0]
    summary = json.loads((two / "reward" / "summary.json").read_text())
    assert summary["environment"]["world_size"] == 2 and summary["train_examples_seen"] == 3 * 4
    reward_run(tmp_path / "one", {"data": str(two / "pairs.jsonl"), "per_device_train_batch_size": 4, **REWARD})
    losses = [r["loss"] for r in rows(two / "reward") if "loss" in r]
    assert len(losses) == 3
    assert losses == pytest.approx([r["loss"] for r in rows(tmp_path / "one") if "loss" in r], abs=1e-5)
    saved = weights(two / "reward")
    assert max_difference(saved, weights(tmp_path / "one")) < 1e-4
    from preflab.reward_models.heads import load_reward_model, sequence_outputs

    loaded = load_reward_model(str(two / "reward"))
    params = dict(loaded.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in saved.items() if k in params) and saved.keys() <= params.keys()
    ids = torch.tensor([[1, 7, 12, 40, 2], [1, 9, 33, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    with torch.no_grad():
        got = sequence_outputs(loaded, ids, mask)
        want = sequence_outputs(load_reward_model(str(tmp_path / "one")), ids, mask)
    assert got.shape == (2, 1) and torch.allclose(got, want, atol=1e-4)


def test_adafactor_on_two_processes_equals_one_process_and_resumes_exactly(two, tmp_path):
    """optim: adafactor (transformers' Adafactor: factored second moments of the all-reduced gradients, the same on
    both ranks), 2 processes x batch 2 for 4 steps: the losses and final weights of 1 process x batch 4 (to float
    tolerance: the all-reduce sums in another order); resumed on 2 processes from checkpoint-2 (Adafactor's state
    in the checkpoint's safetensors and JSON), the final weights are the uninterrupted run's, bit for bit."""
    run(tmp_path / "one", **{**ADAFACTOR, "save_steps": 0}, per_device_train_batch_size=4)
    losses = [r["loss"] for r in rows(two / "plain") if "loss" in r]
    assert len(losses) == 4
    assert losses == pytest.approx([r["loss"] for r in rows(tmp_path / "one") if "loss" in r], abs=1e-6)
    assert len(set(losses)) == 4  # every step moved the policy
    assert max_difference(weights(two / "plain"), weights(tmp_path / "one")) < 1e-5
    a, b = weights(two / "plain"), weights(two / "plain-resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed (pip install \"preflab[bnb]\")")
def test_adamw_8bit_on_two_processes_equals_one_process_and_resumes_exactly(two, tmp_path):
    """DDP: every rank steps bitsandbytes' AdamW on the same all-reduced gradients. 2 processes x batch 2 for 4
    steps: the losses and final weights of 1 process x batch 4 (to float tolerance: the all-reduce sums in another
    order); resumed on 2 processes from checkpoint-2 (the 8-bit state in the checkpoint), bit for bit the
    uninterrupted 2-process run's weights."""
    run(tmp_path / "one", **{**ADAMW_8BIT, "save_steps": 0}, per_device_train_batch_size=4)
    losses = [r["loss"] for r in rows(two / "adamw_8bit") if "loss" in r]
    assert len(losses) == 4
    assert losses == pytest.approx([r["loss"] for r in rows(tmp_path / "one") if "loss" in r], abs=1e-5)
    final, single = weights(two / "adamw_8bit"), weights(tmp_path / "one")
    assert final.keys() == single.keys()
    differences = {k: (final[k] - single[k]).abs().max().item() for k in final}
    # lm_head (8-bit state): a value the other summation order moves across a quantization boundary may step by up
    # to ~1 % of lr more or less (2e-6 seen); the float32-state tensors agree to float rounding (1e-6 seen)
    assert differences.pop("lm_head.weight") < 1e-3 and max(differences.values()) < 1e-5
    assert not torch.equal(final["lm_head.weight"], weights(two / "adamw_8bit/checkpoint-2")["lm_head.weight"])
    resumed = weights(two / "adamw_8bit-resumed")
    assert all(torch.equal(final[k], resumed[k]) for k in final)
