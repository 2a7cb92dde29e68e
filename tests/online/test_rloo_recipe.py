"""trainer: rloo through the online run: the step's loss and the round's advantages equal the rloo objective on the
whole step (TRL 1.16 RLOOTrainer's math: tests/objectives/test_rloo.py), with the KL of the round-start policy to
the reference in the reward; a run stopped mid-round resumes to the uninterrupted weights; `preflab train` on
examples/online/rloo.yaml lifts the demo task's true reward."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_online_run import tiny_cfg, tiny_run  # noqa: E402
from resume_mid_run import resume_mid_run  # noqa: E402  tests/, on sys.path beside conftest


def rows_of(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines() if "loss" in x]


def _unscorable_judge(judge):
    def reward(prompts, completions, **kwargs):
        return [None if i % 5 == 3 else r for i, r in enumerate(judge(prompts, completions, **kwargs))]
    return reward


def test_round_advantages_and_step_loss_equal_the_objective_on_the_whole_step(sft_policy, tmp_path):
    """One round per step (steps_per_generation 1) reused twice (num_iterations 2), uneven micro-batches, a judge
    that leaves some completions unscored: the advantages the round stores are RLOO's over the whole round (KL of
    the round-start policy to pi_0 in the reward, clipped rewards, normalised advantages), and the second step's
    logged loss (ratios off 1) and kl equal the objective computing all of it itself on the whole step."""
    from preflab.config import config_from_dict
    from preflab.data.layout import padded
    from preflab.objectives import ListBatch, SequenceLogps, get_objective
    from preflab.objectives.rloo import rloo_advantages, shaped_rewards
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task
    from preflab.scoring.lm import naive_token_logps

    policy, ref_model, tok = sft_policy.model(), sft_policy.model(), sft_policy.tokenizer
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a policy away from its reference, so the KL penalty in the reward is not 0
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    G = 4
    cfg = config_from_dict(dict(task="online", trainer="rloo", online_task="dataset", max_steps=2,
                                model_name_or_path="(in memory)", dataset_name="(in memory)",
                                steps_per_generation=1, num_iterations=2, num_generations=G, prompts_per_generation=5,
                                per_device_train_batch_size=2, gradient_accumulation_steps=3, learning_rate=3e-3,
                                max_completion_length=16, beta=0.2, normalize_advantages=True,
                                reward_clip_range=[0.1, 0.8], use_cpu=True, disable_tqdm=True,
                                max_judge_failure_fraction=1.0, logging_steps=1, output_dir=str(tmp_path), seed=0))
    run = OnlineRun(cfg, policy=policy, ref=ref_model, tokenizer=tok,
                    task=Task(sft_policy.train_prompts[:10], [_unscorable_judge(sft_policy.judge)]))
    assert run.ref is not None
    objective = get_objective("rloo", beta=0.2, **cfg.objective_params)
    seen = []

    def check(step, mbs):
        exs = [e for mb in mbs for e in mb.examples]
        layout = padded([(e.prompt_ids, c) for e in exs for c in e.completions], tok.pad_token_id)
        with torch.no_grad():
            lp = naive_token_logps(policy, layout)
        shape = (len(exs), G, lp.shape[-1])
        mask = layout.response_mask.view(shape)

        def stored(attr):
            out = torch.zeros(shape)
            for n, (e, i) in enumerate((e, i) for e in exs for i in range(G)):
                out.view(-1, shape[-1])[n, :len(getattr(e, attr)[i])] = torch.tensor(getattr(e, attr)[i])
            return out.double()

        old, ref = stored("prev"), stored("ref")
        scored = torch.tensor([e.extras["scored"] for e in exs])
        scores = torch.tensor([e.extras["rewards"] for e in exs], dtype=torch.float64)
        batch = ListBatch(SequenceLogps(lp.view(shape).double(), mask), scores, SequenceLogps(ref, mask),
                          torch.tensor([e.extras["valid"] for e in exs]), {"old_logps": old, "scored": scored})
        out = objective(batch)
        kl = ((old - ref) * mask).sum(-1)
        by_hand = rloo_advantages(shaped_rewards(scores, scored, kl, 0.2, (0.1, 0.8)), normalize=True)
        stored_adv = torch.tensor([e.extras["advantages"] for e in exs], dtype=torch.float64)
        no_kl = rloo_advantages(shaped_rewards(scores, scored, None, 0.0, (0.1, 0.8)), normalize=True)
        seen.append((out.loss.item(), out.metrics["kl"].item(), stored_adv, by_hand, scored, no_kl))

    original = run.micro_batches

    def micro_batches(step):
        mbs = original(step)
        check(step, mbs)
        return mbs

    run.micro_batches = micro_batches
    run.train()
    rows = rows_of(tmp_path)
    assert [len(mb.examples) for mb in original(0)] == [2, 2, 1]
    (_, kl0, adv, by_hand, scored, no_kl), (loss1, kl1, adv1, *_) = seen
    assert torch.allclose(adv, by_hand, atol=1e-5) and torch.equal(adv, adv1)   # the round's, reused
    assert not bool(scored.all()) and bool((adv[~scored] == 0).all())
    assert kl0 == pytest.approx(rows[0]["kl"], rel=1e-4) and abs(kl0) > 1e-4
    assert not torch.allclose(adv, no_kl, atol=1e-3)                     # the KL penalty moved the advantages
    assert abs(loss1) > 1e-4
    assert rows[1]["loss"] == pytest.approx(loss1, rel=1e-3, abs=1e-6)


def test_sequence_kl_sums_the_trained_tokens_only():
    """RLOO's KL penalty per completion: sum over its trained tokens of log pi_old - log pi_ref; a token a loss mask
    leaves out (a tool observation, a truncated completion under mask_truncated_completions) is not in it, as TRL's
    completion_mask zeroes it."""
    from preflab.online.examples import Example
    from preflab.online.run import sequence_kl

    plain = Example(0, [1], [[5, 6], [7]], prev=[[-1.0, -2.0], [-0.5]], ref=[[-1.5, -1.0], [-0.25]])
    masked = Example(1, [1], [[5, 6], [7]], prev=[[-1.0, -2.0], [-0.5]], ref=[[-1.5, -1.0], [-0.25]],
                     loss_mask=[[1, 0], [0]])
    assert sequence_kl([plain, masked]).tolist() == [[0.5 - 1.0, -0.25], [0.5, 0.0]]


@pytest.mark.parametrize("over", [dict(trainer="rloo", beta=0.05, normalize_advantages=True,
                                       reward_clip_range=[-1.0, 1.0], steps_per_generation=2, num_iterations=2,
                                       max_steps=8)])
def test_resume_mid_round_gives_the_same_weights(tmp_path, over, stop_at_step):
    """A run stopped right after a mid-round checkpoint and resumed ends with the uninterrupted run's weights (the
    round's advantages, old-policy and reference log-probs come back with the online state)."""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    full, _ = resume_mid_run(lambda folder, **extra: tiny_run(tiny_cfg(folder, **over, **extra)), tmp_path,
                             stop_at_step, stop=4)
    a = full.policy.state_dict()
    start = tiny_causal_lm(tiny_tokenizer("char"), hidden_size=32, seed=1).state_dict()
    assert any(float((a[k] - start[k]).abs().max()) > 1e-3 for k in a)          # and the weights did move


def test_rloo_on_a_moe_policy_adds_the_router_loss_as_the_grpo_family(tmp_path):
    """TRL's RLOOTrainer adds router_aux_loss_coef x the routers' load-balancing loss of the micro-batch's training
    forward, as its GRPOTrainer (tests/online/test_online_router_loss.py checks that one against TRL's code): on the
    same completions (same policy and seed) rloo's step logs grpo's aux_loss, and the coefficient adds coef x it."""
    pytest.importorskip("trl")
    from test_online_router_loss import _run

    outs = {}
    for trainer, coef in (("grpo", None), ("rloo", None), ("rloo", 0)):
        run, _, _ = _run("qwen2_moe", tmp_path / f"{trainer}{coef}", trainer=trainer,
                         **({} if coef is None else {"router_aux_loss_coef": coef}))
        (mb,) = run.micro_batches(0)
        outs[trainer, coef] = (run.router_coef, run.forward(mb))
    (coef, grpo), (_, rloo), (off_coef, off) = outs[("grpo", None)], outs[("rloo", None)], outs[("rloo", 0)]
    assert coef == 0.02 and off_coef is None and "aux_loss" not in off.metrics
    assert float(rloo.metrics["aux_loss"]) == pytest.approx(float(grpo.metrics["aux_loss"]), abs=1e-7)
    assert float(rloo.metrics["aux_loss"]) > 1.0
    assert float(rloo.loss) - float(off.loss) == pytest.approx(0.02 * float(rloo.metrics["aux_loss"]), abs=1e-6)


@pytest.mark.slow
def test_preflab_train_on_the_example_lifts_the_true_reward(sft_policy, tmp_path):
    """examples/online/rloo.yaml as shipped (measured: 0.20 -> 0.95 greedy true reward on the held-out prompts)."""
    from preflab.config import load_config
    from preflab.online.run import OnlineRun

    path = Path(__file__).parents[2] / "examples" / "online" / "rloo.yaml"
    cfg = load_config(path, [f"output_dir={tmp_path}", "disable_tqdm=true"])
    summary = OnlineRun(cfg, policy=sft_policy.model(), tokenizer=sft_policy.tokenizer).train()
    assert summary["true_reward_after"] >= summary["true_reward_before"] + 0.4, summary["true_reward_after"]
    rows = rows_of(tmp_path)
    assert {"kl", "reward", "reward_std", "frac_reward_zero_std", "clip_ratio/region_mean", "entropy"} <= set(rows[0])
