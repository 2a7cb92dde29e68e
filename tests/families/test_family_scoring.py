"""Per-response log-probs of tiny models of real families, in every layout preflab offers, equal the sum of
log_softmax of the model's own forward logits over each [prompt | response] sequence alone; a layout that cannot be
exact for a family (sliding windows: Mistral, Mixtral, Phi-3, Gemma 2/3) falls back to padded with the reason."""
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers as tf

from preflab.data.layout import padded, pair_sequences
from preflab.data.packing import packed_pairs
from preflab.data.prefix import prefix_shared
from preflab.models.attention import effective_layout, supports_custom_mask
from preflab.scoring.lm import LogProbScorer

sys.path.insert(0, str(Path(__file__).parent))
from families import FAMILIES, WINDOW, tiny_family_model  # noqa: E402


class Pair:
    def __init__(self, prompt, chosen, rejected):
        self.prompt_ids, self.chosen_ids, self.rejected_ids = prompt, chosen, rejected


_g = torch.Generator().manual_seed(0)
_ids = lambda n: torch.randint(3, 190, (n,), generator=_g).tolist()  # noqa: E731
# rows of 21 to 31 tokens: longer than the sliding windows (WINDOW = 12)
PAIRS = [Pair([1] + _ids(14), _ids(15) + [2], _ids(9) + [2]), Pair([1] + _ids(6), _ids(20) + [2], _ids(4) + [2])]
LAYOUTS = {"padded": lambda: padded(pair_sequences(PAIRS), pad_id=0),
           "prefix_shared": lambda: prefix_shared(PAIRS, pad_id=0),
           "packed": lambda: packed_pairs(PAIRS, pad_id=0, share_prefix=False),
           "prefix_packed": lambda: packed_pairs(PAIRS, pad_id=0, share_prefix=True)}
SLIDING = {"mistral", "mixtral", "phi3", "gemma2", "gemma3_text"}


def own_forward_sums(model) -> torch.Tensor:
    """[chosen_1, chosen_2, rejected_1, rejected_2] sums of log_softmax(model(sequence).logits) at response tokens."""
    out = []
    for side in ("chosen_ids", "rejected_ids"):
        for pair in PAIRS:
            response = getattr(pair, side)
            logits = model(input_ids=torch.tensor([pair.prompt_ids + response])).logits[0].float()
            logprobs = torch.log_softmax(logits, -1)[len(pair.prompt_ids) - 1:-1]
            out.append(logprobs.gather(-1, torch.tensor(response)[:, None]).sum())
    return torch.stack(out)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layout_scores_each_family_as_its_own_forward(family):
    model = tiny_family_model(family)
    scorer = LogProbScorer(model, chunk_tokens=7)
    with torch.no_grad():
        expected = own_forward_sums(model)
        for name, build in LAYOUTS.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                used = effective_layout(name, model)
            if name != "padded" and family in SLIDING:  # refused with the reason, never scored wrong
                assert used == "padded", (family, name)
                assert "sliding" in supports_custom_mask(model)[1]
                assert not caught or "falling back to the padded layout" in str(caught[0].message)
            else:
                assert used == name, (family, name, supports_custom_mask(model))
            scores = scorer(LAYOUTS[used]())
            got = (scores.token_logps * scores.mask).sum(-1)
            torch.testing.assert_close(got, expected, atol=5e-5, rtol=1e-5, msg=f"{family} {name}")


def test_a_sliding_window_that_cannot_bind_keeps_the_custom_mask():
    """Mistral whose window is not below its positions (Phi-3.5: 262144 > 131072), or Qwen2 with the window off, has
    full attention: the prefix-shared layout stays (and is exact)."""
    for config in (tf.MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=200, max_position_embeddings=64,
                                    sliding_window=64),
                   tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=200, sliding_window=WINDOW,
                                  use_sliding_window=False)):
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(config).eval()
        assert supports_custom_mask(model) == (True, ""), config.model_type
        with torch.no_grad():
            torch.testing.assert_close((lambda s: (s.token_logps * s.mask).sum(-1))(LogProbScorer(model)(
                prefix_shared(PAIRS, pad_id=0))), own_forward_sums(model), atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["starcoder2", "phimoe", "ministral3", "doge"])
def test_other_sliding_window_types_without_layer_types_refuse_the_custom_mask(model_type):
    """The same gap in other transformers model types that apply `sliding_window` in every layer (built as in
    tests/scoring/test_heads.py), with a window of 12: longer than the probe pair, shorter than the rows."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "scoring"))
    from test_heads import tiny

    model = tiny(model_type, sliding_window=WINDOW)
    ok, why = supports_custom_mask(model)
    assert not ok and f"sliding_window={WINDOW}" in why
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert effective_layout("prefix_packed", model) == "padded"
