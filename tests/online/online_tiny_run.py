"""A tiny online run (tests/online/test_online_run.py's setup) as a script, for multi-process and kill tests.

python tests/online/online_tiny_run.py OUT_DIR [key=value ...]   (also under accelerate launch --num_processes 2)
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_online_run import tiny_cfg, tiny_run  # noqa: E402

if __name__ == "__main__":
    import yaml

    torch.set_num_threads(1)
    overrides = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in sys.argv[2:])}
    tiny_run(tiny_cfg(Path(sys.argv[1]), **overrides)).train()
