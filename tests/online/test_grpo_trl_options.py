"""TRL 1.16 GRPOConfig options preflab used to refuse, each against TRL's own code on the same tensors and in a run:
top_entropy_quantile (entropy masking), off_policy_mask_threshold (off-policy sequence masking) and
multi_objective_aggregation: normalize_then_sum (GDPO's per-judge normalisation). Their defaults leave the numbers
as they were, bit for bit."""
import sys
import types
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.objectives import ListBatch, SequenceLogps, get_objective
from preflab.objectives._grpo_losses import high_entropy_mask, off_policy_sequence_mask
from preflab.objectives.grpo import normalize_then_sum_advantages

B, G, T = 2, 3, 5


def _case(seed, off_policy=True):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(T) < torch.tensor([[5, 3, 4], [2, 5, 1]]).unsqueeze(-1)
    base = (-torch.rand(B, G, T, generator=g, dtype=torch.float64) * 2) * mask
    old = (base + 0.6 * torch.randn(B, G, T, generator=g, dtype=torch.float64)) * mask if off_policy else base
    ref = (base + 0.3 * torch.randn(B, G, T, generator=g, dtype=torch.float64)) * mask
    adv = torch.randn(B, G, generator=g, dtype=torch.float64)
    entropy = (torch.rand(B, G, T, generator=g) * 3).float() * mask   # float32, as the scorer's token stats
    return mask, base, old, ref, adv, entropy


def _trl_trainer(lp, entropy, loss_type, beta, quantile, threshold, T_max, entropy_options=None):
    """A stand-in for TRL 1.16's GRPOTrainer with what _compute_loss reads (one process, no accumulation): its
    get_high_entropy_mask and get_off_policy_mask are TRL's own; entropy_options: GRPOConfig's entropy_coef, ...,
    set up as GRPOTrainer.__init__ sets them."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    ent = {"entropy_coef": 0.0, "use_adaptive_entropy": False, "entropy_coef_min": 0.0, "entropy_coef_max": 1.0,
           "entropy_coef_delta": 0.005, "entropy_target": 0.2, **(entropy_options or {})}

    model = torch.nn.Linear(1, 1)
    model.train()
    trainer = types.SimpleNamespace(
        model=model, accelerator=types.SimpleNamespace(
            device=torch.device("cpu"), num_processes=1, sync_gradients=True, gather=lambda x: x,
            gather_for_metrics=lambda x: x, reduce=lambda x, reduction="sum": x,
            pad_across_processes=lambda x, dim=0, pad_index=0: x),
        _get_per_token_logps_and_entropies=lambda *a, **k: (lp, entropy, None),
        aux_loss_enabled=False, top_entropy_quantile=quantile, off_policy_mask_threshold=threshold,
        importance_sampling_level="token", beta=beta, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28,
        use_vllm=False, vllm_importance_sampling_correction=False, current_gradient_accumulation_steps=1,
        max_completion_length=T_max, entropy_coef=ent["entropy_coef"], use_adaptive_entropy=ent["use_adaptive_entropy"],
        _entropy_bonus_enabled=ent["entropy_coef"] != 0.0 or ent["use_adaptive_entropy"],
        _last_world_entropy=float("inf"), _entropy_window_stats=None,
        args=types.SimpleNamespace(use_bias_correction_kl=True, delta=None, steps_per_generation=1,
                                   **{k: v for k, v in ent.items() if k not in ("entropy_coef", "use_adaptive_entropy")}),
        _metrics={"train": defaultdict(list)}, get_off_policy_mask=GRPOTrainer.get_off_policy_mask)
    trainer.get_high_entropy_mask = lambda e, m, t: GRPOTrainer.get_high_entropy_mask(trainer, e, m, t)
    return trainer


def _trl_loss(lp, old, ref, mask, adv, entropy, loss_type="dapo", beta=0.0, quantile=1.0, threshold=None,
              trainer=None, entropy_options=None):
    from trl.trainer.grpo_trainer import GRPOTrainer

    flat = lambda x: x.reshape(B * G, T)  # noqa: E731
    if trainer is None:
        trainer = _trl_trainer(flat(lp), flat(entropy), loss_type, beta, quantile, threshold, T, entropy_options)
    else:  # a later step of the same trainer (the adaptive controller's state carries over)
        trainer._get_per_token_logps_and_entropies = lambda *a, **k: (flat(lp), flat(entropy), None)
    inputs = {"prompt_ids": torch.ones(B * G, 1, dtype=torch.long), "prompt_mask": torch.ones(B * G, 1, dtype=torch.long),
              "completion_ids": torch.ones(B * G, T, dtype=torch.long), "completion_mask": flat(mask).long(),
              "advantages": adv.reshape(-1), "old_per_token_logps": flat(old), "ref_per_token_logps": flat(ref),
              "num_items_in_batch": mask.sum().to(lp.dtype)}
    return GRPOTrainer._compute_loss(trainer, None, inputs)


def _ours(lp, old, ref, mask, adv, entropy, loss_type="dapo", beta=0.0, applied_coef=None, **options):
    extras = {"advantages": adv, "old_logps": old}
    if options.get("top_entropy_quantile", 1.0) < 1 or options.get("entropy_coef") or options.get(
            "use_adaptive_entropy"):
        extras["token_entropy"] = entropy
    if applied_coef is not None:
        extras["entropy_coef"] = applied_coef
    batch = ListBatch(SequenceLogps(lp, mask), torch.zeros(B, G, dtype=torch.float64),
                      SequenceLogps(ref, mask) if beta else None, extras=extras)
    return get_objective("grpo", loss_type=loss_type, beta=beta, epsilon=0.2, epsilon_high=0.28,
                         max_completion_length=T, **options)(batch).loss


def _loss_and_grad(fn, base, *args, **kw):
    lp = base.clone().requires_grad_(True)
    loss = fn(lp, *args, **kw)
    loss.backward()
    return loss.item(), lp.grad.clone()


@pytest.mark.parametrize("quantile", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("loss_type,beta", [("dapo", 0.0), ("grpo", 0.04), ("bnpo", 0.0)])
def test_top_entropy_quantile_equals_trl_1_16(quantile, loss_type, beta):
    mask, base, old, ref, adv, entropy = _case(1)
    want = _loss_and_grad(_trl_loss, base, old, ref, mask, adv, entropy, loss_type, beta, quantile=quantile)
    got = _loss_and_grad(_ours, base, old, ref, mask, adv, entropy, loss_type, beta, top_entropy_quantile=quantile)
    assert got[0] == pytest.approx(want[0], abs=1e-12, rel=1e-12)
    assert torch.allclose(got[1], want[1], atol=1e-12, rtol=1e-12)
    # the masked tokens get no policy gradient (beta 0); the kept ones are the top share of the trained tokens
    kept = high_entropy_mask(entropy, mask, 1 - quantile)
    assert int(kept.sum()) == max(1, round(quantile * int(mask.sum()))) or quantile == 0.5
    if not beta:
        assert bool((got[1][mask & ~kept] == 0).all()) and bool((got[1][kept] != 0).any())  # (clipped: 0)


def test_high_entropy_mask_equals_trls_get_high_entropy_mask():
    from trl.trainer.grpo_trainer import GRPOTrainer

    mask, *_, entropy = _case(2)
    trainer = _trl_trainer(None, None, "dapo", 0.0, 0.2, None, T)
    for q in (0.0, 0.3, 0.8, 1.0):
        want = GRPOTrainer.get_high_entropy_mask(trainer, entropy.reshape(B * G, T), mask.reshape(B * G, T), q)
        assert torch.equal(high_entropy_mask(entropy, mask, q).reshape(B * G, T), want)
    none = torch.zeros_like(mask)
    assert not bool(high_entropy_mask(entropy, none, 0.5).any())   # no trained token: none kept (TRL's)


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "cispo"])
def test_off_policy_mask_threshold_equals_trl_1_16(threshold, loss_type):
    from trl.trainer.grpo_trainer import GRPOTrainer

    mask, base, old, ref, adv, entropy = _case(3)
    want = _loss_and_grad(_trl_loss, base, old, ref, mask, adv, entropy, loss_type, 0.04, threshold=threshold)
    got = _loss_and_grad(_ours, base, old, ref, mask, adv, entropy, loss_type, 0.04,
                         off_policy_mask_threshold=threshold)
    assert got[0] == pytest.approx(want[0], abs=1e-12, rel=1e-12)
    assert torch.allclose(got[1], want[1], atol=1e-12, rtol=1e-12)
    flat = lambda x: x.reshape(B * G, -1)  # noqa: E731
    keep = off_policy_sequence_mask(adv.unsqueeze(-1), base, old, mask.double(), threshold)
    assert torch.equal(flat(keep), GRPOTrainer.get_off_policy_mask(flat(adv.unsqueeze(-1)), flat(base), flat(old),
                                                                   flat(mask.double()), threshold))
    dropped = keep.squeeze(-1) == 0
    assert bool((adv[dropped] < 0).all())                       # only negative-advantage completions are dropped
    if threshold == 0.05:
        assert bool(dropped.any()) and not bool(dropped.all())  # the case exercises both sides


def test_the_defaults_leave_the_loss_and_gradient_bit_for_bit():
    """top_entropy_quantile 1 and off_policy_mask_threshold null run the former code; a threshold no completion's
    KL reaches multiplies by exactly 1 (the same bits)."""
    mask, base, old, ref, adv, entropy = _case(4)
    plain = _loss_and_grad(_ours, base, old, ref, mask, adv, entropy, "dapo", 0.04)
    for options in ({"top_entropy_quantile": 1.0, "off_policy_mask_threshold": None},
                    {"off_policy_mask_threshold": 1e9}):
        again = _loss_and_grad(_ours, base, old, ref, mask, adv, entropy, "dapo", 0.04, **options)
        assert again[0] == plain[0] and torch.equal(again[1], plain[1])
    on_policy = _case(4, off_policy=False)   # without old log-probs the KL is 0: nothing dropped (TRL's)
    m, b, o, r, a, e = on_policy
    assert torch.equal(off_policy_sequence_mask(a.unsqueeze(-1), b, o, m.double(), 0.0), torch.ones(B, G, 1,
                                                                                                    dtype=torch.float64))


def _trl_normalize_then_sum(per_judge, weights):
    """TRL 1.16 GRPOTrainer._generate_and_score_completions, multi_objective_aggregation normalize_then_sum, on
    rewards_per_func [N, J] (its lines, with its nanstd)."""
    from trl.trainer.utils import nanstd

    P, Gn, J = per_judge.shape
    rewards_per_func = per_judge.reshape(-1, J)
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    grouped = rewards_per_func.view(-1, Gn, J)
    mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
    std_k = nanstd(grouped, dim=1, keepdim=True)
    reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, J)
    rewards = (reward_k * weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = torch.nan
    std = nanstd(rewards).expand_as(rewards)
    return torch.nan_to_num((rewards - torch.nanmean(rewards)) / (std + 1e-4), nan=0.0).view(P, Gn)


def test_normalize_then_sum_equals_trl_1_16_and_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    r[0, 1, 0] = float("nan")          # one judge had no answer for one completion
    r[1, 2, :] = float("nan")          # no judge scored it: unscorable, advantage 0
    r[2, :3, 1] = float("nan")         # judge 1 scored one completion of group 2: its std is NaN, it adds 0
    w = torch.tensor([1.0, 0.5], dtype=torch.float64)
    scored = ~r.isnan().all(-1)
    ours = normalize_then_sum_advantages(r, w, scored)
    assert torch.equal(ours, _trl_normalize_then_sum(r, w))
    assert ours[1, 2] == 0
    # by hand: two judges, one group of two; each judge's pair normalises to -+1/sqrt(2)/(std+eps) ...
    two = torch.tensor([[[0.0, 10.0], [1.0, 30.0]]], dtype=torch.float64)
    n = 1 / (2 ** 0.5 * (1 / 2 ** 0.5 + 1e-4))                   # |r - mean| / (std + eps) for std 1/sqrt(2) ...
    n2 = 10 / ((200 ** 0.5) + 1e-4)                              # ... and for std sqrt(200)
    s = torch.tensor([-(n + n2), n + n2], dtype=torch.float64)   # weights 1, 1
    want = (s - s.mean()) / (s.std() + 1e-4)
    assert torch.allclose(normalize_then_sum_advantages(two, torch.ones(2, dtype=torch.float64),
                                                        torch.ones(1, 2, dtype=torch.bool))[0], want, atol=1e-12)
    # unlike sum_then_normalize, the judge with the larger scale does not decide alone: judge 0 ranks 0 > 2 > 1,
    # judge 1 (100 x the scale) 1 > 2 > 0; summed, judge 1 decides; normalised first, completion 0 comes out ahead
    from preflab.objectives.grpo import group_advantages
    skewed = torch.tensor([[[1.0, 0.0], [0.0, 100.0], [0.5, 30.0]]], dtype=torch.float64)
    every = torch.ones(1, 3, dtype=torch.bool)
    summed = group_advantages(skewed.sum(-1), every)[0][0]
    decoupled = normalize_then_sum_advantages(skewed, torch.ones(2, dtype=torch.float64), every)[0]
    assert float(summed[1]) > float(summed[0]) and float(decoupled[0]) > float(decoupled[1])


# ----- end to end: `preflab train` on a tiny GRPO config takes each option, and it changes the update -----

REWARDS = ("def e_count(prompts, completions, **kw):\n"
           "    return [c.count('e') - 0.01 * len(c) for c in completions]\n"
           "def length(prompts, completions, **kw):\n"
           "    return [100.0 * len(c) for c in completions]\n")


def _train(tmp_path, name, **options):
    """`preflab train` on a tiny dapo config (2 steps, each round trained twice: old log-probs differ on step 2);
    the final weights."""
    import json

    import yaml
    from safetensors.torch import load_file

    from preflab.cli import main

    data = tmp_path / "train.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"prompt": f"say {w}\n"}) + "\n" for w in ("abc", "de", "fgh", "ij")))
        (tmp_path / "rewards.py").write_text(REWARDS)
    config = dict(task="online", trainer="dapo", online_task="dataset", dataset_name=str(data),
                  reward_funcs=[f"{tmp_path / 'rewards.py'}:e_count"], model_name_or_path="builtin:tiny-llama",
                  learning_rate=3e-3, max_steps=2, num_iterations=2, num_generations=4, prompts_per_generation=4,
                  per_device_train_batch_size=4, max_completion_length=6, temperature=1.5, logging_steps=1,
                  disable_tqdm=True, use_cpu=True, seed=5, output_dir=str(tmp_path / name))
    config.update(options)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) in (0, None)
    return load_file(str(tmp_path / name / "model.safetensors"))


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_preflab_train_takes_each_option_its_default_is_bit_equal_and_another_value_changes_the_update(tmp_path):
    torch.set_num_threads(1)
    plain = _train(tmp_path, "plain")
    defaults = _train(tmp_path, "defaults", top_entropy_quantile=1.0, off_policy_mask_threshold=None,
                      multi_objective_aggregation="sum_then_normalize", entropy_coef=0.0, use_adaptive_entropy=False,
                      entropy_coef_min=0.0, entropy_coef_max=1.0, entropy_coef_delta=0.005, entropy_target=0.2)
    assert _same(plain, defaults)
    assert not _same(plain, _train(tmp_path, "entropy", top_entropy_quantile=0.2))
    assert not _same(plain, _train(tmp_path, "off_policy", off_policy_mask_threshold=0.0))
    assert not _same(plain, _train(tmp_path, "bonus", entropy_coef=0.5))
    two = [f"{tmp_path / 'rewards.py'}:e_count", f"{tmp_path / 'rewards.py'}:length"]
    assert not _same(_train(tmp_path, "summed", reward_funcs=two),
                     _train(tmp_path, "decoupled", reward_funcs=two, multi_objective_aggregation="normalize_then_sum"))


def _e_count(prompts, completions, **kwargs):
    return [None if i % 5 == 2 else c.count("e") - 0.01 * len(c) for i, c in enumerate(completions)]


def _vowels(prompts, completions, **kwargs):
    return [10.0 * sum(c.count(v) for v in "aiou") for c in completions]


def test_a_normalize_then_sum_rounds_advantages_are_those_of_its_judges_scores(tmp_path):
    """The round's advantages are normalize_then_sum_advantages of each judge's own scores of the round's texts
    (a None from one judge is NaN for that judge only), not group_advantages of their weighted sum."""
    import json

    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.objectives.grpo import group_advantages
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    torch.set_num_threads(1)
    cfg = config_from_dict(dict(
        task="online", trainer="grpo", online_task="dataset", dataset_name="unused", reward_funcs="x",
        reward_weights=[1.0, 0.25], multi_objective_aggregation="normalize_then_sum",
        model_name_or_path="builtin:tiny-llama", max_steps=1, num_generations=4, prompts_per_generation=4,
        per_device_train_batch_size=4, max_completion_length=6, temperature=1.5, max_judge_failure_fraction=1.0,
        disable_tqdm=True, use_cpu=True, seed=3, output_dir=str(tmp_path)))
    tok = tiny_tokenizer("char")
    prompts = [f"say {w}\n" for w in ("abc", "de", "fgh", "ij")]
    run = OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok,
                    task=Task(prompts, [_e_count, _vowels]))
    run.micro_batches(0)
    exs = run.pending.examples
    rows = [json.loads(line) for line in (tmp_path / "rounds" / "1.jsonl").read_text().splitlines()]
    texts = [c for row in rows for c in row["completions"]]    # the judges see the round's texts in this order
    per_judge = torch.tensor([[float("nan") if v is None else v for v in f(None, texts)] for f in (_e_count, _vowels)],
                             dtype=torch.float64).T.reshape(4, 4, 2)
    assert bool(per_judge.isnan().any())
    scored = torch.tensor([e.extras["scored"] for e in exs])
    want = normalize_then_sum_advantages(per_judge, torch.tensor([1.0, 0.25], dtype=torch.float64), scored)
    got = torch.tensor([e.extras["advantages"] for e in exs], dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    summed = torch.tensor([e.extras["rewards"] for e in exs], dtype=torch.float64)
    assert not torch.allclose(got, group_advantages(summed, scored)[0], atol=1e-3)


@pytest.mark.parametrize("options, words", [
    (dict(multi_objective_aggregation="normalize_then_sum", scale_rewards="batch"), "scale_rewards='batch' is not read"),
    (dict(multi_objective_aggregation="normalize_then_sum", missing_eos_penalty=1.0), "missing_eos_penalty is"),
    (dict(trainer="online_dpo", multi_objective_aggregation="normalize_then_sum"), "read by the GRPO family"),
    (dict(trainer="tpo", multi_objective_aggregation="normalize_then_sum"), "read by the GRPO family"),
    (dict(top_entropy_quantile=1.5), "must be in [0, 1]"),
    (dict(off_policy_mask_threshold=-0.1), "must be >= 0"),
    (dict(trainer="online_dpo", top_entropy_quantile=0.2), "top_entropy_quantile is an option of the GRPO family "
     "(trainers grpo, dapo, dr_grpo, bnpo, gspo, cispo, sapo, luspo, vespo; TRL's GRPOConfig), which trainer "
     "'online_dpo' does not read; remove it"),
])
def test_what_the_options_cannot_do_is_refused(options, words):
    base = dict(task="online", trainer="dapo", online_task="dataset", dataset_name="unused", reward_funcs="x",
                model_name_or_path="builtin:tiny-llama", max_steps=2)
    with pytest.raises(ConfigError) as err:
        config_from_dict({**base, **options})
    assert words in str(err.value)


# ----- the entropy bonus: entropy_coef, and Skywork-OR1's adaptive coefficient -----

def _with_entropy_grad(fn, base, entropy, *args, **kw):
    """(loss, grad wrt the log-probs, grad wrt the token entropies) of fn(lp, ..., entropy, ...)."""
    lp = base.clone().requires_grad_(True)
    ent = entropy.double().clone().requires_grad_(True)
    mask, old, ref, adv = args
    loss = fn(lp, old, ref, mask, adv, ent, **kw)
    loss.backward()
    return loss.item(), lp.grad.clone(), ent.grad.clone()


@pytest.mark.parametrize("quantile", [1.0, 0.3])
@pytest.mark.parametrize("loss_type,coef", [("dapo", 0.1), ("grpo", 0.05), ("dr_grpo", -0.2)])
def test_entropy_coef_equals_trl_1_16_in_loss_and_both_gradients(loss_type, coef, quantile):
    """L = L_policy - coef x (token-mean entropy over the trained tokens, the high-entropy ones with masking), the
    entropy's gradient included (TRL's fused head returns it differentiable)."""
    mask, base, old, ref, adv, entropy = _case(6)
    want = _with_entropy_grad(_trl_loss, base, entropy, mask, old, ref, adv, loss_type=loss_type, beta=0.04,
                              quantile=quantile, entropy_options={"entropy_coef": coef})
    got = _with_entropy_grad(_ours, base, entropy, mask, old, ref, adv, loss_type=loss_type, beta=0.04,
                             top_entropy_quantile=quantile, entropy_coef=coef)
    assert got[0] == pytest.approx(want[0], abs=1e-12, rel=1e-12)
    assert torch.allclose(got[1], want[1], atol=1e-12, rtol=1e-12)
    assert torch.allclose(got[2], want[2], atol=1e-12, rtol=1e-12)
    used = mask if quantile == 1 else high_entropy_mask(entropy, mask, 1 - quantile)
    # by hand: d L / d H_t = -coef / (number of bonus tokens) on each of them, 0 elsewhere
    assert torch.allclose(got[2], torch.where(used, -coef / used.sum(), 0.0).double(), atol=1e-15)


def test_adaptive_entropy_coefficient_follows_trl_1_16_step_by_step():
    """Four steps of one micro-batch each: TRL's trainer keeps (entropy_coef, _last_world_entropy) across its
    _compute_loss calls; preflab's EntropyCoefficient gives the objective the coefficient it applies and moves it
    at the step's end. The applied coefficient is 0 until a measured entropy is at or below the target, the
    coefficient rises by delta while it is, falls (to its floor) once it is not."""
    from preflab.online.entropy_control import EntropyCoefficient

    options = {"use_adaptive_entropy": True, "entropy_coef": 0.01, "entropy_coef_min": 0.005,
               "entropy_coef_max": 0.02, "entropy_coef_delta": 0.01, "entropy_target": 1.2}
    objective = get_objective("grpo", **options)
    control = EntropyCoefficient(objective)
    mask, base, old, ref, adv, entropy = _case(7)
    trainer, coefs, applied = None, [], []
    for step, scale in enumerate((0.5, 0.5, 2.0, 0.5)):   # mean entropies ~0.75, 0.75, 3, 0.75 against target 1.2
        ent = entropy * scale
        lp = base.clone().requires_grad_(True)
        if trainer is None:
            trainer = _trl_trainer(lp.reshape(B * G, T), ent.reshape(B * G, T).double(), "dapo", 0.0, 1.0, None, T,
                                   options)
        want = _trl_loss(lp, old, ref, mask, adv, ent.double(), trainer=trainer)
        applied.append(control.applied())
        got = _ours(base.clone().requires_grad_(True), old, ref, mask, adv, ent.double(), applied_coef=applied[-1],
                    **options)
        assert got.item() == pytest.approx(want.item(), abs=1e-12, rel=1e-12)
        out = objective(ListBatch(SequenceLogps(base, mask), torch.zeros(B, G, dtype=torch.float64), None,
                                  extras={"advantages": adv, "old_logps": old, "token_entropy": ent.double(),
                                          "entropy_coef": applied[-1]}))
        control.add(out.metrics["entropy_bonus/entropy"], out.metric_counts["entropy_bonus/entropy"])
        control.end_step(lambda t: t)
        assert control.coef == pytest.approx(trainer.entropy_coef, abs=1e-15)
        assert control.last_entropy == pytest.approx(trainer._last_world_entropy, rel=1e-6)
        coefs.append(control.coef)
    assert applied == pytest.approx([0.0, 0.02, 0.02, 0.0])   # none before a measurement, none after one > target
    assert coefs == pytest.approx([0.02, 0.02, 0.01, 0.02])   # + delta, capped at max, - delta, + delta


def test_adaptive_entropy_run_logs_its_coefficient_and_resumes_it(tmp_path, stop_at_step):
    """A dapo run with use_adaptive_entropy and a target above any token entropy of the tiny model: the bonus is
    applied from step 2 and the coefficient rises by delta every step (logged entropy_coef: the coefficient in
    force at the step); a run stopped after its step-2 checkpoint and resumed ends with the uninterrupted run's
    weights (the controller's state is saved with the online state)."""
    import json

    sys.path.insert(0, str(Path(__file__).parent))
    from test_online_run import tiny_cfg, tiny_run

    torch.set_num_threads(1)
    over = dict(trainer="dapo", max_steps=4, steps_per_generation=2, use_adaptive_entropy=True, entropy_coef=0.0,
                entropy_coef_delta=0.05, entropy_coef_max=0.12, entropy_target=50.0)
    full = tiny_run(tiny_cfg(tmp_path / "full", **over))
    full.train()
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "entropy_coef" in r]
    assert [r["entropy_coef"] for r in rows] == pytest.approx([0.0, 0.05, 0.1, 0.12])
    assert all(0 < r["entropy_bonus/entropy"] < 50 for r in rows)
    assert full.entropy_control.coef == pytest.approx(0.12)     # capped at entropy_coef_max
    cut = tiny_run(tiny_cfg(tmp_path / "cut", save_steps=2, **over))
    with stop_at_step(cut, 3):
        cut.train()
    resumed = tiny_run(tiny_cfg(tmp_path / "cut", save_steps=2, resume_from_checkpoint=True, **over))
    resumed.train()
    a, b = full.policy.state_dict(), resumed.policy.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert resumed.entropy_control.coef == pytest.approx(0.12)


# ----- cast_lm_head_to_fp32 -----

def _bf16_llama(tie: bool):
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    model = tiny_causal_lm(tiny_tokenizer("char"), hidden_size=32, seed=1)
    if tie:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(torch.bfloat16)


@pytest.mark.parametrize("tie", [False, True])
def test_cast_lm_head_to_fp32_gives_the_float32_linear_of_the_hidden_states(tie):
    """TRL's cast: logits = linear(h.float(), W.float()) with autocast off (bit for bit), not the bfloat16 head's;
    a tied model's embeddings still hand the decoder bfloat16; the reference copy keeps a head of its own;
    generation and preflab's scorer head go through it."""
    import copy

    from preflab.models.fp32_head import cast_lm_head_to_fp32
    from preflab.scoring.head import backbone_and_head

    model = _bf16_llama(tie)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    bf16_logits = model(input_ids=ids).logits
    weight = model.lm_head.weight.detach().clone()
    cast_lm_head_to_fp32(model)
    assert model.lm_head.weight.dtype == torch.float32
    hidden = model.model(input_ids=ids).last_hidden_state
    assert hidden.dtype == torch.bfloat16                       # the decoder still runs in bfloat16 (tied too)
    want = torch.nn.functional.linear(hidden.float(), weight.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):           # the run's autocast does not reach the head
        logits = model(input_ids=ids).logits
    assert logits.dtype == torch.float32 and torch.equal(logits, want)
    assert not torch.equal(logits, bf16_logits.float())
    assert torch.equal(backbone_and_head(model)[1](hidden), want)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    assert torch.equal(ref(input_ids=ids).logits, want)        # the copy's forward reads its own weight
    assert model.generate(ids, max_new_tokens=2, do_sample=False).shape == (1, 7)


def test_cast_lm_head_to_fp32_refuses_a_lora_adapter_on_the_head():
    from peft import LoraConfig, get_peft_model

    from preflab.models.fp32_head import cast_lm_head_to_fp32

    model = get_peft_model(_bf16_llama(False).float(), LoraConfig(r=2, target_modules=["lm_head", "q_proj"]))
    with pytest.raises(ConfigError, match="LoRA adapter on lm_head"):
        cast_lm_head_to_fp32(model)


def test_preflab_train_with_cast_lm_head_to_fp32_trains_a_float32_head_on_a_bfloat16_policy(tmp_path):
    torch.set_num_threads(1)
    bf16 = _train(tmp_path, "bf16", load_dtype="bfloat16", beta=0.04)
    cast = _train(tmp_path, "cast", load_dtype="bfloat16", beta=0.04, cast_lm_head_to_fp32=True)
    assert bf16["lm_head.weight"].dtype == torch.bfloat16 and cast["lm_head.weight"].dtype == torch.float32
    assert cast["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert not torch.equal(bf16["model.norm.weight"], cast["model.norm.weight"])   # another update of the body too


# ----- num_generations_eval -----

def _e_score(prompts, completions, **kwargs):
    return [c.count("e") - 0.01 * len(c) for c in completions]


def test_num_generations_eval_samples_that_many_answers_per_held_out_prompt_as_training_samples():
    """eval_reward with num_generations_eval k: the mean reward of k answers per held-out prompt sampled with the
    training sampling options (TRL's GRPOTrainer evaluation), from the seed, leaving the run's random state as it
    was; per_prompt is each prompt's mean (the win rate's unit). Unset: one greedy answer, as before."""
    from preflab.generate import generate_ids
    from preflab.loops.rollout import decode, pad_id_of, prepare_prompts
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.tasks import dataset_evaluate

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    prompts = [{"prompt": p} for p in ("the cat", "a tree", "eels")]
    base = dict(task="online", trainer="grpo", online_task="dataset", dataset_name="unused", reward_funcs="x",
                model_name_or_path="builtin:tiny-llama", max_steps=2, max_completion_length=6, eval_fraction=0.25,
                temperature=1.3, top_k=5, seed=11, use_cpu=True)
    cfg = config_from_dict({**base, "num_generations_eval": 3})
    state = torch.get_rng_state()
    result = dataset_evaluate(cfg, prompts, [_e_score])(model, tok)
    assert torch.equal(torch.get_rng_state(), state)                  # the run's random state is untouched
    rows = prepare_prompts(prompts, tok)
    ids = generate_ids(model, [r.prompt_ids for r in rows for _ in range(3)], eos_id=tok.eos_token_id,
                       pad_id=pad_id_of(tok), max_new_tokens=6, do_sample=True, temperature=1.3, top_p=1.0, seed=11,
                       top_k=5, min_p=None, repetition_penalty=1.0, batch_size=cfg.per_device_eval_batch_size)
    want = _e_score(None, [decode(tok, c, False) for c in ids])
    assert result["reward"] == pytest.approx(sum(want) / 9, rel=1e-12)
    assert result["per_prompt"] == pytest.approx([sum(want[i:i + 3]) / 3 for i in (0, 3, 6)], rel=1e-12)
    assert len({tuple(c) for c in ids}) > 3                           # sampled: not one answer repeated
    assert dataset_evaluate(cfg, prompts, [_e_score])(model, tok) == result   # the same draws at every evaluation
    greedy = dataset_evaluate(config_from_dict(base), prompts, [_e_score])(model, tok)
    assert len(greedy["per_prompt"]) == 3 and greedy["reward"] != result["reward"]


@pytest.mark.parametrize("options, words", [
    (dict(eval_fraction=0.0), "with an eval set"),
    (dict(trainer="online_dpo"), "read by the GRPO family and rloo .GRPOConfig.s and RLOOConfig.s option. "
                                 "on online_task: dataset"),
    (dict(num_generations_eval=0), "num_generations_eval"),
])
def test_num_generations_eval_is_refused_where_nothing_reads_it(options, words):
    base = dict(task="online", trainer="grpo", online_task="dataset", dataset_name="unused", reward_funcs="x",
                model_name_or_path="builtin:tiny-llama", max_steps=2, eval_fraction=0.25, num_generations_eval=4)
    with pytest.raises(ConfigError, match=words):
        config_from_dict({**base, **options})


def test_the_greedy_eval_note_is_not_said_with_num_generations_eval():
    from preflab.online_options import greedy_eval_notes

    base = dict(task="online", trainer="grpo", online_task="dataset", dataset_name="unused", reward_funcs="x",
                model_name_or_path="builtin:tiny-llama", max_steps=2, eval_fraction=0.25)
    assert "Set num_generations_eval" in greedy_eval_notes(config_from_dict(base))[0]
    assert greedy_eval_notes(config_from_dict({**base, "num_generations_eval": 2})) == []


def test_a_run_with_num_generations_eval_evaluates_sampled_answers(tmp_path, capsys):
    import json

    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun

    torch.set_num_threads(1)
    for name, words in (("train", ("ab", "cd")), ("eval", ("ij", "kl"))):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": f"say {w}\n"}) + "\n" for w in words))
    (tmp_path / "rewards.py").write_text(REWARDS)
    cfg = config_from_dict(dict(task="online", trainer="grpo", online_task="dataset",
                                dataset_name=str(tmp_path / "train.jsonl"), eval_dataset_name=str(tmp_path / "eval.jsonl"),
                                reward_funcs=f"{tmp_path / 'rewards.py'}:e_count", model_name_or_path="builtin:tiny-llama",
                                learning_rate=1e-12, max_steps=1, num_generations=2, prompts_per_generation=2,
                                per_device_train_batch_size=2, max_completion_length=4, num_generations_eval=3,
                                temperature=1.5, logging_steps=1, disable_tqdm=True, use_cpu=True,
                                output_dir=str(tmp_path / "out")))
    tok = tiny_tokenizer("char")
    summary = OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=1), tokenizer=tok).train()
    out = capsys.readouterr().out
    assert "2 held-out prompts" in out and "answered 3 times each, sampled as in training" in out
    assert len(summary["examples_after"]) == 4              # the first 4 of the 2 x 3 sampled answers
    assert summary["eval_reward_after"] == pytest.approx(summary["final_metrics"]["eval_reward"])


@pytest.mark.parametrize("chunk", [2, None])
def test_token_entropy_equals_the_full_logits_entropy_and_its_gradient(chunk):
    """scoring.lm.token_entropy (the entropy bonus's H_t, a second head pass over the scorer's hidden states) equals
    -sum_v p_v log p_v of model(...).logits at every response position, zeros elsewhere, with the same gradient in
    every parameter, in one chunk or several (checkpointed)."""
    from preflab.data.layout import padded
    from preflab.models.tiny import tiny_causal_lm
    from preflab.scoring.lm import LogProbScorer, backbone_and_head, token_entropy

    torch.manual_seed(0)
    model = tiny_causal_lm(vocab_size=64)
    seqs = [([1, 5, 9, 14], [20, 21, 2]), ([1, 7], [30, 31, 32, 33, 2]), ([1, 5, 9, 14], [40, 2])]
    layout = padded(seqs, pad_id=0)
    weights = torch.rand(layout.response_mask.shape)
    logprobs = torch.log_softmax(model(input_ids=layout.input_ids, attention_mask=layout.attention_mask).logits, -1)
    full = -(logprobs.exp() * logprobs).sum(-1).reshape(-1)[layout.pred_index.reshape(-1)].reshape(
        layout.response_mask.shape) * layout.response_mask
    (full * weights).sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    scores = LogProbScorer(model, chunk_tokens=chunk)(layout)
    ours = token_entropy(scores, layout, backbone_and_head(model)[1], chunk)
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-5)
    assert bool((ours[~layout.response_mask] == 0).all())
    (ours * weights).sum().backward()
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)


# The entropy bonus under 2 processes: tests/online/test_trainers_two_processes.py, in its launch.
