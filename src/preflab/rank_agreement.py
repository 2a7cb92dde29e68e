"""Every rank learns whether a step the ranks take together (each writes its part of a checkpoint, the main writes a
file the others read next) succeeded on all of them, and all stop with the same error when one failed.

A barrier after such a step waits for ranks that will never come: when rank 1's partition write raised (a full
disk), rank 1 left with its error and rank 0 waited at dist.barrier until the launcher killed it, saying nothing of
why. ranks_agree replaces the barrier with one all-reduce of a small flag tensor (one int per rank: 1 where the step
raised), which synchronises as a barrier does and tells every rank which ranks failed. Only when one did, a second
collective (all_gather_object) brings each failed rank's error text to all, and every rank raises one RankFailure
naming the failed ranks and what each said (an OSError's text names its file). The happy path costs the one small
all-reduce. Without a process group (one process) the block's own error is raised as it is.

main_result is the same promise for a result the main process alone computes and broadcasts (an online run's
environments, tool calls and their judges): its failure travels in the result's place through that broadcast.

It imports only preflab.errors, so every room can use it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from preflab.errors import OutputDirBusy, PreflabError, WriteFailed


class RankFailure(PreflabError):
    """A step the ranks took together failed on `failures` ({rank: its error's text}); raised on every rank alike,
    from the rank's own error where it had one. write_failed: every failed rank's error was a failed write
    (is_write_failure), so the `preflab` command exits with 74 on it as one process does (preflab.errors.exit_status),
    not with the 2 of a refused config. output_dir_busy: every failed rank's error was an OutputDirBusy (another run
    holds output_dir: the main's claim, preflab.loops.launch), so it exits with 75 as one process does."""

    def __init__(self, what: str, failures: dict[int, str], write_failed: bool = False, output_dir_busy: bool = False):
        self.what, self.failures, self.write_failed = what, dict(failures), write_failed
        self.output_dir_busy = output_dir_busy
        said = "; ".join(f"rank {rank} failed: {text}" for rank, text in sorted(self.failures.items()))
        super().__init__(f"{what}: {said}")


def is_write_failure(err: BaseException | None) -> bool:
    """`err` is a failed write: a WriteFailed, or an OSError (a full disk, a read-only folder) not yet said as one."""
    return isinstance(err, (WriteFailed, OSError))


def error_text(err: BaseException) -> str:
    """What a failed rank says of its error: an OSError's own text (errno, message and the file it names) or a
    PreflabError's (written for the user: the file, what is kept, what to do), else the error's type and message."""
    return str(err) if isinstance(err, (OSError, PreflabError)) else f"{type(err).__name__}: {err}"


def _process_group():
    """torch.distributed when a process group of several ranks is set up, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


_main_only_depth = 0  # > 0 while the main process runs a main_result's compute() alone


@contextmanager
def main_only() -> Iterator[None]:
    """A stretch the main process runs alone (main_result's compute(): the other ranks wait in its broadcast). An
    agreement inside it (a ranks_agree in code the compute calls, e.g. a generator's failure agreement) has no other
    rank to agree with: it runs as in one process. Before, the main entered the agreement's all-reduce while the
    others waited in the broadcast, and the launch hung (OTC's held-out rollouts on 2 processes)."""
    global _main_only_depth
    _main_only_depth += 1
    try:
        yield
    finally:
        _main_only_depth -= 1


def _agreeing_group():
    """The process group an agreement reduces over: None in one process and inside main_only()."""
    return None if _main_only_depth else _process_group()


def _flag_device(dist):
    """Where the flag tensor lives: the CPU for gloo; the process's accelerator device for the others (NCCL reduces
    only device tensors)."""
    import torch

    if dist.get_backend() == "gloo":
        return torch.device("cpu")
    from accelerate import PartialState

    return PartialState().device


def failed_ranks(failed: bool) -> list[int]:
    """The ranks whose `failed` is True, the same list on every rank: one all-reduce (SUM) of a [world] int tensor
    holding 1 at each failed rank's index. Collective: every rank calls it."""
    import torch

    dist = _agreeing_group()
    if dist is None:
        return [0] if failed else []
    flags = torch.zeros(dist.get_world_size(), dtype=torch.int32, device=_flag_device(dist))
    flags[dist.get_rank()] = int(failed)
    dist.all_reduce(flags, op=dist.ReduceOp.SUM)
    return [rank for rank, flag in enumerate(flags.tolist()) if flag]


def failed_ranks_and_values(failed: bool, values: tuple[float, ...]) -> tuple[list[int], list[tuple[float, ...]]]:
    """failed_ranks, and every rank's `values` (the same number of floats on every rank), in rank order, in the same
    one all-reduce: SUM of a [1 + len(values), world] float64 tensor holding this rank's flag in row 0 and its values
    in the rows below, each at its own rank's column (the other ranks' columns 0). Collective: every rank calls it."""
    import torch

    dist = _agreeing_group()
    if dist is None:
        return ([0] if failed else []), [tuple(float(v) for v in values)]
    world = dist.get_world_size()
    table = torch.zeros(1 + len(values), world, dtype=torch.float64, device=_flag_device(dist))
    table[:, dist.get_rank()] = torch.tensor([float(failed), *map(float, values)], dtype=torch.float64)
    dist.all_reduce(table, op=dist.ReduceOp.SUM)
    rows = table.cpu().tolist()
    return ([rank for rank, flag in enumerate(rows[0]) if flag]), [tuple(row[rank] for row in rows[1:])
                                                                 for rank in range(world)]


@contextmanager
def ranks_agree(what: str, values: tuple[float, ...] | None = None) -> Iterator[list]:
    """Run the block on every rank, then agree (failed_ranks) on whether it raised anywhere; where it did, every rank
    raises RankFailure(what, {failed rank: error_text}). Use it in place of a barrier after a step each rank (or the
    main alone) does before the others go on. One process: the block's error is raised as it is. A BaseException
    that is no Exception (KeyboardInterrupt, SystemExit) is raised at once: the process is stopping anyway.
    values: numbers of this rank's the agreement carries to every rank in its own all-reduce (failed_ranks_and_values:
    no collective more); the list the block is given holds every rank's, in rank order, once the block has left
    without an error (one process: this one's).
    A RankFailure out of the block came from an agreement inside it (a nested ranks_agree, a main_result), which
    raised it on every rank alike: it is raised again with `what` before its own what, with no collective (every
    rank raised it, so every rank skips this agreement's all-reduce alike)."""
    shared: list = []
    dist = _agreeing_group()
    if dist is None:
        yield shared
        if values is not None:
            shared.extend(failed_ranks_and_values(False, values)[1])
        return
    failure: Exception | None = None
    try:
        yield shared
    except RankFailure as agreed:  # an agreement inside the block (ranks_agree, main_result) raised it on every rank
        raise RankFailure(f"{what}: {agreed.what}", agreed.failures, write_failed=agreed.write_failed,
                          output_dir_busy=agreed.output_dir_busy) from agreed  # keep the exit status it carries
    except Exception as err:  # noqa: BLE001 - every failure is reported to the other ranks, then raised
        failure = err
    if values is None:
        failed = failed_ranks(failure is not None)
    else:
        failed, every = failed_ranks_and_values(failure is not None, values)
        shared.extend(every)
    if not failed:
        return
    # each rank's (error text, whether it was a failed write, whether output_dir was busy)
    said: list = [None] * dist.get_world_size()
    dist.all_gather_object(said, None if failure is None else (error_text(failure), is_write_failure(failure),
                                                                 isinstance(failure, OutputDirBusy)))
    raise RankFailure(what, {rank: said[rank][0] for rank in failed},
                      write_failed=all(said[rank][1] for rank in failed),
                      output_dir_busy=all(said[rank][2] for rank in failed)) from failure


class MainFailed:
    """What the main process sends in place of its result when compute() raised (main_result): the error's text and
    whether it was a refusal (a ConfigError, raised as one on every rank)."""

    def __init__(self, text: str, refusal: bool):
        self.text, self.refusal = text, refusal


def main_result(compute, accelerator, what: str):
    """compute() on the main process only (the environments it holds, the tool calls it runs once, the judges of its
    environments), its picklable result sent to every rank by the one broadcast that carries it (accelerate's
    broadcast_object_list): when compute() raised, the main sends MainFailed in the result's place through that same
    broadcast, so no rank waits in it for a result that never comes, and every rank raises the same error: a
    ConfigError (a refusal) as a ConfigError with its text, any other exception (a user's RuntimeError, KeyError...)
    as RankFailure(what, {0: its type and message}), on the main from its own error. Raised on the main alone, the
    others waited in the broadcast until the collective's timeout. No collective beyond the result's own broadcast.
    One process (accelerator None or of one process): compute() as it is, its error raised unchanged."""
    if accelerator is None or accelerator.num_processes == 1:
        return compute()
    from accelerate.utils import broadcast_object_list

    from preflab.errors import ConfigError

    sent, failure = [None], None
    if accelerator.is_main_process:
        try:
            with main_only():  # an agreement inside compute() has no other rank to meet
                sent = [compute()]
        except Exception as error:  # noqa: BLE001 - sent to every rank, then raised on every rank
            failure = error
            refusal = isinstance(error, ConfigError)
            sent = [MainFailed(str(error) if refusal else error_text(error), refusal)]
    got = broadcast_object_list(sent, from_process=0)[0]
    if isinstance(got, MainFailed):
        if got.refusal:
            raise ConfigError(got.text) from failure
        raise RankFailure(what, {0: got.text}) from failure
    return got
