"""`eos_token` and `chat_template_path` for task: reward, as TRL 1.16's RewardTrainer applies them (RewardConfig):
the token ids of every row form equal those RewardTrainer prepares with the same options (text sides end with the
chosen eos, conversations render with the template file); the model's config and the saved tokenizer carry them
as TRL leaves them. Before, task: reward refused both options."""
import json

import pytest
import torch

from preflab.config import config_from_dict
from preflab.data.rows import load_rows
from preflab.data.tokenize import rejected_prompt_of
from preflab.errors import ConfigError
from preflab.models.tiny import tiny_tokenizer
from preflab.reward_models.data import tokenize_reward_pairs
from preflab.reward_models.train import reward_tokenizer, train_reward
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest

datasets = pytest.importorskip("datasets")
pytest.importorskip("trl")

NEW_EOS = "<|user|>"  # one of the tiny tokenizer's special tokens, not its eos (</s>)
TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
user = lambda t: {"role": "user", "content": t}  # noqa: E731
bot = lambda t: {"role": "assistant", "content": t}  # noqa: E731
TEXT = [{"prompt": "the dog ran", "chosen": " to the park", "rejected": " away"},
        {"prompt": "how many legs ?", "chosen": " eight", "rejected": " five legs"}]
NO_PROMPT = [{"chosen": "the cat sat on the mat", "rejected": "the cat sat"},
             {"chosen": "two plus three is five", "rejected": "two plus three is six"}]
CONVERSATIONS = [{"prompt": [user("hello world")], "chosen": [bot("hello !")], "rejected": [bot("go away")]},
                 {"prompt": [user("the answer ?"), bot("five ."), user("and the fox ?")], "chosen": [bot("jumps")],
                  "rejected": [bot("sleeps")]}]


def _cfg(tmp_path, **kw):
    return config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl",
                             "output_dir": str(tmp_path / "out"), "use_cpu": True, **kw})


def _template_file(tmp_path):
    path = tmp_path / "chat.jinja"
    path.write_text(TEMPLATE, encoding="utf-8")
    return str(path)


def _ours(rows, cfg):
    tok = reward_tokenizer(cfg, tiny_tokenizer())
    pairs, _ = tokenize_reward_pairs(load_rows(rows, kind="pairwise", prompt_optional=True)[0], tok, max_length=None)
    return tok, [(p.prompt_ids + p.chosen_ids, rejected_prompt_of(p) + p.rejected_ids) for p in pairs]


def _trl(rows, **options):
    """TRL 1.16's RewardTrainer built with the options: its prepared (chosen_ids, rejected_ids), its tokenizer and
    its model."""
    from trl import RewardConfig, RewardTrainer

    from preflab.reward_models.heads import build_reward_model

    tok = tiny_tokenizer()
    trainer = RewardTrainer(model=build_reward_model("builtin:tiny-llama", 1, tok), processing_class=tok,
                            args=RewardConfig(output_dir="unused", report_to=[], use_cpu=True, bf16=False, **options),
                            train_dataset=datasets.Dataset.from_list(rows))
    return [(list(x["chosen_ids"]), list(x["rejected_ids"])) for x in trainer.train_dataset], tok, trainer.model


@pytest.mark.parametrize("rows", [TEXT, NO_PROMPT, CONVERSATIONS], ids=["text", "no_prompt", "conversations"])
def test_token_ids_equal_trls_reward_trainer_with_eos_token_and_template_file(tmp_path, rows):
    path = _template_file(tmp_path)
    tok, ours = _ours(rows, _cfg(tmp_path, eos_token=NEW_EOS, chat_template_path=path))
    theirs, trl_tok, _ = _trl(rows, eos_token=NEW_EOS, chat_template_path=path)
    assert ours == theirs
    new_id, old_id = tok.convert_tokens_to_ids(NEW_EOS), tiny_tokenizer().eos_token_id
    assert new_id != old_id and tok.eos_token_id == trl_tok.eos_token_id == new_id
    assert tok.chat_template == trl_tok.chat_template == TEMPLATE
    for chosen, rejected in ours:
        assert chosen[-1] == rejected[-1] == new_id and old_id not in chosen + rejected
    _, plain = _ours(rows, _cfg(tmp_path))  # without the options: other ids (the tokenizer's eos or template)
    assert all(a != b for a, b in zip(plain, ours))
    if "messages" not in rows[0] and isinstance(rows[0]["chosen"], str):
        assert all(chosen[-1] == old_id for chosen, _ in plain)


def test_a_reward_run_saves_the_eos_and_template_and_mirrors_the_eos_as_trl(tmp_path):
    """A one-step reward run: its training pairs end with the new eos id; the saved model's config eos_token_id is
    the one TRL's RewardTrainer gives its model; the saved tokenizer has the eos and the template."""
    data = write_jsonl(tmp_path / "pairs.jsonl", TEXT * 2)
    path = _template_file(tmp_path)
    cfg = _cfg(tmp_path, dataset_name=data, eos_token=NEW_EOS, chat_template_path=path, max_steps=1,
               per_device_train_batch_size=2, save_steps=0, disable_tqdm=True, max_length=64, report_to="none")
    torch.manual_seed(0)
    train_reward(cfg)
    _, _, trl_model = _trl(TEXT, eos_token=NEW_EOS, chat_template_path=path)
    new_id = tiny_tokenizer().convert_tokens_to_ids(NEW_EOS)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["eos_token_id"] == trl_model.config.eos_token_id == new_id
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert (reloaded.eos_token, reloaded.chat_template) == (NEW_EOS, TEMPLATE)


def test_refusals_as_for_sft(tmp_path):
    """A token outside the vocabulary (TRL: ValueError) and a tokenizer to clone are refused for task: reward as for
    task: sft; the options stay refused under a task that reads neither."""
    with pytest.raises(ConfigError, match="eos_token='<\\|im_end\\|>' is not a token of the tokenizer's vocabulary"):
        reward_tokenizer(_cfg(tmp_path, eos_token="<|im_end|>"), tiny_tokenizer())
    with pytest.raises(ConfigError, match="names a tokenizer .* resizing the model's embeddings"):
        reward_tokenizer(_cfg(tmp_path, chat_template_path="Qwen/Qwen3-0.6B"), tiny_tokenizer())
    with pytest.raises(ConfigError, match="eos_token only applies to task: sft and task: reward"):
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl", "eos_token": NEW_EOS})
    tok = tiny_tokenizer()
    assert reward_tokenizer(_cfg(tmp_path), tok) is tok and tok.eos_token == "</s>"  # neither set: untouched
