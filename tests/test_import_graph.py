"""The rooms of src/preflab (data, scoring, objectives, loops, eval, reward_models, diffusion, ...) import each other
without cycles (lazy imports inside functions count too): a cycle is how a room starts to depend on everything."""
import ast
from collections import defaultdict
from pathlib import Path

import preflab

ROOT = Path(preflab.__file__).parent


def room_imports() -> dict[str, dict[str, str]]:
    """room -> {imported room: first file:line that imports it}."""
    edges: dict[str, dict[str, str]] = defaultdict(dict)
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if len(parts) < 2:  # top-level modules (cli.py wires every room) are not rooms
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                bits = name.split(".")
                if bits[0] == "preflab" and len(bits) > 1 and (ROOT / bits[1]).is_dir() and bits[1] != parts[0]:
                    edges[parts[0]].setdefault(bits[1], f"{path.relative_to(ROOT)}:{node.lineno}")
    return edges


def test_rooms_import_each_other_without_cycles():
    edges = room_imports()
    assert edges["loops"] and edges["eval"]  # the walk sees imports at all
    cycles = []

    def walk(start, node, path):
        for nxt in edges.get(node, {}):
            if nxt == start:
                cycles.append(" -> ".join(path + [start]) + "  (" + ", ".join(
                    edges[a][b] for a, b in zip(path, path[1:] + [start])) + ")")
            elif nxt not in path:
                walk(start, nxt, path + [nxt])
    for room in sorted(edges):
        walk(room, room, [room])
    assert not cycles, "\n".join(cycles)
