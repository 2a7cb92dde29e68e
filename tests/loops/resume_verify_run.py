"""Damaged checkpoints resumed on 2 ranks (tests/loops/test_ddp_cli_launch.py's and tests/loops/test_scale_matrix.py's
resume-verify tests): `damaged_resumes(OUT, MODE)`, run by tests/loops/scale_matrix_run.py's `resume_verify` mode in
the shared launches, or alone:
    accelerate launch --config_file examples/accelerate/fsdp2.yaml --num_processes 2 \
        tests/loops/resume_verify_run.py OUT [fsdp2]
With fsdp2:
1. trains 2 steps (tiny_run) with checkpoint-1 and checkpoint-2;
2. "shard": rank 1's model shard of checkpoint-2 changed (same size), resumed by path;
3. "shared": the shard put back, optimizer.json changed (read by both ranks), resumed by path;
4. "fallback": the shard changed again, resume_from_checkpoint: true (falls back to checkpoint-1, trains step 2).
With `ddp` instead of fsdp2 (launched with examples/accelerate/ddp.yaml): full-tensor checkpoints, and one case,
"model": checkpoint-2's model.safetensors changed, resumed by path.
Every rank writes OUT/rank<r>.json: per case, the error it got, the checkpoint files it hashed (preflab's file_sha256
wrapped) and the files DCP read on it (HuggingFaceStorageReader.read_data wrapped). Both wrappers are put back when
the cases end (the shared launch's next runs see the plain functions); the process group is kept open between the
runs (fsdp_run.keep_process_group) and left open for the launch script to close.
"""
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist
from torch.distributed.checkpoint import HuggingFaceStorageReader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import preflab.checkpoint as ck  # noqa: E402
from fsdp_run import close_process_group, keep_process_group  # noqa: E402
from preflab.errors import PreflabError  # noqa: E402
from tiny_run import run  # noqa: E402

SHARD, SHARED = "model/shard-00002-model-00001-of-00001.safetensors", "optimizer.json"
RUN = dict(per_device_train_batch_size=4, max_steps=2, lr_scheduler_type="cosine", warmup_steps=1)


@contextmanager
def spying(record: dict):
    """ck.file_sha256 and HuggingFaceStorageReader.read_data wrapped to note into record what they hash and read;
    the originals are put back on leaving."""
    sha256, read_data = ck.file_sha256, HuggingFaceStorageReader.read_data

    def hashing(path):
        record["hashed"].append(Path(path).relative_to(record["checkpoint"]).as_posix())
        return sha256(path)

    def reading(self, plan, planner):
        for item in plan.items:
            record["read"].add(Path(self.storage_data[item.storage_index].relative_path).relative_to(
                record["checkpoint"]).as_posix())
        return read_data(self, plan, planner)

    ck.file_sha256, HuggingFaceStorageReader.read_data = hashing, reading
    try:
        yield record
    finally:
        ck.file_sha256, HuggingFaceStorageReader.read_data = sha256, read_data


def change(file: Path, old: bytes | None = None, new: bytes | None = None) -> bytes:
    """Change file's bytes keeping its size (the last 8 bytes inverted, or old replaced by new); the original."""
    data = file.read_bytes()
    changed = data.replace(old, new, 1) if old else data[:-8] + bytes(b ^ 0xFF for b in data[-8:])
    assert changed != data and len(changed) == len(data)
    file.write_bytes(changed)
    return data


def damaged_resumes(out: Path, mode: str = "fsdp2") -> None:
    """The cases of the module docstring for mode "fsdp2" or "ddp"; each rank writes OUT/rank<r>.json."""
    keep_process_group()
    run(out, save_steps=1, **RUN)
    rank, main = dist.get_rank(), dist.get_rank() == 0
    ckpt = out / "checkpoint-2"
    results, originals = {}, {}

    def case(record, name, before, **overrides):
        if main:
            before()
        dist.barrier()
        record.update(hashed=[], read=set(), checkpoint=ckpt if name != "fallback" else out)
        try:
            summary, _ = run(out / name if name != "fallback" else out, **{**RUN, **overrides})
            error, resumed = None, summary["resumed_from_step"]
        except PreflabError as err:
            error, resumed = str(err), None
        results[name] = {"error": error, "resumed": resumed, "hashed": record["hashed"],
                         "read": sorted(record["read"])}
        dist.barrier()

    with spying({"checkpoint": ckpt, "hashed": [], "read": set()}) as record:
        if mode == "ddp":
            case(record, "model", lambda: change(ckpt / "model.safetensors"), resume_from_checkpoint=str(ckpt))
        else:
            case(record, "shard", lambda: originals.update(shard=change(ckpt / SHARD)),
                 resume_from_checkpoint=str(ckpt))
            case(record, "shared", lambda: ((ckpt / SHARD).write_bytes(originals["shard"]),
                                            change(ckpt / SHARED, b"0.9", b"0.8")), resume_from_checkpoint=str(ckpt))
            case(record, "fallback", lambda: change(ckpt / SHARD), resume_from_checkpoint=True, save_steps=0)
    (out / f"rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    damaged_resumes(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "fsdp2")
    close_process_group()  # a failed resume skipped end_training: a live group can abort at exit
