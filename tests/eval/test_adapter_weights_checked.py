"""A LoRA adapter folder is loaded with its weights checked (preflab.models.adapter_load), as a full model's are:
PeftModel.from_pretrained alone loads an adapter_model.safetensors that lacks a LoRA tensor with a warning only, the
tensor left at its initial value (lora_B zero: that module's trained update dropped). A missing or reshaped tensor
is refused naming the file and the tensor; a tensor the adapters have no place for is noted and the load goes on."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from preflab.errors import ConfigError
from preflab.models.load import add_lora, load_causal_lm, load_tokenizer

BASE = "builtin:tiny-llama"
SEED = 3


def _base():
    return load_causal_lm(BASE, tokenizer=load_tokenizer(BASE), seed=SEED)


@pytest.fixture()
def adapter(tmp_path):
    """(a LoRA run's final folder over builtin:tiny-llama seed 3 on q_proj and v_proj, its lora_B set nonzero so
    every tensor changes the merged model; that model's merged weights)."""
    model = add_lora(_base(), 2, 4, 0.0, ["q_proj", "v_proj"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p, generator=torch.Generator().manual_seed(len(name))))
    folder = tmp_path / "run"
    model.save_pretrained(str(folder))
    (folder / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": BASE, "seed": SEED, "use_peft": True}))
    return folder, {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}


def _rewrite(folder, change):
    file = folder / "adapter_model.safetensors"
    weights = load_file(str(file))
    change(weights)
    save_file(weights, str(file))
    return weights


def _assert_same(model, want):
    got = model.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k


def test_a_complete_adapter_loads_as_peft_loads_it(adapter, capsys):
    """The file's tensors are exactly those the built PeftModel saves (no refusal, no note), and the merged model
    equals the one that was saved, through load_lora_adapter and through `preflab eval`'s loader."""
    from preflab.eval.loading import load_for_eval
    from preflab.models.adapter_load import adapter_file_shapes, expected_adapter_shapes, load_lora_adapter

    folder, want = adapter
    model = load_lora_adapter(_base(), folder)
    required, allowed = expected_adapter_shapes(model)
    assert adapter_file_shapes(folder)[1] == required and len(required) == 2 * 2 * 2  # 2 layers x q,v x A,B
    # the embedding layers, which peft saves beside the adapters where they were resized or targeted, are allowed
    assert allowed - set(required) == {"base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight"}
    _assert_same(model.merge_and_unload(), want)
    _assert_same(load_for_eval(str(folder))[0], want)
    assert "note" not in capsys.readouterr().out


def test_an_adapter_file_missing_a_lora_tensor_is_refused_naming_it(adapter):
    """One lora_B removed from adapter_model.safetensors: peft alone loads it leaving that lora_B at zero (shown, the
    hazard), preflab refuses it naming the file, the key and the count, through `preflab eval`'s loader too."""
    from peft import PeftModel

    from preflab.eval.loading import load_for_eval
    from preflab.models.adapter_load import load_lora_adapter

    folder, _ = adapter
    gone = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    _rewrite(folder, lambda w: w.pop(gone))
    with pytest.warns(UserWarning, match="missing adapter keys"):
        silent = PeftModel.from_pretrained(_base(), str(folder))
    assert torch.count_nonzero(silent.base_model.model.model.layers[1].self_attn.v_proj.lora_B["default"].weight) == 0
    said = (rf"adapter_model.safetensors: LoRA tensor\(s\) that .*adapter_config.json places are 1 missing "
            rf"\({gone.replace('.', '[.]')}\);.*save the adapters again")
    with pytest.raises(ConfigError, match=said):
        load_lora_adapter(_base(), folder)
    with pytest.raises(ConfigError, match=said):
        load_for_eval(str(folder))


def test_many_missing_tensors_are_listed_first_few_and_counted(adapter):
    folder, _ = adapter
    from preflab.models.adapter_load import load_lora_adapter

    kept = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    _rewrite(folder, lambda w: [w.pop(k) for k in list(w) if k != kept])
    with pytest.raises(ConfigError, match=r"are 7 missing \([^()]+, [^()]+, [^()]+, and 4 more\)"):
        load_lora_adapter(_base(), folder)


def test_a_reshaped_tensor_is_refused_with_both_shapes_not_torchs_size_mismatch(adapter):
    folder, _ = adapter
    from preflab.models.adapter_load import load_lora_adapter

    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    _rewrite(folder, lambda w: w.update({key: w[key][:1].clone()}))
    with pytest.raises(ConfigError, match=rf"1 of another shape \({key.replace('.', '[.]')}: \(1, 32\) in the file, "
                                          r"\(2, 32\) in the model\)"):
        load_lora_adapter(_base(), folder)


def test_a_tensor_the_adapters_have_no_place_for_is_noted_and_the_load_goes_on(adapter, capsys):
    folder, want = adapter
    from preflab.models.adapter_load import load_lora_adapter

    _rewrite(folder, lambda w: w.update({"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight":
                                         torch.ones(2, 32)}))
    model = load_lora_adapter(_base(), folder)
    out = capsys.readouterr().out
    assert "adapter_model.safetensors holds 1 tensor(s)" in out and "mlp.up_proj.lora_A.weight" in out
    _assert_same(model.merge_and_unload(), want)
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 2


def test_a_model_whose_weights_transformers_converts_is_compared_under_the_converted_names(tmp_path):
    """Mixtral (transformers v5 registers a conversion of its expert weights; peft converts adapter files saved in the
    older layout before loading): the file is compared after peft's own conversion. An adapter on the fused experts
    (target_parameters) and on q_proj loads, its merged weights equal the saved model's; with its experts' lora_A
    removed it is refused naming it."""
    import transformers as tf
    from peft import LoraConfig, get_peft_model

    from preflab.models.adapter_load import _conversion, load_lora_adapter

    config = tf.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=1)
    torch.manual_seed(0)
    tf.MixtralForCausalLM(config).save_pretrained(tmp_path / "base")
    model = get_peft_model(tf.MixtralForCausalLM.from_pretrained(tmp_path / "base"),
                           LoraConfig(r=2, target_modules=["q_proj"], target_parameters=["mlp.experts.gate_up_proj"],
                                      init_lora_weights=False))  # lora_B nonzero: every tensor changes the model
    assert _conversion(model) is not None
    model.save_pretrained(tmp_path / "adapter")
    want = {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}
    _assert_same(load_lora_adapter(tf.MixtralForCausalLM.from_pretrained(tmp_path / "base"),
                                   tmp_path / "adapter").merge_and_unload(), want)
    gone = "base_model.model.model.layers.0.mlp.experts.lora_A.weight"
    _rewrite(tmp_path / "adapter", lambda w: w.pop(gone))
    with pytest.raises(ConfigError, match=rf"are 1 missing \({gone.replace('.', '[.]')}\)"):
        load_lora_adapter(tf.MixtralForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
