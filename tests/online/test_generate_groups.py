"""Prefill-once group generation (preflab.generate_groups, used by online/generator.py): each distinct prompt is
prefilled once and its KV cache repeated for its K completions. It must give what prefilling the K copies gave
(generate_ids on the repeated prompts, the path before): the same greedy ids, the same sampled ids with the same
seed, per-token log-probs equal within 1e-5; caches that cannot be repeated fall back to that path and say why."""
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf

import preflab.generate_groups as groups
from preflab.generate import generate_ids
from preflab.generate_groups import generate_groups
from preflab.loops.rollout import full_distribution
from preflab.models.tiny import tiny_causal_lm
from preflab.online.generator import TransformersGenerator

sys.path.insert(0, str(Path(__file__).parents[1] / "families"))
from families import WINDOW, tiny_family_model  # noqa: E402

EOS, PAD = 2, 0
_g = torch.Generator().manual_seed(1)
PROMPTS = [torch.randint(3, 200, (n,), generator=_g).tolist() for n in (21, 6, 14)]  # left padding of 15 and 7


def old_path(model, prompts, k, **kw):
    return generate_ids(model, [p for p in prompts for _ in range(k)], eos_id=EOS, pad_id=PAD,
                        batch_size=len(prompts) * k, **kw)


def first_forward_rows(model) -> list[int]:
    """Rows of every forward's input ids (the first one is the prefill)."""
    rows = []
    model.register_forward_pre_hook(lambda m, args, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    return rows


def recording_logits(model) -> list[torch.Tensor]:
    """model.generate keeps its raw logits [rows, steps, vocab] of each call here."""
    seen, generate = [], model.generate

    def recorded(*args, **kw):
        out = generate(*args, **kw, output_logits=True, return_dict_in_generate=True)
        seen.append(torch.stack(out.logits, 1))
        return out.sequences
    model.generate = recorded
    return seen


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_ids_equal_the_repeated_prompt_path_and_prompts_are_prefilled_once(arch):
    model = tiny_causal_lm(arch=arch, vocab_size=200, hidden_size=32, seed=0)
    rows = first_forward_rows(model)
    new = generate_groups(model, PROMPTS, 3, eos_id=EOS, pad_id=PAD, max_new_tokens=10, do_sample=False)
    assert rows[:2] == [3, 9]                      # one prefill of the 3 prompts, then 9 rows decode
    assert new == old_path(model, PROMPTS, 3, max_new_tokens=10, do_sample=False)
    assert len({tuple(c) for c in new}) > 1       # the prompts' completions differ: the rows were not mixed up


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_sampled_ids_and_log_probs_equal_the_old_path_chunk_by_chunk(arch):
    """Through TransformersGenerator (chunks of 2 prompts seeded seed + c, top_p < 1, temperature != 1): the same
    ids as the old path and its per-token log-probs within 1e-5."""
    model = tiny_causal_lm(arch=arch, vocab_size=200, hidden_size=32, seed=1)
    logits = recording_logits(model)
    gen = TransformersGenerator(model, EOS, PAD, max_new_tokens=12, temperature=0.8, top_p=0.9, batch_size=2)
    new = gen.generate(PROMPTS, 4, seed=11)
    new_logits, logits[:] = list(logits), []
    with full_distribution(model):
        old = [ids for c, start in enumerate(range(0, 3, 2)) for ids in old_path(
            model, PROMPTS[start:start + 2], 4, max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.9,
            seed=11 + c)]
    assert new == old
    assert len({tuple(c) for c in new}) == len(new)   # sampled: every completion differs
    for a, b in zip(new_logits, logits, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1), atol=1e-5)


def test_eos_ends_a_completion_and_nothing_after_it_is_kept():
    """eos made likely (+1 on its logit): completions end at their first eos or run to max_new_tokens without one,
    as on the old path (which pads the finished rows with pad ids that are cut)."""
    model = tiny_causal_lm(arch="llama", vocab_size=200, hidden_size=32, seed=2)
    model.lm_head.register_forward_hook(lambda m, i, out: out + 1.0 * torch.nn.functional.one_hot(
        torch.tensor(EOS), out.shape[-1]))
    kw = dict(max_new_tokens=16, do_sample=True, seed=3)
    new = generate_groups(model, PROMPTS, 4, eos_id=EOS, pad_id=PAD, **kw)
    assert new == old_path(model, PROMPTS, 4, **kw)
    ended = [c for c in new if c[-1] == EOS]
    assert ended and len(ended) < len(new)                           # both kinds occur
    assert all(EOS not in c[:-1] and len(c) <= 16 for c in new)
    assert all(len(c) == 16 for c in new if c[-1] != EOS)
    assert len({len(c) for c in ended}) > 1


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_a_left_padded_prompt_completes_as_when_alone(arch):
    """Position ids count from the first real token: the short prompt, padded by 15 next to the long one, gets the
    greedy completion it gets alone (no padding). GPT-2's learned absolute positions make a wrong count change the
    ids (RoPE models see only relative positions: there a wrong count shows in the log-probs test)."""
    model = tiny_causal_lm(arch=arch, vocab_size=200, hidden_size=32, seed=0)
    kw = dict(eos_id=EOS, pad_id=PAD, max_new_tokens=12, do_sample=False)
    together = generate_groups(model, [PROMPTS[0], PROMPTS[1]], 2, **kw)
    alone = generate_groups(model, [PROMPTS[1], PROMPTS[1][1:]], 2, **kw)   # padded by 1 only: its prefill runs
    assert together[2:] == alone[:2]
    assert together[0] != together[2]
    one = [PROMPTS[1][0]]                         # a one-token prompt: its row of the shared prefill is all padding
    assert generate_groups(model, [PROMPTS[0], one], 2, **kw)[2:] == generate_ids(model, [one], **kw) * 2


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_sliding_window_caches_are_shared_and_equal_the_old_path(family):
    """Mistral (all layers sliding) and Gemma 2 (sliding and full layers alternate), window 12 < the 21-token prompt:
    the repeated sliding-window cache gives the old path's samples."""
    assert max(map(len, PROMPTS)) > WINDOW
    model = tiny_family_model(family)
    rows = first_forward_rows(model)
    kw = dict(max_new_tokens=10, do_sample=True, seed=5)
    new = generate_groups(model, PROMPTS, 3, eos_id=EOS, pad_id=PAD, **kw)
    assert rows[0] == 3
    assert new == old_path(model, PROMPTS, 3, **kw)


def test_a_cache_that_cannot_be_repeated_falls_back_and_says_why_once(monkeypatch, capsys):
    """LFM2's short-convolution layers keep a recurrent state (LinearAttentionLayer), and a generation config with
    cache_implementation builds its own cache: both prefill the repeated prompts as before and say so once."""
    monkeypatch.setattr(groups, "_SAID", set())
    config = tf.Lfm2Config(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, layer_types=["conv", "full_attention"],
                           pad_token_id=PAD, eos_token_id=EOS)
    torch.manual_seed(0)
    lfm2 = tf.Lfm2ForCausalLM(config).eval()
    kw = dict(max_new_tokens=6, do_sample=True, seed=5)
    for _ in range(2):
        assert generate_groups(lfm2, PROMPTS, 2, eos_id=EOS, pad_id=PAD, **kw) == old_path(lfm2, PROMPTS, 2, **kw)
    said = capsys.readouterr().out
    assert said.count("preflab: note:") == 1
    assert "Lfm2ForCausalLM's cache has LinearAttentionLayer layers" in said

    llama = tiny_causal_lm(arch="llama", vocab_size=200, hidden_size=32, seed=0)
    llama.generation_config.cache_implementation = "static"
    rows = first_forward_rows(llama)
    assert generate_groups(llama, PROMPTS, 2, eos_id=EOS, pad_id=PAD, **kw) == old_path(llama, PROMPTS, 2, **kw)
    assert rows[0] == 6                                                  # the repeated batch: no shared prefill
    assert "cache_implementation='static'" in capsys.readouterr().out


def test_a_lora_wrapped_policy_shares_the_prefill_and_keeps_only_the_last_logits():
    """A PEFT model (LoRA online runs): the wrapper passes `cache` and `logits_to_keep` on, so the shared prefill
    makes [P, 1, vocab] logits, not [P, W - 1, vocab], and the samples are the old path's."""
    peft = pytest.importorskip("peft")
    base = tiny_causal_lm(arch="llama", vocab_size=200, hidden_size=32, seed=0)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))
    shapes = []
    base.lm_head.register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape)))
    kw = dict(max_new_tokens=8, do_sample=True, seed=4)
    new = generate_groups(model, PROMPTS, 3, eos_id=EOS, pad_id=PAD, **kw)
    assert shapes[:2] == [(3, 1, 200), (9, 1, 200)]
    assert new == old_path(model, PROMPTS, 3, **kw)
