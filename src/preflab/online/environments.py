"""Stateful environments inside GRPO-family online runs, as TRL 1.16's GRPOTrainer(environment_factory=...) builds them.

    environment_factory: my_envs.py:Wordle          # config: a class or function returning a fresh environment
    environment_factory: {wordle: my_envs.py:Wordle, sudoku: my_envs:make_sudoku}   # several: the `environment` column
    OnlineRun(cfg, ..., environment_factory=Wordle)  # from Python (grpo_train(..., environment_factory=...) too)

An environment is the user's object (trusted code, as reward functions and `module:function` tools are; run in this
process). TRL's contract, kept here:
- it has a callable `reset` (a function of its class); a factory whose instance has none is refused at startup.
- its public methods (functions of its class not starting with "_", other than reset and get_reward) are its tools:
  the model sees their JSON schemas (transformers' get_json_schema, built from type hints and the docstring, as for
  `tools:`), rendered into the prompt by the chat template together with the run's standalone `tools:`. With several
  environments a prompt shows only its own environment's tools (and the standalone ones).
- `reset(**row)` is called once per rollout before sampling, with the prompt row's fields as keywords: `prompt` and
  every other column (with several environments, all but `environment`). It returns None or a string; a string is
  appended to the last message of the prompt (the prompt the model sees and the reward functions get).
- `get_reward()` (optional; no arguments; a float; may be async): the environment owns the reward. It becomes one more
  judge, named after the environment's class, weight 1 (after reward_funcs, whose reward_weights are unchanged), which
  scores the rollouts of that exact class (None, not applicable, for the others). reward_funcs may then be left out.
- every reward function that takes an `environments` keyword (a parameter of that name or **kwargs) receives the
  rollouts' environment instances, one per completion.

Rollout slots (start_round): every completion of a round has its own instance, made by the factory at the round's
start, so the K completions of a prompt never share state. TRL keeps a pool of instances across batches and relies on
`reset` to clear them; preflab makes fresh ones every round instead, so a round is a function of (seed, prompts,
weights, the environments' behaviour from construction) and a run resumed at any step repeats the uninterrupted one
(a round's rewards are computed when it is generated and checkpointed with it, so a resume mid-round never calls an
environment again). A factory or reset that draws unseeded randomness makes rounds irreproducible, as any reward
function that does.

The held-out evaluation (online/tasks.py dataset_evaluate) makes fresh instances per answer the same way
(begin_rollouts) and judges with them (judge_rollouts).

Several processes (OnlineRun): the main process holds the round's instances and makes every call of them once (reset,
tools, get_reward and the judging that reads them); the others receive what they returned.

The K resets of one prompt row must return the same observation: a group's completions answer one prompt (their
advantages compare them), so rows whose resets disagree are refused, naming the row. An observation that is not
None or a string (TRL's multimodal content blocks) is refused: text policies only.

Without a dataset (TRL 1.16's GRPOTrainer(train_dataset=None, environment_factory=...): no dataset_name in the
config, grpo_train(prompts=None)): the environment owns the data and its reset's text is the whole prompt. As TRL,
the rows are placeholders, one round's worth (prompts_per_generation = TRL's generation_batch_size / num_generations),
each the one empty user message [{"role": "user", "content": ""}], drawn again every round; reset(prompt=that) is
called per rollout and its text becomes the user message. One factory only, max_steps set (TRL's refusals).
preflab adds, for its guarantees: the factory call and reset of every rollout of round r's prompt p run with Python's
`random`, numpy's and torch's global generators seeded with reset_seed(round seed, p) (their states restored after),
so an environment drawing its task from them gives the K rollouts of a prompt one task, other prompts and rounds
other tasks, and a resumed or several-process run the same ones (TRL seeds nothing: its K rollouts of a placeholder
row may get K different tasks); a reset returning None or "" (an empty prompt) is refused.

Rows without a prompt (TRL 1.16 beside an environment: a dataset row without a `prompt` key, e.g. only an
`environment` column; default_prompts): the row's prompt is one empty user message, reset(**row) gets the row's
other fields only (no `prompt` keyword; with several environments not `environment` either) and its text becomes the
user message. A file may mix them with rows that have a prompt (TRL decides per row). As without a dataset, such a
row's prompt is reset's text alone, so: its K factory calls and resets run under seeded_globals(reset_seed(round
seed, p)) (p its place in the round; the held-out rows under heldout_reset_seed_base's), and a reset giving no text
is refused (TRL would train on the empty message). Rows with a prompt are reset unseeded, as before.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager

from preflab.errors import ConfigError

RESERVED = ("reset", "get_reward")
RESET_ONLY_PROMPT = ({"role": "user", "content": ""},)  # TRL's placeholder row's prompt, without a dataset


def default_prompts(prompts: list) -> tuple[list, frozenset]:
    """TRL 1.16's rule beside an environment (GRPOTrainer: x.get("prompt", [empty user message])): every dict row
    without a "prompt" key gets RESET_ONLY_PROMPT (one empty user message) as its prompt. Returns (the rows, those
    rows' positions: their reset gets no prompt keyword and its text is their prompt; Environments.start_round)."""
    absent = frozenset(i for i, row in enumerate(prompts) if isinstance(row, dict) and "prompt" not in row)
    if not absent:
        return list(prompts), absent
    return [{"prompt": [dict(m) for m in RESET_ONLY_PROMPT], **row} if i in absent else row
            for i, row in enumerate(prompts)], absent


def heldout_reset_seed_base(seed: int) -> int:
    """The seed base of the held-out rows without a prompt of a run with a dataset (reset_seed(base, p) for held-out
    row p): the formula of OnlineRun's round seed at round -1, apart from every training round's, the same before and
    after training (online/tasks.py reset_only_task seeds a run without a dataset's held-out rows so too)."""
    return (seed * 7919 - 1) * 100_003


def reset_only_prompts(n: int) -> list[dict]:
    """TRL's placeholder rows without a dataset: n rows whose prompt is one empty user message (reset's text becomes
    it)."""
    return [{"prompt": [dict(m) for m in RESET_ONLY_PROMPT]} for _ in range(n)]


def check_reset_only(cfg, multi: bool) -> None:
    """Refusals of a run without a dataset (prompts from reset): several environments (TRL: rows route by an
    `environment` column, which placeholder rows lack), no max_steps (TRL: the length is not defined) and
    eval_fraction (no rows to hold out; eval_dataset_name is read as usual)."""
    if multi:
        raise ConfigError("environment_factory {name: ...} (several environments) needs a dataset: each row names its "
                          "environment in an `environment` column. Give dataset_name, or one factory (TRL's rule).")
    if cfg.max_steps <= 0:
        raise ConfigError("environment_factory without a dataset (prompts come from reset) needs max_steps > 0: "
                          "with no rows, epochs do not define the run's length (TRL's rule). Set max_steps.")
    if cfg.eval_fraction:
        raise ConfigError(f"eval_fraction={cfg.eval_fraction} holds out dataset rows, and this run has none "
                          "(environment_factory without a dataset); give eval_dataset_name (held-out rows, answered "
                          "with the environments) or remove eval_fraction.")


def reset_seed(round_seed: int, position: int) -> int:
    """The seed of the global generators while round r's prompt `position` (0-based) is reset, without a dataset:
    (round_seed + 1_000_003 * (position + 1)) mod 2^32 (numpy takes 32 bits)."""
    return (round_seed + 1_000_003 * (position + 1)) % 2 ** 32


@contextmanager
def seeded_globals(seed: int | None):
    """Python's random, numpy's and torch's (CPU) global generators seeded with `seed` inside, their states restored
    after (the run's own randomness is unchanged); `seed` None: nothing done."""
    if seed is None:
        yield
        return
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


def load_environment_factories(spec) -> dict:
    """{None: factory} for one factory (a callable, or 'module:name' / 'path/to/file.py:name' naming a class or a
    function), {name: factory} for a mapping of them (rows pick theirs by their `environment` column)."""
    from preflab.plugins import import_object

    def one(item, where: str):
        fn = import_object(item, where) if isinstance(item, str) else item
        if not callable(fn):
            raise ConfigError(f"{where}: {item!r} is a {type(fn).__name__}, not a class or function returning an "
                              "environment.")
        return fn

    if isinstance(spec, dict):
        if not spec:
            raise ConfigError("environment_factory: the mapping is empty; give {name: module:Class, ...}.")
        for name in spec:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"environment_factory: environment names must be non-empty strings, got {name!r}.")
        return {name: one(item, f"environment_factory.{name}") for name, item in spec.items()}
    if isinstance(spec, (str,)) or callable(spec):
        return {None: one(spec, "environment_factory")}
    raise ConfigError(f"environment_factory: {spec!r} is neither a class or function ('module:name', "
                      "'path/to/file.py:name') nor a mapping {name: ...} of them.")


def public_methods(instance) -> list:
    """The instance's tools: the functions of its class (listed on the class, so properties are not evaluated) whose
    names neither start with "_" nor are reset / get_reward, bound to the instance, in name order (TRL's
    inspect.getmembers order)."""
    return [getattr(instance, name) for name, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction)
            if name not in RESERVED and not name.startswith("_")]


def _has_function(instance, name: str) -> bool:
    return any(n == name for n, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction))


def _label(name) -> str:
    return "environment_factory" if name is None else f"environment_factory.{name}"


def row_places(what: str, places=None):
    """place(row_id) -> where a prompt row is, for the messages that name it: its file, row and line when `places`
    (one data.report.where string per row) knows them, and `what` it is (a training or a held-out prompt):
    'train.jsonl row 5 (line 6), a training prompt'; else 'training prompt row 2' (its number among them)."""
    def place(row_id: int) -> str:
        if places and 0 <= row_id < len(places) and places[row_id]:
            return f"{places[row_id]}, a {what}"
        return f"{what} row {row_id}"

    return place


def _default_place(row_id: int) -> str:
    return f"prompt row {row_id}"


def _make(factory, name):
    try:
        return factory()
    except Exception as exc:  # the user's constructor: say which factory
        raise ConfigError(f"{_label(name)}: calling the factory raised {type(exc).__name__}: {exc}") from exc


def environment_reward(env_type):
    """The judge for environments of exactly `env_type` that own their reward: f(prompts, completions, environments)
    -> [env.get_reward() for an instance of env_type, else None] (an async get_reward is awaited). Named after the
    class, as TRL logs it."""
    from preflab.loops.judge import _awaited

    def reward(prompts, completions, environments=None, **kwargs):
        if environments is None:
            raise ConfigError(f"the {env_type.__name__} environment's reward (get_reward) was asked without the "
                              "rollouts' environments.")
        return [_awaited(e.get_reward()) if type(e) is env_type else None for e in environments]

    reward.__name__ = reward.__qualname__ = env_type.__name__
    return reward


class Environments:
    """The run's environment factories, probed once (module docstring): `tools[name]` (what a prompt of that
    environment shows and may call: the standalone tools, then the environment's methods), `all_tools` (their union,
    as TRL's self.tools), `reward_judges` (one per environment class with get_reward)."""

    def __init__(self, factories: dict, standalone_tools=()):
        from transformers.utils import get_json_schema

        self.factories, self.multi = dict(factories), None not in factories
        self.standalone = standalone = list(standalone_tools)
        self.tools, self.reward_judges, self.all_tools, reward_types = {}, [], list(standalone), []
        for name, factory in self.factories.items():
            probe = _make(factory, name)
            if not _has_function(probe, "reset"):
                raise ConfigError(f"{_label(name)}: the {type(probe).__name__} instance it returns has no reset "
                                  "method; every environment needs a callable reset (TRL's contract: it is called "
                                  "before each rollout, with the prompt row's fields as keywords).")
            methods = public_methods(probe)
            for method in methods:
                try:
                    get_json_schema(method)
                except Exception as exc:  # transformers' DocstringParsingException / TypeHintParsingException
                    raise ConfigError(f"{_label(name)}: method {type(probe).__name__}.{method.__name__}: transformers "
                                      f"cannot build its tool JSON schema ({exc}); give it type hints and a docstring "
                                      "with an Args: section, or make it private (a leading _).") from exc
            names = [fn.__name__ for fn in standalone + methods]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ConfigError(f"{_label(name)}: tools {repeated} are named twice (a standalone tool and a method "
                                  f"of {type(probe).__name__}); the model calls a tool by name, so rename one.")
            self.tools[name] = standalone + methods
            self.all_tools += [m for m in methods if m.__name__ not in {t.__name__ for t in self.all_tools}]
            if _has_function(probe, "get_reward") and type(probe) not in reward_types:
                reward_types.append(type(probe))
                self.reward_judges.append(environment_reward(type(probe)))

    def name_of(self, row_id: int, columns: dict, place=_default_place):
        """The environment row `row_id` asks for: None with one factory; with several its `environment` column,
        refused when absent or not one of the factories' names, naming the row by place(row_id) (row_places: which
        prompts, training or held-out, and the row's file)."""
        if not self.multi:
            return None
        name = columns.get("environment")
        if not isinstance(name, str) or name not in self.factories:
            raise ConfigError(f"{place(row_id)}: environment {name!r} is not one of environment_factory's "
                              f"{sorted(self.factories)}; with several environments each row names its own in an "
                              "'environment' column.")
        return name

    def reset_kwargs(self, row, with_prompt: bool = True) -> dict:
        """What reset receives: the row's prompt and columns (without `environment` with several factories); a row
        without a prompt of its own (with_prompt False; default_prompts): its columns only, as TRL's row."""
        fields = {"prompt": row.prompt, **row.columns} if with_prompt else dict(row.columns)
        return {k: v for k, v in fields.items() if k != "environment"} if self.multi else fields

    def start_round(self, rows, k: int, place=_default_place, seeds=None, text_required=False,
                    no_prompt=frozenset()) -> tuple[list, list]:
        """(instances, observations): k fresh instances per row (completion i of row i // k has instances[i]), each
        reset with the row's fields; observations[p] is row p's reset result (None or a string), the same for its k
        resets (refused otherwise, naming the row by place(row_id)). seeds (without a dataset: one per row): each of
        row p's k factory calls and resets runs under seeded_globals(seeds[p]). text_required (the training rounds
        without a dataset, whose prompt is reset's text): a reset giving no text (None or "") is refused. no_prompt:
        the row_ids of rows without a prompt of their own (default_prompts): reset without the prompt keyword, and
        a reset giving no text refused, naming the row."""
        instances, observations = [], []
        for p, row in enumerate(rows):
            name = self.name_of(row.row_id, row.columns, place)
            seen = []
            for _ in range(k):
                with seeded_globals(None if seeds is None else seeds[p]):
                    env = _make(self.factories[name], name)
                    seen.append(self._reset(env, row, place, row.row_id not in no_prompt))
                instances.append(env)
            first = seen[0]
            if row.row_id in no_prompt and (first is None or first == ""):
                raise ConfigError(f"{place(row.row_id)}: the row has no 'prompt', so its prompt is the text "
                                  f"{type(instances[-1]).__name__}.reset returns (TRL's default: one empty user "
                                  f"message), and reset returned {first!r}; return the task's prompt (a non-empty "
                                  "string), or give the row a 'prompt'.")
            if text_required and (first is None or first == ""):
                raise ConfigError(f"{place(row.row_id)}: {type(instances[-1]).__name__}.reset returned {first!r}; "
                                  "without a dataset the prompt is reset's text alone, so it must return the task's "
                                  "prompt (a non-empty string), or give the run a dataset (dataset_name).")
            if first is not None and not isinstance(first, str):
                raise ConfigError(f"{place(row.row_id)}: {type(instances[-1]).__name__}.reset returned a "
                                  f"{type(first).__name__}; it must return None or a string (appended to the last "
                                  "message of the prompt). Content blocks (images) are not taken: text policies only.")
            if any(s != first for s in seen[1:]):
                raise ConfigError(f"{place(row.row_id)}: the {k} resets of its rollouts returned different "
                                  f"observations ({[str(s)[:40] for s in seen[:3]]}...); a group's completions "
                                  "answer one prompt, so reset must return the same observation for the same row "
                                  "(seed any randomness from the row's fields).")
            observations.append(first)
        return instances, observations

    def _reset(self, env, row, place=_default_place, with_prompt: bool = True):
        """env.reset(**row fields); what it raises becomes a ConfigError naming the row and the keywords."""
        kwargs = self.reset_kwargs(row, with_prompt)
        try:
            return env.reset(**kwargs)
        except Exception as exc:  # the user's reset: say which row and what it was given
            raise ConfigError(f"{place(row.row_id)}: {type(env).__name__}.reset raised {type(exc).__name__}: {exc} "
                              f"(it is called with the row's fields as keywords: {sorted(kwargs)}; give it **kwargs "
                              "for the ones it does not read).") from exc

    def slot_tools(self, instances: list) -> list[list]:
        """Per rollout, the tools it may call: the standalone tools, then its own instance's methods."""
        return [self.standalone + public_methods(env) for env in instances]


def with_environment_judges(judges: list, weights, envs) -> tuple[list, object]:
    """(judges, weights) with one judge per environment class that has get_reward appended (TRL's extra reward
    source, weight 1): reward_weights (one per reward function) get a 1 each; a reward_aggregator (prompt-aware
    weights over reward_funcs) cannot weigh them and is refused; neither reward_funcs nor get_reward: refused."""
    extra = envs.reward_judges
    if not judges and not extra:
        raise ConfigError("environment_factory: no reward source: give reward_funcs, or an environment with a "
                          "get_reward method (TRL's rule).")
    if extra and callable(weights):
        raise ConfigError("reward_aggregator weighs reward_funcs per prompt; it cannot weigh the environments' "
                          "get_reward too. Remove one of them.")
    if extra and weights is not None:
        if len(weights) != len(judges):
            raise ConfigError(f"reward_weights has {len(weights)} weights for {len(judges)} reward_funcs; give one "
                              "per reward function (the environments' get_reward rewards weigh 1 each).")
        weights = list(weights) + [1.0] * len(extra)
    return list(judges) + extra, weights


def begin_rollouts(envs, rows, k: int, tokenizer, cfg, accelerator=None, place=_default_place, seeds=None,
                   text_required=False, no_prompt=frozenset()) -> tuple[list, list | None, list, int]:
    """(rows, instances, slot_tools, cut) for k rollouts of each row: fresh instances reset with the row's fields
    (Environments.start_round; with several processes only the main process holds them, instances None elsewhere, and
    sends the observations); each row whose reset returned text gets it appended to its last message and is
    tokenized again with its environment's tools (prepare_prompts with cfg's max_prompt_length, truncation_mode and
    chat_template_kwargs; `cut` counts those cut to max_prompt_length); slot_tools: per rollout, what it may call (its
    instance's methods; another process's: the probe's, for parsing only). place: names a row in refusals
    (row_places). seeds, text_required: without a dataset; no_prompt: rows without a prompt (Environments.start_round)."""
    from dataclasses import replace

    from preflab.loops.rollout import prepare_prompts

    from preflab.rank_agreement import main_result

    held = [None]  # the main process's instances (None on the others)

    def started() -> list:
        held[0], observations = envs.start_round(rows, k, place, seeds, text_required, no_prompt)
        return observations

    # what start_round raises (a refusal, a user's error) is sent in the observations' place: every process raises it
    observations = main_result(started, accelerator, "environment_factory: the main process's resets failed")
    instances = held[0]
    out, cut = [], 0
    for row, observation in zip(rows, observations):
        if observation is None:
            out.append(row)
            continue
        report: dict = {}
        fresh = prepare_prompts([{"prompt": with_observation(row.prompt, observation), **row.columns}], tokenizer,
                                cfg.max_prompt_length, report_to=report, truncation_mode=cfg.truncation_mode,
                                chat_template_kwargs=cfg.chat_template_kwargs,
                                tools=envs.tools[envs.name_of(row.row_id, row.columns, place)])[0]
        cut += int(report.get("prompt_tokenize", {}).get("prompt_truncated", 0)) > 0
        out.append(replace(fresh, row_id=row.row_id))
    slot_tools = envs.slot_tools(instances) if instances is not None else \
        [envs.tools[envs.name_of(row.row_id, row.columns, place)] for row in rows for _ in range(k)]
    return out, instances, slot_tools, cut


def judge_rollouts(judge, accelerator, prompts, texts, groups, columns, ids, instances):
    """The judge's (scores, per-function rewards) of rollouts with environments: each judged on its own (a cache
    context per rollout: its environment's state is no part of the texts), `environments=` given to the reward
    functions that take it. With several processes the main process, which holds the instances, judges and sends the
    values and judge.last_raised to the others (preflab.rank_agreement.main_result: whatever the judging raised, a
    judge timeout or a reward aggregator's own error, is sent in their place and raised on every process), so
    get_reward and every reward function run once."""
    from preflab.rank_agreement import main_result

    def judged():
        out = judge(prompts, texts, groups, columns, ids, [f"rollout {i}" for i in range(len(ids))],
                    environments=instances)
        return out[0], out[1], judge.last_raised

    if accelerator is None or accelerator.num_processes == 1:
        return judged()[:2]
    flat, per_fn, judge.last_raised = main_result(judged, accelerator,
                                                  "environment_factory: the main process's judges failed")
    return flat, per_fn


def with_observation(prompt: list, observation: str) -> list:
    """The prompt with `observation` appended to its last message's text (TRL: content + observation), a new list;
    a last message whose content is not text (content blocks) is refused (text policies only)."""
    if not isinstance(prompt[-1].get("content"), str):
        raise ConfigError(f"environment_factory: reset returned text to append to the prompt's last message, whose "
                          f"content is a {type(prompt[-1].get('content')).__name__}, not text (text policies only).")
    return prompt[:-1] + [{**prompt[-1], "content": prompt[-1]["content"] + observation}]


__all__ = ["RESET_ONLY_PROMPT", "Environments", "begin_rollouts", "check_reset_only", "default_prompts",
           "environment_reward", "heldout_reset_seed_base",
           "judge_rollouts", "load_environment_factories", "public_methods", "reset_only_prompts", "reset_seed",
           "row_places", "seeded_globals", "with_environment_judges", "with_observation"]
