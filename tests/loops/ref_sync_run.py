"""A tiny syncing DPO run (tiny_run.run with sync_ref_model, tau = 2, 4 steps) that writes each rank's reference to
OUT_DIR/reference-rank<R>.safetensors (test_ref_sync's two-process test).

python tests/loops/ref_sync_run.py OUT_DIR PER_DEVICE_BATCH   (also under `accelerate launch --num_processes 2 --cpu`)
"""
import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import run  # noqa: E402


def main(out: Path, per_device_batch: int) -> None:
    """The run and its reference file, in a function: the trainer (its DDP wrapper holds the gloo group) is freed
    when this returns, not at interpreter exit, where a group still held can abort the process (SIGABRT,
    "terminate called without an active exception"; tiny_run's own main drops its trainer the same way)."""
    _, trainer = run(out, per_device_train_batch_size=per_device_batch, max_steps=4, sync_ref_model=True,
                     ref_model_sync_steps=2)
    rank = trainer.accelerator.process_index
    save_file({k: v.detach().contiguous() for k, v in trainer.ref.named_parameters()},
              str(out / f"reference-rank{rank}.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
