"""User trial 27: an engineer migrating a TRL 1.16 codebase (DPOConfig / KTOConfig / ORPOConfig / CPOConfig /
RewardConfig built in Python, `DPOTrainer(..., eval_dataset=...)`, callbacks, TRL's dataset formats).
docs/trials/trial-27.md has the findings."""
import copy
import types

import pytest

from preflab.config import config_from_dict
from preflab.data.rows import load_rows
from preflab.data.tokenize import tokenize_pairs
from preflab.loops.trl_experimental_tokens import experimental_tokens_note, token_differences
from preflab.models.tiny import tiny_tokenizer

BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}
ROWS = [{"prompt": "what is 2+3?", "chosen": " five", "rejected": " six or seven"},
        {"chosen": "Q: sky? A: blue", "rejected": "Q: sky? A: green"},   # implicit text prompt
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "go"}]}]


def _no_bos_tokenizer():
    """A tokenizer with a bos token that `tokenizer(text)` does not add (GPT-2, GPT-NeoX, OLMo's kind)."""
    from tokenizers import processors

    tok = tiny_tokenizer("bytelevel")
    tok._tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    assert tok("a")["input_ids"][:1] != [tok.bos_token_id] and tok.bos_token_id is not None
    return tok


def _trl_ids(trainer_cls, tok, row):
    """TRL 1.16's experimental trainer's (prompt, chosen, rejected) ids for `row`: its own maybe_extract_prompt,
    maybe_apply_chat_template and tokenize_row (called unbound on a stand-in with the attributes it reads)."""
    trl_data = pytest.importorskip("trl.data_utils")
    maybe_apply_chat_template, maybe_extract_prompt = trl_data.maybe_apply_chat_template, trl_data.maybe_extract_prompt

    st = types.SimpleNamespace(processing_class=tok, is_encoder_decoder=False, max_length=1024)
    st.build_tokenized_answer = types.MethodType(trainer_cls.build_tokenized_answer, st)
    feature = trainer_cls.tokenize_row(st, maybe_apply_chat_template(maybe_extract_prompt(copy.deepcopy(row)), tok))
    n = len(feature["prompt_input_ids"])
    return feature["prompt_input_ids"], feature["chosen_input_ids"][n:], feature["rejected_input_ids"][n:]


def _as_trl_experimental(pair, example, tok):
    """preflab's ids with the differences the note names applied: bos in front of a text prompt, eos after a
    conversational response that does not end with it."""
    bos, eos = tok.bos_token_id, tok.eos_token_id
    prompt, responses = list(pair.prompt_ids), [list(pair.chosen_ids), list(pair.rejected_ids)]
    if not isinstance(example.prompt, list):
        prompt = prompt if prompt[:1] == [bos] else [bos] + prompt
    else:
        responses = [ids if ids[-1:] == [eos] else ids + [eos] for ids in responses]
    return prompt, *responses


@pytest.mark.parametrize("adds_bos", [True, False])
@pytest.mark.parametrize("trainer", ["orpo", "cpo"])
def test_the_noted_differences_are_exactly_how_trls_experimental_trainers_tokenize(trainer, adds_bos):
    """The ids differ from TRL's ORPOTrainer / CPOTrainer by exactly what the note counts: bos before a text prompt
    (only where the tokenizer does not add it to text) and one eos after a conversational response."""
    cls = (pytest.importorskip("trl.experimental.orpo.orpo_trainer").ORPOTrainer if trainer == "orpo" else
           pytest.importorskip("trl.experimental.cpo.cpo_trainer").CPOTrainer)
    tok = tiny_tokenizer("bytelevel") if adds_bos else _no_bos_tokenizer()
    examples, _ = load_rows(copy.deepcopy(ROWS), kind="pairwise")
    pairs, _ = tokenize_pairs(examples, tok)
    for row, example, pair in zip(ROWS, examples, pairs):
        assert tuple(map(list, _trl_ids(cls, tok, row))) == _as_trl_experimental(pair, example, tok)
    counts = token_differences(examples, pairs, tok)
    assert counts == {"bos": 0 if adds_bos else 2, "eos": 2, "turn_cut": 0}
    differing = sum(tuple(map(list, _trl_ids(cls, tok, r))) != (p.prompt_ids, p.chosen_ids, p.rejected_ids)
                    for r, p in zip(ROWS, pairs))
    assert differing == (1 if adds_bos else 3)


def test_a_run_of_an_experimental_trl_loss_says_how_many_rows_differ(capsys):
    """orpo / simpo runs print the note with the counts; dpo (TRL's stable DPOTrainer tokenizes as preflab) does not."""
    from preflab.loops.prepare import prepare_examples

    tok = _no_bos_tokenizer()
    for loss_type, said in (("orpo", "TRL's experimental ORPOTrainer"), ("simpo", "TRL's experimental CPOTrainer"),
                            ("sigmoid", None)):
        cfg = config_from_dict({**BASE, "loss_type": loss_type})
        cfg.dataset_name = copy.deepcopy(ROWS)
        prepare_examples(cfg, tok)
        out = capsys.readouterr().out
        if said is None:
            assert "experimental" not in out
            continue
        assert said in out
        assert "2 text prompt(s) start without the bos '<s>'" in out
        assert "2 conversational response(s) end with the chat template's end of turn" in out


def test_a_response_opening_with_a_user_turn_is_counted_for_the_cut():
    examples, _ = load_rows([{"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                              "chosen": [{"role": "user", "content": "and?"}, {"role": "assistant", "content": "ok"}],
                              "rejected": [{"role": "user", "content": "and?"}, {"role": "assistant", "content": "no"}]}],
                            kind="pairwise")
    tok = tiny_tokenizer("bytelevel")
    pairs, _ = tokenize_pairs(examples, tok)
    assert token_differences(examples, pairs, tok)["turn_cut"] == 1
    objective = config_from_dict({**BASE, "loss_type": "orpo"}).objective()
    assert "1 conversational row(s) have a response opening with another turn" in \
        experimental_tokens_note(objective, examples, pairs, tok)
