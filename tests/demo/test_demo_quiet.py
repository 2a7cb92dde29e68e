"""`preflab demo --quiet` ("no progress bars") also silences transformers' own bars: the demo printed
"Loading weights" and "Writing model shards" bars with --quiet. A command's quieting lasts as long as the command:
main() called in-process (a notebook, a test session) left transformers' bars off, its logs at error level and the
warning filters changed, and a later demo without --quiet then ran without bars."""
import warnings

from transformers.utils import logging as transformers_logging

from preflab.cli import main


def test_quiet_turns_off_transformers_progress_bars_for_the_command_only(tmp_path, monkeypatch):
    import preflab.demo.run as demo_run

    seen = []

    def fake_demo(out, seed, quiet):
        seen.append(transformers_logging.is_progress_bar_enabled())
        return {"true_reward_before": 0.0, "true_reward_after": 1.0}

    monkeypatch.setattr(demo_run, "run_demo", fake_demo)
    assert main(["demo", "--output-dir", str(tmp_path)]) == 0
    assert main(["demo", "--quiet", "--output-dir", str(tmp_path)]) == 0
    assert seen == [True, False]
    assert transformers_logging.is_progress_bar_enabled()


def test_a_train_command_leaves_warning_filters_logs_and_bars_as_it_found_them(capsys):
    """preflab train quiets other libraries (quiet_third_party_warnings) even when it stops at a bad option.
    The command runs once before the filters are noted: its first run imports libraries whose import adds filters
    of their own (accelerate.scheduler ignores torch.optim.lr_scheduler's UserWarnings), which stay, as after any
    import; the test alone in a process (an xdist worker) otherwise saw them as the command's."""
    bad = ["train", "model_name_or_path=builtin:tiny-llama", "dataset_name=missing.jsonl", "max_grad_norm=-1"]
    assert main(bad) == 2
    filters, level = list(warnings.filters), transformers_logging.get_verbosity()
    assert transformers_logging.is_progress_bar_enabled()
    assert main(bad) == 2
    assert "max_grad_norm=-1" in capsys.readouterr().err
    assert transformers_logging.is_progress_bar_enabled()
    assert transformers_logging.get_verbosity() == level and warnings.filters == filters


def test_demo_help_says_what_the_demo_shows(capsys):
    """docs-walk-3: `preflab demo --help` listed the options only; it now says what the demo measures."""
    import pytest

    from preflab.demo.task import LOUD_FRACTION

    with pytest.raises(SystemExit) as stop:
        main(["demo", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "held-out prompts are scored with the true reward before and after DPO" in text
    assert f"only {LOUD_FRACTION:.0%} of the time" in text
