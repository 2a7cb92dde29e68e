"""Importing diffusers' models imports bitsandbytes where it is installed (diffusers.models.modeling_utils ->
diffusers.quantizers.bitsandbytes, and peft through diffusers.hooks): no import of diffusers' submodules avoids it,
since every model class derives from modeling_utils' ModelMixin (docs/diffusion.md). bitsandbytes then logs a
warning while it imports (on a CPU with AVX-512 BF16: "Failed to load CPU gemm_4bit_forward from kernels-community
...", after the `kernels` package's "Skipping publisher trust check ..." when the hub is offline), once per process
of a launch. A diffusion run's processes other than the main one now set bitsandbytes' and kernels' loggers to error
level before the pipeline loads (preflab.quiet.quiet_bitsandbytes), so a launch says them once; the 2-process launch
of tests/loops/test_ddp_cli_launch.py counts the lines in its output."""
import logging

from preflab.quiet import kept_as_found, quiet_bitsandbytes


class Kept(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_bitsandbytes_warnings_are_dropped_its_errors_kept_and_the_level_put_back():
    parent = logging.getLogger("bitsandbytes")
    child = logging.getLogger("bitsandbytes.backends.cpu.ops")  # the logger of the import-time warning
    kept, before = Kept(), parent.level
    parent.addHandler(kept)
    try:
        with kept_as_found():
            quiet_bitsandbytes()
            child.warning("Failed to load CPU gemm_4bit_forward")
            child.error("an error")
        child.warning("after the command")
    finally:
        parent.removeHandler(kept)
    assert kept.messages == ["an error", "after the command"]
    assert parent.level == before


def test_the_kernels_loaders_offline_warning_is_dropped_too():
    """bitsandbytes loads its CPU kernel through the `kernels` package while it imports, which warns "Skipping
    publisher trust check ..." when the hub is offline: dropped with bitsandbytes' own, its level put back."""
    logger = logging.getLogger("kernels._internals.hf_hub")
    kept, before = Kept(), logging.getLogger("kernels").level
    logging.getLogger("kernels").addHandler(kept)
    try:
        with kept_as_found():
            quiet_bitsandbytes()
            logger.warning("Skipping publisher trust check")
        logger.warning("after the command")
    finally:
        logging.getLogger("kernels").removeHandler(kept)
    assert kept.messages == ["after the command"]
    assert logging.getLogger("kernels").level == before
