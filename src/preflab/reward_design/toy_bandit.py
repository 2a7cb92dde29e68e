"""The ICPL toy task (models-and-loops.md #47, exact checks): a K-armed bandit whose arms carry feature vectors.

A reward program is Python source defining `reward(features) -> float`. "Training a policy" under it = running the
program in the sandbox on every arm's features and taking the argmax arm (the exact optimum of a bandit policy
under that reward); the hidden task metric is the TRUE reward of that arm, `true_weights . features`. A program
that fails (exception, timeout, non-numeric output, or a call that starts a process — refused by the sandbox even
when the program catches the error and returns a number) gets status "failed" and no metric.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

_HARNESS = """
import json, math
ARMS = json.loads({arms!r})
{code}
values = [float(reward(list(f))) for f in ARMS]
print(json.dumps(values))
"""


@dataclass
class BanditTask:
    features: list[list[float]]        # [K arms][D features]
    true_weights: list[float]          # [D]; the task metric of arm a is true_weights . features[a]
    timeout_s: float = 5.0

    @classmethod
    def default(cls, arms: int = 5, dims: int = 3, seed: int = 0) -> "BanditTask":
        rng = np.random.default_rng(seed)
        return cls(rng.normal(size=(arms, dims)).round(3).tolist(), rng.normal(size=dims).round(3).tolist())

    @property
    def true_rewards(self) -> list[float]:
        return [float(np.dot(self.true_weights, f)) for f in self.features]

    @property
    def optimum(self) -> float:
        return max(self.true_rewards)

    def describe(self) -> str:
        return (f"A bandit with {len(self.features)} arms; each arm has a feature vector of length "
                f"{len(self.true_weights)}. Write `def reward(features): ...` returning a float; the policy plays "
                "the arm with the highest reward.")

    def train(self, code: str) -> dict:
        """Run the reward program in the sandbox -> {status, arm, metric, rewards} (status "ok" or "failed")."""
        from preflab.sandbox import run_python

        result = run_python(_HARNESS.format(arms=json.dumps(self.features), code=code), timeout_s=self.timeout_s,
                            memory_mb=256)
        try:
            values = json.loads(result.stdout.strip().splitlines()[-1]) if result.status == "ok" else None
        except (ValueError, IndexError):
            values = None
        if not values or len(values) != len(self.features) or not all(map(math.isfinite, values)):
            error = ("refused: " + ", ".join(result.refused) if result.refused  # even if the program went on
                     else _last_line(result.stderr) or result.status)
            return {"status": "failed", "arm": None, "metric": None, "rewards": None, "error": error}
        arm = int(np.argmax(values))
        return {"status": "ok", "arm": arm, "metric": self.true_rewards[arm], "rewards": values}


def _last_line(text: str) -> str:
    """The exception line of a traceback (the part that does not name the run's temporary folder)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
