"""Test data files: write_jsonl(path, rows) writes one JSON object per line (UTF-8) and returns the path as text,
ready for a config's dataset_name."""
import json
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)
