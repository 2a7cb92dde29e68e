"""Checks shared by the flow-matching transformer tests (test_flow_sd3.py, test_flux.py): the same Diffusion-DPO
identities hold whatever the denoiser, so both pipelines run these on their own tiny runs."""
import math
from pathlib import Path

import pytest
import torch


def diffusion_cfg(raw: dict, **overrides):
    """The tests' config dict with `overrides`, keeping only the objective-specific options the objective reads
    (score_range: smpo_diffusion; self_npo_rollout_steps: self_npo, which has no beta; the rest are refused)."""
    from preflab.config import config_from_dict

    raw = {**raw, **overrides}
    if raw["loss_type"] == "smpo_diffusion":
        raw.setdefault("score_range", [-1.6, 1.6])
    if raw["loss_type"] == "self_npo":
        raw.setdefault("self_npo_rollout_steps", 2)
        if "beta" not in overrides:
            raw.pop("beta", None)
    return config_from_dict(raw)


def perturb(module, scale=0.05, seed=3):
    """Move every trainable parameter by scale * N(0, 1) (seeded), so the policy differs from the reference."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_gradient_is_the_closed_form(run, mb):
    """dL/dtheta = (1/B) sum_i b sigmoid(b (Delta_theta_i - Delta_ref_i)) d(e_w,i - e_l,i)/dtheta, b = beta/2, on a
    perturbed policy (pairs weighted differently), to 1e-5 of the gradient's scale."""
    perturb(run.module, 0.02)
    params = run.params
    autograd = torch.autograd.grad(run.forward(mb).loss, params)
    batch = run.score(mb.index, mb.step)
    e_w, e_l = -batch.policy_chosen.sum, -batch.policy_rejected.sum
    r_w, r_l = -batch.ref_chosen.sum, -batch.ref_rejected.sum
    b = run.cfg.beta / 2
    weight = (b * torch.sigmoid(b * ((e_w - e_l) - (r_w - r_l)))).detach() / len(mb.index)
    assert not torch.allclose(weight, weight.mean().expand_as(weight))  # pairs weighted differently
    closed = torch.autograd.grad((weight * (e_w - e_l)).sum(), params)
    scale = max(g.abs().max().item() for g in closed)
    assert scale > 1e-3
    assert max((a - c).abs().max().item() for a, c in zip(autograd, closed)) <= 1e-5 * scale


def assert_one_image_twice_gives_no_gradient(run):
    """Winner = loser (same latent, caption, t and eps): Delta_theta = Delta_ref = 0 whatever theta, so the loss is
    log 2 and there is no gradient (up to float32 round-off of the two halves of one [2B] forward)."""
    perturb(run.module, 0.02)
    pairs = run.pairs([0, 1, 2, 3], run.train_data)
    pairs.rejected = pairs.chosen.clone()
    t, eps = run._draws([0, 1, 2, 3], 0, tuple(pairs.chosen.shape[1:]))
    noised = run.scorer.noiser(pairs.chosen, pairs.rejected, timesteps=t, noise=eps)
    out = run.objective(run.scorer(run._policy, pairs, run._reference, noised=noised))
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-7)
    grads = torch.autograd.grad(out.loss, run.params, allow_unused=True)
    real = torch.autograd.grad(run.forward(run.micro_batches(0)[0]).loss, run.params)
    scale = max(g.abs().max().item() for g in real)  # a real pair does move the model
    assert scale > 1e-2
    # b/B = 25 amplifies the round-off
    assert max(g.abs().max().item() for g in grads if g is not None) < 1e-5 * scale


def assert_resume_equals_the_uninterrupted_run(make_run, tmp_path):
    """make_run(out, **overrides) -> DiffusionRun. 4 steps straight vs stopped at checkpoint-2 and resumed: the same
    weights bit for bit (and they moved)."""
    extra = {"max_steps": 4, "per_device_train_batch_size": 2}
    whole = make_run(tmp_path / "whole", **extra)
    before = state(whole.module.unet)
    whole.train()
    make_run(tmp_path / "first", save_steps=2, **extra).train()
    resumed = make_run(tmp_path / "resumed", **extra, resume_from_checkpoint=str(tmp_path / "first" / "checkpoint-2"))
    assert resumed.train()["resumed_from_step"] == 2
    a, b = state(whole.module.unet), state(resumed.module.unet)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert any(not torch.equal(a[k], before[k]) for k in a)  # it trained


def assert_gradient_checkpointing_trains_the_same(make_run, tmp_path):
    """One step with and without gradient checkpointing: the same weights to 1e-6."""
    plain = make_run(tmp_path / "plain", max_steps=1)
    plain.train()
    ckpt = make_run(tmp_path / "ckpt", max_steps=1, gradient_checkpointing=True)
    assert ckpt.module.unet.is_gradient_checkpointing
    ckpt.train()
    a, b = state(plain.module.unet), state(ckpt.module.unet)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def assert_example_trains_reloads_and_evaluates(example: str, pipeline_class, tmp_path, monkeypatch):
    """`preflab train examples/diffusion/<example>` for one step: a flow-matching forward-noised run whose loss moved,
    saved as `pipeline_class` with samples.png; `preflab eval`'s reload reproduces the run's final eval loss."""
    import json

    from diffusers import DiffusionPipeline

    from preflab.cli import main
    from preflab.loops.diffusion_eval import evaluate_diffusion_run, shapes_reward

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", f"examples/diffusion/{example}", "max_steps=1", "sample_steps=2", f"output_dir={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prediction_type"] == "flow_matching" and summary["noising"] == "forward"
    assert summary["final_metrics"]["eval_loss"] != pytest.approx(math.log(2), abs=1e-6)  # one step moved it
    assert isinstance(DiffusionPipeline.from_pretrained(str(out)), pipeline_class)
    assert (out / "samples.png").is_file()
    result = evaluate_diffusion_run(str(out), "examples/diffusion/data/test.jsonl", reward_fn=shapes_reward,
                                    num_prompts=2)
    assert result["metrics"]["loss"] == pytest.approx(summary["final_metrics"]["eval_loss"], rel=1e-5)
    assert 0 <= result["metrics"]["win_rate"] <= 1


# objectives written for the DDPM parametrisation, and words of the refusal that names why
DDPM_ONLY_OBJECTIVES = [
    ("self_npo", "Self-NPO"), ("ppd", "cross-attention processors"), ("diffusion_inpo", "DDIM inversion"),
    ("smpo_diffusion", "diffusion_noising: {mode: forward}")]


def assert_ddpm_objective_is_refused(make_cfg, assets, tmp_path, method, words):
    """A flow-matching pipeline refuses an objective tied to the DDPM parametrisation, naming why."""
    from preflab.errors import ConfigError
    from preflab.loops.diffusion import DiffusionRun

    with pytest.raises(ConfigError, match=words.replace("{", r"\{").replace("}", r"\}")):
        DiffusionRun(make_cfg(assets, tmp_path / method, loss_type=method))
