"""Quieting other libraries for one `preflab` command, and putting them back after it.

A command hides other libraries' warnings, transformers' info logs and its progress bars (`preflab train`:
`quiet_third_party()`; `preflab demo --quiet`: `quiet_transformers(progress_bars=False)`); a diffusion run's other
ranks hide bitsandbytes' import-time warnings (`quiet_bitsandbytes()`). preflab.cli.main runs each
command inside `kept_as_found()`, so a caller that runs main() in its own process (a notebook, a test session) finds
the warning filters, transformers' verbosity and its (and huggingface_hub's) progress bars as they were: a library
must not leave global state changed after a run. Outside `kept_as_found()` the changes stay, as before.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator

_undo: list[Callable[[], None]] = []  # how to put back each change made inside kept_as_found()
_depth = 0                             # kept_as_found() blocks open (main() inside a command, e.g. a recipe)


@contextlib.contextmanager
def kept_as_found() -> Iterator[None]:
    """Warning filters and the changes made by quiet_transformers() inside the block are undone at its end."""
    global _depth
    mark = len(_undo)
    _depth += 1
    try:
        with warnings.catch_warnings():  # saves warnings.filters and restores them on exit
            yield
    finally:
        _depth -= 1
        while len(_undo) > mark:
            _undo.pop()()


def quiet_transformers(verbosity_error: bool = True, progress_bars: bool = True) -> None:
    """transformers' logs at error level only (verbosity_error) and / or its progress bars off (progress_bars=False;
    transformers' switch turns huggingface_hub's bars off too)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    if verbosity_error:
        hf_logging.set_verbosity_error()
        if _depth:
            _undo.append(lambda: hf_logging.set_verbosity(level))
    if not progress_bars:
        hf_logging.disable_progress_bar()
        if _depth and bars:
            _undo.append(hf_logging.enable_progress_bar)


@contextlib.contextmanager
def progress_bars_off(off: bool = True) -> Iterator[None]:
    """transformers' (and huggingface_hub's) progress bars off inside the block when `off`, and after it exactly as
    found: transformers' switch and huggingface_hub's per-group states (transformers' enable_progress_bar alone would
    clear those). A run with disable_tqdm: true saves its final model inside it (preflab.loops.driver.save_model):
    save_pretrained draws transformers' "Writing model shards" bar, which the run's own switch did not reach, and a
    notebook's bars must not stay off after the save. off=False: nothing is changed."""
    if not off:
        yield
        return
    try:
        import sys

        import huggingface_hub.utils.tqdm  # noqa: F401  (the module, not the tqdm class huggingface_hub.utils names)
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    hub = sys.modules["huggingface_hub.utils.tqdm"]
    bars, states = hf_logging.is_progress_bar_enabled(), dict(hub.progress_bar_states)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            with warnings.catch_warnings():  # "cannot enable" under HF_HUB_DISABLE_PROGRESS_BARS: the states below
                warnings.simplefilter("ignore")
                hf_logging.enable_progress_bar()
        hub.progress_bar_states.clear()
        hub.progress_bar_states.update(states)


def quiet_third_party() -> None:
    """Hide other libraries' FutureWarning / DeprecationWarning / UserWarning (preflab's own warnings still show),
    transformers' info logs and its progress bars (preflab draws its own)."""
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=r"preflab(\.|$)")
        warnings.filterwarnings("default", category=category, message="preflab")
    quiet_transformers(verbosity_error=True, progress_bars=False)
    quiet_bitsandbytes_cpu_kernel()


def _loggers_at_error(names) -> None:
    """The standard-library loggers `names` at error level in this process, put back by kept_as_found()."""
    for name in names:
        logger = logging.getLogger(name)
        level = logger.level
        logger.setLevel(logging.ERROR)
        if _depth:
            _undo.append(lambda logger=logger, level=level: logger.setLevel(level))


# bitsandbytes' CPU backend, imported by peft whenever bitsandbytes is installed (every LoRA run), tries on a CPU with
# AVX512-BF16 to fetch a 4-bit matmul kernel from the hub and logs "Failed to load CPU gemm_4bit_forward from
# kernels-community ... pip install kernels" when it cannot (no network, an untrusted repository). preflab runs no
# 4-bit weights on a CPU (load_in_4bit is refused there), so on a CPU LoRA run that line spoke of a failure that
# was none.
BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"


def quiet_bitsandbytes_cpu_kernel() -> None:
    """bitsandbytes' CPU-kernel logger at error level (its warning above hidden), put back by kept_as_found()."""
    _loggers_at_error([BITSANDBYTES_CPU_LOGGER])


def quiet_bitsandbytes() -> None:
    """bitsandbytes' log, and that of the `kernels` package it loads its CPU kernel through while it imports, at error
    level only, in this process. Importing diffusers' models imports bitsandbytes where it is installed
    (diffusers.models.modeling_utils -> diffusers.quantizers; peft through diffusers.hooks), and bitsandbytes logs
    warnings while it imports through the standard logging module (on a CPU with AVX-512 BF16: kernels' "Skipping
    publisher trust check for 'kernels-community/quantization-bitsandbytes' ..." when the hub is offline, then
    bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community ...", which every preflab command
    already hides: quiet_bitsandbytes_cpu_kernel). A diffusion run calls this on its processes other than the main
    one before it loads the pipeline, so a launch of N processes says them once, not N times
    (preflab.loops.diffusion.DiffusionRun). Put back by kept_as_found() like quiet_transformers()."""
    _loggers_at_error(BITSANDBYTES_IMPORT_LOGGERS)


BITSANDBYTES_IMPORT_LOGGERS = ("bitsandbytes", "kernels")  # the loggers bitsandbytes' import warns through
