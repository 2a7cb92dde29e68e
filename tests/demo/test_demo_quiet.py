"""`preflab demo --quiet` ("no progress bars") also silences transformers' own bars: the demo printed
"Loading weights" and "Writing model shards" bars with --quiet."""
from transformers.utils import logging as transformers_logging

from preflab.cli import main


def test_quiet_turns_off_transformers_progress_bars(tmp_path, monkeypatch):
    import preflab.demo.run as demo_run

    monkeypatch.setattr(demo_run, "run_demo", lambda out, seed, quiet: {"true_reward_before": 0.0,
                                                                         "true_reward_after": 1.0})
    try:
        assert main(["demo", "--output-dir", str(tmp_path)]) == 0
        assert transformers_logging.is_progress_bar_enabled()
        assert main(["demo", "--quiet", "--output-dir", str(tmp_path)]) == 0
        assert not transformers_logging.is_progress_bar_enabled()
    finally:
        transformers_logging.enable_progress_bar()
