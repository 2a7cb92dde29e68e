"""`preflab report` on a real run of every online trainer (preflab.online_recipes.TRAINERS, read here so a new
trainer is covered at once; docs/guarantees.md's report column): the run list says which trainer the run is, the
loss panel is labelled with it, and the panels that show what the run is for are drawn (text trainers: the sampled
completions' reward; the preference game: the policy distribution and its distance to the equilibrium). The panels
are drawn from the series load_run reads, by code shared by every trainer of a kind: each trainer's run is read, and
the HTML (about 1.5 s a report, matplotlib) is written for one trainer of each kind (DRAWN)."""
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "online"))
from test_online_run import tiny_cfg, tiny_run  # noqa: E402

from preflab.online_recipes import TRAINERS  # noqa: E402
from preflab.report.html import _purpose, write_report  # noqa: E402
from preflab.report.plots import objective_label  # noqa: E402
from preflab.report.runs import load_run  # noqa: E402

# what a trainer needs beyond test_online_run's tiny run (as in its resume tests)
NEEDS = {"rso": dict(rso_num_samples=2, num_generations=4), "upo": dict(upo_selection="sample"),
         "mcts_dpo": dict(mcts_step_delimiter=" ", mcts_iterations=3), "gpo": dict(preference_temperature=0.5)}
DRAWN = {"online_dpo", "grpo", "rloo", "tpo", "inpo", "spo"}
GAME = Path(__file__).parents[2] / "examples" / "online" / "nash_game.yaml"


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.mark.parametrize("trainer", [t for t, spec in TRAINERS.items() if not spec.game_only])
def test_report_of_a_text_trainers_run_names_it_and_draws_its_reward(tmp_path, trainer):
    out = tmp_path / trainer
    tiny_run(tiny_cfg(out, trainer=trainer, max_steps=2, steps_per_generation=2, **NEEDS.get(trainer, {}))).train()
    run = load_run(out)
    assert f"task online, trainer {trainer}," in _purpose(run)
    assert objective_label(run) == f"online ({trainer})"
    assert len(run.series("reward")[1]) == 2 and len(run.series("loss")[1]) == 2    # a point per step
    if trainer not in DRAWN:
        return
    html = write_report([out], tmp_path / "report.html").read_text()
    assert "Online reward" in html and "Policy distribution (game)" not in html
    assert f"task online, trainer {trainer}," in _text(html)


@pytest.mark.parametrize("trainer", [t for t, spec in TRAINERS.items() if spec.game])
def test_report_of_a_game_run_names_its_trainer_and_draws_the_game_panels(tmp_path, trainer):
    from preflab.config import load_config
    from preflab.online.run import OnlineRun

    out = tmp_path / trainer
    extra = ["num_generations=4", "prompts_per_generation=6"] if trainer == "spo" else []
    OnlineRun(load_config(GAME, [f"output_dir={out}", f"trainer={trainer}", "max_steps=4", "steps_per_generation=2",
                                 "logging_steps=2", "disable_tqdm=true", *extra])).train()
    run = load_run(out)
    assert f"task online, trainer {trainer}," in _purpose(run)
    assert len(run.series("policy/p0")[1]) == 2 and len(run.series("tv_to_equilibrium")[1]) == 2
    if trainer not in DRAWN:
        return
    html = write_report([out], tmp_path / "report.html").read_text()
    assert "Policy distribution (game)" in html and "Distance to the regularised equilibrium (game)" in html
    assert "no eval.json: run `preflab eval" not in html
