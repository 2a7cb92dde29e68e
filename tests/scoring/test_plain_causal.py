"""Right-padded rows go to a causal decoder without a mask (plain causal attention); a model whose real tokens see
the padding (bidirectional) keeps the mask. Decided by a probe through model.forward, once per model."""
import torch
from transformers import BertGenerationConfig, BertGenerationDecoder

import preflab.models.attention as attention
from preflab.data.layout import padded
from preflab.models.attention import right_padding_needs_no_mask
from preflab.models.tiny import tiny_causal_lm
from preflab.scoring.lm import LogProbScorer, naive_token_logps

SEQUENCES = [([1, 5, 9], [20, 21, 2]), ([1, 7], [30, 31, 32, 33, 34, 2])]


def test_causal_decoder_is_scored_without_mask_and_equals_the_masked_forward(monkeypatch):
    model = tiny_causal_lm(vocab_size=64, seed=0).eval()
    assert right_padding_needs_no_mask(model)
    seen = []
    original = type(model.model).forward

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("attention_mask"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model.model), "forward", spy)
    layout = padded(SEQUENCES, pad_id=0)
    assert layout.causal_only and layout.attention_mask[1].all() and not layout.attention_mask[0].all()
    with torch.no_grad():
        ours = LogProbScorer(model)(layout).token_logps
        masked = naive_token_logps(model, layout)  # model.forward with the 2-D padding mask
    assert seen[0] is None
    torch.testing.assert_close(ours, masked, atol=1e-5, rtol=0)


def test_bidirectional_model_keeps_the_padding_mask():
    torch.manual_seed(0)
    config = BertGenerationConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, is_decoder=False)
    model = BertGenerationDecoder(config).eval()
    assert not right_padding_needs_no_mask(model)
    assert getattr(model, attention._CAUSAL_ATTR) is False  # decided once, kept on the model
