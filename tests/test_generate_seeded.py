"""Row-seeded sampling (preflab.generate_seeded, the sampler of distillation's sampled completions): the scores
are transformers' own sampling chain (equal to what `generate(do_sample=True, ...)` samples from, step by step), the
Gumbel-max draw has the law softmax(scores), and a row's completion depends on its seed alone (the same in any batch
split: what makes 2 processes sample what 1 process does)."""
import pytest
import torch

from preflab.generate_seeded import RowSeededSampler, generate_ids_row_seeded, sampling_chain
from preflab.models.tiny import tiny_causal_lm

EOS, PAD = 2, 0
_g = torch.Generator().manual_seed(3)
PROMPTS = [torch.randint(3, 200, (n,), generator=_g).tolist() for n in (9, 4, 7, 5)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = tiny_causal_lm(vocab_size=300)
    with torch.no_grad():  # sharper next-token distributions than the random init's, so top-k / top-p / min-p bite
        m.lm_head.weight.mul_(40.0)
    return m


SETTINGS = [dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.3),
            dict(temperature=1.3, top_k=0, top_p=1.0, min_p=None, repetition_penalty=1.0),
            dict(temperature=1.0, top_k=0, top_p=0.5, min_p=None, repetition_penalty=0.8)]


@pytest.mark.parametrize("settings", SETTINGS)
def test_sampling_chain_is_what_generate_samples_from(model, settings):
    """transformers' generate(do_sample=True) reports the scores it samples from (output_scores) beside the raw
    logits (output_logits): sampling_chain on the raw logits and the ids so far gives those scores at every step."""
    from preflab.generate import left_padded

    ids, attn = left_padded(PROMPTS, PAD)
    torch.manual_seed(1)
    out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, max_new_tokens=5, eos_token_id=EOS,
                         pad_token_id=PAD, return_dict_in_generate=True, output_scores=True, output_logits=True,
                         **settings)
    chain = sampling_chain(**settings)
    width = ids.shape[1]
    for t, (raw, scores) in enumerate(zip(out.logits, out.scores)):
        mine = chain(out.sequences[:, :width + t], raw.clone())
        assert torch.equal(torch.isinf(mine), torch.isinf(scores))
        torch.testing.assert_close(mine, scores, rtol=0, atol=0)
    assert any(torch.isinf(s).any() for s in out.scores) == (settings["top_p"] < 1 or settings["top_k"] > 0)


def test_gumbel_max_draws_follow_softmax_of_the_chain():
    """20000 rows of the same logits, each with its own seed: the frequencies of the argmax of (scores + the row's
    Gumbel noise) are softmax(chain(logits)) within 0.012 (5 standard errors), top-k's dropped tokens never drawn."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
    chain = sampling_chain(temperature=0.6, top_k=4)
    n = 20000
    sampler = RowSeededSampler(list(range(n)), chain)
    drawn = sampler(torch.zeros(n, 1, dtype=torch.long), logits.expand(n, -1).clone()).argmax(-1)
    freq = torch.bincount(drawn, minlength=5).double() / n
    want = torch.softmax(chain(torch.zeros(1, 1, dtype=torch.long), logits.clone()).double(), -1)[0]
    assert freq[3] == 0 and want[3] == 0
    assert (freq - want).abs().max() < 0.012, (freq, want)


def test_a_rows_sample_depends_on_its_seed_alone(model):
    """The 4 prompts sampled together equal each sampled alone and the 2 + 2 split (the same seeds), and a different
    seed changes the sample; the global RNG is neither read nor moved; eos cuts a completion (eos kept)."""
    kw = dict(eos_id=EOS, pad_id=PAD, max_new_tokens=8, temperature=0.9, top_k=50, top_p=0.95)
    seeds = [11, 22, 33, 44]
    state = torch.get_rng_state()
    whole = generate_ids_row_seeded(model, PROMPTS, seeds, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    alone = [generate_ids_row_seeded(model, [p], [s], **kw)[0] for p, s in zip(PROMPTS, seeds)]
    split = generate_ids_row_seeded(model, PROMPTS[:2], seeds[:2], **kw) + \
        generate_ids_row_seeded(model, PROMPTS[2:], seeds[2:], **kw)
    assert whole == alone == split
    assert all(len(c) == 8 or c[-1] == EOS for c in whole) and EOS not in sum((c[:-1] for c in whole), [])
    other = generate_ids_row_seeded(model, PROMPTS, [s + 1 for s in seeds], **kw)
    assert other != whole
    torch.manual_seed(123)  # the global state plays no part
    assert generate_ids_row_seeded(model, PROMPTS, seeds, **kw) == whole


def test_top_k_one_is_greedy(model):
    """top_k 1 leaves one token: the sample is generate's greedy completion whatever the seed."""
    from preflab.generate import generate_ids

    greedy = generate_ids(model, PROMPTS, eos_id=EOS, pad_id=PAD, max_new_tokens=6)
    for seeds in ([1, 2, 3, 4], [9, 8, 7, 6]):
        assert generate_ids_row_seeded(model, PROMPTS, seeds, eos_id=EOS, pad_id=PAD, max_new_tokens=6,
                                       top_k=1, temperature=0.5) == greedy


@pytest.mark.parametrize("settings", [dict(temperature=0.8, top_k=30, top_p=0.95, min_p=None, repetition_penalty=1.2),
                                      dict(temperature=1.0, top_k=0, top_p=1.0, min_p=None, repetition_penalty=0.3)])
def test_a_completion_is_the_gumbel_argmax_of_each_tokens_next_draws_by_hand(model, settings):
    """The rule written out for one row (module docstring): at each new token t, the full-sequence logits of the last
    position through the sampling chain, plus the t-th [V] Gumbel draw -log(-log U) of ONE generator seeded with the
    row's seed (drawn in order, never re-seeded), argmax; stop after eos. Row-seeded sampling gives exactly that
    completion, and a second row's different seed gives it its own draws (not the first row's). The chain runs once
    per token: a repetition penalty below 1 (repeats favoured) that `generate` applied again would change the
    draws."""
    from preflab.generate_seeded import gumbel_noise

    seeds = [5, 6]

    def by_hand(prompt, seed, n=10):
        chain, g, ids = sampling_chain(**settings), torch.Generator().manual_seed(seed), list(prompt)
        with torch.no_grad():
            for _ in range(n):
                raw = model(torch.tensor([ids])).logits[:, -1].float()
                scores = chain(torch.tensor([ids]), raw)
                ids.append(int((scores.double() + gumbel_noise(g, scores.shape[-1])).argmax()))
                if ids[-1] == EOS:
                    break
        return ids[len(prompt):]

    got = generate_ids_row_seeded(model, PROMPTS[:2], seeds, eos_id=EOS, pad_id=PAD, max_new_tokens=10, **settings)
    assert got == [by_hand(p, s) for p, s in zip(PROMPTS[:2], seeds)]
