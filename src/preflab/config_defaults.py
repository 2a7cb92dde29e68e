"""Which options a config sets away from their TrainConfig default (changed_options), the question every
refusal of an unread option asks. It imports nothing of preflab, so the config layer (preflab.config_owners,
preflab.recipe_stages, preflab.online.options) and the runs (preflab.models.given) all ask it from below."""
from __future__ import annotations

import dataclasses


def changed_options(cfg, names) -> list[str]:
    """The options among `names` that the config sets away from their TrainConfig default."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}

    def default(name):
        f = fields[name]
        return f.default_factory() if f.default is dataclasses.MISSING else f.default

    return [n for n in names if getattr(cfg, n) != default(n)]
