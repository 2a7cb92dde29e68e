"""The LM head as `model.forward` applies it, so that chunked scoring equals log_softmax(model(...).logits).

The scorer (preflab.scoring.lm) runs the decoder once and the output projection only at response positions; some
architectures post-process the projection's output inside `forward`, and skipping that gives wrong log-probs with
no error (Granite divides by `logits_scaling`: up to 0.18 nats/token off on a tiny random model). Each transformers
model type is in one of four places:

    HEAD_POST[model_type]  the post-processing its ForCausalLM.forward applies after `lm_head(h)`:
                           ("scale", attr)    logits * config.<attr>
                           ("divide", attr)   logits / config.<attr>
                           ("softcap", attr)  c * tanh(logits / c), c = config.<attr> (None or 0: nothing)
    PLAIN_HEAD             logits = lm_head(backbone(...).last_hidden_state), nothing after (checked by a test)
    REFUSED_HEAD[type]     cannot be reproduced from (backbone, output embeddings): a ConfigError with the reason
    anything else          checked once per model object against model.forward on a probe input of 4 tokens;
                           equal -> scored as PLAIN, different -> ConfigError (never silently wrong)

tests/scoring/test_heads.py builds every listed architecture tiny and checks the scorer against model.forward.
"""
from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from preflab.errors import ConfigError
from preflab.models.attention import unwrap

_SOFTCAP_FINAL = ("softcap", "final_logit_softcapping")
HEAD_POST: dict[str, tuple[str, str]] = {
    # Granite (IBM, 2024): logits = lm_head(h) / logits_scaling
    **{t: ("divide", "logits_scaling") for t in ("granite", "granite_swa", "granitemoe", "granitemoe_swa",
                                                 "granitemoeshared", "granitemoehybrid")},
    "hyperclovax": ("scale", "logits_scaling"),
    # Cohere Command-R: logits = lm_head(h) * logit_scale
    **{t: ("scale", "logit_scale") for t in ("cohere", "cohere2", "cohere2_moe", "cohere_compass_text")},
    "falcon_h1": ("scale", "lm_head_multiplier"),
    # Gemma 2 (Gemma Team, 2024, Sec. 2): final logit soft-capping, logits <- c * tanh(logits / c)
    **{t: _SOFTCAP_FINAL for t in ("gemma2", "gemma3_text", "gemma3n_text", "gemma4_text", "gemma4_unified_text",
                                   "vaultgemma", "nanochat", "beam")},
    "recurrent_gemma": ("softcap", "logits_soft_cap"),
    "xlstm": ("softcap", "output_logit_soft_cap"),
}
PLAIN_HEAD = frozenset({
    "apertus", "apertus1p5_text", "arcee", "aria_text", "bert-generation", "biogpt", "bitnet", "blenderbot-small",
    "bloom", "cpmant", "ctrl", "cwm", "diffllama", "doge", "ernie4_5", "exaone", "exaone4", "falcon", "falcon_mamba",
    "flex_olmo", "flint", "gemma", "glm", "glm4", "gpt-sw3", "gpt2", "gpt_bigcode", "gpt_neox", "gpt_neox_japanese",
    "gpt_oss", "helium", "hrm_text", "hunyuan_v1_dense", "hunyuan_v1_moe", "internlm3", "iquestcoder", "jais2",
    "jetmoe", "lfm2", "lfm3", "llama", "mamba", "minimax", "minimax_m3_vl_text", "ministral", "ministral3", "mistral",
    "mixtral", "moshi", "mpt", "nemotron", "olmo", "olmo2", "olmo3", "olmo_hybrid", "olmoe", "openai-gpt", "opt",
    "persimmon", "phi", "phi3", "phimoe", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "rwkv", "seed_oss", "smollm3",
    "stablelm", "starcoder2", "xglm", "xlnet",
})
_ENCODER_HEAD = ("its LM head is a prediction-head transform (dense + activation + norm) before the output "
                 "embeddings, which the scorer would skip")
REFUSED_HEAD: dict[str, str] = {
    **{t: _ENCODER_HEAD for t in ("bert", "big_bird", "camembert", "data2vec-text", "ernie", "megatron-bert",
                                  "roberta", "roberta-prelayernorm", "roformer", "xlm-roberta", "xlm-roberta-xl",
                                  "rembert", "roc_bert", "electra", "xmod")},
    "modernbert-decoder": "its forward applies a decoder projection after the LM head",
    "inkling_text": "its forward rescales the hidden states and cuts the padded vocabulary after the LM head",
}
PROBE_TOKENS = 4
_checked: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


class LMHead:
    """The output projection of a causal LM plus its model type's post-processing: `head(h)` -> float32 logits
    equal to model(...).logits at those positions. `weight` is the projection's weight (dtype, vocabulary size).
    A tempered head (`tempered(T)`) divides those logits by T last, after the post-processing: z / T."""

    def __init__(self, projection: nn.Module, post: tuple[str, float] | None = None, model_type: str = "",
                 temperature: float = 1.0):
        self.projection, self.post, self.model_type = projection, post, model_type
        self.temperature = temperature

    @property
    def weight(self) -> Tensor:
        return self.projection.weight

    def tempered(self, temperature: float) -> "LMHead":
        """This head with its logits divided by `temperature` (after the model type's post-processing, as TRL
        1.16's fused LM head applies its `temperature` after the logit scale and soft-cap), so that log_softmax of
        its output is the log-prob under the sampling distribution softmax(z / T); the head itself at 1 (nothing
        divided: the same floats as before)."""
        if temperature == 1.0:
            return self
        if not (temperature > 0 and temperature < float("inf")):
            raise ConfigError(f"temperature={temperature!r}: the logits are divided by it, so it must be a positive "
                              "finite number.")
        return LMHead(self.projection, self.post, self.model_type, float(temperature))

    def __call__(self, h: Tensor) -> Tensor:
        logits = self._post(self.projection(h).float())
        return logits if self.temperature == 1.0 else logits / self.temperature

    def _post(self, logits: Tensor) -> Tensor:
        if self.post is None:
            return logits
        op, value = self.post
        if op == "scale":
            return logits * value
        if op == "divide":
            return logits / value
        return value * torch.tanh(logits / value)  # softcap


def _post(config, model_type: str) -> tuple[str, float] | None:
    if model_type not in HEAD_POST:
        return None
    op, attr = HEAD_POST[model_type]
    value = getattr(config, attr, None)
    if value is None or (op == "softcap" and not value):
        return None
    value = float(value)
    if (op == "divide" and value == 0) or not torch.isfinite(torch.tensor(value)):
        raise ConfigError(f"{model_type}: config.{attr}={value} is not a usable logit {op} factor; fix the model "
                          "config.")
    return None if op in ("scale", "divide") and value == 1.0 else (op, value)


def backbone_and_head(model: nn.Module) -> tuple[nn.Module, LMHead]:
    """(decoder without LM head, LMHead) of a transformers causal LM; ConfigError when the head cannot be
    reproduced outside model.forward (see the module docstring)."""
    base = unwrap(model)
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", "") or ""
    name = type(base).__name__
    if model_type in REFUSED_HEAD:
        raise ConfigError(f"{name} ({model_type}) cannot be scored by preflab: {REFUSED_HEAD[model_type]}. Use a "
                          "decoder-only causal LM (Llama, Qwen, Mistral, Gemma, GPT-2, ...).")
    prefix = getattr(base, "base_model_prefix", None)
    backbone = getattr(base, prefix, None) if prefix else None
    projection = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if backbone is None or projection is None or getattr(projection, "weight", None) is None:
        raise ConfigError(f"{name} ({model_type or 'no model_type'}) is not a causal LM with a separate backbone "
                          f"(attribute base_model_prefix={prefix!r}) and LM head (get_output_embeddings()); preflab "
                          "cannot score it. Use a transformers *ForCausalLM model.")
    head = LMHead(projection, _post(config, model_type), model_type)
    if model_type not in HEAD_POST and model_type not in PLAIN_HEAD:
        _probe(base, backbone, head)
    return backbone, head


@torch.no_grad()
def _probe(base: nn.Module, backbone: nn.Module, head: LMHead) -> None:
    """Once per model object: the head reproduces model.forward's logits on PROBE_TOKENS tokens (eval mode, so no
    dropout and no random numbers drawn), else ConfigError."""
    if _checked.get(base):
        return
    device = head.weight.device
    vocab = head.weight.shape[0]
    ids = (torch.arange(PROBE_TOKENS, device=device) % max(vocab - 1, 1) + 1).unsqueeze(0)
    was_training = base.training
    base.eval()
    try:
        full = base(input_ids=ids, use_cache=False).logits.float()
        ours = head(backbone(input_ids=ids, use_cache=False).last_hidden_state)
    finally:
        base.train(was_training)
    full, ours = torch.log_softmax(full, -1), torch.log_softmax(ours, -1)
    tol = 1e-3 if head.weight.dtype == torch.float32 else 5e-2
    err = float((full - ours).abs().max()) if full.shape == ours.shape else float("inf")
    if not err <= tol:
        raise ConfigError(f"{type(base).__name__} ({head.model_type}): its logits are not lm_head(last hidden "
                          f"state) (log-prob difference {err:.3g} on a probe input), so preflab's chunked scoring "
                          "would be wrong. Known post-processing (preflab.scoring.head.HEAD_POST) covers "
                          f"{', '.join(sorted(HEAD_POST))}; add this model type there if its head is a scale or "
                          "soft-cap.")
    _checked[base] = True
