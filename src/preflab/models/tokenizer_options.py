"""TRL SFTConfig's tokenizer options `eos_token` and `chat_template_path` (task: sft), applied as TRL 1.16's
SFTTrainer.__init__ applies them, before any row is tokenized; RewardConfig has the same two, which RewardTrainer
applies the same way (task: reward: preflab.reward_models.train.reward_tokenizer; the model's config learns the eos,
a sequence-classification model has no generation config):

    apply_sft_tokenizer_options(cfg, tokenizer)   # edits the tokenizer in place; True when its eos changed
    mirror_eos_to_model(model, tokenizer)         # the model's config / generation config learn the new eos

- `eos_token`: must be a token of the tokenizer's vocabulary (TRL raises ValueError otherwise; here a ConfigError).
  It becomes `tokenizer.eos_token`, so the token appended to each text row and each text completion is its id (TRL
  appends the token's text and tokenizes it: the same id), a chat template's `{{ eos_token }}` renders it, and the
  saved tokenizer keeps it. The model's config `eos_token_id` is set to it and its generation config's
  `eos_token_id` gets it in front of the ones it had (any of them stops generation), as TRL does.
- `chat_template_path`: a `.jinja` / `.j2` file (TRL's rule: an existing file with that suffix) whose text becomes
  `tokenizer.chat_template`; conversational rows are rendered with it and the saved tokenizer keeps it. Another path
  or a hub name is, in TRL, a tokenizer to clone (`trl.clone_chat_template`): its template, its added tokens and its
  eos, with the model's embeddings resized to a multiple of 64 (dummy `<extra_id_N>` tokens filling the rest).
  preflab does not resize a model's embeddings, so that form is refused with the two lines that do it beforehand.
Order as TRL's: eos_token first, then the template.
"""
from __future__ import annotations

from pathlib import Path

from preflab.errors import ConfigError

TEMPLATE_SUFFIXES = (".jinja", ".j2")  # TRL 1.16 SFTTrainer: a file with one of these is a template, else a tokenizer


def apply_eos_token(tokenizer, eos_token: str) -> None:
    """tokenizer.eos_token = eos_token, after checking it is one token of the vocabulary (TRL's check)."""
    vocab = tokenizer.get_vocab()
    if eos_token not in vocab:
        from preflab.errors import nearest

        hint = nearest(eos_token, [t for t in vocab if t.startswith(("<", "[")) and len(t) > 2])
        raise ConfigError(f"eos_token={eos_token!r} is not a token of the tokenizer's vocabulary ({len(vocab)} "
                          f"tokens; its eos is {tokenizer.eos_token!r}).{hint} Give a token the tokenizer has (TRL "
                          "raises here too), or add it to the tokenizer and resize the model's embeddings first.")
    tokenizer.eos_token = eos_token


def read_chat_template(path: str) -> str:
    """The text of a chat template file (TRL's chat_template_path form that preflab takes), or a ConfigError that
    says what to do with the form it does not take (a tokenizer directory or hub name: TRL's clone)."""
    file = Path(path).expanduser()
    if file.is_file() and file.suffix in TEMPLATE_SUFFIXES:
        text = file.read_text(encoding="utf-8")
        if not text.strip():
            raise ConfigError(f"chat_template_path={path!r} is empty; give a Jinja chat template file.")
        return text
    if file.suffix in TEMPLATE_SUFFIXES:
        raise ConfigError(f"chat_template_path={path!r}: no such file (a relative path is read from the working "
                          f"directory, {Path.cwd()}).")
    if file.is_file():
        raise ConfigError(f"chat_template_path={path!r} is a file without the .jinja / .j2 suffix; TRL reads only "
                          "such a file as a chat template (any other path as a tokenizer to clone). Rename it to "
                          f"{file.with_suffix('.jinja').name}.")
    return _refuse_clone(path)


def _refuse_clone(path: str) -> str:
    raise ConfigError(
        f"chat_template_path={path!r} names a tokenizer (a folder or a hub name), not a .jinja / .j2 file: TRL then "
        "clones it (trl.clone_chat_template), adding the tokenizer's tokens the model lacks, taking its eos token and "
        "resizing the model's embeddings to a multiple of 64, which preflab does not do to a model. Either save its "
        "template as a file and give that: python -c \"from transformers import AutoTokenizer; "
        f"open('chat_template.jinja', 'w').write(AutoTokenizer.from_pretrained({path!r}).get_chat_template())\" "
        "(then chat_template_path: chat_template.jinja, and eos_token: its end-of-turn token if the model should "
        "learn it), or clone it once in Python (from trl import clone_chat_template; model, tok, _ = "
        f"clone_chat_template(model, tok, {path!r}); model.save_pretrained(d); tok.save_pretrained(d)) and set "
        "model_name_or_path: d.")


def apply_sft_tokenizer_options(cfg, tokenizer) -> bool:
    """cfg.eos_token, then cfg.chat_template_path, onto `tokenizer` (module docstring). True when the eos was set (the
    model is then told: mirror_eos_to_model)."""
    eos, template = getattr(cfg, "eos_token", None), getattr(cfg, "chat_template_path", None)
    if eos is not None:
        apply_eos_token(tokenizer, eos)
    if template is not None:
        tokenizer.chat_template = read_chat_template(template)
    return eos is not None


def mirror_eos_to_model(model, tokenizer) -> None:
    """TRL's SFTTrainer after setting eos_token: model.config (its text config) eos_token_id = the tokenizer's; the
    generation config's eos_token_id list gets it first unless it already holds it."""
    eos_id = tokenizer.eos_token_id
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    text_config.eos_token_id = eos_id
    generation = getattr(model, "generation_config", None)
    if generation is None:
        return
    ids = generation.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if eos_id not in ids:
        generation.eos_token_id = [eos_id, *ids]
