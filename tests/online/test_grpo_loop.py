"""GRPO loop on the demo task: a few steps raise the true reward; old-policy and reference log-probs are wired right."""
import json

import pytest

from preflab.demo.run import heldout_reward
from preflab.errors import ConfigError
from preflab.loops.grpo import GRPOConfig, GRPOLoop, grpo_train

FAST = dict(num_generations=8, prompts_per_step=8, max_steps=10, learning_rate=3e-4, max_completion_length=16)


def test_grpo_raises_true_reward_on_heldout_prompts(sft_policy, tmp_path):
    policy, tok = sft_policy.model(), sft_policy.tokenizer
    summary = grpo_train(policy, tok, sft_policy.train_prompts[:80], sft_policy.judge, output_dir=str(tmp_path),
                         **FAST)
    after, _ = heldout_reward(policy, tok, sft_policy.heldout)
    # measured: 0.20 -> 0.98 greedy true reward on 64 unseen prompts after 10 steps (dapo, beta 0); seeds 0-3 >= 0.97
    assert after >= sft_policy.reward_before + 0.5, (sft_policy.reward_before, after)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and summary["global_step"] == 10
    for key in ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio",
                "clip_ratio/region_mean", "rewards/true_reward_fn/mean", "num_tokens", "grad_norm"):
        assert key in rows[0], key
    # on-policy single pass: rho = 1 exactly, nothing is clipped
    assert all(r["clip_ratio/region_mean"] == 0.0 for r in rows)
    # the sampled reward rises too (first vs last two steps)
    assert rows[-1]["reward"] + rows[-2]["reward"] > rows[0]["reward"] + rows[1]["reward"] + 0.4


def test_grpo_old_policy_and_reference(sft_policy):
    """num_iterations = 2: the second pass over a generation batch uses the stored old log-probs (ratios move, some
    tokens clip); beta > 0: KL to pi_0 is exactly 0 at the first step and positive later."""
    policy, tok = sft_policy.model(), sft_policy.tokenizer
    cfg = GRPOConfig(**{**FAST, "max_steps": 4}, beta=0.04, num_iterations=2, loss_type="grpo")
    loop = GRPOLoop(policy, tok, sft_policy.train_prompts[:16], sft_policy.judge, cfg)
    rows = loop.generation_round()
    assert len(rows) == 2 and loop.ref is not None
    assert rows[0]["kl"] == 0.0 and rows[0]["clip_ratio/region_mean"] == 0.0
    assert rows[1]["kl"] > 0.0 and rows[1]["clip_ratio/region_mean"] > 0.0
    assert rows[0]["reward"] == rows[1]["reward"]          # the same generation batch, reused
    assert loop.old_logps is not None and loop.ref_logps is not None


def test_grpo_config_errors():
    with pytest.raises(ConfigError, match="Did you mean 'num_generations'"):
        GRPOConfig.from_kwargs(num_generation=4)
    with pytest.raises(ConfigError, match="num_generations must be >= 2"):
        GRPOConfig(num_generations=1)


def test_grpo_step_loss_equals_the_objective_on_full_logits(sft_policy):
    """The loop's first-step loss (3 uneven micro-batches, dapo normalised by the step's tokens) equals the grpo
    objective evaluated once on the whole step with log-probs from full logits (scoring.lm.naive_token_logps)."""
    import torch

    from preflab.data.layout import padded
    from preflab.objectives import ListBatch, SequenceLogps, get_objective
    from preflab.scoring.lm import naive_token_logps

    policy, tok = sft_policy.model(), sft_policy.tokenizer
    cfg = GRPOConfig(**{**FAST, "max_steps": 1, "learning_rate": 0.0}, groups_per_micro_batch=3)
    loop = GRPOLoop(policy, tok, sft_policy.train_prompts[:8], sft_policy.judge, cfg)
    row = loop.generation_round()[0]
    ro, G = loop.rollout, cfg.num_generations
    layout = padded([(ro.rows[i // G].prompt_ids, ids) for i, ids in enumerate(ro.completion_ids)], tok.pad_token_id)
    with torch.no_grad():
        lp = naive_token_logps(policy, layout)
    shape = (len(ro.rows), G, lp.shape[-1])
    rewards = torch.tensor(sft_policy.judge(ro.prompts(), ro.completions)).view(len(ro.rows), G)
    out = get_objective("grpo")(ListBatch(SequenceLogps(lp.view(shape), layout.response_mask.view(shape)), rewards))
    assert abs(out.loss.item() - row["loss"]) < 1e-5 and abs(out.loss.item()) > 1e-3
    assert abs(out.metrics["reward"].item() - row["reward"]) < 1e-6
