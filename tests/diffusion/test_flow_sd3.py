"""Diffusion-DPO on a flow-matching transformer (Stable Diffusion 3 layout) on the tiny SD3 pipeline: the flow schedule
and timestep draw equal diffusers', text encoding equals the pipeline's encode_prompt, the loss through the run equals
a direct diffusers computation, the gradient equals its closed form, resume is exact, LoRA, sampling, refusals."""
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from preflab.errors import ConfigError  # noqa: E402
from preflab.loops.diffusion import DiffusionRun, draw_seed  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from flow_checks import (  # noqa: E402
    DDPM_ONLY_OBJECTIVES, assert_ddpm_objective_is_refused, diffusion_cfg,
    assert_example_trains_reloads_and_evaluates, assert_gradient_checkpointing_trains_the_same,
    assert_gradient_is_the_closed_form, assert_one_image_twice_gives_no_gradient,
    assert_resume_equals_the_uninterrupted_run, perturb)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from preflab.diffusion.pipeline import tiny_sd3_pipeline
    from preflab.diffusion.shapes import write_pair_dataset

    root = tmp_path_factory.mktemp("sd3-run")
    tiny_sd3_pipeline(0).save_pretrained(root / "sd3")
    return {"model": str(root / "sd3"), "train": str(write_pair_dataset(root / "data", 8, seed=0)), "root": root}


def make_cfg(assets, out, **overrides):
    raw = {"task": "diffusion", "model_name_or_path": assets["model"], "dataset_name": assets["train"],
           "loss_type": "diffusion_dpo", "beta": 200.0, "resolution": 16, "per_device_train_batch_size": 4,
           "max_steps": 2, "learning_rate": 1e-3, "lr_scheduler_type": "constant", "logging_steps": 1,
           "output_dir": str(out), "use_cpu": True, "disable_tqdm": True,
           "sample_steps": 0}
    return diffusion_cfg(raw, **overrides)





# ---------------------------------------------------------------------------------------------- schedule and draws
def test_flow_schedule_equals_diffusers_sigma_grid_and_scale_noise():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from preflab.diffusion.flow import FlowMatchSchedule

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    schedule = FlowMatchSchedule.from_scheduler(scheduler)
    assert torch.equal(schedule.sigmas, scheduler.sigmas) and torch.equal(schedule.timesteps, scheduler.timesteps)
    assert schedule.sigmas[0] == 1.0 and schedule.sigmas[500] > 0.5  # shift 3 moves mass to high noise
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 16, 4, 4, generator=g), torch.randn(4, 16, 4, 4, generator=g)
    t = scheduler.timesteps[torch.tensor([0, 17, 500, 999])]
    assert torch.allclose(schedule.add_noise(x0, eps, t), scheduler.scale_noise(x0, t, eps), atol=1e-6)
    assert torch.equal(schedule.target(x0, eps, t), eps - x0)
    x0_hat, eps_hat = schedule.split_prediction(eps - x0, schedule.add_noise(x0, eps, t), t)
    assert torch.allclose(x0_hat, x0, atol=1e-5) and torch.allclose(eps_hat, eps, atol=1e-5)
    with pytest.raises(ConfigError, match="dynamic shifting"):
        FlowMatchSchedule.from_scheduler(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))


def test_timestep_draw_equals_diffusers_logit_normal_density_sampling():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    from preflab.diffusion.flow import FlowMatchSchedule

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    u = compute_density_for_timestep_sampling("logit_normal", 64, logit_mean=0.0, logit_std=1.0,
                                              generator=torch.Generator().manual_seed(5))
    expected = scheduler.timesteps[(u * 1000).long()]  # the SD3 DreamBooth / flow_grpo DPO scripts' draw
    drawn = FlowMatchSchedule.from_scheduler(scheduler).sample_timesteps(64, torch.Generator().manual_seed(5))
    assert torch.equal(drawn, expected) and drawn.unique().numel() > 50
    sigmas = drawn / 1000
    assert torch.equal(compute_loss_weighting_for_sd3("logit_normal", sigmas), torch.ones_like(sigmas))  # no weight


def test_sd3_text_encoding_equals_the_pipelines_encode_prompt():
    from preflab.diffusion.pipeline import components_of, encode_text, tiny_sd3_pipeline, unet_cond

    pipe = tiny_sd3_pipeline(0)
    prompts = ["a red disc", "", "a blue square"]
    for drop_t5 in (False, True):
        if drop_t5:
            pipe.text_encoder_3 = None
        text = encode_text(components_of(pipe), prompts)
        states, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False)
        assert text["states"].shape == states.shape == (3, 32 + 256, 64)
        assert torch.allclose(text["states"], states, atol=1e-5) and torch.equal(text["pooled_projections"], pooled)
        cond = unet_cond(text, 16)
        assert set(cond) == {"encoder_hidden_states", "pooled_projections"}
    assert torch.equal(text["states"][:, 32:], torch.zeros(3, 256, 64))  # no T5: zeros, as the pipeline


def test_sd3_latents_are_shifted_then_scaled_and_decode_inverts_them():
    """encode_images on SD3's VAE: z = (posterior mean - shift_factor) * scaling_factor, as diffusers' SD3 training
    scripts have it (computed here without preflab's encoding cache); decode_latents undoes exactly that."""
    from preflab.diffusion.images import to_model_range
    from preflab.diffusion.pipeline import components_of, encode_images, tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline(0)
    comps, vae = components_of(pipe), pipe.vae
    images = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        mean = vae.encode(to_model_range(images)).latent_dist.mean
    z = encode_images(comps, images)
    assert vae.config.shift_factor != 0 and vae.config.scaling_factor != 1
    assert torch.allclose(z, (mean - vae.config.shift_factor) * vae.config.scaling_factor, atol=1e-6)
    assert torch.allclose(z / comps.scaling_factor + comps.shift_factor, mean, atol=1e-6)


# ---------------------------------------------------------------------------------------------- the run
def direct_loss(run, index, step, pipe):
    """The objective of the batch computed here with diffusers alone: VAE posterior mean (shifted, scaled), the
    pipeline's encode_prompt, per pair u = compute_density_for_timestep_sampling from the run's documented per-pair
    generator, t = scheduler.timesteps[floor(1000 u)], eps from the same generator, x_t = scheduler.scale_noise,
    target eps - x_0, the transformer called as StableDiffusion3Pipeline calls it, and Wallace et al.'s loss
    -log sigmoid(-(beta/2) kappa [(e_w - e_ref_w) - (e_l - e_ref_l)]) (flow_grpo's train_sd3_dpo.py form)."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from preflab.diffusion.images import to_model_range

    items = [run.train_data[i] for i in index]
    vae, sched = pipe.vae, pipe.scheduler

    def latents(side):
        images = to_model_range(torch.stack([getattr(x, side) for x in items]))
        return (vae.encode(images).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor

    x_w, x_l = latents("chosen"), latents("rejected")
    ts, eps = [], []
    for i in index:
        g = torch.Generator().manual_seed(draw_seed(run.cfg.seed, step, i))
        u = compute_density_for_timestep_sampling("logit_normal", 1, logit_mean=0.0, logit_std=1.0, generator=g)
        ts.append(sched.timesteps[(u * 1000).long()])
        eps.append(torch.randn(x_w.shape[1:], generator=g))
    t, eps = torch.cat(ts), torch.stack(eps)

    def encode(texts):
        states, _, pooled, _ = pipe.encode_prompt(texts, texts, texts, do_classifier_free_guidance=False)
        return states, pooled

    cond_w = encode([x.cond_chosen for x in items])
    cond_l = encode([x.cond_rejected for x in items])

    def err(model, x0, cond):
        x_t = sched.scale_noise(x0, t, eps)
        pred = model(hidden_states=x_t, timestep=t, encoder_hidden_states=cond[0], pooled_projections=cond[1],
                     return_dict=False)[0]
        return ((pred - (eps - x0)) ** 2).reshape(len(items), -1).mean(1)

    policy, ref = run.module.unet, run.reference
    e_w, e_l = err(policy, x_w, cond_w), err(policy, x_l, cond_l)
    r_w, r_l = err(ref, x_w, cond_w), err(ref, x_l, cond_l)
    kappa = 1.0
    if getattr(run.objective, "kappa_scale", None):
        p = torch.tensor([x.preference_prob for x in items], dtype=torch.float64)
        kappa = (run.objective.kappa_scale * (2 * p - 1)).float()
    return -F.logsigmoid(-run.cfg.beta / 2 * kappa * ((e_w - r_w) - (e_l - r_l))).mean()


@pytest.mark.parametrize("method", ["diffusion_dpo", "dcpo", "smpo_diffusion"])
def test_loss_through_the_run_equals_a_direct_diffusers_computation(assets, tmp_path, method):
    from diffusers import StableDiffusion3Pipeline

    extra = {"dcpo": {"caption_perturbation": "medium"},
             "smpo_diffusion": {"diffusion_noising": {"mode": "forward"}}}.get(method, {})
    run = DiffusionRun(make_cfg(assets, tmp_path / method, loss_type=method, **extra))
    assert run.components.is_flow and run.schedule.prediction_type == "flow_matching"
    perturb(run.module)  # policy != reference
    mb = run.micro_batches(1)[0]
    trainer = run.forward(mb).loss
    pipe = StableDiffusion3Pipeline.from_pretrained(assets["model"])
    with torch.no_grad():
        expected = direct_loss(run, mb.index, 1, pipe)
    # float32: the errors' differences ((e_w - r_w) - (e_l - r_l), each ~1e-7 relative) are multiplied by beta / 2
    # (1000-2500), so the two computations' sums in another order differ by ~1e-5 relative, more or less by CPU
    # (smpo_diffusion on AVX-512 1.2e-5, dcpo on AVX2): 1e-4 relative
    assert trainer.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)
    assert abs(trainer.item() - math.log(2)) > 1e-4
    if method == "dcpo":
        assert all(x.cond_rejected != x.prompt for x in run.train_data)


def test_flow_dpo_is_log2_at_the_reference_and_its_gradient_is_the_closed_form(assets, tmp_path):
    """Loss log 2 while the policy is the reference; then dL/dtheta equals its closed form (flow_checks)."""
    run = DiffusionRun(make_cfg(assets, tmp_path / "grad"))
    mb = run.micro_batches(0)[0]
    with torch.no_grad():
        assert run.forward(mb).loss.item() == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    assert_gradient_is_the_closed_form(run, mb)


def test_a_pair_of_one_image_twice_gives_zero_gradient(assets, tmp_path):
    """Winner = loser (same latent, caption, t and eps): no gradient whatever theta (flow_checks)."""
    assert_one_image_twice_gives_no_gradient(DiffusionRun(make_cfg(assets, tmp_path / "same")))


def test_sd3_resume_equals_the_uninterrupted_run(assets, tmp_path):
    assert_resume_equals_the_uninterrupted_run(lambda out, **kw: DiffusionRun(make_cfg(assets, out, **kw)), tmp_path)


def test_sd3_lora_targets_joint_attention_its_reference_is_the_base_and_it_fuses_on_save(assets, tmp_path):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    run = DiffusionRun(make_cfg(assets, tmp_path / "lora", use_peft=True, lora_r=4, lora_alpha=4))
    names = {n for n, p in run.module.unet.named_parameters() if p.requires_grad}
    assert any(".attn.add_q_proj.lora_A" in n for n in names) and any(".attn.to_q.lora_B" in n for n in names)
    assert all("lora_" in n for n in names)
    summary = run.train()
    run.module.eval()
    base = SD3Transformer2DModel.from_pretrained(assets["model"], subfolder="transformer")
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([100.0, 900.0])
    cond = {"encoder_hidden_states": torch.randn(2, 288, 64, generator=g),
            "pooled_projections": torch.randn(2, 64, generator=g)}
    with torch.no_grad():
        policy, reference = run.module(x, t, cond), run._reference(x, t, cond)
        plain = base(x, timestep=t, **cond).sample
        fused = StableDiffusion3Pipeline.from_pretrained(summary["model_dir"]).transformer(x, timestep=t, **cond).sample
    assert torch.allclose(reference, plain, atol=1e-6)
    assert (policy - plain).abs().max() > 1e-4
    assert torch.allclose(fused, policy, atol=1e-5)


def test_sd3_sampling_equals_the_pipelines_own_euler_sampler():
    from preflab.diffusion.pipeline import components_of, sample_latents, tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline(0)
    comps = components_of(pipe)
    x_T = torch.randn((16, 8, 8), generator=torch.Generator().manual_seed(7))[None]
    for scale in (1.0, 3.0):
        ours = sample_latents(comps, pipe.transformer, ["a red disc"], [7], num_steps=3, guidance_scale=scale)
        theirs = pipe("a red disc", negative_prompt="", latents=x_T.clone(), num_inference_steps=3, height=16,
                      width=16, guidance_scale=scale, output_type="latent").images
        assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, x_T, atol=1e-2)


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("method, words", DDPM_ONLY_OBJECTIVES)
def test_objectives_tied_to_the_ddpm_parametrisation_are_refused_on_sd3(assets, tmp_path, method, words):
    assert_ddpm_objective_is_refused(make_cfg, assets, tmp_path, method, words)


def test_timestep_bounds_and_a_resolution_off_the_patch_grid_are_refused_on_sd3(assets, tmp_path):
    with pytest.raises(ConfigError, match="logit-normal"):
        DiffusionRun(make_cfg(assets, tmp_path / "b", diffusion_noising={"min_timestep": 100}))
    with pytest.raises(ConfigError, match="2x2 patches; use a multiple of 4"):
        DiffusionRun(make_cfg(assets, tmp_path / "r", resolution=10))


def test_flux_pipelines_take_the_flux_path_not_sd3s():
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from preflab.diffusion.pipeline import components_of, tiny_sd3_pipeline

    sd3 = tiny_sd3_pipeline(0)
    flux = FluxPipeline(scheduler=sd3.scheduler, vae=sd3.vae, text_encoder=sd3.text_encoder, tokenizer=sd3.tokenizer,
                        text_encoder_2=sd3.text_encoder_3, tokenizer_2=sd3.tokenizer_3,
                        transformer=FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1,
                                                           num_single_layers=1, attention_head_dim=16,
                                                           num_attention_heads=2, joint_attention_dim=64,
                                                           pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]))
    comps = components_of(flux)  # tests/diffusion/test_flux.py trains it
    assert comps.is_flux and comps.text_encoder_3 is None and comps.text_encoder_2 is sd3.text_encoder_3
    assert not components_of(sd3).is_flux


def test_sd3_and_flux_pipelines_missing_a_part_are_refused_alike():
    """SD3 and Flux share one check: a wrong scheduler, or missing parts, all of them named, with what to do."""
    from diffusers import DDIMScheduler

    from preflab.diffusion.pipeline import components_of, tiny_flux_pipeline, tiny_sd3_pipeline

    for make, model in ((tiny_sd3_pipeline, "SD3"), (tiny_flux_pipeline, "Flux")):
        pipe = make(0)
        kind = type(pipe).__name__
        pipe.scheduler = DDIMScheduler()
        with pytest.raises(ConfigError, match=rf"{kind}'s scheduler is DDIMScheduler; a {model} transformer is "
                                              r"trained with FlowMatchEulerDiscreteScheduler .*\. Load the pipeline"):
            components_of(pipe)
        pipe = make(0)
        pipe.tokenizer, pipe.text_encoder_2 = None, None
        with pytest.raises(ConfigError, match=rf"{kind} has no tokenizer, text_encoder_2; {model} needs .*\. Load "
                                              "the whole pipeline"):
            components_of(pipe)
    pipe = tiny_sd3_pipeline(0)
    pipe.tokenizer_3 = None
    with pytest.raises(ConfigError, match="has text_encoder_3 but no tokenizer_3; .* Pass tokenizer_3"):
        components_of(pipe)

def test_the_builtin_tiny_sd3_name_loads_the_tiny_pipeline():
    from preflab.diffusion.pipeline import TINY_SD3, BUILTIN_PIPELINES, components_of, load_pipeline

    comps = components_of(load_pipeline(TINY_SD3))
    assert TINY_SD3 in BUILTIN_PIPELINES and comps.is_flow and comps.denoiser_name == "transformer"
    assert comps.vae.config.latent_channels == 16 and comps.shift_factor == pytest.approx(0.0609)
    assert comps.scheduler.config.shift == 3.0 and len(comps.text_encoders) == 3


@pytest.mark.slow
def test_preflab_train_runs_the_sd3_example_and_the_output_loads_as_an_sd3_pipeline(tmp_path, monkeypatch):
    """preflab train on the example; the output loads as an SD3 pipeline; preflab eval reproduces its eval loss."""
    from diffusers import StableDiffusion3Pipeline

    assert_example_trains_reloads_and_evaluates("sd3_diffusion_dpo.yaml", StableDiffusion3Pipeline, tmp_path,
                                                monkeypatch)


def test_sd3_gradient_checkpointing_gives_the_same_training(assets, tmp_path):
    assert_gradient_checkpointing_trains_the_same(lambda out, **kw: DiffusionRun(make_cfg(assets, out, **kw)), tmp_path)


def test_an_sd35_style_transformer_dual_attention_and_qk_norm_trains_the_same_loss(assets, tmp_path):
    """SD3.5's transformer (a second self-attention in early blocks, RMS qk-norm) is the same class: same run path."""
    from diffusers import SD3Transformer2DModel

    from preflab.diffusion.pipeline import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline(0)
    torch.manual_seed(0)
    pipe.transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=2,
                                             attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                             caption_projection_dim=32, pooled_projection_dim=64, out_channels=16,
                                             pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm")
    run = DiffusionRun(make_cfg(assets, tmp_path / "sd35"), pipeline=pipe)
    perturb(run.module)
    mb = run.micro_batches(0)[0]
    with torch.no_grad():
        trainer, expected = run.forward(mb).loss, direct_loss(run, mb.index, 0, pipe)
    # float32: the errors' differences ((e_w - r_w) - (e_l - r_l), each ~1e-7 relative) are multiplied by beta / 2
    # (1000-2500), so the two computations' sums in another order differ by ~1e-5 relative, more or less by CPU
    # (smpo_diffusion on AVX-512 1.2e-5, dcpo on AVX2): 1e-4 relative
    assert trainer.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)
    assert abs(trainer.item() - math.log(2)) > 1e-4
