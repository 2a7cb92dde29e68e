"""One rank of tests/test_rank_agreement.py: `python rank_agreement_run.py OUT` under RANK / WORLD_SIZE /
MASTER_ADDR / MASTER_PORT (2 gloo processes on the CPU). It runs each scenario in turn on both ranks and prints one
JSON line per scenario: {"scenario", "rank", "error" (the text of what this rank raised, None when nothing),
"seconds"}.

  sharded_ok       save_rank_checkpoint with every rank's part written: checkpoint-1 committed
  sharded_rank1    the same save at step 2 whose rank 1 part fails (a full disk naming rank 1's file)
  main_writes      recipe_state.main_writes whose write fails on the main process (a full disk naming its file)
  ref_cache        scoring.ref_cache.reference_cache whose cache folder cannot be made on rank 0
"""
import errno
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist


def full_disk(path: Path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    from preflab import recipe_state
    from preflab.scoring import ref_cache
    from preflab.sharded_checkpoint import save_rank_checkpoint

    def part(failing_rank: int | None):
        def write_shards(tmp: Path) -> None:
            mine = tmp / f"part-rank{rank}.safetensors"
            if rank == failing_rank:
                full_disk(mine)
            mine.write_bytes(b"part")
        return write_shards

    def gather(items: list) -> list:
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, items)
        return [x for each in every for x in each]

    values = ref_cache.RefLogps([torch.zeros(2)], [torch.zeros(3)])
    ref_cache.compute_ref_logps = lambda *args, **kwargs: values  # the scoring is not what is tested
    blocked = out / "blocked"
    if rank == 0:
        blocked.write_text("a file where the cache folder's parent should be")
    scenarios = {
        "sharded_ok": lambda: save_rank_checkpoint(out, 1, part(None), None, {}, rank == 0),
        "sharded_rank1": lambda: save_rank_checkpoint(out, 2, part(1), None, {}, rank == 0),
        "main_writes": lambda: recipe_state.main_writes(lambda: full_disk(out / "summary.json")),
        "ref_cache": lambda: ref_cache.reference_cache(None, [object()], None, 1, "k" * 64, blocked / "cache", rank,
                                                       2, gather),
    }
    for name, run in scenarios.items():
        started = time.perf_counter()
        try:
            run()
            error = None
        except Exception as err:  # noqa: BLE001 - what each rank raised is the result
            error = f"{type(err).__name__}: {err}"
        print(json.dumps({"scenario": name, "rank": rank, "error": error,
                          "seconds": time.perf_counter() - started}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
