"""A run's final save honours disable_tqdm (preflab.quiet.progress_bars_off around write_model in
preflab.loops.driver.save_model): transformers' save_pretrained draws a "Writing model shards" bar, which showed
with disable_tqdm: true. With disable_tqdm: false the save prints what transformers prints; either way transformers'
progress-bar switch and huggingface_hub's per-group states are as they were after the save (a notebook's bars are
not turned off for good)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "loops"))
from test_best_model import _rows  # noqa: E402

BAR = "Writing model shards"


@pytest.fixture
def bars_on():
    """transformers' bars on, and one huggingface_hub group switched off, as a notebook might have them; put back
    as found after the test."""
    import huggingface_hub.utils.tqdm  # noqa: F401
    from transformers.utils import logging as hf_logging

    hub = sys.modules["huggingface_hub.utils.tqdm"]
    was, states = hf_logging.is_progress_bar_enabled(), dict(hub.progress_bar_states)
    hf_logging.enable_progress_bar()
    hub.disable_progress_bars("some_library.downloads")
    yield hf_logging, hub
    (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
    hub.progress_bar_states.clear()
    hub.progress_bar_states.update(states)


def _trainer(tmp_path, disable_tqdm):
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer

    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "rows",
                            "output_dir": str(tmp_path / "run"), "max_steps": 1, "per_device_train_batch_size": 4,
                            "max_length": 64, "disable_tqdm": disable_tqdm, "save_strategy": "no", "report_to": []})
    return Trainer(cfg, train_data=_rows(4))


@pytest.mark.parametrize("disable_tqdm", [True, False])
def test_the_final_save_draws_its_bar_only_without_disable_tqdm(tmp_path, capfd, bars_on, disable_tqdm):
    hf_logging, hub = bars_on
    trainer = _trainer(tmp_path, disable_tqdm)
    states = dict(hub.progress_bar_states)
    capfd.readouterr()
    trainer.save_model()
    err = capfd.readouterr().err
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert (BAR in err) is (not disable_tqdm), err
    assert hf_logging.is_progress_bar_enabled()  # as found
    assert hub.progress_bar_states == states == {"_global": True, "some_library.downloads": False}
