"""`preflab demo diffusion`: a tiny text-to-image model learns a known preference, end to end on a CPU.

1. Build the tiny pipeline from configs (random init, seeded; preflab.diffusion.pipeline.tiny_text_to_image_pipeline).
2. Fit it to coloured shapes (preflab.diffusion.shapes; captions "a square" / "a disc"): the VAE as an autoencoder,
   then the UNet as an epsilon-prediction denoiser on images in red (half of them), green or blue -- so the fitted
   model draws shapes of any colour. Both fits use preflab.step.optimizer_step.
3. Preference-train it with `preflab train` machinery (task: diffusion, Diffusion-DPO) on pairs from a rater whose
   favourite colour is red (the red shape > the same shape in another colour); the config is written as
   diffusion_dpo.yaml. (favourite=None instead prefers the colour the caption names, "a red square"; at this size
   and budget the UNet barely learns to read colour words, so that variant does not move in a few minutes.)
4. Sample the same prompts with the same seeds before and after, score them with the known true reward (the
   favourite colour's dominance, preflab.diffusion.shapes.true_reward), and write summary.json
   (true_reward_before / _after, model_dir), samples.png (top row before, bottom row after) and report.html.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from preflab.objectives.base import ObjectiveOutput
from preflab.quiet import progress_bars_off
from preflab.step import optimizer_step


@dataclass
class _Batch:
    index: torch.Tensor
    row_ids: list = field(default_factory=list)


def _fit(params, forward, steps: int, batch: int, n: int, lr: float, seed: int, label: str, quiet: bool) -> float:
    """`steps` AdamW updates through optimizer_step on random batches of n examples; returns the last loss."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    loss = float("nan")
    for step in range(steps):
        index = torch.randint(0, n, (batch,), generator=g)
        result = optimizer_step([_Batch(index, index.tolist())], forward, params, optimizer, max_grad_norm=1.0)
        loss = result.loss
        if not quiet and (step + 1) % max(1, steps // 5) == 0:
            print(f"preflab demo: {label} step {step + 1}/{steps} loss {loss:.4f}", flush=True)
    return loss


def fit_vae(components, images: torch.Tensor, steps: int, seed: int, quiet: bool = True) -> float:
    """Reconstruction MSE (+ 1e-6 KL) of the VAE on uint8 images [N, 3, S, S]."""
    from preflab.diffusion.images import to_model_range

    vae = components.vae.train().requires_grad_(True)
    g = torch.Generator().manual_seed(seed + 1)

    def forward(mb):
        x = to_model_range(images[mb.index])
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=g)).sample
        losses = ((rec - x) ** 2).flatten(1).mean(1) + 1e-6 * posterior.kl()
        return ObjectiveOutput(losses.mean(), losses, {})

    loss = _fit(list(vae.parameters()), forward, steps, 16, images.shape[0], 3e-3, seed, "VAE", quiet)
    vae.eval().requires_grad_(False)
    return loss


def fit_unet(components, latents: torch.Tensor, cond: torch.Tensor, steps: int, seed: int,
             quiet: bool = True) -> float:
    """Epsilon-prediction MSE (Ho et al., 2020) of the UNet on latents [N, C, h, w] with text states [N, L, D]."""
    from preflab.diffusion.schedule import NoiseSchedule

    unet = components.denoiser.train().requires_grad_(True)
    schedule = NoiseSchedule.from_scheduler(components.scheduler)
    g = torch.Generator().manual_seed(seed + 2)

    def forward(mb):
        x0 = latents[mb.index]
        t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        pred = unet(schedule.add_noise(x0, eps, t), t, encoder_hidden_states=cond[mb.index]).sample
        losses = ((pred - eps) ** 2).flatten(1).mean(1)
        return ObjectiveOutput(losses.mean(), losses, {})

    loss = _fit(list(unet.parameters()), forward, steps, 32, latents.shape[0], 2e-3, seed, "UNet", quiet)
    unet.eval()
    return loss


# summary.json's `about` (as the text demo's), which `preflab report` on the demo folder shows above the numbers: it
# showed true_reward_before / _after with nothing saying what the true reward is
ABOUT = ("What this demo shows: preference optimization moves a text-to-image model toward what its preference "
         "pairs reward. A tiny text-to-image model is fitted to coloured shapes, then preference-trained with "
         "Diffusion-DPO on pairs from a rater who prefers red shapes. True reward: dominance of red in the image's "
         "most saturated pixels (in [-1, 1]), on samples of the same prompts and seeds before and after.")


def _report(out: Path, summary: dict) -> Path:
    rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in summary.items()
                   if isinstance(v, (int, float, str)) and k != "about")
    html = (
        "<!doctype html><meta charset='utf-8'><title>preflab demo diffusion</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td{padding:2px 8px}</style>"
        "<h1>preflab demo diffusion</h1>"
        f"<p>{ABOUT}</p>"
        f"<p><b>True reward on the same prompts and seeds: before {summary['true_reward_before']:.3f}, after "
        f"{summary['true_reward_after']:.3f}</b></p>"
        "<h2>Samples</h2><p>Top row: before preference training. Bottom row: after. Prompts: "
        f"{', '.join(summary['grid_prompts'])}.</p><img src='samples.png' style='image-rendering:pixelated'>"
        f"<h2>Numbers</h2><table>{rows}</table>")
    path = out / "report.html"
    path.write_text(html)
    return path


@contextmanager
def pipeline_load_bars(shown: bool):
    """diffusers' "Loading pipeline components" bar on (as diffusers leaves it) or off for the block: `preflab demo
    diffusion --quiet` ("no progress bars") printed it twice when it reloaded the base and trained pipelines."""
    from diffusers.utils import logging as diffusers_logging

    was = diffusers_logging.is_progress_bar_enabled()
    if not shown:
        diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            diffusers_logging.enable_progress_bar()


def save_base_pipeline(pipeline, base_dir: Path, quiet: bool) -> None:
    """The fitted base pipeline into base_dir (the DPO stage's model_name_or_path); with --quiet without
    transformers' "Writing model shards" bar that its text encoder's save_pretrained draws
    (preflab.quiet.progress_bars_off, as a run's own final save)."""
    with progress_bars_off(quiet):
        pipeline.save_pretrained(str(base_dir), safe_serialization=True)


def run_diffusion_demo(output_dir: str = "outputs/demo-diffusion", seed: int = 0, quiet: bool = False,
                       num_pairs: int = 192, vae_steps: int = 150, sft_steps: int = 400, dpo_steps: int = 20,
                       num_samples: int = 48, sample_steps: int = 10, beta: float = 1000.0,
                       learning_rate: float = 3e-5, favourite: str | None = "red") -> dict:
    """Run the demo (see the module docstring); returns the summary written to summary.json."""
    from diffusers import DiffusionPipeline

    from preflab.config import config_from_dict
    from preflab.diffusion.pipeline import components_of, encode_images, encode_prompts, sample_images, save_grid
    from preflab.diffusion.pipeline import tiny_text_to_image_pipeline
    from preflab.diffusion.shapes import captions, pair_rows, true_reward, write_pair_dataset
    from preflab.loops.diffusion import DiffusionRun

    started = time.perf_counter()
    torch.set_num_threads(1)  # tiny models run faster on one thread (as the language-model demo)
    torch.manual_seed(seed)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    comps = components_of(tiny_text_to_image_pipeline(seed))
    rows = pair_rows(num_pairs, 16, seed, favourite)
    images = torch.stack([r[k] for r in rows for k in ("chosen_image", "rejected_image")])
    texts = [r["prompt"] for r in rows for _ in (0, 1)]
    vae_loss = fit_vae(comps, images, vae_steps, seed, quiet)
    latents = encode_images(comps, images)
    unique = sorted(set(texts))
    states = dict(zip(unique, encode_prompts(comps, unique)))
    sft_loss = fit_unet(comps, latents, torch.stack([states[t] for t in texts]), sft_steps, seed, quiet)
    base_dir = out / "base_model"
    save_base_pipeline(comps.pipeline, base_dir, quiet)
    data = write_pair_dataset(out / "data", num_pairs, seed=seed + 10, favourite=favourite)
    raw = {"task": "diffusion", "model_name_or_path": str(base_dir), "dataset_name": str(data),
           "loss_type": "diffusion_dpo", "beta": beta, "resolution": 16, "learning_rate": learning_rate,
           "lr_scheduler_type": "constant", "per_device_train_batch_size": 8, "max_steps": dpo_steps,
           "logging_steps": max(1, dpo_steps // 10), "output_dir": str(out / "dpo"), "use_cpu": True,
           "disable_tqdm": quiet, "seed": seed, "sample_steps": sample_steps}
    cfg = config_from_dict(raw)
    cfg.save(out / "diffusion_dpo.yaml")
    train_summary = DiffusionRun(cfg).train()

    prompts = captions(num_samples, torch.Generator().manual_seed(seed + 20), favourite)
    seeds = list(range(1000, 1000 + num_samples))
    with pipeline_load_bars(not quiet):
        base = components_of(DiffusionPipeline.from_pretrained(str(base_dir)))
        tuned = components_of(DiffusionPipeline.from_pretrained(train_summary["model_dir"]))
    before = sample_images(base, base.denoiser, prompts, seeds, sample_steps)
    after = sample_images(tuned, tuned.denoiser, prompts, seeds, sample_steps)
    r_before, r_after = true_reward(before, prompts, favourite), true_reward(after, prompts, favourite)
    k = min(12, num_samples)
    save_grid([before[:k], after[:k]], out / "samples.png")
    summary = {
        "about": ABOUT, "true_reward_before": float(r_before.mean()), "true_reward_after": float(r_after.mean()),
        "true_reward_gain": float((r_after - r_before).mean()),
        "share_improved": float((r_after > r_before).float().mean()),
        "model_dir": train_summary["model_dir"], "base_model_dir": str(base_dir),
        "config": str(out / "diffusion_dpo.yaml"),
        "samples_png": str(out / "samples.png"), "grid_prompts": prompts[:k], "num_samples": num_samples,
        "vae_final_loss": vae_loss, "sft_final_loss": sft_loss,
        "dpo_final_metrics": {k2: v for k2, v in train_summary["final_metrics"].items() if isinstance(v, float)},
        "settings": {"seed": seed, "num_pairs": num_pairs, "vae_steps": vae_steps, "sft_steps": sft_steps,
                     "dpo_steps": dpo_steps, "sample_steps": sample_steps, "beta": beta,
                     "learning_rate": learning_rate},
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    summary["report"] = str(_report(out, summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
