"""The snippets of docs/*.md are checked as written, without training (docs-trial): every `preflab train` line of a
shell block loads as a config (its file, its key=value overrides, a recipe's recipe_params), every YAML block is a
valid set of options, every `preflab.x.y` name the pages give resolves, the tools page's ToolBox snippet and the
lab page's Python block run, and the memory table of docs/scaling.md is what `preflab plan` computes. README.md
(tests/test_readme_quickstart.py) and docs/extending.md (tests/test_docs_extending.py) have their own tests that run
their lines."""
import importlib
import re
import shlex
import textwrap
from pathlib import Path

import pytest
import yaml

from preflab.config import config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "extending.md")
FENCE = re.compile(r"^( *)```(\w*)[^\n]*\n(.*?)^\1```", re.S | re.M)  # fences indented in list items too
# stands in for a page's placeholder config: a policy and the shipped pairs, nothing else written
BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "examples/data/loud_echo_pairs.jsonl"}


def _blocks(page: Path, lang: str) -> list[tuple[int, str]]:
    text = page.read_text()
    return [(text[:m.start()].count("\n") + 1, textwrap.dedent(m.group(3)))
            for m in FENCE.finditer(text) if m.group(2) == lang]


def _train_lines() -> list[tuple[str, str]]:
    """(where, command) for each `preflab train` line of the pages' bash blocks: continuations joined, comments cut."""
    lines = []
    for page in PAGES:
        for start, block in _blocks(page, "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                command = line.split(" # ")[0].strip()
                if re.search(r"preflab\)? train( |$)", command):  # `preflab train`, `$(which preflab) train`
                    lines.append((f"{page.name}:{start}", " ".join(command.split())))
    return lines


TRAIN_LINES = _train_lines()


def test_the_pages_have_train_lines_to_check():
    pages = {where.split(":")[0] for where, _ in TRAIN_LINES}
    assert {"tools.md", "reward-models.md", "vision.md", "diffusion.md", "scaling.md"} <= pages, pages


@pytest.mark.parametrize("where, command", TRAIN_LINES, ids=[f"{w}:{i}" for i, (w, _) in enumerate(TRAIN_LINES)])
def test_every_train_line_of_the_docs_loads_as_a_config(where, command, tmp_path, monkeypatch):
    """The config file exists, every override is an option with an allowed value, a recipe's recipe_params are its
    own: what `preflab train` checks before it loads anything (hub models and data are not fetched here)."""
    from preflab.recipe_names import RECIPE_TASKS
    from preflab.recipes import check_recipe_params

    words = shlex.split(command)
    args = words[words.index("train") + 1:]
    config = args[0] if args and "=" not in args[0] else None
    overrides = args[1:] if config else args
    if config == "CONFIG.yaml":  # the pages' placeholder for the reader's own config
        config = tmp_path / "CONFIG.yaml"
        config.write_text(yaml.safe_dump(BASE))
    elif config is not None:
        assert (ROOT / config).is_file(), f"{where}: {command}: no file {config}"
        config = ROOT / config
    monkeypatch.chdir(ROOT)
    cfg = load_config(config, overrides)
    if cfg.task in RECIPE_TASKS:
        check_recipe_params(cfg.task, cfg.recipe_params)


YAML_BLOCKS = [(f"{page.name}:{start}", block) for page in PAGES for start, block in _blocks(page, "yaml")]


@pytest.mark.parametrize("where, block", YAML_BLOCKS, ids=[w for w, _ in YAML_BLOCKS])
def test_every_yaml_block_of_the_docs_is_a_valid_set_of_options(where, block, tmp_path):
    """A block is a part of a config: written on a policy (a hub name: QLoRA refuses a builtin model), the shipped
    pairs and an eval set, it passes the config's checks."""
    options = yaml.safe_load(block)
    assert isinstance(options, dict), where
    config_from_dict({**BASE, "model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "output_dir": str(tmp_path),
                      "eval_dataset_name": BASE["dataset_name"], **options})


NAME = re.compile(r"(?<![\w./-])(preflab(?:\.\w+)+)")


def _resolve(name: str):
    """The object a dotted name gives: the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name is not None and module.startswith(err.name) and err.name.startswith("preflab"):
                continue
            raise
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def test_every_preflab_name_in_readme_and_docs_resolves():
    """`preflab.reward_models.interface.load_judge`, `preflab.checkpoint.verify_checkpoint`, ...: each module,
    class or function the pages name exists under that name."""
    names = {}
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name in NAME.findall(page.read_text()):
            names.setdefault(name, page.name)
    assert len(names) > 40
    missing = []
    for name, page in sorted(names.items()):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as err:
            missing.append(f"{page}: {name} ({err})")
    assert not missing, "\n".join(missing)


def test_tools_md_toolbox_snippet_runs_as_written(tmp_path, monkeypatch):
    (start, block), = [(s, b) for s, b in _blocks(ROOT / "docs" / "tools.md", "python") if "ToolBox(" in b]
    assert "box.call(\"Lookup\", {\"country\": \"France\"}).observation   # 'Paris'" in block
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(block, f"tools.md:{start}", "exec"), scope)
    box = scope["box"]
    assert box.call("Lookup", {"country": "France"}).observation == "Paris"
    assert (tmp_path / "runs" / "x" / "tool_cache.json").is_file()


def test_lab_md_python_snippet_prints_what_its_comments_say(tmp_path, monkeypatch, capsys):
    """docs/lab.md's "From Python" block (user-trial-9: the page had no Python at all) runs as written and prints
    the values its comments give: R 0.5 and R* 1.0 of the four pairs, R*'s range over the paper's betas, the 3D
    trajectory's last chosen / rejected log-ratios and unseen mass, and the ranking-accuracy experiment's numbers."""
    (start, block), = _blocks(ROOT / "docs" / "lab.md", "python")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, f"lab.md:{start}", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["0.5", "1.0", "{'min': 0.5, 'median': 0.5, 'max': 1.0}"]
    chosen, rejected = map(float, lines[3].split())
    unseen_ref, unseen = map(float, lines[4].split())
    assert (round(chosen, 2), round(rejected, 2), round(unseen_ref, 2), round(unseen, 2)) == (-0.41, -4.57, 0.77, 0.82)
    assert lines[5] == "{'betas': [0.1, 1.0, 10.0], 'trained': [1.0, 0.75, 0.5], 'idealized': [1.0, 0.75, 0.5]}"
    assert (tmp_path / "ranking-accuracy.png").is_file() and (tmp_path / "ranking-accuracy.json").is_file()


def _plan_table() -> list[list[str]]:
    text = (ROOT / "docs" / "scaling.md").read_text()
    return [[c.strip() for c in row.strip("|").split("|")] for row in text.splitlines()
            if re.match(r"\| (7B|70B) \(", row)]


def test_scaling_md_memory_table_is_what_preflab_plan_computes():
    """Each row of the table (7B and 70B, DDP / ZeRO / FSDP2, LoRA, QLoRA, precomputed reference) against
    preflab.plan.memory_plan on the shipped model configs, rounded as the table is (0.1 GiB)."""
    from preflab.plan import GiB, Sharding, memory_plan, model_config_of

    rows = _plan_table()
    assert len(rows) == 16
    models = {"7B": "examples/model_configs/llama-2-7b", "70B": "examples/model_configs/llama-3-70b"}
    for model, setup, *numbers in rows:
        path = models[model.split()[0]]
        options = {"load_dtype": "bfloat16"}
        if "LoRA" in setup:
            options["use_peft"] = True
        if "QLoRA" in setup:
            options["load_in_4bit"] = True
        if "precomputed ref" in setup:
            options["precompute_ref_log_probs"] = True
        engines = ["ddp"] if "DDP" in setup else ["zero2"] if "ZeRO-2" in setup else []
        engines += ["zero3"] * ("ZeRO-3" in setup) + ["fsdp"] * ("FSDP2" in setup)
        want = [float(n.strip("*")) for n in numbers]
        for engine in engines:
            zero = ["gradient_accumulation_steps=1"] if engine.startswith("zero") else []  # DeepSpeed's (as the doc)
            cfg = load_config(ROOT / "examples" / "dpo.yaml", [f"model_name_or_path={path}"] + zero
                              + [f"{k}={str(v).lower()}" for k, v in options.items()])
            plan = memory_plan(cfg, model_config_of(str(ROOT / path)), Sharding(engine, 8))
            got = [plan[k] / GiB for k in ("weights", "reference", "gradients", "optimizer", "activations", "total")]
            assert [f"{g:.1f}" for g in got] == [f"{w:.1f}" for w in want], (model, setup, engine, got)
