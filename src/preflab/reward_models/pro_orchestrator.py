"""PRO's orchestrator as a saved reward aggregator: prompt features, the fitted adapter, save / load.

"Preference Orchestrator: Prompt-Aware Multi-Objective Alignment for Large Language Models" (arXiv:2511.10656); spec
methods/models-and-loops.md #12. The adapter and its loss are `preflab.reward_models.orchestrator` (default loss
"kl": w*(x) = softmax(z / T), z_k = (r_k(x, y_w) - mu_k) / s_k, L = KL(w* || g(x))); used online, the judge's score is

    R(x, y) = sum_k g(phi(x))_k r_k(x, y)      (instead of TRL's fixed sum_k w_k r_k with reward_weights)

    weights = fit_orchestrator(read_adapter_rows("rows.jsonl", 2), ["helpful", "concise"])   # rows {prompt,
    save_orchestrator("adapter", weights, hidden=0)                                          #  chosen_rewards}
    load_orchestrator("adapter")(prompts)          # [N, K] on the simplex: a `Judge` / online `reward_aggregator`

phi: bag-of-words counts over the training prompts' words (`PromptFeatures`, saved with the adapter in
orchestrator.json; a word never seen in training has no effect). The recipe (`task: pro_orchestrator`) is
preflab.online.pro_recipe.
"""
from __future__ import annotations

import math

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from preflab.data.report import RowProblem
from preflab.data.sources import read_file_rows
from preflab.errors import ConfigError, DataError
from preflab.option_types import is_number
from preflab.reward_models.orchestrator import PreferenceWeightAdapter, fit_adapter

ADAPTER_FILE, META_FILE = "adapter.safetensors", "orchestrator.json"


def prompt_text(prompt) -> str:
    if isinstance(prompt, list):  # chat messages
        return " ".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return str(prompt)


def prompt_words(prompt) -> list[str]:
    return re.findall(r"[a-z0-9]+", prompt_text(prompt).lower())


class PromptFeatures:
    """phi(x): counts of the vocabulary's words in the prompt (lower-cased [a-z0-9]+ words), [N, V] float."""

    def __init__(self, vocabulary: Sequence[str]):
        self.vocabulary = list(vocabulary)
        self.index = {w: i for i, w in enumerate(self.vocabulary)}

    @classmethod
    def from_prompts(cls, prompts) -> PromptFeatures:
        return cls(sorted({w for p in prompts for w in prompt_words(p)}))

    def __call__(self, prompts) -> torch.Tensor:
        x = torch.zeros(len(prompts), len(self.vocabulary))
        for i, p in enumerate(prompts):
            for w in prompt_words(p):
                if w in self.index:
                    x[i, self.index[w]] += 1
        return x


class PromptWeights:
    """The saved orchestrator as a reward aggregator: prompts -> [N, K] weights on the simplex (Judge's `weights`)."""

    def __init__(self, adapter: PreferenceWeightAdapter, features: PromptFeatures, reward_names: Sequence[str]):
        self.adapter, self.features, self.reward_names = adapter, features, list(reward_names)

    def __call__(self, prompts) -> torch.Tensor:
        with torch.no_grad():
            return self.adapter(self.features(prompts))


def read_adapter_rows(path: str | Path, num_rewards: int | None = None) -> list[dict]:
    """Rows {prompt, chosen_rewards: [r_1..r_K]} of a jsonl file (K: `num_rewards`, else the first row's count); an
    error names the file, row, line and field."""
    expected = [num_rewards]  # K, else the first row's count

    def build(raw) -> dict:
        row = raw.data
        if not isinstance(row.get("prompt"), (str, list)) or not prompt_words(row["prompt"]):
            raise RowProblem("missing_field", "prompt", f"missing or without words (columns present: {sorted(row)})",
                             "Give the prompt as text or chat messages.")
        r = row.get("chosen_rewards")
        # nan: every z-score nan
        if not isinstance(r, list) or not r or not all(is_number(v) and math.isfinite(v) for v in r):
            raise RowProblem("bad_field", "chosen_rewards", f"expected a list of numbers (the reward functions' "
                             f"scores of the preferred response), got {r!r}")
        expected[0] = len(r) if expected[0] is None else expected[0]
        if len(r) != expected[0]:
            raise RowProblem("bad_field", "chosen_rewards", f"{len(r)} values; expected {expected[0]}",
                             "Give one per reward function, in the order of reward_funcs.")
        return {"prompt": row["prompt"], "chosen_rewards": [float(v) for v in r]}

    rows = read_file_rows(path, build, option="recipe_params.adapter_data",
                          form="{prompt, chosen_rewards: [one reward per reward function, of the preferred response]}")
    if len(rows) < 2:
        raise DataError(f"{path}: {len(rows)} rows; the z-scores of the targets need at least 2. Add rows.")
    # the targets are z-scores of each reward function's rewards over the rows (orchestrator.reward_stats): a
    # function whose reward is the same in every row has none. Said here with the file and the field (the fit
    # raised it later naming "reward model(s) [k]" and a Python function to call instead)
    for k in range(len(rows[0]["chosen_rewards"])):
        values = {float(r["chosen_rewards"][k]) for r in rows}
        if len(values) == 1:
            raise DataError(f"{path}: field 'chosen_rewards': value {k} (reward function {k}, in the order of "
                            f"reward_funcs) is {values.pop()!r} in all {len(rows)} rows, so its z-score, the "
                            "adapter's target, is undefined. Give rows on which that reward function's scores "
                            "differ, or leave it out of the rows and of reward_funcs.")
    return rows


def fit_orchestrator(rows: list[dict], reward_names: Sequence[str], *, hidden: int = 0, loss: str = "kl",
                     temperature: float = 1.0, steps: int = 300, lr: float = 0.1, seed: int = 0) -> PromptWeights:
    """The adapter fitted by `fit_adapter` on the rows' prompt features and chosen rewards."""
    features = PromptFeatures.from_prompts([r["prompt"] for r in rows])
    torch.manual_seed(seed)
    adapter = PreferenceWeightAdapter(len(features.vocabulary), len(reward_names), hidden=hidden)
    chosen = torch.tensor([r["chosen_rewards"] for r in rows])
    if chosen.shape[1] != len(reward_names):
        raise ConfigError(f"the adapter data has {chosen.shape[1]} rewards per row for {len(reward_names)} reward "
                          f"functions {list(reward_names)}.")
    fit_adapter(adapter, features([r["prompt"] for r in rows]), chosen_rewards=chosen, loss=loss,
                temperature=temperature, steps=steps, lr=lr)
    return PromptWeights(adapter, features, reward_names)


def save_orchestrator(folder: str | Path, weights: PromptWeights, hidden: int) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in weights.adapter.state_dict().items()},
              str(folder / ADAPTER_FILE))
    (folder / META_FILE).write_text(json.dumps({"method": "pro_orchestrator", "reward_names": weights.reward_names,
                                                "vocabulary": weights.features.vocabulary, "hidden": hidden},
                                               indent=1))


def load_orchestrator(folder: str | Path) -> PromptWeights:
    """The reward aggregator saved by `save_orchestrator` (adapter.safetensors + orchestrator.json)."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file() or not (folder / ADAPTER_FILE).is_file():
        raise ConfigError(f"{folder} holds no PRO orchestrator ({META_FILE} and {ADAPTER_FILE}); fit one with "
                          "`preflab train` task: pro_orchestrator (its adapter/ folder).")
    meta = json.loads((folder / META_FILE).read_text())
    features = PromptFeatures(meta["vocabulary"])
    adapter = PreferenceWeightAdapter(len(features.vocabulary), len(meta["reward_names"]), hidden=meta["hidden"])
    adapter.load_state_dict(load_file(str(folder / ADAPTER_FILE)))
    return PromptWeights(adapter, features, meta["reward_names"])
