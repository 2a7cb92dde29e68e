"""Tiny random models of real families, each saved as a user's local folder would be: config + safetensors weights +
a tokenizer with the family's own special tokens and chat template (the originals, as TRL 1.16 stores them under
trl/chat_templates for identity checks; a template is skipped where TRL is not installed).

    model = tiny_family_model("mistral")                  # float32, eval mode, 2 layers, hidden 32
    tok = family_tokenizer("qwen3")                       # byte-level BPE + <|im_start|>, <|im_end|>, the template
    path = save_family(tmp_path, "gemma2")                # model.save_pretrained + tokenizer.save_pretrained

Sliding windows are 12 tokens (shorter than the test rows, so the window binds), Gemma 2's soft-caps are far from 1.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

WINDOW = 12
_COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=256)
CORPUS = ["the cat sat on the mat and the dog ran to the park", "what is two plus three ? the answer is five .",
          "hello world , preference optimization aligns models with human feedback !",
          "Be brief. Sky? Blue. Green. Hi Hello! Think step by step: 2 + 2 = 4"] * 10

# family -> (chat template file in trl/chat_templates, special tokens: bos, eos, pad, others)
TOKENS = {
    "chatml": ("qwen2_5", None, "<|im_end|>", "<|endoftext|>", ["<|im_start|>"]),
    "qwen3": ("qwen3", None, "<|im_end|>", "<|endoftext|>", ["<|im_start|>"]),  # + <think>, </think> (not special)
    "llama3": ("llama3", "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>",
               ["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"]),
    "gemma": ("gemma", "<bos>", "<eos>", "<pad>", ["<start_of_turn>", "<end_of_turn>"]),
    "phi3": ("phi3", "<s>", "<|endoftext|>", "<|endoftext|>", ["<|user|>", "<|assistant|>", "<|end|>", "<|system|>"]),
    # GPT-2 / GPT-NeoX / OLMo: bos = eos = <|endoftext|>, which the tokenizer does not add
    "endoftext": ("qwen2_5", "<|endoftext|>", "<|endoftext|>", "<|padding|>", ["<|im_start|>", "<|im_end|>"]),
}
ADDS_BOS = ("llama3", "gemma")  # tokenizer(text) starts with bos (Phi-3: add_bos_token false)


def _model_config(family: str):
    c = _COMMON
    if family == "qwen2":
        return tf.Qwen2Config(**c, tie_word_embeddings=True), "chatml"
    if family == "qwen3":
        return tf.Qwen3Config(**c, head_dim=8, tie_word_embeddings=True), "qwen3"
    if family == "llama":
        return tf.LlamaConfig(**c, tie_word_embeddings=False), "llama3"
    if family == "smollm":  # SmolLM2: Llama architecture, tied embeddings, ChatML
        return tf.LlamaConfig(**c, tie_word_embeddings=True), "chatml"
    if family == "mistral":
        return tf.MistralConfig(**c, head_dim=8, sliding_window=WINDOW), "llama3"
    if family == "mixtral":
        return tf.MixtralConfig(**c, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW,
                                router_aux_loss_coef=0.02), "llama3"
    if family == "phi3":
        return tf.Phi3Config(**c, sliding_window=WINDOW), "phi3"
    if family == "gemma2":
        return tf.Gemma2Config(**c, head_dim=8, sliding_window=WINDOW, final_logit_softcapping=0.5,
                               attn_logit_softcapping=2.0), "gemma"
    if family == "gemma3_text":
        return tf.Gemma3TextConfig(**c, head_dim=8, sliding_window=WINDOW, final_logit_softcapping=0.5), "gemma"
    if family == "olmo2":
        return tf.Olmo2Config(**c), "endoftext"
    if family == "qwen2_moe":
        return tf.Qwen2MoeConfig(**c, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                 shared_expert_intermediate_size=16, router_aux_loss_coef=0.02), "chatml"
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                max_position_embeddings=256), "endoftext"
    if family == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256), "endoftext"
    raise ValueError(family)


FAMILIES = ("qwen2", "qwen3", "llama", "smollm", "mistral", "mixtral", "phi3", "gemma2", "gemma3_text", "olmo2",
            "qwen2_moe", "gpt_neox", "gpt2")


def chat_template(name: str) -> str:
    """The original chat template `name` as TRL 1.16 stores it (skips the test where TRL is not installed)."""
    trl = pytest.importorskip("trl")
    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


def family_tokenizer(style: str, vocab_size: int = 420) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (merges across spaces, like GPT-2/Llama-3/Qwen) with the chat style's special
    tokens and original template; bos is added by `tok(text)` where the family has one (Llama-3, Gemma)."""
    template, bos, eos, pad, others = TOKENS[style]
    specials = [t for t in dict.fromkeys([pad, bos, eos, *others]) if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    if style in ADDS_BOS:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   additional_special_tokens=others)
    if style == "qwen3":  # Qwen3's reasoning markers are added tokens that are not special
        fast.add_tokens(["<think>", "</think>"])
    fast.chat_template = chat_template(template)
    return fast


def tiny_family_model(family: str, vocab_size: int = 200, seed: int = 0):
    config, _ = _model_config(family)
    config.vocab_size = vocab_size
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tf.AutoModelForCausalLM.from_config(config)
    return model.float().eval()


def family_style(family: str) -> str:
    return _model_config(family)[1]


def save_family(root: Path, family: str) -> Path:
    """A local model folder of `family` (weights, config, tokenizer with its chat template) under root/family."""
    tok = family_tokenizer(family_style(family))
    model = tiny_family_model(family, vocab_size=len(tok))
    model.config.pad_token_id = tok.pad_token_id
    model.config.bos_token_id = tok.bos_token_id
    model.config.eos_token_id = tok.eos_token_id
    path = Path(root) / family
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
