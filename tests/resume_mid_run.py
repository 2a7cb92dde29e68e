"""The stop / resume / compare block of the in-process online resume tests (tests/online/test_resume_every_trainer.py,
tests/online/test_rloo_recipe.py, tests/vlm/test_vision_r1_online.py, tests/vlm/test_vision_online_resume.py): one
place for the three runs and the checks every such test makes; each test adds its own checks on what it returns."""
import json
from pathlib import Path


def resume_mid_run(build, out: Path, stop_at_step, *, stop: int, save: int = 3):
    """(full, resumed): `build(folder, **extra)` makes a run (an OnlineRun writing into folder; extra: save_steps,
    resume_from_checkpoint). OUT/full trains straight; OUT/cut checkpoints every `save` steps and is stopped (the
    stop_at_step fixture) when step `stop` asks for its micro-batches; a run resumed in OUT/cut from there trains to
    the end. Asserted: the online state of step `save` was written, the resumed run started at step `save`, and its
    final weights equal the uninterrupted run's to 1e-6 (max |difference| over every tensor of the state dict)."""
    full = build(out / "full")
    full.train()
    cut = build(out / "cut", save_steps=save)
    with stop_at_step(cut, stop):
        cut.train()
    assert (out / "cut" / "online-state" / f"step-{save}").is_dir()
    resumed = build(out / "cut", save_steps=save, resume_from_checkpoint=True)
    assert resumed.train()["resumed_from_step"] == save
    a, b = full.policy.state_dict(), resumed.policy.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    return full, resumed


def logged_losses(folder: Path) -> dict:
    """{step: loss} of the rows of FOLDER/metrics.jsonl that log a loss."""
    rows = map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in rows if "loss" in r}
