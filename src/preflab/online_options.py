"""Checks and per-recipe defaults of the online options of TrainConfig (task: online), run before any model loads.

Part of the config layer (preflab.config, config_owners and config_trl run these checks and read these tables), so it
sits beside them, not in preflab/online: it imports no online run (the game's preference check lives here and
preflab.online.game takes it from here). The recipes' table it checks against is preflab.online_recipes."""
from __future__ import annotations

import math

from preflab.config_defaults import set_options
from preflab.errors import ConfigError, nearest
from preflab.online_recipes import BUILDERS, TRAINERS, TRL_CONFIG_TRAINERS, recipe_loss_type, user_builder
from preflab.option_types import is_number


GRPO_RECIPE_LOSS_TYPES = ("bnpo", "dapo", "dr_grpo", "cispo", "sapo", "luspo", "vespo")  # TRL GRPOConfig loss types
# that are preflab group recipes


def grpo_loss_type_error(loss: str, trainer: str, task: str = "") -> str:
    """The refusal of a TRL GRPOConfig loss_type that preflab runs as the group recipe `trainer: <loss>` (task: the
    words that set task: online too, when the config is not online yet)."""
    return (f"loss_type={loss!r} is a TRL GRPOConfig loss_type; in preflab it is the group recipe `trainer: {loss}` "
            f"(got trainer {trainer!r}). Set {task}trainer: {loss} (loss_type: {loss} may stay, or leave it out).")


# `trainer:` names of TRL online trainers preflab does not have -> their key in preflab._TRL_ABSENT (what the
# `from preflab import PPOTrainer` message says); the nearest-name hint would offer another method
TRL_ABSENT_TRAINERS = {"ppo": "PPO", "xpo": "XPO"}


def check_online(cfg) -> None:
    """Validate the online block; give the recipe's objective (loss_type) when the config leaves the default."""

    if cfg.trainer not in TRAINERS:
        absent = TRL_ABSENT_TRAINERS.get(str(cfg.trainer).lower())
        if absent:   # a TRL trainer preflab does not have: said so ("did you mean 'rso'?" for rloo misled)
            from preflab import _TRL_ABSENT

            raise ConfigError(f"trainer: {cfg.trainer}: {_TRL_ABSENT[absent]}")
        raise ConfigError(f"trainer must be one of {sorted(TRAINERS)}, got {cfg.trainer!r}."
                          f"{nearest(cfg.trainer, list(TRAINERS))}")
    spec = TRAINERS[cfg.trainer]
    choices = {"online_task": ("dataset", "vision_dataset", "demo", "game"),
               "generation_backend": ("transformers", "vllm"),
               "pair_builder": BUILDERS, "scale_rewards": ("group", "batch", "none")}
    for name, allowed in choices.items():
        if name == "pair_builder" and ":" in str(cfg.pair_builder):
            user_builder(cfg.pair_builder)  # a user's builder: imported now, so a typo stops the run before it starts
        elif getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name} must be one of {allowed}, got {getattr(cfg, name)!r}.")
    if cfg.max_steps <= 0:
        raise ConfigError("task: online needs max_steps > 0 (optimizer steps in all; a generation round feeds "
                          "steps_per_generation x num_iterations of them).")
    if cfg.max_completion_length is None:
        if "max_completion_length" in getattr(cfg, "written_options", frozenset()) and cfg.online_task != "game":
            # written null ("no limit", its meaning for preference data) ran as 16 new tokens without a word
            raise ConfigError("max_completion_length=null (no limit) cannot bound sampling: an online run generates "
                              "at most max_completion_length new tokens per completion, so it needs a number (left "
                              "out: 16, or TRL's default for the GRPO family (512) and online_dpo (64)).")
        cfg.max_completion_length = 16  # max new tokens per sampled completion (TRL's option; preference runs: None)
    for name in ("num_generations", "prompts_per_generation", "steps_per_generation", "num_iterations",
                 "max_completion_length", "generation_batch_size", "rso_num_samples"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}.")
    if cfg.num_generations < 2 and cfg.online_task != "game":
        raise ConfigError("num_generations must be >= 2: pairs and groups compare completions of one prompt.")
    if cfg.num_generations < 2 and cfg.online_task == "game" and cfg.trainer == "spo":
        # it divided by num_generations - 1 = 0 (ZeroDivisionError in the first round)
        raise ConfigError(f"num_generations must be >= 2 for trainer spo in online_task: game, got "
                          f"{cfg.num_generations}: spo rewards each sampled answer with its win proportion against "
                          "the other num_generations - 1 answers of its group (Swamy et al. 2024).")
    if cfg.refresh_reference_every < 0:
        raise ConfigError(f"refresh_reference_every must be >= 0, got {cfg.refresh_reference_every}.")
    if not 0 <= cfg.max_judge_failure_fraction <= 1:
        raise ConfigError(f"max_judge_failure_fraction must be in [0, 1], got {cfg.max_judge_failure_fraction}.")
    if cfg.preference_temperature < 0:
        raise ConfigError(f"preference_temperature must be >= 0, got {cfg.preference_temperature}.")
    if cfg.online_task == "game":
        check_game_preferences(cfg.game_preferences)
        if not cfg.beta > 0:  # the run's equilibrium pi*_beta, duality gap and eta = game_eta / beta divide by beta
            raise ConfigError(f"online_task: game needs beta > 0 (the KL-regularised game's strength: its "
                              f"equilibrium pi*_beta and duality gap are measured at beta), got beta={cfg.beta}. "
                              "For a nearly unregularised game give a small beta such as 0.01.")
        if not spec.game:
            raise ConfigError(f"trainer {cfg.trainer!r} trains on sampled text; the game task takes one of "
                              f"{sorted(n for n, s in TRAINERS.items() if s.game)}.")
    elif cfg.online_task == "vision_dataset" and (spec.kind != "groups" or cfg.generation_backend != "transformers"):
        raise ConfigError(f"online_task: vision_dataset trains group recipes (the GRPO family, gspo, tpo) "
                          f"with generation_backend: transformers; got trainer {cfg.trainer!r}, "
                          f"generation_backend {cfg.generation_backend!r}.")
    elif spec.game_only:
        raise ConfigError(f"trainer {cfg.trainer!r} is implemented for online_task: game only.")
    if _reads_rso(cfg, spec):
        _check_rso_num_samples(cfg)
    _check_multi_objective_aggregation(cfg)
    if cfg.loss_type in GRPO_RECIPE_LOSS_TYPES:
        raise ConfigError(grpo_loss_type_error(cfg.loss_type, cfg.trainer))
    if spec.advantages == "leave_one_out" and cfg.loss_type not in ("sigmoid", spec.loss_type):
        raise ConfigError(f"trainer {cfg.trainer!r} trains its own objective {spec.loss_type!r} (leave-one-out "
                          f"advantages of the KL-penalised rewards, a sequence-level clipped loss: TRL's RLOOTrainer); "
                          f"loss_type={cfg.loss_type!r} would drop them. Leave loss_type out (GRPO's losses are "
                          "trainer: grpo, dapo, ...).")
    if spec.game_only and cfg.loss_type not in ("sigmoid", spec.loss_type):
        raise ConfigError(f"trainer {cfg.trainer!r} builds the game's examples for its own objective "
                          f"{spec.loss_type!r}; loss_type={cfg.loss_type!r} cannot train them. Leave loss_type out.")
    cfg.loss_type = recipe_loss_type(cfg.trainer, cfg.loss_type)
    _check_objective_fits(cfg, spec)
    for key, value in spec.objective_params(cfg).items():
        cfg.objective_params.setdefault(key, value)
    if spec.refresh and cfg.refresh_reference_every == 0 and cfg.online_task != "game":  # the game reads it not
        if "refresh_reference_every" in getattr(cfg, "written_options", frozenset()):  # was set to 1 without a word
            fixed = (" For DPO against the fixed starting policy use trainer: online_dpo." if cfg.trainer ==
                     "iterative_dpo" else "")
            raise ConfigError(f"refresh_reference_every=0 (a fixed reference pi_0 throughout) does not fit trainer "
                              f"{cfg.trainer!r}, whose reference is refreshed to the policy at least every n rounds "
                              f"(refresh_reference_every=n >= 1; left out: 1, every round).{fixed}")
        cfg.refresh_reference_every = 1


def _check_multi_objective_aggregation(cfg) -> None:
    """multi_objective_aggregation: normalize_then_sum (TRL 1.16) normalises each judge's rewards in its group and
    the weighted sum over the round; it reads neither scale_rewards (TRL ignores it there) nor a penalty on the
    summed score (missing_eos_penalty, which preflab subtracts from the weighted sum): refused when set, not
    dropped."""
    if cfg.multi_objective_aggregation not in ("sum_then_normalize", "normalize_then_sum"):
        raise ConfigError("multi_objective_aggregation must be 'sum_then_normalize' or 'normalize_then_sum', got "
                          f"{cfg.multi_objective_aggregation!r}.")
    if cfg.multi_objective_aggregation != "normalize_then_sum":
        return
    if cfg.scale_rewards != "group":
        raise ConfigError(f"scale_rewards={cfg.scale_rewards!r} is not read with multi_objective_aggregation: "
                          "normalize_then_sum, which divides each judge's rewards by their group std and the "
                          "weighted sum by its std over the round (TRL 1.16 ignores scale_rewards there); remove "
                          "scale_rewards or use sum_then_normalize.")
    if cfg.missing_eos_penalty is not None:
        raise ConfigError("missing_eos_penalty is subtracted from the weighted sum of the judges' rewards, which "
                          "multi_objective_aggregation: normalize_then_sum does not use (each judge's rewards are "
                          "normalised first); remove missing_eos_penalty, or score the missing EOS in a reward "
                          "function of its own (one more judge in reward_funcs).")


def _reads_rso(cfg, spec) -> bool:
    """The run builds RSO pairs (trainer rso, or pair_builder: rso under online_dpo / iterative_dpo / hypo)."""
    return (spec.kind == "pairs" and spec.scores == "reward" and (spec.builder or cfg.pair_builder) == "rso"
            and cfg.online_task != "game")


def _check_rso_num_samples(cfg) -> None:
    """RSO (Liu et al. 2023, Algorithm 1) accepts m = rso_num_samples of a prompt's K = num_generations completions
    and pairs the accepted ones: m = 1 can make no pair (every round trained nothing, and the note blamed the judge),
    and m > K cannot be drawn (the sampler stopped at K, so the run silently used m = K); the default m (4) is
    lowered to K where K is smaller. m = K accepts every completion: no rejection takes place, the pairs are a random
    matching of the whole group; a note says so."""
    m, K = cfg.rso_num_samples, cfg.num_generations
    if m > K and "rso_num_samples" not in getattr(cfg, "written_options", frozenset()):
        m = cfg.rso_num_samples = K  # the default 4 where K is smaller (online_dpo's TRL default K = 2): all K
    if m < 2:
        raise ConfigError(f"rso_num_samples={m}: RSO pairs the completions it accepts, and {m} accepted completion "
                          f"per prompt makes no pair, so every round would train nothing. Set rso_num_samples to "
                          f"between 2 and num_generations={K} (an even number uses every accepted completion).")
    if m > K:
        raise ConfigError(f"rso_num_samples={m} exceeds num_generations={K}: RSO accepts rso_num_samples of the "
                          f"{K} completions sampled per prompt, so at most {K} can be accepted. Lower rso_num_samples "
                          f"to at most {K}, or raise num_generations to at least {m}.")
    from preflab.runlog import is_main_process

    if m == K and is_main_process():
        print(f"preflab: note: rso_num_samples={m} equals num_generations: every completion is accepted, so RSO's "
              "rejection step selects nothing and the pairs are a random matching of each group (labelled by "
              "reward). Set rso_num_samples below num_generations for rejection sampling.", flush=True)


def _check_objective_fits(cfg, spec) -> None:
    """A pair recipe feeds pairwise objectives and a group recipe list objectives: a mismatch (e.g. loss_type: grpo
    with the default trainer online_dpo) is refused here, not after the model loads and a round is generated."""
    from preflab.objectives import objective_class, resolve_name

    if not isinstance(cfg.loss_type, str) or ":" in cfg.loss_type:
        return  # weighted lists and plug-in objectives are checked when built
    try:
        batch = objective_class(resolve_name(cfg.loss_type)).batch_type.__name__
    except (ConfigError, KeyError):
        return  # an unknown name is reported, with its hint, when the objective is built
    wants = "ListBatch" if spec.kind == "groups" else "PairBatch"
    if batch != wants:
        other = sorted(n for n, s in TRAINERS.items() if s.kind != spec.kind and not s.game_only)
        raise ConfigError(f"loss_type={cfg.loss_type!r} takes a {batch}, but trainer {cfg.trainer!r} builds "
                          f"{'groups of completions' if spec.kind == 'groups' else 'pairs'}; for this loss_type use "
                          f"trainer: {' | '.join(other)}, or leave loss_type out (the trainer's own objective).")


def check_game_preferences(P):
    """A K x K list of probabilities with P + P^T = 1 (returned as a float64 numpy array); a ConfigError names the
    first bad entry."""
    import numpy as np

    if P is None:
        raise ConfigError("online_task: game needs game_preferences, a K x K matrix P[i][j] = P(answer i beats j).")
    if not isinstance(P, (list, tuple)) or not P or any(not isinstance(r, (list, tuple)) or len(r) != len(P)
                                                        for r in P):
        raise ConfigError(f"game_preferences must be a square K x K list of lists, got {P!r}.")
    K = len(P)
    if K < 2:
        raise ConfigError("game_preferences needs at least 2 answers.")
    for i in range(K):
        for j in range(K):
            v = P[i][j]
            if not is_number(v) or not 0 <= v <= 1 or math.isnan(v):
                raise ConfigError(f"game_preferences[{i}][{j}] = {v!r} is not a probability in [0, 1].")
            if abs(v + P[j][i] - 1) > 1e-6:
                raise ConfigError(f"game_preferences[{i}][{j}] + game_preferences[{j}][{i}] = {v + P[j][i]:.6g}, "
                                  "not 1 (P + P^T = 1: P(i beats j) + P(j beats i) = 1, and 1/2 on the diagonal).")
    return np.asarray(P, dtype=np.float64)


# the options of one recipe or prompt source: (options, test on (cfg, spec) that the run reads them, who reads them)
_READERS = (
    (("scale_rewards",), lambda cfg, spec: spec.kind == "groups" and spec.loss_type == "grpo",
     "the GRPO family (grpo, dapo, dr_grpo, bnpo, gspo, cispo, sapo, luspo, vespo, and spo in the game; rloo's "
     "baseline is leave-one-out)"),
    (("epsilon", "epsilon_high", "mask_truncated_completions"),
     lambda cfg, spec: spec.kind == "groups" and spec.loss_type in ("grpo", "rloo"),
     "the GRPO family (grpo, dapo, dr_grpo, bnpo, gspo, cispo, sapo, luspo, vespo, and spo in the game) and rloo"),
    (("normalize_advantages", "reward_clip_range"), lambda cfg, spec: cfg.trainer == "rloo", "trainer rloo"),
    (("num_generations_eval",), lambda cfg, spec: spec.kind == "groups" and spec.loss_type in ("grpo", "rloo") and
     cfg.online_task == "dataset" and bool(cfg.eval_dataset_name or cfg.eval_fraction), "the GRPO family and rloo "
     "(GRPOConfig's and RLOOConfig's option) on online_task: dataset with an eval set (eval_dataset_name or "
     "eval_fraction: the held-out prompts it answers)"),
    (("cast_lm_head_to_fp32",), lambda cfg, spec: spec.kind == "groups" and spec.loss_type == "grpo" and
     cfg.online_task in ("dataset", "demo"), "the GRPO family on text prompts (online_task dataset or demo; the "
     "game has no model, vision_dataset's image-text models are not cast)"),
    (("multi_objective_aggregation",), lambda cfg, spec: spec.kind == "groups" and spec.loss_type == "grpo" and
     cfg.online_task != "game", "the GRPO family on sampled text (grpo, dapo, dr_grpo, bnpo, gspo, cispo, sapo, "
     "luspo, vespo; the game has no judges)"),
    (("pair_builder",), lambda cfg, spec: spec.kind == "pairs" and spec.builder is None and spec.scores == "reward"
     and cfg.online_task != "game", "trainers online_dpo, iterative_dpo and hypo_online_pairs"),
    (("rso_beta", "rso_num_samples"), lambda cfg, spec: spec.kind == "pairs" and spec.scores == "reward" and
     (spec.builder or cfg.pair_builder) == "rso" and cfg.online_task != "game", "trainer rso (or pair_builder: rso)"),
    (("preference_temperature",), lambda cfg, spec: spec.scores in ("win_rate", "centred") and
     cfg.online_task != "game", "trainers sppo and gpo on sampled text"),
    (("game_preferences", "game_eta"), lambda cfg, spec: cfg.online_task == "game", "online_task: game"),
    # the game's rounds take the exact expectation over the K answers (spo samples pi_t itself, at temperature 1):
    # no text is generated, so the sampling options cannot do what they say there
    (("temperature", "top_p", "generation_batch_size", "generation_backend"),
     lambda cfg, spec: cfg.online_task != "game", "the online tasks that sample text (dataset, vision_dataset, demo; "
     "the game uses the exact answer distribution)"),
    # the text generator (online/generator.py: transformers or vLLM) samples with them; the image-text generator
    # (online/vision.py) and the game do not
    (("top_k", "min_p", "repetition_penalty"), lambda cfg, spec: cfg.online_task in ("dataset", "demo"),
     "the online tasks that sample text with the text generator (dataset, demo; vision_dataset's image-text "
     "generator samples with temperature and top_p only, the game samples no text)"),
    (("num_generations", "prompts_per_generation"), lambda cfg, spec: cfg.online_task != "game" or
     cfg.trainer == "spo", "the online tasks that sample text and trainer spo in online_task: game (the other game "
     "trainers use the exact expectation over the answers)"),
    # mcts_dpo's tree search samples mcts_num_actions per expansion (preflab.online.mcts); num_generations ran unread
    (("num_generations",), lambda cfg, spec: cfg.trainer != "mcts_dpo", "the recipes that sample a group per prompt "
     "(trainer mcts_dpo samples mcts_num_actions per tree expansion instead: set that)"),
    (("shuffle_dataset",), lambda cfg, spec: cfg.online_task != "game",
     "the online tasks that draw prompts (dataset, vision_dataset, demo; the game has one)"),
    (("chat_template_kwargs",), lambda cfg, spec: cfg.online_task == "dataset",
     "online_task: dataset (its conversational prompts are rendered with the policy's chat template; demo prompts are "
     "text, vision_dataset's go through the processor's template, the game has none)"),
    # tool calling (preflab.online.tool_calling): conversational prompts sampled by the text generator, trained by a
    # group recipe whose examples take a per-token loss mask (TRL GRPOTrainer's tool_mask)
    (("tools",), lambda cfg, spec: cfg.online_task == "dataset" and spec.kind == "groups", "the group recipes "
     "(grpo, dapo, dr_grpo, rloo, ...) of online_task: dataset (the chat template renders the tools into its "
     "conversational prompts; the tool results are masked out of a group recipe's token loss)"),
    (("environment_factory",), lambda cfg, spec: cfg.online_task == "dataset" and spec.kind == "groups", "the group "
     "recipes (grpo, dapo, dr_grpo, rloo, ...) of online_task: dataset (environments are stepped by the tool-calling "
     "loop; their methods are tools)"),
    (("max_tool_calling_iterations",), lambda cfg, spec: bool(cfg.tools or cfg.environment_factory), "runs with "
     "tools or environment_factory (TRL reads it only with GRPOTrainer's tools)"),
    (("tool_timeout_s",), lambda cfg, spec: bool(cfg.tools or cfg.environment_factory), "runs with tools or "
     "environment_factory (the limit of one tool call)"),
    (("apo_alpha",), lambda cfg, spec: cfg.online_task == "game" and cfg.trainer == "apo",
     "trainer apo in online_task: game"),
    (("reward_funcs", "reward_weights", "missing_eos_penalty", "max_judge_failure_fraction", "judge_timeout_s"),
     lambda cfg, spec: cfg.online_task != "game", "the online tasks that judge sampled text (dataset, "
     "vision_dataset, demo; the game's preferences are game_preferences)"),
    # the game's rounds carry their reference log-probs (pi_0's, exact; sppo's slots pi_t's): no reference model is
    # scored, copied or refreshed there (preflab.online.game)
    (("refresh_reference_every",), lambda cfg, spec: cfg.online_task != "game",
     "the online tasks that sample text (dataset, vision_dataset, demo; the game's reference is pi_0, or the round's "
     "pi_t in sppo's reference slots, computed exactly every round)"),
    (("heldout_prompts",), lambda cfg, spec: cfg.online_task == "demo", "online_task: demo"),
    (("reward_aggregator",), lambda cfg, spec: cfg.online_task in ("dataset", "demo"), "online_task: dataset | demo"),
    (("upo_fraction", "upo_mu", "upo_selection", "upo_temperature", "upo_alpha_max", "upo_uncertainty"),
     lambda cfg, spec: cfg.trainer == "upo", "trainer upo"),
    (("upo_passes",), lambda cfg, spec: cfg.trainer == "upo" and cfg.upo_uncertainty == "mc_dropout",
     "trainer upo with upo_uncertainty: mc_dropout"),
    (("mcts_iterations", "mcts_num_actions", "mcts_depth_limit", "mcts_step_delimiter", "mcts_value"),
     lambda cfg, spec: cfg.trainer == "mcts_dpo", "trainer mcts_dpo"),
    (("tpo_tree_depth",), lambda cfg, spec: cfg.trainer == "tpo", "trainer tpo"),
    (("tpo_step_delimiter",), lambda cfg, spec: cfg.trainer == "tpo" and cfg.tpo_tree_depth > 1,
     "trainer tpo with tpo_tree_depth > 1"),
    (("mcts_self_eval_weight",), lambda cfg, spec: cfg.trainer == "mcts_dpo" and cfg.mcts_value == "self_eval",
     "trainer mcts_dpo with mcts_value: self_eval"),
)
# every online option: outside task: online, one set away from its default is refused (preflab.config_owners)
ONLINE_OPTIONS = tuple(dict.fromkeys([n for names, _, _ in _READERS for n in names] + [
    "trainer", "online_task", "reward_funcs", "reward_weights", "num_generations", "prompts_per_generation",
    "steps_per_generation", "num_iterations", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
    "generation_batch_size", "generation_backend", "chat_template_kwargs", "shuffle_dataset",
    "refresh_reference_every", "missing_eos_penalty", "max_judge_failure_fraction", "judge_timeout_s"]))


def unread_online_options(cfg) -> list[str]:
    """One line per option of another recipe or prompt source written by the user (at any value) or set to a
    non-default value in a task: online run (accepted and ignored before); online options outside task: online are
    preflab.config_owners'."""
    if cfg.task != "online":
        return []
    spec = TRAINERS.get(cfg.trainer)
    if spec is None:
        return []  # check_online names the unknown trainer
    out = []
    for names, reads, who in _READERS:
        used = set_options(cfg, names)
        if used and not reads(cfg, spec):
            out.append(f"{', '.join(used)} {'is' if len(used) == 1 else 'are'} read by {who}, not by trainer "
                       f"{cfg.trainer!r} with online_task {cfg.online_task!r}; remove "
                       f"{'it' if len(used) == 1 else 'them'} (or change trainer).")
    return out


# the game options that only some game trainers read (preflab.online.game / online.run / online.trainers):
# game_eta is eta * beta of inpo / apo / nash_md's step; egpo and online_ipo recompute the opponent every step
# (OnlineRun.round_len = 1), so the round length steps_per_generation x num_iterations is theirs only to ignore
_GAME_READERS = (
    ("game_eta", ("apo", "inpo", "nash_md")),
    ("steps_per_generation", ("apo", "inpo", "nash_md", "sppo", "spo")),
    ("num_iterations", ("apo", "inpo", "nash_md", "sppo", "spo")),
)


def unread_game_option_notes(cfg) -> list[str]:
    """Notes (not errors: one yaml such as examples/online/nash_game.yaml serves every game trainer through
    `trainer=...`) naming each game option written by the user (at any value) or set away from its default that the
    chosen game trainer does not read."""
    if cfg.task != "online" or cfg.online_task != "game":
        return []
    out = []
    for name, readers in _GAME_READERS:
        if cfg.trainer not in readers and set_options(cfg, (name,)):
            out.append(f"{name}={getattr(cfg, name)!r} is read by game trainers {', '.join(readers)}, not by "
                       f"trainer {cfg.trainer!r}" + (" (every step is a round)" if name != "game_eta" else "")
                       + "; it has no effect on this run.")
    return out


def greedy_eval_notes(cfg) -> list[str]:
    """The one difference of a GRPO-family or rloo run's evaluation from TRL's, said once when the run evaluates
    (an eval set on online_task: dataset): preflab's eval_reward is the judges' reward of ONE GREEDY answer per
    held-out prompt (online.tasks.dataset_evaluate; the same answers give eval_win_rate_vs_reference); TRL's
    GRPOTrainer and RLOOTrainer log eval_reward as the mean over num_generations_eval completions per prompt sampled
    as in training (temperature, top_p, top_k, min_p). The training rows' `reward` is the sampled one in both."""
    if (cfg.task != "online" or cfg.online_task != "dataset" or cfg.trainer not in TRL_CONFIG_TRAINERS
            or not (cfg.eval_dataset_name or cfg.eval_fraction) or cfg.num_generations_eval):
        return []  # (num_generations_eval: sampled as TRL samples them)
    trl = "RLOOTrainer" if cfg.trainer == "rloo" else "GRPOTrainer"
    return [f"eval_reward (trainer {cfg.trainer}) is the judges' reward of one greedy answer per held-out prompt; "
            f"TRL's {trl} logs eval_reward as the mean over num_generations_eval completions sampled as in "
            f"training (temperature {cfg.temperature:g}), so the two are not the same number (the sampled reward is "
            "metrics.jsonl's `reward`). Set num_generations_eval to evaluate as TRL does."]


def task_eval_strategy_no_notes(cfg) -> list[str]:
    """eval_strategy: no written by the user (cfg.written_options) on online_task demo or game: accepted (TRL's
    default, so a saved TRL config carries it; refusing it would refuse those), and it turns off the scheduled
    evaluations, but not the task's own one after the last step (loops/driver.py _evaluate_at_end), which needs no
    eval set: the demo's held-out prompts, the game's exact equilibrium metrics. Said once when the run is built
    (OnlineRun, built only to train), so a user who wrote "no" is not left to find eval_* rows in metrics.jsonl. A
    saved config's value (not written) is not the user's choice and gets no note."""
    if (not cfg.evaluates_with_its_task() or cfg.eval_strategy != "no"
            or "eval_strategy" not in getattr(cfg, "written_options", frozenset())):
        return []
    measures = {"demo": f"the true reward of greedy answers to the demo's {cfg.heldout_prompts} held-out prompts "
                        "(eval_true_reward, eval_win_rate_vs_reference against the starting policy's answers; "
                        "summary.json true_reward_before -> true_reward_after)",
                "game": "the final policy's exact duality gap and total variation to the regularised equilibrium "
                        "(eval_duality_gap, eval_tv_to_equilibrium; summary.json duality_gap_before -> "
                        "duality_gap_after, tv_to_equilibrium_before -> tv_to_equilibrium_after)"}[cfg.online_task]
    return [f"eval_strategy: no turns off the scheduled evaluations, but online_task: {cfg.online_task}'s own "
            f"evaluation still runs once, at the end of the run (it needs no eval set): {measures}."]


def check_explicit_loss_type(cfg, given: dict) -> None:
    """`loss_type: sigmoid` written in the config of a recipe with its own objective (rso: hinge_norm, sppo, ...) was
    replaced by that objective without a word (sigmoid is also the default, so check_online cannot tell); refused
    here, where the written keys are known."""
    spec = TRAINERS.get(cfg.task == "online" and cfg.trainer)
    if spec is None or given.get("loss_type") != "sigmoid" or spec.loss_type in (None, "sigmoid"):
        return
    other = " (or trainer: online_dpo with pair_builder: rso for DPO's loss on RSO pairs)" if cfg.trainer == "rso" \
        else ""
    raise ConfigError(f"trainer {cfg.trainer!r} trains its own objective {spec.loss_type!r}; the loss_type: sigmoid "
                      f"in the config would be replaced by it. Leave loss_type out{other}, or give another "
                      "loss_type to use it on this recipe's pairs.")
