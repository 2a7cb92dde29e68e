"""A tiny syncing DPO run (tiny_run.run with sync_ref_model, tau = 2, 4 steps) that writes each rank's reference to
OUT_DIR/reference-rank<R>.safetensors (test_ref_sync's two-process test).

python tests/loops/ref_sync_run.py OUT_DIR PER_DEVICE_BATCH   (also under `accelerate launch --num_processes 2 --cpu`)
"""
import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import run  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    _, trainer = run(out, per_device_train_batch_size=int(sys.argv[2]), max_steps=4, sync_ref_model=True,
                     ref_model_sync_steps=2)
    rank = trainer.accelerator.process_index
    save_file({k: v.detach().contiguous() for k, v in trainer.ref.named_parameters()},
              str(out / f"reference-rank{rank}.safetensors"))
