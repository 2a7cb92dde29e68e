"""One optimizer step of GRPO's objective on each of 2 processes (accelerate launch; test_grpo_clip_extrema.py's
rank_data and run_step): each rank writes its StepResult's metrics and counts to OUT_DIR/rank<r>.json.

accelerate launch --multi_gpu --num_processes 2 tests/objectives/grpo_clip_extrema_ranks.py OUT_DIR

tests/loops/test_ddp_cli_launch.py runs write_rank_metrics inside its shared DDP launch (scale_matrix_run.py's
grpo_extrema runs).
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_grpo_clip_extrema import run_step  # noqa: E402


def write_rank_metrics(out: str) -> None:
    """This rank's step (4 micro-batches; rank 1's micro-batch 2 a weight-0 one) into out/rank<r>.json."""
    from accelerate import Accelerator

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    result = run_step(rank, 4, accelerator, zero_index=2 if rank == 1 else None)
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"metrics": result.metrics,
                                                         "counts": result.metric_counts}))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    write_rank_metrics(sys.argv[1])
    torch.distributed.destroy_process_group()  # a gloo group still live at exit can abort the process (SIGABRT)
