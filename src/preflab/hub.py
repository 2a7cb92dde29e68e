"""What the hub lookups of model and dataset names share: whether the user has switched the hub off, and the one-line
reason a failed lookup gives (preflab.models.load.check_model_name, preflab.data.sources)."""
from __future__ import annotations

import os

TRUE_VALUES = ("1", "true", "yes", "on")


def offline(*variables: str) -> bool:
    """True when HF_HUB_OFFLINE or one of `variables` (e.g. TRANSFORMERS_OFFLINE, HF_DATASETS_OFFLINE) is set."""
    return any(os.environ.get(k, "").lower() in TRUE_VALUES for k in ("HF_HUB_OFFLINE", *variables))


def failure_reason(err: BaseException) -> str:
    """The first line of a failed lookup's message (at most 200 characters), or its type when it has none."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
