"""Deprecated: renamed `preflab.reward_models` (one place for reward and preference models) in 0.2."""
from preflab._renamed import alias_package

alias_package(__name__, "preflab.reward_models",
              {m: m for m in ("bt", "cli", "context", "data", "eval", "gpm", "heads", "interface",
                              "multi_objective", "train")})
