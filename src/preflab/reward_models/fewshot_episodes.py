"""FSPO episodes: per-user labelled pairs -> prompts carrying k of the user's examples, as pairwise rows.

Singh, Hsu, Sadigh, Finn et al. 2025, "FSPO: Few-Shot Preference Optimization of Synthetic Preference Data in LLMs
Elicits Effective Personalization to Real Users" (arXiv:2502.19312); spec methods/models-and-loops.md #15.
Personalization as meta-learning: the policy learns pi(y | x, C_u) where the context C_u holds N labelled pairs of
user u, trained with any pairwise objective (the paper: IPO) on

    L = E_u E_{(x, y_w, y_l) in D_u} E_{C in D_u \\ {(x, .)}, |C| = N} l(Delta(x (+) C)).

    rows = [{"user_id": "u1", "prompt": ..., "chosen": ..., "rejected": ...}, ...]
    episodes, report = build_episodes(rows, shots=4, passes=2)
    examples, _ = load_rows(episodes, kind="pairwise")     # {prompt, chosen, rejected} + user_id, shot_rows, ...

Input rows: {user_id, prompt, chosen, rejected}, or {user_id, prompt, response_x, response_y, label} with label 0
meaning response_x is preferred (the ELIX / reviews form). Episode text: the released code's `shots_to_text`
(FSPO repository, `preference_datasets.py`; include_dispreferred, no persona), byte for byte: per shot
"# Example i\\n## Question \\n{x}\\n## Preferred Response \\n{y_w}\\n## Dispreferred Response \\n{y_l}\\n\\n" (the
headers end in a space), then "# Task\\n{instruction}\\n## Question \\n{x}\\n"; both completions carry the same
header, "## Preferred Response \\n{y}\\n", so chosen and rejected share the prompt byte for byte and differ only in
the response. Every text is stripped of surrounding whitespace, as the code does.

Deviation from the reference code: every row of a user is the query of exactly one episode per pass (the code cuts
windows of N + 2 rows and uses N + 1, skipping one row per window); shots are the next rows of the user's shuffled
order whose prompt differs from the query's (the code does not exclude the query's prompt). A prompt too long for `max_prompt_length` loses shots from the front,
never the query; such episodes are counted. The user-description (persona) variant is not built here.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from preflab.data.report import RowProblem
from preflab.errors import ConfigError, DataError

DEFAULT_INSTRUCTION = "Given the examples above, generate a preferred response to the following question."


@dataclass(frozen=True)
class UserPair:
    """One labelled pair of one user; `row_id` is its 0-based index in the input rows."""

    row_id: int
    user_id: Hashable
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Episode:
    """Indices into the pair list: the query pair and its shots (all of the same user)."""

    user_id: Hashable
    query: int
    shots: tuple[int, ...]


@dataclass
class EpisodeReport:
    """What the builder did: counts, skipped users, truncation, and per-user label consistency (fraction of
    repeated (prompt, {a, b}) labels agreeing with the user's majority; None when a user repeats no pair)."""

    users: int = 0
    pairs: int = 0
    episodes: int = 0
    skipped_users: dict = field(default_factory=dict)
    dropped_episodes: Counter = field(default_factory=Counter)
    truncated_episodes: int = 0
    label_consistency: dict = field(default_factory=dict)


def user_pairs(rows: Iterable[dict]) -> list[UserPair]:
    """Validate rows into UserPairs; a bad row raises DataError naming the row and the field."""
    pairs = []
    for i, row in enumerate(rows):
        try:
            pairs.append(user_pair(row, i))
        except RowProblem as problem:
            field_name = f", field {problem.field!r}" if problem.field else ""
            fix = f" {problem.fix}" if problem.fix else ""
            raise DataError(f"row {i}{field_name}: {problem.detail}.{fix}") from None
    return pairs


def user_pair(row: dict, row_id: int) -> UserPair:
    """One input row as a UserPair; a bad row raises RowProblem (the field at fault, what to do)."""
    if not isinstance(row, dict):
        raise RowProblem("not_an_object", None, f"expected a dict with user_id, prompt, chosen, rejected; got "
                         f"{type(row).__name__}", "Give each row as an object.")
    user = _field(row, "user_id", (str, int))
    prompt = _field(row, "prompt", str)
    if "chosen" in row or "rejected" in row:
        chosen, rejected = _field(row, "chosen", str), _field(row, "rejected", str)
    elif "label" in row:
        x, y = _field(row, "response_x", str), _field(row, "response_y", str)
        label = row["label"]
        if label not in (0, 1) or isinstance(label, (bool, float)):  # true would pass as 1: which side is "true"?
            raise RowProblem("bad_label", "label", f"must be 0 (response_x preferred) or 1, got {label!r}",
                             "Give 0 or 1.")
        chosen, rejected = (x, y) if label == 0 else (y, x)
    else:
        raise RowProblem("missing_field", None, f"needs chosen/rejected, or response_x/response_y/label; it has "
                         f"{sorted(row)}", "Give one of the two forms.")
    if chosen.strip() == rejected.strip():
        raise RowProblem("identical", "rejected", "identical to chosen (up to surrounding whitespace, which the "
                         "episode text strips)", "Drop the row or fix the pair.")
    return UserPair(row_id, user, prompt, chosen, rejected)


def _field(row: dict, name: str, kind):
    if name not in row:
        raise RowProblem("missing_field", name, "missing", f"Each row needs it (columns present: {sorted(row)}).")
    if row[name] is None:  # "missing" beside a column list that holds it read as a contradiction (trial 19)
        raise RowProblem("missing_field", name, "null", "Each row needs a value there; give one or drop the row.")
    value = row[name]
    if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise RowProblem("bad_field", name, f"expected a non-empty {names}, got {value!r}")
    return value


def plan_episodes(user_ids: Sequence[Hashable], prompts: Sequence[Hashable] | None = None, *, shots: int,
                  passes: int = 1, min_shots: int | None = None, seed: int = 0) -> tuple[list[Episode], dict, Counter]:
    """Episodes over row indices: per pass, each user's rows are shuffled and every row becomes the query of one
    episode whose shots are the next rows (cyclically) with a different prompt, up to `shots` of them.

    Returns (episodes, skipped users {user: reason}, dropped episode counts {reason: n}). A user with fewer than
    min_shots + 1 rows is skipped; an episode with fewer than `min_shots` usable shots is dropped.
    """
    min_shots = shots if min_shots is None else min_shots
    if shots < 1 or passes < 1 or not 0 <= min_shots <= shots:
        raise ConfigError(f"need shots >= 1, passes >= 1 and 0 <= min_shots <= shots; got {shots}, {passes}, "
                          f"{min_shots}.")
    prompts = list(range(len(user_ids))) if prompts is None else prompts
    rows_of: dict[Hashable, list[int]] = defaultdict(list)
    for i, u in enumerate(user_ids):
        rows_of[u].append(i)
    skipped = {u: f"{len(r)} rows < min_shots + 1 = {min_shots + 1}" for u, r in rows_of.items()
               if len(r) < min_shots + 1}
    rng = random.Random(seed)
    episodes, dropped = [], Counter()
    for _ in range(passes):
        for user, rows in rows_of.items():
            if user in skipped:
                continue
            order = rows[:]
            rng.shuffle(order)
            for pos, query in enumerate(order):
                others = (order[(pos + step) % len(order)] for step in range(1, len(order)))
                chosen = [r for r in others if prompts[r] != prompts[query]][:shots]
                if len(chosen) < min_shots:
                    dropped["too_few_shots"] += 1
                    continue
                episodes.append(Episode(user, query, tuple(chosen)))
    return episodes, skipped, dropped


SHOT_HEADERS = ("## Question \n", "## Preferred Response \n", "## Dispreferred Response \n")  # the code's, with the space


def render_episode(shots: Sequence[UserPair], query_prompt: str, instruction: str = DEFAULT_INSTRUCTION) -> str:
    """The episode prompt (FSPO's `shots_to_text`): each shot as a markdown example, then the task and the query."""
    question, preferred, dispreferred = SHOT_HEADERS
    parts = [f"# Example {i}\n{question}{s.prompt.strip()}\n{preferred}{s.chosen.strip()}\n"
             f"{dispreferred}{s.rejected.strip()}\n\n" for i, s in enumerate(shots, 1)]
    parts.append(f"# Task\n{instruction}\n{question}{query_prompt.strip()}\n")
    return "".join(parts)


def render_completion(response: str) -> str:
    """A completion as the code renders both the chosen and the rejected one: "## Preferred Response \\n{y}\\n"."""
    return f"{SHOT_HEADERS[1]}{response.strip()}\n"


def build_episodes(rows: Iterable[dict], *, shots: int = 4, passes: int = 1, min_shots: int | None = None,
                   max_prompt_length: int | None = None, length_fn: Callable[[str], int] = len,
                   instruction: str = DEFAULT_INSTRUCTION, seed: int = 0) -> tuple[list[dict], EpisodeReport]:
    """Pairwise rows {prompt, chosen, rejected, user_id, query_row, shot_rows} from per-user labelled rows; chosen
    and rejected are the query's responses as `render_completion` writes them.

    shots: examples per episode (N; the paper uses 4 or 8); passes: fresh shuffles over the data (the code: 2(N+1)).
    max_prompt_length / length_fn: a budget for the episode prompt (characters by default; pass a token counter);
    shots are dropped from the front until it fits, down to `min_shots` (default `shots`, i.e. no dropping).
    """
    pairs = user_pairs(rows)
    episodes, skipped, dropped = plan_episodes([p.user_id for p in pairs], [p.prompt for p in pairs], shots=shots,
                                               passes=passes, min_shots=min_shots, seed=seed)
    floor = shots if min_shots is None else min_shots
    report = EpisodeReport(users=len({p.user_id for p in pairs}), pairs=len(pairs), skipped_users=skipped,
                           dropped_episodes=dropped, label_consistency=label_consistency(pairs))
    out = []
    for ep in episodes:
        query, context = pairs[ep.query], [pairs[i] for i in ep.shots]
        prompt = render_episode(context, query.prompt, instruction)
        while max_prompt_length is not None and length_fn(prompt) > max_prompt_length and len(context) > floor:
            context = context[1:]
            prompt = render_episode(context, query.prompt, instruction)
        if max_prompt_length is not None and length_fn(prompt) > max_prompt_length:
            report.dropped_episodes["too_long"] += 1
            continue
        report.truncated_episodes += len(context) < len(ep.shots)
        out.append({"prompt": prompt, "chosen": render_completion(query.chosen),
                    "rejected": render_completion(query.rejected), "user_id": query.user_id,
                    "query_row": query.row_id, "shot_rows": [s.row_id for s in context]})
    report.episodes = len(out)
    return out, report


def label_consistency(pairs: Sequence[UserPair]) -> dict:
    """{user: share of repeated-pair labels that agree with that pair's majority label, or None}."""
    votes: dict[Hashable, dict[tuple, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for p in pairs:
        votes[p.user_id][(p.prompt, frozenset((p.chosen, p.rejected)))][p.chosen] += 1
    result = {}
    for user, table in votes.items():
        repeated = [c for c in table.values() if sum(c.values()) > 1]
        total = sum(sum(c.values()) for c in repeated)
        result[user] = sum(max(c.values()) for c in repeated) / total if total else None
    return result
