"""An environment for examples/online/grpo_environment.yaml (TRL GRPOTrainer's environment_factory contract,
docs/online.md "Environments inside GRPO"): reach the row's `target` with step(n); the reward is whether the total
is the target."""


class Counter:
    """A running total the model moves with step(n)."""

    def __init__(self):
        self.total, self.target, self.steps = 0, 0, 0

    def reset(self, target=0, **row):
        """Called before each rollout with the prompt row's fields; the returned text is appended to the prompt."""
        self.total, self.target, self.steps = 0, int(target), 0
        return f" Reach exactly {self.target}, starting from 0."

    def step(self, n: int) -> str:
        """Adds n to the running total and says the new total.

        Args:
            n: The number to add (may be negative).
        """
        self.total += n
        self.steps += 1
        return f"total {self.total}"

    def get_reward(self) -> float:
        """1 when the total is the target, less 0.05 per step taken."""
        return float(self.total == self.target) - 0.05 * self.steps
