"""Online runs log `epoch` as TRL does (prompts consumed / prompts in the dataset) and the generation round under
its own name, `round` (before: `epoch` was the round count)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_online_run import PROMPTS, tiny_cfg, tiny_run  # noqa: E402


def test_epoch_is_the_share_of_prompts_consumed_and_round_is_logged(tmp_path):
    # 8 prompts, 6 per round, a round = steps_per_generation 2 x num_iterations 1 = 2 steps
    run = tiny_run(tiny_cfg(tmp_path, max_steps=5, logging_steps=1))
    seen = []

    class Recorder:
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append((state.global_step, state.epoch))

    run.callbacks = [Recorder()]
    run.train()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in rows if "loss" in r}
    assert sorted(logged) == [1, 2, 3, 4, 5]
    for step, row in logged.items():
        assert row["epoch"] == step * 6 / (2 * len(PROMPTS))       # 0.375, 0.75, 1.125, 1.5, 1.875
        assert row["round"] == (step + 1) // 2                      # 1, 1, 2, 2, 3
    assert seen == [(s, s * 6 / 16) for s in range(1, 6)]          # callbacks see the same epoch


def test_round_is_the_last_steps_round_over_a_logging_window(tmp_path):
    # logging every 3 steps with 2-step rounds: the window of steps 1-3 spans rounds 1 and 2; `round` is 2, not 1.33
    tiny_run(tiny_cfg(tmp_path, max_steps=3, logging_steps=3)).train()
    row = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in x][-1]
    assert row["step"] == 3 and row["round"] == 2 and row["epoch"] == 3 * 6 / 16
