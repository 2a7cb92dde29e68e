"""Which options a config sets: away from their TrainConfig default (changed_options), or written by the user at any
value (set_options, the question every refusal or note of an unread option asks: `apo_alpha: 0.3`, its default,
written for trainer inpo does nothing, and the user who wrote it believes it does). It imports nothing of preflab,
so the config layer (preflab.config_owners, preflab.recipe_stages, preflab.online_options) and the runs
(preflab.models.given) all ask it from below.

The written options are TrainConfig.written_options, recorded once when the config is built: the keys of the YAML
file and of the key=value overrides (preflab.config.load_config), of the mapping given to config_from_dict, or the
keyword arguments of TrainConfig(...). A saved config that holds every option (a run's config.yaml, TRL's
args.to_dict()) records none of its own keys (preflab.config.is_saved_config): there only a value away from its
default counts, as before. A config made from another with dataclasses.replace keeps the other's written options
(a recipe stage's or an evaluation's own settings are not the user's)."""
from __future__ import annotations

import dataclasses

# TrainConfig's default `seed` (preflab.config's field), here below the config layer so that a reader of a saved run
# config without a seed (preflab.models.run_config.run_seed) takes the same number without importing TrainConfig
DEFAULT_SEED = 42

# How TRL's `DPOConfig(eval_strategy=..., do_eval=True)` beside `DPOTrainer(eval_dataset=...)` is written from Python:
# the config cannot see Trainer's eval_data, so a name for those rows is the eval set it sees (user trial 27; said by
# the eval_strategy and do_eval refusals without an eval set, preflab.config and preflab.config_trl)
PYTHON_EVAL_ROUTE = ("From Python (TRL's eval_dataset=): add eval_dataset_name: NAME (any name: beside "
                     "Trainer(cfg, eval_data=rows) it only names those rows, as dataset_name names train_data) and "
                     "keep eval_strategy / do_eval; or write eval_steps: N without eval_strategy.")


def changed_options(cfg, names) -> list[str]:
    """The options among `names` that the config sets away from their TrainConfig default."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}

    def default(name):
        f = fields[name]
        return f.default_factory() if f.default is dataclasses.MISSING else f.default

    return [n for n in names if getattr(cfg, n) != default(n)]


def set_options(cfg, names) -> list[str]:
    """The options among `names` that the user wrote (cfg.written_options, at any value) or that the config sets away
    from their TrainConfig default."""
    written = getattr(cfg, "written_options", frozenset())
    changed = set(changed_options(cfg, names))
    return [n for n in names if n in written or n in changed]


def drop_hint(names) -> str:
    """What a refusal of written options says to remove them from the command line: the `~key` overrides
    (preflab.config.drop_override) that drop them from the config file, e.g. " (on the command line: '~loss_type'
    '~beta')"; a YAML key cannot be dropped by `key=null` (most options take no null), and before this hint a user
    switching a DPO config to task: reward had to edit the file."""
    return " (on the command line: " + " ".join(f"'~{n}'" for n in names) + ")"
