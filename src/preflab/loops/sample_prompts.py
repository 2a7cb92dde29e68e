"""The prompts `preflab sample` draws: each `--prompt TEXT` in order, then the rows of `--prompts FILE`.

FILE is `.jsonl` (one JSON object per line with a string `prompt`; other keys are ignored) or `.txt` (one prompt per
line, taken as written). A line that is empty, not JSON, not an object, or whose `prompt` is missing or not a string
is refused, naming the file, the line and what is wrong; nothing is skipped, so every line of the file is a sample.
"""
from __future__ import annotations

import json
from pathlib import Path

from preflab.errors import ConfigError

PROMPT_FILE_SUFFIXES = (".jsonl", ".txt")


def read_prompt_file(path: str) -> list[str]:
    """The prompts of a .jsonl / .txt file, one per line (module docstring); any bad line is refused by number."""
    file = Path(path)
    if file.suffix not in PROMPT_FILE_SUFFIXES:
        raise ConfigError(f"--prompts {path}: prompts are read from a .jsonl file (one {{\"prompt\": TEXT}} per line) "
                          "or a .txt file (one prompt per line); rename or convert it.")
    if not file.is_file():
        raise ConfigError(f"--prompts {path} is not a file.")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ConfigError(f"--prompts {path} is not UTF-8 text: {err}") from err
    prompts = []
    for number, line in enumerate(lines, start=1):
        where = f"--prompts {path} line {number}"
        if not line.strip():
            raise ConfigError(f"{where} is empty; remove it (every line is one prompt; an empty prompt is "
                              "{\"prompt\": \"\"} in a .jsonl file).")
        prompts.append(line if file.suffix == ".txt" else _jsonl_prompt(line, where))
    if not prompts:
        raise ConfigError(f"--prompts {path} holds no prompt; write one per line.")
    return prompts


def _jsonl_prompt(line: str, where: str) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where} is not JSON ({err.msg}); each line is one object {{\"prompt\": TEXT}}.") from err
    if not isinstance(row, dict):
        raise ConfigError(f"{where} is a JSON {type(row).__name__}, not an object {{\"prompt\": TEXT}}.")
    if "prompt" not in row:
        raise ConfigError(f"{where} has no field 'prompt' (its keys: {sorted(row)[:5]}); give {{\"prompt\": TEXT}}.")
    if not isinstance(row["prompt"], str):
        raise ConfigError(f"{where}: field 'prompt' is a {type(row['prompt']).__name__}, not a string.")
    return row["prompt"]


def sampled_prompts(given: list[str] | None, path: str | None) -> list[str]:
    """--prompt values in order, then --prompts FILE's rows; neither is refused (no default prompts)."""
    prompts = list(given or []) + (read_prompt_file(path) if path else [])
    if not prompts:
        raise ConfigError("preflab sample needs prompts: give --prompt TEXT (repeatable) and/or --prompts FILE "
                          "(.jsonl with a 'prompt' field per line, or .txt with one prompt per line).")
    return prompts
