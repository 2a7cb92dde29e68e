"""The state file of a multi-stage recipe (RecipeStateFile: every recipe of preflab.recipes) and the
stage runner of `task: raft_ladder` / `task: themis` (RecipeState): resume an interrupted recipe.

Each stage is an ordinary preflab run in `output_dir/<stage>/` that ends with its weights as safetensors. After a
stage finishes, its record (the numbers the summary needs) is saved to the state file. On
`resume_from_checkpoint: true` a finished stage is skipped and its saved weights are loaded; an interrupted stage
(its folder exists, it is not in the state) is removed and run again from its start, so the result equals an
uninterrupted run. An existing state without resume is refused (never overwritten), and so is a resume with other
recipe_params than the run that wrote the state.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from preflab.errors import ConfigError


class RecipeStateFile:
    """A recipe's state file (`<recipe>_state.json`): {"params": the recipe_params, ...the recipe's own records}.

    Opening refuses an existing file without resume (never overwritten) and a resume whose params differ from the
    saved ones in any key but `may_change` (those take the new values); `save()` writes it atomically."""

    def __init__(self, path: str | Path, params: dict, resume: bool, initial: dict | None = None,
                 may_change: tuple = ()):
        self.path = Path(path)
        params = json.loads(json.dumps(params))  # tuples become lists, as they come back from the file
        if self.path.exists() and not resume:
            raise ConfigError(f"{self.path} exists: set resume_from_checkpoint=true to continue that run, or use a "
                              "new output_dir.")
        if not self.path.exists():
            self.data = {"params": params, **(initial if initial is not None else {"stages": {}})}
            return
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"resume: {self.path} cannot be read ({e}); use a new output_dir.") from e
        saved = self.data.get("params") if isinstance(self.data, dict) else None
        if not isinstance(saved, dict):
            raise ConfigError(f"resume: {self.path} holds no recipe_params (not written by this version of "
                              "preflab); use a new output_dir.")
        changed = sorted(k for k in set(params) | set(saved) if k not in may_change and saved.get(k) != params.get(k))
        if changed:
            allowed = f" (only {list(may_change)} may change)" if may_change else ""
            raise ConfigError(f"resume: recipe_params {changed} differ from the interrupted run's ({self.path}); "
                              f"resume with the same recipe_params{allowed} or use a new output_dir.")
        self.data["params"] = params

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


class RecipeState:
    def __init__(self, output_dir: str | Path, file_name: str, params: dict, resume: bool):
        self.out = Path(output_dir)
        self.file = RecipeStateFile(self.out / file_name, params, resume)
        self.state = self.file.data

    def stage(self, name: str, run: Callable[[Path], dict], load: Callable[[Path], None]) -> dict:
        """Run stage `name` (`run(folder) -> record`) and save the state, or, when it finished earlier,
        `load(folder)` its weights and return its saved record."""
        folder = self.out / name
        if name in self.state["stages"]:
            load(folder)
            return self.state["stages"][name]
        if folder.exists():  # interrupted: run the stage again from its start
            shutil.rmtree(folder)
        record = json.loads(json.dumps(run(folder)))  # the same record whether run now or loaded on resume
        self.state["stages"][name] = record
        self.file.save()
        return record


def load_safetensors_into(model, path: str | Path) -> None:
    """Load saved weights into `model`, strictly: the file holds exactly the model's state_dict keys (persistent
    buffers included; non-persistent ones such as rotary inv_freq are in neither) with the same shapes. A file that
    does not fit (a stage saved by a run with other recipe_params) raises ConfigError naming it."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        raise ConfigError(f"{path} does not fit the recipe's model (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}, other shapes {shapes[:3]}); use a new output_dir.")
    model.load_state_dict(state)
