"""Ladder-diagram (LD) programs as typed series-parallel graphs: parse, serialise, canonicalise, compare.

Seed paper #43 (retrieval-augmented fine-tuning + DPO for ladder-diagram generation). The schema is derived (the
paper has no code): a program is a list of rungs, scanned top to bottom; a rung is a condition network between the
left rail and one output element. The network is series-parallel, so it is a tree:

    element   XIC(I0.1)  normally-open contact      XIO(I0.2)  normally-closed contact
              GT(D1,10) / LT(D1,10) / EQ(D1,10)     compare an operand with a constant
    output    OTE(Q0.0) coil, OTL(Q0.0) set coil, OTU(Q0.0) reset coil, TON(T1,500) timer, CTU(C1,3) counter
    series    elements left to right, separated by spaces           (logical AND)
    parallel  branches in brackets: [XIC(I0.1) | XIC(M0.0)]         (logical OR)
    rung      `<network> -> <output>`; a program is one rung per line

Canonical form: nested series-in-series and parallel-in-parallel are flattened, and the children of every series and
parallel node are sorted (AND and OR commute, so reordering contacts is a neutral edit, the gotcha of spec §43).
For series-parallel networks this decomposition tree is unique, so two rungs are isomorphic as attribute-labelled
graphs exactly when their canonical texts are equal; programs compare rung by rung (scan order matters).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

CONDITIONS = ("XIC", "XIO", "GT", "LT", "EQ")
OUTPUTS = ("OTE", "OTL", "OTU", "TON", "CTU")
ARITY = {"XIC": 1, "XIO": 1, "GT": 2, "LT": 2, "EQ": 2, "OTE": 1, "OTL": 1, "OTU": 1, "TON": 2, "CTU": 2}
_OPERAND = re.compile(r"[A-Z]\d+(\.\d+)?")
_TOKEN = re.compile(r"\s*(\[|\]|\||->|[A-Z]{2,3}\([^)]*\))")


class LadderError(ValueError):
    """Text that is not a valid ladder program (the message says where)."""


@dataclass(frozen=True)
class Element:
    op: str
    args: tuple[str, ...]

    def text(self) -> str:
        return f"{self.op}({','.join(self.args)})"


@dataclass(frozen=True)
class Net:
    kind: str                  # "series" | "parallel"
    children: tuple            # Elements and Nets


@dataclass(frozen=True)
class Rung:
    condition: Element | Net
    output: Element


Program = tuple  # tuple[Rung, ...]


def parse_element(text: str) -> Element:
    match = re.fullmatch(r"([A-Z]{2,3})\(([^)]*)\)", text.strip())
    if not match or match[1] not in ARITY:
        raise LadderError(f"unknown element {text!r}")
    op, args = match[1], tuple(a.strip() for a in match[2].split(","))
    if len(args) != ARITY[op]:
        raise LadderError(f"{op} takes {ARITY[op]} argument(s), got {len(args)} in {text!r}")
    if not _OPERAND.fullmatch(args[0]):
        raise LadderError(f"bad operand {args[0]!r} in {text!r}")
    if len(args) == 2 and not args[1].isdigit():
        raise LadderError(f"{op}'s second argument must be a non-negative integer, got {args[1]!r}")
    return Element(op, args)


def parse_rung(line: str) -> Rung:
    tokens = [t for t in _TOKEN.findall(line)]
    if "".join(tokens).replace(" ", "") != line.replace(" ", ""):
        raise LadderError(f"cannot read rung {line!r}")
    pos = 0

    def series(stop):
        nonlocal pos
        items = []
        while pos < len(tokens) and tokens[pos] not in stop:
            tok = tokens[pos]
            if tok == "[":
                pos += 1
                branches = [series({"|", "]"})]
                while pos < len(tokens) and tokens[pos] == "|":
                    pos += 1
                    branches.append(series({"|", "]"}))
                if pos >= len(tokens) or tokens[pos] != "]":
                    raise LadderError(f"unclosed branch in {line!r}")
                pos += 1
                if len(branches) < 2:
                    raise LadderError(f"a parallel branch needs two paths in {line!r}")
                items.append(Net("parallel", tuple(branches)))
            elif tok in ("]", "|", "->"):
                raise LadderError(f"unexpected {tok!r} in {line!r}")
            else:
                element = parse_element(tok)
                if element.op not in CONDITIONS:
                    raise LadderError(f"output {tok} inside the condition of {line!r}")
                items.append(element)
                pos += 1
        if not items:
            raise LadderError(f"empty path in {line!r}")
        return items[0] if len(items) == 1 else Net("series", tuple(items))

    condition = series({"->"})
    if pos >= len(tokens) or tokens[pos] != "->" or pos + 2 != len(tokens):
        raise LadderError(f"a rung is `<conditions> -> <one output>`: {line!r}")
    output = parse_element(tokens[pos + 1])
    if output.op not in OUTPUTS:
        raise LadderError(f"{output.text()} is not an output element in {line!r}")
    return Rung(condition, output)


def parse_program(text: str) -> Program:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise LadderError("empty program")
    return tuple(parse_rung(line) for line in lines)


def net_text(node) -> str:
    if isinstance(node, Element):
        return node.text()
    parts = [net_text(c) for c in node.children]
    return " ".join(parts) if node.kind == "series" else "[" + " | ".join(parts) + "]"


def serialize(program: Program) -> str:
    return "\n".join(f"{net_text(r.condition)} -> {r.output.text()}" for r in program)


def canonical_net(node):
    """Flatten same-kind nesting, sort children by their canonical text (AND / OR commute)."""
    if isinstance(node, Element):
        return node
    flat = []
    for child in (canonical_net(c) for c in node.children):
        if isinstance(child, Net) and child.kind == node.kind:
            flat.extend(child.children)
        else:
            flat.append(child)
    flat.sort(key=net_text)
    return flat[0] if len(flat) == 1 else Net(node.kind, tuple(flat))


def canonical(program: Program) -> Program:
    return tuple(Rung(canonical_net(r.condition), r.output) for r in program)


def isomorphic(a: Program, b: Program) -> bool:
    """Attribute-aware isomorphism of two programs (rung by rung, via the canonical decomposition tree)."""
    return serialize(canonical(a)) == serialize(canonical(b))


def substitution_distance(a: Program, b: Program) -> int | None:
    """Minimum number of element substitutions turning `a` into `b` when both have the same series-parallel shape
    (children of commuting nodes may be matched in any order: an optimal assignment per node); None when the shapes
    differ (then insertions, deletions or rewiring are needed)."""
    if len(a) != len(b):
        return None
    total = 0
    for ra, rb in zip(canonical(a), canonical(b)):
        d = _node_distance(ra.condition, rb.condition)
        if d is None:
            return None
        total += d + (ra.output != rb.output)
    return total


def _node_distance(x, y):
    if isinstance(x, Element) and isinstance(y, Element):
        return int(x != y)
    if isinstance(x, Element) or isinstance(y, Element) or x.kind != y.kind or len(x.children) != len(y.children):
        return None
    n = len(x.children)
    cost = np.full((n, n), 10 ** 6, dtype=np.int64)
    for i, cx in enumerate(x.children):
        for j, cy in enumerate(y.children):
            d = _node_distance(cx, cy)
            if d is not None:
                cost[i, j] = d
    rows, cols = linear_sum_assignment(cost)
    best = int(cost[rows, cols].sum())
    return None if best >= 10 ** 6 else best


def elements(node) -> list[Element]:
    return [node] if isinstance(node, Element) else [e for c in node.children for e in elements(c)]
