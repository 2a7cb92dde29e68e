"""`task: diffusion` runs on the tiny pipeline: reload with diffusers, LoRA fusing, exact resume, each method's loss
through the trainer equals the objective on independently computed scores, modality refusal."""
import copy
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from preflab.errors import ConfigError  # noqa: E402
from preflab.loops.diffusion import DiffusionRun, draw_seed  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from flow_checks import diffusion_cfg  # noqa: E402

METHODS = ("diffusion_dpo", "smpo_diffusion", "diffusion_inpo", "dcpo", "ppd", "self_npo")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from preflab.diffusion.pipeline import tiny_text_to_image_pipeline
    from preflab.diffusion.shapes import write_pair_dataset

    root = tmp_path_factory.mktemp("diffusion-run")
    tiny_text_to_image_pipeline(0).save_pretrained(root / "tiny")
    return {"model": str(root / "tiny"), "train": str(write_pair_dataset(root / "data", 8, seed=0)),
            "eval": str(write_pair_dataset(root / "data", 4, seed=1, name="test")), "root": root}


def make_cfg(assets, out, **overrides):
    raw = {"task": "diffusion", "model_name_or_path": assets["model"], "dataset_name": assets["train"],
           "loss_type": "diffusion_dpo", "beta": 200.0, "resolution": 16, "per_device_train_batch_size": 4,
           "max_steps": 2, "learning_rate": 1e-3, "lr_scheduler_type": "constant", "logging_steps": 1,
           "output_dir": str(out), "use_cpu": True, "disable_tqdm": True}
    return diffusion_cfg(raw, **overrides)


def unet_state(unet):
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


@pytest.mark.parametrize("method", METHODS)
def test_each_method_has_an_offline_example_config(method):
    from pathlib import Path

    from preflab.config import load_config
    from preflab.loops.diffusion import check_diffusion_objective, check_diffusion_options

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "examples" / "diffusion" / f"{method}.yaml")
    assert cfg.task == "diffusion" and cfg.loss_type == method and cfg.model_name_or_path == "builtin:tiny-sd"
    check_diffusion_objective(cfg, cfg.objective())
    check_diffusion_options(cfg)
    assert (root / cfg.dataset_name).is_file() and (root / cfg.eval_dataset_name).is_file()


@pytest.mark.slow
def test_trained_pipeline_reloads_with_diffusers_and_generates(assets, tmp_path):
    from diffusers import DiffusionPipeline

    run = DiffusionRun(make_cfg(assets, tmp_path / "run"))
    before = unet_state(run.module.unet)
    summary = run.train()
    after = unet_state(run.module.unet)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    pipe = DiffusionPipeline.from_pretrained(summary["model_dir"])
    loaded = pipe.unet.state_dict()
    assert all(torch.equal(loaded[k], after[k]) for k in after)
    image = pipe("a red disc", num_inference_steps=2, height=16, width=16, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 16, 16) and torch.isfinite(image).all()
    # preflab report: loss curves from metrics.jsonl and the run's reference / trained sample grid
    from PIL import Image

    from preflab.report.html import write_report

    grid = Image.open(tmp_path / "run" / "samples.png")
    assert grid.size == ((8 * 18 + 2) * 4, (2 * 18 + 2) * 4)  # 8 prompts, 2 rows of 16 px + 2 px gaps, x4
    html = write_report([tmp_path / "run"], tmp_path / "report.html").read_text()
    assert "<h2>Samples</h2>" in html and html.count("data:image/png;base64,") >= 2


def test_lora_run_fuses_adapters_and_its_reference_is_the_base_unet(assets, tmp_path):
    from diffusers import UNet2DConditionModel

    run = DiffusionRun(make_cfg(assets, tmp_path / "lora", use_peft=True, lora_r=4, lora_alpha=4))
    base = UNet2DConditionModel.from_pretrained(assets["model"], subfolder="unet")
    summary = run.train()
    run.module.eval()  # LoRA dropout off
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t, cond = torch.tensor([10, 500]), torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        policy, reference = run.module(x, t, cond), run._reference(x, t, cond)
        fused = UNet2DConditionModel.from_pretrained(summary["model_dir"], subfolder="unet")(x, t, cond).sample
        plain = base(x, t, cond).sample
    assert torch.allclose(reference, plain, atol=1e-6)
    assert (policy - plain).abs().max() > 1e-4  # the adapters moved the policy
    assert torch.allclose(fused, policy, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["diffusion_inpo", "self_npo"])
def test_resume_equals_the_uninterrupted_run(assets, tmp_path, method, stop_at_step):
    """4 steps; a run that saved checkpoint-2 (stopped when step 3 asks for its batch: nothing after the checkpoint
    is read) and the run resumed from it end with the uninterrupted run's UNet (and self_npo's EMA teacher) to 1e-6."""
    extra = {"loss_type": method, "max_steps": 4, "per_device_train_batch_size": 2}
    if method == "diffusion_inpo":
        extra["diffusion_noising"] = {"num_inversion_steps": 2}
    else:
        extra["self_npo_ema_decay"] = 0.5  # a teacher that moves a lot: a lost EMA state would show
    whole = DiffusionRun(make_cfg(assets, tmp_path / "whole", **extra))
    whole.train()
    first = DiffusionRun(make_cfg(assets, tmp_path / "first", save_steps=2, **extra))
    with stop_at_step(first, 2):
        first.train()
    assert (tmp_path / "first" / "checkpoint-2" / "COMPLETE").is_file()
    resumed = DiffusionRun(make_cfg(assets, tmp_path / "resumed", resume_from_checkpoint=str(tmp_path / "first" /
                                                                                              "checkpoint-2"), **extra))
    summary = resumed.train()
    assert summary["resumed_from_step"] == 2
    a, b = unet_state(whole.module.unet), unet_state(resumed.module.unet)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    if method == "self_npo":
        ta, tb = unet_state(whole.teacher), unet_state(resumed.teacher)
        assert max((ta[k] - tb[k]).abs().max().item() for k in ta) <= 1e-6


def independent_loss(run, index, step, user_embeds=None):
    """The objective on scores computed here from the examples' images and captions, with the run's documented
    draws (t, eps per pair from (seed, step, position); the batch generator from (seed, step, "batch", first)).
    user_embeds: ppd's [B, L_u, d_u] given here (else each user's row of the run's table)."""
    from preflab.diffusion.denoiser import as_denoiser
    from preflab.diffusion.pipeline import encode_images, encode_prompts
    from preflab.diffusion.self_npo import self_npo_batch
    from preflab.diffusion.user_branch import PPDDenoiser
    from preflab.scoring.diffusion import DiffusionPairs

    items = [run.train_data[i] for i in index]
    comps, unet, seed = run.components, run.module.unet, run.cfg.seed
    inputs = run.pairs(index, run.train_data)  # the cached encodings (checked against fresh ones below)
    chosen = inputs.chosen
    assert torch.allclose(chosen, encode_images(comps, torch.stack([x.chosen for x in items])), atol=1e-5)
    prompts = [x.prompt for x in items]
    cond = inputs.cond["encoder_hidden_states"] if run.ppd else inputs.cond
    assert torch.allclose(cond, encode_prompts(comps, prompts), atol=1e-5)
    generator = torch.Generator().manual_seed(draw_seed(seed, step, "batch", index[0]))
    if run.self_npo:
        uncond = run.text[""]["states"].expand(len(items), -1, -1)
        j, eps, u, eps2 = [], [], [], []  # per sample from (seed, step, "npo", position): j, eps, u, eps2
        for i in index:
            g = torch.Generator().manual_seed(draw_seed(seed, step, "npo", i))
            j.append(torch.randint(0, 25, (1,), generator=g))
            eps.append(torch.randn(chosen.shape[1:], generator=g))
            u.append(torch.rand(1, generator=g, dtype=torch.float64))
            eps2.append(torch.randn(chosen.shape[1:], generator=g))
        batch = self_npo_batch(as_denoiser(unet), as_denoiser(run.teacher), chosen, cond, uncond, run.schedule,
                               num_ddim_steps=25, rollout_steps=2, teacher_guidance=-1.0, start_index=torch.cat(j),
                               noise=torch.stack(eps), u=torch.cat(u), noise2=torch.stack(eps2))
        return run.objective(batch).loss
    rejected = inputs.rejected
    cond_l = inputs.cond_rejected
    if run.dcpo:
        assert torch.allclose(cond_l, encode_prompts(comps, [x.cond_rejected for x in items]), atol=1e-5)
    policy, reference = as_denoiser(unet), as_denoiser(run.reference) if run.reference is not None else None
    if run.ppd:
        e = user_embeds
        if e is None:
            users = run.module.users(torch.tensor([run.user_ids.index(x.user) for x in items]))
            e = users.reshape(len(items), run.cfg.user_embedding_tokens, -1)
        cond = {"encoder_hidden_states": cond, "user_embeds": e}
        policy, reference = PPDDenoiser(unet, run.module.user_branch), PPDDenoiser(unet, run.module.user_branch,
                                                                                   use_user=False)
    extras = {}
    if items[0].preference_prob is not None:
        extras["preference_prob"] = torch.tensor([x.preference_prob for x in items], dtype=torch.float64)
    pairs = DiffusionPairs(chosen, rejected, cond, cond_l, [x.row_id for x in items], extras)
    ts, noise = [], []
    for i in index:
        g = torch.Generator().manual_seed(draw_seed(seed, step, i))
        ts.append(run.scorer.noiser.sample_timesteps(1, g))
        noise.append(torch.randn(chosen.shape[1:], generator=g))
    if run.scorer.noiser.mode != "forward":  # DDIM inversion's jitter: one generator per pair
        generator = [torch.Generator().manual_seed(draw_seed(seed, step, "invert", i)) for i in index]
    noised = run.scorer.noiser(chosen, rejected, generator, policy, pairs.cond,
                               cond if cond_l is None else cond_l, timesteps=torch.cat(ts), noise=torch.stack(noise))
    return run.objective(run.scorer(policy, pairs, reference, noised=noised)).loss


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_loss_through_the_trainer_equals_the_objective_on_the_scorers_outputs(assets, tmp_path, method):
    extra = {"caption_perturbation": "medium"} if method == "dcpo" else {}
    if method in ("smpo_diffusion", "diffusion_inpo"):
        extra["diffusion_noising"] = {"num_inversion_steps": 2}
    run = DiffusionRun(make_cfg(assets, tmp_path / method, loss_type=method, **extra))
    with torch.no_grad():  # policy != reference, so the loss is not log 2 by construction
        g = torch.Generator().manual_seed(3)
        for p in run.module.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    mb = run.micro_batches(1)[0]
    trainer_loss = run.forward(mb).loss
    with torch.no_grad():
        expected = independent_loss(run, mb.index, 1)
    assert trainer_loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    if method != "self_npo":
        assert abs(trainer_loss.item() - math.log(2)) > 1e-4
    if method == "dcpo":  # the rejected image is conditioned on its own (perturbed) caption
        assert all(x.caption_rejected != x.prompt for x in run.train_data)


def test_dcpo_inversion_inverts_the_rejected_image_under_its_own_caption(assets, tmp_path):
    """DCPO with DDIM-inversion noising: the rejected image is inverted under its (perturbed) rejected caption, the
    chosen one under the prompt; the trainer's loss equals the objective on scores computed here that way."""
    run = DiffusionRun(make_cfg(assets, tmp_path / "dcpo_inv", loss_type="dcpo", caption_perturbation="medium",
                                diffusion_noising={"mode": "ddim_invert", "num_inversion_steps": 2}))
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in run.module.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    mb = run.micro_batches(1)[0]
    with torch.no_grad():
        trainer_loss = run.forward(mb).loss
        expected = independent_loss(run, mb.index, 1)
    assert run.scorer.noiser.mode == "ddim_invert"
    assert trainer_loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)


def test_a_text_objective_in_a_diffusion_run_is_refused_before_any_model_loads(assets, tmp_path):
    with pytest.raises(ConfigError, match="scores text models but task .diffusion."):  # already at config load
        DiffusionRun(make_cfg(assets, tmp_path / "x", loss_type="sigmoid", beta=0.1,
                              model_name_or_path="/no/such/pipeline"))


@pytest.mark.parametrize("bad", [{"resolution": 0}, {"caption_perturbation": "loud"},
                                 {"diffusion_noising": {"num_inversion_step": 5}},
                                 {"loss_type": "self_npo", "self_npo_ema_decay": 2.0}])
def test_impossible_diffusion_options_are_refused_before_any_model_loads(assets, tmp_path, bad):
    with pytest.raises(ConfigError):
        DiffusionRun(make_cfg(assets, tmp_path / "x", model_name_or_path="/no/such/pipeline", **bad))


def test_a_text_objective_is_refused_through_the_cli(assets, tmp_path, capsys):
    from preflab.cli import main

    code = main(["train", "task=diffusion", "loss_type=sigmoid", "model_name_or_path=/no/such/pipeline",
                 f"dataset_name={assets['train']}", f"output_dir={tmp_path / 'x'}", "use_cpu=true"])
    assert code == 2 and "scores text models but task 'diffusion'" in capsys.readouterr().err


def test_eval_reports_implicit_accuracy_of_the_policy(assets, tmp_path):
    run = DiffusionRun(make_cfg(assets, tmp_path / "ev", eval_dataset_name=assets["eval"], max_steps=1))
    metrics = run.evaluate()
    assert metrics["eval_implicit_accuracy"] == 0.5  # policy == reference: every pair is a tie (counted 0.5)
    assert metrics["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert copy.copy(run.eval_data) and len(run.eval_data) == 4


@pytest.mark.slow
def test_preflab_eval_reproduces_the_runs_final_eval_and_ties_against_itself(assets, tmp_path):
    from preflab.loops.diffusion_eval import evaluate_diffusion_run, shapes_reward

    out = tmp_path / "evrun"
    summary = DiffusionRun(make_cfg(assets, out, eval_dataset_name=assets["eval"])).train()
    final = summary["final_metrics"]
    result = evaluate_diffusion_run(str(out), assets["eval"])
    assert result["metrics"]["implicit_accuracy"] == pytest.approx(final["eval_implicit_accuracy"], abs=1e-9)
    assert result["metrics"]["loss"] == pytest.approx(final["eval_loss"], rel=1e-5)
    itself = evaluate_diffusion_run(str(out), assets["eval"], reference=str(out), reward_fn=shapes_reward,
                                    num_prompts=2)
    assert itself["metrics"]["implicit_accuracy"] == 0.5 and itself["metrics"]["win_rate"] == 0.5
    assert itself["win_rate"]["ties"] == 2
    # against the base model, one prompt: the win rate is the policy's, 1 when its sample scores higher, else 0
    weights = torch.arange(3 * 16 * 16, dtype=torch.float64).reshape(3, 16, 16)
    weighted = lambda images, prompts: [float((x.double() * weights).sum()) for x in images]  # noqa: E731
    base = evaluate_diffusion_run(str(out), assets["eval"], reward_fn=weighted, num_prompts=1)["metrics"]
    assert base["reward/policy"] != base["reward/reference"]
    assert base["win_rate"] == (1.0 if base["reward/policy"] > base["reward/reference"] else 0.0)


def test_preflab_eval_task_diffusion_prints_its_note_after_the_metric_block(assets, tmp_path, capsys):
    """`preflab eval RUN --task diffusion` printed implicit_accuracy and loss after format_summary's notes (the note
    that --data is the run's training data sat between the metrics); now header, metrics, notes, `wrote`."""
    import json
    import re

    from preflab.cli import main

    out = tmp_path / "run"
    DiffusionRun(make_cfg(assets, out, max_steps=1)).train()
    capsys.readouterr()
    assert main(["eval", str(out), "--task", "diffusion", "--data", assets["train"], "--out",
                 str(tmp_path / "e.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("preflab eval: ")):]
    metrics = json.loads((tmp_path / "e.json").read_text())["metrics"]
    shown = [re.fullmatch(r"  (\S+) +(-?\d+\.\d{4})", line) for line in lines[1:-2]]
    assert all(shown) and [m.group(1) for m in shown] == ["rewards/accuracies", "implicit_accuracy", "loss"], lines
    assert [float(m.group(2)) for m in shown] == [round(metrics[m.group(1)], 4) for m in shown]
    assert lines[-2] == (f"  note: --data {assets['train']} (split train) is the run's training data (dataset_name): "
                         "every row was trained on, so these metrics are not held-out; evaluate a held-out file for "
                         "generalization")
    assert lines[-1] == f"  wrote {tmp_path / 'e.json'}"


@pytest.fixture(scope="module")
def split_run(assets):
    """A one-step run trained on assets' train.jsonl; its data folder holds train.jsonl (8 pairs) and test.jsonl (4)."""
    out = assets["root"] / "split-run"
    DiffusionRun(make_cfg(assets, out, max_steps=1)).train()
    return out


def _captions_only_note(n: int, train: str) -> str:
    """The overlap note of n held-out pairs whose captions, and no pair, the run trained on (train: its data)."""
    return (f"{n} of {n} eval pairs (100.0%) have a caption the run trained on, and 0 (0.0%) are training pairs (same "
            f"captions and the two images' pixels), compared with the run's training data {train} (dataset_name, "
            "split train): the pairs are held-out but their prompts are not; evaluate pairs whose prompts the run did "
            "not train on for generalization to new prompts")


def _diffusion_eval_json(run, data, tmp_path, *split):
    import json

    from preflab.cli import main

    assert main(["eval", str(run), "--task", "diffusion", "--data", str(data), "--out", str(tmp_path / "e.json"),
                 *split]) == 0
    return json.loads((tmp_path / "e.json").read_text())


def test_preflab_eval_task_diffusion_reads_the_test_split_of_a_data_folder(assets, split_run, tmp_path, capsys):
    """--task diffusion read the split 'train' (the training pairs) of a folder with train.jsonl and test.jsonl when
    no --split was given; it now reads 'test' as the policy and reward evals do (open_eval_split), and says so."""
    folder = Path(assets["train"]).parent
    result = _diffusion_eval_json(split_run, folder, tmp_path)
    assert result["num_pairs"] == 4 and result["split"] == "test"  # test.jsonl: 4 pairs; train.jsonl: 8
    note = (f"read split 'test' of {folder}: no --split was given and it has a split 'test', read by default as a "
            "run's eval_split is; pass --split to read another")
    assert result["notes"][0] == note and f"  note: {note}" in capsys.readouterr().out.splitlines()
    # every held-out caption is a training caption (the shapes data has 6), no held-out pair a training pair: said
    assert (result["overlap_with_training"]["prompts"], result["overlap_with_training"]["pairs"]) == (4, 0)
    assert result["notes"][1:] == [_captions_only_note(4, assets["train"])]


def test_preflab_eval_task_diffusion_reads_train_of_a_folder_without_test(split_run, tmp_path):
    from preflab.diffusion.shapes import write_pair_dataset

    folder = write_pair_dataset(tmp_path / "only", 3, seed=2).parent
    result = _diffusion_eval_json(split_run, folder, tmp_path)
    assert result["num_pairs"] == 3 and result["split"] == "train"
    assert result["notes"][0] == (f"read split 'train' of {folder}: no --split was given and it has no split 'test' "
                                  "(a single file or a folder without one reads as 'train'); pass --split to read "
                                  "another")
    assert (result["overlap_with_training"]["prompts"], result["overlap_with_training"]["pairs"]) == (3, 0)


def test_preflab_eval_task_diffusion_ignores_the_runs_gradient_accumulation(split_run, tmp_path):
    """A run trained with gradient_accumulation_steps 4 and 3 held-out pairs: eval takes no step, so the training
    batch plan must not refuse them ("3 training rows are fewer than one global batch (4 = ...)"); the metrics are
    those of the same weights under the run's own config."""
    import shutil

    import yaml

    from preflab.diffusion.shapes import write_pair_dataset

    folder = write_pair_dataset(tmp_path / "only", 3, seed=2).parent
    run = tmp_path / "run"
    shutil.copytree(split_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "gradient_accumulation_steps": 4}))
    accumulated = _diffusion_eval_json(run, folder, tmp_path)
    assert accumulated["num_pairs"] == 3
    assert accumulated["metrics"] == _diffusion_eval_json(split_run, folder, tmp_path)["metrics"]


def test_preflab_eval_task_diffusion_split_train_overrides_the_test_default(assets, split_run, tmp_path):
    folder = Path(assets["train"]).parent
    result = _diffusion_eval_json(split_run, folder, tmp_path, "--split", "train")
    assert result["num_pairs"] == 8 and result["split"] == "train"
    assert result["notes"][0] == f"read split 'train' of {folder} (--split)"
    # the run's own training pairs under the folder's name (not its dataset_name, so no same-file note): counted
    assert (result["overlap_with_training"]["prompts"], result["overlap_with_training"]["pairs"]) == (8, 8)
    assert result["notes"][1].startswith("8 of 8 eval pairs (100.0%) have a caption the run trained on, and 8 "
                                         "(100.0%) are training pairs")


def test_encodings_are_cached_on_disk_by_fingerprint(assets, tmp_path, monkeypatch):
    import preflab.diffusion.pipeline as pipeline

    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    first = DiffusionRun(make_cfg(assets, tmp_path / "a"))

    def refuse(*args, **kwargs):
        raise AssertionError("encoded again although the cache holds these inputs")

    monkeypatch.setattr(pipeline, "encode_images", refuse)
    monkeypatch.setattr(pipeline, "encode_prompts", refuse)
    second = DiffusionRun(make_cfg(assets, tmp_path / "b"))
    a, b = first.pairs([0, 1, 2], first.train_data), second.pairs([0, 1, 2], second.train_data)
    assert torch.equal(a.chosen, b.chosen) and torch.equal(a.rejected, b.rejected) and torch.equal(a.cond, b.cond)
    import preflab.loops.diffusion as diffusion_loop

    # another encodings format (a preflab whose encoding changed): the entries the older one wrote are not read
    monkeypatch.setattr(diffusion_loop, "ENCODINGS_FORMAT", diffusion_loop.ENCODINGS_FORMAT + 1)
    with pytest.raises(AssertionError, match="encoded again"):
        second._encode_all()
    monkeypatch.setattr(diffusion_loop, "ENCODINGS_FORMAT", diffusion_loop.ENCODINGS_FORMAT - 1)
    second._encode_all()  # the same format again: read from the cache
    with torch.no_grad():  # other VAE weights: another fingerprint, so a fresh encoding (which is refused here)
        second.components.vae.encoder.conv_in.bias.add_(1.0)
    with pytest.raises(AssertionError, match="encoded again"):
        second._encode_all()


def test_gradient_checkpointing_gives_the_same_training(assets, tmp_path):
    plain = DiffusionRun(make_cfg(assets, tmp_path / "plain", max_steps=1))
    plain.train()
    ckpt = DiffusionRun(make_cfg(assets, tmp_path / "ckpt", max_steps=1, gradient_checkpointing=True))
    assert ckpt.module.unet.is_gradient_checkpointing
    ckpt.train()
    a, b = unet_state(plain.module.unet), unet_state(ckpt.module.unet)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_a_diffusion_run_logs_the_images_it_trained_on_not_tokens(assets, tmp_path):
    """num_tokens / tokens_per_second counted images; a step of 4 pairs is 8 images, and a metric named tokens is
    never written."""
    import json

    run = DiffusionRun(make_cfg(assets, tmp_path / "count", max_steps=2, per_device_train_batch_size=2,
                                gradient_accumulation_steps=2))
    summary = run.train()
    rows = [json.loads(line) for line in (tmp_path / "count" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "loss" in r and "num_images" in r]
    assert [r["num_images"] for r in trained] == [8, 16]
    assert all(r["images_per_second"] > 0 for r in trained)
    assert not any("tokens" in key for r in rows for key in r)
    assert summary["final_metrics"]["num_images"] == 16


def test_self_npo_from_prompts_alone_uses_the_models_own_samples(assets, tmp_path):
    import json

    from diffusers import UNet2DConditionModel

    from preflab.diffusion.pipeline import sample_latents

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["a red disc", "a blue square"] * 2))
    run = DiffusionRun(make_cfg(assets, tmp_path / "npo", loss_type="self_npo", dataset_name=str(data),
                                sample_steps=3, per_device_train_batch_size=2, max_steps=1))
    base = UNet2DConditionModel.from_pretrained(assets["model"], subfolder="unet")
    expected = sample_latents(run.components, base, ["a blue square"], [draw_seed(run.cfg.seed, "x0", 1)], 3)
    assert torch.allclose(run.pairs([1], run.train_data).chosen, expected, rtol=1e-4, atol=1e-4)  # batch of 4 vs 1
    assert run.train()["global_step"] == 1


def test_encoding_per_micro_batch_equals_the_cached_encodings(assets, tmp_path):
    cached = DiffusionRun(make_cfg(assets, tmp_path / "c", loss_type="dcpo", caption_perturbation="weak"))
    fresh = DiffusionRun(make_cfg(assets, tmp_path / "f", loss_type="dcpo", caption_perturbation="weak",
                                  cache_encodings=False))
    assert fresh.latents == {} and list(fresh.text) == [""]
    a, b = cached.pairs([0, 3, 5], cached.train_data), fresh.pairs([0, 3, 5], fresh.train_data)
    for x, y in ((a.chosen, b.chosen), (a.rejected, b.rejected), (a.cond, b.cond), (a.cond_rejected, b.cond_rejected)):
        assert torch.allclose(x, y, atol=1e-5)


def test_v_prediction_targets_come_from_the_schedulers_config(assets, tmp_path):
    from diffusers import DDIMScheduler, DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(assets["model"])
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    run = DiffusionRun(make_cfg(assets, tmp_path / "v"), pipeline=pipe)
    assert run.schedule.prediction_type == "v_prediction"
    pairs = run.pairs([0, 1, 2], run.train_data)
    t, eps = run._draws([0, 1, 2], 0, tuple(pairs.chosen.shape[1:]))
    noised = run.scorer.noiser(pairs.chosen, pairs.rejected, timesteps=t, noise=eps)
    assert torch.allclose(noised.target_chosen, pipe.scheduler.get_velocity(pairs.chosen, eps, t), atol=1e-6)
    assert torch.allclose(noised.noisy_rejected, pipe.scheduler.add_noise(pairs.rejected, eps, t), atol=1e-6)


@pytest.mark.slow
def test_sdxl_layout_trains_with_pooled_embeddings_and_time_ids_and_reloads(assets, tmp_path):
    from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

    from preflab.diffusion.denoiser import as_denoiser
    from preflab.diffusion.pipeline import tiny_sdxl_pipeline

    tiny_sdxl_pipeline(0).save_pretrained(tmp_path / "xl")
    run = DiffusionRun(make_cfg(assets, tmp_path / "xlrun", model_name_or_path=str(tmp_path / "xl")))
    cond = run.pairs([0, 1], run.train_data).cond
    assert cond["encoder_hidden_states"].shape == (2, 32, 64)  # the two encoders' states side by side
    assert cond["added_cond_kwargs"]["text_embeds"].shape == (2, 32)
    assert cond["added_cond_kwargs"]["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2
    # the loss through the trainer equals Diffusion-DPO on the UNet called directly with that conditioning
    with torch.no_grad():
        for p in run.module.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    mb = run.micro_batches(0)[0]
    pairs = run.pairs(mb.index, run.train_data)
    t, eps = run._draws(mb.index, 0, tuple(pairs.chosen.shape[1:]))
    noised = run.scorer.noiser(pairs.chosen, pairs.rejected, timesteps=t, noise=eps)
    unet, ref = run.module.unet, run.reference
    direct = run.objective(run.scorer(as_denoiser(unet), pairs, as_denoiser(ref), noised=noised)).loss
    assert run.forward(mb).loss.item() == pytest.approx(direct.item(), rel=1e-6)
    summary = run.train()
    pipe = DiffusionPipeline.from_pretrained(summary["model_dir"])
    assert isinstance(pipe, StableDiffusionXLPipeline)
    image = pipe("a red disc", num_inference_steps=2, height=16, width=16, output_type="pt").images
    assert image.shape == (1, 3, 16, 16)


def test_bf16_autocast_scores_close_to_float32_with_float32_master_weights(assets, tmp_path):
    losses = {}
    for name, extra in (("fp32", {}), ("bf16", {"bf16": True})):  # make_accelerator resets accelerate's precision
        run = DiffusionRun(make_cfg(assets, tmp_path / name, **extra))
        with torch.no_grad():
            g = torch.Generator().manual_seed(3)
            for p in run.module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        out = run.forward(run.micro_batches(0)[0])
        assert out.loss.dtype == torch.float32 and all(p.dtype == torch.float32 for p in run.params)
        losses[name] = (out.loss.item(), float(out.metrics["mse/chosen"]), float(out.metrics["mse/rejected"]))
    assert losses["bf16"][0] != losses["fp32"][0]  # autocast is on
    # the denoising errors agree to bf16's precision (beta = 200 amplifies their ~1e-3 differences in the loss)
    assert losses["bf16"][1:] == pytest.approx(losses["fp32"][1:], rel=1e-2)


def test_ppd_with_precomputed_user_embeddings_takes_held_out_users(assets, tmp_path):
    import json

    from safetensors.torch import save_file

    from preflab.diffusion.user_branch import normalize_user_embeddings

    g = torch.Generator().manual_seed(0)
    table = {f"user{i}": torch.randn(3, 8, generator=g) * 5 for i in range(3)}
    save_file(table, str(tmp_path / "users.safetensors"))
    rows = [json.loads(x) for x in open(assets["eval"])]
    for r in rows:
        r["user_id"] = "user2"  # a user with no training rows
        for side in ("chosen_image", "rejected_image"):
            r[side] = str(assets["root"] / "data" / r[side])
    held_out = tmp_path / "heldout.jsonl"
    held_out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = DiffusionRun(make_cfg(assets, tmp_path / "ppd", loss_type="ppd", eval_dataset_name=str(held_out),
                                user_embeddings=str(tmp_path / "users.safetensors")))
    assert run.module.user_tokens == 3 and not run.module.users.weight.requires_grad
    assert torch.allclose(run.module.users.weight[2], normalize_user_embeddings(table["user2"]).reshape(-1))
    assert all(p is not run.module.users.weight for p in run.params)
    assert run.evaluate()["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)  # zero-initialised W_V^u
    run.train()
    assert run.evaluate()["eval_loss"] != pytest.approx(math.log(2), abs=1e-6)  # the branch reads user2's embedding


def subset_stacks(tmp_path):
    """A user_embeddings file as the PPD release's stage 1 writes it (several 4-pair subsets per user): user0 a
    [3, 3, 8] stack, user1 [2, 3, 8], user2 one [3, 8] embedding (a single subset may be saved 2-D)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    table = {"user0": torch.randn(3, 3, 8, generator=g) * 5, "user1": torch.randn(2, 3, 8, generator=g) * 5,
             "user2": torch.randn(3, 8, generator=g) * 5}
    save_file(table, str(tmp_path / "users.safetensors"))
    return table, str(tmp_path / "users.safetensors")


def documented_subset(seed, epoch, position, count):
    """docs/diffusion.md's rule, computed here from sha256: the first 8 bytes of sha256("seed:ppd-subset:epoch:
    position") little-endian, shifted right by 1, mod S."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:ppd-subset:{epoch}:{position}".encode()).digest()
    return (int.from_bytes(digest[:8], "little") >> 1) % count


def test_ppd_draws_each_pairs_few_shot_subset_per_epoch_from_seed_epoch_and_position(assets, tmp_path):
    """Each training pair's user embedding is the subset documented_subset(seed, step // steps_per_epoch, position,
    S) of its user; it changes between epochs (PPD's per-epoch resampling), not within one, nor with the micro-batch
    split; evaluation reads subset 0; the table keeps every subset standardised."""
    from preflab.diffusion.user_branch import normalize_user_embeddings
    from preflab.loops.diffusion import ppd_subset

    table, path = subset_stacks(tmp_path)
    run = DiffusionRun(make_cfg(assets, tmp_path / "ppd", loss_type="ppd", user_embeddings=path, seed=7))
    assert run.user_rows == {"user0": (0, 3), "user1": (3, 2), "user2": (5, 1)} and run.module.user_tokens == 3
    weight = run.module.users.weight
    assert torch.allclose(weight[4], normalize_user_embeddings(table["user1"][1]).reshape(-1))
    assert torch.allclose(weight[5], normalize_user_embeddings(table["user2"]).reshape(-1))
    assert run.plan.steps_per_epoch == 2  # 8 pairs, batch 4
    train = run.train_data
    drawn = {}
    for step in range(6):  # epochs 0, 1, 2
        for mb in run.micro_batches(step):
            rows = run._user_rows(mb.index, train, step)
            for i, row in zip(mb.index, rows):
                first, count = run.user_rows[train[i].user]
                assert row == first + documented_subset(7, step // 2, i, count) == first + ppd_subset(7, step // 2,
                                                                                                       i, count)
                drawn.setdefault(i, []).append(row - first)
            # two processes (or micro-batches of 2) draw what one batch of 4 draws
            assert rows == run._user_rows(mb.index[:2], train, step) + run._user_rows(mb.index[2:], train, step)
    assert sorted(drawn) == list(range(8)) and all(len(v) == 3 for v in drawn.values())
    assert any(len(set(v)) > 1 for v in drawn.values())  # resampled across epochs
    assert run._user_rows([1], train, 2) == run._user_rows([1], train, 3)  # fixed within an epoch
    assert run._user_rows(list(range(8)), train, "eval") == [run.user_rows[x.user][0] for x in train]  # subset 0


def test_ppd_pair_loss_equals_the_loss_with_its_drawn_subsets_embedding_by_hand(assets, tmp_path):
    """At step 2 (epoch 1) the trainer's loss equals the objective on scores computed here with each pair's
    hand-drawn subset embedding (the file's [L_u, d_u], standardised); with the next subset instead it differs."""
    from preflab.diffusion.user_branch import normalize_user_embeddings

    table, path = subset_stacks(tmp_path)
    run = DiffusionRun(make_cfg(assets, tmp_path / "ppd", loss_type="ppd", user_embeddings=path))
    with torch.no_grad():  # the branch off its zero init, so the user embedding changes the loss
        g = torch.Generator().manual_seed(3)
        for p in run.params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    mb = run.micro_batches(2)[0]
    items = [run.train_data[i] for i in mb.index]

    def embeds(shift):
        out = []
        for i, x in zip(mb.index, items):
            stack = table[x.user] if table[x.user].dim() == 3 else table[x.user][None]
            k = documented_subset(run.cfg.seed, 1, i, len(stack))  # seed 42 (the default), epoch 1
            out.append(normalize_user_embeddings(stack[(k + shift) % len(stack)]))
        return torch.stack(out)

    with torch.no_grad():
        trainer_loss = run.forward(mb).loss.item()
        by_hand = independent_loss(run, mb.index, 2, user_embeds=embeds(0)).item()
        other = independent_loss(run, mb.index, 2, user_embeds=embeds(1)).item()
    assert any(table[x.user].dim() == 3 for x in items)
    assert trainer_loss == pytest.approx(by_hand, rel=1e-5, abs=1e-7)
    assert abs(other - by_hand) > 1e-4


def test_ppd_user_embedding_dropout_zeroes_the_drawn_pairs_embedding_and_the_loss_matches_by_hand(assets, tmp_path):
    """user_embedding_dropout p = 0.5: a training pair is dropped when the first 8 bytes of sha256("seed:ppd-user-
    dropout:epoch:position"), little-endian, >> 1, over 2^63 are < p; its embedding is then zeros, the others read
    their drawn subset. The trainer's loss at step 2 equals the loss by hand with those embeddings; eval never drops."""
    import hashlib

    from preflab.diffusion.user_branch import normalize_user_embeddings

    table, path = subset_stacks(tmp_path)
    run = DiffusionRun(make_cfg(assets, tmp_path / "ppd", loss_type="ppd", user_embeddings=path,
                                user_embedding_dropout=0.5))
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in run.params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    mb = run.micro_batches(2)[0]

    def dropped(i):
        digest = hashlib.sha256(f"{run.cfg.seed}:ppd-user-dropout:1:{i}".encode()).digest()
        return (int.from_bytes(digest[:8], "little") >> 1) / 2 ** 63 < 0.5

    drops = [dropped(i) for i in mb.index]
    assert any(drops) and not all(drops)  # seed 42, step 2: both kinds in the batch
    embeds = []
    for i, drop in zip(mb.index, drops):
        user = run.train_data[i].user
        stack = table[user] if table[user].dim() == 3 else table[user][None]
        e = normalize_user_embeddings(stack[documented_subset(run.cfg.seed, 1, i, len(stack))])
        embeds.append(torch.zeros_like(e) if drop else e)
    with torch.no_grad():
        trainer_loss = run.forward(mb).loss.item()
        by_hand = independent_loss(run, mb.index, 2, user_embeds=torch.stack(embeds)).item()
    assert trainer_loss == pytest.approx(by_hand, rel=1e-5, abs=1e-7)
    assert [r == -1 for r in run._user_rows(mb.index, run.train_data, 2)] == drops
    assert -1 not in run._user_rows(list(range(8)), run.train_data, "eval")
    with pytest.raises(ConfigError, match="user_embedding_dropout"):
        make_cfg(assets, tmp_path / "x", loss_type="ppd", user_embedding_dropout=1.0)


@pytest.mark.parametrize("values, expected", [
    ({"user0": torch.zeros(2, 3, 8), "user1": torch.zeros(2, 4, 8), "user2": torch.zeros(3, 8)},
     r"users\.safetensors: every user's embeddings need the same \[L_u, d_u\].*\[L_u, d_u\] = \[3, 8\]: 'user0' "
     r"\(2, 3, 8\), 'user2' \(3, 8\); \[L_u, d_u\] = \[4, 8\]: 'user1' \(2, 4, 8\)"),
    ({"user0": torch.zeros(2, 3, 8), "user1": torch.zeros(0, 3, 8), "user2": torch.zeros(3, 8)},
     r"users\.safetensors: user 'user1' has an empty tensor of shape \(0, 3, 8\) \(S = 0 subsets"),
    ({"user0": torch.zeros(1, 2, 3, 8), "user1": torch.zeros(3, 8), "user2": torch.zeros(3, 8)},
     r"users\.safetensors: user 'user0' has a tensor of shape \(1, 2, 3, 8\); each user needs one \[L_u, d_u\]"),
    ({"user0": torch.zeros(2, 3, 8), "user1": torch.tensor([[[0.0] * 8] * 3, [[float("nan")] * 8] * 3]),
      "user2": torch.zeros(3, 8)},
     r"users\.safetensors: user 'user1' has non-finite values in subset\(s\) \[1\] of its 2 \(shape \(2, 3, 8\)\)"),
    # one inf value in one subset (not a whole subset of NaN) is refused too
    ({"user0": torch.zeros(2, 3, 8).index_put_((torch.tensor(1), torch.tensor(2), torch.tensor(5)),
                                               torch.tensor(float("inf"))),
      "user1": torch.zeros(3, 8), "user2": torch.zeros(3, 8)},
     r"users\.safetensors: user 'user0' has non-finite values in subset\(s\) \[1\] of its 2 \(shape \(2, 3, 8\)\)"),
])
def test_ppd_refuses_a_bad_user_embedding_stack_naming_file_user_and_shapes(assets, tmp_path, values, expected):
    """The PPD release writes one [n_layers + 1, d] per (user, 4-pair subset); a user's subsets stacked [S, L, d]
    are read, but ragged [L_u, d_u] across users, S = 0, another rank or a NaN subset stop the run."""
    from safetensors.torch import save_file

    save_file(values, str(tmp_path / "users.safetensors"))
    with pytest.raises(ConfigError, match=expected):
        DiffusionRun(make_cfg(assets, tmp_path / "ppd", loss_type="ppd",
                              user_embeddings=str(tmp_path / "users.safetensors")))


def test_ppd_refuses_a_user_embeddings_file_without_tensors():
    from preflab.loops.diffusion import check_user_stacks

    with pytest.raises(ConfigError, match=r"user_embeddings u\.safetensors holds no tensor"):
        check_user_stacks("u.safetensors", {})


@pytest.mark.slow
def test_ppd_with_subsets_resumes_exactly_across_an_epoch_boundary(assets, tmp_path, stop_at_step):
    """4 steps of 2 per epoch; a run checkpointed at step 2 (the end of epoch 0) and resumed draws epoch 1's
    subsets as the uninterrupted run does: the trained user branch equals it to 1e-6."""
    _, path = subset_stacks(tmp_path)
    extra = {"loss_type": "ppd", "user_embeddings": path, "max_steps": 4}
    whole = DiffusionRun(make_cfg(assets, tmp_path / "whole", **extra))
    whole.train()
    first = DiffusionRun(make_cfg(assets, tmp_path / "first", save_steps=2, **extra))
    with stop_at_step(first, 2):
        first.train()
    resumed = DiffusionRun(make_cfg(assets, tmp_path / "resumed", resume_from_checkpoint=str(tmp_path / "first" /
                                                                                              "checkpoint-2"), **extra))
    assert resumed.train()["resumed_from_step"] == 2
    a, b = whole.module.user_branch.state_dict(), resumed.module.user_branch.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert max(a[k].abs().max().item() for k in a if "to_v_user" in k) > 0  # it trained (W_V^u left zero)
    import json  # the saved table's rows of each user's subsets

    saved = json.loads((tmp_path / "whole" / "users.json").read_text())
    assert saved == {"users": ["user0", "user1", "user2"], "tokens": 3,
                     "subsets": {"user0": [0, 3], "user1": [3, 2], "user2": [5, 1]}}


def test_preflab_eval_banner_counts_the_held_out_pairs_it_scores(assets, tmp_path, capsys):
    """The eval reuses the run's data loader; its banner said '4 train, 0 eval examples' for the 4 pairs it scores."""
    import shutil

    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    run_dir = tmp_path / "run"
    shutil.copytree(assets["model"], run_dir)
    make_cfg(assets, tmp_path / "unused").save(run_dir / "config.yaml")
    result = evaluate_diffusion_run(str(run_dir), assets["eval"], reference=str(run_dir))
    out = capsys.readouterr().out
    assert "4 held-out pairs to score" in out and "train," not in out
    assert result["num_pairs"] == 4 and result["metrics"]["implicit_accuracy"] == 0.5


@pytest.mark.parametrize("disable", [True, False])
def test_diffusion_disable_dropout_reaches_the_denoiser(assets, tmp_path, disable):
    """disable_dropout (on by default) was never read by task: diffusion: a denoiser's dropout stayed active."""
    from preflab.diffusion.pipeline import load_pipeline

    pipeline = load_pipeline(assets["model"])
    pipeline.unet.down_blocks[0].resnets[0].dropout = torch.nn.Dropout(0.25)
    run = DiffusionRun(make_cfg(assets, tmp_path / "run", disable_dropout=disable), pipeline=pipeline)
    rates = [m.p for m in run.module.unet.modules() if isinstance(m, torch.nn.Dropout)]
    assert max(rates) == (0.0 if disable else 0.25)


@pytest.mark.parametrize("method", ["diffusion_inpo", "smpo_diffusion", "self_npo"])
def test_inversion_jitter_of_a_pair_does_not_depend_on_its_micro_batch(assets, tmp_path, method):
    """DDIM inversion's eta jitter was drawn from one generator per micro-batch (seeded by its first position), so a
    pair's inverted latents depended on the batch it sat in: two gloo processes (batch 2 each) logged step-2 loss
    0.6431 where one process (batch 4) logged 0.7559 for examples/diffusion/diffusion_inpo.yaml. Now each pair has its
    own generator, so scoring [0, 1, 2, 3] at once equals scoring [0, 1] and [2, 3] (to float rounding)."""
    extra = {} if method == "self_npo" else {"diffusion_noising": {"num_inversion_steps": 3, "inversion_eta": 0.5}}
    run = DiffusionRun(make_cfg(assets, tmp_path / method, loss_type=method, **extra))
    with torch.no_grad():
        whole = run.score([0, 1, 2, 3], 1)
        halves = [run.score([0, 1], 1), run.score([2, 3], 1)]
    # self_npo (its start step, noises and re-noising step per micro-batch before; 2 processes logged step-1 loss
    # 5.07 where one logged 3.50): the student's x0 prediction and the teacher's target
    for side in ("policy", "ref") if method == "self_npo" else ("policy_chosen", "policy_rejected"):
        together = getattr(whole, side).token_logps
        apart = torch.cat([getattr(h, side).token_logps for h in halves])
        # the same draws; only the UNet's batched float rounding differs (batch 4 vs 2)
        assert torch.allclose(together, apart, atol=1e-5, rtol=0), (side, (together - apart).abs().max())


def test_captions_longer_than_the_text_tokenizer_are_counted_and_said(assets, tmp_path, capsys):
    """A caption past CLIP's limit (the tiny pipeline's character tokenizer: 32 tokens, no special tokens) was cut
    without a word: its end never conditioned the model (chaos trial). Now counted in summary.json's data and said;
    a caption of exactly 32 tokens is not cut."""
    import json

    rows = [json.loads(line) for line in Path(assets["train"]).read_text().splitlines()]
    rows[0]["prompt"], rows[1]["prompt"] = "a" * 33, "b" * 32  # 33 and 32 tokens (one per character)
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({**r, "chosen_image": str(Path(assets["train"]).parent / r["chosen_image"]),
                                        "rejected_image": str(Path(assets["train"]).parent / r["rejected_image"])})
                            + "\n" for r in rows))
    run = DiffusionRun(make_cfg(assets, tmp_path / "out", dataset_name=str(data), max_steps=1))
    assert run.data_report["captions_truncated"] == {"tokenizer": {"captions": 1, "max_tokens": 32}}
    distinct = len({r["prompt"] for r in rows})
    assert (f"preflab: note: data: of the {distinct} distinct captions, some are longer than a text encoder's limit "
            "and are cut to their first tokens: 1 by tokenizer (max 32 tokens).") in capsys.readouterr().out


def test_diffusion_epoch_strategies_evaluate_and_save_each_epoch(assets, tmp_path):
    """TRL's eval_strategy / save_strategy: epoch in a diffusion run: 8 pairs / batch 4 = 2 steps an epoch. Before:
    eval_strategy epoch evaluated at the end only (the run never resolved an epoch's steps), save_strategy refused."""
    import json

    run = DiffusionRun(make_cfg(assets, tmp_path / "run", max_steps=4, eval_dataset_name=assets["eval"],
                                eval_strategy="epoch", save_strategy="epoch"))
    run.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4]
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_weight_decay_applies_to_every_unet_parameter_as_diffusers_scripts_build_adamw(assets, tmp_path):
    """Diffusion runs keep one parameter group with weight_decay on every trainable parameter (diffusers'
    train_diffusion_dpo.py: AdamW(unet.parameters(), weight_decay=adam_weight_decay)); the UNet's biases and norm
    weights are in it, where a text run (transformers' groups) would exempt them."""
    run = DiffusionRun(make_cfg(assets, tmp_path / "run", max_steps=1, weight_decay=0.01))
    groups = run.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.01]
    named = dict(run.module.unet.named_parameters())
    held = {id(p) for p in groups[0]["params"]}
    assert any("bias" in n or "norm" in n for n in named) and all(id(p) in held for p in named.values())
