"""One generation round of the online run, its numbers recomputed from the round's own examples: the slices of
steps_per_generation, the advantages under scale_rewards, TRL's reward / reward_std / terminated-length metrics,
dapo's tokens_per_prompt; and the run's win rate and truncation mask by hand."""
import math

import pytest
import torch

from preflab.config import config_from_dict
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.objectives.grpo import group_advantages
from preflab.online.examples import Example
from preflab.online.run import OnlineRun, mask_truncated, win_rate
from preflab.online.tasks import Task

PROMPTS = [f"say {w}\n" for w in ("abc", "de", "fgh", "ij", "klm", "no", "pq", "rst")]


def some_unscored(prompts, completions, **kwargs):
    """Letters 'e' count, shorter is better; every third completion unscorable (None)."""
    return [None if i % 3 == 1 else c.count("e") - 0.01 * len(c) for i, c in enumerate(completions)]


def dapo_round(tmp_path):
    cfg = config_from_dict(dict(
        task="online", trainer="dapo", online_task="dataset", dataset_name="unused", reward_funcs="x",
        model_name_or_path="builtin:tiny-llama", learning_rate=1e-2, max_steps=4, num_generations=3,
        prompts_per_generation=6, steps_per_generation=4, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, max_completion_length=6, scale_rewards="batch", temperature=1.5,
        max_judge_failure_fraction=1.0, disable_tqdm=True, use_cpu=True, seed=3, output_dir=str(tmp_path)))
    tok = tiny_tokenizer("char")
    run = OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                    task=Task(PROMPTS, [some_unscored]))
    return run, run.micro_batches(0), tok.eos_token_id


def test_a_rounds_slices_advantages_metrics_and_token_count_follow_from_its_examples(tmp_path):
    run, mbs, eos = dapo_round(tmp_path)
    rnd = run.pending
    exs = rnd.examples
    assert len(exs) == 6
    # 6 examples over 4 steps: every example in exactly one slice (sizes 1, 2, 1, 2), none dropped
    assert sorted(i for s in rnd.slices for i in s) == list(range(6)) and [len(s) for s in rnd.slices] == [1, 2, 1, 2]
    rewards = torch.tensor([e.extras["rewards"] for e in exs], dtype=torch.float64)
    valid = torch.tensor([e.extras["scored"] for e in exs])    # the GRPO family: unscored stay in, advantage 0
    assert not bool(valid.all()) and bool(valid.any())
    # scale_rewards: batch -> (r - group mean) / (std of every scored reward of the round)
    expected = group_advantages(rewards, valid, "batch")[0]
    assert torch.tensor([e.extras["advantages"] for e in exs], dtype=torch.float64) == pytest.approx(expected)
    assert not torch.allclose(expected, group_advantages(rewards, valid, "group")[0])
    scored = rewards[valid]
    assert rnd.metrics["reward"] == pytest.approx(float(scored.mean()))
    assert rnd.metrics["reward_std"] == pytest.approx(float(scored.std()))          # TRL: n - 1 divisor
    ended = [len(c) for e in exs for c in e.completions if c and c[-1] == eos]
    assert len(ended) < 3 * len(exs)                                             # some cut at max length
    assert rnd.metrics["completions/mean_terminated_length"] == pytest.approx(sum(ended) / len(ended) if ended
                                                                               else 0.0)
    # dapo's normaliser: the step's completion tokens per prompt (unscored completions too: they are trained)
    step = [exs[i] for i in rnd.slices[0]]
    assert all(mb.tokens_per_prompt == pytest.approx(sum(len(c) for e in step for c in e.completions) / len(step))
               for mb in mbs)


def test_online_win_rate_counts_ties_half_and_truncated_completions_are_masked():
    assert win_rate([1.0, 2.0, 3.0, math.nan], [1.0, 1.0, 4.0, 0.0]) == pytest.approx(0.5)   # (1/2 + 1 + 0) / 3
    ex = Example(0, [1], [[3, 9, 4], [3, 4, 9], [9]])
    mask_truncated([ex], eos=9)
    assert ex.loss_mask == [[0, 0, 0], [1, 1, 1], [1]]          # only a completion that ends with eos is trained
