"""MAPL data builder: verifiable instructions -> intra-sample rows (one response, two prompts) and inter-sample rows.

Paper: MAPL, "Multi-Level Aware Preference Learning: Enhancing RLHF for Complex Multi-Instruction Tasks" (2025,
arXiv:2505.12845); spec methods/models-and-loops.md #14 (abstract + a 3rd-party review; no code released).

    rows, report = build_mapl_rows(pairs, seed=0)              # pairs: {prompt, chosen, rejected} rows
    python -m preflab.data.mapl pairs.jsonl mapl.jsonl [--levels intra,inter] [--keep-original] [--seed 0]

Instructions (IFEval-style, each with a deterministic checker `check(instruction, y) -> bool`): `word_limit`
("Answer in fewer than N words." / "Answer in at least N words.", N set relative to y's word count), `include_word`
('Include the word "W".'), `end_with` ('End your answer with the phrase "P".'), `bullet_count` ('Use exactly k bullet
points (lines starting with "- " or "* ").'), `letter_case` ("Write your whole answer in lowercase / uppercase letters."),
`commas` ("Do not use any commas." / "Use at least n commas."). A generator g(y, satisfied, rng) returns an
instruction that y satisfies (True) or violates (False), or None when it cannot (e.g. no case instruction holds
for mixed-case text).

Intra-sample rows [3rd-party review]: for a response y of a base pair (x, y_w, y_l), pick k distinct instruction
kinds; x_w = x + instructions that y all satisfies; x_l = x + the same kinds, where a random non-empty subset is
replaced by a violated instruction of the same kind (the others are x_w's, word for word). Rows
{prompt_chosen: x_w, prompt_rejected: x_l, completion: y, parent_id, mapl_level: "intra", ...}, read by
`preflab train` with loss_type: rc_dpo (task: dpo) or task: reward (reward_head: bt = Rc-BT):

    L_intra = -log sigmoid(beta [log pi(y|x_w)/pi_ref(y|x_w) - log pi(y|x_l)/pi_ref(y|x_l)])     (rc_dpo)
    L_intra = -log sigmoid((r(x_w, y) - r(x_l, y)) / tau)                                         (rc_bt)

Template tells (spec gotcha): x_w and x_l use the same kinds, in the same order, with the same sentence templates
(each kind's templates are drawn independently of whether the instruction holds, e.g. "fewer than" / "at least" for
word limits); words and end phrases of violated instructions come from the other base responses, as satisfied ones
come from y, so no template token tells x_l from x_w without reading y. What remains is content: a number or word
set against y (and the corpus' priors, e.g. few upper-case responses make "uppercase" instructions mostly violated);
`MaplReport.templates` counts each wording (numbers and quoted words masked) on the x_w and the x_l side, printed by
the command, so such priors are visible.

Inter-sample rows [memory, unverified: the spec marks L_inter unverified; built only with levels including
"inter"]: x' = x + k instructions all satisfied by y_w, at least one of them violated by y_l, so y_w satisfies more
instructions than y_l; rows {prompt: x', chosen: y_w, rejected: y_l, parent_id, mapl_level: "inter"} are ordinary
pairs (plain DPO / BT on them is L_inter); with levels including "inter" every row carries the numeric column
`mapl_inter` (1 on inter rows, else 0). With --keep-original the base pairs are written too (mapl_level:
"original"), so one file trains L_orig + lambda_intra L_intra (+ lambda_inter L_inter) in one run with loss_type:
rc_dpo and objective_params {intra_weight, inter_weight} (per-row weights, see preflab.objectives.rc_dpo).

Skips are counted, never silent: a base response for which no satisfied or no violated instruction can be built
(or, for inter rows, no instruction that y_w satisfies and y_l violates) gives no row; `MaplReport.skipped` counts
each reason and `skipped_rows` lists (row, side, reason). Randomness is seeded per (seed, row, side), so a row's
output does not depend on the other rows' order, except that violated words and phrases are drawn from the
vocabulary of all base responses. Text rows only (a conversational row is a DataError).
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from preflab.errors import ConfigError, DataError

LEVELS = ("intra", "inter")
_WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|')*")  # a letter of any script, then letters and apostrophes
FALLBACK_WORDS = ("banana", "harbor", "violet", "engine", "meadow", "pencil", "thunder", "lantern", "orbit", "copper")
FALLBACK_PHRASES = ("That is all.", "Hope this helps.", "Thank you.", "In short, yes.", "End of answer.")


@dataclass(frozen=True)
class Instruction:
    """One verifiable instruction: `kind` (a generator name), `arg` (what its checker reads), `text` (the sentence
    appended to the prompt)."""

    kind: str
    arg: object
    text: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "arg": list(self.arg) if isinstance(self.arg, tuple) else self.arg,
                "text": self.text}

    @classmethod
    def from_dict(cls, data: dict) -> Instruction:
        arg = data["arg"]
        return cls(data["kind"], tuple(arg) if isinstance(arg, list) else arg, data["text"])


def words(y: str) -> list[str]:
    """The alphabetic words of y (letters of any script and apostrophes: "Müller" is one word)."""
    return _WORD.findall(y)


def word_count(y: str) -> int:
    """Whitespace-separated tokens of y (IFEval counts words the same way)."""
    return len(y.split())


def bullet_count(y: str) -> int:
    """Lines of y that start (after indentation) with "- " or "* "."""
    return sum(1 for line in y.splitlines() if line.lstrip().startswith(("- ", "* ")))


def _has_letters(y: str) -> bool:
    """Whether y has a cased letter (one with a lower and an upper form; CJK has none, so no case instruction)."""
    return any(c.lower() != c.upper() for c in y)


# ---- checkers: (arg, y) -> bool, deterministic -------------------------------------------------------------------
def _check_word_limit(arg, y: str) -> bool:
    op, n = arg
    return word_count(y) < n if op == "<" else word_count(y) >= n


def _check_include_word(arg, y: str) -> bool:
    return arg.lower() in {w.lower() for w in words(y)}


def _check_end_with(arg, y: str) -> bool:
    return y.rstrip().endswith(arg)


def _check_bullet_count(arg, y: str) -> bool:
    return bullet_count(y) == arg


def _check_letter_case(arg, y: str) -> bool:
    return _has_letters(y) and (y == y.lower() if arg == "lower" else y == y.upper())


def _check_commas(arg, y: str) -> bool:
    op, n = arg
    return "," not in y if op == "none" else y.count(",") >= n


CHECKERS: dict[str, Callable[[object, str], bool]] = {
    "word_limit": _check_word_limit, "include_word": _check_include_word, "end_with": _check_end_with,
    "bullet_count": _check_bullet_count, "letter_case": _check_letter_case, "commas": _check_commas}


def check(instruction: Instruction, y: str) -> bool:
    """Whether response y follows `instruction` (deterministic: a function of the instruction and y only)."""
    try:
        checker = CHECKERS[instruction.kind]
    except KeyError:
        raise ConfigError(f"unknown instruction kind {instruction.kind!r}; known: {sorted(CHECKERS)}.") from None
    return bool(checker(instruction.arg, y))


# ---- generators: (y, satisfied, rng, vocab) -> Instruction | None -------------------------------------------------
@dataclass(frozen=True)
class Vocabulary:
    """Words and end phrases of all base responses (sorted: deterministic), the pool violated instructions draw
    from, so that violated and satisfied instructions read alike."""

    words: tuple[str, ...]
    phrases: tuple[str, ...]

    @classmethod
    def of(cls, responses: Iterable[str]) -> Vocabulary:
        ws, ps = set(), set()
        for y in responses:
            ws.update(w.lower() for w in words(y) if len(w) >= 3)
            ps.update(p for p in (_end_phrase(y, 1), _end_phrase(y, 2)) if p)  # both lengths satisfied ones take
        return cls(tuple(sorted(ws)) or FALLBACK_WORDS, tuple(sorted(ps)) or FALLBACK_PHRASES)


def _end_phrase(y: str, k: int) -> str | None:
    tokens = y.rstrip().split()
    return " ".join(tokens[-k:]) if tokens else None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _word_limit(y, satisfied, rng, vocab):
    n = word_count(y)
    if n < 1:
        return None
    # N >= 2: "fewer than 1 word" fails and "at least 1 word" holds for any answer (decided without reading y);
    # a one-word y can then only satisfy "fewer than" and violate "at least"
    op = rng.choice(("<", ">=")) if n >= 2 else "<" if satisfied else ">="
    if op == "<":  # holds iff n < N
        limit = n + rng.randint(1, 5) if satisfied else rng.randint(max(2, n - 5), n)
        return Instruction("word_limit", ("<", limit), f"Answer in fewer than {_count(limit, 'word')}.")
    limit = rng.randint(max(2, n - 5), n) if satisfied else n + rng.randint(1, 5)  # holds iff n >= N
    return Instruction("word_limit", (">=", limit), f"Answer in at least {_count(limit, 'word')}.")


def _include_word(y, satisfied, rng, vocab):
    own = sorted({w.lower() for w in words(y) if len(w) >= 3})
    pool = own if satisfied else [w for w in vocab.words if w not in set(own)]
    if not pool:
        return None
    w = rng.choice(pool)
    return Instruction("include_word", w, f'Include the word "{w}".')


def _end_with(y, satisfied, rng, vocab):
    k = rng.randint(1, 2)  # words in the phrase, drawn alike on both sides: its length tells nothing
    if satisfied:
        phrase = _end_phrase(y, k)
        pool = [phrase] if phrase else []
    else:
        pool = [p for p in vocab.phrases if not _check_end_with(p, y)]
        pool = [p for p in pool if len(p.split()) == k] or pool
    if not pool:
        return None
    p = rng.choice(pool)
    return Instruction("end_with", p, f'End your answer with the phrase "{p}".')


def _bullet_count(y, satisfied, rng, vocab):
    k = bullet_count(y)
    if not satisfied:
        k = rng.choice([j for j in range(k + 4) if j != k])
    return Instruction("bullet_count", k, f'Use exactly {_count(k, "bullet point")} (lines starting with "- " or "* ").')


def _letter_case(y, satisfied, rng, vocab):
    pool = [c for c in ("lower", "upper") if _check_letter_case(c, y) == satisfied]
    if not pool:
        return None
    c = rng.choice(pool)
    return Instruction("letter_case", c, f"Write your whole answer in {c}case letters.")


def _commas(y, satisfied, rng, vocab):
    c = y.count(",")
    if satisfied:
        arg = ("none", 0) if c == 0 else (">=", rng.randint(1, c))
    elif c == 0:
        arg = (">=", rng.randint(1, 3))
    else:
        arg = rng.choice((("none", 0), (">=", c + rng.randint(1, 3))))
    text = "Do not use any commas." if arg[0] == "none" else f"Use at least {_count(arg[1], 'comma')}."
    return Instruction("commas", arg, text)


GENERATORS: dict[str, Callable] = {
    "word_limit": _word_limit, "include_word": _include_word, "end_with": _end_with,
    "bullet_count": _bullet_count, "letter_case": _letter_case, "commas": _commas}


def generate(kind: str, y: str, satisfied: bool, rng: random.Random, vocab: Vocabulary) -> Instruction | None:
    """An instruction of `kind` that y satisfies (satisfied=True) or violates, or None if the kind cannot make one.
    The result is checked: a generator that returned a wrong instruction would be a bug, not a row."""
    made = GENERATORS[kind](y, satisfied, rng, vocab)
    if made is not None and check(made, y) != satisfied:
        raise AssertionError(f"generator {kind} made {made.text!r}, which y {'violates' if satisfied else 'follows'}")
    return made


def render(prompt: str, instructions: list[Instruction]) -> str:
    """The base prompt followed by the instructions, one per line (the base prompt is a prefix of the result)."""
    return prompt + "\n\n" + "\n".join(i.text for i in instructions)


# ---- rows --------------------------------------------------------------------------------------------------------
@dataclass
class MaplReport:
    """Counts of one build: base rows read, rows written per level, skips per reason and which (row, side)."""

    base_rows: int = 0
    written: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    skipped_rows: list = field(default_factory=list)
    templates: dict = field(default_factory=dict)  # template -> [count in x_w, count in x_l] over the intra rows

    def count_templates(self, good: list[Instruction], worse: list[Instruction]) -> None:
        for side, instructions in ((0, good), (1, worse)):
            for instr in instructions:
                self.templates.setdefault(template_of(instr.text), [0, 0])[side] += 1

    def skip(self, row_id: int, side: str, reason: str) -> None:
        self.skipped[reason] += 1
        self.skipped_rows.append((row_id, side, reason))

    def to_dict(self) -> dict:
        return {"base_rows": self.base_rows, "written": dict(self.written), "skipped": dict(self.skipped),
                "skipped_rows": [list(r) for r in self.skipped_rows[:20]],
                "templates_chosen_rejected": dict(sorted(self.templates.items()))}


def template_of(text: str) -> str:
    """An instruction's wording with its numbers and quoted words replaced by '#': what a template tell would key on."""
    return re.sub(r'\d+|"[^"]*"', "#", text)


def _check_instruction_count(low: int, high: int) -> None:
    if not 1 <= low <= high <= len(GENERATORS):
        raise ConfigError(f"instructions per prompt: need 1 <= min_instructions <= max_instructions <= "
                          f"{len(GENERATORS)}, got {low}..{high}.")


def intra_prompts(prompt: str, y: str, rng: random.Random, vocab: Vocabulary, k: int,
                  kinds: Iterable[str] = tuple(GENERATORS)) -> tuple | str:
    """(x_w, x_l, instructions of x_w, instructions of x_l) for response y, or the skip reason."""
    kinds = list(kinds)
    rng.shuffle(kinds)
    sat = {kind: generate(kind, y, True, rng, vocab) for kind in kinds}
    sat = {kind: i for kind, i in sat.items() if i is not None}
    if not sat:
        return "no_satisfied_instruction"
    bad = {kind: generate(kind, y, False, rng, vocab) for kind in sat}
    bad = {kind: i for kind, i in bad.items() if i is not None}
    if not bad:
        return "no_violated_instruction"
    first = rng.choice(sorted(bad))  # at least one kind that both sides can take
    rest = [kind for kind in sat if kind != first]
    chosen_kinds = [first] + rng.sample(rest, min(k - 1, len(rest)))
    rng.shuffle(chosen_kinds)
    flips = [kind for kind in chosen_kinds if kind in bad]
    flipped = set(rng.sample(flips, rng.randint(1, len(flips))))  # non-empty: `first` is in flips
    good = [sat[kind] for kind in chosen_kinds]
    worse = [bad[kind] if kind in flipped else sat[kind] for kind in chosen_kinds]
    return render(prompt, good), render(prompt, worse), good, worse


def inter_prompt(prompt: str, y_w: str, y_l: str, rng: random.Random, vocab: Vocabulary, k: int,
                 kinds: Iterable[str] = tuple(GENERATORS), tries: int = 4) -> tuple | str:
    """(x', instructions) with every instruction satisfied by y_w and at least one violated by y_l, or the reason."""
    kinds = list(kinds)
    rng.shuffle(kinds)
    separating, shared = {}, {}
    for kind in kinds:
        for _ in range(tries):
            made = generate(kind, y_w, True, rng, vocab)
            if made is None:
                break
            if not check(made, y_l):
                separating[kind] = made
                break
            shared.setdefault(kind, made)
    if not separating:
        return "no_separating_instruction"
    first = rng.choice(sorted(separating))
    pool = {**shared, **separating}
    rest = [kind for kind in pool if kind != first]
    picked = [first] + rng.sample(rest, min(k - 1, len(rest)))
    rng.shuffle(picked)
    instructions = [pool[kind] for kind in picked]
    return render(prompt, instructions), instructions


def _base_pairs(rows) -> list:
    """PairExamples of the base rows (validated as pairwise rows: a bad row is a DataError naming row and field)."""
    from preflab.data.rows import load_rows

    examples, _ = load_rows(rows, kind="pairwise")
    for ex in examples:
        if ex.rejected_prompt is not None:
            raise DataError(f"row {ex.row_id}: fields prompt_chosen / prompt_rejected: already a MAPL intra row. "
                            "Build from ordinary pairs {prompt, chosen, rejected}.")
        if not all(isinstance(v, str) for v in (ex.prompt, ex.chosen, ex.rejected)):
            raise DataError(f"row {ex.row_id}: field prompt: the MAPL builder reads text rows; this row is a "
                            "conversation. Give prompt, chosen and rejected as strings.")
    return examples


def build_mapl_rows(rows, *, seed: int = 0, levels: Iterable[str] = ("intra",), responses: Iterable[str] = ("chosen",),
                    min_instructions: int = 1, max_instructions: int = 3, keep_original: bool = False,
                    kinds: Iterable[str] | None = None) -> tuple[list[dict], MaplReport]:
    """(MAPL rows, report) from base pairs `rows` (a list of dicts, a file path or anything `load_rows` reads).

    levels: "intra" and/or "inter" (inter: unverified, see the module docstring). responses: which response of each
    pair intra rows are built for ("chosen", "rejected"). Each prompt gets k instructions, k drawn uniformly from
    min_instructions..max_instructions (fewer when fewer kinds apply). keep_original: also write the base pairs.
    kinds: the instruction kinds to use (default: all of GENERATORS).
    Every written row carries parent_id (the base row's 0-based index) and mapl_level."""
    levels, responses = tuple(levels), tuple(responses)
    for name, given, allowed in (("levels", levels, LEVELS), ("responses", responses, ("chosen", "rejected"))):
        if not given or not set(given) <= set(allowed):
            raise ConfigError(f"{name}={list(given)} must be a non-empty subset of {list(allowed)}.")
    kinds = tuple(GENERATORS) if kinds is None else tuple(kinds)
    unknown = sorted(set(kinds) - set(GENERATORS))
    if unknown or not kinds:
        raise ConfigError(f"kinds={list(kinds)}: {unknown or 'empty'}; choose from {list(GENERATORS)}.")
    _check_instruction_count(min_instructions, min(max_instructions, len(kinds)))
    examples = _base_pairs(rows)
    vocab = Vocabulary.of(y for ex in examples for y in (ex.chosen, ex.rejected))
    report, out = MaplReport(base_rows=len(examples)), []
    for ex in examples:
        marks = {"mapl_inter": 0} if "inter" in levels else {}  # numeric: rc_dpo's inter_weight reads it
        if keep_original:
            out.append({"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected, "parent_id": ex.row_id,
                        "mapl_level": "original", **marks})
            report.written["original"] += 1
        if "intra" in levels:
            for side in responses:
                rng = random.Random(f"{seed}:{ex.row_id}:intra:{side}")
                y = getattr(ex, side)
                made = intra_prompts(ex.prompt, y, rng, vocab, rng.randint(min_instructions, max_instructions), kinds)
                if isinstance(made, str):
                    report.skip(ex.row_id, side, made)
                    continue
                x_w, x_l, good, worse = made
                report.count_templates(good, worse)
                out.append({"prompt_chosen": x_w, "prompt_rejected": x_l, "completion": y, "parent_id": ex.row_id,
                            "mapl_level": "intra", "response_side": side, **marks,
                            "instructions_chosen": [i.to_dict() for i in good],
                            "instructions_rejected": [i.to_dict() for i in worse]})
                report.written["intra"] += 1
        if "inter" in levels:
            rng = random.Random(f"{seed}:{ex.row_id}:inter")
            made = inter_prompt(ex.prompt, ex.chosen, ex.rejected, rng, vocab,
                                rng.randint(min_instructions, max_instructions), kinds)
            if isinstance(made, str):
                report.skip(ex.row_id, "pair", made)
                continue
            x, instructions = made
            out.append({"prompt": x, "chosen": ex.chosen, "rejected": ex.rejected, "parent_id": ex.row_id,
                        "mapl_level": "inter", "mapl_inter": 1,
                        "instructions": [i.to_dict() for i in instructions]})
            report.written["inter"] += 1
    return out, report


def main(argv: list[str] | None = None) -> int:
    """python -m preflab.data.mapl IN OUT.jsonl [--levels intra,inter] [--responses chosen,rejected] ..."""
    import argparse
    import sys

    from preflab.errors import PreflabError

    parser = argparse.ArgumentParser(prog="python -m preflab.data.mapl",
                                     description="MAPL rows (intra: one response, prompts x_w / x_l; inter: "
                                                 "multi-instruction pairs) from preference pairs.")
    parser.add_argument("source", help="pairs {prompt, chosen, rejected}: a .jsonl/.json/.parquet/.csv file, a "
                                       "directory or a dataset name")
    parser.add_argument("output", help="the .jsonl file to write")
    parser.add_argument("--levels", default="intra", help="intra, inter (unverified) or intra,inter")
    parser.add_argument("--responses", default="chosen", help="responses intra rows are built for: chosen, "
                                                              "rejected or chosen,rejected")
    parser.add_argument("--min-instructions", type=int, default=1)
    parser.add_argument("--max-instructions", type=int, default=3)
    parser.add_argument("--keep-original", action="store_true", help="also write the base pairs (L_orig)")
    parser.add_argument("--kinds", default=",".join(GENERATORS), help="instruction kinds, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        rows, report = build_mapl_rows(args.source, seed=args.seed, levels=args.levels.split(","),
                                       responses=args.responses.split(","), min_instructions=args.min_instructions,
                                       max_instructions=args.max_instructions, keep_original=args.keep_original,
                                       kinds=args.kinds.split(","))
    except PreflabError as err:
        print(f"preflab: error: {err}", file=sys.stderr)
        return 2
    with open(args.output, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    print(json.dumps({"output": args.output, **report.to_dict()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
