"""A run without LoRA, QLoRA or a bitsandbytes optimizer imports neither peft nor bitsandbytes (user trial 16): every
offline run that saved a checkpoint imported transformers.trainer_callback (for the stateful callbacks' state, even
with no callbacks), which imports transformers.trainer_utils, which imports peft, which imports bitsandbytes where it
is installed; offline, bitsandbytes' kernel loader then printed "Skipping publisher trust check ..." and "Failed to
load CPU gemm_4bit_forward from kernels-community ..." into every such run. In a fresh interpreter (this process's
other tests import peft.) transformers.trainer_callback itself is asserted absent too: whether it pulls in peft
depends on the installed transformers / peft versions (CI's fresh install: peft 0.22 does not), the detour does not.
A run with full_determinism: true imported transformers.trainer_utils (and peft) for transformers'
enable_full_determinism; preflab now writes that function out (preflab.loops.launch.enable_full_determinism), and
transformers.trainer_utils is asserted absent as well (whether it imports peft depends on the versions too)."""
import os
import subprocess
import sys
from pathlib import Path

import preflab

ROOT = Path(__file__).resolve().parents[1]


def test_a_plain_run_that_saves_evaluates_and_resumes_imports_neither_peft_nor_bitsandbytes(tmp_path):
    out = tmp_path / "run"
    common = ["examples/quickstart.yaml", f"output_dir={out}", "save_steps=1", "eval_steps=1", "disable_tqdm=true",
              "logging_steps=1"]
    script = f"""
import sys
from preflab.cli import main
assert main(["train", *{common!r}, "max_steps=2"]) == 0
assert main(["train", *{common!r}, "max_steps=3", "resume_from_checkpoint=true"]) == 0
# full_determinism imported transformers.trainer_utils for its enable_full_determinism (and peft through it)
assert main(["train", "examples/quickstart.yaml", "output_dir={tmp_path / 'determined'}", "max_steps=1",
             "save_steps=0", "disable_tqdm=true", "full_determinism=true"]) == 0
import torch
assert torch.are_deterministic_algorithms_enabled()
imported = sorted(m for m in sys.modules if m.split(".")[0] in ("peft", "bitsandbytes")
                  or m in ("transformers.trainer_callback", "transformers.trainer_utils"))
assert imported == [], imported
print("runs done", file=sys.stderr, flush=True)
print("ok")
"""
    path = os.pathsep.join([str(Path(preflab.__file__).parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith("ok")
    assert (out / "checkpoint-3" / "COMPLETE").exists()
    runs_said = proc.stderr.split("runs done")[0] + proc.stdout
    assert "preflab: done" in runs_said and "gemm_4bit" not in runs_said and "bitsandbytes" not in runs_said
