"""The checksum check at resume split over the ranks (preflab.resume_verify): each rank hashes only files it reads,
each file once over all ranks, and every rank gets the same error naming a damaged file, whichever rank found it.
Its two 2-process checks run in shared launches: test_two_ddp_ranks_share_the_check_of_a_full_tensor_checkpoint in
tests/loops/test_ddp_cli_launch.py's, test_two_fsdp2_ranks_check_their_own_shards_and_stop_together_on_damage in
tests/loops/test_scale_matrix.py's FSDP2 launch (tests/loops/resume_verify_run.py's cases)."""
import json
import sys
import threading
from pathlib import Path

import pytest

import preflab.checkpoint as ck
from preflab.errors import PreflabError
from preflab.resume_verify import assign_checks, verify_rank_reads

HERE = Path(__file__).resolve().parent
SHARD = "model/shard-00002-model-00001-of-00001.safetensors"
SHA256 = ck.file_sha256


def test_each_file_goes_to_the_rank_that_reads_most_of_it_and_shared_files_are_spread_by_size():
    # FSDP2 on 2 ranks: each reads its own shard, rank 0 also a 4-byte step from rank 1's optimizer shard
    fsdp = [{"model/1": 100, "optimizer/1": 200, "optimizer/2": 4, "optimizer.json": 10, "rng-rank0.json": 5},
            {"model/2": 100, "optimizer/2": 196, "optimizer.json": 10, "rng-rank1.json": 5}]
    sizes = {"model/1": 100, "model/2": 100, "optimizer/1": 200, "optimizer/2": 200, "optimizer.json": 10,
             "rng-rank0.json": 5, "rng-rank1.json": 5}
    assert assign_checks(fsdp, sizes) == [["optimizer/1", "model/1", "optimizer.json", "rng-rank0.json"],
                                          ["optimizer/2", "model/2", "rng-rank1.json"]]
    # DDP, a full-tensor checkpoint every rank reads whole: each file hashed once, the largest first to the least
    # loaded rank (ties: the lower rank)
    ddp = [{"optimizer.safetensors": 200, "model.safetensors": 100, "trainer_state.json": 1}] * 2
    assert assign_checks(ddp, {"optimizer.safetensors": 200, "model.safetensors": 100, "trainer_state.json": 1}) == [
        ["optimizer.safetensors"], ["model.safetensors", "trainer_state.json"]]


def _two_file_checkpoint(tmp_path) -> Path:
    tmp, final = tmp_path / ".tmp", tmp_path / "checkpoint-3"
    (tmp / "model").mkdir(parents=True)
    for rank in (0, 1):
        (tmp / f"model/shard-0000{rank + 1}-model-00001-of-00001.safetensors").write_bytes(bytes([rank]) * 4000)
        (tmp / f"rng-rank{rank}.json").write_text(json.dumps({"rank": rank}))
    (tmp / "optimizer.json").write_text('{"betas": [0.9, 0.999]}')
    (tmp / "trainer_state.json").write_text('{"global_step": 3}')
    ck.commit_checkpoint(tmp, final, 3)
    return final


def _as_two_ranks(path, reads, monkeypatch, unreadable=None):
    """verify_rank_reads on two threads standing for ranks 0 and 1 (a barrier in place of all_gather_object);
    returns per rank (its error or None, the files it hashed). unreadable: a file whose reading fails (OSError)."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")  # one hashing thread per rank: the thread says whose hash it is
    slots, barrier, local = [None, None], threading.Barrier(2, timeout=20), threading.local()
    hashed, errors = {0: [], 1: []}, {0: None, 1: None}

    def sha256(file):
        name = Path(file).relative_to(path).as_posix()
        hashed[local.rank].append(name)
        if name == unreadable:
            raise PermissionError(13, "Permission denied")
        return SHA256(file)

    monkeypatch.setattr(ck, "file_sha256", sha256)

    def gather_for(rank):
        def gather(value):
            barrier.wait()
            slots[rank] = value
            barrier.wait()
            gathered = list(slots)
            barrier.wait()
            return gathered
        return gather

    def rank_main(rank):
        local.rank = rank
        try:
            verify_rank_reads(path, reads[rank], rank=rank, gather=gather_for(rank))
        except PreflabError as err:
            errors[rank] = str(err)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert not any(t.is_alive() for t in threads)
    return errors, hashed


def test_a_damaged_shard_of_rank_1_is_hashed_by_rank_1_only_and_named_on_both_ranks(tmp_path, monkeypatch):
    path = _two_file_checkpoint(tmp_path)
    shared = {"optimizer.json": 23, "trainer_state.json": 18}
    reads = [{"model/shard-00001-model-00001-of-00001.safetensors": 4000, SHARD: 4, "rng-rank0.json": 11, **shared},
             {SHARD: 3996, "rng-rank1.json": 11, **shared}]
    errors, hashed = _as_two_ranks(path, reads, monkeypatch)
    assert errors == {0: None, 1: None}
    assert sorted(hashed[0] + hashed[1]) == sorted({*reads[0], *reads[1]})  # each file read, hashed once
    assert SHARD in hashed[1] and SHARD not in hashed[0]

    data = (path / SHARD).read_bytes()
    (path / SHARD).write_bytes(data[:-1] + b"x")  # same size, other bytes
    errors, hashed = _as_two_ranks(path, reads, monkeypatch)
    assert SHARD not in hashed[0] and "rng-rank1.json" not in hashed[0]
    assert errors[0] == errors[1]
    assert f"the sha256 of {path / SHARD} differs" in errors[0] and "(found by rank 1)" in errors[0]

    errors, hashed = _as_two_ranks(path, reads, monkeypatch, unreadable=SHARD)  # an OSError on rank 1 only
    assert errors[0] == errors[1] == f"checkpoint {path}: {path / SHARD} cannot be read (Permission denied); " \
                                     "check its permissions and disk. (found by rank 1)"

    (path / "COMPLETE").unlink()  # what every rank finds: reported once, by both, after the exchange
    errors, hashed = _as_two_ranks(path, reads, monkeypatch)
    assert errors[0] == errors[1] == f"{path} is not a complete preflab checkpoint (no COMPLETE marker). (found by " \
                                     "rank 0)"
    assert hashed == {0: [], 1: []}


def test_a_deepspeed_rank_reads_its_own_partition_and_the_rng_it_restores(tmp_path):
    from preflab.deepspeed_checkpoint import deepspeed_reads

    (tmp_path / "zero").mkdir()
    names = ["zero/rank0.safetensors", "zero/rank0.json", "zero/rank1.safetensors", "zero/rank1.json",
             "rng.safetensors", "rng.json", "rng-rank0.safetensors", "rng-rank0.json", "rng-rank1.safetensors",
             "rng-rank1.json"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(b"x" * (i + 1))
    (tmp_path / "trainer_state.json").write_text(json.dumps({"world_size": 2}))
    # this test is one process (rank 0 of 1): another world size than the checkpoint's, so the main rank's RNG
    assert deepspeed_reads(tmp_path, 1) == {"zero/rank1.safetensors": 3, "zero/rank1.json": 4,
                                            "trainer_state.json": 17, "rng.safetensors": 5, "rng.json": 6}
    (tmp_path / "trainer_state.json").write_text(json.dumps({"world_size": 1}))  # the same world size: its own
    assert set(deepspeed_reads(tmp_path, 0)) == {"zero/rank0.safetensors", "zero/rank0.json", "trainer_state.json",
                                                 "rng-rank0.safetensors", "rng-rank0.json"}


def test_a_one_process_resume_still_hashes_every_file_it_loads(tmp_path, monkeypatch):
    sys.path.insert(0, str(HERE))
    from tiny_run import run

    out = tmp_path / "run"
    run(out, max_steps=2, save_steps=2)
    ckpt = out / "checkpoint-2"
    hashed = []
    monkeypatch.setattr(ck, "file_sha256", lambda file: hashed.append(Path(file).relative_to(ckpt).as_posix())
                        or SHA256(file))
    summary, _ = run(tmp_path / "resumed", max_steps=2, resume_from_checkpoint=str(ckpt))
    assert summary["resumed_from_step"] == 2
    assert sorted(hashed) == sorted(json.loads((ckpt / "COMPLETE").read_text())["files"]) == sorted(
        ["model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "rng.json",
         "trainer_state.json"])
    bad = ckpt / "rng.json"
    bad.write_text(bad.read_text().replace("3", "4", 1))
    with pytest.raises(PreflabError, match=f"sha256 of {bad} differs"):
        run(tmp_path / "resumed_again", max_steps=2, resume_from_checkpoint=str(ckpt))


def test_files_are_placed_by_their_size_on_disk_not_by_the_bytes_a_rank_reads(tmp_path):
    """Both ranks read 10 bytes of the 4000-byte shard and all 23 of optimizer.json: placed by the COMPLETE marker's
    sizes, the shard (4000) goes first, to rank 0, and optimizer.json to the less loaded rank 1. By the bytes read
    (10 < 23) the order, and so the split, would be the other way."""
    path = _two_file_checkpoint(tmp_path)
    shard = "model/shard-00001-model-00001-of-00001.safetensors"
    reads = {shard: 10, "optimizer.json": 23}
    both = lambda value: [value, value]  # noqa: E731  (two ranks with the same reads, no process group)
    assert verify_rank_reads(path, reads, rank=0, gather=both) == [shard]
    assert verify_rank_reads(path, reads, rank=1, gather=both) == ["optimizer.json"]
