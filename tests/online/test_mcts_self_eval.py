"""trainer mcts_dpo, mcts_value: self_eval (src/preflab/online/mcts_self_eval.py): a child is valued by the policy's
own P("correct") on the released code's hinted grading prompt, plus the judge's outcome at terminal steps."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from preflab.errors import ConfigError
from preflab.models.tiny import tiny_tokenizer
from preflab.online import mcts_self_eval
from preflab.online.mcts import Node, Search
from preflab.online.mcts_self_eval import correct_token_ids, eval_prompt, self_evaluation, step_value

sys.path.insert(0, str(Path(__file__).parent))

TOK = tiny_tokenizer("char")


def _id(ch):
    return TOK(ch, add_special_tokens=False).input_ids[0]


class HandSetLM(nn.Module):
    """Next-token distribution set by hand per generated position: probs[k] = {char: p} for the k-th new token (the
    rest of the mass spread evenly over the other tokens)."""

    def __init__(self, prompt_len, probs):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.prompt_len, self.probs = prompt_len, probs

    def dist(self, k):
        v = len(TOK)
        set_ = {_id(c): p for c, p in self.probs[k].items()}
        rest = (1 - sum(set_.values())) / (v - len(set_))
        return torch.tensor([set_.get(i, rest) for i in range(v)])

    def forward(self, input_ids):
        k = input_ids.shape[1] - self.prompt_len
        logits = self.dist(k).log().expand(1, input_ids.shape[1], -1)
        return SimpleNamespace(logits=logits)


def test_correct_tokens_for_a_char_tokenizer_are_b_c_and_capital_c():
    assert correct_token_ids(TOK) == sorted({_id("B"), _id("c"), _id("C")})


def test_self_evaluation_is_the_correct_mass_at_the_first_answer_token():
    prompt = TOK("x").input_ids
    # first new token: argmax 'B' (an answer word) -> conf = P(B) + P(c) + P(C) there, in closed form
    lm = HandSetLM(len(prompt), [{"B": 0.5, "c": 0.2, "C": 0.1}] + [{"A": 0.9}] * 3)  # 4 greedy tokens, as the code
    assert self_evaluation(lm, TOK, prompt) == pytest.approx(0.8, abs=1e-6)
    # first new token 'T' (not an answer word), the second 'A' with P(B) = 0.3, P(c) = 0.05: conf from position 2
    lm = HandSetLM(len(prompt), [{"T": 0.9}, {"A": 0.6, "B": 0.3, "c": 0.05}, {"A": 0.9}, {"A": 0.9}])
    rest = (1 - 0.95) / (len(TOK) - 3)                       # 'C' holds the evenly spread rest
    assert self_evaluation(lm, TOK, prompt) == pytest.approx(0.3 + 0.05 + rest, abs=1e-6)
    # no answer word among the 4 greedy tokens: 0 (as the code's conf = 0.0)
    lm = HandSetLM(len(prompt), [{"T": 0.9}] * 4)
    assert self_evaluation(lm, TOK, prompt) == 0.0


def test_step_value_and_the_prompt_follow_the_released_code():
    assert step_value(0.8, 5, 0.5, 1.0) == pytest.approx(0.5 * 0.8 / 2 + 1.0)     # d = 5: divided by 2, + outcome
    assert step_value(0.8, 2, 1.0, None) == pytest.approx(0.8)                     # d <= 4: not divided
    want = ("echo: sun cat\n\nEXAMPLE ANSWER: SUN CAT\n\nPROPOSED SOLUTION: SUN\n\nQUESTION: Evaluate if the proposed "
            "solution is logically heading in the correct direction based on the example answer.\nAnswer Choices:\n"
            "(A) incorrect\n(B) correct\n\nANSWER: The answer is")
    assert eval_prompt("echo: sun cat\n", "SUN CAT", "SUN") == want


def _mcts_run(tmp_path, prompts, **over):
    from test_online_run import e_judge, tiny_cfg

    from preflab.models.tiny import tiny_causal_lm
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    calls = []

    def judge(prompts, completions, **kw):
        calls.extend(completions)
        return e_judge(prompts, completions)

    cfg = tiny_cfg(tmp_path, trainer="mcts_dpo", mcts_step_delimiter=" ", mcts_iterations=2, mcts_value="self_eval",
                   max_steps=2, **over)
    run = OnlineRun(cfg, policy=tiny_causal_lm(TOK, hidden_size=32, seed=1), tokenizer=TOK,
                    task=Task(prompts, [judge]))
    return run, calls


def test_children_get_weighted_self_evaluation_plus_the_outcome_at_the_end(tmp_path, monkeypatch):
    prompts = [{"prompt": f"say {w}\n", "solution": w.upper()} for w in ("ab cd", "ef", "gh ij")]
    run, calls = _mcts_run(tmp_path, prompts, mcts_self_eval_weight=2.0, mcts_num_actions=3, mcts_depth_limit=2)
    monkeypatch.setattr(mcts_self_eval, "self_evaluation", lambda model, tok, ids: 0.25)
    ids = lambda text: TOK(text, add_special_tokens=False).input_ids  # noqa: E731
    samples = iter([[ids("ab cd"), ids("ef"), ids("ab cd")], [ids("cd"), ids("xe")]])   # root, then "ab "
    monkeypatch.setattr(run.generator, "generate", lambda prefixes, n, seed: next(samples))
    search = Search(run, run.rows[0], seed=11)
    root = Node([], 0)
    search._expand(root)
    inner = [c for c in root.children if not c.terminal]
    assert inner
    search._expand(inner[0])                    # its children are at the depth limit: terminal, judged
    children = root.children + inner[0].children
    assert [c for c in children if c.terminal], "the depth limit makes some children terminal"
    for child in children:
        if child.terminal:   # w conf + the judge's score of the finished answer
            text = TOK.decode(child.prefix(), skip_special_tokens=True)
            assert child.v == pytest.approx(2.0 * 0.25 + (text.count("e") - 0.01 * len(text)), abs=1e-9)
        else:                # only w conf; the judge never saw it
            assert child.v == pytest.approx(0.5)
    assert [TOK.decode(c.prefix()) for c in children] == ["ab ", "ef", "ab cd", "ab xe"]   # identical steps merged
    assert calls == ["ef", "ab cd", "ab xe"]   # the judge saw only the finished answers


def test_self_eval_needs_the_gold_solution_column(tmp_path):
    run, _ = _mcts_run(tmp_path, ["say ab\n", "say cd\n"])
    with pytest.raises(ConfigError, match="prompt row 0 has no 'solution' column"):
        run.train()


def test_self_eval_run_trains(tmp_path):
    prompts = [{"prompt": f"say {w}\n", "solution": w.upper()} for w in ("ab cd", "ef", "gh ij", "kl")]
    run, calls = _mcts_run(tmp_path, prompts)
    summary = run.train()
    assert summary["global_step"] == 2 and run.counts["rounds"] == 1


class WordTok:
    """A tokenizer of whole words (vocabulary WORDS) for the answer-word rules a char tokenizer cannot show: "In" is
    one token here (a fallback word), and eos decodes to "<eos>"."""

    WORDS = ["x", "In", "B", "correct", "Correct", "(", "A", "T", "<eos>"]
    eos_token_id = WORDS.index("<eos>")

    def __call__(self, text, add_special_tokens=False):
        return SimpleNamespace(input_ids=[self.WORDS.index(w) for w in (["(", "B"] if text == "(B" else [text])])

    def decode(self, ids):
        return " ".join(self.WORDS[i] for i in ids)


class WordLM(nn.Module):
    """The k-th generated token's distribution set by hand: probs[k] = {word: p}, the rest spread evenly."""

    def __init__(self, prompt_len, probs):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.prompt_len, self.probs = prompt_len, probs

    def forward(self, input_ids):
        v, set_ = len(WordTok.WORDS), {WordTok.WORDS.index(w): p for w, p in self.probs[input_ids.shape[1] -
                                                                                          self.prompt_len].items()}
        rest = (1 - sum(set_.values())) / (v - len(set_))
        dist = torch.tensor([set_.get(i, rest) for i in range(v)])
        return SimpleNamespace(logits=dist.log().expand(1, input_ids.shape[1], -1))


def test_an_answer_word_anywhere_wins_over_an_earlier_fallback_word():
    """The released code's two passes: first the answer words (A, B, correct, wrong, incorrect) over all greedy
    tokens, only then the fallbacks (Cor, In). Token 1 is "In" (a fallback), token 2 "B": conf is read at token 2,
    P(B) + P(correct) + P(Correct) there = 0.6 + 0.1 + 0.05 (the "(" token is not a correct token: B after it is)."""
    tok = WordTok()
    assert correct_token_ids(tok) == sorted(tok.WORDS.index(w) for w in ("B", "correct", "Correct"))
    lm = WordLM(1, [{"In": 0.7, "B": 0.2}, {"B": 0.6, "correct": 0.1, "Correct": 0.05}] + [{"T": 0.9}] * 2)
    assert self_evaluation(lm, tok, [0]) == pytest.approx(0.75, abs=1e-6)
    # no answer word at all: the fallback "In" decides, with the correct mass at token 1 (0.2 + 2 * rest)
    lm = WordLM(1, [{"In": 0.7, "B": 0.2}] + [{"T": 0.9}] * 3)
    assert self_evaluation(lm, tok, [0]) == pytest.approx(0.2 + 2 * 0.1 / 7, abs=1e-6)


def test_greedy_decoding_stops_at_eos():
    """eos first: the grading answer ended there, so no answer word, conf 0, whatever the model says after it."""
    lm = WordLM(1, [{"<eos>": 0.9}, {"B": 0.9}, {"B": 0.9}, {"B": 0.9}])
    assert self_evaluation(lm, WordTok(), [0]) == 0.0


def test_an_empty_solution_is_refused_like_a_missing_one():
    row = SimpleNamespace(row_id=3, columns={"prompt": "say ab\n", "solution": ""})
    with pytest.raises(ConfigError, match="prompt row 3 has no 'solution' column"):
        mcts_self_eval.row_solution(row)
