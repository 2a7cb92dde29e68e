"""tiny_run under FSDP2, plus what a test cannot see from outside the processes: facts.json (main rank) says how
the policy and the reference are held. Run as
    accelerate launch --config_file examples/accelerate/fsdp2.yaml --num_processes 2 tests/loops/fsdp_run.py OUT k=v..
With resume_into=DIR2 resume_step=N: then a second run, in the same processes, resumed from OUT/checkpoint-N into
DIR2 (one launch instead of two: the stop + resume test).
"""
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_run import run  # noqa: E402


def facts(trainer) -> dict:
    from torch.distributed.tensor import DTensor

    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    ref = list(trainer.ref.parameters())
    policy = [p for p in trainer.policy.parameters() if p.requires_grad]
    return {"engine": trainer.accelerator.is_fsdp2,
            "policy_dtensor": all(isinstance(p, DTensor) for p in policy),
            "policy_in_optimizer": all(id(p) in in_optimizer for p in policy),
            "optimizer_size": len(in_optimizer), "policy_size": len(policy),
            "ref_dtensor": all(isinstance(p, DTensor) for p in ref),
            "ref_local_numel": sum(p.to_local().numel() for p in ref),
            "ref_full_numel": sum(p.numel() for p in ref),
            "ref_requires_grad": any(p.requires_grad for p in ref),
            "ref_has_grad": any(p.grad is not None for p in ref),
            "ref_in_optimizer": any(id(p) in in_optimizer for p in ref)}


def keep_process_group() -> None:
    """A second run in the same processes: accelerate's end_training would destroy the process group."""
    from accelerate import Accelerator

    Accelerator.end_training = lambda self: [tracker.finish() for tracker in self.trackers]


def split_runs(argv: list[str]) -> list[list[str]]:
    """A multi-run launch script's arguments: the runs separated by `--` (empty runs dropped)."""
    runs, current = [], []
    for item in argv + ["--"]:
        if item == "--":
            runs.append(current)
            current = []
        else:
            current.append(item)
    return [r for r in runs if r]


def close_process_group() -> None:
    """The end of a script that kept its process group open for several runs (keep_process_group): a gloo group still
    alive at interpreter exit can abort the process (SIGABRT, "terminate called without an active exception"). The
    runs' engine and DDP wrappers still waiting for the garbage collector (they hold the group) are freed first, as
    preflab.recipe_state.end_processes does."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def main(argv: list[str]) -> None:
    """The launch's runs, in a function: each trainer is freed before the process group is closed and the interpreter
    exits (a trainer still held at exit keeps the group alive, which can abort the process)."""
    out = Path(argv[0])
    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in argv[1:])}
    resume_into = extra.pop("resume_into", None)  # then: a second run there, resumed from checkpoint-<that step>
    resume_step = extra.pop("resume_step", None)
    precompute_into = extra.pop("precompute_into", None)  # then: a run that precomputes reference log-probs there
    if resume_into or precompute_into:
        keep_process_group()
    _, trainer = run(out, **extra)
    if trainer.main:
        (out / "facts.json").write_text(json.dumps(facts(trainer)))
    if resume_into:
        run(resume_into, **{**extra, "save_steps": 0,
                            "resume_from_checkpoint": str(out / f"checkpoint-{resume_step}")})
    if precompute_into:  # 33 pairs: rank 0 scores 17 (3 batches of 8), rank 1 16 (2): the sharded reference in lockstep
        run(precompute_into, n_pairs=33, per_device_train_batch_size=8, max_steps=1, save_steps=0,
            precompute_ref_log_probs=True)


if __name__ == "__main__":
    main(sys.argv[1:])
    close_process_group()
