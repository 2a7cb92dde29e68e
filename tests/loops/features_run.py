"""Tiny runs of features that change under several processes, for tests/loops/test_multiprocess_features.py: each
writes OUT_DIR/facts-rank<R>.json with what this rank saw, and frees its run before the script ends (the group is
closed by the run itself; tiny_run's error path for a stopped run).

python tests/loops/features_run.py MODE OUT_DIR [key=value ...]   (also under `accelerate launch --num_processes 2`)

MODE plateau: tiny_run's DPO run with an eval set; facts: every (metric, rate after) the reduce_lr_on_plateau
    scheduler was stepped with on this rank.
MODE neftune: tiny_run's DPO run (layout padded) with neftune_noise_alpha; facts: the sha256 of every noise tensor
    this rank drew, in order, and its shape; the noise of the first forward is written to noise-rank<R>.safetensors.
MODE reward: a BT reward model on the jsonl file given as data=PATH; facts: live DDP wrappers and the process group
    after train() returned (the run itself is held by its closures until the collector runs; nothing is collected
    first).
"""
import gc
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import run  # noqa: E402


def _rank() -> int:
    """This process's rank, from the launcher's environment (the run closes the process group when it ends)."""
    return int(os.environ.get("RANK", "0"))


def record_plateau_steps(seen: list) -> None:
    """EvalPlateau.step records (metric, the rate after the step) on this rank."""
    from preflab.loops.optimizer import EvalPlateau

    original = EvalPlateau.step

    def step(self, metrics=None, epoch=None):
        original(self, metrics, epoch)
        if metrics is not None:
            seen.append([float(metrics), self.optimizer.param_groups[0]["lr"]])

    EvalPlateau.step = step


def record_noise(seen: list, first: dict) -> None:
    """preflab.models.neftune.noisy_embeddings records the noise it adds on this rank: drawn again by a copy of the
    generator it used, from the state it started at (out == embeddings + noise is checked)."""
    import preflab.models.neftune as neftune

    original = neftune.noisy_embeddings

    def noisy(embeddings, alpha, generator=None):
        state = generator.get_state() if generator is not None else torch.get_rng_state()
        out = original(embeddings, alpha, generator)
        copy = torch.Generator()
        copy.set_state(state)
        bound = neftune.neftune_bound(alpha, embeddings.size(1), embeddings.size(2))
        noise = torch.zeros_like(embeddings).uniform_(-bound, bound, generator=copy).detach()
        assert torch.equal(out, embeddings + noise), "the recorded noise is not the noise added"
        seen.append({"shape": list(noise.shape), "sha256": hashlib.sha256(noise.numpy().tobytes()).hexdigest(),
                     "own_generator": generator is not None})
        first.setdefault("noise", noise)
        return out

    neftune.noisy_embeddings = noisy


def live_ddp_wrappers() -> int:
    from torch.nn.parallel import DistributedDataParallel

    return sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())


def main(mode: str, out: Path, options: dict) -> dict:
    facts = {}
    if mode == "plateau":
        facts["plateau_steps"] = []
        record_plateau_steps(facts["plateau_steps"])
        _, trainer = run(out, n_eval_pairs=8, **options)
        facts["lr_after_train"] = trainer.optimizer.param_groups[0]["lr"]
    elif mode == "neftune":
        facts["noise"], first = [], {}
        record_noise(facts["noise"], first)
        _, trainer = run(out, **options)
        facts["hook_left"] = len(trainer.policy.get_input_embeddings()._forward_hooks)
        from safetensors.torch import save_file

        save_file({"noise": first["noise"]}, str(out / f"noise-rank{_rank()}.safetensors"))
    elif mode == "reward":
        from preflab.config import config_from_dict
        from preflab.reward_models.train import train_reward

        torch.set_num_threads(1)
        data = options.pop("data")
        train_reward(config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama",
                                       "dataset_name": data, "output_dir": str(out), "learning_rate": 1e-2,
                                       "logging_steps": 1, "use_cpu": True, "seed": 0, "disable_tqdm": True,
                                       **options}))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    facts["live_ddp_wrappers"] = live_ddp_wrappers()  # with the finished run still held (plateau, neftune)
    facts["process_group_open"] = torch.distributed.is_initialized()
    return facts


if __name__ == "__main__":
    import yaml

    mode, out = sys.argv[1], Path(sys.argv[2])
    options = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in sys.argv[3:])}
    facts = main(mode, out, options)  # the run is dropped on return (tiny_run.run's trainer with it)
    (out / f"facts-rank{_rank()}.json").write_text(json.dumps(facts))
