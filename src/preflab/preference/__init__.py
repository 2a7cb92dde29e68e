"""Deprecated: merged into `preflab.reward_models` in 0.2 (`common` is now `reward_models.protocols`)."""
from preflab._renamed import alias_package

alias_package(__name__, "preflab.reward_models",
              {"common": "protocols", **{m: m for m in ("backbone_head", "directional", "estimator",
                                                        "fewshot_episodes", "fewshot_scorer", "maxmin",
                                                        "maxmin_aggregate", "orchestrator", "uncertainty")}})
from preflab.reward_models.protocols import PreferenceModel, RewardModel  # noqa: E402,F401  (the protocols, as before)
