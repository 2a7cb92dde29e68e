"""Lazily exported names stay the exported object whatever is imported first (issue 11, item 4: `preflab.lab.egpo`
became the module `preflab.lab.egpo` after its first use, because the name equals its submodule's name)."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "preflab"

# Each check runs in a fresh interpreter: the bug depends on what was imported before.
CHECK = textwrap.dedent("""
    import importlib, types
    packages = ["preflab.lab", "preflab.eval", "preflab.reward_models"]
    checked = []
    for name in packages:
        pkg = importlib.import_module(name)
        exports = pkg._EXPORTS
        for export, sub in sorted(exports.items()):
            if {order!r} == "submodule_first":
                importlib.import_module(f"{{name}}.{{sub}}")
            first = getattr(pkg, export)
            module = importlib.import_module(f"{{name}}.{{sub}}")
            again = getattr(importlib.import_module(name), export)
            assert isinstance(module, types.ModuleType) and module.__name__ == f"{{name}}.{{sub}}"
            assert first is getattr(module, export) and again is first, (name, export, first, again)
            assert not isinstance(again, types.ModuleType), (name, export)
            checked.append(export)
    assert "egpo" in checked
    print("ok", len(checked))
""")


@pytest.mark.slow
@pytest.mark.parametrize("order", ["name_first", "submodule_first"])
def test_lazy_export_equal_to_its_submodule_name_stays_the_function(order):
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", CHECK.format(order=order)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def test_every_package_with_lazy_exports_is_checked():
    # preflab's own __getattr__ exports nothing: it only raises ImportError for TRL's class names
    # (tests/test_trl_migration.py), so it is not a lazy-export package
    lazy = sorted(p.parent.relative_to(SRC.parent).as_posix().replace("/", ".") for p in SRC.rglob("__init__.py")
                  if ("def __getattr__" in p.read_text() and p.parent != SRC) or "lazy_exports(" in p.read_text())
    assert lazy == ["preflab.eval", "preflab.lab", "preflab.reward_models"]


def test_egpo_from_package_then_module_then_package():
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import importlib, sys
        from preflab.lab import egpo
        from preflab.lab.egpo import egpo_step, online_ipo
        module = importlib.import_module("preflab.lab.egpo")
        from preflab.lab import egpo as again
        import preflab.lab
        assert callable(egpo) and egpo is module.egpo and again is egpo and preflab.lab.egpo is egpo
        assert sys.modules["preflab.lab.egpo"] is module and module.egpo_step is egpo_step
        import preflab.lab.egpo
        assert preflab.lab.egpo is egpo
        print("ok")
    """)], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "ok", proc.stderr[-3000:]
