"""`preflab eval`'s win rate hands a reward function TRL's completion form: with conversational prompts each
completion is [{"role": "assistant", "content": text}] (as TRL and preflab's online runs pass it), with text
prompts the text; a TRL conversational reward function (`c[0]["content"]`) crashed on the bare strings."""
import json

import torch

from preflab.cli import main
from preflab.eval.winrate import compare_generations
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

PROMPTS = [[{"role": "user", "content": "the cat sat on"}], [{"role": "user", "content": "hello world ,"}]]


def _received(calls):
    def reward(prompts, completions, **kwargs):
        calls.append((prompts, completions))
        return [float(len(c[0]["content"])) for c in completions]  # TRL's conversational reward function form
    return reward


def test_win_rate_reward_function_gets_conversational_completions_as_messages():
    tok = tiny_tokenizer("bytelevel")
    policy, reference = tiny_causal_lm(tok, seed=1), tiny_causal_lm(tok, seed=2)
    ids = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False) for p in PROMPTS]
    calls = []
    out = compare_generations(policy, reference, tok, ids, PROMPTS, reward_fn=_received(calls), max_new_tokens=6)
    (prompts_p, comp_p), (_, comp_r) = calls
    assert prompts_p == PROMPTS
    assert all(isinstance(c, list) and c[0]["role"] == "assistant" for c in comp_p + comp_r)
    assert [c[0]["content"] for c in comp_p] == [e["policy"] for e in out["examples"]]
    assert [c[0]["content"] for c in comp_r] == [e["reference"] for e in out["examples"]]
    # the win rate from the rewards the function gave, by hand (a tie counts 1/2)
    r_p = [len(c[0]["content"]) for c in comp_p]
    r_r = [len(c[0]["content"]) for c in comp_r]
    expected = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(r_p, r_r)) / 2
    assert out["win_rate"]["win_rate"] == expected and out["win_rate"]["n"] == 2
    # text prompts keep text completions
    calls_text = []
    text_reward = lambda prompts, completions, **kw: calls_text.append(completions) or [0.0] * len(completions)  # noqa
    compare_generations(policy, reference, tok, [tok("the cat")["input_ids"]], ["the cat"], reward_fn=text_reward,
                        max_new_tokens=4)
    assert all(isinstance(c, str) for c in calls_text[0])


def test_eval_command_win_rate_with_a_conversational_reward_function(tmp_path, monkeypatch):
    tok = tiny_tokenizer("bytelevel")
    for name, seed in (("run", 1), ("ref", 2)):
        tiny_causal_lm(tok, seed=seed).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    rows = [{"prompt": p, "chosen": [{"role": "assistant", "content": "the mat"}],
             "rejected": [{"role": "assistant", "content": "a dog"}]} for p in PROMPTS]
    data = tmp_path / "conv.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "conv_rewards.py").write_text(
        "def content_length(completions, **kwargs):\n    return [float(len(c[0]['content'])) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "eval.json"
    assert main(["eval", str(tmp_path / "run"), "--data", str(data), "--reference", str(tmp_path / "ref"),
                 "--reward-fn", "conv_rewards:content_length", "--max-new-tokens", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    examples = result["generation_examples"]
    r_p = torch.tensor([len(e["policy"]) for e in examples], dtype=torch.float64)
    r_r = torch.tensor([len(e["reference"]) for e in examples], dtype=torch.float64)
    assert result["win_rate"]["win_rate"] == float(((r_p > r_r) + 0.5 * (r_p == r_r)).mean())
