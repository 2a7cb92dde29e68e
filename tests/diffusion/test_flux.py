"""Diffusion-DPO on Flux (FluxTransformer2DModel) on the tiny Flux pipeline: packing, position ids, the training draw
and text encoding equal diffusers' (FluxPipeline, train_dreambooth_lora_flux.py), the loss through the run equals a
direct diffusers computation, log 2 at the reference, exact resume, LoRA, sampling equals FluxPipeline's, refusals."""
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
    assert_resume_equals_the_uninterrupted_run, perturb, state)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from preflab.diffusion.pipeline import tiny_flux_pipeline
    from preflab.diffusion.shapes import write_pair_dataset

    root = tmp_path_factory.mktemp("flux-run")
    tiny_flux_pipeline(0).save_pretrained(root / "flux")
    tiny_flux_pipeline(0, guidance_embeds=False).save_pretrained(root / "schnell")
    return {"model": str(root / "flux"), "schnell": str(root / "schnell"),
            "train": str(write_pair_dataset(root / "data", 8, seed=0)), "root": root}


def make_cfg(assets, out, **overrides):
    raw = {"task": "diffusion", "model_name_or_path": assets["model"], "dataset_name": assets["train"],
           "loss_type": "diffusion_dpo", "beta": 200.0, "resolution": 16, "per_device_train_batch_size": 4,
           "max_steps": 2, "learning_rate": 1e-3, "lr_scheduler_type": "constant", "logging_steps": 1,
           "output_dir": str(out), "use_cpu": True, "disable_tqdm": True,
           "sample_steps": 0}
    return diffusion_cfg(raw, **overrides)





# ---------------------------------------------------------------------------------------------- layout and draws
def test_packing_unpacking_and_position_ids_equal_flux_pipelines():
    from diffusers import FluxPipeline

    from preflab.diffusion.flux import latent_image_ids, pack_latents, unpack_latents

    x = torch.randn(2, 16, 8, 6, generator=torch.Generator().manual_seed(0))
    packed = pack_latents(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 16, 8, 6)) and packed.shape == (2, 12, 64)
    # the pipeline unpacks from pixel sizes (vae_scale_factor 2 here): 16 x 12 pixels = 8 x 6 latents
    assert torch.equal(unpack_latents(packed, 8, 6), FluxPipeline._unpack_latents(packed, 16, 12, 2))
    assert torch.equal(unpack_latents(packed, 8, 6), x)
    ids = latent_image_ids(8, 6)
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32))
    assert ids[4].tolist() == [0.0, 1.0, 1.0]  # token 4 = patch row 1, column 1 of a 4 x 3 patch grid
    with pytest.raises(ConfigError, match="2x2 patches"):
        pack_latents(torch.zeros(1, 16, 5, 4))


def test_flux_training_draw_equals_the_dreambooth_flux_scripts():
    """train_dreambooth_lora_flux.py: u = compute_density_for_timestep_sampling("none"), t =
    scheduler.timesteps[floor(1000 u)] on the dynamic-shifting scheduler's (unshifted) training grid, weight 1."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    from preflab.diffusion.flow import FlowMatchSchedule
    from preflab.diffusion.pipeline import tiny_flux_pipeline

    scheduler = tiny_flux_pipeline(0).scheduler
    schedule = FlowMatchSchedule.for_flux(scheduler)
    assert torch.equal(schedule.sigmas, scheduler.sigmas) and torch.equal(schedule.timesteps, scheduler.timesteps)
    assert schedule.sigmas[500] == pytest.approx(0.5)  # not shifted by the config's shift 3 (applied at inference)
    u = compute_density_for_timestep_sampling("none", 64, generator=torch.Generator().manual_seed(5))
    expected = scheduler.timesteps[(u * 1000).long()]
    drawn = schedule.sample_timesteps(64, torch.Generator().manual_seed(5))
    assert torch.equal(drawn, expected) and drawn.unique().numel() > 50
    assert torch.equal(compute_loss_weighting_for_sd3("none", drawn / 1000), torch.ones(64))
    fixed = FlowMatchSchedule.for_flux(FlowMatchEulerDiscreteScheduler(shift=3.0))  # no dynamic shifting: shifted
    assert torch.equal(fixed.sigmas, FlowMatchEulerDiscreteScheduler(shift=3.0).sigmas)
    with pytest.raises(ConfigError, match="plain training grid"):
        FlowMatchSchedule.for_flux(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, use_karras_sigmas=True))


def test_flux_text_encoding_equals_the_pipelines_encode_prompt():
    from preflab.diffusion.pipeline import components_of, encode_text, tiny_flux_pipeline, unet_cond

    pipe = tiny_flux_pipeline(0)
    prompts = ["a red disc", "", "a blue square"]
    text = encode_text(components_of(pipe), prompts)
    states, pooled, text_ids = pipe.encode_prompt(prompts, prompts)
    assert text["states"].shape == states.shape == (3, 512, 64)
    assert torch.allclose(text["states"], states, atol=1e-5) and torch.equal(text["pooled_projections"], pooled)
    assert torch.equal(text_ids, torch.zeros(512, 3))  # call_flux's txt_ids
    assert not torch.allclose(text["states"][0], text["states"][2], atol=1e-3)
    assert set(unet_cond(text, 16)) == {"encoder_hidden_states", "pooled_projections"}


def test_a_transformer_call_through_preflab_equals_the_pipelines_call():
    from diffusers import FluxPipeline

    from preflab.diffusion.pipeline import call_unet, tiny_flux_pipeline

    pipe = tiny_flux_pipeline(0)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([250.0, 900.0])
    cond = {"encoder_hidden_states": torch.randn(2, 512, 64, generator=g),
            "pooled_projections": torch.randn(2, 32, generator=g), "guidance": torch.tensor([3.5, 3.5])}
    with torch.no_grad():
        ours = call_unet(pipe.transformer, x, t, cond)
        theirs = pipe.transformer(hidden_states=FluxPipeline._pack_latents(x, 2, 16, 8, 8), timestep=t / 1000,
                                  guidance=cond["guidance"], pooled_projections=cond["pooled_projections"],
                                  encoder_hidden_states=cond["encoder_hidden_states"], txt_ids=torch.zeros(512, 3),
                                  img_ids=FluxPipeline._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32),
                                  return_dict=False)[0]
        other = call_unet(pipe.transformer, x, t, {**cond, "guidance": torch.tensor([1.0, 1.0])})
    assert torch.equal(ours, FluxPipeline._unpack_latents(theirs, 16, 16, 2))
    assert (ours - other).abs().max() > 1e-4  # the guidance embedding is an input
    with pytest.raises(ConfigError, match="guidance"):
        call_unet(pipe.transformer, x, t, {k: v for k, v in cond.items() if k != "guidance"})


# ---------------------------------------------------------------------------------------------- the run
def direct_loss(run, index, step, pipe):
    """The objective of the batch computed here with diffusers alone, as train_dreambooth_lora_flux.py's step: VAE
    posterior mean (shifted, scaled), the pipeline's encode_prompt, per pair u = compute_density_for_timestep_sampling
    ("none") from the run's documented per-pair generator, t = scheduler.timesteps[floor(1000 u)], eps from the same
    generator, x_t = (1 - sigma) x_0 + sigma eps, FluxPipeline._pack_latents, the transformer at timestep t / 1000 with
    guidance flux_guidance (when embedded) and the pipeline's ids, _unpack_latents, target eps - x_0, and Wallace et
    al.'s loss -log sigmoid(-(beta/2) kappa [(e_w - e_ref_w) - (e_l - e_ref_l)])."""
    from diffusers import FluxPipeline
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from preflab.diffusion.images import to_model_range

    items = [run.train_data[i] for i in index]
    vae, sched = pipe.vae, pipe.scheduler
    b = len(items)

    def latents(side):
        images = to_model_range(torch.stack([getattr(x, side) for x in items]))
        return (vae.encode(images).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor

    x_w, x_l = latents("chosen"), latents("rejected")
    ts, eps = [], []
    for i in index:
        g = torch.Generator().manual_seed(draw_seed(run.cfg.seed, step, i))
        u = compute_density_for_timestep_sampling("none", 1, generator=g)
        ts.append(sched.timesteps[(u * 1000).long()])
        eps.append(torch.randn(x_w.shape[1:], generator=g))
    t, eps = torch.cat(ts), torch.stack(eps)
    sigmas = sched.sigmas[[(sched.timesteps == s).nonzero().item() for s in t]].reshape(-1, 1, 1, 1)
    _, c, h, w = x_w.shape
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32)
    guidance = torch.tensor([run.cfg.flux_guidance]).expand(b) if pipe.transformer.config.guidance_embeds else None

    def encode(texts):
        states, pooled, text_ids = pipe.encode_prompt(texts, texts)
        return states, pooled, text_ids

    cond_w = encode([x.cond_chosen for x in items])
    cond_l = encode([x.cond_rejected for x in items])

    def err(model, x0, cond):
        x_t = (1.0 - sigmas) * x0 + sigmas * eps
        pred = model(hidden_states=FluxPipeline._pack_latents(x_t, b, c, h, w), timestep=t / 1000, guidance=guidance,
                     pooled_projections=cond[1], encoder_hidden_states=cond[0], txt_ids=cond[2], img_ids=img_ids,
                     return_dict=False)[0]
        pred = FluxPipeline._unpack_latents(pred, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor,
                                            pipe.vae_scale_factor)
        return ((pred - (eps - x0)) ** 2).reshape(b, -1).mean(1)

    policy, ref = run.module.unet, run.reference
    e_w, e_l = err(policy, x_w, cond_w), err(policy, x_l, cond_l)
    r_w, r_l = err(ref, x_w, cond_w), err(ref, x_l, cond_l)
    kappa = 1.0
    if getattr(run.objective, "kappa_scale", None):
        p = torch.tensor([x.preference_prob for x in items], dtype=torch.float64)
        kappa = (run.objective.kappa_scale * (2 * p - 1)).float()
    return -F.logsigmoid(-run.cfg.beta / 2 * kappa * ((e_w - r_w) - (e_l - r_l))).mean()


@pytest.mark.parametrize("method, model", [("diffusion_dpo", "model"), ("dcpo", "model"),
                                           ("smpo_diffusion", "model"), ("diffusion_dpo", "schnell")])
def test_loss_through_the_run_equals_a_direct_diffusers_computation(assets, tmp_path, method, model):
    from diffusers import FluxPipeline

    extra = {"dcpo": {"caption_perturbation": "medium"},
             "smpo_diffusion": {"diffusion_noising": {"mode": "forward"}}}.get(method, {})
    run = DiffusionRun(make_cfg(assets, tmp_path / method, loss_type=method, model_name_or_path=assets[model],
                                flux_guidance=2.5, **extra))
    assert run.components.is_flux and run.schedule.prediction_type == "flow_matching"
    assert run.schedule.density == "uniform"
    perturb(run.module)  # policy != reference
    mb = run.micro_batches(1)[0]
    trainer = run.forward(mb).loss
    pipe = FluxPipeline.from_pretrained(assets[model])
    with torch.no_grad():
        expected = direct_loss(run, mb.index, 1, pipe)
    # smpo_diffusion multiplies the MSE differences by (beta/2) kappa up to 1000: float32 round-off of MSEs ~1.4
    # (~1e-7, one [2B] forward in the run vs two [B] here) moves its loss by ~1e-5
    rel = 1e-4 if method == "smpo_diffusion" else 1e-5
    assert trainer.item() == pytest.approx(expected.item(), rel=rel, abs=1e-7)
    assert abs(trainer.item() - math.log(2)) > 1e-3
    if method == "dcpo":
        assert all(x.cond_rejected != x.prompt for x in run.train_data)


def test_flux_dpo_is_log2_at_the_reference_and_a_step_moves_it(assets, tmp_path):
    run = DiffusionRun(make_cfg(assets, tmp_path / "log2", max_steps=1))
    mb = run.micro_batches(0)[0]
    with torch.no_grad():
        assert run.forward(mb).loss.item() == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    before = state(run.module.unet)
    run.train()
    after = state(run.module.unet)
    assert any(not torch.equal(after[k], before[k]) for k in after)
    with torch.no_grad():
        assert abs(run.forward(run.micro_batches(0)[0]).loss.item() - math.log(2)) > 1e-5


def test_flux_dpo_gradient_is_the_closed_form(assets, tmp_path):
    """dL/dtheta = (1/B) sum_i b sigmoid(b (Delta_theta_i - Delta_ref_i)) d(e_w,i - e_l,i)/dtheta (flow_checks)."""
    run = DiffusionRun(make_cfg(assets, tmp_path / "grad"))
    assert_gradient_is_the_closed_form(run, run.micro_batches(0)[0])


def test_a_flux_pair_of_one_image_twice_gives_zero_gradient(assets, tmp_path):
    """Winner = loser (same latent, caption, t and eps): no gradient whatever theta (flow_checks)."""
    assert_one_image_twice_gives_no_gradient(DiffusionRun(make_cfg(assets, tmp_path / "same")))


def test_flux_gradient_checkpointing_gives_the_same_training(assets, tmp_path):
    assert_gradient_checkpointing_trains_the_same(lambda out, **kw: DiffusionRun(make_cfg(assets, out, **kw)), tmp_path)


def test_flux_resume_equals_the_uninterrupted_run(assets, tmp_path):
    assert_resume_equals_the_uninterrupted_run(lambda out, **kw: DiffusionRun(make_cfg(assets, out, **kw)), tmp_path)


def test_flux_lora_targets_both_streams_its_reference_is_the_base_and_it_fuses_on_save(assets, tmp_path):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from preflab.diffusion.pipeline import call_unet

    run = DiffusionRun(make_cfg(assets, tmp_path / "lora", use_peft=True, lora_r=4, lora_alpha=4, max_steps=1))
    names = {n for n, p in run.module.unet.named_parameters() if p.requires_grad}
    assert any(".attn.add_q_proj.lora_A" in n for n in names) and any(".attn.to_q.lora_B" in n for n in names)
    assert any(n.startswith("single_transformer_blocks.") for n in names)  # the single-stream blocks' to_q/k/v
    assert all("lora_" in n for n in names)
    summary = run.train()
    run.module.eval()
    base = FluxTransformer2DModel.from_pretrained(assets["model"], subfolder="transformer")
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([100.0, 900.0])
    cond = {"encoder_hidden_states": torch.randn(2, 512, 64, generator=g),
            "pooled_projections": torch.randn(2, 32, generator=g), "guidance": torch.tensor([3.5, 3.5])}
    with torch.no_grad():
        policy, reference = run.module(x, t, cond), run._reference(x, t, cond)
        plain = call_unet(base, x, t, cond)
        fused = call_unet(FluxPipeline.from_pretrained(summary["model_dir"]).transformer, x, t, cond)
    assert torch.allclose(reference, plain, atol=1e-6)
    assert (policy - plain).abs().max() > 1e-4
    assert torch.allclose(fused, policy, atol=1e-5)


def test_flux_sampling_equals_the_pipelines_own_sampler():
    """Euler steps on FluxPipeline's grid (linspace sigmas shifted by mu = calculate_shift(image tokens)), guidance
    embedding flux_guidance, and for guidance_scale > 1 true CFG against "" (the pipeline's true_cfg_scale)."""
    from preflab.diffusion.flux import pack_latents, unpack_latents
    from preflab.diffusion.pipeline import components_of, sample_latents, tiny_flux_pipeline

    pipe = tiny_flux_pipeline(0)
    comps = components_of(pipe)
    comps.resolution, comps.flux_guidance = 16, 2.0
    x_T = torch.randn((16, 8, 8), generator=torch.Generator().manual_seed(7))[None]
    for scale in (1.0, 3.0):
        ours = sample_latents(comps, pipe.transformer, ["a red disc"], [7], num_steps=3, guidance_scale=scale)
        theirs = pipe("a red disc", negative_prompt="", true_cfg_scale=scale, latents=pack_latents(x_T.clone()),
                      num_inference_steps=3, height=16, width=16, guidance_scale=2.0, output_type="latent").images
        assert torch.allclose(ours, unpack_latents(theirs, 8, 8), atol=1e-5)
    assert not torch.allclose(ours, x_T, atol=1e-2)


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("method, words", DDPM_ONLY_OBJECTIVES)
def test_objectives_tied_to_the_ddpm_parametrisation_are_refused_on_flux(assets, tmp_path, method, words):
    assert_ddpm_objective_is_refused(make_cfg, assets, tmp_path, method, words)


def test_timestep_bounds_and_a_resolution_off_the_packing_grid_are_refused_on_flux(assets, tmp_path):
    with pytest.raises(ConfigError, match="leave them unset"):
        DiffusionRun(make_cfg(assets, tmp_path / "b", diffusion_noising={"min_timestep": 100}))
    with pytest.raises(ConfigError, match="2x2 patches; use a multiple of 4"):
        DiffusionRun(make_cfg(assets, tmp_path / "r", resolution=10))
    with pytest.raises(ConfigError, match="flux_guidance"):
        make_cfg(assets, tmp_path / "g", flux_guidance=-1.0)


def test_flux_layouts_preflab_cannot_train_are_refused():
    from diffusers import DDIMScheduler, FluxTransformer2DModel

    from preflab.diffusion.pipeline import components_of, tiny_flux_pipeline

    pipe = tiny_flux_pipeline(0)
    pipe.scheduler = DDIMScheduler()
    with pytest.raises(ConfigError, match="FlowMatchEulerDiscreteScheduler"):
        components_of(pipe)
    pipe = tiny_flux_pipeline(0)
    pipe.transformer = FluxTransformer2DModel(patch_size=2, in_channels=64, num_layers=1, num_single_layers=1,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                              pooled_projection_dim=32, axes_dims_rope=(4, 4, 8))
    with pytest.raises(ConfigError, match="patch_size 2"):
        components_of(pipe)
    pipe = tiny_flux_pipeline(0)
    pipe.text_encoder_2 = None
    with pytest.raises(ConfigError, match="T5"):
        components_of(pipe)
    pipe = tiny_flux_pipeline(0)
    pipe.transformer = FluxTransformer2DModel(patch_size=1, in_channels=384, out_channels=64, num_layers=1,
                                              num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                              joint_attention_dim=64, pooled_projection_dim=32,
                                              axes_dims_rope=(4, 4, 8))  # FLUX.1-Fill's 64 + 320 input channels
    with pytest.raises(ConfigError, match="384 input channels.*Fill"):
        components_of(pipe)
    from diffusers import FluxFillPipeline

    t2i = tiny_flux_pipeline(0)
    fill = FluxFillPipeline(**{k: getattr(t2i, k) for k in ("scheduler", "vae", "text_encoder", "tokenizer",
                                                             "text_encoder_2", "tokenizer_2", "transformer")})
    with pytest.raises(ConfigError, match="FluxFillPipeline is not the text-to-image FluxPipeline"):
        components_of(fill)


def test_the_builtin_tiny_flux_name_loads_the_tiny_pipeline():
    from preflab.diffusion.pipeline import BUILTIN_PIPELINES, TINY_FLUX, components_of, load_pipeline

    comps = components_of(load_pipeline(TINY_FLUX))
    assert TINY_FLUX in BUILTIN_PIPELINES and comps.is_flux and comps.is_flow and not comps.is_sdxl
    assert comps.vae.config.latent_channels == 16 and comps.shift_factor == pytest.approx(0.1159)
    assert comps.scheduler.config.use_dynamic_shifting and len(comps.text_encoders) == 2
    assert comps.denoiser.config.guidance_embeds


@pytest.mark.slow
def test_preflab_train_runs_the_flux_example_and_the_output_loads_as_a_flux_pipeline(tmp_path, monkeypatch):
    """preflab train on the example, the output loads as a FluxPipeline, preflab eval reproduces its eval loss."""
    from diffusers import FluxPipeline

    assert_example_trains_reloads_and_evaluates("flux_diffusion_dpo.yaml", FluxPipeline, tmp_path, monkeypatch)