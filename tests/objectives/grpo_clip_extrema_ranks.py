"""One optimizer step of GRPO's objective on each of 2 processes (accelerate launch; test_grpo_clip_extrema.py's
rank_data and run_step): each rank writes its StepResult's metrics and counts to OUT_DIR/rank<r>.json.

accelerate launch --multi_gpu --num_processes 2 tests/objectives/grpo_clip_extrema_ranks.py OUT_DIR
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_grpo_clip_extrema import run_step  # noqa: E402

if __name__ == "__main__":
    from accelerate import Accelerator

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    result = run_step(rank, 4, accelerator, zero_index=2 if rank == 1 else None)
    Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps({"metrics": result.metrics,
                                                                  "counts": result.metric_counts}))
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()  # a gloo group still live at exit can abort the process (SIGABRT)
