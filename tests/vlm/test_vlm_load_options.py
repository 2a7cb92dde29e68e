"""load_dtype and model_init_kwargs reach an image-text model loaded from a directory (they were accepted by task: vlm
and ignored: float32, no kwargs)."""
import torch

from preflab.config import config_from_dict
from preflab.models.vlm import load_vlm_model

from vlm_helpers import tiny


def test_vlm_load_dtype_and_model_init_kwargs_reach_from_pretrained(tmp_path):
    model, processor = tiny("qwen2_vl")
    model.save_pretrained(tmp_path / "base")
    base = {"task": "vlm", "model_name_or_path": str(tmp_path / "base"), "dataset_name": "x.jsonl"}
    plain = load_vlm_model(str(tmp_path / "base"), config_from_dict(base), processor)
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    cfg = config_from_dict({**base, "load_dtype": "bfloat16", "model_init_kwargs": {"attn_implementation": "eager"},
                            "ref_model_name_or_path": str(tmp_path / "base")})
    loaded = load_vlm_model(str(tmp_path / "base"), cfg, processor)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.config._attn_implementation == "eager" != plain.config._attn_implementation
    ref = load_vlm_model(str(tmp_path / "base"), cfg, processor, ref=True)  # no ref_* options: the policy's dtype
    assert {p.dtype for p in ref.parameters()} == {torch.bfloat16} and ref.config._attn_implementation != "eager"


def test_builtin_vlm_takes_load_dtype_and_refuses_from_pretrained_kwargs():
    """builtin:tiny-qwen2-vl is built in code: load_dtype (and ref_load_dtype) is now cast to, as a builtin text
    model's (it stayed float32); model_init_kwargs it cannot take are refused, naming them (they were dropped)."""
    import pytest

    from preflab.errors import ConfigError

    _, processor = tiny("qwen2_vl")
    base = {"task": "vlm", "model_name_or_path": "builtin:tiny-qwen2-vl", "dataset_name": "x.jsonl"}
    cfg = config_from_dict({**base, "load_dtype": "bfloat16", "ref_load_dtype": "float16"})
    assert {p.dtype for p in load_vlm_model("builtin:tiny-qwen2-vl", cfg, processor).parameters()} == {torch.bfloat16}
    ref = load_vlm_model("builtin:tiny-qwen2-vl", cfg, processor, ref=True)
    assert {p.dtype for p in ref.parameters()} == {torch.float16}
    with pytest.raises(ConfigError, match=r"model_init_kwargs \['attn_implementation'\] would not reach "
                                          r"model_name_or_path='builtin:tiny-qwen2-vl'"):
        config_from_dict({**base, "model_init_kwargs": {"attn_implementation": "eager"}})
