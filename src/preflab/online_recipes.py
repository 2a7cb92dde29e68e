"""The online recipes by name, as the config layer checks them before any model loads: TRAINERS (`trainer:` ->
TrainerSpec: what examples a judged round becomes, which objective, which reference; the recipes and their papers are
listed in preflab.online.trainers, which builds the examples), RENAMED (former recipe names), and the pair builders'
names (BUILDERS, built by preflab.loops.pair_builders) with the import of a user's builder (user_builder).

A module of the config layer (preflab.config and preflab.online_options read it; preflab.online and preflab.loops take
it from here): plain data and checks, no torch, nothing of a run."""
from __future__ import annotations

from dataclasses import dataclass, field

from preflab.errors import ConfigError

BUILDERS = ("best_vs_worst", "all_pairs", "rso")  # pair_builder: a built-in builder of preflab.loops.pair_builders


def user_builder(spec: str):
    """The function `pair_builder: module:function` (or path/to/file.py:function) names; ConfigError if not callable."""
    from preflab.plugins import import_object

    fn = import_object(spec, "pair_builder")
    if not callable(fn):
        raise ConfigError(f"pair_builder: {spec!r} is a {type(fn).__name__}, not a function f(scores, generator) -> "
                          "[(prompt, chosen, rejected), ...].")
    import inspect

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C callable without a signature: its first call says
        return fn
    try:
        signature.bind(None, None)
    except TypeError as err:
        raise ConfigError(f"pair_builder: {spec!r} is {getattr(fn, '__name__', 'f')}{signature}, which cannot be "
                          f"called as f(scores, generator) ({err}); the round calls it with the [P, K] scores and its "
                          "seeded torch.Generator: def f(scores, generator) -> [(prompt, chosen, rejected), ...].") \
            from None
    return fn


@dataclass(frozen=True)
class TrainerSpec:
    kind: str                        # pairs | groups | game
    loss_type: str | None = None     # objective (None: the config's loss_type)
    refresh: bool = False            # the reference slots carry pi_t (reference refreshed every round)
    scores: str = "reward"           # reward | win_rate | centred
    builder: str | None = None       # pair builder (None: the config's pair_builder)
    online_kl: bool = False          # hypo: the K fresh samples feed the on-policy KL term
    advantages: str = "group"        # groups: group (GRPO's group normalisation) | leave_one_out (RLOO)
    game: bool = False               # usable with online_task: game
    game_only: bool = False
    params: dict = field(default_factory=dict)

    def objective_params(self, cfg) -> dict:
        params = dict(self.params)
        if self.loss_type == "inpo":
            params.update(tau=cfg.beta, eta=cfg.game_eta / cfg.beta)
        if cfg.trainer == "nash_md":
            params.update(beta=cfg.beta / cfg.game_eta)     # 1 / eta with eta = game_eta / beta
        if self.kind == "groups" and self.loss_type == "grpo":
            params.update(epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, scale_rewards=cfg.scale_rewards,
                          max_completion_length=cfg.max_completion_length)
        if self.kind == "groups" and self.loss_type == "rloo":
            params.update(epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                          normalize_advantages=cfg.normalize_advantages, reward_clip_range=cfg.reward_clip_range)
        return params


# former recipe names kept working: {name: (what it runs now, the note a run under it prints)}
RENAMED = {"hypo": ("hypo_online_pairs",
                    "trainer: hypo is online DPO on judged samples + HyPO's KL term (now named hypo_online_pairs); "
                    "HyPO as the paper defines it (DPO on offline pairs, KL on fresh samples) is task: dpo, "
                    "loss_type: hypo, hypo_online_samples: k (examples/hypo_offline.yaml).")}

TRAINERS: dict[str, TrainerSpec] = {
    "online_dpo": TrainerSpec("pairs"),
    "iterative_dpo": TrainerSpec("pairs", refresh=True),
    "rso": TrainerSpec("pairs", loss_type="hinge_norm", builder="rso"),
    "sppo": TrainerSpec("pairs", loss_type="sppo", refresh=True, scores="win_rate", game=True),
    "gpo": TrainerSpec("pairs", loss_type="gpo", refresh=True, scores="centred"),
    "hypo_online_pairs": TrainerSpec("pairs", loss_type="hypo", online_kl=True),
    "hypo": TrainerSpec("pairs", loss_type="hypo", online_kl=True),   # former name of hypo_online_pairs
    "dpa_rsf": TrainerSpec("pairs", loss_type="sft", builder="best_vs_worst"),
    **{name: TrainerSpec("groups", loss_type="grpo", params={"loss_type": name})
       for name in ("grpo", "bnpo", "dapo", "dr_grpo", "cispo", "sapo", "vespo")},
    # LUSPO is GSPO's sequence-level loss scaled by length: it needs sequence ratios (objectives.grpo refuses token)
    "luspo": TrainerSpec("groups", loss_type="grpo", params={"loss_type": "luspo",
                                                             "importance_sampling_level": "sequence"}),
    # the preference game only (preflab.online.game)
    "online_ipo": TrainerSpec("pairs", loss_type="online_ipo", game=True, game_only=True),
    "egpo": TrainerSpec("pairs", loss_type="online_ipo", game=True, game_only=True),
    "nash_md": TrainerSpec("pairs", loss_type="online_ipo", game=True, game_only=True),
    "inpo": TrainerSpec("pairs", loss_type="inpo", game=True, game_only=True),
    "apo": TrainerSpec("pairs", loss_type="inpo", game=True, game_only=True),
    "spo": TrainerSpec("groups", loss_type="grpo", game=True, game_only=True, params={"loss_type": "grpo"}),
    "tpo": TrainerSpec("groups", loss_type="tpo_tree"),
    "upo": TrainerSpec("pairs", loss_type="upo", refresh=True, scores="upo", builder="all_pairs"),
    "mcts_dpo": TrainerSpec("pairs", loss_type="mcts_step_dpo", scores="mcts"),
    "gspo": TrainerSpec("groups", loss_type="grpo", params={"loss_type": "grpo",
                                                            "importance_sampling_level": "sequence"}),
    # TRL's RLOOTrainer: leave-one-out advantages of the KL-penalised rewards, a sequence-level clipped loss
    "rloo": TrainerSpec("groups", loss_type="rloo", advantages="leave_one_out"),
}


def recipe_loss_type(trainer, loss_type):
    """The objective a task: online run of recipe `trainer` trains: the recipe's own (TrainerSpec.loss_type: sppo,
    gpo, tpo_tree, ...) where loss_type is left at TrainConfig's default sigmoid, else loss_type. The one copy of
    that rule: preflab.online_options.check_online sets cfg.loss_type to it, and TrainConfig reads an unset beta's own
    default from it before that check runs (preflab.objectives._own_beta)."""
    spec = TRAINERS.get(trainer) if isinstance(trainer, str) else None
    return spec.loss_type if spec is not None and spec.loss_type and loss_type == "sigmoid" else loss_type


# the recipes whose log-probs and entropies are of the tempered distribution softmax(z / temperature): the trainers of
# TRL 1.16's GRPOTrainer (GRPOConfig's loss types) and RLOOTrainer, which score policy, old policy and reference
# through a fused LM head built with the sampling temperature (preflab.online.run.scoring_temperature). spo and tpo
# (preflab's own group recipes) and the pair recipes (TRL's OnlineDPOTrainer: untempered) score at temperature 1.
# the trainers a TRL GRPOConfig names (its loss types) and, with RLOOConfig's, those a saved TRL config may name; the
# one list preflab.config_trl, config_trl_methods and online_options read
TRL_GRPO_TRAINERS = ("grpo", "dapo", "dr_grpo", "bnpo", "gspo", "cispo", "sapo", "luspo", "vespo")
TRL_CONFIG_TRAINERS = (*TRL_GRPO_TRAINERS, "rloo")
TEMPERATURE_SCORED = TRL_CONFIG_TRAINERS
