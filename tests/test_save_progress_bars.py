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


def _tiny_llama_and_tokenizer():
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tokenizer = tiny_tokenizer("bytelevel")
    return tiny_causal_lm(tokenizer), tokenizer


@pytest.mark.parametrize("quiet", [True, False])
def test_the_vllm_generators_per_round_save_draws_its_bar_only_without_disable_tqdm(tmp_path, capfd, bars_on, quiet):
    """generation_backend: vllm saves the policy each round (preflab.online.generator.save_for_vllm, quiet = the
    run's disable_tqdm): no "Writing model shards" bar when quiet, transformers' bar without it (the capture sees
    it), the weights and tokenizer written either way, the bar switches as found after."""
    from preflab.online.generator import save_for_vllm

    hf_logging, hub = bars_on
    model, tokenizer = _tiny_llama_and_tokenizer()
    states = dict(hub.progress_bar_states)
    capfd.readouterr()
    save_for_vllm(model, tokenizer, str(tmp_path / "w"), quiet)
    err = capfd.readouterr().err
    assert (BAR in err) is (not quiet), err
    assert (tmp_path / "w" / "model.safetensors").is_file() and (tmp_path / "w" / "tokenizer.json").is_file()
    assert hf_logging.is_progress_bar_enabled() and hub.progress_bar_states == states


def test_make_generator_passes_disable_tqdm_to_the_vllm_generator(monkeypatch):
    """The run's switch reaches the vLLM generator (vllm itself is not needed to build it here)."""
    from types import SimpleNamespace

    import preflab.online.generator as gen

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace())
    cfg = SimpleNamespace(generation_backend="vllm", output_dir="out", max_completion_length=4, temperature=1.0,
                          top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0)
    for disable_tqdm in (True, False):
        cfg.disable_tqdm = disable_tqdm
        assert gen.make_generator(cfg, None, None).quiet is disable_tqdm


@pytest.mark.parametrize("quiet", [True, False])
def test_the_diffusion_demos_base_pipeline_save_draws_no_bar_with_quiet(tmp_path, capfd, bars_on, quiet):
    """`preflab demo diffusion --quiet`: the base pipeline's save (its CLIP text encoder's save_pretrained draws
    transformers' bar) shows no "Writing model shards" bar; without --quiet it does."""
    from preflab.demo.diffusion import save_base_pipeline
    from preflab.diffusion.pipeline import tiny_text_to_image_pipeline

    hf_logging, _ = bars_on
    pipeline = tiny_text_to_image_pipeline(0)
    capfd.readouterr()
    save_base_pipeline(pipeline, tmp_path / "base", quiet)
    err = capfd.readouterr().err
    assert (BAR in err) is (not quiet), err
    assert (tmp_path / "base" / "text_encoder" / "model.safetensors").is_file()
    assert hf_logging.is_progress_bar_enabled()
