"""Themis: a tool-augmented reward model (Li et al., 2024, "Tool-Augmented Reward Modeling", arXiv:2310.01045).

The reward model is also a causal LM. For a (question, answer) it writes a tool-use trace

    ### USER:\n[Context: c\n]Question: q\nAnswer: a\n### ASSISTANT:\n
    <start_tool> Thought: ...\nAction: Tool\nAction Input: ...\n<start_observation> Observation: ...\n   (x steps)
    <start_work> Work: <rationale></s>

and a value head on the last real token gives the reward r = w^T h_last. Training on TARA rows (a positive and a
negative answer, each with its trace and rationale):

    L = CE_LM + 0.5 * softplus(-(r_pos - r_neg))                       (models-and-loops.md #44)

CE_LM: next-token cross-entropy with the user turn masked; for the positive answer only the part up to the question
is masked, so its answer text is LM-trained too (as the paper's code does); `no_observation` also masks observation
tokens (between <start_observation> and the next <start_tool>/<start_work>). Inference (`score_with_tools`): up to
`max_interactions` rounds of generate-until-<start_observation> -> parse Action / Action Input -> call the tool
through a `preflab.tools.ToolBox` (a failure inserts the fixed error observation, counted) -> append; then
<start_work>, the rationale, and the value head's score.
Deviation from the paper's code: CE_LM is a per-pair token mean (sum of the pair's token losses over its two
sequences / their label count), so that preflab's example-weighted step is exact under accumulation and several
processes; the code takes one token mean over the micro-batch.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from preflab.errors import DataError

START_TOOL, START_OBSERVATION, START_WORK = "<start_tool>", "<start_observation>", "<start_work>"
SPECIAL_TOKENS = [START_TOOL, START_OBSERVATION, START_WORK]
BT_WEIGHT = 0.5


@dataclass
class ToolStep:
    thought: str
    action: str
    action_input: str
    observation: str


@dataclass
class TaraAnswer:
    answer: str
    steps: list[ToolStep]
    rationale: str


@dataclass
class TaraRow:
    question: str
    context: str | None
    positive: TaraAnswer
    negative: TaraAnswer


_STEP = re.compile(r"Thought:\s*(.*?)\s*Action:\s*(.*?)\s*Action Input:\s*(.*?)\s*Observation:\s*(.*?)"
                   r"(?=\s*Thought:|\Z)", re.S)


def parse_actions(actions, where: str) -> list[ToolStep]:
    """TARA `actions`: a string of one or more "Thought: .. Action: .. Action Input: .. Observation: .." steps, a
    dict with those four keys, a list of such dicts, or empty (no tool call)."""
    if actions in (None, "", []):
        return []
    if isinstance(actions, dict):
        actions = [actions]
    if isinstance(actions, list):
        steps = []
        for i, a in enumerate(actions):
            if not isinstance(a, dict):  # a string's `k not in a` is a substring test: it crashed with a TypeError
                raise DataError(f"{where}.actions[{i}]: expected an object {{Thought, Action, Action Input, "
                                f"Observation}}, got {type(a).__name__} {str(a)[:80]!r}. Give each step as an object, "
                                "or the whole trace as one string.")
            missing = [k for k in ("Thought", "Action", "Action Input", "Observation") if k not in a]
            if missing:
                raise DataError(f"{where}.actions[{i}]: missing {missing}; a step needs Thought, Action, "
                                "Action Input and Observation.")
            steps.append(ToolStep(*(str(a[k]).strip() for k in ("Thought", "Action", "Action Input", "Observation"))))
        return steps
    if isinstance(actions, str):
        matches = list(_STEP.finditer(actions))
        if not matches:
            raise DataError(f"{where}.actions: no 'Thought: .. Action: .. Action Input: .. Observation: ..' step "
                            f"in {actions[:80]!r}.")
        # text no step covers (a step missing one of its four parts, text before the first Thought) would be
        # dropped from the trace without a word: refused, naming it
        ends = [0] + [m.end() for m in matches]
        for start, end in zip(ends, [m.start() for m in matches] + [len(actions)]):
            if actions[start:end].strip():
                raise DataError(f"{where}.actions: {actions[start:end].strip()[:80]!r} is not part of a 'Thought: .. "
                                "Action: .. Action Input: .. Observation: ..' step (a step needs all four, in that "
                                "order); complete or remove it.")
        return [ToolStep(*(part.strip() for part in m.groups())) for m in matches]
    raise DataError(f"{where}.actions must be a string, a dict or a list of dicts, got {type(actions).__name__}.")


def parse_tara_row(row: dict, where: str) -> TaraRow:
    """One TARA row {id, question, context?, pos_answer, neg_answer}; each answer {answer, actions,
    score_agent: {explanation, score}}. Bad rows are DataErrors naming the row and field."""
    if not isinstance(row.get("question"), str) or not row["question"].strip():
        raise DataError(f"{where}: field 'question' must be a non-empty string.")
    answers = []
    for key in ("pos_answer", "neg_answer"):
        a = row.get(key)
        if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
            raise DataError(f"{where}: field '{key}' must be an object with a string 'answer'.")
        agent = a.get("score_agent") or {}
        if not isinstance(agent, dict):
            raise DataError(f"{where}: field '{key}.score_agent' must be an object {{explanation, score}}.")
        answers.append(TaraAnswer(a["answer"], parse_actions(a.get("actions"), f"{where}.{key}"),
                                  str(agent.get("explanation", "")).strip()))
    context = row.get("context")
    return TaraRow(row["question"], context if context else None, answers[0], answers[1])


def segments(row: TaraRow, answer: TaraAnswer, positive: bool, with_trace: bool = True) -> list[tuple[str, str]]:
    """The serialised sequence as (text, kind) parts; kind: "masked" (no LM loss), "lm", "observation"."""
    question = (f"Context: {row.context}\n" if row.context else "") + f"Question: {row.question}\n"
    parts = [("### USER:\n" + question, "masked"), (f"Answer: {answer.answer}\n", "lm" if positive else "masked"),
             ("### ASSISTANT:\n", "masked")]
    if with_trace:
        for step in answer.steps:
            parts.append((f"{START_TOOL} Thought: {step.thought}\nAction: {step.action}\nAction Input: "
                          f"{step.action_input}\n{START_OBSERVATION}", "lm"))
            parts.append((f" Observation: {step.observation}\n", "observation"))
        parts.append((f"{START_WORK} Work: {answer.rationale}", "lm"))
    return parts


def encode(parts, tokenizer, no_observation: bool = False, max_length: int = 512) -> dict:
    """input_ids [bos + parts + eos] and labels (-100 where masked); tokenised part by part, so the boundaries are
    exact. A sequence longer than max_length keeps its end (the rationale, eos and the reward position) and is
    flagged `truncated` so that the caller counts it (the spec's gotcha: a silently dropped rationale)."""
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    labels = [-100] * len(ids)
    for text, kind in parts:
        piece = tokenizer(text, add_special_tokens=False).input_ids
        ids += piece
        train = kind == "lm" or (kind == "observation" and not no_observation)
        labels += piece if train else [-100] * len(piece)
    ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id)
    truncated = len(ids) > max_length
    if truncated:
        ids, labels = ids[-max_length:], labels[-max_length:]
    return {"input_ids": ids, "labels": labels, "truncated": truncated}


class ThemisModel(nn.Module):
    """A causal LM plus a value head on the last real token (works with left or right padding)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.config = lm.config
        self.value_head = nn.Linear(lm.config.get_text_config().hidden_size, 1, bias=False)
        nn.init.zeros_(self.value_head.weight)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(LM logits [N, T, V], rewards [N])."""
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # left or right padding: same positions
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                      output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1]
        last = last_token_index(attention_mask)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return out.logits, self.value_head(pooled).squeeze(-1).float()

    def save_pretrained(self, path, **kwargs) -> None:
        from pathlib import Path

        from safetensors.torch import save_file

        self.lm.save_pretrained(path, safe_serialization=True)
        save_file({"weight": self.value_head.weight.detach().contiguous().cpu()}, str(Path(path) / "value_head.safetensors"))
        Path(path, "themis.json").write_text(json.dumps({"special_tokens": SPECIAL_TOKENS, "bt_weight": BT_WEIGHT}))

    @classmethod
    def from_pretrained(cls, path) -> "ThemisModel":
        from pathlib import Path

        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        model = cls(AutoModelForCausalLM.from_pretrained(path, use_safetensors=True))
        model.value_head.weight.data.copy_(load_file(str(Path(path) / "value_head.safetensors"))["weight"])
        return model


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of each row's last real token: the last 1 of the mask (right padding) or T-1 (left padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(-1)


def themis_losses(logits: Tensor, labels: Tensor, rewards: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per pair: (L = lm + 0.5 * softplus(-(r_pos - r_neg)), lm, bt); rows ordered [pos_1..B, neg_1..B]."""
    n = rewards.shape[0] // 2
    token_nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                reduction="none")  # [2B, T-1]
    counts = (labels[:, 1:] != -100).sum(-1).float()
    lm = (token_nll.sum(-1)[:n] + token_nll.sum(-1)[n:]) / (counts[:n] + counts[n:]).clamp(min=1)
    bt = F.softplus(-(rewards[:n] - rewards[n:]))
    return lm + BT_WEIGHT * bt, lm, bt


# ------------------------------------------------------------------------------------------------ inference
_ACTION = re.compile(r"Action:\s*([^\n]*)\nAction Input:\s*([^\n]*)")


def score_with_tools(model, tokenizer, question: str, answer: str, toolbox, context: str | None = None,
                     max_interactions: int = 3, max_new_tokens: int = 160) -> dict:
    """Write the trace with real tool calls, then score it: {reward, trace, tool_calls, tool_errors}."""
    row = TaraRow(question, context, TaraAnswer(answer, [], ""), TaraAnswer("", [], ""))
    text = "".join(t for t, _ in segments(row, row.positive, True, with_trace=False))
    obs_id = tokenizer.convert_tokens_to_ids(START_OBSERVATION)
    work_id = tokenizer.convert_tokens_to_ids(START_WORK)
    calls = errors = 0
    base = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for _ in range(max_interactions):
        ids = base + tokenizer(text, add_special_tokens=False).input_ids
        new = _generate_until(model.lm, ids, [obs_id, work_id, tokenizer.eos_token_id], tokenizer.pad_token_id,
                              max_new_tokens)
        chunk = tokenizer.decode(new, skip_special_tokens=False)
        if START_WORK in chunk or not chunk.rstrip().endswith(START_OBSERVATION):
            text += chunk.split(START_WORK)[0].replace(tokenizer.eos_token, "")
            break
        text += chunk
        match = _ACTION.findall(chunk)
        name, arguments = (match[-1][0].split(".")[0].strip(), match[-1][1].strip()) if match else ("", "")
        result = toolbox.call(name, _tool_arguments(toolbox, name, arguments))
        calls, errors = calls + 1, errors + (not result.ok)
        text += f" Observation: {result.observation}\n"
    text += f"{START_WORK} Work:"
    ids = base + tokenizer(text, add_special_tokens=False).input_ids
    rationale = _generate_until(model.lm, ids, [tokenizer.eos_token_id], tokenizer.pad_token_id, max_new_tokens)
    full = ids + [t for t in rationale if t != tokenizer.eos_token_id] + [tokenizer.eos_token_id]
    with torch.no_grad():
        _, reward = model(torch.tensor([full]), torch.ones(1, len(full), dtype=torch.long))
    return {"reward": float(reward[0]), "trace": tokenizer.decode(full, skip_special_tokens=False),
            "tool_calls": calls, "tool_errors": errors}


def _generate_until(lm, ids: list[int], stop_ids: list[int], pad_id: int, max_new_tokens: int) -> list[int]:
    """Greedy continuation of one sequence, cut after the first stop token (kept)."""
    was_training = lm.training
    lm.eval()
    with torch.no_grad():
        out = lm.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                          pad_token_id=pad_id)[0, len(ids):].tolist()
    lm.train(was_training)
    for i, t in enumerate(out):
        if t in stop_ids:
            return out[:i + 1]
    return out


def _tool_arguments(toolbox, name: str, raw: str):
    """A JSON object as given, or the raw text as the tool's single required argument."""
    try:
        value = json.loads(raw)
        if isinstance(value, dict):
            return value
    except ValueError:
        pass
    tool = toolbox.tools.get(name)
    required = tool.parameters.get("required", []) if tool else []
    return {required[0]: raw} if len(required) == 1 else {"input": raw}
