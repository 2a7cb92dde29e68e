"""README's Quickstart runs line by line, in order, on a fresh copy of the examples with no network (issue 11):
every bash line not marked [network] or [GPU], with tiny step counts, then the Python block."""
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from preflab.cli import main

ROOT = Path(__file__).resolve().parents[1]
SECTION = re.search(r"^## Quickstart\n(.*?)^## ", (ROOT / "README.md").read_text(), re.S | re.M).group(1)
# The 2-process line runs in tests/loops/test_multiprocess.py (multi-process tests are slow; one is enough).
MULTI = "accelerate launch --multi_gpu --num_processes 2 $(which preflab) train examples/quickstart.yaml"


def bash_lines() -> list[tuple[str, str]]:
    """(command, comment) per logical line of the Quickstart's bash block (backslash continuations joined)."""
    block = re.search(r"```bash\n(.*?)```", SECTION, re.S).group(1)
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        command, _, comment = line.partition(" # ")
        if command.strip():
            lines.append((" ".join(command.split()), comment.strip()))
    return lines


def offline(line) -> bool:
    return not re.match(r"\[[^\]]*(network|GPU)", line[1])


def test_quickstart_marks_what_needs_the_network():
    lines = bash_lines()
    assert [c for c, _ in lines if "Qwen/" in c or "trl-lib/" in c] == [c for c, _ in lines if not offline((c, _))]
    assert any(c.startswith(MULTI) for c, _ in lines)
    for config in ("quickstart", "lora_dpo"):  # the offline examples name no hub model or dataset
        text = (ROOT / "examples" / f"{config}.yaml").read_text()
        assert "builtin:" in text and "examples/data/" in text


def _run(command: str) -> int:
    args = shlex.split(command)
    assert args[0] == "preflab", command
    if args[1] == "train":
        args += ["max_steps=2", "disable_tqdm=true"]
    if args[1:3] == ["lab", "run"]:
        args.append("--quick")
    return main(args[1:])


@pytest.mark.slow
def test_quickstart_lines_run_in_order_offline(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # a fresh clone: examples only, no outputs
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ran = []
    for command, comment in filter(offline, bash_lines()):
        if command.startswith(MULTI):
            continue
        for part in command.split("&&"):
            assert _run(part.strip()) == 0, part
            ran.append(part.strip())
    assert len(ran) == 8, ran
    config = lambda run: (tmp_path / "outputs" / run / "config.yaml").read_text()  # noqa: E731
    assert "loss_type: sigmoid" in config("quickstart") and "loss_type: ipo" in config("quickstart-ipo")
    assert json.loads((tmp_path / "outputs/quickstart/eval.json").read_text())["metrics"]
    report = (tmp_path / "report.html").read_text()
    assert "quickstart-ipo" in report and "no metrics.jsonl" not in report
    assert (tmp_path / "outputs/quickstart-lora/adapter_model.safetensors").is_file()
    assert (tmp_path / "lab_results/nash-rps/nash-rps.json").is_file()

    # the Python block, with the same tiny step count
    import preflab.config

    code = re.search(r"```python\n(.*?)```", SECTION, re.S).group(1)
    real = preflab.config.load_config
    monkeypatch.setattr(preflab.config, "load_config",
                        lambda path, overrides=(): real(path, [*overrides, "max_steps=2", "disable_tqdm=true"]))
    scope = {}
    exec(compile(code, "README.md#Quickstart", "exec"), scope)
    assert scope["summary"]["global_step"] == 2
    assert "loss_type: robust" in config("quickstart-robust") and "loss_type: sigmoid" in config("quickstart")
