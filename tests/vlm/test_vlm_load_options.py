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


def test_a_text_model_as_a_vlm_policy_is_a_config_error_naming_the_option(tmp_path):
    """A causal LM directory given to task: vlm ended in transformers' ValueError traceback ("Unrecognized
    configuration class ... LlamaConfig ... AutoModelForImageTextToText. Model type should be one of" ~100 classes)."""
    import pytest

    from preflab.errors import ConfigError
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    _, processor = tiny("qwen2_vl")
    tiny_causal_lm(tiny_tokenizer(), hidden_size=16, num_layers=1).save_pretrained(tmp_path / "text")
    cfg = config_from_dict({"task": "vlm", "model_name_or_path": "builtin:tiny-qwen2-vl", "dataset_name": "x.jsonl"})
    with pytest.raises(ConfigError) as err:
        load_vlm_model(str(tmp_path / "text"), cfg, processor)
    assert str(err.value) == (
        f"model_name_or_path={str(tmp_path / 'text')!r} is not an image-text model (ValueError: Unrecognized "
        "configuration class <class 'transformers.models.llama.configuration_llama.LlamaConfig'> for this kind of "
        "AutoModel: AutoModelForImageTextToText); task: vlm loads an image-text-to-text model: a hub VLM (Qwen2-VL, "
        "LLaVA, SmolVLM, ...), a task: vlm run or one of builtin:tiny-qwen2-vl, builtin:tiny-llava, "
        "builtin:tiny-idefics3.")
    with pytest.raises(ValueError):  # a reference: load_vlm_reference words it, naming the option it came from
        load_vlm_model(str(tmp_path / "text"), cfg, processor, ref=True)
