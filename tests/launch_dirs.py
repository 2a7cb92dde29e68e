"""The two directories of the launch-path tests (tests/test_launch_paths.py, tests/test_launch_nested_paths.py): a
run trained with relative paths from directory A, read back and resumed from directory B beside it."""
import os
from pathlib import Path

from safetensors.torch import load_file

from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer


def trained_in_a(root: Path, write_files, train) -> tuple[Path, Path]:
    """(A, B) under ROOT: A holds models/base (the tiny byte-level model, seed 0, and its tokenizer) and an empty
    data/; `write_files(A, tokenizer)` adds the test's own files; then `train()` runs with A as the working directory
    (the previous one restored after). B is an empty directory beside A."""
    a, b = root / "A", root / "B"
    (a / "data").mkdir(parents=True)
    b.mkdir()
    tok = tiny_tokenizer("bytelevel")
    tiny_causal_lm(tok, seed=0).save_pretrained(a / "models" / "base", safe_serialization=True)
    tok.save_pretrained(a / "models" / "base")
    write_files(a, tok)
    here = os.getcwd()
    os.chdir(a)
    try:
        train()
    finally:
        os.chdir(here)
    return a, b


def assert_resumed_equals_the_run(a: Path, resumed: Path) -> dict:
    """The final weights of RESUMED (a run resumed from A/outputs/run/checkpoint-1) equal those of the uninterrupted
    run A/outputs/run to 1e-6 (max |difference| over every tensor); returns the uninterrupted run's weights."""
    full = load_file(str(a / "outputs/run/model.safetensors"))
    again = load_file(str(resumed / "model.safetensors"))
    assert max((full[k] - again[k]).abs().max().item() for k in full) < 1e-6
    return full
