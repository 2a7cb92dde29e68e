"""Tiny tokenizers and causal LMs built in code: no network, deterministic. Used by tests, the demo and the lab.

tiny_tokenizer(kind):
    "bytelevel"  byte-level BPE (GPT-2 style; merges across spaces, so "a b" may tokenize unlike "a" + " b")
    "whitespace" BPE over whitespace-split words (merges inside words only)
    "char"       one token per character of a fixed alphabet
tiny_causal_lm(tokenizer, arch="llama" | "qwen2" | "gpt2", ...): a randomly initialised transformers model.
"""
from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from preflab.errors import ConfigError

SPECIALS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_CORPUS = [
    "the cat sat on the mat and the dog ran to the park",
    "what is two plus three ? the answer is five .",
    "please answer briefly : how many legs does a spider have ? eight",
    "a quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9",
    "hello world , preference optimization aligns models with human feedback !",
    "chosen responses are better than rejected responses ; rewards and margins grow",
] * 20


def tiny_tokenizer(kind: str = "bytelevel", vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A small trained tokenizer wrapped as a transformers fast tokenizer with a chat template."""
    if kind == "char":
        alphabet = string.ascii_letters + string.digits + string.punctuation + " \n"
        vocab = {tok: i for i, tok in enumerate(SPECIALS + [c for c in alphabet])}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
        tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
        tok.decoder = decoders.Fuse()
    elif kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(_CORPUS, trainer)
    elif kind == "whitespace":
        tok = Tokenizer(models.BPE(unk_token="<pad>"))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = list(string.ascii_letters + string.digits + string.punctuation)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=alphabet,
                                      show_progress=False)
        tok.train_from_iterator(_CORPUS, trainer)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; use bytelevel, whitespace or char")
    # `tokenizer(text)` starts with BOS, as preflab's training rows do (data/tokenize.py adds it to text prompts), so
    # a saved run reloaded with plain transformers tokenizes prompts exactly as training did. preflab's own
    # encoding passes add_special_tokens=False and adds BOS itself.
    bos_id = SPECIALS.index("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_causal_lm(tokenizer=None, arch: str = "llama", vocab_size: int | None = None, hidden_size: int = 32,
                   num_layers: int = 2, num_heads: int = 4, seed: int = 0, max_positions: int = 512):
    """A randomly initialised causal LM of the given architecture, in float32, in eval mode."""
    config, cls = tiny_causal_lm_config(tokenizer, arch, vocab_size, hidden_size, num_layers, num_heads, max_positions)
    torch.manual_seed(seed)
    model = cls(config)
    return model.float().eval()


def tiny_causal_lm_config(tokenizer=None, arch: str = "llama", vocab_size: int | None = None, hidden_size: int = 32,
                          num_layers: int = 2, num_heads: int = 4, max_positions: int = 512):
    """(the transformers config of tiny_causal_lm's model, its model class), nothing built: the architecture a
    builtin name builds for `tokenizer` (its vocabulary sizes the model), read before building it."""
    import transformers as tf

    rotary = arch in ("llama", "qwen2")  # rotary embeddings rotate pairs of a head's dimensions
    if num_heads < 1 or hidden_size < 1 or hidden_size % (num_heads * (2 if rotary else 1)):
        raise ConfigError(f"hidden_size={hidden_size} does not fit the tiny {arch} model: it needs a positive multiple "
                          f"of {num_heads * (2 if rotary else 1)} ({num_heads} attention heads"
                          + (" of an even size, for rotary embeddings)" if rotary else ")") + ".")
    vocab = vocab_size or (len(tokenizer) if tokenizer is not None else 300)
    common = dict(vocab_size=vocab, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        config = tf.LlamaConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                                num_hidden_layers=num_layers, num_attention_heads=num_heads,
                                num_key_value_heads=max(1, num_heads // 2), max_position_embeddings=max_positions,
                                tie_word_embeddings=False, **common)
        cls = tf.LlamaForCausalLM
    elif arch == "qwen2":
        config = tf.Qwen2Config(hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                                num_hidden_layers=num_layers, num_attention_heads=num_heads,
                                num_key_value_heads=max(1, num_heads // 2), max_position_embeddings=max_positions,
                                tie_word_embeddings=True, **common)
        cls = tf.Qwen2ForCausalLM
    elif arch == "gpt2":
        config = tf.GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=max_positions,
                               **common)
        cls = tf.GPT2LMHeadModel
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; use llama, qwen2 or gpt2")
    return config, cls
