"""Chunked scoring equals log_softmax(model(...).logits) for every causal-LM architecture transformers ships that
builds tiny from its config offline (padded layout, and prefix-shared where the model takes a custom 4-D mask);
heads that cannot be reproduced are refused with the reason, never scored wrong."""
import warnings

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from preflab.data.layout import pair_sequences, padded
from preflab.data.prefix import prefix_shared
from preflab.errors import ConfigError
from preflab.models.attention import effective_layout
from preflab.scoring.head import HEAD_POST, PLAIN_HEAD, REFUSED_HEAD, backbone_and_head
from preflab.scoring.lm import LogProbScorer, naive_token_logps


class Pair:
    def __init__(self, prompt, chosen, rejected):
        self.prompt_ids, self.chosen_ids, self.rejected_ids = prompt, chosen, rejected


PAIRS = [Pair([1, 5, 9, 14], [20, 21, 2], [40, 2]), Pair([1, 7], [30, 31, 32, 33, 2], [8, 2])]
TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, n_embd=32, n_layer=2, n_head=4, d_model=32, ffn_dim=64, n_positions=128,
            max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
            word_embed_proj_dim=32, hidden_dim=32, n_inner=64, num_layers=2, num_heads=4)
# post-processing factors far from 1 (defaults are often 1.0 or too large to matter on tiny random logits)
POST_VALUES = {"scale": 0.3, "divide": 4.0, "softcap": 0.4}
# model types in the registry that do not build tiny from their config here (reason); everything else is tested
NOT_BUILT = {"granitemoehybrid": "config validation needs mamba head sizes", "gemma3n_text": "cache layer types",
             "cohere_compass_text": "needs a layer-type rope table", "recurrent_gemma": "recurrent cache layers",
             "xlstm": "chunk-size shape constraints", "gemma4_text": "over 3M parameters at the smallest config",
             "falcon_h1": "12 s to build (mamba kernels)", "gpt_oss": "slow MoE init",
             "minimax_m3_vl_text": "2M parameters", "cpmant": "2M parameters", "blenderbot-small": "1M parameters",
             "ctrl": "1M parameters", "xlnet": "not a causal mask model; slow"}
ARCHS = sorted((set(PLAIN_HEAD) | set(HEAD_POST)) - set(NOT_BUILT))
# the transformers release the registry was written against; an older one lacks its newest model types
REGISTRY_TRANSFORMERS = (5, 25)


def installed_transformers() -> tuple[int, int]:
    return tuple(int(x) for x in transformers.__version__.split(".")[:2])


def tiny(model_type: str, **extra):
    if model_type not in CONFIG_MAPPING and installed_transformers() < REGISTRY_TRANSFORMERS:
        pytest.skip(f"{model_type} is newer than the installed transformers {transformers.__version__}")
    cls = CONFIG_MAPPING[model_type]
    known = cls().to_dict()
    kwargs = {k: v for k, v in TINY.items() if k in known}
    if model_type in HEAD_POST:
        op, attr = HEAD_POST[model_type]
        kwargs[attr] = POST_VALUES[op]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        model = AutoModelForCausalLM.from_config(cls(**kwargs, **extra))
    return model.float().eval()


@pytest.mark.parametrize("model_type", ARCHS)
def test_scoring_equals_log_softmax_of_model_logits(model_type):
    model = tiny(model_type)
    base = padded(pair_sequences(PAIRS), pad_id=0)
    with torch.no_grad():
        expected = naive_token_logps(model, base)  # log_softmax(model(...).logits), the full [R, T, V] path
        torch.testing.assert_close(LogProbScorer(model, chunk_tokens=3)(base).token_logps, expected,
                                   atol=2e-5, rtol=1e-5)
        if effective_layout("prefix_shared", model) == "prefix_shared":
            shared = LogProbScorer(model)(prefix_shared(PAIRS, pad_id=0)).token_logps
            torch.testing.assert_close(shared, expected, atol=2e-5, rtol=1e-5)
    if model_type in HEAD_POST:  # the post-processing was needed: the bare projection is measurably off
        head = backbone_and_head(model)[1]
        h = torch.randn(3, head.weight.shape[1])
        bare = torch.log_softmax(head.projection(h).float(), -1)
        assert head.post is not None and not torch.allclose(bare, torch.log_softmax(head(h), -1), atol=1e-3)


def test_every_registry_entry_is_tested_or_says_why_not():
    assert set(NOT_BUILT) <= set(PLAIN_HEAD) | set(HEAD_POST)
    assert not (set(PLAIN_HEAD) & set(HEAD_POST)) and not (set(REFUSED_HEAD) & (set(PLAIN_HEAD) | set(HEAD_POST)))
    unknown = sorted(t for t in set(HEAD_POST) | set(PLAIN_HEAD) | set(REFUSED_HEAD) if t not in CONFIG_MAPPING)
    if unknown and installed_transformers() < REGISTRY_TRANSFORMERS:  # CI's release checks the names for typos
        pytest.skip(f"transformers {transformers.__version__} predates the registry's {unknown}")
    assert not unknown, f"registry entries unknown to transformers {transformers.__version__}: {unknown}"


def test_granite_logit_scaling_changes_log_probs_by_the_closed_form():
    """Granite: log p = log_softmax(W h / s); with s = 4 the scorer must follow the model, not the bare W h."""
    model = tiny("granite")
    assert model.config.logits_scaling == 4.0
    layout = padded(pair_sequences(PAIRS), pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=layout.input_ids, attention_mask=layout.attention_mask).logits
        model.config.logits_scaling = 1.0
        unscaled = model(input_ids=layout.input_ids, attention_mask=layout.attention_mask).logits
        model.config.logits_scaling = 4.0
        torch.testing.assert_close(logits, unscaled / 4.0)
        torch.testing.assert_close(LogProbScorer(model)(layout).token_logps, naive_token_logps(model, layout),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_encoder_heads_are_refused_with_the_reason(model_type):
    model = tiny(model_type, is_decoder=True)
    with pytest.raises(ConfigError, match="prediction-head transform"):
        LogProbScorer(model)(padded(pair_sequences(PAIRS), pad_id=0))


class ScaledLogits(LlamaForCausalLM):
    """An unknown architecture (not in the registry) whose forward rescales the logits."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 3.0
        return out


def _unknown(cls):
    config = LlamaConfig(**{k: v for k, v in TINY.items() if k in LlamaConfig().to_dict()})
    torch.manual_seed(0)
    model = cls(config).eval()
    model.config.model_type = "not_in_the_registry"
    return model


def test_unknown_architecture_with_a_different_head_is_refused():
    with pytest.raises(ConfigError, match="not lm_head"):
        LogProbScorer(_unknown(ScaledLogits))(padded(pair_sequences(PAIRS), pad_id=0))


def test_unknown_architecture_with_a_plain_head_passes_the_probe_and_keeps_training_mode():
    model = _unknown(LlamaForCausalLM).train()
    layout = padded(pair_sequences(PAIRS), pad_id=0)
    got = LogProbScorer(model)(layout).token_logps
    assert model.training
    torch.testing.assert_close(got, naive_token_logps(model, layout), atol=1e-5, rtol=0)
