"""preflab.models.attention on hand-made configs and masks: when a sliding window binds (binding_sliding_window), and
the forms a bool 4-D layout mask takes (eager's additive mask in the model's dtype, sdpa's float mask)."""
from types import SimpleNamespace

import torch
from torch import nn

from preflab.models.attention import binding_sliding_window, model_mask, scorer_mask, sdpa_additive_mask


def test_a_sliding_window_binds_only_when_set_switched_on_and_below_the_positions():
    def window(**kw):
        return binding_sliding_window(SimpleNamespace(max_position_embeddings=64, **kw))

    assert window(sliding_window=12) == 12
    assert window(sliding_window=0) is None            # 0: no window
    assert window(sliding_window=None) is None
    assert window(sliding_window=12, use_sliding_window=False) is None  # switched off (Qwen2's flag)
    assert window(sliding_window=12, use_sliding_window=True) == 12
    assert window(sliding_window=64) is None           # as wide as the positions: never binds
    assert window(sliding_window=63) == 63


class _Model(nn.Module):
    def __init__(self, impl):
        super().__init__()
        self.config = SimpleNamespace(_attn_implementation=impl)


MASK = torch.tensor([[True, False], [True, True]])[None, None]  # [1, 1, 2, 2], causal


def test_eager_gets_an_additive_mask_in_the_models_dtype():
    for dtype in (torch.float32, torch.bfloat16):
        out = model_mask(MASK, _Model("eager"), dtype)
        assert out.dtype == dtype
        assert out[0, 0].tolist() == [[0.0, torch.finfo(dtype).min], [0.0, 0.0]]


def test_sdpa_keeps_the_bool_mask_and_the_scorer_makes_it_float_once():
    assert model_mask(MASK, _Model("sdpa"), torch.float32) is MASK
    out = scorer_mask(MASK, _Model("sdpa"), torch.float32)
    assert out.dtype == torch.float32 and out[0, 0].tolist() == [[0.0, float("-inf")], [0.0, 0.0]]
    assert sdpa_additive_mask(MASK, torch.bfloat16)[0, 0].tolist() == [[0.0, float("-inf")], [0.0, 0.0]]
