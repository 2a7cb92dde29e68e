"""Online sampling with TRL GRPOConfig's top_k, min_p and repetition_penalty (online/generator.py): preflab's
transformers generator draws what transformers' own `model.generate` draws with the same seed and options; the
options change the draws; top_k 1 is greedy; a model's generation_config values of them do not leak in; the config
keys are read for the text tasks and refused elsewhere. The vLLM backend passes them to SamplingParams (not run
here: no vllm on the CPU machine)."""
import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.generate import cut_after_eos, left_padded
from preflab.models.tiny import tiny_causal_lm
from preflab.online.generator import TransformersGenerator, make_generator

EOS, PAD = 2, 0
_g = torch.Generator().manual_seed(3)
PROMPTS = [torch.randint(3, 200, (n,), generator=_g).tolist() for n in (9, 4, 6)]
OPTIONS = dict(temperature=0.8, top_p=0.95, top_k=7, min_p=0.3, repetition_penalty=1.7)
ONLINE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "task": "online", "trainer": "grpo",
          "max_steps": 2}


def model():
    torch.manual_seed(0)
    return tiny_causal_lm(arch="llama", vocab_size=200, hidden_size=32, seed=0)


def transformers_draws(m, prompts, k, seed, max_new_tokens, **options):
    """transformers' generate on the K-times repeated, left-padded prompts after torch.manual_seed(seed), a fresh
    GenerationConfig (no preflab code besides padding and the eos cut)."""
    from transformers import GenerationConfig

    ids, attn = left_padded([p for p in prompts for _ in range(k)], PAD)
    torch.manual_seed(seed)
    config = GenerationConfig(do_sample=True, max_new_tokens=max_new_tokens, eos_token_id=EOS, pad_token_id=PAD,
                              **options)
    with torch.no_grad():
        out = m.eval().generate(input_ids=ids, attention_mask=attn, generation_config=config)
    return cut_after_eos(out[:, ids.shape[1]:], EOS)


def test_preflab_draws_what_transformers_generate_draws_with_the_same_seed_and_options():
    m = model()
    gen = TransformersGenerator(m, EOS, PAD, 12, batch_size=64, **OPTIONS)
    got = gen.generate(PROMPTS, 3, seed=11)
    assert got == transformers_draws(m, PROMPTS, 3, 11, 12, **OPTIONS)
    plain = TransformersGenerator(m, EOS, PAD, 12, temperature=0.8, top_p=0.95).generate(PROMPTS, 3, seed=11)
    assert plain == transformers_draws(m, PROMPTS, 3, 11, 12, temperature=0.8, top_p=0.95, top_k=0)
    assert got != plain  # the options reach the sampling


def test_each_option_alone_changes_the_draws_and_top_k_1_is_greedy():
    m = model()
    base = TransformersGenerator(m, EOS, PAD, 12).generate(PROMPTS, 3, seed=5)
    for option in (dict(top_k=3), dict(min_p=0.6), dict(repetition_penalty=3.0)):
        alone = TransformersGenerator(m, EOS, PAD, 12, **option).generate(PROMPTS, 3, seed=5)
        assert alone != base, option
        assert alone == transformers_draws(m, PROMPTS, 3, 5, 12, **{"top_k": 0, **option}), option
    greedy = TransformersGenerator(m, EOS, PAD, 12, top_k=1).generate(PROMPTS, 3, seed=5)
    with torch.no_grad():
        want = [cut_after_eos(m.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=
                torch.long), do_sample=False, max_new_tokens=12, eos_token_id=EOS, pad_token_id=PAD)[:, len(p):],
                EOS)[0] for p in PROMPTS]
    assert greedy == [w for w in want for _ in range(3)]


def test_a_models_generation_config_does_not_change_the_sampling():
    """Before: a model whose generation_config.json sets repetition_penalty (Qwen2.5-Instruct: 1.05) or min_p had it
    applied to every online sample, silently; now the run's values (TRL's defaults: none) are passed explicitly."""
    m = model()
    base = TransformersGenerator(m, EOS, PAD, 12).generate(PROMPTS, 3, seed=5)
    m.generation_config.repetition_penalty, m.generation_config.min_p = 3.0, 0.6
    assert TransformersGenerator(m, EOS, PAD, 12).generate(PROMPTS, 3, seed=5) == base


def test_config_keys_reach_the_generator_and_are_refused_where_unread(tmp_path):
    cfg = config_from_dict({**ONLINE, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2})
    gen = make_generator(cfg, model(), type("Tok", (), {"eos_token_id": EOS, "pad_token_id": PAD})())
    assert gen.sampling == {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2}
    assert config_from_dict({**ONLINE, "top_k": None, "repetition_penalty": None}).top_k == 0  # TRL 0.x's null
    with pytest.raises(ConfigError, match="top_k is read by the online tasks that sample text"):
        config_from_dict({**ONLINE, "online_task": "vision_dataset", "top_k": 5})
    with pytest.raises(ConfigError, match="repetition_penalty"):
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                          "repetition_penalty": 1.3})  # task: dpo samples nothing
    for bad in ({"top_k": -1}, {"min_p": 1.5}, {"repetition_penalty": 0.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            config_from_dict({**ONLINE, **bad})
