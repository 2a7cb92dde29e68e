"""`preflab sample RUN/checkpoint-N` of a LoRA run (user trial 16): the checkpoint holds the adapters, which
preflab.loops.diffusion_checkpoint loads unfused on the run's base UNet; the finished run's pipeline holds the same
step's weights with the adapters fused in (preflab.diffusion.pipeline.merged_denoiser). The two are the same model up
to float rounding: the noise prediction on the same input agrees to 1e-5, the DDIM latents of the same prompts and
seeds to 1e-4, and the PNGs `preflab sample` writes differ by at most 1 of 255 in a pixel (uint8 rounding of
nearly equal floats). The adapters trained (the prediction moves away from the base UNet's by far more), so the
comparison is not between two untouched models."""
import json

import pytest
import torch

pytest.importorskip("diffusers")

from test_sample_cli import _png, _sample  # noqa: E402  (tests/diffusion is on sys.path)

STEPS = 2
PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from preflab.config import config_from_dict
    from preflab.diffusion.pipeline import tiny_text_to_image_pipeline
    from preflab.diffusion.shapes import write_pair_dataset
    from preflab.loops.diffusion import DiffusionRun

    root = tmp_path_factory.mktemp("sample-lora")
    tiny_text_to_image_pipeline(0).save_pretrained(root / "tiny")
    train = write_pair_dataset(root / "data", 4, seed=0)
    DiffusionRun(config_from_dict({
        "task": "diffusion", "loss_type": "diffusion_dpo", "model_name_or_path": str(root / "tiny"),
        "dataset_name": str(train), "beta": 200.0, "resolution": 16, "per_device_train_batch_size": 4,
        "max_steps": 1, "save_steps": 1, "learning_rate": 5e-2, "lr_scheduler_type": "constant", "use_cpu": True,
        "disable_tqdm": True, "seed": 3, "sample_steps": STEPS, "eval_fraction": 0, "report_to": "none",
        "use_peft": True, "lora_r": 4, "lora_alpha": 8, "output_dir": str(root / "run")})).train()
    assert (root / "run" / "checkpoint-1" / "model.safetensors").is_file()
    return root


def _samplers(lora_run):
    from preflab.loops.sample_cli import PipelineSampler
    from preflab.models.run_config import run_config

    saved = run_config(lora_run / "run")
    return (PipelineSampler(str(lora_run / "run" / "checkpoint-1"), saved),
            PipelineSampler(str(lora_run / "run"), saved))


def test_the_unfused_checkpoint_predicts_and_samples_as_the_fused_final_pipeline(lora_run):
    from preflab.diffusion.pipeline import components_of, load_pipeline, sample_latents

    checkpoint, final = _samplers(lora_run)
    assert any("lora_A" in name for name, _ in checkpoint.denoiser.named_parameters())  # unfused adapters
    assert not any("lora" in name for name, _ in final.denoiser.named_parameters())  # fused, plain weights
    base = components_of(load_pipeline(str(lora_run / "tiny"))).denoiser.float().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, base.config.in_channels, 8, 8, generator=g)
    text = torch.randn(2, 4, base.config.cross_attention_dim, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        got = checkpoint.denoiser.eval()(x, t, encoder_hidden_states=text).sample
        want = final.denoiser.eval()(x, t, encoder_hidden_states=text).sample
        plain = base(x, t, encoder_hidden_states=text).sample
    assert (got - want).abs().max().item() < 1e-5
    assert (got - plain).abs().max().item() > 1e-3  # the adapters trained: not the base model
    seeds = [3 * 100003 + c for c in range(len(PROMPTS))]
    a = sample_latents(checkpoint.components, checkpoint.denoiser, PROMPTS, seeds, STEPS, 1.0)
    b = sample_latents(final.components, final.denoiser, PROMPTS, seeds, STEPS, 1.0)
    assert (a - b).abs().max().item() < 1e-4


def test_preflab_sample_of_the_lora_checkpoint_writes_the_final_runs_pixels_within_one_level(lora_run, capsys):
    args = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num-images-per-prompt", "2"]
    run = lora_run / "run"
    assert _sample(capsys, run, *args)[0] == 0
    status, err = _sample(capsys, run / "checkpoint-1", *args)
    assert status == 0, err
    final = json.loads((run / "samples" / "samples.json").read_text())["samples"]
    got = json.loads((run / "samples-checkpoint-1" / "samples.json").read_text())["samples"]
    assert [s["file"] for s in got] == [s["file"] for s in final] and len(got) == 4
    for sample in got:
        a = _png(run / "samples-checkpoint-1" / sample["file"]).int()
        b = _png(run / "samples" / sample["file"]).int()
        assert (a - b).abs().max().item() <= 1, sample["file"]
