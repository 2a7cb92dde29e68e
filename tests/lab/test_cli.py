"""`preflab lab list` and `preflab lab run NAME --out DIR` write a readable PNG and the numbers as JSON."""
import json

import pytest

from preflab.cli import main
from preflab.lab.registry import list_experiments

REQUIRED = {"nash-rps", "accelerated", "online-dpo", "rso", "hypo-coverage", "vpo", "rdpo-flips", "maxmin",
            "onpolicy-bandit", "dpo-3d", "dpo-optimum", "ranking-accuracy", "token-optimum"}


def test_lab_list(capsys):
    assert main(["lab", "list"]) == 0
    out = capsys.readouterr().out
    assert REQUIRED <= {e.name for e in list_experiments()}
    for name in ("nash-rps", "accelerated"):
        assert name in out


def _check_numbers(name, numbers):
    if name == "accelerated":
        reach = numbers["iterations_to_0.05"]
        assert reach["APO alpha = 0.3"] < reach["iterative DPO (alpha = 0)"]
        assert max(numbers["max_distance_to_closed_form"].values()) < 1e-6
    else:
        assert numbers["egpo_gap"] < 1e-12 and numbers["online_ipo_gap"] > 0.1


@pytest.mark.parametrize("name", ["accelerated", "nash-rps"])
def test_lab_run_writes_png_and_json(tmp_path, name, capsys):
    assert main(["lab", "run", name, "--out", str(tmp_path), "--quick"]) == 0
    png, js = tmp_path / f"{name}.png", tmp_path / f"{name}.json"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    data = json.loads(js.read_text())
    assert data["name"] == name and data["panels"] and data["theory"]
    for panel in data["panels"]:
        assert panel["title"] and panel["xlabel"] and panel["ylabel"] and panel["curves"]
    _check_numbers(name, data["numbers"])


def test_unknown_experiment_is_a_clear_error(tmp_path, capsys):
    assert main(["lab", "run", "nash-rsp", "--out", str(tmp_path)]) == 2
    assert "nash-rps" in capsys.readouterr().err
