"""RLOO (preflab.objectives.rloo) against TRL 1.16's own RLOOTrainer code and closed forms.

TRL's `_generate_and_score_completions` (rewards, reward_clip_range, the KL penalty in the reward, the leave-one-out
baseline, normalize_advantages, unscorable completions, logged metrics) and `_compute_loss` (the sequence-level
clipped surrogate, its gradient and the clip ratios) are called unbound on a stand-in trainer whose "model" returns
fixed per-token log-probs; preflab's objective gets the same log-probs and scores. Skipped without trl.
"""
import types
from collections import defaultdict

import pytest
import torch

from preflab.errors import ConfigError
from preflab.objectives import ListBatch, SequenceLogps, get_objective
from preflab.objectives.rloo import leave_one_out_advantages, nan_std, rloo_advantages, shaped_rewards

B, G, T = 3, 4, 5
LENGTHS = torch.tensor([[5, 3, 4, 2], [2, 5, 1, 4], [3, 3, 5, 1]])
MASK = torch.arange(T) < LENGTHS.unsqueeze(-1)


def _draws(seed=3):
    g = torch.Generator().manual_seed(seed)
    lp = (-torch.rand(B, G, T, generator=g, dtype=torch.float64) * 2) * MASK
    old = (lp + 0.3 * torch.randn(B, G, T, generator=g, dtype=torch.float64)) * MASK  # ratios far enough to clip
    ref = (lp + 0.3 * torch.randn(B, G, T, generator=g, dtype=torch.float64)) * MASK
    scores = torch.randn(B, G, generator=g, dtype=torch.float64)
    return lp, old, ref, scores


def _accelerator():
    return types.SimpleNamespace(device=torch.device("cpu"), process_index=0, num_processes=1,
                                 gather=lambda x: x, gather_for_metrics=lambda x: x,
                                 reduce=lambda x, reduction="sum": x)


def trl_advantages(old, ref, scores, beta, reward_clip_range=None, normalize=False):
    """TRL 1.16 RLOOTrainer._generate_and_score_completions on B * G completions of fixed log-probs (old: the
    sampling policy's, ref: the reference's), one reward function returning `scores` (NaN: None, unscorable)."""
    from trl.trainer.rloo_trainer import RLOOTrainer

    n = B * G
    model, ref_model = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    model.train()
    model.is_gradient_checkpointing = False
    flat = lambda x: x.reshape(n, T)  # noqa: E731

    def logps(m, *args, **kwargs):
        return (flat(old) if m is model else flat(ref)), None, None

    def rewards(inputs, prompts, completions, completion_ids_list):
        return scores.reshape(n, 1).clone()

    completion_ids = [[1] * int(k) for k in LENGTHS.reshape(-1)]
    trainer = types.SimpleNamespace(
        accelerator=_accelerator(), model=model, ref_model=ref_model, _generate=lambda prompts: (
            [[5]] * n, completion_ids, ["c"] * n),
        _tokenizer=types.SimpleNamespace(pad_token_id=0), pad_to_multiple_of=None, mask_truncated_completions=False,
        args=types.SimpleNamespace(per_device_train_batch_size=n, gradient_checkpointing_kwargs=None),
        _get_per_token_logps_and_entropies=logps, _calculate_rewards=rewards, num_generations=G,
        reward_weights=torch.ones(1, dtype=torch.float64), reward_clip_range=reward_clip_range, beta=beta,
        normalize_advantages=normalize, reward_func_names=["r"], _metrics={"train": defaultdict(list)},
        _logs={"prompt": [], "completion": [], "rewards": defaultdict(list), "advantages": [],
               "extra": defaultdict(list)},
        _pending_extra_logs={}, _pending_metrics={}, log_multimodal=False)
    out = RLOOTrainer._generate_and_score_completions(trainer, [{"prompt": "p"}] * n)
    return out["advantages"].view(B, G), {k: v[-1] for k, v in trainer._metrics["train"].items()}


def trl_loss(lp, old, adv, epsilon=0.2, epsilon_high=0.28):
    """TRL 1.16 RLOOTrainer._compute_loss (one process, one micro-batch): loss and logged metrics."""
    from trl.trainer.rloo_trainer import RLOOTrainer

    n = B * G
    model = torch.nn.Linear(1, 1)
    model.train()
    trainer = types.SimpleNamespace(
        model=model, accelerator=_accelerator(), aux_loss_enabled=False, epsilon_low=epsilon,
        epsilon_high=epsilon_high, _metrics={"train": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (lp.reshape(n, T), torch.zeros(n, T), None))
    mask = MASK.reshape(n, T).long()
    inputs = {"prompt_ids": torch.ones(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1, dtype=torch.long),
              "completion_ids": torch.ones(n, T, dtype=torch.long), "completion_mask": mask,
              "old_logps": (old.reshape(n, T) * mask).sum(1), "advantages": adv.reshape(n)}
    loss = RLOOTrainer._compute_loss(trainer, model, inputs)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def _batch(lp, old, ref, scores, **extras):
    scored = ~scores.isnan()
    return ListBatch(SequenceLogps(lp, MASK), scores.nan_to_num(0.0), SequenceLogps(ref, MASK),
                     extras={"old_logps": old, "scored": scored, **extras})


@pytest.mark.parametrize("beta,clip,normalize", [(0.0, None, False), (0.05, None, False), (0.05, (-0.5, 0.7), False),
                                                 (0.1, None, True), (0.05, (-1.0, 0.3), True)])
def test_advantages_and_metrics_equal_trl_1_16(beta, clip, normalize):
    pytest.importorskip("trl")
    _, old, ref, scores = _draws()
    scores[1, 2] = float("nan")                                     # unscorable: in no baseline, advantage 0
    expected, trl_metrics = trl_advantages(old, ref, scores, beta, clip, normalize)
    scored = ~scores.isnan()
    kl = ((old - ref) * MASK).sum(-1)
    ours = rloo_advantages(shaped_rewards(scores.nan_to_num(0.0), scored, kl, beta, clip), normalize)
    # (TRL's nanstd rounds its Bessel factor n / (n - 1) to float32, and so does preflab's one nan_std,
    # objectives.grpo's: the advantages are bit-equal with normalize_advantages too; it was 1e-7 relative before)
    tol = 1e-12
    assert torch.equal(ours, expected)
    assert ours[1, 2] == 0 and (ours[scored] != 0).all()
    # the objective computes the same advantages itself (old_logps and the reference in the batch)
    obj = get_objective("rloo", beta=beta, reward_clip_range=clip, normalize_advantages=normalize)
    lp = old.clone()
    out = obj(_batch(lp, old, ref, scores))
    loss, _ = trl_loss(lp, old, expected)
    assert out.loss.item() == pytest.approx(loss.item(), abs=tol)
    for name in ("reward", "frac_reward_zero_std") + (("kl",) if beta else ()):
        assert out.metrics[name].item() == pytest.approx(trl_metrics[name], abs=1e-12), name
    assert out.metrics["reward_std"].item() == pytest.approx(trl_metrics["reward_std"], rel=1e-12)


def test_loss_gradient_and_clip_ratios_equal_trl_1_16():
    pytest.importorskip("trl")
    lp0, old, ref, _ = _draws(5)
    adv = torch.randn(B, G, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads, values = [], []
    for side in ("trl", "preflab"):
        lp = lp0.clone().requires_grad_(True)
        if side == "trl":
            loss, metrics = trl_loss(lp, old, adv, 0.2, 0.28)
        else:
            out = get_objective("rloo", beta=0.05, epsilon=0.2, epsilon_high=0.28)(
                ListBatch(SequenceLogps(lp, MASK), torch.zeros(B, G, dtype=torch.float64), SequenceLogps(ref, MASK),
                          extras={"old_logps": old, "advantages": adv}))
            loss, metrics = out.loss, {k: v.item() for k, v in out.metrics.items()}
        loss.backward()
        grads.append(lp.grad.clone())
        values.append((loss.item(), metrics))
    (trl_value, trl_metrics), (value, metrics) = values
    assert value == pytest.approx(trl_value, abs=1e-12)
    assert torch.allclose(grads[0], grads[1], atol=1e-12, rtol=1e-12)
    names = ("clip_ratio/low_mean", "clip_ratio/low_min", "clip_ratio/high_mean", "clip_ratio/high_max",
             "clip_ratio/region_mean")
    # (TRL averages the flags in float32)
    assert {n: metrics[n] for n in names} == pytest.approx({n: trl_metrics[n] for n in names}, abs=1e-7)
    assert 0 < metrics["clip_ratio/region_mean"] < 1                 # the draws clip some completions, not all


def test_leave_one_out_baseline_closed_form():
    """A_i = r_i - mean_{j != i} r_j = n / (n - 1) (r_i - mean r); an unscored completion (NaN) is in no baseline
    and gets 0; a prompt with one scored completion gets 0 everywhere (no baseline)."""
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [1.0, float("nan"), 3.0, 6.0], [float("nan"), 4.0, float("nan"),
                                                                              float("nan")]], dtype=torch.float64)
    adv = rloo_advantages(r)
    assert adv[0].tolist() == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0], abs=1e-15)
    assert adv[0].tolist() == pytest.approx((4 / 3 * (r[0] - r[0].mean())).tolist(), abs=1e-15)
    assert adv[1].tolist() == pytest.approx([1 - 4.5, 0.0, 3 - 3.5, 6 - 2.0], abs=1e-15)
    assert adv[2].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert leave_one_out_advantages(r[:1]).sum().item() == pytest.approx(0.0, abs=1e-15)


def test_reward_clip_range_kl_penalty_and_normalize_by_hand():
    scores = torch.tensor([[-2.0, 0.5, 3.0], [0.0, 1.0, 5.0]], dtype=torch.float64)
    scored = torch.ones(2, 3, dtype=torch.bool)
    clipped = shaped_rewards(scores, scored, reward_clip_range=(-1.0, 1.0))
    assert clipped.tolist() == [[-1.0, 0.5, 1.0], [0.0, 1.0, 1.0]]
    assert rloo_advantages(clipped)[0].tolist() == pytest.approx([-1.75, 0.5, 1.25], abs=1e-15)
    # the KL penalty comes after the clip: r = clip(s) - beta * sum_t (lp_old - lp_ref)
    kl = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    shaped = shaped_rewards(scores, scored, kl, beta=0.5, reward_clip_range=(-1.0, 1.0))
    assert shaped[0].tolist() == [-2.0, 0.5, 1.5]
    # normalize_advantages: over all the batch's scored completions, std with Bessel's correction, + 1e-4; the factor
    # n / (n - 1) is rounded to float32, as TRL's nanstd computes it (count / (count - 1) of integer counts)
    import statistics

    a = rloo_advantages(shaped).reshape(-1).tolist()
    bessel = torch.tensor(len(a) / (len(a) - 1), dtype=torch.float32).item()
    mu, sd = statistics.fmean(a), (statistics.pvariance(a) * bessel) ** 0.5
    assert bessel != len(a) / (len(a) - 1)  # 6 / 5 is not a float32: the rounding is in the value checked
    expected = [(x - mu) / (sd + 1e-4) for x in a]
    assert rloo_advantages(shaped, normalize=True).reshape(-1).tolist() == pytest.approx(expected, abs=1e-12)
    assert nan_std(torch.tensor([1.0, float("nan"), 3.0])).item() == pytest.approx(2 ** 0.5)


def test_on_policy_gradient_is_reinforce_with_the_leave_one_out_baseline():
    """old = lp (num_iterations 1): rho = 1, grad loss = -(1/N) sum_i A_i grad log pi(y_i); the KL coefficient
    moves the advantages (through the reward), never the loss's own gradient."""
    lp0, _, ref, scores = _draws(9)
    lp = lp0.clone().requires_grad_(True)
    batch = ListBatch(SequenceLogps(lp, MASK), scores, SequenceLogps(ref, MASK))
    out = get_objective("rloo", beta=0.1)(batch)
    out.loss.backward()
    kl = ((lp0 - ref) * MASK).sum(-1)                                # the sampling policy is lp itself
    adv = rloo_advantages(scores - 0.1 * kl)
    assert torch.allclose(lp.grad, (-adv / (B * G)).unsqueeze(-1) * MASK, atol=1e-12)
    given = get_objective("rloo", beta=0.7)(ListBatch(SequenceLogps(lp0, MASK), scores, SequenceLogps(ref, MASK),
                                                      extras={"advantages": adv}))
    assert given.loss.item() == pytest.approx(out.loss.item(), abs=1e-12)


def test_frac_reward_zero_std_counts_tied_groups():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    lp = torch.zeros(B, G, T, dtype=torch.float64)
    out = get_objective("rloo", beta=0.0)(ListBatch(SequenceLogps(lp, MASK), scores))
    assert out.metrics["frac_reward_zero_std"].item() == pytest.approx(2 / 3)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-15) and "kl" not in out.metrics  # no reference at beta 0


@pytest.mark.parametrize("params,match", [({"beta": -0.1}, "must be >= 0"),
                                          ({"reward_clip_range": (1.0, -1.0)}, "min <= max"),
                                          ({"reward_clip_range": (1.0,)}, "min <= max")])
def test_bad_parameters_refused(params, match):
    with pytest.raises(ConfigError, match=match):
        get_objective("rloo", **params)


def test_beta_without_a_reference_is_refused():
    assert get_objective("rloo", beta=0.05).needs_reference and not get_objective("rloo", beta=0.0).needs_reference
    with pytest.raises(ConfigError, match="no reference log-probs"):
        shaped_rewards(torch.zeros(B, G), torch.ones(B, G, dtype=torch.bool), None, beta=0.05)
