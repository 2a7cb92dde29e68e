"""task: sft with assistant_only_loss (TRL 1.16 SFTConfig): the loss on the tokens the chat template wraps in
{% generation %} only, equal to TRL's own SFTTrainer: the same loss tokens as TRL's labels (tiny template and TRL's
training templates of real families; messages and prompt-completion rows, completion_only_loss on and off), the same
per-parameter gradients, and the same losses, gradient norms and weights after two optimizer steps (accumulation 2,
padded and packed). A template without markers is refused where TRL refuses it, naming TRL's training template
where TRL would swap one in; a wrong mask (whole chat, last assistant turn only) gives another loss."""
import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.data.report import DataReport, TokenizeReport
from preflab.errors import ConfigError, DataError
from preflab.loops.sft import SFTKind, SFTLoss, SFTTrainer, collate_sft, sft_row_builder, tokenize_sft_row
from preflab.models.tiny import CHAT_TEMPLATE, tiny_causal_lm, tiny_tokenizer
from preflab.scoring.lm import LogProbScorer

sys.path.insert(0, str(Path(__file__).parent))
from families import family_tokenizer  # noqa: E402

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

# preflab's tiny template (models.tiny.CHAT_TEMPLATE) with each assistant message and its eos in a generation block:
# it renders the same text
MARKED = ("{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
          "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}{{ eos_token }}"
          "{% endgeneration %}{{ '\\n' }}{% else %}{{ message['content'] }}{{ eos_token }}{{ '\\n' }}{% endif %}"
          "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
# the eos outside the block: the end of the turn is never trained (TRL warns)
STOP_OUTSIDE = MARKED.replace("{{ eos_token }}{% endgeneration %}", "{% endgeneration %}{{ eos_token }}")

user = lambda t: {"role": "user", "content": t}  # noqa: E731
bot = lambda t: {"role": "assistant", "content": t}  # noqa: E731
system = lambda t: {"role": "system", "content": t}  # noqa: E731
CHATS = [  # two assistant turns each; a system message in two of them
    [system("be brief"), user("what is two plus three ?"), bot("five"), user("the cat ?"), bot("sat on the mat")],
    [user("hello world"), bot("hello !"), user("how many legs does a spider have ?"), bot("eight")],
    [system("answer briefly"), user("the dog ?"), bot("ran to the park"), user("and the fox ?"),
     bot("jumps over the lazy dog")],
    [user("the answer ?"), bot("five ."), user("rewards ?"), bot("chosen responses are better")],
]
MESSAGES = [{"messages": chat} for chat in CHATS]
PROMPT_COMPLETION = [{"prompt": chat[:-1], "completion": chat[-1:]} for chat in CHATS]


def _marked_tokenizer(template: str = MARKED):
    tok = tiny_tokenizer()
    tok.chat_template = template
    return tok


def _cfg(**kw):
    return config_from_dict({"task": "sft", "model_name_or_path": "unused", "dataset_name": "synthetic",
                             "max_length": None, "assistant_only_loss": True, **kw})


def _items(rows, tok, cfg):
    return [tokenize_sft_row(i, row, tok, cfg, TokenizeReport())[0] for i, row in enumerate(rows)]


def _loss_positions(item) -> list[int]:
    """Positions (in prompt + completion) of the tokens that carry loss."""
    p = len(item.prompt_ids)
    return [p + i for i in range(len(item.completion_ids)) if item.loss_mask is None or item.loss_mask[i]]


def _trl_prepared(rows, tok, **config) -> list[dict]:
    """TRL 1.16's SFTTrainer._prepare_dataset (on a stand-in trainer): input_ids and labels of each row."""
    import types

    from trl import SFTConfig, SFTTrainer as TRLSFTTrainer

    args = SFTConfig(**{"output_dir": "unused", "report_to": [], "max_length": None, "bf16": False, "use_cpu": True,
                        **config})
    completion_only = args.completion_only_loss if args.completion_only_loss is not None else "prompt" in rows[0]
    me = types.SimpleNamespace(_tokenizer=tok, chat_template=None, completion_only_loss=completion_only)
    return list(TRLSFTTrainer._prepare_dataset(me, datasets.Dataset.from_list(rows), tok, args, False, None, "train"))


@pytest.mark.parametrize("style", ["tiny", "chatml", "llama3"])
def test_loss_tokens_are_trls_labels(style):
    """The tokens that carry loss are exactly those TRL labels (labels != -100 after the first token, which nothing
    predicts): messages rows; prompt-completion rows with completion_only_loss on (marked and in the completion) and
    off (every marked token, earlier assistant turns of the prompt too); without assistant_only_loss, the TRL
    completion_only_loss behaviour (off: every token)."""
    if style == "tiny":
        tok = _marked_tokenizer()
    else:  # a real family's template, swapped for TRL's training template (as TRL 1.16 does)
        from trl.chat_template_utils import get_training_chat_template

        tok = family_tokenizer(style)
        tok.chat_template = get_training_chat_template(tok)
    cases = [(MESSAGES, {}), (PROMPT_COMPLETION, {}), (PROMPT_COMPLETION, {"completion_only_loss": False})]
    for rows, options in cases + [(PROMPT_COMPLETION, {"assistant_only_loss": False, "completion_only_loss": False})]:
        config = {"assistant_only_loss": True, **options}
        theirs = _trl_prepared(rows, tok, **config)
        ours = _items(rows, tok, _cfg(**config))
        for item, t in zip(ours, theirs, strict=True):
            assert item.prompt_ids + item.completion_ids == t["input_ids"], (style, options)
            assert _loss_positions(item) == [i for i, x in enumerate(t["labels"]) if x != -100 and i > 0], \
                (style, options)
    # the cases differ: the prompt's assistant turn is trained only without completion_only_loss
    mark, every = (_items(PROMPT_COMPLETION, tok, _cfg(**o))[0] for o in ({}, {"completion_only_loss": False}))
    assert len(_loss_positions(every)) > len(_loss_positions(mark)) > 0
    # messages rows: a user turn between the two assistant turns carries no loss
    assert _items(MESSAGES, tok, _cfg())[0].loss_mask.count(False) > 0


def _trl_trainer(model, tok, rows, tmp_path, **config):
    from trl import SFTConfig, SFTTrainer as TRLSFTTrainer

    args = SFTConfig(**{"output_dir": str(tmp_path / "trl"), "per_device_train_batch_size": 2,
                        "gradient_accumulation_steps": 2, "max_steps": 2, "learning_rate": 1e-3,
                        "lr_scheduler_type": "constant", "report_to": [], "use_cpu": True, "assistant_only_loss": True,
                        "max_length": None, "logging_steps": 1, "save_strategy": "no", "bf16": False, "seed": 0,
                        "optim": "adamw_torch", "gradient_checkpointing": False, "disable_tqdm": True, **config})
    return TRLSFTTrainer(model=model, args=args, processing_class=tok, train_dataset=datasets.Dataset.from_list(rows))


def _preflab_trainer(model, tok, rows, tmp_path, **options):
    cfg = config_from_dict({"task": "sft", "model_name_or_path": "unused", "dataset_name": "synthetic",
                            "output_dir": str(tmp_path / "preflab"), "per_device_train_batch_size": 2,
                            "gradient_accumulation_steps": 2, "max_steps": 2, "learning_rate": 1e-3,
                            "lr_scheduler_type": "constant", "disable_tqdm": True, "use_cpu": True,
                            "logging_steps": 1, "save_steps": 0, "assistant_only_loss": True, "max_length": 256,
                            **options})
    items = _items(rows, tok, cfg)
    return SFTTrainer(cfg, policy=model, tokenizer=tok, train_data=items, eval_data=items)


@pytest.mark.parametrize("packing", [False, True])
def test_two_steps_equal_trls_sft_trainer(packing, tmp_path):
    """TRL 1.16's SFTTrainer.train() and preflab's, 2 steps of 2 micro-batches x 2 conversations (each step holds all
    4, so the row order does not matter; the loss is TRL's token mean over the step, num_items_in_batch): the same
    logged loss, grad_norm and num_tokens at each step and the same weights after (2e-6, see below); packed (TRL's
    bfd packing puts the 4 conversations in one row, preflab packs rows of <= 256 tokens) as padded: the assistant
    mask travels with the packed tokens."""
    torch.set_num_threads(1)
    tok = _marked_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    trl_model, ours = copy.deepcopy(model).train(), copy.deepcopy(model)
    trainer = _trl_trainer(trl_model, tok, MESSAGES, tmp_path, packing=packing, max_length=256 if packing else None)
    trainer.train()
    theirs = [h for h in trainer.state.log_history if "loss" in h]
    _preflab_trainer(ours, tok, MESSAGES, tmp_path, packing=packing).train()
    logged = [json.loads(x) for x in (tmp_path / "preflab/metrics.jsonl").read_text().splitlines()]
    logged = [r for r in logged if "loss" in r and "step" in r]
    assert len(logged) == len(theirs) == 2
    assert logged[0]["loss"] != pytest.approx(logged[1]["loss"], abs=1e-3)  # the second step sees new weights
    for a, b in zip(logged, theirs):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-6)
        assert a["num_tokens"] == b["num_tokens"]
        # mean_token_accuracy: TRL averages the micro-batches' token means, preflab takes the step's token mean
        # (equal for one micro-batch: test_gradients_equal_trls_compute_loss)
    trained = dict(trl_model.named_parameters())
    start = {n: p.detach() for n, p in model.named_parameters()}
    moved = 0.0
    for name, p in ours.named_parameters():
        # 5e-6: Adam's first steps move a weight by about lr x sign(gradient) however small the gradient, so float
        # rounding of a near-zero gradient (summed in another order; packed rows: segment attention's sums, 3e-6
        # measured on one of 9600 lm_head weights) shows up at 1e-6 x lr / 1e-3
        torch.testing.assert_close(p.detach(), trained[name].detach(), atol=5e-6, rtol=0, msg=lambda m: f"{name}: {m}")
        moved = max(moved, float((p.detach() - start[name]).abs().max()))
    assert moved > 1e-3  # the steps really changed the weights


def test_gradients_equal_trls_compute_loss(tmp_path):
    """One batch of all 4 conversations: TRL's compute_loss on its own prepared dataset and collator, and preflab's
    forward: the same loss, mean_token_accuracy and per-parameter gradients to 1e-6; preflab's eval_loss too."""
    torch.set_num_threads(1)
    tok = _marked_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    trl_model, ours = copy.deepcopy(model).train(), copy.deepcopy(model)
    trainer = _trl_trainer(trl_model, tok, MESSAGES, tmp_path, per_device_train_batch_size=4)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(MESSAGES))])
    trl_loss = trainer.compute_loss(trl_model, batch)
    trl_loss.backward()
    run = _preflab_trainer(ours, tok, MESSAGES, tmp_path, per_device_train_batch_size=4,
                           gradient_accumulation_steps=1)
    out = run.forward(run.micro_batches(0)[0])
    out.loss.backward()
    assert float(out.loss) == pytest.approx(float(trl_loss), abs=1e-6)
    accuracy = trainer._metrics["train"]["mean_token_accuracy"][-1]
    assert float(out.metrics["mean_token_accuracy"]) == pytest.approx(accuracy, abs=1e-6)
    trl_grads = {n: p.grad for n, p in trl_model.named_parameters() if p.grad is not None}
    assert trl_grads
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, trl_grads[name], atol=1e-6, rtol=0, msg=name)
    run.step = 0  # evaluation: the same token mean over the assistant tokens (TRL's eval loss is compute_loss's)
    assert run.evaluate()["eval_loss"] == pytest.approx(float(trl_loss), abs=1e-6)


def test_a_wrong_mask_gives_another_loss():
    """Training on the whole chat, or on the last assistant turn only, gives a loss other than TRL's (which this
    implementation equals): the masks of the two assistant turns both count, and nothing else does."""
    tok = _marked_tokenizer()
    model = tiny_causal_lm(tok, seed=0).eval()
    theirs = _trl_prepared(MESSAGES, tok, assistant_only_loss=True)
    with torch.no_grad():
        logp = [torch.log_softmax(model(torch.tensor([t["input_ids"]])).logits[0].double(), -1) for t in theirs]
    nll = [[-float(lp[i - 1, t["input_ids"][i]]) for i, x in enumerate(t["labels"]) if x != -100 and i > 0]
           for lp, t in zip(logp, theirs)]
    trl_loss = sum(map(sum, nll)) / sum(map(len, nll))

    def loss(items) -> float:
        with torch.no_grad():
            return float(SFTLoss()(SFTKind.split(LogProbScorer(model)(collate_sft(items, 0, False)), None, {})).loss)

    ours = _items(MESSAGES, tok, _cfg())
    assert loss(ours) == pytest.approx(trl_loss, abs=1e-6)
    whole = _items(MESSAGES, tok, _cfg(assistant_only_loss=False))
    last_only = []
    for x in ours:  # the loss mask of the last assistant turn alone
        mask = list(x.loss_mask)
        gap = len(mask) - 1 - mask[::-1].index(False, mask[::-1].index(True))  # the last non-loss token before it
        last_only.append(type(x)(x.row_id, x.prompt_ids, x.completion_ids, loss_mask=[False] * (gap + 1)
                                 + mask[gap + 1:]))
    assert abs(loss(whole) - trl_loss) > 1e-3 and abs(loss(last_only) - trl_loss) > 1e-3


def test_a_template_without_markers_is_refused_where_trl_refuses_it():
    """preflab's tiny template has no {% generation %}: TRL 1.16 raises (it has no training template for it), and
    preflab refuses with what to do. Qwen2.5's template: TRL would swap in its training template; preflab refuses
    naming that file."""
    from trl import SFTConfig, SFTTrainer as TRLSFTTrainer

    tok = tiny_tokenizer()
    assert tok.chat_template == CHAT_TEMPLATE
    with pytest.raises(ValueError, match="patching is not supported for this template"):
        TRLSFTTrainer(model=tiny_causal_lm(tok), processing_class=tok,
                      args=SFTConfig(output_dir="unused", report_to=[], use_cpu=True, assistant_only_loss=True,
                                     bf16=False), train_dataset=datasets.Dataset.from_list(MESSAGES))
    tok.name_or_path = "/models/tiny-chat"
    with pytest.raises(ConfigError, match=r"chat template of the tokenizer of /models/tiny-chat has no such markers"
                                          r".*tokenizer.save_pretrained.*remove assistant_only_loss"):
        sft_row_builder(_cfg(), tok, DataReport(), TokenizeReport())
    qwen = family_tokenizer("chatml")
    with pytest.raises(ConfigError, match=r"TRL 1\.16 would swap it for its training template \S*"
                                          r"chat_templates/qwen2_5_training\.jinja"):
        sft_row_builder(_cfg(), qwen, DataReport(), TokenizeReport())
    assert sft_row_builder(_cfg(assistant_only_loss=False), tok, DataReport(), TokenizeReport())  # option off: fine


def test_an_untrained_end_of_turn_is_noted_as_trl_warns(capsys):
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    from preflab.data.assistant_mask import check_assistant_template

    good, bad = _marked_tokenizer(), _marked_tokenizer(STOP_OUTSIDE)
    assert is_chat_template_stop_token_trained(good) and not is_chat_template_stop_token_trained(bad)
    assert check_assistant_template(good) is None
    assert "model is not trained to stop" in check_assistant_template(bad)


def test_rows_assistant_only_loss_cannot_train_are_bad_rows(tmp_path):
    """A text row (TRL: the dataset is not conversational) and a conversation without an assistant turn (TRL: no
    assistant tokens) are bad rows named by file and row."""
    from preflab.loops.sft import prepare_sft

    tok = _marked_tokenizer()
    for row, said in (({"text": "the cat sat"}, r"row 1 .*field 'text'.*needs conversational rows"),
                      ({"prompt": "the cat", "completion": " sat"}, r"row 1 .*field 'prompt'.*needs conversational"),
                      ({"messages": [user("hello world")]}, r"row 1 .*field 'messages'.*marks no token")):
        data = tmp_path / "d.jsonl"
        data.write_text(json.dumps(MESSAGES[0]) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(DataError, match=said):
            prepare_sft(_cfg(dataset_name=str(data)), tok)
    train, _, report = prepare_sft(_cfg(dataset_name=str(data), on_bad_row="skip"), tok)
    assert len(train) == 1 and report["skipped"] == {"no_assistant_tokens": 1}


def test_truncation_keeps_the_mask_aligned():
    """max_length cuts the completion and its loss mask together (TRL truncates input_ids and labels together)."""
    tok = _marked_tokenizer()
    full = _items(MESSAGES[:1], tok, _cfg())[0]
    limit = len(full.prompt_ids) + 6
    cut = _items(MESSAGES[:1], tok, _cfg(max_length=limit))[0]
    theirs = _trl_prepared(MESSAGES[:1], tok, assistant_only_loss=True, max_length=limit)[0]
    assert cut.prompt_ids + cut.completion_ids == theirs["input_ids"]
    assert _loss_positions(cut) == [i for i, x in enumerate(theirs["labels"]) if x != -100 and i > 0]
    assert cut.loss_mask == full.loss_mask[:6]


@pytest.mark.parametrize("assistant_only", [False, True])
def test_a_messages_rows_chat_template_kwargs_reach_the_template_as_in_trl(assistant_only):
    """TRL passes a conversational row's chat_template_kwargs (and tools) to the template; preflab ignored them for
    'messages' rows before, so the trained tokens differed from TRL's."""
    tok = _marked_tokenizer("{% if house_style is defined %}{{ house_style }}\n{% endif %}" + MARKED)
    rows = [{"messages": CHATS[1], "chat_template_kwargs": {"house_style": "answer briefly"}}]
    theirs = _trl_prepared(rows, tok, assistant_only_loss=assistant_only)[0]
    (ours,) = _items(rows, tok, _cfg(assistant_only_loss=assistant_only))
    assert ours.prompt_ids + ours.completion_ids == theirs["input_ids"]
    assert tok.decode(theirs["input_ids"][:4]).startswith("answer")
    assert _loss_positions(ours) == [i for i, x in enumerate(theirs["labels"]) if x != -100 and i > 0]


@pytest.mark.parametrize("assistant_only", [False, True])
def test_sft_chat_template_kwargs_as_json_text_read_as_the_preference_path_reads_them(assistant_only):
    """One parser (preflab.data.tokenize.chat_template_options) for both paths: JSON text (a CSV cell) gives the
    tokens of the object; text that is no JSON object is the preference path's wrong_type problem naming the field.
    With assistant_only_loss the text reached the template as `**dict(text)` and failed as a template error."""
    from preflab.data.report import RowProblem

    tok = _marked_tokenizer("{% if house_style is defined %}{{ house_style }}\n{% endif %}" + MARKED)
    cfg = _cfg(assistant_only_loss=assistant_only)
    (as_object,) = _items([{"messages": CHATS[1], "chat_template_kwargs": {"house_style": "answer briefly"}}], tok,
                          cfg)
    (as_text,) = _items([{"messages": CHATS[1], "chat_template_kwargs": '{"house_style": "answer briefly"}'}], tok,
                        cfg)
    assert (as_text.prompt_ids, as_text.completion_ids, as_text.loss_mask) == (
        as_object.prompt_ids, as_object.completion_ids, as_object.loss_mask)
    assert tok.decode((as_text.prompt_ids + as_text.completion_ids)[:4]).startswith("answer")
    with pytest.raises(RowProblem) as bad:
        _items([{"messages": CHATS[1], "chat_template_kwargs": "house_style=brief"}], tok, cfg)
    assert (bad.value.reason, bad.value.field) == ("wrong_type", "chat_template_kwargs")


def test_a_slow_tokenizer_is_refused_before_any_row():
    """The mask comes from character offsets, which a slow (Python) tokenizer does not give: transformers fails
    inside apply_chat_template on every row; preflab says why once, at the start."""
    import types

    from preflab.data.assistant_mask import check_assistant_template

    slow = types.SimpleNamespace(is_fast=False, chat_template=MARKED, name_or_path="/models/slow")
    with pytest.raises(ConfigError, match="only a fast .*tokenizer gives, and the tokenizer of /models/slow"):
        check_assistant_template(slow)


def test_prompt_completion_rows_are_counted_once_in_the_tokenize_report():
    """Before, a prompt-completion row's tokens were counted twice (by the shared tokenizer and again by SFT)."""
    tok = _marked_tokenizer()
    cases = [({"prompt": "the cat", "completion": " sat"}, False), (PROMPT_COMPLETION[0], False),
             (PROMPT_COMPLETION[0], True)]
    for row, assistant_only in cases:
        report = TokenizeReport()
        item, _ = tokenize_sft_row(0, row, tok, _cfg(assistant_only_loss=assistant_only), report)
        assert (report.prompt_tokens, report.response_tokens) == (len(item.prompt_ids), len(item.completion_ids))
        assert report.max_prompt_tokens == len(item.prompt_ids)


def test_a_conversation_whose_assistant_turns_max_length_cuts_away_names_the_messages_field(tmp_path):
    """The tokens before the first assistant token fill max_length: a bad row naming the row's own field ('messages',
    not 'prompt', which a messages row does not have) and saying what was cut."""
    from preflab.loops.sft import prepare_sft

    tok = _marked_tokenizer()
    first = _items(MESSAGES[:1], tok, _cfg())[0]
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(MESSAGES[1]) + "\n" + json.dumps(MESSAGES[0]) + "\n")
    short = len(_items(MESSAGES[1:2], tok, _cfg())[0].prompt_ids) + 1
    assert len(first.prompt_ids) >= short  # row 1's first assistant token lies beyond max_length
    with pytest.raises(DataError, match=r"row 1 .*field 'messages'.*assistant"):
        prepare_sft(_cfg(dataset_name=str(data), max_length=short), tok)


def test_the_untrained_end_of_turn_note_is_printed_by_every_run(tmp_path, capsys):
    """The note is said once per run (not once per train / eval read or streaming pass), and a second run in the same
    process says it too (a process-wide 'already said' set kept it from every later run)."""
    from preflab.loops.sft import prepare_sft

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in MESSAGES))
    for _ in range(2):
        prepare_sft(_cfg(dataset_name=str(data), eval_dataset_name=str(data)), _marked_tokenizer(STOP_OUTSIDE))
        assert capsys.readouterr().out.count("model is not trained to stop") == 1


def test_generation_markers_are_found_in_their_whitespace_trim_forms_as_trl_finds_them():
    """{%- generation %} and {%- generation -%} mark the assistant's tokens as {% generation %} does (Jinja's
    whitespace trimming); 23 of the 31 training templates TRL 1.16 ships use a trimmed form. preflab's check answers as
    TRL's has_generation_markers on each form and on each shipped training template."""
    from pathlib import Path

    import trl
    from trl.chat_template_utils import has_generation_markers as trls

    from preflab.data.assistant_mask import has_generation_markers

    forms = ["{% generation %}", "{%- generation %}", "{%- generation -%}", "{% generation -%}", "{{ generation }}",
             "{% endgeneration %}", "no markers"]
    assert [has_generation_markers(f) for f in forms] == [trls(f) for f in forms] == [True] * 4 + [False] * 3
    shipped = sorted((Path(trl.__file__).parent / "chat_templates").glob("*_training.jinja"))
    assert shipped and all(has_generation_markers(p.read_text(encoding="utf-8")) for p in shipped)
