"""Prefix-shared and packed layouts give the padded layout's log-probs and gradients (float32, 1e-5) for Llama-,
Qwen2- and GPT-2-style models, with sdpa and eager attention, with LoRA; the mask has the planted structure."""
import warnings
from types import SimpleNamespace

import pytest
import torch

from preflab.data.layout import pair_sequences, padded
from preflab.data.packing import first_fit_decreasing, packed_pairs
from preflab.data.prefix import effective_layout, prefix_shared, supports_custom_mask
from preflab.loops.batches import collate_pairs
from preflab.models.load import add_lora
from preflab.models.tiny import tiny_causal_lm
from preflab.scoring.lm import LogProbScorer, naive_token_logps
from lora_weights import randomize_lora_b  # tests/, on sys.path beside conftest

PAIRS = [
    SimpleNamespace(prompt_ids=[1, 5, 9, 14], chosen_ids=[20, 21, 2], rejected_ids=[40, 2]),
    SimpleNamespace(prompt_ids=[1, 7], chosen_ids=[30, 31, 32, 33, 2], rejected_ids=[8, 2]),
    SimpleNamespace(prompt_ids=[1, 3, 4, 5, 6, 7, 8], chosen_ids=[9, 2], rejected_ids=[10, 11, 12, 2]),
]
LAYOUTS = {
    "prefix_shared": lambda pairs: prefix_shared(pairs, pad_id=0),
    "packed": lambda pairs: packed_pairs(pairs, pad_id=0, share_prefix=False),
    "prefix_packed": lambda pairs: packed_pairs(pairs, pad_id=0, share_prefix=True),
    "prefix_packed_binned": lambda pairs: packed_pairs(pairs, pad_id=0, share_prefix=True, max_row_tokens=13),
}


def logps_and_grads(model, layout):
    model.zero_grad()
    lp = LogProbScorer(model)(layout).token_logps
    (lp * torch.linspace(0.5, 1.5, lp.numel()).reshape(lp.shape)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.detach(), grads


def assert_same(model, layout_name):
    base_lp, base_grads = logps_and_grads(model, padded(pair_sequences(PAIRS), pad_id=0))
    lp, grads = logps_and_grads(model, LAYOUTS[layout_name](PAIRS))
    torch.testing.assert_close(lp, base_lp, atol=1e-5, rtol=0)
    assert grads.keys() == base_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], base_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_layout_equals_padded(arch, attn, layout_name):
    model = tiny_causal_lm(vocab_size=64, arch=arch)
    model.set_attn_implementation(attn)
    assert_same(model, layout_name)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_layout_equals_padded_with_lora(arch):
    model = tiny_causal_lm(vocab_size=64, arch=arch)
    targets = ["c_attn", "c_fc"] if arch == "gpt2" else ["q_proj", "v_proj", "up_proj"]
    model = add_lora(model, r=4, alpha=8, dropout=0.0, target_modules=targets)
    torch.manual_seed(1)
    randomize_lora_b(model, 0.5)  # LoRA starts as a no-op (B = 0): make the adapters matter
    for layout_name in ("prefix_shared", "prefix_packed"):
        assert_same(model, layout_name)


def test_naive_full_logits_agree_on_prefix_layout():
    model = tiny_causal_lm(vocab_size=64, arch="gpt2")
    layout = prefix_shared(PAIRS, pad_id=0)
    expected = naive_token_logps(model, padded(pair_sequences(PAIRS), pad_id=0))
    torch.testing.assert_close(naive_token_logps(model, layout), expected, atol=1e-5, rtol=0)


def test_mask_and_positions_have_the_planted_structure():
    """Row 0 = [prompt 1 5 9 14 | chosen 20 21 2 | rejected 40 2 | pad ...]: rejected sees the prompt, never chosen;
    positions restart after the prompt; the first rejected token is predicted from the last prompt position."""
    layout = prefix_shared(PAIRS, pad_id=0)
    width = layout.input_ids.shape[1]
    assert width == max(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in PAIRS) == 13
    assert layout.input_ids[0, :9].tolist() == [1, 5, 9, 14, 20, 21, 2, 40, 2]
    assert layout.position_ids[0, :9].tolist() == [0, 1, 2, 3, 4, 5, 6, 4, 5]
    mask = layout.attention_mask[0, 0]
    prompt, chosen = range(0, 4), range(4, 7)  # the rejected response: positions 7-8
    for q in range(9):
        allowed = {k for k in range(9) if mask[q, k]}
        if q in prompt or q in chosen:
            assert allowed == set(range(q + 1))
        else:
            assert allowed == set(prompt) | set(range(7, q + 1))
    assert not mask[9:].any() and not mask[:, 9:].any()  # padding attends to nothing and is never attended
    # chosen_0 = sequence 0, rejected_0 = sequence 3 (order [chosen_1..B, rejected_1..B])
    assert layout.pred_index[0, :3].tolist() == [3, 4, 5]
    assert layout.pred_index[3, :2].tolist() == [3, 7]
    assert layout.target_ids[3, :2].tolist() == [40, 2]
    assert layout.num_tokens == sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in PAIRS)


def segment_formula_mask(rows, width):
    """The module docstring's allowed(i, j) = j <= i and seg(j) in {seg(i), root(i)}, neither padding, from every
    query's and key's segment (block_rows built the mask this way before it filled it block by block)."""
    seg = torch.full((len(rows), width), -1)
    root = torch.full((len(rows), width), -1)
    next_seg = 0
    for r, row in enumerate(rows):
        col = 0
        for block in row:
            p, prompt_seg, next_seg = len(block.prompt_ids), next_seg, next_seg + 1
            seg[r, col:col + p] = root[r, col:col + p] = prompt_seg
            col += p
            for resp in block.responses:
                seg[r, col:col + len(resp)], root[r, col:col + len(resp)] = next_seg, prompt_seg
                col, next_seg = col + len(resp), next_seg + 1
    seg_q, seg_k = seg.unsqueeze(2), seg.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    return (causal & ((seg_k == seg_q) | (seg_k == root.unsqueeze(2))) & (seg_q >= 0) & (seg_k >= 0)).unsqueeze(1)


@pytest.mark.parametrize("seed", range(4))
def test_block_by_block_mask_equals_the_segment_formula(seed):
    """Rows of 1-3 blocks, each a prompt of 1-6 tokens and 1-3 responses of 0-5 tokens, rounded up to a multiple
    of 8: the same bool mask, element for element."""
    from preflab.data.prefix import Block, block_rows

    gen = torch.Generator().manual_seed(seed)
    draw = lambda lo, hi: int(torch.randint(lo, hi + 1, (), generator=gen))  # noqa: E731
    rows, n = [], 0
    for _ in range(draw(1, 4)):
        row = []
        for _ in range(draw(1, 3)):
            k = draw(1, 3)
            row.append(Block([1] * draw(1, 6), [[7] * draw(0, 5) for _ in range(k)], list(range(n, n + k))))
            n += k
        rows.append(row)
    layout = block_rows(rows, n, pad_id=0, pad_to_multiple_of=8)
    assert torch.equal(layout.attention_mask, segment_formula_mask(rows, layout.input_ids.shape[1]))


def test_packing_has_no_pad_tokens_and_block_diagonal_mask():
    layout = packed_pairs(PAIRS, pad_id=0, share_prefix=True)
    assert layout.input_ids.shape == (1, 31) and layout.num_tokens == 31
    mask = layout.attention_mask[0, 0]
    starts = [0, 9, 18]  # blocks of 9, 9 and 13 tokens, in pair order
    assert not mask[starts[1]:starts[2], :starts[1]].any() and not mask[starts[2]:, :starts[2]].any()
    assert layout.position_ids[0, starts[1]:starts[1] + 2].tolist() == [0, 1]


def test_first_fit_decreasing():
    rows = first_fit_decreasing([5, 9, 3, 7, 4, 2], max_row_tokens=10)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum([5, 9, 3, 7, 4, 2][i] for i in row) <= 10 for row in rows)
    assert rows == [[1], [2, 3], [0, 4], [5]]  # longest first: 9 | 7, then 3 | 5, then 4 | 2 fits no row left
    assert first_fit_decreasing([3, 4], None) == [[0, 1]]
    assert first_fit_decreasing([12, 3], 10) == [[0], [1]]  # an over-long unit gets its own row


def test_collate_pairs_layout_names():
    pairs = [SimpleNamespace(row_id=i, extras={}, **vars(p)) for i, p in enumerate(PAIRS)]
    for name in ("prefix_shared", "packed", "prefix_packed"):
        layout = collate_pairs(pairs, pad_id=0, layout=name)
        assert layout.attention_mask.dim() == 4 and layout.num_sequences == 6


def test_fallback_to_padded_when_the_attention_cannot_take_a_4d_mask():
    model = tiny_causal_lm(vocab_size=64)
    assert supports_custom_mask(model) == (True, "")
    assert effective_layout("prefix_shared", model) == "prefix_shared"
    model.config._attn_implementation = "flash_attention_2"
    ok, why = supports_custom_mask(model)
    assert not ok and "flash_attention_2" in why
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert effective_layout("prefix_shared", model) == "padded"
        assert effective_layout("prefix_shared", model) == "padded"
    assert len([w for w in caught if "falling back" in str(w.message)]) <= 1
    sliding = tiny_causal_lm(vocab_size=64, arch="qwen2")
    sliding.config.layer_types = ["sliding_attention", "full_attention"]
    assert not supports_custom_mask(sliding)[0]
