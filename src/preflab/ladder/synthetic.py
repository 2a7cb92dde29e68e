"""A synthetic ladder-program task: templated instructions -> programs (spec §43's CPU demo, derived).

Each rung comes from one template; an instruction is the rung sentences joined by "; then ". Addresses and
constants are drawn per example, so the mapping must copy them, and the program is fully determined by the
instruction (the true answer is known, so program-level accuracy is exact).
"""
from __future__ import annotations

import random

from preflab.ladder.program import parse_program

INPUTS = [f"I0.{i}" for i in range(8)]
MEMORY = [f"M{i}" for i in range(4)]
OUTPUTS = [f"Q0.{i}" for i in range(8)]
TIMERS = [f"T{i}" for i in range(1, 5)]
COUNTERS = [f"C{i}" for i in range(1, 5)]
DATA = [f"D{i}" for i in range(1, 5)]
CONSTANTS = ["10", "50", "100", "500"]

# (instruction template, program template); {a} {b} inputs/memory, {q} output, {t} timer, {c} counter, {d} data, {n}
TEMPLATES = [
    ("turn on {q} when {a} is on and {b} is off", "XIC({a}) XIO({b}) -> OTE({q})"),
    ("turn on {q} when {a} or {b} is on", "[XIC({a}) | XIC({b})] -> OTE({q})"),
    ("latch {q} when {a} is on", "XIC({a}) -> OTL({q})"),
    ("unlatch {q} when {a} is off", "XIO({a}) -> OTU({q})"),
    ("run timer {t} for {n} when {a} is on", "XIC({a}) -> TON({t},{n})"),
    ("count {c} to {n} when {a} is on", "XIC({a}) -> CTU({c},{n})"),
    ("turn on {q} when {d} is above {n}", "GT({d},{n}) -> OTE({q})"),
    ("turn on {q} when {a} is on and {d} equals {n}", "XIC({a}) EQ({d},{n}) -> OTE({q})"),
]


def sample_rung(rng: random.Random) -> tuple[str, str]:
    instruction, program = TEMPLATES[rng.randrange(len(TEMPLATES))]
    a, b = rng.sample(INPUTS + MEMORY, 2)
    slots = dict(a=a, b=b, q=rng.choice(OUTPUTS), t=rng.choice(TIMERS), c=rng.choice(COUNTERS), d=rng.choice(DATA),
                 n=rng.choice(CONSTANTS))
    return instruction.format(**slots), program.format(**slots)


def make_ladder_rows(n: int, seed: int = 0, max_rungs: int = 1) -> list[dict]:
    """`n` distinct rows {instruction, program_text}; every program parses."""
    rng, rows, seen = random.Random(seed), [], set()
    while len(rows) < n:
        rungs = [sample_rung(rng) for _ in range(rng.randint(1, max_rungs))]
        instruction = "; then ".join(r[0] for r in rungs)
        if instruction in seen:
            continue
        seen.add(instruction)
        program = "\n".join(r[1] for r in rungs)
        parse_program(program)
        rows.append({"instruction": instruction, "program_text": program})
    return rows
