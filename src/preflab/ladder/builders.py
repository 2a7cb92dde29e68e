"""The two data builders of RAFT + DPO for ladder programs (seed #43; spec §43, details derived).

Stage 1 (RAFT): each instruction's prompt carries the top-k most similar TRAINING examples (TF-IDF cosine over
word tokens), never the query itself (neither its index nor an identical instruction), and never a test item.
Stage 2 (DPO): rejected = the gold program after k edits, kept only when it parses (valid) and is NOT isomorphic to
the gold. Substitution edits (contact NO<->NC, wrong operand, changed constant, changed output type) touch k
distinct elements and are checked to be at substitution distance exactly k; structural edits (insert a contact,
delete a contact, rewire series<->parallel) are single edits.
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter

from preflab.ladder import synthetic as syn
from preflab.ladder.program import (Element, LadderError, Net, Rung, elements, isomorphic, parse_program, serialize,
                                    substitution_distance)

_WORD = re.compile(r"[a-z]+|[A-Z]\d+(?:\.\d+)?|\d+")


class Retriever:
    """TF-IDF retrieval over the training instructions."""

    def __init__(self, instructions: list[str]):
        self.instructions = instructions
        docs = [Counter(_WORD.findall(t)) for t in instructions]
        df = Counter(w for d in docs for w in d)
        self.idf = {w: math.log((1 + len(docs)) / (1 + c)) + 1 for w, c in df.items()}
        self.vectors = [self._vector(d) for d in docs]

    def _vector(self, counts: Counter) -> dict:
        v = {w: c * self.idf.get(w, 0.0) for w, c in counts.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items()}

    def top_k(self, query: str, k: int, exclude_index: int | None = None) -> list[int]:
        q = self._vector(Counter(_WORD.findall(query)))
        scores = [(sum(q.get(w, 0.0) * x for w, x in v.items()), -i) for i, v in enumerate(self.vectors)
                  if i != exclude_index and self.instructions[i] != query]
        return [-i for _, i in sorted(scores, reverse=True)[:k]]


def raft_prompt(instruction: str, examples: list[dict]) -> str:
    shots = "".join(f"Q: {e['instruction']}\nA: {e['program_text']}\n" for e in examples)
    return f"{shots}Q: {instruction}\nA:"


def raft_rows(train: list[dict], rows: list[dict], k: int, same_split: bool) -> list[dict]:
    """Rows with a retrieval-augmented `prompt` (examples from `train` only; `same_split`: rows ARE train)."""
    retriever = Retriever([r["instruction"] for r in train])
    out = []
    for i, row in enumerate(rows):
        idx = retriever.top_k(row["instruction"], k, exclude_index=i if same_split else None)
        out.append({**row, "prompt": raft_prompt(row["instruction"], [train[j] for j in idx]), "retrieved": idx})
    return out


# ------------------------------------------------------------------------------------------------ edits
def _replace(node, target, new):
    if node is target:
        return new
    if isinstance(node, Element):
        return node
    return Net(node.kind, tuple(_replace(c, target, new) for c in node.children))


def substitute(element: Element, rng: random.Random) -> Element:
    """One attribute change of an element: its type within its class, its operand, or its constant."""
    op, args = element.op, list(element.args)
    choices = []
    if op in ("XIC", "XIO"):
        choices += ["flip", "operand"]
    elif op in ("GT", "LT", "EQ"):
        choices += ["compare", "constant"]
    elif op in ("OTE", "OTL", "OTU"):
        choices += ["output", "operand"]
    else:
        choices += ["constant", "operand"]
    kind = rng.choice(choices)
    if kind == "flip":
        return Element("XIO" if op == "XIC" else "XIC", element.args)
    if kind == "compare":
        return Element(rng.choice([o for o in ("GT", "LT", "EQ") if o != op]), element.args)
    if kind == "output":
        return Element(rng.choice([o for o in ("OTE", "OTL", "OTU") if o != op]), element.args)
    if kind == "constant":
        args[1] = rng.choice([c for c in syn.CONSTANTS if c != args[1]])
        return Element(op, tuple(args))
    pool = {"I": syn.INPUTS, "M": syn.MEMORY, "Q": syn.OUTPUTS, "T": syn.TIMERS, "C": syn.COUNTERS,
            "D": syn.DATA}[args[0][0]]
    args[0] = rng.choice([a for a in pool if a != args[0]])
    return Element(op, tuple(args))


def substitution_negative(program, k: int, rng: random.Random, tries: int = 50):
    """The gold with k distinct elements substituted, at substitution distance exactly k (None if not found)."""
    for _ in range(tries):
        slots = [(ri, e) for ri, r in enumerate(program) for e in elements(r.condition)] + \
                [(ri, r.output) for ri, r in enumerate(program)]
        if len(slots) < k:
            return None
        rungs = list(program)
        for ri, e in rng.sample(slots, k):
            r = rungs[ri]
            new = substitute(e, rng)
            rungs[ri] = Rung(r.condition, new) if e is r.output else Rung(_replace(r.condition, e, new), r.output)
        edited = tuple(rungs)
        if _valid(edited) and not isomorphic(edited, program) and substitution_distance(program, edited) == k:
            return edited
    return None


def structural_negative(program, rng: random.Random, tries: int = 50):
    """One insertion, deletion or series<->parallel rewiring: a valid, non-isomorphic program (None if none)."""
    for _ in range(tries):
        ri = rng.randrange(len(program))
        rung = program[ri]
        cond = rung.condition
        kind = rng.choice(["insert", "delete", "rewire"])
        if kind == "insert":
            used = {e.args[0] for e in elements(cond)}  # a repeated contact would be a neutral edit (A and A = A)
            extra = Element(rng.choice(["XIC", "XIO"]), (rng.choice([a for a in syn.INPUTS if a not in used]),))
            new = Net("series", (cond, extra))
        elif kind == "delete" and isinstance(cond, Net) and cond.kind == "series" and len(cond.children) >= 2:
            drop = rng.randrange(len(cond.children))
            rest = tuple(c for i, c in enumerate(cond.children) if i != drop)
            new = rest[0] if len(rest) == 1 else Net("series", rest)
        elif kind == "rewire" and isinstance(cond, Net) and len(cond.children) == 2:
            new = Net("parallel" if cond.kind == "series" else "series", cond.children)
        else:
            continue
        edited = program[:ri] + (Rung(new, rung.output),) + program[ri + 1:]
        if _valid(edited) and not isomorphic(edited, program):
            return edited
    return None


def _valid(program) -> bool:
    try:
        return isomorphic(parse_program(serialize(program)), program)
    except LadderError:
        return False


def dpo_rows(rows: list[dict], seed: int = 0, max_edits: int = 2) -> tuple[list[dict], dict]:
    """{prompt, chosen, rejected, edits} per row (one negative each) + counts of the edit kinds and of rows
    for which no valid negative was found (reported, never silently dropped)."""
    rng, out, counts = random.Random(seed), [], Counter()
    for row in rows:
        gold = parse_program(row["program_text"])
        k = rng.randint(1, max_edits)
        negative = substitution_negative(gold, k, rng) if rng.random() < 0.7 else structural_negative(gold, rng)
        kind = f"substitute_{k}" if negative is not None and substitution_distance(gold, negative) == k else \
            "structural"
        if negative is None:
            counts["no_negative"] += 1
            continue
        counts[kind] += 1
        out.append({"prompt": row["prompt"], "chosen": " " + row["program_text"],
                    "rejected": " " + serialize(negative), "edits": kind})
    return out, dict(counts)
