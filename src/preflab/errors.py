"""The error types preflab raises. Every message says what went wrong and what to do."""


class PreflabError(Exception):
    """Base class of every error preflab raises on purpose."""


class ConfigError(PreflabError):
    """A config key, type or value is invalid (raised before any model is loaded)."""


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
