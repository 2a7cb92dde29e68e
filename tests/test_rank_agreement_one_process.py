"""preflab.rank_agreement and the collective per-rank save (sharded_checkpoint.save_rank_checkpoint) without a
second process: what one rank does with the flags and texts the others send (a stand-in process group that plays
the other rank's part), a real process group of one process, and save_rank_checkpoint's folder handling in one
process (a killed save's stage, a refused or failed part, save_total_limit with a best checkpoint).
tests/test_rank_agreement.py runs the same code on two gloo processes; these cases need no launch."""
import errno
import json
from pathlib import Path

import pytest

from preflab import rank_agreement
from preflab.errors import PreflabError
from preflab.rank_agreement import RankFailure, error_text, ranks_agree
from preflab.sharded_checkpoint import save_rank_checkpoint


class OtherRanks:
    """A stand-in for torch.distributed seen from rank `rank` of `world`: all_reduce adds the other ranks' flags
    (1 where a rank in `others` failed) and all_gather_object fills in their texts (`others`: {rank: text}); the
    calls are counted."""

    class ReduceOp:
        SUM = "sum"

    def __init__(self, rank: int, world: int, others: dict[int, str]):
        self.rank, self.world, self.others = rank, world, others
        self.calls = {"all_reduce": 0, "all_gather_object": 0}

    def get_world_size(self):
        return self.world

    def get_rank(self):
        return self.rank

    def get_backend(self):
        return "gloo"

    def all_reduce(self, flags, op):
        assert op == "sum"
        self.calls["all_reduce"] += 1
        for rank in self.others:
            flags[rank] += 1

    def all_gather_object(self, texts, mine):
        """Each rank sends (its error's text, whether it was a failed write, whether output_dir was busy); `others`
        gives a text (neither), a (text, write) pair (not busy) or that triple."""
        self.calls["all_gather_object"] += 1
        for rank in range(self.world):
            other = self.others.get(rank)
            texts[rank] = (mine if rank == self.rank else (other, False, False) if isinstance(other, str)
                           else other if other is None else (*other, False)[:3])


@pytest.fixture
def group(monkeypatch):
    def make(rank: int, world: int, others: dict[int, str]) -> OtherRanks:
        dist = OtherRanks(rank, world, others)
        monkeypatch.setattr(rank_agreement, "_process_group", lambda: dist)
        return dist
    return make


def test_two_failed_ranks_are_each_named_with_their_own_error(group):
    """Rank 1 of 3 fails with a full disk while rank 2 failed with its own error: both are named, each with what it
    said, in rank order; rank 0 (no failure) is not named."""
    dist = group(1, 3, {2: "PreflabError-free text of rank 2"})
    err = OSError(errno.ENOSPC, "No space left on device", "/run/part-rank1")
    with pytest.raises(RankFailure) as caught:
        with ranks_agree("could not write X"):
            raise err
    assert caught.value.failures == {1: error_text(err), 2: "PreflabError-free text of rank 2"}
    assert str(caught.value) == ("could not write X: rank 1 failed: [Errno 28] No space left on device: "
                                 "'/run/part-rank1'; rank 2 failed: PreflabError-free text of rank 2")
    assert caught.value.__cause__ is err
    assert dist.calls == {"all_reduce": 1, "all_gather_object": 1}


def test_a_rank_that_did_not_fail_raises_the_other_ranks_failure_and_the_happy_path_is_one_all_reduce(group):
    dist = group(0, 2, {1: "[Errno 28] No space left on device: 'f'"})
    with pytest.raises(RankFailure) as caught:
        with ranks_agree("saving"):
            pass
    assert caught.value.failures == {1: "[Errno 28] No space left on device: 'f'"}
    assert caught.value.__cause__ is None
    assert dist.calls == {"all_reduce": 1, "all_gather_object": 1}
    quiet = group(1, 2, {})
    with ranks_agree("saving"):
        pass
    assert quiet.calls == {"all_reduce": 1, "all_gather_object": 0}


def test_an_interrupt_inside_the_block_is_raised_at_once_not_turned_into_a_rank_failure(group):
    """A KeyboardInterrupt is no Exception: wrapped in a RankFailure, every `except Exception` on the way up (a
    recipe's stage, a callback's guard) would catch a Ctrl-C. It leaves at once, before any collective."""
    dist = group(0, 2, {})
    with pytest.raises(KeyboardInterrupt):
        with ranks_agree("saving"):
            raise KeyboardInterrupt
    assert dist.calls == {"all_reduce": 0, "all_gather_object": 0}


def test_a_process_group_of_one_process_raises_the_blocks_own_error(tmp_path):
    """torch.distributed set up with a world of 1 (a launcher started on one process): nobody else to tell, so the
    block's error is raised as it is (its type and errno kept), as without a process group."""
    import torch.distributed as dist

    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        err = OSError(errno.ENOSPC, "No space left on device", "/x")
        with pytest.raises(OSError) as caught:
            with ranks_agree("writing"):
                raise err
        assert caught.value is err
    finally:
        dist.destroy_process_group()


def _part(name: str = "part-rank0.safetensors", fail: BaseException | None = None):
    def write_shards(tmp: Path) -> None:
        if fail is not None:
            raise fail
        (tmp / name).write_bytes(b"part")
    return write_shards


def test_a_killed_saves_stage_is_not_committed_into_the_next_save(tmp_path):
    """A save killed part way leaves .tmp-checkpoint-3-sharded with a stale part; the next save at that step starts
    from an empty stage: checkpoint-3 holds this save's files only, and trainer_state.json records the format and
    this run's number of processes (what a resume on another number of processes is checked against)."""
    stale = tmp_path / ".tmp-checkpoint-3-sharded"
    stale.mkdir()
    (stale / "part-rank1.safetensors").write_bytes(b"stale part of a killed save")
    final = save_rank_checkpoint(tmp_path, 3, _part(), None, {"checkpoint_format": "sharded"}, True)
    assert final == tmp_path / "checkpoint-3"
    assert sorted(p.name for p in final.iterdir()) == [
        "COMPLETE", "part-rank0.safetensors", "rng-rank0.json", "rng-rank0.safetensors", "rng.json",
        "rng.safetensors", "trainer_state.json"]
    state = json.loads((final / "trainer_state.json").read_text())
    assert (state["world_size"], state["checkpoint_format"], state["global_step"]) == (1, "sharded", 3)
    assert not stale.exists()


def test_a_full_disk_in_the_part_write_names_the_file_removes_the_stage_and_keeps_the_earlier_checkpoint(tmp_path):
    save_rank_checkpoint(tmp_path, 1, _part(), None, {"checkpoint_format": "deepspeed"}, True)
    tmp = tmp_path / ".tmp-checkpoint-2-deepspeed"
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp / "part-rank0.safetensors"))
    with pytest.raises(PreflabError) as caught:
        save_rank_checkpoint(tmp_path, 2, _part(fail=full), None, {"checkpoint_format": "deepspeed"}, True)
    assert str(caught.value) == (
        f"could not write sharded checkpoint {tmp_path / 'checkpoint-2'}: [Errno 28] No space left on device: "
        f"'{tmp / 'part-rank0.safetensors'}'. Earlier checkpoints are kept (the latest: {tmp_path / 'checkpoint-1'});"
        " free disk space or fix the permissions of output_dir (every rank writes into it: it must be one shared "
        "folder), then resume.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]


def test_a_refused_part_is_raised_as_it_is_and_leaves_no_stage(tmp_path):
    refusal = PreflabError("the model's state does not fit")
    with pytest.raises(PreflabError) as caught:
        save_rank_checkpoint(tmp_path, 1, _part(fail=refusal), None, {"checkpoint_format": "sharded"}, True)
    assert caught.value is refusal
    assert list(tmp_path.iterdir()) == []


def test_save_total_limit_never_removes_the_best_checkpoint(tmp_path):
    """save_total_limit 1 with best_model_checkpoint checkpoint-1 (load_best_model_at_end): after saves at steps
    1, 2 and 3 the best and the newest are kept (transformers' rotate_checkpoints keeps the protected ones)."""
    best = str(tmp_path / "checkpoint-1")
    for step in (1, 2, 3):
        save_rank_checkpoint(tmp_path, step, _part(), None, {"checkpoint_format": "sharded",
                                                              "best_model_checkpoint": best}, True, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-3"]


def test_a_failed_write_on_every_failed_rank_exits_as_a_failed_write_and_any_other_failure_as_a_refusal(group):
    """User trial 26: under a launcher a full disk was a RankFailure (exit 2, as a wrong config), where one process
    exits 74 (preflab.errors.WriteFailed). Every failed rank's error a write -> write_failed (74); one that is not ->
    2."""
    from preflab.errors import exit_status

    group(0, 3, {1: ("could not write checkpoint c: No space left on device", True)})
    with pytest.raises(RankFailure) as caught:
        with ranks_agree("saving"):
            raise OSError(errno.ENOSPC, "No space left on device", "/run/part-rank0")
    assert caught.value.write_failed and exit_status(caught.value) == 74
    assert caught.value.failures[1] == "could not write checkpoint c: No space left on device"
    group(0, 3, {1: ("could not write c", True), 2: ("ValueError: boom", False)})
    with pytest.raises(RankFailure) as caught:
        with ranks_agree("saving"):
            pass
    assert not caught.value.write_failed and exit_status(caught.value) == 2


def test_output_dir_held_by_another_run_on_every_failed_rank_exits_75_and_with_another_failure_2(group, tmp_path):
    """The main's claim of output_dir is agreed by every rank (preflab.loops.launch): another live run holding it
    was a RankFailure exiting 2 ("fix the input"); now, as for one process, 75 ("retry later"), on the main (its own
    OutputDirBusy) and on a rank that only heard of it. Mixed with a failure that is not one: 2."""
    from preflab.errors import OutputDirBusy, exit_status

    busy = OutputDirBusy(f"output_dir {tmp_path} is in use by another preflab run (PID 4242 on host h, started t0)")
    group(0, 2, {})
    with pytest.raises(RankFailure) as caught:
        with ranks_agree("the main process could not take output_dir"):
            raise busy
    assert caught.value.output_dir_busy and not caught.value.write_failed and exit_status(caught.value) == 75
    assert caught.value.failures == {0: str(busy)}
    group(1, 2, {0: (str(busy), False, True)})
    with pytest.raises(RankFailure) as caught:
        with ranks_agree("the main process could not take output_dir"):
            pass
    assert caught.value.output_dir_busy and exit_status(caught.value) == 75 and "PID 4242" in str(caught.value)
    group(0, 3, {1: (str(busy), False, True), 2: ("could not write c", True, False)})
    with pytest.raises(RankFailure) as caught:
        with ranks_agree("saving"):
            pass
    assert not caught.value.output_dir_busy and not caught.value.write_failed and exit_status(caught.value) == 2


def test_an_agreement_inside_an_agreement_keeps_the_exit_status_its_failure_carries(group, tmp_path):
    """ranks_agree re-raises a RankFailure from an inner agreement with its own description in front (no second
    collective). It kept the failures but dropped write_failed / output_dir_busy, so a full disk or a busy
    output_dir met inside a nested agreement exited 2 instead of 74 / 75."""
    from preflab.errors import OutputDirBusy, exit_status

    busy = OutputDirBusy(f"output_dir {tmp_path} is in use by another preflab run (PID 4242 on host h, started t0)")
    for inner_error, status in ((busy, 75), (OSError(28, "No space left on device", str(tmp_path / "x")), 74)):
        group(0, 2, {})
        with pytest.raises(RankFailure) as caught:
            with ranks_agree("the outer stretch"):
                with ranks_agree("the inner stretch"):
                    raise inner_error
        assert caught.value.what.startswith("the outer stretch: the inner stretch")
        assert exit_status(caught.value) == status


def test_an_agreement_inside_a_main_only_stretch_makes_no_collective(group):
    """main_result's compute() runs on the main alone while the other ranks wait in its broadcast; an agreement in
    the code it calls (OTC's rollout generator agrees on failures) must not all-reduce there: the main waited in it
    for ranks that were waiting in the broadcast, and a 2-process OTC recipe hung at its held-out evaluation."""
    from preflab.rank_agreement import main_only

    dist = group(0, 2, {1: "rank 1's error"})
    with main_only():
        with ranks_agree("the tool rollouts failed"):
            pass
        with pytest.raises(ValueError, match="the main's own"):  # raised as in one process, not a RankFailure
            with ranks_agree("the tool rollouts failed"):
                raise ValueError("the main's own")
    assert dist.calls == {"all_reduce": 0, "all_gather_object": 0}
    with pytest.raises(RankFailure):  # outside the stretch the agreement is back
        with ranks_agree("the tool rollouts failed"):
            pass
    assert dist.calls == {"all_reduce": 1, "all_gather_object": 1}
