"""The checksum check at resume, split over the ranks: each file is hashed once, by a rank that reads it.

A whole-checkpoint check (preflab.checkpoint.verify_checkpoint) on every rank reads the same bytes once per rank:
at 70B (weights and fp32 optimizer state, hundreds of GB) minutes per rank at about 1 s/GB. At resume each rank
instead says which files it will read and how many bytes of each (plain_reads; sharded_reads and deepspeed_reads
in the per-rank formats' modules), the ranks exchange these lists, and every file is checked (size, then sha256,
against the COMPLETE marker) by exactly one of the ranks that read it: the one that reads most of it (a rank's own
shard or ZeRO partition), ties going to the rank with the fewest bytes to hash so far (files every rank reads whole:
a plain checkpoint under DDP, trainer_state.json, optimizer.json). Files no rank reads (another world size's RNG
states) are not hashed. The ranks then exchange what they found, so every rank stops with the same PreflabError
naming the damaged file and the rank that found it, or every rank goes on: never one rank raising while the others
wait in a collective.
"""
from __future__ import annotations

from pathlib import Path

from preflab.checkpoint import LEGACY_FILES, check_files, read_marker, whole_file_reads
from preflab.errors import PreflabError


def plain_reads(path: str | Path) -> dict[str, int]:
    """{file: bytes} that load_checkpoint reads from a full-tensor checkpoint: every file, whole (every rank of a
    DDP run loads them all)."""
    path = Path(path)
    try:
        records = read_marker(path)
    except PreflabError:
        records = None  # verify_rank_reads reports the marker
    return whole_file_reads(path, list(records) if records is not None else list(LEGACY_FILES))


def assign_checks(reads_per_rank: list[dict[str, int]], sizes: dict[str, int]) -> list[list[str]]:
    """For each rank, the files it checks: every file some rank reads goes to the rank that reads most bytes of
    it, ties to the rank with the fewest bytes assigned so far, then the lowest rank. Files are placed largest
    first (sizes: bytes on disk), so the result is the same on every rank given the same lists."""
    readers: dict[str, list[tuple[int, int]]] = {}
    for rank, reads in enumerate(reads_per_rank):
        for name, nbytes in reads.items():
            readers.setdefault(name, []).append((int(nbytes), rank))
    load = [0] * len(reads_per_rank)
    mine: list[list[str]] = [[] for _ in reads_per_rank]
    for name in sorted(readers, key=lambda n: (-sizes.get(n, 0), n)):
        most = max(nbytes for nbytes, _ in readers[name])
        rank = min((r for nbytes, r in readers[name] if nbytes == most), key=lambda r: (load[r], r))
        mine[rank].append(name)
        load[rank] += sizes.get(name, 0)
    return mine


def all_gather(value) -> list:
    """[value of rank 0, value of rank 1, ...] over torch.distributed's default group; [value] without one. The
    values are lists and dicts of str and int made here (all_gather_object serialises them between the ranks of
    this run; nothing is read from disk)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def verify_rank_reads(path: str | Path, reads: dict[str, int], rank: int | None = None, gather=all_gather) -> list[str]:
    """Check the files of checkpoint `path` that `reads` ({file: bytes this rank reads}) names, split over the
    ranks (assign_checks); collective: every rank calls it, with its own reads. PreflabError, the same on every rank,
    naming each damaged file and the rank that found it; returns the files this rank hashed."""
    import torch.distributed as dist

    path = Path(path)
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    problems: list[str] = []
    try:
        records = read_marker(path)
    except PreflabError as err:  # every rank sees the same marker: reported after the exchange, never before
        records, problems = {}, [str(err)]
    reads_per_rank = gather({name: int(nbytes) for name, nbytes in reads.items()})
    sizes = {}
    for theirs in reads_per_rank:
        for name, nbytes in theirs.items():
            record = (records or {}).get(name)
            sizes[name] = max(sizes.get(name, 0), int(nbytes), record["size"] if record else 0)
    mine = assign_checks(reads_per_rank, sizes)[rank] if not problems else []
    problems += list(check_files(path, mine, records).values())
    found = gather(problems)
    seen: set[str] = set()
    messages: list[str] = []
    for who, theirs in enumerate(found):
        for message in theirs:
            if message not in seen:  # a bad marker: every rank found it
                seen.add(message)
                messages.append(message if len(found) == 1 else f"{message} (found by rank {who})")
    if messages:
        raise PreflabError(" ".join(messages))
    return mine
