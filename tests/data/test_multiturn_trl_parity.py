"""Conversational preference rows whose `chosen` / `rejected` (or KTO `completion`) are more than one assistant turn,
as TRL 1.16 accepts them: a multi-turn continuation [assistant, user, assistant] after the prompt, a response ending
with a user turn, a system turn inside a response, a response opening with a user or tool turn (an explicit prompt
ending with the assistant's turn; an implicit prompt whose conversations part at a user turn), with the `tools` and
`chat_template_kwargs` columns. The token ids preflab trains on equal those TRL's own code prepares: DPOTrainer's
and KTOTrainer's `_prepare_dataset` (called with a stand-in `self`, as tests/data/test_truncation_trl_parity.py does)
and RewardTrainer's, on tiny tokenizers whose chat templates are built in code, one of them opening every turn with
the same token (a ChatML-like header, where TRL's common-token cut keeps that token in the prompt). The DPO loss and
log-probs of a tiny model on such rows equal TRL's DPOTrainer.compute_loss on its own collated batch."""
import copy
import re
import json
import types

import pytest
import torch

from preflab.data.rows import load_rows
from preflab.data.tokenize import tokenize_pairs, tokenize_unpaired
from preflab.errors import DataError
from preflab.models.tiny import CHAT_TEMPLATE, tiny_causal_lm, tiny_tokenizer

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


def m(role, content, **more):
    return {"role": role, "content": content, **more}


BYTE = tiny_tokenizer("bytelevel")
HEADER = tiny_tokenizer("bytelevel")  # every turn opens with the same token, then the role: ChatML's shape
HEADER.chat_template = ("{{ bos_token }}{% for message in messages %}<|system|>{{ message['role'] }}\n"
                        "{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
                        "{% if add_generation_prompt %}<|system|>assistant\n{% endif %}")
TOOLS = tiny_tokenizer("bytelevel")  # renders the tools column and a chat_template_kwargs flag
TOOLS.chat_template = "{% if tools %}[tools:{{ tools | length }}]{% endif %}{% if flag %}[flag]{% endif %}" + \
    CHAT_TEMPLATE
Q = [m("user", "what is two plus three ?")]
CALL = m("assistant", "calling the tool")

EXPLICIT = [
    {"prompt": Q, "chosen": [m("assistant", "five"), m("user", "sure ?"), m("assistant", "yes")],
     "rejected": [m("assistant", "six"), m("user", "sure ?"), m("assistant", "no")]},            # a, u, a
    {"prompt": Q, "chosen": [m("assistant", "five"), m("user", "ok")], "rejected": [m("assistant", "six")]},  # ends u
    {"prompt": Q, "chosen": [m("assistant", "five"), m("system", "be kind"), m("assistant", "yes")],
     "rejected": [m("assistant", "six")]},                                                        # a system turn
    {"prompt": Q + [m("assistant", "the answer")], "chosen": [m("user", "really ?"), m("assistant", "five")],
     "rejected": [m("user", "hm"), m("assistant", "six")]},                                       # opens with u
    {"prompt": Q, "chosen": [m("assistant", "five")], "rejected": [m("user", "again"), m("assistant", "six")]},
    {"prompt": Q + [CALL], "chosen": [m("tool", "5"), m("assistant", "five")],
     "rejected": [m("tool", "6"), m("assistant", "six")]},                                        # opens with a tool
    {"prompt": Q, "chosen": [m("assistant", "five")], "rejected": [m("assistant", "six")]},       # one turn each
]
A1 = m("assistant", "five")
IMPLICIT = [
    {"chosen": Q + [A1, m("user", "sure ?"), m("assistant", "yes")],
     "rejected": Q + [m("assistant", "six"), m("user", "sure ?"), m("assistant", "no")]},         # part at a1
    {"chosen": Q + [A1, m("user", "sure ?"), m("assistant", "yes")],
     "rejected": Q + [A1, m("user", "really ?"), m("assistant", "no")]},                          # part at u2
    {"chosen": Q + [A1], "rejected": Q + [A1, m("user", "and ?"), m("assistant", "more")]},       # chosen: a prefix
    {"chosen": [m("system", "be kind")] + Q + [CALL, m("tool", "5"), m("assistant", "five")],
     "rejected": [m("system", "be kind")] + Q + [CALL, m("tool", "6"), m("assistant", "six")]},   # part at a tool
]
UNPAIRED = [
    {"prompt": Q, "completion": [m("assistant", "five"), m("user", "sure ?"), m("assistant", "yes")], "label": True},
    {"prompt": Q + [A1], "completion": [m("user", "really ?"), m("assistant", "no")], "label": False},
    {"prompt": Q, "completion": [m("assistant", "six")], "label": False},
]


def _with_options(rows):
    """The rows with a `tools` column (JSON text, as TRL reads it too) and `chat_template_kwargs` in every row (TRL
    reads the column of every row: a row without it would be None there)."""
    tools = json.dumps([{"type": "function", "function": {"name": "add", "parameters": {}}}])
    return [{**row, "tools": tools if i % 2 else None, "chat_template_kwargs": {"flag": i % 3 == 0}}
            for i, row in enumerate(rows)]


def _trl_dpo(rows, tok):
    """{index: (prompt_ids, chosen_ids, rejected_ids)} as TRL 1.16's DPOTrainer prepares them."""
    from trl import DPOConfig, DPOTrainer

    data = datasets.Dataset.from_list([{**r, "index": i} for i, r in enumerate(rows)])
    args = DPOConfig(output_dir="unused", report_to=[], max_length=None, bf16=False, use_cpu=True)
    prepared = DPOTrainer._prepare_dataset(types.SimpleNamespace(_tokenizer=tok), data, tok, args, "train")
    return {r["index"]: (r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in prepared}


def _ours_dpo(rows, tok):
    examples, report = load_rows(datasets.Dataset.from_list(rows), kind="pairwise")
    pairs, _ = tokenize_pairs(examples, tok, max_length=None)
    return {p.row_id: (p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs}, report


@pytest.mark.parametrize("tok", [BYTE, HEADER], ids=["tiny_template", "shared_turn_header"])
@pytest.mark.parametrize("rows", [EXPLICIT, IMPLICIT], ids=["explicit_prompt", "implicit_prompt"])
def test_multiturn_pairs_give_trls_dpo_token_ids(rows, tok):
    ours, report = _ours_dpo(rows, tok)
    assert ours == _trl_dpo(rows, tok)
    # rows whose responses are more than the assistant's reply are named in the data line (form *_multiturn)
    plain = sum(all(t["role"] == "assistant" for t in r["chosen"] + r["rejected"]) for r in rows if "prompt" in r)
    assert sum(v for k, v in report.forms.items() if k.endswith("_multiturn")) == len(rows) - plain
    if tok is HEADER:  # TRL's cut keeps the shared turn-opening token in the prompt; the response starts at the role
        prompt, chosen, _ = ours[3 if "prompt" in rows[0] else 1]
        assert tok.decode(prompt).endswith("<|system|>") and tok.decode(chosen).startswith("user\n")


def test_tools_and_chat_template_kwargs_columns_give_trls_dpo_token_ids():
    rows = _with_options(EXPLICIT)
    ours, _ = _ours_dpo(rows, TOOLS)
    assert ours == _trl_dpo(rows, TOOLS)
    text = [TOOLS.decode(p) for p, _, _ in ours.values()]
    assert any("[tools:1]" in t for t in text) and any("[flag]" in t for t in text)  # both columns were read
    assert any("[tools:1]" not in t and "[flag]" not in t for t in text)


def test_implicit_prompt_is_cut_where_trl_cuts_the_conversations():
    """TRL's extract_prompt: the prompt is every message before the first that differs (one conversation the start
    of the other: all shared messages but the last), so the responses may open with the user's turn; before this
    change preflab cut back to an assistant turn and refused the row (a user turn in a response)."""
    examples, report = load_rows(datasets.Dataset.from_list(IMPLICIT), kind="pairwise")
    assert [len(ex.prompt) for ex in examples] == [1, 2, 1, 3]
    assert examples[1].chosen == [m("user", "sure ?"), m("assistant", "yes")]
    assert examples[2].chosen == [A1] and examples[2].rejected[1] == m("user", "and ?")
    assert report.forms == {"conversational_implicit_multiturn": 4}  # the last opens with a tool result


def test_unpaired_multiturn_completions_give_trls_kto_token_ids():
    """KTOTrainer: unpaired rows with multi-turn completions, and pairwise multi-turn rows (extract_prompt, then
    unpair_preference_dataset) give the same (prompt, completion) ids as load_rows(kind="unpaired")."""
    from trl import KTOConfig, KTOTrainer

    me = types.SimpleNamespace(_tokenizer=HEADER, calculate_KL=False, desirable_weight=1.0, undesirable_weight=1.0)
    args = KTOConfig(output_dir="unused", report_to=[], max_length=None, bf16=False, use_cpu=True)
    for rows in (UNPAIRED, IMPLICIT, EXPLICIT):
        prepared = KTOTrainer._prepare_dataset(me, datasets.Dataset.from_list(rows), HEADER, args, "train")
        theirs = sorted((r["prompt_ids"], r["completion_ids"], bool(r["label"])) for r in prepared)
        examples, _ = load_rows(datasets.Dataset.from_list(rows), kind="unpaired")
        items, _ = tokenize_unpaired(examples, HEADER, max_length=None)
        assert sorted((x.prompt_ids, x.completion_ids, x.label) for x in items) == theirs


def test_multiturn_pairs_give_trls_reward_trainer_sequences():
    """RewardTrainer tokenizes prompt + chosen (and the implicit rows' whole conversations) as one sequence: preflab's
    reward pairs hold the same ids, prompt and response together."""
    from trl import RewardConfig, RewardTrainer

    from preflab.reward_models.data import tokenize_reward_pairs

    args = RewardConfig(output_dir="unused", report_to=[], max_length=None, bf16=False, use_cpu=True)
    for rows in (EXPLICIT, IMPLICIT):
        prepared = RewardTrainer._prepare_dataset(types.SimpleNamespace(), datasets.Dataset.from_list(rows), HEADER,
                                                  args, "train")
        examples, _ = load_rows(datasets.Dataset.from_list(rows), kind="pairwise", prompt_optional=True)
        pairs, _ = tokenize_reward_pairs(examples, HEADER, max_length=None)
        assert [(p.prompt_ids + p.chosen_ids, p.prompt_ids + p.rejected_ids) for p in pairs] == \
            [(r["chosen_ids"], r["rejected_ids"]) for r in prepared]


def test_dpo_loss_and_logps_on_multiturn_rows_equal_trls_dpo_trainer():
    """A tiny Llama and its frozen copy: TRL's DPOTrainer.compute_loss on its own collated batch of the multi-turn
    rows, and preflab's padded batch of the same rows scored by LogProbScorer with the sigmoid objective, give the
    same loss and the same summed chosen / rejected log-probs (the completion tokens, user turns included)."""
    from trl import DPOConfig, DPOTrainer

    from preflab.loops.batches import collate_pairs
    from preflab.models.load import frozen_copy
    from preflab.objectives import PairBatch, get_objective
    from preflab.scoring.lm import LogProbScorer

    torch.manual_seed(0)
    tok = tiny_tokenizer("bytelevel")
    model = tiny_causal_lm(tok, seed=0)
    rows = EXPLICIT
    trainer = DPOTrainer(model=copy.deepcopy(model), ref_model=frozen_copy(model), processing_class=tok,
                         args=DPOConfig(output_dir="unused", report_to=[], use_cpu=True, bf16=False, beta=0.1,
                                        max_length=None, gradient_checkpointing=False,
                                        per_device_train_batch_size=len(rows)),
                         train_dataset=datasets.Dataset.from_list(rows))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch)
    metrics = {k: v[-1] for mode in trainer._metrics.values() for k, v in mode.items()}
    examples, _ = load_rows(datasets.Dataset.from_list(rows), kind="pairwise")
    pairs, _ = tokenize_pairs(examples, tok, max_length=None)
    padded = collate_pairs(pairs, tok.pad_token_id, "padded")
    with torch.no_grad():
        policy, ref = LogProbScorer(model)(padded), LogProbScorer(frozen_copy(model))(padded)
    n = len(pairs)
    sums, ref_sums = policy.token_logps.sum(-1), ref.token_logps.sum(-1)
    out = get_objective("sigmoid", beta=0.1)(PairBatch.from_sums(sums[:n], sums[n:], ref_sums[:n], ref_sums[n:]))
    assert float(out.loss) == pytest.approx(float(theirs), rel=1e-5)
    assert float(sums[:n].mean()) == pytest.approx(metrics["logps/chosen"], rel=1e-5)
    assert float(sums[n:].mean()) == pytest.approx(metrics["logps/rejected"], rel=1e-5)


def test_a_response_of_other_roles_than_the_template_renders_stays_a_bad_row():
    """What TRL still gets and preflab refuses, with the reason: a user turn inside a response that the chat
    template leaves out (the model would train without it; TRL trains silently on what is rendered)."""
    tok = tiny_tokenizer("bytelevel")
    tok.chat_template = ("{% for message in messages %}{% if message['role'] != 'user' or loop.first %}"
                         "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    examples, _ = load_rows(EXPLICIT[:1])
    with pytest.raises(DataError, match=r"field 'chosen\[1\]': the chat template leaves out this 'user' message"):
        tokenize_pairs(examples, tok, max_length=None)


def test_vlm_rows_refuse_multiturn_responses_saying_why():
    """task: vlm still reads responses as the assistant's turns only: the refusal says so and that text rows take
    multi-turn responses (TRL's vision collator would train them)."""
    from preflab.data.report import RowProblem
    from preflab.data.vision import _messages

    with pytest.raises(RowProblem) as info:
        _messages([m("assistant", "five"), m("user", "sure ?"), m("assistant", "yes")], "chosen", "assistant")
    assert info.value.field == "chosen[1].role" and "task: vlm reads a response as the assistant's own" in \
        str(info.value.fix) and "text rows (task: dpo) take them" in str(info.value.fix)


def test_a_template_whose_prompt_shares_no_token_with_the_conversation_is_a_bad_row():
    """A response opening with a user turn is cut at the common token prefix of the rendered prompt and the
    conversation; a template that renders the prompt alone with another first token leaves no prompt (TRL would
    train the whole conversation with an empty prompt): the bad row `boundary_unrepresentable`, naming the field."""
    tok = tiny_tokenizer("bytelevel")
    tok.chat_template = "{% if add_generation_prompt %}</s>{% endif %}" + CHAT_TEMPLATE
    examples, _ = load_rows([EXPLICIT[3]])
    with pytest.raises(DataError, match=r"field 'chosen': the rendered prompt and prompt \+ response share no first"):
        tokenize_pairs(examples, tok, max_length=None)
    _, report = tokenize_pairs(examples, tok, max_length=None, on_bad_row="skip")
    assert report.skipped == {"boundary_unrepresentable": 1}


@pytest.mark.parametrize("message, field, said", [
    ({"role": "ipython", "content": "5"}, "chosen[1].role", "TRL passes any role to the chat template"),
    ({"role": "user", "content": [{"type": "text", "text": "sure ?"}]}, "chosen[1].content",
     "TRL would hand a list of parts to the template"),
])
def test_what_trl_takes_and_text_rows_refuse_says_why(message, field, said):
    """A role outside system / developer / user / assistant / tool, and list-of-parts content in a text row: still
    refused (each a multi-turn response's second turn here), saying why and what to do."""
    row = {"prompt": Q, "chosen": [m("assistant", "five"), message, m("assistant", "yes")],
           "rejected": [m("assistant", "six")]}
    with pytest.raises(DataError, match=rf"field '{re.escape(field)}': .*{said}") as info:
        load_rows([row])
    assert info.value.reason == "invalid_message"
