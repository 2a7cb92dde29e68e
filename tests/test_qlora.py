"""QLoRA (preflab.models.quantize): TRL ModelConfig's load_in_4bit / load_in_8bit options, the BitsAndBytesConfig
built from them, the refusals before anything loads, the wiring into load_models, and the plan's 4-bit bytes."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.models import load as load_module
from preflab.models import quantize

ROOT = Path(__file__).resolve().parents[1]
BASE = {"model_name_or_path": "someone/some-model", "dataset_name": "x.jsonl", "use_peft": True}


def test_4bit_kwargs_are_trls_get_quantization_config_and_build_a_bitsandbytes_config():
    """compute and storage dtype = the model dtype (TRL), quant type and double quantization as given; built into
    transformers.BitsAndBytesConfig without bitsandbytes installed."""
    from transformers import BitsAndBytesConfig

    cfg = config_from_dict({**BASE, "load_in_4bit": True, "torch_dtype": "float16", "bnb_4bit_quant_type": "fp4",
                            "use_bnb_nested_quant": True})
    kwargs = quantize.quantization_kwargs(cfg)
    assert kwargs == {"load_in_4bit": True, "bnb_4bit_compute_dtype": torch.float16, "bnb_4bit_quant_type": "fp4",
                      "bnb_4bit_use_double_quant": True, "bnb_4bit_quant_storage": torch.float16}
    built = quantize.quantization_config(cfg)
    assert isinstance(built, BitsAndBytesConfig) and built.load_in_4bit and not built.load_in_8bit
    assert (built.bnb_4bit_compute_dtype, built.bnb_4bit_quant_type, built.bnb_4bit_use_double_quant) == \
        (torch.float16, "fp4", True)
    unset = config_from_dict({**BASE, "load_in_4bit": True})  # no model dtype: bfloat16, nf4, no nesting
    assert quantize.quantization_kwargs(unset) == {
        "load_in_4bit": True, "bnb_4bit_compute_dtype": torch.bfloat16, "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": False, "bnb_4bit_quant_storage": torch.bfloat16}
    given = config_from_dict({**BASE, "load_in_4bit": True, "load_dtype": "float16", "bnb_4bit_compute_dtype": "float32"})
    assert quantize.quantization_kwargs(given)["bnb_4bit_compute_dtype"] is torch.float32
    assert quantize.quantization_kwargs(config_from_dict({**BASE, "load_in_8bit": True})) == {"load_in_8bit": True}
    assert quantize.quantization_kwargs(config_from_dict(BASE)) is None


@pytest.mark.parametrize("extra,message", [
    ({"load_in_4bit": True, "use_peft": False}, r"load_in_4bit: true loads the base quantized.*set use_peft: true"),
    ({"load_in_8bit": True, "use_peft": False}, r"load_in_8bit: true .*set use_peft: true"),
    ({"load_in_4bit": True, "load_in_8bit": True}, r"load_in_4bit and load_in_8bit are both set"),
    ({"use_bnb_nested_quant": True}, r"use_bnb_nested_quant applies only with load_in_4bit: true .*remove it\."),
    ({"use_bnb_nested_quant": True, "bnb_4bit_quant_type": "fp4"},
     r"bnb_4bit_quant_type, use_bnb_nested_quant apply only with load_in_4bit: true .*remove them\."),
    ({"load_in_8bit": True, "bnb_4bit_quant_type": "fp4"}, r"bnb_4bit_quant_type apply to load_in_4bit, not "),
    ({"load_in_4bit": True, "model_name_or_path": "builtin:tiny-llama"}, r"builtin models .* cannot be quantized"),
    ({"load_in_4bit": True, "task": "reward"}, r"load_in_4bit applies to task: dpo \| sft"),
    ({"load_in_4bit": True, "bnb_4bit_quant_type": "int4"}, r"bnb_4bit_quant_type='int4' is not allowed"),
])
def test_quantization_options_that_cannot_work_are_config_errors(extra, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**BASE, **extra})


def test_on_cpu_a_4bit_run_stops_before_loading_anything_naming_the_option(tmp_path, monkeypatch):
    from preflab.loops.offline import Trainer

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(load_module, "load_causal_lm", no_loading)
    monkeypatch.setattr(load_module, "load_tokenizer", no_loading)
    cfg = config_from_dict({**BASE, "load_in_4bit": True, "output_dir": str(tmp_path / "out"), "max_steps": 1,
                            "use_cpu": True})
    with pytest.raises(ConfigError, match=r"load_in_4bit: bitsandbytes 4-bit weights need a CUDA GPU, and use_cpu: "
                                          r"true is set.*use_peft: true, load_dtype: bfloat16"):
        Trainer(cfg)
    assert not (tmp_path / "out").exists()


def test_a_gpu_machine_without_bitsandbytes_is_told_to_install_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(quantize.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match=r"load_in_8bit: the bitsandbytes package is not installed; pip install "
                                          "bitsandbytes"):
        quantize.check_quantization_machine(config_from_dict({**BASE, "load_in_8bit": True}))


def test_load_models_passes_the_config_and_prepares_the_base_for_kbit_training(monkeypatch):
    """The load is asked for the BitsAndBytesConfig in the compute dtype; peft's prepare_model_for_kbit_training
    then freezes the base and casts its 16-bit weights to float32; only the LoRA factors train. (The quantized load
    itself needs a GPU: the 16-bit tiny model stands in for it.)"""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    calls = []

    def fake_load(name, dtype, *args, quantization=None, **kwargs):
        calls.append((name, dtype, quantization))
        return tiny_causal_lm(tok, arch="llama", seed=0).to(torch.bfloat16)

    monkeypatch.setattr(quantize, "check_quantization_machine", lambda cfg: None)
    monkeypatch.setattr(load_module, "load_causal_lm", fake_load)
    cfg = config_from_dict({**BASE, "load_in_4bit": True, "load_dtype": "bfloat16", "lora_r": 4})
    policy, ref = load_module.load_models(cfg, tok)
    (name, dtype, quantization), = calls
    assert (name, dtype) == ("someone/some-model", "bfloat16") and ref is None
    assert quantization.load_in_4bit and quantization.bnb_4bit_compute_dtype == torch.bfloat16
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen = [p for n, p in policy.named_parameters() if "lora_" not in n]
    assert all(p.dtype == torch.float32 for p in frozen)  # prepare_model_for_kbit_training's cast


def test_plan_counts_4bit_weights_in_closed_form():
    """Llama-2-7b: the 32 x (4 h^2 + 3 h i) Linear weights at 4 bits plus a float32 absmax per 64 weights (double
    quantization: one byte per 64 plus a float32 per 64 x 256); embeddings, head and norms in float32; the LoRA
    gradients and AdamW state in float32."""
    from preflab.plan import Sharding, memory_plan, model_config_of

    h, i, layers, vocab = 4096, 11008, 32, 32000
    linear = layers * (4 * h * h + 3 * h * i)
    rest = 2 * vocab * h + (2 * layers + 1) * h
    model_config = model_config_of(str(ROOT / "examples/model_configs/llama-2-7b"))
    common = {"model_name_or_path": "x/y", "dataset_name": "d", "use_peft": True, "load_dtype": "bfloat16"}
    plain = memory_plan(config_from_dict(common), model_config, Sharding())
    four = memory_plan(config_from_dict({**common, "load_in_4bit": True}), model_config, Sharding())
    nested = memory_plan(config_from_dict({**common, "load_in_4bit": True, "use_bnb_nested_quant": True}),
                         model_config, Sharding())
    assert plain["weights"] == (linear + rest) * 2
    assert four["weights"] == pytest.approx(linear * (0.5 + 4 / 64) + rest * 4)
    assert nested["weights"] == pytest.approx(linear * (0.5 + 1 / 64 + 4 / (64 * 256)) + rest * 4)
    assert four["gradients"] == plain["gradients"] * 2 and four["optimizer"] == plain["optimizer"] * 2


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
                    reason="QLoRA needs a CUDA GPU and bitsandbytes")
def test_qlora_dpo_trains_the_adapters_on_a_4bit_base_on_gpu(tmp_path):
    from safetensors.torch import load_file

    from preflab.loops.offline import Trainer
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    model_dir = tmp_path / "base"
    tiny_causal_lm(tok, arch="llama", seed=0).save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    rows = [json.loads(x) for x in (ROOT / "examples/data/loud_echo_pairs.jsonl").read_text().splitlines()[:16]]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict({"model_name_or_path": str(model_dir), "dataset_name": str(data), "use_peft": True,
                            "load_in_4bit": True, "bf16": True, "lora_r": 4, "learning_rate": 1e-3,
                            "per_device_train_batch_size": 4, "max_steps": 3, "max_length": 64,
                            "output_dir": str(tmp_path / "out"), "disable_tqdm": True})
    trainer = Trainer(cfg)
    base = trainer.policy.get_base_model()
    assert type(base.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    summary = trainer.train()
    assert summary["global_step"] == 3 and torch.isfinite(torch.tensor(summary["final_metrics"]["loss"]))
    adapter = load_file(str(tmp_path / "out/adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in adapter.items())  # B starts at 0: it trained


def test_examples_qlora_yaml_is_trls_qlora_setup():
    from preflab.config import load_config

    cfg = load_config(ROOT / "examples/qlora_dpo.yaml")
    assert cfg.use_peft and cfg.load_dtype == "bfloat16"
    assert quantize.quantization_kwargs(cfg) == {
        "load_in_4bit": True, "bnb_4bit_compute_dtype": torch.bfloat16, "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True, "bnb_4bit_quant_storage": torch.bfloat16}
