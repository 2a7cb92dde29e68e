"""What a run directory says about itself: the training config saved with it (run_config) and the tokenizer saved
beside its weights (tokenizer_near). Read by preflab eval (preflab.eval.loading), the reward model loaders
(preflab.reward_models.heads) and the VLM / diffusion evaluators; it imports no trainer, so each of them can.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from preflab.errors import PreflabError
from preflab.models.load import load_tokenizer


def run_config(path: str | Path) -> dict:
    """The training config saved with a run (config.yaml, or trainer_state.json's "config"), or {}."""
    path = Path(path)
    for candidate in (path / "config.yaml", path.parent / "config.yaml"):
        if candidate.is_file():
            data = yaml.safe_load(candidate.read_text()) or {}
            if isinstance(data, dict) and "model_name_or_path" in data:
                return data
    state = path / "trainer_state.json"
    if state.is_file():
        return dict(json.loads(state.read_text()).get("config") or {})
    return {}


def tokenizer_near(path: Path, fallback_name: str | None, trust_remote_code: bool):
    """The tokenizer saved in `path` or one folder up (a checkpoint's run directory), else `fallback_name`'s."""
    for candidate in (path, path.parent):
        if (candidate / "tokenizer_config.json").is_file():
            return load_tokenizer(str(candidate), trust_remote_code)
    if fallback_name:
        return load_tokenizer(fallback_name, trust_remote_code)
    raise PreflabError(f"no tokenizer found in {path} or {path.parent}; save the tokenizer beside the weights.")
