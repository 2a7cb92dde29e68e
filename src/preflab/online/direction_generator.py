"""RPS's generator from a run directory: a direction-conditioned policy, sampled with the system prompt it trained on.

    python -m preflab.online.rps --generator RUN_DIR --target-deg 45 --output-dir D

DPA (Wang et al. 2024, arXiv:2402.18571) conditions the policy on a direction v = (cos t, sin t) by a system
message that shows the integer weights (round(100 cos t), round(100 sin t))
(preflab.reward_models.multi_objective.direction_system_prompt / condition_prompt). RPS (Mao et al. 2025) then asks
that policy for one response per neighbouring direction, so generate(prompt, angle) here samples the run's model on
condition_prompt(prompt, direction_system_prompt(angle, names)), names being the ones the run trained with.

Which runs are accepted: a run whose training rows are direction-conditioned, i.e. rows written by
preflab.reward_models.directional_best_of_n (each prompt starts with the DPA system message, each row has `angle`)
and trained on with SFT (dataset_name in the run's config.yaml pointing at that .json / .jsonl file). The names and
the trained angle range are read from those rows. Refused, with the reason: a directory without config.yaml, a run
of the online `dpa_rsf` recipe (preflab's dpa_rsf does not write the direction into the prompt, see
preflab.online.trainers: the policy is trained under one fixed direction, reward_weights, and never sees an angle,
so RPS would equal best-of-k), and any run whose training rows are not direction-conditioned.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from preflab.data.sources import read_file_rows
from preflab.errors import ConfigError
from preflab.reward_models.multi_objective import (
    DPA_SYSTEM,
    condition_prompt,
    direction_system_prompt,
)

DPA_PREFIX = DPA_SYSTEM.split("{terms}")[0]
_TERM = re.compile(r"([A-Za-z_][\w ]*?)\*(-?\d+)")
NEEDS = ("RPS needs a direction-conditioned policy: a run trained (SFT) on rows whose prompts carry the DPA system "
         "message with the direction's weights, e.g. the rows of preflab.reward_models.directional_best_of_n "
         "(dataset_name: a .json/.jsonl file of them in the run's config.yaml).")


@dataclass(frozen=True)
class Conditioning:
    """How a run's policy was conditioned: the attribute names in its system prompt and the angles it trained on."""

    names: tuple[str, str]
    angles: tuple[float, ...]

    @property
    def angle_range(self) -> tuple[float, float]:
        return min(self.angles), max(self.angles)


def parse_direction_prompt(text: str, where: str) -> tuple[tuple[str, str], float]:
    """(names, angle in degrees) from a conditioned prompt condition_prompt(x, direction_system_prompt(t, names))."""
    if not text.startswith(DPA_PREFIX):
        raise ConfigError(f"{where}: the prompt does not start with the DPA system message "
                          f"({DPA_PREFIX[:40]!r}...), so the policy was not direction-conditioned. {NEEDS}")
    terms = text[len(DPA_PREFIX):].split("\n", 1)[0]
    found = _TERM.findall(terms)
    if len(found) != 2:
        raise ConfigError(f"{where}: the DPA system message has {len(found)} weighted terms ({terms!r}); RPS's "
                          "directions are 2-D (two attributes).")
    (n0, w0), (n1, w1) = found
    return (n0.strip(), n1.strip()), math.degrees(math.atan2(int(w1), int(w0)))


def _prompt_text(prompt, where: str) -> str:
    if isinstance(prompt, list):  # chat: the system message is the first turn
        if not prompt or not isinstance(prompt[0], dict) or prompt[0].get("role") != "system":
            raise ConfigError(f"{where}: the chat prompt has no system turn, so it is not direction-conditioned. "
                              f"{NEEDS}")
        return str(prompt[0].get("content", "")) + "\n"
    if not isinstance(prompt, str):
        raise ConfigError(f"{where}: 'prompt' is {type(prompt).__name__}, not text or chat turns.")
    return prompt


def run_conditioning(run_dir: str | Path) -> Conditioning:
    """The Conditioning of the run in run_dir, or a ConfigError saying why it is not direction-conditioned."""
    from preflab.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--generator {run_dir}: not a preflab run directory (no config.yaml; the generator is "
                          f"toy, builtin:demo-sft, or a run directory). {NEEDS}")
    cfg = load_config(run_dir / "config.yaml")
    if getattr(cfg, "trainer", None) == "dpa_rsf":
        raise ConfigError(f"--generator {run_dir}: a dpa_rsf run is not direction-conditioned here: preflab's "
                          "dpa_rsf keeps the best of K under one fixed direction (reward_weights="
                          f"{cfg.reward_weights}) and does not write the direction into the prompt "
                          "(preflab.online.trainers), so its policy ignores the angle and RPS would equal best-of-k. "
                          + NEEDS)
    data = getattr(cfg, "dataset_name", None)
    from preflab.launch_paths import read_launch_record, resolve_saved_paths

    # a relative dataset_name is the run's, where it was started (its launch.json), read from any directory
    data = resolve_saved_paths({"dataset_name": data}, read_launch_record(run_dir),
                               str(run_dir / "config.yaml"))["dataset_name"]
    path = Path(data) if data else None
    if path is None or not path.is_file() or path.suffix not in (".json", ".jsonl"):
        raise ConfigError(f"--generator {run_dir}: its training rows (dataset_name={data!r}) are not a local "
                          f".json/.jsonl file, so the direction conditioning cannot be read from them. {NEEDS}")
    rows = read_file_rows(path, lambda raw: raw.data, option=f"--generator {run_dir}: dataset_name",
                          form="{prompt, ...}")
    if not rows:
        raise ConfigError(f"--generator {run_dir}: {path} holds no rows. {NEEDS}")
    names, angles = None, []
    for i, row in enumerate(rows):
        where = f"{path} row {i} field 'prompt'"
        if not isinstance(row, dict) or "prompt" not in row:
            raise ConfigError(f"{where}: missing. {NEEDS}")
        row_names, angle = parse_direction_prompt(_prompt_text(row["prompt"], where), where)
        if names is not None and row_names != names:
            raise ConfigError(f"{where}: attribute names {row_names} differ from row 0's {names}; one run conditions "
                              "on one pair of attributes.")
        names = row_names
        angles.append(round(float(row.get("angle", angle)), 6))
    return Conditioning(names, tuple(sorted(set(angles))))


def conditioned_generator(sample: Callable[[str], str], names: tuple[str, str]) -> Callable[[str, float], str]:
    """generate(prompt, angle) = sample(condition_prompt(prompt, direction_system_prompt(angle, names)))."""

    def generate(prompt: str, angle_deg: float) -> str:
        return sample(condition_prompt(prompt, direction_system_prompt(angle_deg, names)))

    return generate
