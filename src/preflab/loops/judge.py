"""Judges for online loops: (prompt, completion) texts -> one float per completion, cached by (prompt, completion).

A judge is any of these, or a list of them combined with `weights` (TRL's `reward_weights`):

    reward function   f(prompts=[...], completions=[...], completion_ids=[...], **columns) -> list[float | None]
                      (TRL's signature; columns are the prompt rows' other fields, one entry per completion; for
                      image prompts also `images`, each completion's prompt images as PIL images, as TRL passes
                      its dataset's `images` column: given only to functions with an `images` parameter or **kwargs)
    reward model      obj.score(prompts, responses) -> Tensor [N] or list  (preflab.reward_models.interface.RewardFunction)
    preference model  obj.win_rate_matrix(prompt, responses) -> [K, K], P[i, j] = P(y_i > y_j | x); a completion's
                      score is its mean win rate against the other completions of its group (a Borda score)

    judge = Judge([true_reward_fn, rm], weights=[1.0, 0.5])
    scores, per_function = judge(prompts, completions, groups, columns)     # [N], [N, F] float64

Combination as in TRL (Shao et al., 2024, arXiv:2402.03300 use one reward; TRL sums several):
    r_i = nansum_k w_k r_i^(k), a None from a reward function is NaN (TRL's "not applicable").
A judge that *raises* on a completion is not "not applicable": that completion's combined score is NaN (dropped and
counted by the loops), whatever the other judges returned (it used to get the other judges' sum alone, a different
reward scale from its group's, without a word). TRL stops the run on any exception.
Async reward functions (`async def f(prompts, completions, **kwargs)`, as TRL 1.16 accepts) are awaited.
Pointwise judges (reward functions and reward models) are cached per function by a SHA-256 of (prompt, completion,
row columns, and the prompt's `cache_context` where given: e.g. a digest of an image prompt's pixels, which the
prompt's messages do not hold), so the same (prompt, completion) is scored once per run; `calls` counts the
completions the underlying judges actually saw and `cache_hits` the ones served from the cache. Preference-model
scores depend on the whole group and are not cached. Use `cache=False` for rewards that change over training (e.g.
schedules).

Time limit (`timeout_s`, the online option judge_timeout_s): each call of a judge's code (a reward function on a
batch, a reward model's score, a preference model's win_rate_matrix for one group, each one-completion retry after a
batch raised; the reward aggregator's prompt-aware weights) must return within timeout_s seconds, or the run stops
with JudgeTimeoutError naming the judge, where (`where`, e.g. "round 3 (optimizer step 5)", set by the run), the
limit and what to do; never a zero or skipped reward. None (the default): no limit, each call runs inline as before
(preflab.loops.time_limit). TRL has no limit: a reward function that never returns hangs its run.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from preflab.errors import ConfigError, JudgeTimeoutError
from preflab.loops.time_limit import call_within, checked_limit
from preflab.option_types import weight_value

# errors of a judge call that stop the run (re-raised, never counted as one completion's failure and retried)
STOPS = (ConfigError, JudgeTimeoutError)


def _key(prompt: Any, completion: Any, columns: dict, context: str | None = None) -> str:
    """context: what else the prompt holds that its JSON does not (e.g. a digest of its images); None for text."""
    blob = json.dumps([prompt, completion, columns] + ([context] if context is not None else []), sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _takes_keyword(fn: Any, name: str) -> bool:
    """Whether fn can be called with the keyword `name` (a parameter of that name or **kwargs); True when its
    signature cannot be read (TRL passes every keyword to every reward function)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    p = params.get(name)
    return (p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) or \
        any(q.kind == q.VAR_KEYWORD for q in params.values())


def _awaited(value):
    """The result of an async reward function's coroutine (TRL 1.16 awaits `async def` reward functions), run to
    completion here; any other value as is."""
    import inspect

    if not inspect.isawaitable(value):
        return value
    import asyncio

    async def wait():
        return await value

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    import concurrent.futures  # called from inside an event loop (a notebook): run it on a fresh loop elsewhere

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, wait()).result()


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def judge_names(judges) -> list[str]:
    """The judges' names as Judge gives them (a function's __name__, else its class name; repeats numbered):
    rewards/<name>/mean's <name>, and what a PRO adapter's reward_names are compared with."""
    return distinct_names([_name(j) for j in judges])


def not_applicable_counts(per_function: Tensor, scores: Tensor) -> list[int]:
    """Per judge, how many of the scored completions (a finite combined score in `scores` [N]) it returned None or NaN
    for (`per_function` [N, F]): TRL's "not applicable", which leaves the completion the other judges' weighted sum.
    With several judges nothing else shows it (a completion only drops when every judge gives None), so a judge that
    applies to no completion at all, such as a verifier reading a column the rows lack, left its weight out of every
    reward silently; the online run counts these and says so (summary.json online.judge_not_applicable)."""
    scored = ~scores.isnan()
    return [int((per_function[:, k].isnan() & scored).sum()) for k in range(per_function.shape[1])]


def distinct_names(names: list[str]) -> list[str]:
    """The judges' names as metric keys (rewards/<name>/mean): a name given before gets _2, _3, ... in list order,
    so two judges named alike (`score` of a.py and of b.py, or one function listed twice) log one key each instead
    of the second overwriting the first (TRL's reward_func_names collide there)."""
    out: list[str] = []
    for name in names:
        unique, k = name, 1
        while unique in out:
            k += 1
            unique = f"{name}_{k}"
        out.append(unique)
    return out


def _kind(fn: Any) -> str:
    if hasattr(fn, "win_rate_matrix"):
        return "preference"
    if hasattr(fn, "score"):
        return "reward_model"
    if callable(fn):
        return "function"
    raise ConfigError(f"judge {fn!r} is neither a reward function (callable), an object with .score(prompts, "
                      "responses), nor a preference model with .win_rate_matrix(prompt, responses).")


def _label(fn: Any) -> str:
    """'name' and, for a reward function, the file it is defined in: what an error about its return value names,
    so that the user knows which file to open ("judge 'f' (/path/rewards.py)")."""
    where = getattr(getattr(fn, "__code__", None), "co_filename", None)
    return f"{_name(fn)!r}" + (f" ({where})" if where else "")


def _floats(values, n: int, name: str) -> list[float]:
    """The judge's values as floats (None -> NaN; +-inf refused: no group mean or std survives it); `name` is the
    judge's _label. `n` is the number of completions it was called with: each distinct (prompt, completion) not yet
    judged, once (the cache answers the rest), which is why it can be fewer than the round's completions."""
    if isinstance(values, Tensor):
        values = values.detach().float().cpu().reshape(-1).tolist()
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise ConfigError(f"judge {name} returned {type(values).__name__} {values!r:.60}; it must return a list "
                          f"with one number (or None) per completion it is called with ({n} here).")
    values = list(values)
    if len(values) != n:
        raise ConfigError(f"judge {name} returned {len(values)} values when called with {n} completions (the "
                          "round's distinct (prompt, completion) pairs not judged before); it must return one "
                          "per completion in `completions`, in order (None where it does not apply).")
    out = []
    for v in values:
        try:
            if isinstance(v, (str, bytes)):
                raise TypeError
            out.append(math.nan if v is None else float(v))
        except (TypeError, ValueError):
            raise ConfigError(f"judge {name} returned {v!r:.60} ({type(v).__name__}) for a completion; each value "
                              "must be a number, or None where the judge does not apply.") from None
        if math.isinf(out[-1]):  # a group's mean and std would be inf / NaN: every advantage of the group lost
            raise ConfigError(f"judge {name} returned {out[-1]} for completion {len(out) - 1} of the {n} it was "
                              f"called with ({values[len(out) - 1]!r:.60}); a reward must be finite (an infinite "
                              "one makes its group's mean and std infinite or NaN, so no completion of the prompt "
                              "gets an advantage). Return a finite penalty (e.g. -1.0) instead, or None where the "
                              "judge does not apply.")
    return out


TRL_ONLY_ARGUMENTS = ("trainer_state", "log_extra", "log_metric")  # TRL 1.16 GRPOTrainer's extra reward kwargs


def _check_reward_signature(fn) -> None:
    """A reward function is called as fn(prompts=[...], completions=[...], completion_ids=[...], **columns): one that
    cannot take `prompts` and `completions` as keywords would raise TypeError on every call (every completion then
    dropped as a judge failure); said up front with the signature to write."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    missing = [k for k in ("prompts", "completions") if not _takes_keyword(fn, k)]
    if missing:
        where = getattr(getattr(fn, "__code__", None), "co_filename", None)
        raise ConfigError(f"reward function {_name(fn)!r}{f' ({where})' if where else ''} takes ({', '.join(params)})"
                          f" and cannot be called with {' and '.join(missing)}=...; preflab calls it as TRL does: "
                          "def f(prompts, completions, **kwargs) -> list of one float (or None) per completion.")


def _check_keywords_taken(fn, kwargs: dict) -> None:
    """A reward function without **kwargs that lacks a parameter for a keyword the call passes (`completion_ids`,
    a prompt row's other column) would raise TypeError on every completion: each one dropped as a judge failure and
    the round stopped with "raise max_judge_failure_fraction to train on the scored ones" (none is). Refused here,
    naming the keywords, before any completion is dropped."""
    import inspect

    lacking = sorted(key for key in kwargs if not _takes_keyword(fn, key))
    if not lacking:
        return
    where = getattr(getattr(fn, "__code__", None), "co_filename", None)
    raise ConfigError(f"reward function {_name(fn)!r}{f' ({where})' if where else ''} takes "
                      f"({', '.join(inspect.signature(fn).parameters)}) and cannot be called with "
                      f"{', '.join(k + '=...' for k in lacking)}: preflab calls it as TRL does, with prompts, "
                      "completions, completion_ids and the prompt row's other columns as keywords. Add **kwargs to "
                      "its parameters: def f(prompts, completions, **kwargs).")


def _check_trl_only_arguments(fn) -> None:
    """A TRL reward function that requires trainer_state / log_extra / log_metric would raise TypeError on every
    call here (each completion then scored NaN and counted as a judge failure, the cause unseen): said up front."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return
    needed = [p.name for p in params if p.name in TRL_ONLY_ARGUMENTS and p.default is inspect.Parameter.empty
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if needed:
        raise ConfigError(f"reward function {_name(fn)!r} requires {', '.join(needed)}, which TRL's GRPOTrainer "
                          "passes and preflab does not (preflab passes prompts, completions, completion_ids and the "
                          "prompt row's other columns); give it a default (e.g. trainer_state=None) or remove it.")


def checked_weights(weights: Sequence[Any]) -> list[float]:
    """reward_weights as floats; a weight that is not a finite number is a ConfigError naming its place and value."""
    out = []
    for i, weight in enumerate(weights):
        value = weight_value(weight)
        if value is None:
            raise ConfigError(f"reward_weights[{i}] = {weight!r} is not a finite number (reward_weights: {list(weights)!r}); "
                              "give one finite number per judge of reward_funcs, in their order (a NaN weight would "
                              "leave that judge out of every reward, an infinite one make every reward infinite).")
        out.append(value)
    return out


class Judge:
    """Scores completions with one or more judges (see the module docstring); callable."""

    def __init__(self, judges: Any | Sequence[Any], weights: Sequence[float] | None = None, cache: bool = True,
                 timeout_s: float | None = None):
        self.judges = list(judges) if isinstance(judges, (list, tuple)) else [judges]
        if not self.judges:
            raise ConfigError("give at least one judge (a reward function, a reward model or a preference model).")
        self.kinds = [_kind(j) for j in self.judges]
        for judge, kind in zip(self.judges, self.kinds):
            if kind == "function":
                _check_reward_signature(judge)
                _check_trl_only_arguments(judge)
        # a callable: prompt-aware weights, prompts -> [N, K] (PRO's adapter, preflab.reward_models.pro_orchestrator)
        self.aggregator = weights if callable(weights) else None
        self.weights = [1.0] * len(self.judges) if weights is None or self.aggregator else checked_weights(weights)
        if len(self.weights) != len(self.judges):
            raise ConfigError(f"reward_weights has {len(self.weights)} weights {self.weights} for "
                              f"{len(self.judges)} judge(s) {[_name(j) for j in self.judges]} (reward_funcs); give "
                              "one weight per judge, in the order of reward_funcs.")
        self.names = judge_names(self.judges)
        self._context_notes: set = set()  # (judge, context-aware) pairs already noted (_note_context)
        # a judge whose score depends on the batch it sees (MaxMin's group rule) is never served from a cache
        self.cache_enabled = cache and not any(getattr(j, "batch_dependent", False) for j in self.judges)
        self.caches: list[dict[str, float]] = [{} for _ in self.judges]
        self.calls = 0
        self.cache_hits = 0
        self.failed = 0  # completions whose judge call raised (scored NaN, never cached)
        self.first_failure: str | None = None  # "judge 'f': TypeError: ..." of the first call that raised
        self._raised = torch.zeros(0, dtype=torch.bool)  # per completion of the current call: some judge raised
        self.last_raised = 0  # completions of the last call dropped because a judge raised on them
        # seconds each call of a judge may take (None: no limit)
        self.timeout_s = checked_limit(timeout_s, "judge_timeout_s", "null")
        self.where = ""  # what the run is doing, for the time limit's error: "round 3 (optimizer step 5)"

    def timed(self, judge: Any, call: Callable[[], Any], n: int, role: str = "judge") -> Any:
        """call() (one call of `judge`'s code on n completions) within timeout_s; None: call() inline. role: what
        the error calls it ("judge", or "reward aggregator" for the prompt-aware weights)."""
        return call_within(call, self.timeout_s, lambda: self._timeout_error(judge, n, role))

    def _timeout_error(self, judge: Any, n: int, role: str = "judge") -> JudgeTimeoutError:
        where = f" in {self.where}" if self.where else ""
        return JudgeTimeoutError(
            f"{role} {_label(judge)} did not return within judge_timeout_s = {self.timeout_s:g} s{where} (one call on "
            f"{n} completion(s)); the run stops (the call is abandoned in a background thread: Python cannot stop "
            "it). Fix the judge so that it returns (a reward function that waits on a server, a lock or a subprocess "
            "needs its own timeout), or raise judge_timeout_s (null: no limit) if a call this long is expected.")

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], groups: Sequence[int] | None = None,
                 columns: Sequence[dict] | None = None,
                 completion_ids: Sequence[list[int]] | None = None,
                 cache_context: Sequence[str] | None = None,
                 images: Sequence[list] | None = None,
                 environments: Sequence[Any] | None = None) -> tuple[Tensor, Tensor]:
        """(scores [N], per_function [N, F]) in float64 for N completions; `groups[i]` names the group (one prompt
        instance) of completion i (needed by preference models), `columns[i]` its prompt row's other fields,
        `cache_context[i]` what else identifies its prompt in the cache key (not passed to the judges), `images[i]`
        its prompt's images (passed as `images` to the reward functions that take it, never hashed: the cache
        tells prompts with other images apart by cache_context, e.g. their pixels' digest), `environments[i]` the
        environment instance of completion i's rollout (environment_factory: passed as `environments` to the reward
        functions that take it, as TRL passes it; the caller gives each completion its own cache_context and a
        Judge without a cache, since the environment's state is no part of the key)."""
        n = len(completions)
        if len(prompts) != n:
            raise ConfigError(f"{len(prompts)} prompts for {n} completions; repeat each prompt once per completion.")
        if images is not None:
            if len(images) != n:
                raise ConfigError(f"{len(images)} image lists for {n} completions; give one per completion.")
            if cache_context is None and self.cache_enabled:
                raise ConfigError("images given to a caching Judge without cache_context: the cache would serve a "
                                  "prompt with other images another prompt's reward; give cache_context (e.g. "
                                  "preflab.online.vision.image_digest of each prompt's images) or cache=False.")
        columns = list(columns) if columns is not None else [{} for _ in range(n)]
        groups = list(groups) if groups is not None else list(range(n))
        per_function = torch.empty(n, len(self.judges), dtype=torch.float64)
        self._raised = torch.zeros(n, dtype=torch.bool)  # completions some judge raised on (filled by the calls)
        for k, (judge, kind) in enumerate(zip(self.judges, self.kinds)):
            if kind == "preference":
                per_function[:, k] = self._group_win_rates(judge, prompts, completions, groups)
            else:
                per_function[:, k] = self._pointwise(k, prompts, completions, columns, completion_ids,
                                                     cache_context, images, environments)
        weights = torch.tensor(self.weights, dtype=torch.float64) if self.aggregator is None else \
            self._prompt_weights(prompts)
        scores = (per_function * weights).nansum(-1)
        scores[per_function.isnan().all(-1) | self._raised] = math.nan
        self.last_raised = int(self._raised.sum())
        return scores, per_function

    def _prompt_weights(self, prompts) -> Tensor:
        """[N, K] weights of the aggregator for the N prompts (one row per completion)."""
        # user code in the round as a judge is (PRO's adapter): under the same judge_timeout_s
        w = self.timed(self.aggregator, lambda: self.aggregator(list(prompts)), len(prompts), "reward aggregator")
        w = torch.as_tensor(w).detach().to(torch.float64).cpu()
        if tuple(w.shape) != (len(prompts), len(self.judges)):
            raise ConfigError(f"the reward aggregator returned weights of shape {tuple(w.shape)} for {len(prompts)} "
                              f"prompts and {len(self.judges)} reward functions; it must return [prompts, functions].")
        return w

    def _pointwise(self, k: int, prompts, completions, columns, completion_ids, cache_context=None,
                   images=None, environments=None) -> Tensor:
        judge, cache = self.judges[k], self.caches[k]
        context = list(cache_context) if cache_context is not None else [None] * len(prompts)
        keys = [_key(p, c, col, ctx) for p, c, col, ctx in zip(prompts, completions, columns, context)]
        todo: dict[str, int] = {}  # key -> first index, each unseen (prompt, completion) once
        for i, key in enumerate(keys):
            if not (self.cache_enabled and key in cache) and key not in todo:
                todo[key] = i
        self.cache_hits += len(keys) - len(todo) if self.cache_enabled else 0
        if todo:
            idx = list(todo.values())
            values, ok = self._safe_call(judge, self.kinds[k], [prompts[i] for i in idx],
                                         [completions[i] for i in idx], [columns[i] for i in idx],
                                         None if completion_ids is None else [completion_ids[i] for i in idx],
                                         None if images is None else [images[i] for i in idx],
                                         None if environments is None else [environments[i] for i in idx])
            self.calls += len(idx)
            fresh = dict(zip(todo, values))
            if self.cache_enabled:
                cache.update({key: v for (key, v), good in zip(fresh.items(), ok) if good})
            failed = {key for key, good in zip(fresh, ok) if not good}
            if failed:
                self._raised |= torch.tensor([key in failed for key in keys])
        else:
            fresh = {}
        lookup = cache if self.cache_enabled else {}
        return torch.tensor([fresh[key] if key in fresh else lookup[key] for key in keys], dtype=torch.float64)

    def _safe_call(self, judge, kind, prompts, completions, columns, completion_ids,
                   images=None, environments=None) -> tuple[list[float], list]:
        """(values, ok): a judge that raises on the batch is retried one completion at a time; a completion whose
        call still raises scores NaN (dropped by the loops, counted in judge/failed, not cached)."""
        try:
            return self._call(judge, kind, prompts, completions, columns, completion_ids, images, environments), \
                [True] * len(prompts)
        except STOPS:
            raise
        except Exception:  # noqa: BLE001 - a judge is user code; each failure is counted, never silent
            values, ok = [], []
            for i in range(len(prompts)):
                try:
                    values += self._call(judge, kind, prompts[i:i + 1], completions[i:i + 1], columns[i:i + 1],
                                         None if completion_ids is None else completion_ids[i:i + 1],
                                         None if images is None else images[i:i + 1],
                                         None if environments is None else environments[i:i + 1])
                    ok.append(True)
                except STOPS:
                    raise
                except Exception as err:  # noqa: BLE001
                    values.append(math.nan)
                    ok.append(False)
                    self.failed += 1
                    self._note_failure(judge, err)
            return values, ok

    def _judgeable(self, judge, prompt, completions, idx: list[int]) -> list[int]:
        """The members of a group the preference judge takes one at a time; each one it raises on is counted in
        `failed` (and scores NaN: dropped by the loops like a failed pointwise call)."""
        kept = []
        for i in idx:
            try:
                self.win_rates(judge, prompt, [completions[i]])
                kept.append(i)
            except STOPS:
                raise
            except Exception as err:  # noqa: BLE001
                self.failed += 1
                self._note_failure(judge, err)
                self._raised[i] = True
        return kept

    def _note_context(self, name: str, aware: bool, given: bool) -> None:
        """Once per judge and case, a note where a reward model and the prompt rows disagree about contexts: a
        context-aware model (trained with contexts; Pitis et al. 2024) given rows without a `context` scores them
        unconditioned, and a model trained without contexts ignores the rows' `context`. Both ran without a word."""
        if aware == given or (name, aware) in self._context_notes:
            return
        self._context_notes.add((name, aware))
        if aware:
            print(f"preflab: note: judge {name} is a context-aware reward model (trained with contexts), but these "
                  "prompt rows give no `context`: it scores them without one. Add a `context` column to the prompt "
                  "rows to condition it.", flush=True)
        else:
            print(f"preflab: note: the prompt rows give a `context`, which judge {name} (a reward model trained "
                  "without contexts) does not read: it scores the prompt and completion alone.", flush=True)

    def _note_failure(self, judge, err: Exception) -> None:
        if self.first_failure is None:
            self.first_failure = f"judge {_name(judge)!r} raised {type(err).__name__}: {err}"

    def failure_note(self) -> str:
        """' The first failure: judge ...: TypeError: ...' (what an error about dropped completions shows), or ''.
        The sentence ends with one full stop: an exception text that already ends a sentence (`... solution=[...].`)
        gets none added (it read `solution=[...]..`)."""
        if not self.first_failure:
            return ""
        text = self.first_failure.rstrip()
        return f" The first failure: {text}{'' if text.endswith(('.', '!', '?')) else '.'}"

    def _call(self, judge, kind: str, prompts, completions, columns, completion_ids, images=None,
              environments=None) -> list[float]:
        name, n = _label(judge), len(prompts)
        if kind == "reward_model":
            contexts = [col.get("context") for col in columns]
            aware = bool((getattr(judge, "info", None) or {}).get("context_template"))
            self._note_context(name, aware, any(contexts))
            if any(contexts) and aware:
                # a context-aware reward model (trained with contexts) reads each prompt row's `context` column
                return _floats(self.timed(judge, lambda: judge.score(list(prompts), list(completions),
                                                                     contexts=contexts), n), n, name)
            return _floats(self.timed(judge, lambda: judge.score(list(prompts), list(completions)), n), n, name)
        kwargs = {key: [col.get(key) for col in columns] for key in {k for col in columns for k in col}}
        if completion_ids is not None:
            kwargs["completion_ids"] = list(completion_ids)
        _check_keywords_taken(judge, kwargs)
        if images is not None and _takes_keyword(judge, "images"):  # TRL's `images` column: PIL images per completion
            kwargs["images"] = list(images)
        if environments is not None and _takes_keyword(judge, "environments"):  # TRL's reward_kwargs["environments"]
            kwargs["environments"] = list(environments)
        return _floats(self.timed(judge, lambda: _awaited(judge(prompts=list(prompts), completions=list(completions),
                                                                **kwargs)), n), n, name)

    def _group_win_rates(self, judge, prompts, completions, groups) -> Tensor:
        out = torch.full((len(completions),), math.nan, dtype=torch.float64)
        members: dict[int, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        for idx in members.values():
            if len(idx) < 2:
                continue
            try:
                matrix = self.win_rates(judge, prompts[idx[0]], [completions[i] for i in idx])
            except STOPS:
                raise
            except Exception:  # noqa: BLE001 - as _safe_call: find the completions the judge cannot take
                idx = self._judgeable(judge, prompts[idx[0]], completions, idx)
                if len(idx) < 2:
                    continue
                matrix = self.win_rates(judge, prompts[idx[0]], [completions[i] for i in idx])
            matrix = torch.as_tensor(matrix, dtype=torch.float64)
            k = len(idx)
            # mean win rate against the k - 1 others (the diagonal holds P(y > y) = 1/2)
            out[idx] = (matrix.sum(-1) - matrix.diagonal()) / (k - 1)
        return out

    def win_rates(self, judge, prompt, responses, method: str = "win_rate_matrix"):
        """judge.<method>(prompt, responses) (a preference model's K x K matrix of one group) within timeout_s."""
        return self.timed(judge, lambda: getattr(judge, method)(prompt, responses), len(responses))

    def within_group_note(self) -> str | None:
        """The note an online run prints once when a judge is a preference model (e.g. a GPM, reward_head: gpm):
        its score of y_i is the Borda win rate w_i = (1/(K-1)) sum_{j != i} P(y_i > y_j), and P + P^T = 1 gives
        (1/K) sum_i w_i = (1/(K(K-1))) sum_{i != j} P_ij = 1/2 in every group. None without such a judge."""
        names = [n for n, kind in zip(self.names, self.kinds) if kind == "preference"]
        if not names:
            return None
        return (f"judge {', '.join(names)} is a preference model (e.g. reward_head: gpm): a completion's reward is "
                "its win rate within its group (its mean P(win) against the group's other completions), so each "
                "group's mean reward is 1/2 by construction; `reward_std` and the advantages (the differences "
                "within a group) carry the signal, not the mean `reward`.")

    def stats(self) -> dict[str, float]:
        return {"judge/calls": float(self.calls), "judge/cache_hits": float(self.cache_hits),
                "judge/failed": float(self.failed)}

    def state(self) -> dict:
        """The judgment cache and counters (JSON), checkpointed by online runs so a resumed run never re-queries."""
        return {"caches": self.caches, "calls": self.calls, "cache_hits": self.cache_hits, "failed": self.failed}

    def load_state(self, state: dict) -> None:
        self.caches = [dict(c) for c in state["caches"]]
        self.calls, self.cache_hits, self.failed = state["calls"], state["cache_hits"], state["failed"]


def as_judge(judge: Judge | Callable | Any | Sequence[Any], weights: Sequence[float] | None = None,
             cache: bool = True, timeout_s: float | None = None) -> Judge:
    """A Judge from a Judge (returned as is), a reward function, a reward model, a preference model or a list."""
    return judge if isinstance(judge, Judge) else Judge(judge, weights=weights, cache=cache, timeout_s=timeout_s)
