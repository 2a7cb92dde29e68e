"""`preflab train CONFIG.yaml [key=value ...]`: train with a YAML config plus overrides."""
from __future__ import annotations

import argparse
import json
import os

from preflab.option_types import is_number


def recipe_headline(output_dir: str, summary: dict) -> dict:
    """What `preflab train` prints at the end of a recipe: metric_name / before / after, and beside them every
    number the recipe gives for comparison (`metric_*`: untrained, optimum, first round's best; `control*`: the same
    steps spent another way), so an after that a control beats is never shown alone. A control_<x>_after comes with
    the recipe's own <x>_before and <x>_after where it has them (OTC's accuracy and mean tool calls: the control's
    were printed without the method's)."""
    head = {"output_dir": output_dir, **{k: summary.get(k) for k in ("metric_name", "metric_before", "metric_after")}}
    extra = {k: v for k, v in summary.items()
             if k not in head and k.startswith(("metric_", "control")) and is_number(v)}
    own = [f"{k[len('control_'):-len('_after')]}_{when}" for k in extra
           if k.startswith("control_") and k.endswith("_after") for when in ("before", "after")]
    head.update({k: v for k, v in extra.items() if k.startswith("metric_")})
    head.update({k: summary[k] for k in own if k not in head and is_number(summary.get(k))})
    head.update({k: v for k, v in extra.items() if k not in head})
    return head


def register(sub) -> None:
    from preflab.config import describe_options

    p = sub.add_parser(
        "train", help="train a model with a YAML config and key=value overrides",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train with a YAML config plus key=value overrides (TRL's option names).\n"
                    "Example: preflab train examples/dpo.yaml model_name_or_path=Qwen/Qwen2.5-0.5B-Instruct "
                    "dataset_name=trl-lib/ultrafeedback_binarized beta=0.1\n"
                    "Several processes: accelerate launch --multi_gpu --num_processes 2 $(which preflab) train ...\n"
                    "Objective parameters (label_smoothing, gamma, ...) may be given as top-level keys.",
        epilog="options (key = default  (type; allowed values) meaning); TRL's DPOConfig names are accepted too:\n"
               + describe_options(),
    )
    p.add_argument("config", nargs="?", help="YAML config file (optional if every option is given as key=value)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. beta=0.2 loss_type=ipo; '~key' drops a key "
                                                "the config file sets (it takes its default), e.g. '~loss_type'")
    p.add_argument("--config", dest="config_option", metavar="CONFIG",
                   help="the YAML config file, as TRL's `trl dpo --config x.yaml` names it (the same as CONFIG)")
    p.add_argument("--trl-command", dest="trl_command", choices=sorted(TRL_TRAIN_COMMANDS), help=argparse.SUPPRESS)
    p.set_defaults(func=run, task_of=lambda args: route_of(config_from_args(args)))


ONLINE_KL = "dpo+online_kl"  # the route of task: dpo with HyPO's on-policy KL term (preflab.online.hypo_offline)


def route_of(cfg) -> str:
    """The task preflab.cli routes a config by: cfg.task, or ONLINE_KL for task: dpo with an objective that reads
    HyPO's on-policy extras (loss_type: hypo, alone or in a weighted sum), which fresh samples of the policy feed."""
    if cfg.task == "dpo":
        from preflab.objectives import objective_parts

        if any("online_policy_logps" in getattr(p, "gradient_extras", ()) for p in objective_parts(cfg.objective())):
            return ONLINE_KL
    return cfg.task


def quiet_third_party_warnings() -> None:
    """Hide other libraries' FutureWarning / DeprecationWarning / UserWarning in a CLI run (preflab's own warnings
    still show), transformers' info logs and progress bars. Only the `preflab` command calls this; importing preflab
    changes no warning filter, and preflab.cli.main puts all of it back after the command (preflab.quiet)."""
    from preflab.quiet import quiet_third_party

    quiet_third_party()


def config_from_args(args):
    """The TrainConfig of `preflab train CONFIG key=value ...` (the config may be left out). Read once per
    command and kept on `args`: routing by task reads it first, so reading it again would print its notes twice."""
    from preflab.config import load_config

    cached = getattr(args, "_preflab_config", None)
    if cached is not None:
        return cached
    config, overrides = config_and_overrides(args)
    args._preflab_config = load_config(config, overrides)
    return args._preflab_config


# TRL 1.16's training commands (`trl dpo | kto | reward | sft --config x.yaml`, trl/cli/commands) that `preflab dpo`
# (and kto, reward, sft) run as `preflab train` (preflab.cli.main rewrites the command): the setting each command's
# TRL script implies, added when the config does not write it, and the values the config may write instead
TRL_TRAIN_COMMANDS = {"dpo": {}, "kto": {"loss_type": ("kto", "apo_zero_unpaired")}, "reward": {"task": ("reward",)},
                      "sft": {"task": ("sft",)}}


def trl_command_overrides(command: str | None, config: str | None, overrides: list[str]) -> list[str]:
    """The key=value overrides `preflab kto` (reward, sft) adds for TRL's script's setting (KTOConfig's loss_type
    kto, RewardTrainer's task, SFTTrainer's task) when neither the YAML file nor an override writes the key, said
    in a note; a written value that script would not train is refused (user trial 27: `trl kto --config x.yaml`
    became "invalid choice: 'kto'", and `preflab train x.yaml` on a KTO config without loss_type trained DPO's
    sigmoid or refused the unpaired rows)."""
    from preflab.config import load_yaml
    from preflab.errors import ConfigError

    implied = TRL_TRAIN_COMMANDS.get(command or "", {})
    if not implied:
        return []
    written = {}
    if config and os.path.isfile(config):  # a missing file: load_config says so
        with open(config, encoding="utf-8") as fh:
            loaded = load_yaml(fh.read()) or {}
        written.update(loaded if isinstance(loaded, dict) else {})
    for item in overrides:
        key, _, value = item.partition("=")
        written[key.lstrip("~")] = value if not item.startswith("~") else None
    added = []
    for key, allowed in implied.items():
        value = written.get(key)
        if isinstance(value, list) and len(value) == 1:  # loss_type: [kto], TRL's list form of one loss
            value = value[0]
        if value is None:
            added.append(f"{key}={allowed[0]}")
        elif str(value) not in allowed:
            raise ConfigError(f"`preflab {command}` runs TRL's `trl {command}` script, which trains {key}: "
                              f"{' or '.join(allowed)}; the config writes {key}: {value}. Run it with "
                              f"`preflab train`, or write {key}: {allowed[0]}.")
    if added:
        from preflab.runlog import is_main_process

        if is_main_process():
            print(f"preflab: note: `preflab {command}` (TRL's `trl {command}`) trains {', '.join(added)}, which the "
                  "config does not write; `preflab train` with the same config would not.")
    return added


def config_and_overrides(args) -> tuple[str | None, list[str]]:
    """(config file, overrides) of `preflab train [CONFIG | --config CONFIG] key=value ...`: TRL's CLI names the file
    with --config (`trl dpo --config x.yaml`), where argparse then reads the first override as CONFIG. A file given
    both ways is refused (user trial 27: before, `--config` was "not an option")."""
    from preflab.errors import ConfigError

    config, overrides = args.config, list(args.overrides)
    given = getattr(args, "config_option", None)
    if given is not None:
        if config and not ("=" in config or config.startswith("~") and "/" not in config):
            raise ConfigError(f"two config files: {config!r} and --config {given!r}; give one.")
        config, overrides = given, ([config] if config else []) + overrides
    elif config and ("=" in config or config.startswith("~") and "/" not in config) and not config.endswith(
            (".yaml", ".yml")):  # no config file: the first override (key=value or ~key) came first
        config, overrides = None, [config] + overrides
    return config, overrides + trl_command_overrides(getattr(args, "trl_command", None), config, overrides)


def run(args) -> int:
    """Policy training and recipes. `task: reward` configs are routed to preflab.reward_models.cli by preflab.cli."""
    from preflab.config import RECIPE_TASKS, preflight
    from preflab.errors import ConfigError

    quiet_third_party_warnings()
    cfg = config_from_args(args)
    preflight(cfg)
    if cfg.task in RECIPE_TASKS:
        from preflab.recipes import run_recipe

        summary = run_recipe(cfg)
        from preflab.runlog import is_main_process

        if is_main_process():  # once, not once per process
            print(json.dumps(recipe_headline(cfg.output_dir, summary), indent=1))
        return 0
    if cfg.task in ("reward", "online"):
        raise ConfigError(f"task: {cfg.task} is run through the `preflab train` command (preflab.cli routes it), or "
                          "from Python: preflab.reward_models.train.train_reward(cfg) / "
                          "preflab.online.run.OnlineRun(cfg).train().")
    if cfg.task == "vlm":
        from preflab.loops.vlm import VisionTrainer

        summary = VisionTrainer(cfg).train()
    elif cfg.task == "diffusion":
        from preflab.loops.diffusion import train_diffusion

        summary = train_diffusion(cfg)
    elif cfg.task == "sft" and cfg.teacher_model_name_or_path:
        from preflab.loops.distill import DistillTrainer

        summary = DistillTrainer(cfg).train()
    elif cfg.task == "sft":
        from preflab.loops.sft import SFTTrainer

        summary = SFTTrainer(cfg).train()
    else:
        from preflab.loops.offline import Trainer

        summary = Trainer(cfg).train()
    return print_summary(cfg, summary)


def before_after_line(summary: dict) -> str | None:
    """An online run's held-out result in one line: true_reward_before -> _after (the demo task's true reward of
    greedy answers to its held-out prompts) or eval_reward_before -> _after (the judges' reward on an eval set), with
    win_rate_vs_reference (against the starting policy's answers) where the summary has it; the preference game's
    duality_gap and tv_to_equilibrium before -> after (the starting policy's, exact); None without them.
    Before, `preflab train` printed only the final metrics, whose eval_true_reward is the after alone."""
    for key, what in (("true_reward", "true reward"), ("eval_reward", "eval reward")):
        before, after = summary.get(f"{key}_before"), summary.get(f"{key}_after")
        if is_number(before) and is_number(after):
            win = summary.get("win_rate_vs_reference")
            ties, prompts = summary.get("win_rate_vs_reference_ties"), summary.get("win_rate_vs_reference_prompts")
            tied = f" ({ties} of {prompts} prompts tied, each counted 1/2)" if is_number(ties) and prompts else ""
            return (f"preflab: {what} {before:.3f} -> {after:.3f} on the held-out prompts (summary.json {key}_before, "
                    f"{key}_after)" + (f"; win rate vs the starting policy {win:.3f}{tied}" if is_number(win) else "")
                    + ".")
    game = [f"{k}_{w}" for k in ("duality_gap", "tv_to_equilibrium") for w in ("before", "after")]
    if all(is_number(summary.get(k)) for k in game):  # before: the starting policy pi_0 = pi_ref
        return (f"preflab: duality gap {summary['duality_gap_before']:.4g} -> {summary['duality_gap_after']:.4g}, "
                f"total variation to the regularised equilibrium {summary['tv_to_equilibrium_before']:.4g} -> "
                f"{summary['tv_to_equilibrium_after']:.4g}, starting policy -> final policy (summary.json "
                f"{', '.join(game)}).")
    return None


def run_costs_line(summary: dict) -> str | None:
    """What the run cost: its peak memory (summary.json peak_memory, preflab.peak_memory) and its training
    throughput over the optimizer steps only (final_metrics' train_<unit>_per_second); None when it has neither (a
    recipe's summary)."""
    from preflab.peak_memory import peak_memory_text

    memory = peak_memory_text(summary.get("peak_memory"))
    final = summary.get("final_metrics") or {}
    rate = next(((k, v) for k, v in final.items() if k.startswith("train_") and k.endswith("_per_second")
                 and is_number(v)), None)
    said = ([f"peak memory {memory}"] if memory else []) + (
        [f"{rate[0]} {rate[1]:.4g} (optimizer steps only; {rate[0][len('train_'):]} counts evaluation and saves "
         "too)"] if rate else [])
    return f"preflab: {'; '.join(said)}." if said else None


def print_summary(cfg, summary: dict) -> int:
    """The final metrics as JSON on stdout (for scripts), then one line on stderr saying where the run is and how
    to look at it (a new user saw only the JSON, and not what to do next)."""
    import shlex
    import sys

    from preflab.runlog import is_main_process

    final = {k: v for k, v in summary.get("final_metrics", {}).items() if isinstance(v, (int, float))}
    if is_main_process():  # once, not once per process
        print(json.dumps({"output_dir": cfg.output_dir, **final}, indent=1))
        result = before_after_line(summary)
        if result:
            print(result, file=sys.stderr)
        costs = run_costs_line(summary)
        if costs:
            print(costs, file=sys.stderr)
        out = shlex.quote(str(cfg.output_dir))
        print(f"preflab: done: the run is in {cfg.output_dir} (summary.json holds its final metrics); "
              f"`preflab report {out}` writes report.html with its curves.", file=sys.stderr)
    return 0
