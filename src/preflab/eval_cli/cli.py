"""`preflab eval CHECKPOINT --data DATA [--reference REF | --no-reference]`: diagnostics on held-out pairs ->
eval.json. Without --reference the reference is the one the run trained against (its saved config). The parser is
the whole command's; --task reward / diffusion / vlm are routed by preflab.cli (TASK_ROUTES) to the rooms that own
them, which share preflab.eval.cli's summary and option refusal with the policy eval run here."""
from __future__ import annotations

import argparse

from preflab.errors import ConfigError, PreflabError


def limit_help() -> str:
    """--limit's help, naming the tasks that read it (preflab.eval.cli.TASK_READS): it read "evaluate at most this many
    rows" for every task, and `--task vlm --limit 8` was then refused."""
    from preflab.eval.cli import TASK_READS

    reads = [task for task, options in TASK_READS.items() if "limit" in options]
    refused = [task for task, options in TASK_READS.items() if "limit" not in options]
    return (f"evaluate at most this many rows (the policy eval, --task {', '.join(reads)}; --task "
            f"{' and '.join(refused)} refuse it)")


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="ranking accuracy, idealized ranking accuracy, 3D metrics and win rate on held-out pairs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate a trained model on held-out preference pairs and write eval.json.\n"
                    "Example: preflab eval outputs/dpo --data heldout.jsonl --reference outputs/sft\n"
                    "Without --reference, the reference is the run's ref_model_name_or_path (else its\n"
                    "model_name_or_path) from CHECKPOINT's saved config.yaml; for a recipe stage RUN/<stage>,\n"
                    "the model the stage trained against, recorded in RUN/start.json (e.g. RUN/start).\n"
                    "Optional data columns: alpha (rater proportion, for the idealized ranking accuracy) and\n"
                    "extra_responses (a list of further responses per prompt, for the dispersion metrics).",
    )
    p.add_argument("checkpoint", help="run directory saved by `preflab train` (or checkpoint-<step>)")
    p.add_argument("--data", help="held-out pairs: .jsonl/.json/.parquet/.csv/.arrow, a directory or hub name "
                   "(or --held-out)")
    p.add_argument("--held-out", action="store_true",
                   help="instead of --data: exactly the rows the run's eval_fraction held out of its training data, "
                        "rebuilt from its config.yaml as it split them (default batch: its per_device_eval_batch_size)")
    p.add_argument("--data-config", metavar="NAME",
                   help="configuration of --data (datasets' name, TRL's dataset_config: load_dataset(DATA, NAME)): a "
                        "hub dataset's, or one a local folder's README.md declares under `configs:`; every --task")
    p.add_argument("--data-columns", metavar="FIELD=COLUMN,...",
                   help="which column of --data each preflab field is read from (preflab field = your column, e.g. "
                        "prompt=question,chosen=good,rejected=bad, or a JSON object); default: the run's "
                        "dataset_columns from CHECKPOINT's config.yaml; 'none': the data's own names; every --task")
    reference = p.add_mutually_exclusive_group()
    reference.add_argument("--reference", help="reference model: run directory, model directory or builtin:tiny-* "
                                               "(default: the run's ref_model_name_or_path, else its "
                                               "model_name_or_path, from CHECKPOINT's saved config; a recipe "
                                               "stage's: the model it trained against, RUN/start.json)")
    reference.add_argument("--no-reference", action="store_true",
                           help="no reference model: policy-only metrics (ranking accuracy)")
    p.add_argument("--out", help="where eval.json goes (a .json path or a directory; default: CHECKPOINT)")
    p.add_argument("--task", choices=("dpo", "reward", "diffusion", "vlm", "distill"), default=None,
                   help="default: the task CHECKPOINT's saved config names (task: reward, diffusion or vlm; task: sft "
                        "with teacher_model_name_or_path: distill), said in one line; else dpo (preference pairs of a "
                        "policy: task: dpo, sft, online, or no saved config). "
                        "reward: evaluate a reward model (preflab.reward_models.eval; a DPA attribute model on rated "
                        "rows and direction pairs: preflab.reward_models.attribute_eval); diffusion: a text-to-image "
                        "run (implicit-reward accuracy; win rate of samples with --reward-fn f(images, prompts), or "
                        "f(images, prompts, users=...) on a ppd run when it takes users; ppd: eval.json per_user); "
                        "vlm: an image-text run (or checkpoint-N) on held-out vision pairs (its eval_* metrics); "
                        "distill: a distillation run (task: sft with a teacher) on held-out task: sft rows (its "
                        "eval_* metrics: the divergence to the teacher, or --reference's)")
    p.add_argument("--user-embeddings", metavar="FILE",
                   help="--task diffusion on a ppd run: safetensors {user_id: [L_u, d_u] or [S, L_u, d_u]} of the "
                        "held-out users its saved table (users.json) lacks (default: the run's user_embeddings)")
    p.add_argument("--beta", type=float, help="beta of the implicit reward (default: the run's config.yaml)")
    p.add_argument("--split", help="split of a hub dataset, DatasetDict or data folder (default: 'test' where the "
                                   "data has one, as a run's eval_split; else 'train'; every --task; eval.json's "
                                   "split and notes say which)")
    p.add_argument("--limit", type=int, help=limit_help())
    p.add_argument("--batch-size", type=int, default=8, action=GivenValue, help="pairs per forward pass (default: 8; --task reward on a run: "
                                                  "its eval batch, per_device_eval_batch_size x processes, as its "
                                                  "eval_min_reward / eval_max_reward were computed)")
    p.add_argument("--max-length", type=int, help="prompt + response tokens (default: the run's max_length, as its "
                                                   "eval_* metrics were computed; else 1024)")
    p.add_argument("--max-prompt-length", type=int, help="prompt tokens kept (default: the run's max_prompt_length, "
                                                          "with its truncation_mode and max_completion_length; else "
                                                          "no limit)")
    p.add_argument("--alpha-column", default="alpha", help="column with rater proportions (default: alpha)")
    p.add_argument("--extra-responses-column", default="extra_responses",
                   help="column with a list of unseen responses per prompt (default: extra_responses)")
    p.add_argument("--hard-margin", type=float, default=1.0,
                   help="a pair is hard to flip when beta * c exceeds this (Thm 4.1; default 1)")
    judge = p.add_mutually_exclusive_group()
    judge.add_argument("--reward-fn", help="MODULE:NAME or path/to/file.py:NAME of a TRL-style reward function "
                                           "f(prompts, completions), or a built-in judge name that reward_funcs "
                                           "takes: demo_true_reward, demo_echo_reward, verifier:<name>; with --task "
                                           "diffusion, f(images, prompts): images uint8 [N, 3, S, S], one score "
                                           "per image")
    judge.add_argument("--reward-model", help="directory of a sequence-classification reward model (safetensors)")
    judge.add_argument("--judge", help="MODULE:NAME of a pairwise judge (TRL's .judge or f(prompts, a, b))")
    p.add_argument("--win-rate-prompts", type=int, default=64, help="prompts generated (diffusion: sampled) for the win rate (default: 64)")
    p.add_argument("--max-new-tokens", type=int, help="generation length for the win rate (default: the run's "
                                                        "max_completion_length, else 64)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the win-rate interval")
    p.add_argument("--seed", type=int, help="seed of the builtin models the eval builds (a --reference builtin:tiny-*, "
                                            "a builtin policy or base); default: the run's saved seed, else "
                                            "`preflab train`'s default seed (42), as training built them")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    p.add_argument("--no-per-pair", action="store_true", help="leave per-pair log-probs out of eval.json")
    p.add_argument("--token-rewards", type=int, default=0, metavar="N",
                   help="write the per-token implicit rewards beta (log pi - log pi_ref) of the first N pairs' "
                        "responses into eval.json (\"token_rewards\"; they sum to each response's reward; needs a "
                        "reference; default 0: none)")
    p.add_argument("--allow-pickle", action="store_true", help="allow .bin/.pt weights (runs pickle; trusted only)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code")
    p.set_defaults(func=run, task_of=eval_task_of,
                   option_defaults={a.dest: a.default for a in p._actions if a.dest != "help"})


class GivenValue(argparse.Action):
    """Stores the option's value and `<dest>_given = True`, so that a default can be told from the same value typed
    (--task reward takes the run's eval batch unless --batch-size is given, even as 8)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def eval_task_of(args) -> str:
    """The task preflab.cli routes `preflab eval` by (its TASK_ROUTES), kept in args.task: --task as given (an
    explicit --task that is not the run's is refused by the task, preflab.eval.run_files.refuse_other_task); without
    --task, the one that evaluates the run CHECKPOINT's saved config describes (run_saved_task), else dpo. Before,
    --task defaulted to dpo, so `preflab eval outputs/diffusion --data ...` was refused with "--task dpo evaluates
    task: dpo, sft or online runs" although the run's config said which task it is."""
    if args.task is None:
        args.task = run_saved_task(args.checkpoint)
    return args.task


def run_saved_task(checkpoint: str) -> str:
    """The `preflab eval --task` of the run at `checkpoint` by its saved config (preflab.eval.run_files.
    eval_task_of_run), with one line on stderr saying so where it is not dpo; dpo where the run is a policy run, no
    --task evaluates it as it trained (the policy eval then says why) or no config is saved."""
    import sys

    from preflab.eval.run_files import eval_task_of_run
    from preflab.models.run_config import run_config

    saved = run_config(checkpoint)
    task = eval_task_of_run(saved)
    if task in (None, "dpo"):
        return "dpo"
    said = (f"task: sft with teacher_model_name_or_path: {saved['teacher_model_name_or_path']}" if task == "distill"
            else f"task: {saved['task']}")
    other = " (--task dpo for the preference-pair metrics of the student)" if task == "distill" else ""
    print(f"preflab eval: {checkpoint}'s saved config says {said}; evaluating with --task {task}{other}.",
          file=sys.stderr)
    return task


def run(args) -> int:
    """Policy evaluation. `--task reward` is routed to preflab.reward_models.cli.eval_task by preflab.cli."""
    eval_task_of(args)  # without --task: the run's (preflab.cli routes by it first; here for a direct call)
    if args.task == "reward":
        raise PreflabError("--task reward is run by preflab.reward_models.cli.eval_task (through the preflab "
                           "command).")
    if args.task == "diffusion":
        raise PreflabError("--task diffusion is run by preflab.loops.diffusion_eval.eval_task (through the preflab "
                           "command).")
    if args.task == "vlm":
        raise PreflabError("--task vlm is run by preflab.loops.vlm_eval.eval_task (through the preflab command).")
    if args.task == "distill":
        raise PreflabError("--task distill is run by preflab.loops.distill_eval.eval_task (through the preflab "
                           "command).")
    import sys
    from dataclasses import replace

    from preflab.eval.cli import COUNTS, format_summary, refuse_out_of_range
    from preflab.eval.run import EvalOptions, eval_columns, eval_data, run_generation_length, run_truncation
    from preflab.eval.run_files import note_saved_run, refuse_other_task
    from preflab.eval.winrate import load_callable
    from preflab.eval_cli.checkpoint import evaluate_checkpoint, reward_model_fn

    refuse_out_of_range(args, ("confidence", *COUNTS))  # the counts and --confidence, as every eval task
    if bool(args.data) == bool(getattr(args, "held_out", False)):
        raise ConfigError("preflab eval needs --data (held-out pairs) or --held-out (the rows the run's eval_fraction "
                          "held out), " + ("not both." if args.data else "and got neither."))
    if getattr(args, "user_embeddings", None):
        raise ConfigError("--user-embeddings gives a ppd diffusion run's user embeddings (--task diffusion); the "
                          f"policy eval (--task {args.task}) does not read it. Remove it.")
    if args.beta is not None and not args.beta > 0:
        raise ConfigError(f"--beta must be > 0 (the KL coefficient of the implicit reward), got {args.beta}.")
    if args.hard_margin < 0:
        raise ConfigError(f"--hard-margin must be >= 0 (a pair is hard when the reference ranks it wrongly by more "
                          f"than this, beta c > margin, c > 0), got {args.hard_margin}.")
    if args.token_rewards < 0:
        raise ConfigError(f"--token-rewards is a number of pairs (0: none), got {args.token_rewards}.")
    from preflab.eval.loading import check_model_exists

    check_model_exists(args.checkpoint)  # a mistyped path: this error alone, before any note about the run
    refuse_other_task(args.checkpoint, "dpo")  # before a --reward-model, the reference or the policy loads
    note_saved_run(args.checkpoint)  # options this preflab does not know, another preflab version
    refuse_win_rate_of_a_tool_run(args)
    reference, source = default_reference(args)
    if (args.reward_fn or args.reward_model or args.judge) and not reference:
        raise ConfigError("a win rate compares the policy with the reference model's answers: add --reference.")
    reward_fn = named_reward_fn(args.reward_fn) or load_callable(args.reward_fn) if args.reward_fn else None
    if args.reward_model:
        reward_fn = reward_model_fn(args.reward_model, allow_pickle=args.allow_pickle)
    truncation, said = run_truncation(args.checkpoint, args.max_length, args.max_prompt_length)
    if said:
        print(f"preflab: note: {said}", file=sys.stderr)
    max_new_tokens, said = run_generation_length(args.checkpoint, args.max_new_tokens)
    if said and (reward_fn is not None or args.judge):
        print(f"preflab: note: {said}", file=sys.stderr)
    opts = EvalOptions(beta=args.beta, batch_size=args.batch_size, **truncation, split=args.split, limit=args.limit,
                       alpha_column=args.alpha_column, extra_responses_column=args.extra_responses_column,
                       hard_margin=args.hard_margin, win_rate_prompts=args.win_rate_prompts,
                       max_new_tokens=max_new_tokens, confidence=args.confidence,
                       keep_per_pair=not args.no_per_pair, device=args.device, token_rewards=args.token_rewards,
                       judge=judge_label(args))
    # with --data-config: its configuration; with the run's dataset_columns (or --data-columns): its columns renamed
    given, record = args.data, None
    if args.held_out:
        given, batch_size, record = held_out_data(args)
        opts = replace(opts, batch_size=batch_size)
    data = eval_data(given, getattr(args, "data_config", None), eval_columns(args))
    result = evaluate_checkpoint(args.checkpoint, data, reference=reference, out=args.out, options=opts,
                                 reward_fn=reward_fn, judge=load_callable(args.judge) if args.judge else None,
                                 allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                                 reference_source=source, seed=args.seed, data_record=record)
    print(format_summary(result))
    return 0


def held_out_data(args) -> tuple[list[dict], int, dict]:
    """With --held-out, from the run's config.yaml read once: (the raw rows the run's eval_fraction held out
    (preflab.eval.held_out), said in a note; the pairs per forward pass: --batch-size when given, else the run's
    per_device_eval_batch_size (the batch its eval_* metrics were computed with), else --batch-size's default;
    eval.json's record of the data: "--held-out" and the run's dataset_name the rows come from, "held_out_of")."""
    import sys

    from preflab.eval.held_out import held_out_rows
    from preflab.models.run_config import run_config

    cfg = run_config(args.checkpoint)
    rows, said = held_out_rows(cfg, args.checkpoint)
    print(f"preflab: note: {said}", file=sys.stderr)
    batch_size = args.batch_size if getattr(args, "batch_size_given", False) else \
        int(cfg.get("per_device_eval_batch_size") or args.batch_size)
    name = cfg.get("dataset_name")
    return rows, batch_size, {"data": "--held-out", "held_out_of": None if name is None else str(name)}


BUILTIN_REWARD_FNS = ("demo_true_reward", "demo_echo_reward")


def judge_label(args) -> str | None:
    """The win rate's judge as the command line named it ("--reward-fn demo_echo_reward", "--reward-model DIR",
    "--judge MODULE:NAME"), for eval.json's win_rate "judge" and the report; None without one. Before, eval.json
    kept no word of it, so two runs' win rates judged by different judges sat side by side in a report unsaid."""
    for option in ("reward_fn", "reward_model", "judge"):
        if getattr(args, option, None):
            return f"--{option.replace('_', '-')} {getattr(args, option)}"
    return None


def refuse_win_rate_of_a_tool_run(args) -> None:
    """A ConfigError, before anything loads, for a win rate (--reward-fn / --reward-model / --judge) of a run trained
    with tools (its config's `tools:`, TRL GRPOTrainer's tools=): the win rate samples plain answers, with no tool
    schema in the prompt and no tool calls run, so it would judge a model that does not answer as it was trained
    to. The run's own held-out evaluation answers with the tools (eval_dataset_name / eval_fraction). The pair
    metrics (no win-rate option) sample nothing and still run."""
    from preflab.models.run_config import run_config

    config = run_config(args.checkpoint)
    tools = config.get("tools")
    chosen = [f"--{o.replace('_', '-')}" for o in ("reward_fn", "reward_model", "judge") if getattr(args, o, None)]
    if config.get("environment_factory") and chosen:  # its answers call environments the win rate does not make
        raise ConfigError(f"{args.checkpoint} was trained with environments (environment_factory: "
                          f"{config['environment_factory']}): its answers call their methods, but the win rate "
                          f"({' / '.join(chosen)}) samples plain answers without them, so it would not judge the "
                          f"trained agent. Drop {' / '.join(chosen)} for the pair metrics, which sample nothing.")
    if not tools or not chosen:
        return
    raise ConfigError(f"{args.checkpoint} was trained with tools ({tools}): its answers call them, but the win rate "
                      f"({' / '.join(chosen)}) samples plain answers without the tools, so it would not judge the "
                      "trained agent. Evaluate it with its tools in a run: eval_dataset_name or eval_fraction answers "
                      "the held-out prompts through the tool-calling loop and logs eval_reward and eval_tools/* "
                      f"(docs/online.md, Tool calling inside GRPO); drop {' / '.join(chosen)} for the pair metrics, "
                      "which sample nothing.")


def named_reward_fn(spec: str):
    """The reward function of a built-in judge name that an online run's reward_funcs takes (demo_true_reward,
    demo_echo_reward, verifier:<name>; preflab.online.tasks.resolve_judge), so `--reward-fn` judges with the judge
    the run trained against (before: 'is not module:name'); None for a module:name or file.py:name."""
    if spec not in BUILTIN_REWARD_FNS and not spec.startswith("verifier:"):
        return None
    from preflab.online.tasks import resolve_judge

    try:
        return resolve_judge(spec)
    except ConfigError as err:
        raise ConfigError(str(err).replace("reward_funcs:", "--reward-fn:", 1)) from None


def default_reference(args) -> tuple[str | None, str | None]:
    """(reference, where it came from) for `preflab eval`: --reference as given; --no-reference: none; a recipe
    stage (RUN/<stage>): the model it trained against by RUN/start.json (preflab.recipe_start.stage_reference: the
    recipe's saved starting model or an earlier stage's, checked against its fingerprint; a changed or missing one is
    refused naming it); otherwise the reference CHECKPOINT's run trained against
    (preflab.eval.loading.run_reference), said in one note line;
    none (with a note that the reference metrics are absent) when no saved run config names a model."""
    import sys

    from preflab.eval.loading import run_reference
    from preflab.models.run_config import run_config

    if args.reference:
        return args.reference, "--reference"
    if args.no_reference:
        return None, None
    from preflab.recipe_start import stage_reference

    staged = stage_reference(args.checkpoint)  # a recipe stage: the model it trained against (RUN/start.json)
    if staged is not None:
        name, what = staged
        print(f"preflab: note: no --reference: the reference is {name}, {what}, which recipe stage "
              f"{args.checkpoint} trained against (recorded in its run's start.json); pass --reference DIR for "
              "another one, or --no-reference for none.", file=sys.stderr)
        return name, f"start.json ({what})"
    found = run_reference(args.checkpoint)
    if found is None and run_config(args.checkpoint).get("task") in ("reward", "diffusion", "vlm"):
        return None, None  # not a text policy: loading it says which command evaluates it
    if found is None:
        print(f"preflab: note: no --reference, and {args.checkpoint} has no saved run config naming a model: the "
              "reference metrics (implicit-reward accuracy, idealized ranking accuracy, difficulty, log-prob drift, "
              "dispersion) are absent (eval.json \"missing\"); pass --reference DIR to compute them.",
              file=sys.stderr)
        return None, None
    name, key = found
    print(f"preflab: note: no --reference: the reference is the run's {key} {name} (from {args.checkpoint}'s saved "
          "config); pass --reference DIR for another one, or --no-reference for none.", file=sys.stderr)
    return name, f"run config ({key})"
