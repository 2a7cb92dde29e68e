"""The rooms of src/preflab (data, scoring, objectives, loops, eval, reward_models, diffusion, ...) import each other
without cycles (lazy imports inside functions count too): a cycle is how a room starts to depend on everything.
And so do its modules, the top-level ones (config.py, recipes.py, plan.py, ...) included: the config layer sits below
the subsystems it validates, and a subsystem that needs a config check's constant or function imports it from there."""
import ast
import re
import sys
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


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# an entry of a table of modules imported at run time: "preflab.x.y" or "preflab.x.y:name"
TABLE_ENTRY = re.compile(r"preflab(\.\w+)+(:\w+)?")  # preflab.recipes.RECIPES' "preflab.tool_use.dstc:run_dstc"


def module_imports(root: Path = ROOT, tables: bool = False) -> dict[str, dict[str, str]]:
    """module -> {imported preflab module: first file:line that imports it}, for every .py file under `root`.
    Imports inside functions count; `from preflab.x import y` is an edge to preflab.x.y where that is a module, else
    to preflab.x; `import preflab.x.y` to the longest module prefix; relative imports are resolved; and
    importlib.import_module("preflab.x") with a constant string counts as `import preflab.x` (a string does not hide
    an edge). tables: a string constant that is a whole TABLE_ENTRY counts too (the tables whose entries are
    imported by a variable at run time: preflab.recipes.RECIPES, cli.py's task
    routes; a `__module__` assignment is not one)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}

    def module_of(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, dict[str, str]] = {m: {} for m in files}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        renamed = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                   and any(getattr(t, "attr", None) == "__module__" for t in n.targets)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args
                  and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                names = [node.args[0].value]
            elif (tables and isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in renamed
                  and TABLE_ENTRY.fullmatch(node.value)):
                names = [node.value.partition(":")[0]]
            else:
                continue
            for name in names:
                target = module_of(name) if name.split(".")[0] == "preflab" else None
                if target and target != module:
                    edges[module].setdefault(target, f"{path.relative_to(root.parent)}:{node.lineno}")
    return edges


def import_cycles(edges: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges)))
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _one_cycle(edges, component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first), as a module list ending where it began."""
    start, inside = component[0], set(component)
    came = {start: None}
    queue = [start]
    for v in queue:
        for w in edges[v]:
            if w == start:
                path = [v]
                while came[path[-1]] is not None:
                    path.append(came[path[-1]])
                return path[::-1] + [start]  # start, ..., v, start
            if w in inside and w not in came:
                came[w] = v
                queue.append(w)
    return [start]


def describe_cycles(edges) -> str:
    """One paragraph per import cycle: a shortest cycle with the file:line of each of its edges, then every other
    edge inside the same strongly connected component."""
    out = []
    for component in import_cycles(edges):
        cycle = _one_cycle(edges, component)
        steps = [f"  {a} -> {b}  ({edges[a][b]})" for a, b in zip(cycle, cycle[1:])]
        inside = set(component)
        rest = [f"  {a} -> {b}  ({where})" for a in component for b, where in sorted(edges[a].items())
                if b in inside and f"  {a} -> {b}  ({where})" not in steps]
        out.append(f"{len(component)} modules in a cycle: {', '.join(component)}\n" + "\n".join(steps)
                   + ("\n  other edges among them:\n" + "\n".join(rest) if rest else ""))
    return "\n\n".join(out)


def test_no_module_of_preflab_is_in_an_import_cycle():
    """Every module (.py file) of src/preflab, top-level modules and cli.py included, is in no import cycle, lazy
    imports counted."""
    edges = module_imports()
    assert "preflab.online_options" in edges["preflab.config"]  # the walk sees lazy imports inside methods
    assert "preflab.loops.offline" in edges["preflab.loops.sft"]  # and module-level ones
    cycles = describe_cycles(edges)
    assert not cycles, "import cycles among the modules of src/preflab:\n" + cycles


# the runtime cycles through a table of module names known when the table test was written (a registry whose entries
# import the module that lists them back): new ones fail the test below
KNOWN_TABLE_CYCLES: set = set()  # models.load's table of built-in registries was the last: their names now live in
# preflab.models.builtin_names, which imports nothing


def test_no_new_import_cycle_through_a_table_of_module_names():
    """The recipe programs were imported by name from preflab.recipes' RECIPES, which the config layer imported, and
    the programs build their stages' configs through it: recipes -> ladder.recipe -> recipe_options -> config ->
    recipes at run time, invisible to the import test above. The config layer now imports the recipes' names from
    preflab.recipe_names (names only, no table of modules); likewise the lab experiments register with
    preflab.lab.registration, below preflab.lab.registry, which imports them by name; and preflab.models.load listed
    the built-in models of preflab.online.tasks and preflab.diffusion.pipeline (which load models through the config
    layer) through a table of their modules, and now reads their names from preflab.models.builtin_names (plain
    data). Every edge from a table entry that closes a cycle is one of KNOWN_TABLE_CYCLES (none now)."""
    edges = module_imports(tables=True)
    assert "preflab.ladder.recipe" in edges["preflab.recipes"]  # the walk sees the tables' entries
    assert "preflab.sandbox" not in edges["preflab.sandbox._guard"]  # and not a `__module__` assignment
    plain = module_imports()
    closing = sorted((a, b) for component in import_cycles(edges) for a in component for b in edges[a]
                     if b in component and b not in plain[a])
    assert not [e for e in closing if e[0] in ("preflab.recipes", "preflab.lab.registry")], describe_cycles(edges)
    assert set(closing) <= KNOWN_TABLE_CYCLES, "new import cycles through a table of module names:\n" + \
        describe_cycles(edges)


def test_the_layers_below_the_loops_import_neither_the_loops_nor_the_models():
    """preflab.recipes and preflab.recipe_state (the recipe layer, below the training loops the recipes' stages run)
    imported preflab.loops.launch for two reads of the launcher's variables, which now live in preflab.launch_env
    (plain os.environ reads, imports nothing of preflab); preflab.runlog imported preflab.models.dropout for
    finish_run, which nothing called (removed). Lazy imports count."""
    edges = module_imports()
    above = ("preflab.loops", "preflab.models")
    for low in ("preflab.recipes", "preflab.recipe_state", "preflab.runlog", "preflab.launch_env"):
        reached = {m: where for m, where in edges[low].items() if m.startswith(above)}
        assert not reached, f"{low} imports {reached}"
    assert not [m for m in edges["preflab.launch_env"] if m.startswith("preflab")]


# the config layer: TrainConfig and the tables and checks it runs before any model loads
CONFIG_LAYER = ("preflab.config", "preflab.config_owners", "preflab.config_trl", "preflab.config_trl_methods",
                "preflab.config_options", "preflab.config_defaults", "preflab.online_options",
                "preflab.streaming_options", "preflab.best_model_options", "preflab.online_recipes")


def test_the_config_layer_imports_no_loop_and_no_online_run():
    """preflab.config, config_owners and config_trl imported the option tables and checks they run from the rooms
    above them (preflab.online.options, preflab.loops.best_model, preflab.loops.streaming_options,
    preflab.loops.sft_loss): 16 imports that ran back up the layers. Those now live at the config layer
    (preflab.online_options, preflab.best_model_options, preflab.streaming_options, and the online recipes' table
    preflab.online_recipes, which preflab.online.trainers held beside its example builders) or below it
    (preflab.objectives._sft_task), and the loops and online runs import them from there. Lazy imports count."""
    edges = module_imports()
    upward = {(low, m): where for low in CONFIG_LAYER for m, where in edges.get(low, {}).items()
              if m.startswith(("preflab.loops", "preflab.online.", "preflab.demo", "preflab.lab", "preflab.eval",
                               "preflab.reward_models", "preflab.tool_use", "preflab.ladder"))}
    assert "preflab.config_trl_methods" in edges["preflab.config_trl"]  # the walk sees the lazy imports
    assert not upward, f"the config layer imports the rooms above it: {upward}"


def test_an_import_module_string_is_an_edge(tmp_path):
    """module_imports reads importlib.import_module("preflab....") with a constant string as an import (src/preflab
    has none left to show it: the last two were eval's reaches into online/ and reward_models/)."""
    (tmp_path / "preflab" / "low").mkdir(parents=True)
    (tmp_path / "preflab" / "high").mkdir()
    for path in ("__init__.py", "low/__init__.py", "high/__init__.py", "high/top.py"):
        (tmp_path / "preflab" / path).write_text("")
    (tmp_path / "preflab" / "low" / "base.py").write_text(
        "import importlib\n\ndef f():\n    return importlib.import_module('preflab.high.top')\n")
    edges = module_imports(tmp_path / "preflab")
    assert edges["preflab.low.base"] == {"preflab.high.top": "preflab/low/base.py:4"}


# run-time reaches from a room to a room that builds on it, through importlib.import_module("preflab....") (the room
# test at the top reads import statements only). There are none: the `preflab eval` policy command, which reached
# preflab.online.tasks (builtin:demo-sft) and preflab.reward_models.interface (--reward-model) from the eval library
# room that loops/ and reward_models/ build on, is preflab.eval_cli, above them, and builtin:demo-sft is built in
# preflab.demo.sft_model and passed to preflab.eval.loading.load_for_eval. A new one fails the test below; an
# unavoidable one would be listed here, and leave this set when fixed
KNOWN_ROOM_REACHES: set = set()


def test_no_room_reaches_a_room_above_it_but_the_known_ones():
    rooms: dict[str, dict[str, str]] = defaultdict(dict)
    for module, targets in module_imports().items():
        for target, where in targets.items():
            a, b = module.split("."), target.split(".")
            if len(a) > 2 and len(b) > 2 and a[1] != b[1]:
                rooms[a[1]].setdefault(b[1], where)
    for a, b in sorted(KNOWN_ROOM_REACHES):
        assert b in rooms[a], f"{a} no longer reaches {b}: remove ({a!r}, {b!r}) from KNOWN_ROOM_REACHES"
        del rooms[a][b]
    cycles = import_cycles(rooms)
    assert not cycles, "rooms in an import cycle (import_module strings counted): " + "; ".join(
        " ".join(c) + ": " + ", ".join(f"{x} -> {y} ({rooms[x][y]})" for x in c for y in rooms[x] if y in c)
        for c in cycles)


def _reached(edges: dict[str, dict[str, str]], start: str) -> set[str]:
    """Every module that `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), {}):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# imports from a room's module of a top-level module that imports that room back (an arrow back up the layers: the
# room is below the top-level module that builds on it). None are left: preflab.models.vlm_run imported preflab.config
# (which imports preflab.models.load and .quantize) for config_from_dict, to read eight options of a vlm checkpoint's
# config.yaml with TrainConfig's defaults; those defaults now live in preflab.model_part_options, below both. A new
# one fails the test below; an unavoidable one would be listed here as (module, top-level module)
KNOWN_ARROWS_BACK_UP: set = set()


def test_no_room_imports_a_top_level_module_that_imports_the_room_back():
    """A module of a room (preflab.models.vlm_run) may import a top-level module (preflab.errors, preflab.checkpoint)
    only where that module does not reach the room itself, lazy imports counted."""
    edges = module_imports()
    back_up = {}
    top = {m for m in edges if m.count(".") == 1 and not (ROOT / m.split(".")[1]).is_dir()}
    for module, targets in edges.items():
        parts = module.split(".")
        if module in top or len(parts) < 2:
            continue
        room = ".".join(parts[:2])
        for target, where in targets.items():
            if target in top and any(m == room or m.startswith(room + ".") for m in _reached(edges, target)):
                back_up[(module, target)] = where
    assert ("preflab.models.load", "preflab.errors") not in back_up and edges["preflab.config"]  # the walk reads
    for known in sorted(KNOWN_ARROWS_BACK_UP):
        assert known in back_up, f"{known} is gone: remove it from KNOWN_ARROWS_BACK_UP"
        del back_up[known]
    assert not back_up, f"room modules import a top-level module that imports their room back: {back_up}"
