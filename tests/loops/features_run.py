"""Tiny runs of features that change under several processes, one after the other in the same processes, for
tests/loops/test_multiprocess_features.py. Each run writes OUT/facts-rank<R>.json with what this rank saw.

python tests/loops/features_run.py MODE OUT [key=value ...] [-- MODE OUT ...]   (under `accelerate launch
--num_processes 2`; also one process)

MODE plateau: tiny_run's DPO run with 8 eval pairs; facts: every (metric, rate after) the reduce_lr_on_plateau
    scheduler was stepped with on this rank.
MODE neftune: tiny_run's DPO run (give layout=padded neftune_noise_alpha=A); facts: every noise tensor this rank
    drew, in order (shape, sha256, whether the run gave it a generator of its own).
MODE draws: tiny_run's DPO run with a callback that draws 1 + rank numbers from the torch RNG after every step (as
    code drawing amounts that differ between ranks does: NEFTune from the global RNG, dropout on a GPU); facts: the
    draws.
MODE plain: tiny_run's DPO run with the options given (optim: adafactor there); no facts of its own.
MODE reward: a BT reward model (train_reward) on the jsonl file given as data=PATH (also its eval set).
Every run's facts also say how many DDP wrappers are alive right after it, without collecting garbage first (the
reward run is still held by its evaluation closure then, waiting for the collector), and whether the group is open.

The process group is kept open between the runs (fsdp_run.keep_process_group): only the first run of a launch
takes a finished run's own teardown (TrainingRun._drop_ddp_wrapper; the later ones keep their wrappers for the next
run, as a recipe's stages do). Every trainer is dropped when its run's facts are written, and the group is closed
at the end with the wrappers freed first (fsdp_run.close_process_group).
"""
import gc
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from fsdp_run import close_process_group, keep_process_group, split_runs  # noqa: E402
from tiny_run import run  # noqa: E402

RECORDING: dict = {}  # the running run's facts: "plateau_steps" and "noise" lists are appended to when present


def _rank() -> int:
    """This process's rank, from the launcher's environment."""
    return int(os.environ.get("RANK", "0"))


def record_plateau_steps() -> None:
    """EvalPlateau.step appends (metric, the rate after the step) to RECORDING["plateau_steps"]."""
    from preflab.loops.optimizer import EvalPlateau

    original = EvalPlateau.step

    def step(self, metrics=None, epoch=None):
        original(self, metrics, epoch)
        if metrics is not None and "plateau_steps" in RECORDING:
            RECORDING["plateau_steps"].append([float(metrics), self.optimizer.param_groups[0]["lr"]])

    EvalPlateau.step = step


def record_noise() -> None:
    """preflab.models.neftune.noisy_embeddings appends the noise it adds to RECORDING["noise"]: drawn again by a
    copy of the generator it used, from the state it started at (out == embeddings + noise is checked)."""
    import preflab.models.neftune as neftune

    original = neftune.noisy_embeddings

    def noisy(embeddings, alpha, generator=None):
        state = generator.get_state() if generator is not None else torch.get_rng_state()
        out = original(embeddings, alpha, generator)
        if "noise" in RECORDING:
            copy = torch.Generator()
            copy.set_state(state)
            bound = neftune.neftune_bound(alpha, embeddings.size(1), embeddings.size(2))
            noise = torch.zeros_like(embeddings).uniform_(-bound, bound, generator=copy).detach()
            assert torch.equal(out, embeddings + noise), "the recorded noise is not the noise added"
            RECORDING["noise"].append({"shape": list(noise.shape), "own_generator": generator is not None,
                                       "sha256": hashlib.sha256(noise.numpy().tobytes()).hexdigest()})
        return out

    neftune.noisy_embeddings = noisy


class RankDraws:
    """A transformers-style callback: after every optimizer step, 1 + rank numbers from torch's global RNG, appended
    to RECORDING["draws"] with the step."""

    def on_step_end(self, args, state, control, **kwargs):
        RECORDING["draws"].append([state.global_step, torch.rand(1 + _rank(), dtype=torch.float64).tolist()])


def live_ddp_wrappers() -> int:
    from torch.nn.parallel import DistributedDataParallel

    return sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())


def reward_run(out: Path, options: dict) -> None:
    from preflab.config import config_from_dict
    from preflab.reward_models.train import train_reward

    torch.set_num_threads(1)
    data = options.pop("data")
    train_reward(config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama",
                                   "dataset_name": data, "eval_dataset_name": data, "output_dir": str(out),
                                   "learning_rate": 1e-2, "logging_steps": 1, "use_cpu": True, "seed": 0,
                                   "disable_tqdm": True, **options}))


def one_run(mode: str, out: Path, options: dict) -> dict:
    """Run `mode` into `out`; returns this rank's facts (the run is dropped on return)."""
    RECORDING.clear()
    RECORDING.update({"plateau": {"plateau_steps": []}, "neftune": {"noise": []}, "draws": {"draws": []}}.get(mode, {}))
    if mode == "plateau":
        run(out, n_eval_pairs=8, **options)
    elif mode in ("neftune", "plain"):
        run(out, **options)
    elif mode == "draws":
        run(out, callbacks=[RankDraws()], **options)
    elif mode == "reward":
        reward_run(out, options)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return {**RECORDING, "live_ddp_wrappers": live_ddp_wrappers(),
            "process_group_open": torch.distributed.is_initialized()}


def main(argv: list[str]) -> None:
    keep_process_group()
    record_plateau_steps()
    record_noise()
    for mode, out, *items in split_runs(argv):
        options = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in items)}
        facts = one_run(mode, Path(out), options)
        (Path(out) / f"facts-rank{_rank()}.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    from preflab.cli import drop_tracebacks
    from preflab.errors import PreflabError

    try:
        main(sys.argv[1:])
    except PreflabError as err:  # as tiny_run stops: the message, then the group closed with the stopped run freed
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        drop_tracebacks(err)
        close_process_group()
        sys.exit(2)
    close_process_group()
