"""Where an online run's prompts, judge and starting policy come from (online_task).

    dataset  prompts: dataset_name's rows ("prompt", other columns reach reward functions); judge: reward_funcs
    demo     the loud-echo task of `preflab demo` (preflab.demo.task): its 600 training prompts, judged by the
             task's true reward; summary.json gets true_reward_before / true_reward_after (greedy answers on
             heldout_prompts unseen prompts). model_name_or_path: builtin:demo-sft is the demo's tiny char-level
             Llama after its SFT stage (preflab.demo.sft_model: built once, ~30 s on a CPU, cached in
             $PREFLAB_CACHE_DIR/demo-sft-<seed>-<recipe>)
    game     the preference game (preflab.online.game)
    vision_dataset  image prompts for an image-text policy: dataset_name's rows ("images" + "prompt"), judge:
             reward_funcs, e.g. Vision-R1's box rewards (preflab.online.vision, VisionOnlineRun)

Judges (reward_funcs, one name or a list, weighted by reward_weights):
    demo_true_reward        the demo task's true reward
    demo_echo_reward        the demo task's words compared case-insensitively (its loudness ignored)
    verifier:<name>         a rule reward of preflab.verifiers (e.g. verifier:vision_r1_format)
    maxmin:<dir>            MaxMin-RLHF over an em_mixture run's K reward models: every completion of a round gets
                            the z-scored reward of the group with the lowest mean on the round (maxmin_group:<dir> is
                            the same judge); maxmin_pointwise:<dir>: min_k r_k(x, y) per completion of the raw
                            rewards, the released code's rule (reward_models.maxmin_aggregate)
    package.module:name     an importable reward function f(prompts, completions, **columns) or object
    <directory>             a preflab reward model (BT or GPM head; preflab.reward_models.interface.load_judge) or
                            any transformers AutoModelForSequenceClassification with one label (its logit)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from preflab.errors import ConfigError
from preflab.models.builtin_names import BUILTIN_ONLINE, DEMO_SFT  # noqa: F401  (public names of this module)

# reward_funcs name -> max-min rule (reward_models.maxmin_aggregate): "maxmin" is the z-scored group rule
MAXMIN_JUDGES = {"maxmin": "group", "maxmin_group": "group", "maxmin_pointwise": "pointwise"}


@dataclass
class Task:
    prompts: list                     # prompt rows: str, messages or {"prompt": ..., columns}
    judges: list                      # reward functions / reward models / preference models
    heldout: list = field(default_factory=list)
    evaluate: Callable | None = None  # evaluate(model, tokenizer) -> dict (true_reward etc.)
    generator: Callable | None = None  # generator(cfg, policy, tokenizer, accelerator) -> a Generator (tool rollouts);
                                       # None: online.generator.make_generator
    judge_cache: bool = True          # False for judges whose score of a completion changes over the run (OTC-GRPO)
    data_report: dict = field(default_factory=dict)  # the prompt rows read, kept and skipped (summary.json "data")
    state: Any = None                 # an object with state_dict() / load_state_dict() (JSON), checkpointed with the
                                      # run (e.g. OTC's running-minimum tracker)
    reward_aggregator: Callable | None = None  # prompts -> [N, K] weights over the judges (PRO), not reward_weights
    prompt_places: list = field(default_factory=list)   # per prompt row, where it was read ('train.jsonl row 5
    heldout_places: list = field(default_factory=list)  # (line 6)', data.report.where), for messages; [] unknown
    prompts_from_reset: bool = False  # no dataset: the prompts are placeholders, environment_factory's reset gives
                                      # each its text (preflab.online.environments: reset_only_prompts)


def demo_true_reward(prompts, completions, **kwargs):
    """The loud-echo task's true reward (preflab.demo.task.true_reward) in TRL's reward-function signature."""
    from preflab.demo.task import true_reward

    return [true_reward(p, c) for p, c in zip(prompts, completions)]


def demo_echo_reward(prompts, completions, **kwargs):
    """The loud-echo task's words without the loudness: the fraction of prompt words echoed in place, compared
    case-insensitively (a second, partly disagreeing judge on the demo task: the upo recipe's ensemble member)."""
    from preflab.demo.task import PROMPT_FORM, prompt_problem, prompt_words

    out = []
    for p, c in zip(prompts, completions):
        problem = prompt_problem(p)
        if problem is not None:
            raise ValueError(f"demo_echo_reward scores only the demo task's prompts ({PROMPT_FORM}); "
                             f"{str(p)[:80]!r}: {problem}.")
        want, got = [w.lower() for w in prompt_words(p)], c.lower().split()
        out.append(0.0 if len(got) != len(want) else sum(a == b for a, b in zip(got, want)) / len(want))
    return out


class SequenceClassifierJudge:
    """Any AutoModelForSequenceClassification with one label as a reward model (e.g. one trained by TRL's
    RewardTrainer): score = its logit on the ids TRL's RewardTrainer trains on, bos + tokenizer(prompt + response)
    + eos for text, the chat template of prompt + response for messages (`preflab.reward_models.interface.
    RewardModel`)."""

    def __init__(self, path: str, trust_remote_code: bool = False, batch_size: int = 8):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from preflab.reward_models.interface import RewardModel

        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=trust_remote_code, use_safetensors=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if self.model.config.num_labels != 1:
            raise ConfigError(
                f"{path}: a transformers sequence classifier is judged by its one logit (a scalar reward, as TRL's "
                f"RewardTrainer trains), and this one has num_labels {self.model.config.num_labels}. Give a model "
                "with num_labels 1, or a preflab reward-model directory (preflab train with task: reward records its "
                "head, BT or GPM, in config.json under preflab_reward, which says how it judges).")
        self.batch_size = batch_size
        self.reward = RewardModel(self.model, self.tokenizer, batch_size=batch_size)
        self.__name__ = Path(path).name

    @torch.no_grad()
    def score(self, prompts, responses) -> torch.Tensor:
        return self.reward.score(list(prompts), list(responses)).float()


def resolve_judge(spec: Any, trust_remote_code: bool = False):
    """One judge from its config name (see the module docstring); objects and callables are returned as is."""
    if not isinstance(spec, str):
        return spec
    if spec == "demo_true_reward":
        return demo_true_reward
    if spec == "demo_echo_reward":
        return demo_echo_reward
    name, _, path = spec.partition(":")
    if path and name.startswith("maxmin") and "." not in name and "/" not in name:  # MaxMin-RLHF (em_mixture run)
        from preflab.errors import nearest
        from preflab.reward_models.maxmin_aggregate import load_maxmin_judge

        if name not in MAXMIN_JUDGES:
            raise ConfigError(f"reward_funcs: {spec!r}: no max-min judge {name!r}; they are "
                              f"{', '.join(n + ':<dir>' for n in MAXMIN_JUDGES)}.{nearest(name, list(MAXMIN_JUDGES))}")
        return load_maxmin_judge(path, MAXMIN_JUDGES[name])
    if spec.startswith("verifier:"):
        import preflab.verifiers as verifiers

        name = spec.split(":", 1)[1]
        if not hasattr(verifiers, name):
            raise ConfigError(f"reward_funcs: preflab.verifiers has no {name!r}; it has {verifiers.__all__}.")
        return getattr(verifiers, name)
    path = Path(spec)
    if path.is_dir():
        from preflab.models.load import REWARD_CONFIG_KEY

        config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
        # a transformers classifier (TRL's RewardTrainer) is judged by its logit; a preflab reward model (its head
        # described under REWARD_CONFIG_KEY; a head on a bare backbone saves the backbone's *Model architecture)
        # by load_judge
        if REWARD_CONFIG_KEY not in config and any(
                a.endswith("ForSequenceClassification") for a in config.get("architectures", [])):
            return SequenceClassifierJudge(str(path), trust_remote_code)
        from preflab.reward_models.interface import load_judge

        return load_judge(str(path))
    if ":" in spec:
        from preflab.plugins import import_object

        return import_object(spec, "reward_funcs")
    if path.suffix == ".py" and path.is_file():
        from preflab.plugins import file_top_level_names

        raise ConfigError(f"reward_funcs: {spec!r} is a Python file without the function to call; write "
                          f"{spec}:FUNCTION{file_top_level_names(path)}.")
    if ("/" in spec or "\\" in spec) and not path.exists():
        raise ConfigError(f"reward_funcs: {spec!r}: no such file or directory (relative paths are read from "
                          f"{Path.cwd()}); give a reward model directory or path/to/file.py:FUNCTION.")
    from preflab.errors import nearest

    raise ConfigError(f"reward_funcs: {spec!r} is not demo_true_reward, demo_echo_reward, verifier:<name>, "
                      "module:function, path/to/file.py:function or an existing model directory."
                      f"{nearest(spec, ['demo_true_reward', 'demo_echo_reward'])}")


def demo_evaluate(heldout: list[str]):
    def evaluate(model, tokenizer) -> dict:
        from preflab.demo.run import heldout_reward

        reward, examples = heldout_reward(model, tokenizer, heldout)
        return {"true_reward": reward, "examples": examples[:4], "per_prompt": [e["true_reward"] for e in examples]}

    return evaluate


def load_task(cfg, tokenizer=None, policy=None):
    """(Task, tokenizer, policy or None): policy is built here only for builtin:demo-sft (with every prompt source:
    the demo's model on your own prompts was an OSError, 'Repo id must use alphanumeric chars')."""
    if cfg.model_name_or_path == DEMO_SFT and tokenizer is None:
        from preflab.models.tiny import tiny_tokenizer

        tokenizer = tiny_tokenizer("char")
    if cfg.model_name_or_path == DEMO_SFT and policy is None:
        from preflab.demo.sft_model import demo_sft_model

        policy = demo_sft_model(cfg, tokenizer)
    if cfg.online_task == "demo":
        from preflab.demo.task import make_splits

        _, pair_rows, heldout = make_splits(0)
        judges = [resolve_judge(j, cfg.trust_remote_code) for j in _as_list(cfg.reward_funcs or "demo_true_reward")]
        held = heldout[:cfg.heldout_prompts]
        prompts = [r["prompt"] for r in pair_rows]
        if getattr(cfg, "mcts_value", "rollout") == "self_eval":  # MCTS-DPO's grading prompt shows the gold answer
            prompts = [{"prompt": r["prompt"], "solution": r["chosen"]} for r in pair_rows]
        return Task(prompts, judges, held, demo_evaluate(held),
                    reward_aggregator=_aggregator(cfg, judges)), tokenizer, policy
    from preflab.data.rows import load_rows

    if not cfg.dataset_name and not cfg.environment_factory:
        raise ConfigError("online_task: dataset needs dataset_name (rows with a 'prompt' column); or use "
                          "online_task: demo / game.")
    if not cfg.reward_funcs and not cfg.environment_factory:  # environments with get_reward: their own judges
        raise ConfigError("online_task: dataset needs reward_funcs (a judge: verifier:<name>, module:function, or a "
                          "reward / preference model directory).")
    refuse_template_kwargs_with_model_judges(cfg)
    judges = [resolve_judge(j, cfg.trust_remote_code) for j in _as_list(cfg.reward_funcs or [])]
    if not cfg.dataset_name:  # environment_factory without a dataset: the environment's reset gives the prompts
        return reset_only_task(cfg, judges), tokenizer, policy
    from preflab.runlog import is_main_process

    from preflab.data.eval_set import train_and_eval
    from preflab.data.report import refuse_empty

    from preflab.data.configured_source import training_source

    from preflab.data.rows import prompt_from_reset

    # environment_factory: a row without a 'prompt' key is TRL 1.16's environment row (reset gives its prompt)
    optional = bool(cfg.environment_factory)
    rows, report = load_rows(training_source(cfg), split=cfg.dataset_split, kind="prompt", on_bad_row=cfg.on_bad_row,
                             prompt_optional=optional)
    if is_main_process():  # skipped prompt rows are said, as for preference data
        print(f"preflab: data: {report.summary()}")
    refuse_empty(report, "dataset_name", cfg.dataset_name)
    # eval_dataset_name / eval_fraction: held-out prompts answered greedily and judged (they were read by nothing)
    rows, eval_rows, _ = train_and_eval(cfg, rows, lambda name, split: load_rows(name, split=split, kind="prompt",
                                                                                 on_bad_row=cfg.on_bad_row,
                                                                                 prompt_optional=optional))
    from preflab.data.overlap import overlap_notes, overlap_report

    # the held-out prompts that are training prompts too (a repeated prompt, an eval_dataset_name sharing rows):
    # counted in summary.json data.overlap as for preference rows, and said (rows without a prompt, whose prompt
    # reset gives, are not compared: their placeholders are all alike)
    overlap = overlap_report([ex for ex in rows if not prompt_from_reset(ex)],
                             [ex for ex in eval_rows if not prompt_from_reset(ex)])
    if is_main_process():
        for note in overlap_notes(overlap, len(eval_rows), repeats=False):
            print(f"preflab: note: data: {note}")
        note_rows_without_prompt(rows, eval_rows, report.source)
    prompts, held = prompt_dicts(rows), prompt_dicts(eval_rows)
    gaps = column_gaps([(ex.row_id, ex.extras) for ex in rows])
    if gaps:
        report.column_gaps = gaps
        if is_main_process():
            print(f"preflab: note: data: {column_gaps_note(gaps, len(rows), report.source)}")
    refuse_prompts_demo_judges_cannot_score(judges, cfg.reward_funcs, [(report.source, rows), (
        f"the eval prompts ({cfg.eval_dataset_name or 'eval_fraction of ' + str(report.source)})", eval_rows)])
    aggregator = _aggregator(cfg, judges)
    held_places = read_places(eval_rows)
    evaluate = dataset_evaluate(cfg, held, judges, aggregator, held_places) if held else None
    return Task(prompts, judges, held, evaluate, data_report={"prompt_rows": report.to_dict(), "overlap": overlap},
                reward_aggregator=aggregator, prompt_places=read_places(rows), heldout_places=held_places), \
        tokenizer, policy


def read_places(examples) -> list[str]:
    """Where each row was read ('train.jsonl row 5 (line 6)', data.report.where; "" unknown): environment_factory's
    refusals name a row by it."""
    from preflab.data.report import place_of, where

    return [where(file, ex.row_id, line) if file else "" for ex in examples for file, line in [place_of(ex)]]


def prompt_dicts(examples) -> list[dict]:
    """The Task's prompt rows: {"prompt": ..., **columns}; a row read without a prompt (environments.py: TRL's
    environment row, rows.prompt_from_reset) stays without the key, as TRL's row is, so that OnlineRun gives it the
    empty user message and reset its other columns only (environments.default_prompts)."""
    from preflab.data.rows import prompt_from_reset

    return [dict(ex.extras) if prompt_from_reset(ex) else {"prompt": ex.prompt, **ex.extras} for ex in examples]


def note_rows_without_prompt(rows, eval_rows, source) -> None:
    """Says how many training and held-out rows have no prompt (their prompt is environment_factory's reset's text;
    counted in summary.json data.prompt_rows.forms.no_prompt)."""
    from preflab.data.rows import prompt_from_reset

    n, m = sum(map(prompt_from_reset, rows)), sum(map(prompt_from_reset, eval_rows))
    if n or m:
        print(f"preflab: data: {n} of {len(rows)} training rows" + (f" and {m} of {len(eval_rows)} held-out rows"
                                                                     if eval_rows else "") +
              f" of {source} have no 'prompt': each one's prompt is the text environment_factory's reset returns "
              "(TRL's default: one empty user message), drawn under a seed per prompt and round.", flush=True)


def reset_only_task(cfg, judges: list, held_out: bool = True) -> Task:
    """online_task: dataset with environment_factory and no dataset_name (TRL's GRPOTrainer without train_dataset):
    prompts_per_generation placeholder rows (environments.reset_only_prompts: TRL's one round of empty user
    messages), their text from reset each round; eval_dataset_name's rows are the held-out evaluation as usual, each
    reset under a seed of its own (dataset_evaluate's reset_seed_base), the same before and after training.
    Refused (environments.check_reset_only): several environments, no max_steps, eval_fraction. summary.json's
    data.prompt_rows says where the prompts come from and how many rows a round has. held_out False (grpo_train from
    Python): no held-out set read."""
    from preflab.data.eval_set import train_and_eval
    from preflab.data.rows import load_rows
    from preflab.online.environments import check_reset_only, heldout_reset_seed_base, reset_only_prompts

    check_reset_only(cfg, isinstance(cfg.environment_factory, dict))
    n = cfg.prompts_per_generation
    eval_rows = train_and_eval(cfg, [], lambda name, split: load_rows(name, split=split, kind="prompt",
                                                                       on_bad_row=cfg.on_bad_row,
                                                                       prompt_optional=True))[1] if held_out else []
    held = prompt_dicts(eval_rows)
    heldout_places = read_places(eval_rows)
    aggregator = _aggregator(cfg, judges)
    # the held-out resets: seeded from the seed of "round -1" (OnlineRun._round_seed's formula), apart from the rounds'
    evaluate = dataset_evaluate(cfg, held, judges, aggregator, heldout_places,
                                reset_seed_base=heldout_reset_seed_base(cfg.seed)) if held else None
    report = {"source": "environment_factory reset (no dataset)", "total": n, "kept": n, "skipped": {}}
    from preflab.runlog import is_main_process

    if is_main_process():  # said as a dataset's rows are
        print(f"preflab: data: no dataset: each round's {n} prompts (prompts_per_generation) are the text "
              "environment_factory's reset returns, drawn under a seed per prompt and round.", flush=True)
    return Task(reset_only_prompts(n), judges, held, evaluate, data_report={"prompt_rows": report},
                reward_aggregator=aggregator, heldout_places=heldout_places, prompts_from_reset=True)


def refuse_template_kwargs_with_model_judges(cfg) -> None:
    """chat_template_kwargs beside a reward model judge (a model folder, a max-min judge): TRL's GRPOTrainer passes
    them to the reward model's chat template too, and preflab's model judges render prompt + completion with their
    own template without them, so the judge would score other text than TRL's; refused rather than run so."""
    if not cfg.chat_template_kwargs:
        return
    models = [j for j in _as_list(cfg.reward_funcs) if isinstance(j, str) and (
        Path(j).expanduser().is_dir() or (j.partition(":")[0].startswith("maxmin") and ":" in j))]
    if models:
        raise ConfigError(f"chat_template_kwargs with the reward model judge {models[0]!r}: TRL's GRPOTrainer renders "
                          "a reward model's conversations with them too, and preflab's model judges render with "
                          "their own template only. Remove chat_template_kwargs (or give each prompt row a "
                          "chat_template_kwargs column, which reaches the policy's template alone), or judge with "
                          "reward functions.")


def refuse_prompts_demo_judges_cannot_score(judges: list, names, sources: list[tuple[str, list]]) -> None:
    """A ConfigError when a judge is the demo task's (demo_true_reward, demo_echo_reward) and a prompt row of
    `sources` ((what the rows are, Examples) each) is not a loud-echo prompt: those judges score only the demo's
    prompts, and the run stopped at its first round with 'judge raised IndexError' (no word of why)."""
    from preflab.demo.task import PROMPT_FORM, prompt_problem

    demo = [_label(j) for j in judges if j is demo_true_reward or j is demo_echo_reward]
    if not demo:
        return
    for source, rows in sources:
        bad = [(ex, prompt_problem(ex.prompt)) for ex in rows if prompt_problem(ex.prompt) is not None]
        if bad:
            ex, problem = bad[0]
            raise ConfigError(
                f"reward_funcs: {' and '.join(demo)} {'score' if len(demo) > 1 else 'scores'} only the demo task's "
                f"prompts ({PROMPT_FORM}), and "
                f"{len(bad)} of {len(rows)} prompt row(s) of {source} are not: the first, row {ex.row_id} "
                f"({str(ex.prompt)[:60]!r}): {problem}. To train on the demo task use online_task: demo (its 600 "
                "prompts); to train on these prompts give reward_funcs a judge for them: verifier:<name>, "
                "package.module:function, path/to/file.py:function or a reward model directory (docs/online.md: "
                f"the judges; reward_funcs was {names!r}).")


def _label(judge) -> str:
    return getattr(judge, "__name__", type(judge).__name__)


def column_gaps(rows: list[tuple[int, dict]]) -> dict[str, dict]:
    """{column: {"rows": n, "first_row": row id}} for each column that holds a value in some prompt rows ((source row
    id, the row's other columns) each) and is absent or null in n others. The reward functions get None for those
    rows (TRL passes a dataset's nulls the same way), so a judge that compares with an `answer` or `solution` column
    scores them against nothing: counted and said."""
    have: dict[str, int] = {}
    for _, columns in rows:
        for key, value in columns.items():
            if value is not None:
                have[key] = have.get(key, 0) + 1
    gaps = {}
    for key in sorted(have):
        missing = [row_id for row_id, columns in rows if columns.get(key) is None]
        if missing:
            gaps[key] = {"rows": len(missing), "first_row": missing[0]}
    return gaps


def column_gaps_note(gaps: dict[str, dict], n_rows: int, source: str) -> str:
    parts = ", ".join(f"{key!r} in {g['rows']} of {n_rows} (first: row {g['first_row']})" for key, g in gaps.items())
    return (f"{source}: column(s) absent or null in some prompt rows: {parts}. The reward functions get None for "
            "those rows (as TRL passes a dataset's nulls); fill the column or drop those rows if the judge needs it "
            "(summary.json data.prompt_rows.column_gaps).")


def dataset_evaluate(cfg, prompts: list[dict], judges: list, aggregator=None, places=None, reset_seed_base=None):
    """evaluate(model, tokenizer) for online_task: dataset: greedy answers (max_completion_length new tokens) to the
    held-out prompt rows, or with num_generations_eval k that many sampled answers each (_eval_answers: TRL's
    GRPOTrainer evaluation), scored by the run's judges with reward_weights (not cached: the judges' own call).
    Returns {"reward": mean over the scored answers, "per_prompt": each prompt's answer's reward, the mean of its
    scored answers with k (NaN: none scored), "unscored": how many answers no judge scored (left out of the mean),
    "clipped_ratio": the fraction of answers cut at max_completion_length without EOS, "examples": the first 4};
    the run logs eval_reward, eval_win_rate_vs_reference (per prompt against the starting policy's answer, ties 1/2,
    unscored prompts left out), eval_judge/dropped and eval_completions/clipped_ratio (TRL's name, as its GRPO eval
    logs it).

    With the run's tools (evaluate(..., tools=[fn, ...], accelerator=acc): OnlineRun passes them; `takes_tools` says
    this evaluate can) the held-out prompts are rendered with the tools and answered through the tool-calling loop
    (preflab.online.tool_calling.ToolCallingGenerator around EvalTurns: the same greedy or sampled answers, the same
    tool_timeout_s, max_tool_calling_iterations and budget as training; with several processes the main process
    runs the calls); the judges get the conversations and the num_tool_calls / tool_errors columns as in training, a
    completion is clipped when its last token is not eos, and "tools" holds the loop's metrics (tools/call_frequency,
    ...; the run logs them as eval_tools/...).

    With the run's environments (environments=: preflab.online.environments.Environments, OnlineRun passes them;
    `takes_environments`) every held-out answer gets a fresh instance reset with its row, as in training
    (begin_rollouts: each prompt shows its own environment's tools, a reset's text is appended to it), the loop calls
    that instance's methods, and the judges are reward_funcs plus the environments' get_reward, each answer judged
    with its own instance (judge_rollouts; with several processes the main process makes every environment call).

    Several processes (accelerator= of several): every process answers every held-out prompt (the same answers:
    the same weights, greedy or drawn from the same seed), and the main process alone judges them and sends the
    scores, the count of answers a judge raised on and the first such error to the others
    (preflab.rank_agreement.main_result: its failure, a judge timeout or a refusal, is sent in their place and raised
    on every process), so each judge runs once per answer and every process holds the main's result. The stretches
    each process runs on its own before the next exchange (rendering the prompts, answering them) end in an
    agreement (ranks_agree): a failure on one process stops every process with its error. "judge_failed" counts the
    answers a judge raised on (scored NaN, within "unscored"), "judge_failure" says the first one's error (''
    without), "answers" is how many were judged: OnlineRun logs eval_judge/failed and says them in a note.
    places (per held-out row, where it was read; data.report.where): a refusal naming a row (an unknown
    `environment`, a reset that raised) names it as a held-out prompt of that file and line. reset_seed_base (a run
    without a dataset, reset_only_task): held-out row p is reset under the global generators seeded with
    environments.reset_seed(reset_seed_base, p), so the evaluations before and after training pose the same tasks."""
    def evaluate(model, tokenizer, tools=None, accelerator=None, environments=None) -> dict:
        import math

        from preflab.loops.judge import Judge
        from preflab.loops.rollout import decode, prepare_prompts
        from preflab.rank_agreement import main_result, ranks_agree

        from preflab.online.environments import row_places

        def agreed(stretch: str):  # a stretch every process runs on its own, agreed before the next exchange
            return ranks_agree(f"the evaluation of the held-out prompts failed while {stretch}")

        envs, place = environments, row_places("held-out (eval) prompt", places)
        env_tools = (lambda ex: envs.tools[envs.name_of(ex.row_id, ex.extras, place)])
        row_tools = env_tools if envs is not None else tools or None
        k = getattr(cfg, "num_generations_eval", None) or 1
        sampled = bool(getattr(cfg, "num_generations_eval", None))
        with agreed("rendering the held-out prompts"):
            rows_in, absent = prompts, frozenset()
            if envs is not None:  # rows without a prompt: TRL's empty user message, reset's text (as in training)
                from preflab.online.environments import default_prompts

                rows_in, absent = default_prompts(prompts)
            prompt_rows = prepare_prompts(rows_in, tokenizer, cfg.max_prompt_length,
                                          truncation_mode=cfg.truncation_mode,
                                          chat_template_kwargs=cfg.chat_template_kwargs, tools=row_tools)
            gen = _eval_tool_generator(cfg, model, tokenizer, tools, accelerator, sampled) if tools else None
        instances = slot_tools = None
        if envs is not None:
            from preflab.online.environments import begin_rollouts, heldout_reset_seed_base, reset_seed

            seeds = None if reset_seed_base is None else [reset_seed(reset_seed_base, p)
                                                          for p in range(len(prompt_rows))]
            if seeds is None and absent:  # rows without a prompt: a seed each, the same before and after training
                seeds = [reset_seed(heldout_reset_seed_base(cfg.seed), p) if p in absent else None
                         for p in range(len(prompt_rows))]
            prompt_rows, instances, slot_tools, _ = begin_rollouts(envs, prompt_rows, k, tokenizer, cfg, accelerator,
                                                                    place, seeds, no_prompt=absent)
        rows = [r for r in prompt_rows for _ in range(k)]          # each prompt's k answers side by side
        columns, extra = [r.columns for r in rows], {}
        with agreed("answering the held-out prompts"):  # (the tool loop agrees its own stretches inside)
            if gen is not None:
                gen.slot_tools = slot_tools
                ids = gen.generate([r.prompt_ids for r in prompt_rows], k, cfg.seed)
                texts = [list(m) for m in gen.last_messages]
                columns = [{**c, **info} for c, info in zip(columns, gen.last_columns)]
                clipped = sum(not c or c[-1] != tokenizer.eos_token_id for c in ids)
                extra = {"tools": dict(gen.last_metrics)}
            else:
                ids = _eval_answers(cfg, model, tokenizer, [r.prompt_ids for r in rows], sampled=sampled)
                texts = [decode(tokenizer, c, isinstance(r.prompt, list)) for c, r in zip(ids, rows)]
                clipped = sum(tokenizer.eos_token_id not in c for c in ids)
        every, weights = judges, aggregator or cfg.reward_weights
        if envs is not None:
            from preflab.online.environments import with_environment_judges

            every, weights = with_environment_judges(judges, weights, envs)
        judge = Judge(every, weights=weights, cache=False, timeout_s=cfg.judge_timeout_s)
        judge.where = "the evaluation of the held-out prompts (eval_dataset_name / eval_fraction)"

        def judged():
            """The main process's scores of every held-out answer, how many a judge raised on and the first such
            error's text (every process holds every answer: each answered every held-out prompt)."""
            if envs is not None:  # the main holds the instances (begin_rollouts)
                from preflab.online.environments import judge_rollouts

                scores, _ = judge_rollouts(judge, None, [r.prompt for r in rows], texts,
                                           [i // k for i in range(len(rows))], columns, ids, instances)
            else:
                scores, _ = judge([r.prompt for r in rows], texts, [i // k for i in range(len(rows))], columns, ids)
            return scores, judge.last_raised, judge.failure_note().strip()

        scores, raised, failure = main_result(judged, accelerator,
                                              "the main process's judging of the held-out answers failed")
        values = scores.tolist()
        scored = [v for v in values if not math.isnan(v)]
        per_prompt = [_nan_mean(values[p * k:(p + 1) * k]) for p in range(len(prompt_rows))]
        return {"reward": sum(scored) / len(scored) if scored else math.nan, "per_prompt": per_prompt,
                "unscored": len(values) - len(scored), "judge_failed": raised, "judge_failure": failure,
                "answers": len(values), "clipped_ratio": clipped / max(len(ids), 1),
                "examples": [{"prompt": r.prompt, "response": t, "reward": v}
                             for r, t, v in list(zip(rows, texts, values))[:4]], **extra}

    evaluate.takes_tools = True
    evaluate.takes_environments = True
    evaluate.takes_accelerator = True
    return evaluate


class EvalTurns:
    """The held-out answers as a generator (online/generator.py's interface, which the tool-calling loop samples
    its turns from): generate(prompt_ids, k, seed) is _eval_answers on each prompt repeated k times, greedy or
    sampled from `seed`, with at most max_new_tokens new tokens (the loop lowers it to the budget left)."""

    def __init__(self, cfg, model, tokenizer, sampled: bool):
        self.cfg, self.model, self.tokenizer, self.sampled = cfg, model, tokenizer, sampled
        self.max_new_tokens = cfg.max_completion_length

    def generate(self, prompt_ids: list[list[int]], num_generations: int, seed: int) -> list[list[int]]:
        rows = [p for p in prompt_ids for _ in range(num_generations)]
        return _eval_answers(self.cfg, self.model, self.tokenizer, rows, self.sampled, seed=seed,
                             max_new_tokens=self.max_new_tokens)


def _eval_tool_generator(cfg, model, tokenizer, tools, accelerator, sampled: bool):
    """The tool-calling loop around EvalTurns, with the run's tool options."""
    from preflab.models.load import max_positions
    from preflab.online.tool_calling import ToolCallingGenerator

    return ToolCallingGenerator(EvalTurns(cfg, model, tokenizer, sampled), tokenizer, tools,
                                cfg.max_tool_calling_iterations, cfg.max_completion_length, max_positions(model),
                                cfg.chat_template_kwargs, accelerator, cfg.tool_timeout_s)


def _nan_mean(values: list[float]) -> float:
    """The mean of the non-NaN values (a prompt's scored answers), NaN when none was scored."""
    import math

    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _eval_answers(cfg, model, tokenizer, prompt_ids: list[list[int]], sampled: bool, seed: int | None = None,
                  max_new_tokens: int | None = None) -> list[list[int]]:
    """The held-out prompts' answers: greedy (num_generations_eval unset), or sampled as the training rounds sample
    (temperature, top_p, top_k, min_p, repetition_penalty; TRL's GRPOTrainer evaluates with its generation settings)
    from the seed `seed`, the same draws at every evaluation, without touching the run's random state (the global
    generators are restored after, so the training steps and a resume are unchanged). seed / max_new_tokens: the
    tool-calling loop's (EvalTurns), else cfg.seed / max_completion_length."""
    from preflab.generate import generate_ids
    from preflab.loops.rollout import pad_id_of
    from preflab.online.generator import sampling_options

    max_new_tokens = cfg.max_completion_length if max_new_tokens is None else max_new_tokens
    common = dict(eos_id=tokenizer.eos_token_id, pad_id=pad_id_of(tokenizer), max_new_tokens=max_new_tokens,
                  batch_size=max(1, cfg.per_device_eval_batch_size))
    if not sampled:
        return generate_ids(model, prompt_ids, **common)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return generate_ids(model, prompt_ids, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=cfg.seed if seed is None else seed, **common, **sampling_options(cfg))


def _aggregator(cfg, judges):
    """The reward_aggregator (a PRO orchestrator folder) as prompts -> [N, K] weights, or None.

    The adapter's k-th weight multiplies reward_funcs' k-th judge, so the judges must be listed in the order of the
    adapter's reward_names (orchestrator.json): the same names in another order are refused (before, the swapped
    weights were applied without a word: a shout prompt's weight on loud_echo went to quiet_echo), and judges named
    otherwise than the adapter's reward functions get a note naming both lists (a name the adapter was fitted under
    may be a label, not the function's name)."""
    if not getattr(cfg, "reward_aggregator", None):
        return None
    from preflab.reward_models.pro_orchestrator import load_orchestrator

    if cfg.reward_weights is not None:
        raise ConfigError("reward_aggregator gives the weights over reward_funcs per prompt; remove reward_weights "
                          "(or reward_aggregator).")
    weights = load_orchestrator(cfg.reward_aggregator)
    if len(weights.reward_names) != len(judges):
        raise ConfigError(f"reward_aggregator {cfg.reward_aggregator} weighs {len(weights.reward_names)} reward "
                          f"functions {weights.reward_names}; reward_funcs lists {len(judges)}. List them in the "
                          "adapter's order.")
    from preflab.loops.judge import judge_names

    names = judge_names(judges)
    if names != list(weights.reward_names):
        if sorted(names) == sorted(weights.reward_names):
            raise ConfigError(f"reward_aggregator {cfg.reward_aggregator} weighs the reward functions in the order "
                              f"{list(weights.reward_names)}; reward_funcs lists them as {names}, so each weight would "
                              f"multiply another function's reward. List reward_funcs in the adapter's order.")
        print(f"preflab: note: reward_aggregator {cfg.reward_aggregator} was fitted over reward functions named "
              f"{list(weights.reward_names)}; reward_funcs' judges are named {names}: its k-th weight multiplies the "
              "k-th judge of reward_funcs.", flush=True)
    return weights


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]

