"""Themis (seed #44): the exact checks of models-and-loops.md #44.4."""
import math

import pytest
import torch

from preflab.errors import DataError
from preflab.reward_models.themis import (START_OBSERVATION, START_WORK, ThemisModel, encode, parse_tara_row,
                                          score_with_tools, segments, themis_losses)
from preflab.reward_models.themis_toy import themis_tokenizer
from preflab.tools import TOOL_ERROR_OBSERVATION, Calculator, ToolBox

ROW = {"id": 1, "question": "What is 2+3*4?", "context": "school maths",
       "pos_answer": {"answer": "14", "actions": "Thought: compute Action: Calculator.calc Action Input: 2+3*4 "
                                                 "Observation: 14 Thought: check Action: Calculator Action Input: "
                                                 "14-14 Observation: 0",
                      "score_agent": {"explanation": "matches", "score": 1}},
       "neg_answer": {"answer": "15", "actions": {"Thought": "compute", "Action": "Calculator",
                                                  "Action Input": "2+3*4", "Observation": "14"},
                      "score_agent": {"explanation": "does not match", "score": 0}}}


def test_loss_composition_matches_the_spec_value():
    # one scored token per sequence, V = 2: NLL = softplus(-x) for a target logit x; pick x so that LM = 1.7
    x = -math.log(math.exp(1.7) - 1)
    logits = torch.zeros(2, 2, 2)
    logits[:, 0, 1] = x
    labels = torch.tensor([[-100, 1], [-100, 1]])
    losses, lm, bt = themis_losses(logits, labels, torch.tensor([0.8, 0.0]))
    assert lm.item() == pytest.approx(1.7, abs=1e-6)
    assert losses.item() == pytest.approx(1.885550, abs=1e-6)


def test_tara_rows_parse_string_and_dict_actions():
    row = parse_tara_row(ROW, "tara.jsonl row 1")
    assert [s.action_input for s in row.positive.steps] == ["2+3*4", "14-14"]
    assert row.negative.steps[0].observation == "14" and row.positive.rationale == "matches"
    for field, bad in [("question", ""), ("pos_answer", {"actions": ""}),
                       ("neg_answer", {"answer": "1", "actions": [{"Thought": "x"}]})]:
        with pytest.raises(DataError, match=field):
            parse_tara_row({**ROW, field: bad}, "tara.jsonl row 7")


def test_a_trace_step_that_is_not_whole_or_not_an_object_is_refused_naming_row_and_field():
    """Trial 19: a string trace whose last step lacks its Action Input and Observation parsed as the steps before
    it (the half step dropped without a word), and a list of strings crashed with a TypeError."""
    pos = ROW["pos_answer"]
    whole = parse_tara_row(ROW, "tara.jsonl row 1").positive.steps
    cut = {**ROW, "pos_answer": {**pos, "actions": pos["actions"] + " Thought: again Action: Calculator"}}
    with pytest.raises(DataError, match=r"tara\.jsonl row 3\.pos_answer\.actions: 'Thought: again Action: Calculator' "
                                        r"is not part of"):
        parse_tara_row(cut, "tara.jsonl row 3")
    lead = {**ROW, "pos_answer": {**pos, "actions": "I will compute. " + pos["actions"]}}
    with pytest.raises(DataError, match=r"'I will compute\.' is not part of"):
        parse_tara_row(lead, "tara.jsonl row 3")
    listed = {**ROW, "neg_answer": {**ROW["neg_answer"], "actions": [pos["actions"]]}}
    with pytest.raises(DataError, match=r"row 4\.neg_answer\.actions\[0\]: expected an object .*got str"):
        parse_tara_row(listed, "tara.jsonl row 4")
    # a whole trace with surrounding whitespace still parses to the same two steps
    spaced = {**ROW, "pos_answer": {**pos, "actions": "\n  " + pos["actions"] + "  \n"}}
    assert parse_tara_row(spaced, "tara.jsonl row 1").positive.steps == whole


def test_label_masks_follow_the_code():
    tok = themis_tokenizer()
    row = parse_tara_row(ROW, "r")
    pos, neg = segments(row, row.positive, True), segments(row, row.negative, False)
    full = encode(pos, tok)
    masked_prefix = len(tok("### USER:\nContext: school maths\nQuestion: What is 2+3*4?\n",
                            add_special_tokens=False).input_ids) + 1  # + bos
    assistant_header = len(tok("### ASSISTANT:\n", add_special_tokens=False).input_ids)
    trained = sum(l != -100 for l in full["labels"])
    assert trained == len(full["input_ids"]) - masked_prefix - assistant_header  # the answer is LM-trained
    neg_enc = encode(neg, tok)
    answer_len = len(tok("Answer: 15\n", add_special_tokens=False).input_ids)
    assert sum(l != -100 for l in neg_enc["labels"]) == \
        len(neg_enc["input_ids"]) - (masked_prefix + answer_len + assistant_header)
    no_obs = encode(pos, tok, no_observation=True)
    obs_tokens = sum(len(tok(f" Observation: {o}\n", add_special_tokens=False).input_ids) for o in ("14", "0"))
    assert sum(l != -100 for l in no_obs["labels"]) == trained - obs_tokens
    assert tok.convert_tokens_to_ids(START_OBSERVATION) in full["input_ids"]


def test_reward_is_read_at_the_last_real_token_with_either_padding():
    from preflab.models.tiny import tiny_causal_lm

    tok = themis_tokenizer()
    model = ThemisModel(tiny_causal_lm(tok, vocab_size=len(tok), seed=0)).eval()
    torch.nn.init.normal_(model.value_head.weight)
    a, b = tok("12+3", add_special_tokens=False).input_ids, tok("7", add_special_tokens=False).input_ids
    pad = tok.pad_token_id
    right = torch.tensor([a, b + [pad] * (len(a) - len(b))])
    left = torch.tensor([a, [pad] * (len(a) - len(b)) + b])
    mask_r = (torch.arange(len(a)) < torch.tensor([[len(a)], [len(b)]])).long()
    mask_l = mask_r.flip(-1)
    with torch.no_grad():
        _, r_right = model(right, mask_r)
        _, r_left = model(left, mask_l)
        _, r_alone = model(torch.tensor([b]), torch.ones(1, len(b), dtype=torch.long))
    assert torch.allclose(r_right, r_left, atol=1e-5) and r_right[1].item() == pytest.approx(r_alone.item(), abs=1e-5)
    # and it is the last token's value-head output, written out: the consistency checks above hold for any fixed
    # real position (the first token too: "7" is one token and row 0 is unpadded)
    with torch.no_grad():
        hidden = model.lm(input_ids=torch.tensor([a]), output_hidden_states=True).hidden_states[-1][0]
        last, first = model.value_head(hidden[-1]).item(), model.value_head(hidden[0]).item()
    assert r_right[0].item() == pytest.approx(last, abs=1e-5) and abs(last - first) > 1e-3


class ScriptedLM(torch.nn.Module):
    """Emits the same tool call every round (and a rationale when asked), whatever the input."""

    def __init__(self, tok, action_input):
        super().__init__()
        self.tok, self.action_input = tok, action_input
        self.w = torch.nn.Parameter(torch.zeros(1))

    def generate(self, input_ids, **kwargs):
        text = self.tok.decode(input_ids[0].tolist(), skip_special_tokens=False)
        if text.rstrip().endswith("Work:"):
            piece = " fine" + self.tok.eos_token
        else:
            piece = f"<start_tool> Thought: use it\nAction: Calculator\nAction Input: {self.action_input}\n" \
                    f"{START_OBSERVATION}"
        new = self.tok(piece, add_special_tokens=False).input_ids
        return torch.cat([input_ids, torch.tensor([new])], dim=1)


class ScriptedThemis:
    def __init__(self, tok, action_input):
        self.lm = ScriptedLM(tok, action_input)

    def __call__(self, ids, mask):
        return None, torch.tensor([float(ids.shape[1])])


@pytest.mark.parametrize("action_input,observation,errors", [("2+3*4", "14", 0), ("2+", TOOL_ERROR_OBSERVATION, 3)])
def test_tool_loop_stops_after_max_interactions_and_is_reproducible(tmp_path, action_input, observation, errors):
    tok = themis_tokenizer()
    box = ToolBox([Calculator()], cache_path=tmp_path / "cache.json")
    first = score_with_tools(ScriptedThemis(tok, action_input), tok, "2+3*4", "14", box, max_interactions=3)
    assert first["tool_calls"] == 3 and first["tool_errors"] == errors
    assert first["trace"].count(f"Observation: {observation}\n") == 3 == first["trace"].count(START_OBSERVATION)
    assert first["trace"].count(START_WORK) == 1 and first["trace"].rstrip().endswith("fine" + tok.eos_token)
    box.save()
    again = score_with_tools(ScriptedThemis(tok, action_input), tok, "2+3*4", "14",
                             ToolBox([Calculator()], cache_path=tmp_path / "cache.json"), max_interactions=3)
    assert again == first


def test_the_arithmetic_toys_wrong_answer_is_one_off_and_the_logged_accuracy_is_chosen_above_rejected():
    """arithmetic_rows: the negative answer is the value +- 1, never the value (both answers call the calculator
    on the same expression); themis_loss_fn logs rewards/accuracies = mean 1[r_pos > r_neg] (ties wrong)."""
    from preflab.reward_models.themis_toy import ThemisBatch, arithmetic_rows, themis_loss_fn
    from preflab.tools.calculator import evaluate_expression

    rows = arithmetic_rows(200, 0, 9, seed=3)
    for r in rows:
        value = evaluate_expression(r.question)
        assert r.positive.answer == str(value) and abs(int(r.negative.answer) - value) == 1
        assert r.positive.steps == r.negative.steps and r.positive.steps[0].action_input == r.question

    class Fixed(torch.nn.Module):  # logits of a uniform LM and the given rewards [pos_1..3, neg_1..3]
        def forward(self, input_ids, attention_mask):
            return torch.zeros(*input_ids.shape, 5), torch.tensor([2.0, 0.0, 1.0, 1.0, 0.0, 1.0])

    ids = torch.zeros(6, 4, dtype=torch.long)
    labels = torch.full((6, 4), -100)
    labels[:, 1:] = 1
    out = themis_loss_fn(Fixed(), ThemisBatch(ids, torch.ones_like(ids), labels, [0, 1, 2], 24))
    assert out.metrics["rewards/accuracies"].item() == pytest.approx(1 / 3)
    assert out.metrics["lm_loss"].item() == pytest.approx(math.log(5), abs=1e-6)
