"""`preflab sample RUN/checkpoint-N`: a checkpoint's trained parameters on the run's base pipeline sample exactly what
the finished run with the same weights samples (a 1-step run and its checkpoint-1, pixel for pixel), for a
Diffusion-DPO run and a ppd run (its user table read from the checkpoint's trainer_state.json and the run's
user_embeddings file, checked against the recorded sha256); the samples go beside the checkpoint, never into it; what
cannot work is refused, naming what to do: a ppd checkpoint without its embeddings file or with a changed one, a
checkpoint without model.safetensors, weights that do not fit the run's config, a base model missing here."""
import json
import shutil

import pytest
import torch
import yaml

pytest.importorskip("diffusers")

from test_sample_cli import _png, _sample  # noqa: E402  (tests/diffusion is on sys.path; `preflab sample` in process)

STEPS = 2
PROMPTS = ["a red circle", "a blue square"]


def _images(folder) -> dict:
    record = json.loads((folder / "samples.json").read_text())
    return {s["file"]: _png(folder / s["file"]) for s in record["samples"]}, record


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two 1-step runs on the tiny pipeline, each saving checkpoint-1 (the final weights): Diffusion-DPO (every UNet
    weight trained, lr 1e-2 so the samples move) and ppd on precomputed users user0 / user1 (user2 only in the
    file)."""
    from safetensors.torch import save_file

    from preflab.config import config_from_dict
    from preflab.diffusion.pipeline import tiny_text_to_image_pipeline
    from preflab.diffusion.shapes import write_pair_dataset
    from preflab.loops.diffusion import DiffusionRun

    root = tmp_path_factory.mktemp("sample-checkpoint")
    tiny_text_to_image_pipeline(0).save_pretrained(root / "tiny")
    train = write_pair_dataset(root / "data", 4, seed=0)
    g = torch.Generator().manual_seed(0)
    save_file({u: torch.randn(3, 8, generator=g) * 5 for u in ("user0", "user1", "user2")},
              str(root / "users.safetensors"))
    common = {"task": "diffusion", "model_name_or_path": str(root / "tiny"), "dataset_name": str(train),
              "beta": 200.0, "resolution": 16, "per_device_train_batch_size": 4, "max_steps": 1, "save_steps": 1,
              "learning_rate": 1e-2, "lr_scheduler_type": "constant", "use_cpu": True, "disable_tqdm": True,
              "seed": 3, "sample_steps": STEPS, "eval_fraction": 0, "report_to": "none"}
    DiffusionRun(config_from_dict({**common, "loss_type": "diffusion_dpo", "output_dir": str(root / "dpo")})).train()
    DiffusionRun(config_from_dict({**common, "loss_type": "ppd", "user_embeddings": str(root / "users.safetensors"),
                                   "output_dir": str(root / "ppd")})).train()
    for name in ("dpo", "ppd"):
        assert (root / name / "checkpoint-1" / "model.safetensors").is_file()
    return root


def test_a_checkpoint_samples_what_the_finished_run_with_its_weights_samples(runs, capsys):
    from preflab.diffusion.pipeline import components_of, load_pipeline, sample_images

    final, checkpoint = runs / "dpo", runs / "dpo" / "checkpoint-1"
    before = sorted(p.name for p in checkpoint.iterdir())
    args = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num-images-per-prompt", "2"]
    assert _sample(capsys, final, *args)[0] == 0
    status, err = _sample(capsys, checkpoint, *args)
    assert status == 0, err
    got, record = _images(runs / "dpo" / "samples-checkpoint-1")  # beside the checkpoint, not in it
    want, final_record = _images(final / "samples")
    assert sorted(p.name for p in checkpoint.iterdir()) == before
    assert list(got) == list(want) and len(got) == 4
    for name in got:
        assert torch.equal(got[name], want[name]), name
    assert torch.equal(_png(runs / "dpo" / "samples-checkpoint-1" / "grid.png"), _png(final / "samples" / "grid.png"))
    assert record["run"] == str(checkpoint) and {**record, "run": None} == {**final_record, "run": None}
    # the checkpoint's weights were read: the base pipeline samples other pixels for the same prompts and seeds
    base = components_of(load_pipeline(str(runs / "tiny")))
    seeds = [3 * 100003 + c for c in range(4)]
    plain = sample_images(base, base.denoiser.float(), PROMPTS * 2, seeds, STEPS, 1.0)
    assert not torch.equal(torch.stack(list(got.values())), plain)


def test_a_ppd_checkpoint_samples_its_users_as_the_finished_run_does(runs, tmp_path, capsys):
    flags = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--base", "--user", "user0", "--user", "user2",
             "--users", "user0", "user1", "--gamma", "0.5"]
    assert _sample(capsys, runs / "ppd", *flags, "--out", tmp_path / "final")[0] == 0
    status, err = _sample(capsys, runs / "ppd" / "checkpoint-1", *flags, "--out", tmp_path / "ckpt")
    assert status == 0, err
    got, record = _images(tmp_path / "ckpt")
    want, _ = _images(tmp_path / "final")
    assert record["rows"] == ["base", "user0", "user2", "user0->user1 gamma=0.5"] and len(got) == 8
    for name in got:
        assert torch.equal(got[name], want[name]), name
    assert not torch.equal(got["sample-r00-c000.png"], got["sample-r01-c000.png"])  # the branch moves user0's


def _copy_run(runs, tmp_path, name, copy, **config):
    """runs/name's config.yaml (edited by `config`) and checkpoint-1, in a folder of their own (tmp_path/copy)."""
    run = tmp_path / copy
    shutil.copytree(runs / name / "checkpoint-1", run / "checkpoint-1")
    saved = yaml.safe_load((runs / name / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, **config}))
    return run / "checkpoint-1"


def test_what_cannot_be_sampled_from_a_checkpoint_is_refused_naming_what_to_do(runs, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    user = ["--prompt", "a red disc", "--user", "user0"]
    # a ppd checkpoint on precomputed embeddings whose file is not here: the checkpoint holds the branch only
    moved = _copy_run(runs, tmp_path, "ppd", "moved", user_embeddings=str(tmp_path / "gone.safetensors"))
    status, err = _sample(capsys, moved, *user)
    assert status == 2 and f"{tmp_path / 'gone.safetensors'}, which is not a file here: a checkpoint holds the user " \
                           "branch, not the frozen table; pass --user-embeddings FILE" in err, err
    assert not (moved.parent / "samples-checkpoint-1").exists()  # refused before anything is written
    status, err = _sample(capsys, moved, *user, "--user-embeddings", runs / "users.safetensors")
    assert status == 0, err  # the file it trained with, given: sampled
    table = load_file(str(runs / "users.safetensors"))
    save_file({**table, "user0": table["user0"] + 1}, str(tmp_path / "changed.safetensors"))
    status, err = _sample(capsys, moved, *user, "--user-embeddings", tmp_path / "changed.safetensors", "--overwrite")
    assert status == 2 and "changed.safetensors no longer holds the table" in err, err
    # a checkpoint folder without its weights
    empty = runs / "dpo" / "checkpoint-7"
    empty.mkdir()
    try:
        status, err = _sample(capsys, empty, "--prompt", "x")
    finally:
        empty.rmdir()
    assert status == 2 and f"{empty} is a checkpoint folder without model.safetensors" in err, err
    # weights that do not fit the run's config (a full fine-tune read as a LoRA run): named, not loaded half
    lora = _copy_run(runs, tmp_path, "dpo", "lora", use_peft=True)
    status, err = _sample(capsys, lora, "--prompt", "x")
    assert status == 2 and "lacks" in err and "trainable parameters" in err and \
        "with its config.yaml's use_peft / LoRA settings and loss_type" in err, err
    # the base model the parameters load on is a local path missing here
    gone = _copy_run(runs, tmp_path, "dpo", "gone", model_name_or_path=str(tmp_path / "no-such-model"))
    status, err = _sample(capsys, gone, "--prompt", "x")
    assert status == 2 and f"{gone} is a checkpoint: its trained parameters load on the run's base model" in err, err
