"""TRL SFTConfig's `eos_token` and `chat_template_path` (task: sft; preflab.models.tokenizer_options): the token ids
of every row form equal those TRL 1.16's own SFTTrainer prepares with the same options; each text row and text
completion ends with the chosen eos id; a template file renders conversations exactly as apply_chat_template with
that template; the model's config / generation config and the saved tokenizer carry them as TRL leaves them; the
forms preflab does not take (a token outside the vocabulary, a tokenizer to clone) are refused with what to do."""
import copy
import json

import pytest
import torch

from preflab.config import config_from_dict
from preflab.data.report import TokenizeReport
from preflab.errors import ConfigError
from preflab.loops.sft import SFTTrainer, tokenize_sft_row
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.models.tokenizer_options import apply_sft_tokenizer_options, read_chat_template

datasets = pytest.importorskip("datasets")
pytest.importorskip("trl")

NEW_EOS = "<|user|>"  # one of the tiny tokenizer's special tokens, not its eos (</s>)
# a ChatML-like template of the tiny tokenizer's specials, unlike its own (models.tiny.CHAT_TEMPLATE)
TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
user = lambda t: {"role": "user", "content": t}  # noqa: E731
bot = lambda t: {"role": "assistant", "content": t}  # noqa: E731
TEXT = [{"text": "the cat sat on the mat"}, {"text": "what is two plus three ? five"}]
PROMPT_COMPLETION = [{"prompt": "the dog ran", "completion": " to the park"},
                     {"prompt": "how many legs ?", "completion": " eight"}]
MESSAGES = [{"messages": [user("hello world"), bot("hello !")]},
            {"messages": [user("the answer ?"), bot("five ."), user("and the fox ?"), bot("jumps")]}]


def _cfg(tmp_path, **kw):
    return config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "synthetic",
                             "output_dir": str(tmp_path / "out"), "max_length": None, "use_cpu": True, **kw})


def _template_file(tmp_path, text=TEMPLATE, name="chat.jinja"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _ours(rows, cfg):
    tok = tiny_tokenizer()
    apply_sft_tokenizer_options(cfg, tok)
    return tok, [tokenize_sft_row(i, row, tok, cfg, TokenizeReport())[0] for i, row in enumerate(rows)]


def _trl(rows, **options):
    """TRL 1.16's SFTTrainer built with the options: its prepared input_ids, its tokenizer and its model."""
    from trl import SFTConfig, SFTTrainer as TRLSFTTrainer

    tok = tiny_tokenizer()
    trainer = TRLSFTTrainer(model=tiny_causal_lm(tok, seed=0), processing_class=tok,
                            args=SFTConfig(output_dir="unused", report_to=[], use_cpu=True, bf16=False,
                                           max_length=None, **options),
                            train_dataset=datasets.Dataset.from_list(rows))
    return [list(x["input_ids"]) for x in trainer.train_dataset], tok, trainer.model


@pytest.mark.parametrize("rows", [TEXT, PROMPT_COMPLETION, MESSAGES], ids=["text", "prompt_completion", "messages"])
def test_token_ids_equal_trls_with_eos_token_and_template_file(tmp_path, rows):
    """Each form's token ids equal TRL's SFTTrainer's with eos_token and chat_template_path both set; text rows and
    text completions end with the new eos id (never the tokenizer's own), conversations with the template's."""
    path = _template_file(tmp_path)
    cfg = _cfg(tmp_path, eos_token=NEW_EOS, chat_template_path=path)
    tok, items = _ours(rows, cfg)
    theirs, trl_tok, _ = _trl(rows, eos_token=NEW_EOS, chat_template_path=path)
    assert [x.prompt_ids + x.completion_ids for x in items] == theirs
    new_id, old_id = tok.convert_tokens_to_ids(NEW_EOS), tiny_tokenizer().eos_token_id
    assert new_id != old_id and tok.eos_token_id == trl_tok.eos_token_id == new_id
    assert tok.chat_template == trl_tok.chat_template == TEMPLATE
    for item in items:
        assert item.completion_ids[-1] == new_id and old_id not in item.prompt_ids + item.completion_ids
    # without the options the same rows end with the tokenizer's own eos (text forms) or render its own template
    _, plain = _ours(rows, _cfg(tmp_path))
    if "messages" in rows[0]:  # the tiny template ends each turn with eos and a newline
        assert all(a.prompt_ids + a.completion_ids != b.prompt_ids + b.completion_ids for a, b in zip(plain, items))
    else:
        assert all(x.completion_ids[-1] == old_id for x in plain)


def test_template_file_renders_as_apply_chat_template(tmp_path):
    """A messages row tokenized under chat_template_path is apply_chat_template(messages, chat_template=<the file's
    text>), token for token, and differs from the tokenizer's own template's tokens."""
    cfg = _cfg(tmp_path, chat_template_path=_template_file(tmp_path, name="t.j2"))
    tok, items = _ours(MESSAGES, cfg)
    reference = tiny_tokenizer()
    for row, item in zip(MESSAGES, items):
        text = reference.apply_chat_template(row["messages"], chat_template=TEMPLATE, tokenize=False)
        expected = reference(text, add_special_tokens=False)["input_ids"]
        assert item.prompt_ids + item.completion_ids == expected
        own = reference(reference.apply_chat_template(row["messages"], tokenize=False),
                        add_special_tokens=False)["input_ids"]
        assert own != expected
    assert tok.eos_token == "</s>"  # the template alone leaves the eos


def test_trainer_saves_the_eos_and_template_and_mirrors_the_eos_as_trl(tmp_path):
    """A one-step SFT run: the saved tokenizer has the eos and template; the model's config eos_token_id is the new
    id and its generation config's list holds it before the old one, exactly TRL's SFTTrainer's model after init."""
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TEXT + PROMPT_COMPLETION), encoding="utf-8")
    path = _template_file(tmp_path)
    cfg = _cfg(tmp_path, dataset_name=str(data), eos_token=NEW_EOS, chat_template_path=path, max_steps=1,
               per_device_train_batch_size=2, save_steps=0, disable_tqdm=True)
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    trainer = SFTTrainer(cfg, policy=copy.deepcopy(model), tokenizer=tok)
    new_id = tok.convert_tokens_to_ids(NEW_EOS)
    assert all(x.completion_ids[-1] == new_id for x in trainer.train_data)
    trainer.train()
    _, _, trl_model = _trl(TEXT, eos_token=NEW_EOS, chat_template_path=path)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == trl_model.config.eos_token_id == new_id
    assert generation["eos_token_id"] == trl_model.generation_config.eos_token_id == [new_id, 2]
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert (reloaded.eos_token, reloaded.chat_template) == (NEW_EOS, TEMPLATE)


def test_refusals_name_the_value_and_what_to_do(tmp_path):
    """A token outside the vocabulary (TRL: ValueError), a tokenizer folder or hub name (TRL's clone, which resizes
    the model), a missing template file, a file without the suffix TRL reads as a template, and the options under
    another task."""
    with pytest.raises(ConfigError, match="eos_token='<\\|im_end\\|>' is not a token of the tokenizer's vocabulary"):
        _ours(TEXT, _cfg(tmp_path, eos_token="<|im_end|>"))
    folder = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(folder)
    for name in (str(folder), "Qwen/Qwen3-0.6B"):
        with pytest.raises(ConfigError, match="names a tokenizer .* resizing the model's embeddings"):
            read_chat_template(name)
    with pytest.raises(ConfigError, match="missing.jinja'?: no such file"):
        read_chat_template(str(tmp_path / "missing.jinja"))
    with pytest.raises(ConfigError, match="without the .jinja / .j2 suffix.*Rename it to chat.jinja"):
        read_chat_template(_template_file(tmp_path, name="chat.txt"))
    with pytest.raises(ConfigError, match="eos_token only applies to task: sft"):
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl",
                          "eos_token": NEW_EOS})


def test_the_model_learns_the_eos_exactly_when_eos_token_is_given(tmp_path):
    """apply_sft_tokenizer_options says "the eos changed" for eos_token (alone or with a template) and not for a
    template alone; mirror_eos_to_model then sets the text config's eos_token_id and puts the id first in the
    generation config's list unless the list already holds it (TRL's rule: no duplicate), an int id becoming a list."""
    from types import SimpleNamespace

    from preflab.models.tokenizer_options import mirror_eos_to_model

    path = _template_file(tmp_path)
    changed = {}
    for name, opts in (("eos", {"eos_token": NEW_EOS}), ("both", {"eos_token": NEW_EOS, "chat_template_path": path}),
                       ("template", {"chat_template_path": path})):
        tok = tiny_tokenizer()
        changed[name] = apply_sft_tokenizer_options(SimpleNamespace(**{"eos_token": None, "chat_template_path": None,
                                                                       **opts}), tok)
        assert tok.eos_token == (NEW_EOS if "eos_token" in opts else "</s>")
    assert changed == {"eos": True, "both": True, "template": False}
    tok = tiny_tokenizer()
    apply_eos = apply_sft_tokenizer_options(SimpleNamespace(eos_token=NEW_EOS, chat_template_path=None), tok)
    new_id = tok.convert_tokens_to_ids(NEW_EOS)
    assert apply_eos and new_id != 2
    for before, after in ((2, [new_id, 2]), ([2, 5], [new_id, 2, 5]), ([5, new_id], [5, new_id]), (None, [new_id])):
        model = tiny_causal_lm(tiny_tokenizer(), seed=0)
        model.config.eos_token_id = 2
        model.generation_config.eos_token_id = before
        mirror_eos_to_model(model, tok)
        assert (model.config.eos_token_id, model.generation_config.eos_token_id) == (new_id, after)


def test_a_blank_template_file_is_refused(tmp_path):
    """A template file of whitespace only renders every conversation as nothing: refused, naming the path."""
    for text in ("", "  \n\t\n"):
        with pytest.raises(ConfigError, match="chat_template_path=.*blank.jinja' is empty"):
            read_chat_template(_template_file(tmp_path, text=text, name="blank.jinja"))
