"""preflab.models.given case by case (the checks a trainer runs on a model given from Python): load_in_8bit is refused
as load_in_4bit is, load_dtype needs every floating weight in that dtype, trust_remote_code is refused only where
the tokenizer is given too, and lora_modules_to_save is compared as a set."""
import torch

from preflab.config import config_from_dict
from preflab.models.given import given_model_errors
from preflab.models.load import add_lora
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

BASE = dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", use_cpu=True)
LORA = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"])


def _errors(policy, tokenizer=None, **options):
    return given_model_errors(config_from_dict({**BASE, **options}), policy, None, tokenizer)


def test_load_in_8bit_beside_a_given_policy_is_refused():
    policy = add_lora(tiny_causal_lm(tiny_tokenizer(), seed=0), 4, 8, 0.0, ["q_proj", "v_proj"])
    errors = _errors(policy, **LORA, load_in_8bit=True, model_name_or_path="someone/a-model")
    assert len(errors) == 1 and errors[0].startswith("load_in_8bit: preflab loads no model when the policy is given")


def test_load_dtype_needs_every_floating_weight_in_that_dtype():
    policy = tiny_causal_lm(tiny_tokenizer(), seed=0)
    policy.get_input_embeddings().to(torch.bfloat16)  # the rest stays float32
    errors = _errors(policy, load_dtype="bfloat16")
    assert len(errors) == 1 and "has bfloat16/float32 weights" in errors[0]
    assert _errors(policy.to(torch.bfloat16), load_dtype="bfloat16") == []


def test_trust_remote_code_is_refused_only_beside_a_given_tokenizer():
    """Without a given tokenizer preflab loads one with trust_remote_code: the option acts."""
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    assert _errors(policy, trust_remote_code=True) == []
    assert [e.split(":")[0] for e in _errors(policy, tok, trust_remote_code=True)] == ["trust_remote_code"]


def test_lora_modules_to_save_in_another_order_is_the_same_adapters():
    policy = add_lora(tiny_causal_lm(tiny_tokenizer(), seed=0), 4, 8, 0.0, ["q_proj", "v_proj"],
                      modules_to_save=["lm_head", "embed_tokens"])
    assert _errors(policy, **LORA, lora_modules_to_save=["embed_tokens", "lm_head"]) == []
    assert _errors(policy, **LORA, lora_modules_to_save=["lm_head", "embed_tokens"]) == []
    assert _errors(policy, **LORA, lora_modules_to_save=["lm_head"])[0].startswith("lora_modules_to_save:")
