"""A tiny syncing DPO run (tiny_run.run with sync_ref_model, tau = 2, 4 steps) that writes each rank's reference to
OUT_DIR/reference-rank<R>.safetensors, and OUT_DIR/after-train-rank<R>.json: what the finished run still holds
(test_ref_sync's two-process test).

python tests/loops/ref_sync_run.py OUT_DIR PER_DEVICE_BATCH   (also under `accelerate launch --num_processes 2 --cpu`)

The trainer is kept in a module global to interpreter exit on purpose: that is what a user's script
(`trainer = Trainer(...); trainer.train()`) does, and the finished run must hold nothing bound to the process group
that accelerate's end_training destroyed (TrainingRun._drop_ddp_wrapper; a group freed during Python's finalization
could abort a rank: SIGABRT, "terminate called without an active exception").
"""
import gc
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import run  # noqa: E402


def after_train(trainer) -> dict:
    """What the finished run holds, read without collecting garbage first (an unreachable wrapper still waiting for
    the collector is found too), and a post-train use: the loss of this rank's first micro-batch of step 0 under the
    final weights."""
    from torch.nn.parallel import DistributedDataParallel

    live_ddp = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    with torch.no_grad():
        loss = trainer.forward(trainer.micro_batches(0)[0]).loss.item()
    return {"live_ddp_wrappers": live_ddp, "process_group_open": torch.distributed.is_initialized(),
            "loss_after_train": loss}


def main(out: Path, per_device_batch: int):
    _, trainer = run(out, per_device_train_batch_size=per_device_batch, max_steps=4, sync_ref_model=True,
                     ref_model_sync_steps=2)
    rank = trainer.accelerator.process_index
    save_file({k: v.detach().contiguous() for k, v in trainer.ref.named_parameters()},
              str(out / f"reference-rank{rank}.safetensors"))
    (out / f"after-train-rank{rank}.json").write_text(json.dumps(after_train(trainer)))
    return trainer


if __name__ == "__main__":
    trainer = main(Path(sys.argv[1]), int(sys.argv[2]))  # held to interpreter exit, as a user's script holds it
