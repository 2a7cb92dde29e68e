"""preflab.recipe_state: the shared weight loader of the recipes' stages (OTC, DSTC, iTool, raft_ladder, themis)."""
import pytest
import torch
from safetensors.torch import save_file

from preflab.errors import ConfigError
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.recipe_state import load_safetensors_into


def _model(hidden_size=32, seed=0):
    return tiny_causal_lm(tiny_tokenizer("char"), arch="llama", hidden_size=hidden_size, num_layers=2, num_heads=4,
                          seed=seed)


def test_load_safetensors_into_is_exact_and_refuses_a_file_that_does_not_fit(tmp_path):
    saved = _model(seed=0)
    saved.save_pretrained(tmp_path / "stage", safe_serialization=True)   # how a stage's run writes its weights
    path = tmp_path / "stage" / "model.safetensors"
    loaded = _model(seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()))
    load_safetensors_into(loaded, path)       # rotary inv_freq is a non-persistent buffer: in neither, not "missing"
    assert all(torch.equal(saved.state_dict()[k], v) for k, v in loaded.state_dict().items())
    with pytest.raises(ConfigError, match=r"model\.safetensors does not fit .*other shapes \['lm_head\.weight'"):
        load_safetensors_into(_model(hidden_size=64), path)
    state = dict(saved.state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["model.norm.weight"]
    save_file(state, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ConfigError, match=r"odd\.safetensors does not fit .*missing \['model\.norm\.weight'\], "
                                          r"unexpected \['extra\.weight'\]"):
        load_safetensors_into(_model(), tmp_path / "odd.safetensors")
