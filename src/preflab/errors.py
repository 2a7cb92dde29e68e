"""The error types preflab raises. Every message says what went wrong and what to do."""


class PreflabError(Exception):
    """Base class of every error preflab raises on purpose."""


class ConfigError(PreflabError):
    """A config key, type or value is invalid (raised before any model is loaded)."""


class WriteFailed(PreflabError):
    """A file of the run could not be written (a full disk, a quota, a read-only or vanished folder): the message names
    the file and what output_dir keeps. The `preflab` command exits with 74 on it (EXIT_WRITE_FAILED), not the 2 of
    a wrong config or data, so that a scheduler can tell a failure the same command may get past once there is room
    (resume_from_checkpoint: auto continues) from one it cannot."""


class OutputDirBusy(PreflabError):
    """output_dir is held by another live preflab run (its `.preflab.lock`: preflab.rundir.acquire_lock); the message
    names that run's PID, host and start time. The `preflab` command exits with 75 on it (EXIT_OUTPUT_DIR_BUSY), not
    the 2 of a wrong config: the same command succeeds once the other run ends, e.g. a scheduler's retry started while
    the job's previous pod is still stopping."""


# the `preflab` command's exit status per outcome (docs/reliability.md "Exit status"; preflab.cli.main)
EXIT_OK = 0
EXIT_CRASH = 1            # not preflab's: a library's error or a bug (Python's own status for an uncaught exception)
EXIT_REFUSED = 2          # a ConfigError, DataError or any other PreflabError: the input must change (argparse's too)
EXIT_WRITE_FAILED = 74    # WriteFailed: BSD sysexits' EX_IOERR; free space or fix permissions, run it again
EXIT_OUTPUT_DIR_BUSY = 75  # OutputDirBusy: BSD sysexits' EX_TEMPFAIL; another run holds output_dir, retry later
EXIT_INTERRUPTED = 130    # Ctrl-C: 128 + SIGINT's 2, as a shell reports it
EXIT_TERMINATED = 143     # SIGTERM: 128 + 15


def exit_status(err: PreflabError) -> int:
    """The `preflab` command's exit status for a PreflabError it stopped on: 75 for an OutputDirBusy, 74 for a
    WriteFailed, or an error of several ranks whose every failed rank failed so (`output_dir_busy`, `write_failed`:
    preflab.rank_agreement.RankFailure); 2 for any other."""
    if getattr(err, "output_dir_busy", isinstance(err, OutputDirBusy)):
        return EXIT_OUTPUT_DIR_BUSY
    return EXIT_WRITE_FAILED if getattr(err, "write_failed", isinstance(err, WriteFailed)) else EXIT_REFUSED


class DataError(PreflabError):
    """A data file or row is invalid; the message names the file, the row index and the field."""


class SplitMissing(DataError):
    """The source has no such split (a RowReader given `otherwise` reads that split instead)."""


class MissingExtraError(PreflabError):
    """An objective needs a per-example input in `batch.extras` that the batch does not carry."""


class MissingReferenceError(PreflabError):
    """An objective reads reference log-probs from a batch that has none (it declared needs_reference = False)."""


class NonFiniteError(PreflabError):
    """Training hit too many non-finite losses or gradients in a row."""


class JudgeTimeoutError(PreflabError):
    """A judge (reward function, reward model, preference model) did not return within judge_timeout_s; the run
    stops (the stuck call is abandoned in a background thread: preflab.loops.time_limit)."""


class UnsafeLoadError(PreflabError):
    """Loading would need pickle or remote code, which the user has not allowed."""


def nearest(name: str, options) -> str:
    """A ' Did you mean X?' hint for a misspelt `name`, or '' when nothing is close."""
    import difflib

    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""
