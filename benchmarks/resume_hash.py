"""The checksum check at resume, before and after preflab.resume_verify, on a synthetic 2-rank FSDP2-shaped checkpoint.

    python benchmarks/resume_hash.py [--gb 1.5] [--repeats 3] [--dir /tmp]

The checkpoint (written once, then in the page cache: this measures hashing, not the disk): model/ and optimizer/
shards of rank 0 and rank 1 (optimizer shards twice the model's, as AdamW's two moments), optimizer.json,
trainer_state.json and rng files, sealed by preflab's own commit_checkpoint. Measured, min over repeats, old and new
alternately in the same run:
- old: what every rank did before: the whole checkpoint hashed (the old _sha256: 1 MiB reads, one file after the
  other), by 2 processes at once (2 ranks on one machine);
- new: what each rank does now: the files assign_checks gives it for the FSDP2 reads (its own shards; rank 0 also
  reads a 4-byte step from rank 1's optimizer shard, which rank 1 hashes), hashed by check_files (8 MiB readinto
  blocks, a thread per file up to the process's share of cores), by the same 2 processes at once;
- whole: verify_checkpoint (every file, what a user's check does) old vs new, one process.
Prints one JSON line with the times and the ratios old / new.

Measured (2 cores shared with other jobs, load ~3.7, 1.5 GB, 3 repeats): old_2_ranks 1.68 s / 1.78 s, new_2_ranks
0.82 s / 0.97 s, resume ratio 2.05x / 1.83x (two runs); whole-checkpoint check 1.15x / 1.04x (threads barely help on
2 busy cores; sha256 runs at about 1 GB/s per core).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from preflab.checkpoint import check_files, commit_checkpoint, read_marker, verify_checkpoint  # noqa: E402
from preflab.resume_verify import assign_checks  # noqa: E402


def old_sha256(path: Path) -> str:
    """preflab.checkpoint._sha256 before this change."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def old_verify(path: Path) -> None:
    """verify_checkpoint before this change (every file, in order), as every rank ran it at resume."""
    for name, record in read_marker(path).items():
        if (path / name).stat().st_size != record["size"] or old_sha256(path / name) != record["sha256"]:
            raise SystemExit(f"{name} damaged")


def make_checkpoint(root: Path, gb: float) -> Path:
    unit = int(gb * 2**30 / 6)  # model shard: 1 unit, optimizer shard: 2 units, per rank
    tmp, final = root / ".tmp-checkpoint-2", root / "checkpoint-2"
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("model", "optimizer"):
        (tmp / sub).mkdir(parents=True)
    block = bytes(range(256)) * 4096  # 1 MiB
    for rank in (1, 2):
        for sub, units in (("model", 1), ("optimizer", 2)):
            with open(tmp / f"{sub}/shard-0000{rank}-model-00001-of-00001.safetensors", "wb") as fh:
                left = units * unit
                while left > 0:
                    fh.write(block[:min(left, len(block))] if rank == 1 else block[::-1][:min(left, len(block))])
                    left -= len(block)
    for name in ("optimizer.json", "trainer_state.json", "rng-rank0.json", "rng-rank1.json"):
        (tmp / name).write_text(json.dumps({"file": name, "pad": "x" * 4000}))
    commit_checkpoint(tmp, final, 2)
    return final


def fsdp_reads(path: Path) -> list[dict[str, int]]:
    """What each of the 2 ranks reads, as sharded_reads says for a 2-rank FSDP2 checkpoint on 2 ranks."""
    size = {name: record["size"] for name, record in read_marker(path).items()}
    own = lambda r: {n: size[n] for n in size if f"shard-0000{r + 1}" in n or n == f"rng-rank{r}.json"}  # noqa: E731
    shared = {"optimizer.json": size["optimizer.json"], "trainer_state.json": size["trainer_state.json"]}
    return [{**own(0), "optimizer/shard-00002-model-00001-of-00001.safetensors": 4, **shared}, {**own(1), **shared}]


def rank_old(path: str, _rank: int) -> None:
    old_verify(Path(path))


def rank_new(path: str, rank: int) -> None:
    path = Path(path)
    records = read_marker(path)
    mine = assign_checks(fsdp_reads(path), {n: r["size"] for n, r in records.items()})[rank]
    if check_files(path, mine, records):
        raise SystemExit("damaged")


def two_ranks(target, path: Path) -> float:
    """Wall time of `target` run by 2 processes at once (LOCAL_WORLD_SIZE=2: each its share of the cores)."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=target, args=(str(path), r)) for r in (0, 1)]
    start = time.perf_counter()
    [p.start() for p in procs]
    [p.join() for p in procs]
    assert all(p.exitcode == 0 for p in procs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default="/tmp")
    args = parser.parse_args()
    import os

    os.environ["LOCAL_WORLD_SIZE"] = "2"
    root = Path(args.dir) / "preflab-resume-hash-bench"
    path = make_checkpoint(root, args.gb)
    total = sum(r["size"] for r in read_marker(path).values())
    times = {"old_2_ranks": [], "new_2_ranks": [], "old_whole": [], "new_whole": []}
    try:
        for _ in range(args.repeats):
            times["old_2_ranks"].append(two_ranks(rank_old, path))
            times["new_2_ranks"].append(two_ranks(rank_new, path))
            os.environ["LOCAL_WORLD_SIZE"] = "1"
            for name, check in (("old_whole", old_verify), ("new_whole", verify_checkpoint)):
                start = time.perf_counter()
                check(path)
                times[name].append(time.perf_counter() - start)
            os.environ["LOCAL_WORLD_SIZE"] = "2"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    best = {k: round(min(v), 3) for k, v in times.items()}
    print(json.dumps({"checkpoint_gb": round(total / 2**30, 3), "cpu_count": os.cpu_count(), **best,
                      "resume_ratio_old_over_new": round(best["old_2_ranks"] / best["new_2_ranks"], 2),
                      "whole_ratio_old_over_new": round(best["old_whole"] / best["new_whole"], 2),
                      "all_times": {k: [round(t, 3) for t in v] for k, v in times.items()}}))


if __name__ == "__main__":
    main()
