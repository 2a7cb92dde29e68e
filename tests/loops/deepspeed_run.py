"""tiny_run under DeepSpeed on CPU, several runs in the same processes (one launch instead of four):
BASE/straight (no checkpoints), BASE/saved (checkpoint every STEP steps), BASE/resumed (resumed from
BASE/saved/checkpoint-STEP), then one resume per CHECKPOINT_TO_REFUSE, whose ConfigError messages go to
BASE/refusals.json ({checkpoint: message, or null when it was not refused}). Run as
    accelerate launch --config_file examples/accelerate/zero2.yaml --num_processes 1 tests/loops/deepspeed_run.py \
        BASE STEP [CHECKPOINT_TO_REFUSE ...] -- k=v ...
(--num_processes 2: the gloo group preflab forms on CPU, see launch.enable_deepspeed_on_cpu). With
equal_into=DIR among the k=v: last, a straight run with tiny_arch=llama (no dropout) into DIR, to compare with one
plain process.
"""
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fsdp_run import close_process_group, keep_process_group  # noqa: E402
from tiny_run import run  # noqa: E402

from preflab.errors import ConfigError  # noqa: E402

if __name__ == "__main__":
    split = sys.argv.index("--")
    base, step, *refuse = sys.argv[1:split]
    base = Path(base)
    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in sys.argv[split + 1:])}
    equal_into = extra.pop("equal_into", None)
    extra = {"use_cpu": False, **extra}  # one CPU process: accelerate's own DeepSpeed path (no use_cpu)
    keep_process_group()
    run(base / "straight", **{**extra, "save_steps": 0})
    run(base / "saved", **{**extra, "save_steps": int(step)})
    run(base / "resumed", **{**extra, "save_steps": 0,
                             "resume_from_checkpoint": str(base / "saved" / f"checkpoint-{step}")})
    messages = {}
    for i, checkpoint in enumerate(refuse):
        try:
            run(base / f"refused-{i}", **{**extra, "save_steps": 0, "resume_from_checkpoint": checkpoint})
            messages[checkpoint] = None
        except ConfigError as err:
            messages[checkpoint] = str(err)
    (base / "refusals.json").write_text(json.dumps(messages))
    if equal_into:
        run(equal_into, **{**extra, "save_steps": 0, "tiny_arch": "llama"})
    close_process_group()
