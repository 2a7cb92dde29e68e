"""`preflab sample RUN`: a ppd run's per-user, interpolated and base samples equal PPDSampler's for the same prompts and
seeds (pixels, exactly); gamma 0 / 1 give the endpoint users; the samples.png a ppd run writes when training ends is
the grid `preflab sample` draws with the command the run's README.md gives; a non-ppd run's samples equal its
pipeline's; samples.json says what each file is; users, prompts files, options and runs that cannot be sampled are
refused, naming what is wrong."""
import json
import shlex

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from preflab.cli import main  # noqa: E402
from preflab.errors import ConfigError  # noqa: E402
from test_ppd_sampling import STEPS, ppd_run  # noqa: E402,F401  (tests/diffusion is on sys.path; the module's run)


def _png(path) -> torch.Tensor:
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).contiguous()


def _sample(capsys, *argv) -> tuple[int, str]:
    """`preflab sample ARGV` in this process: (exit status, stderr)."""
    capsys.readouterr()
    status = main(["sample", *map(str, argv)])
    return status, capsys.readouterr().err


def _train_prompts(run) -> list[str]:
    """The prompts of test_ppd_sampling's ppd run's training data (users user0 / user1 alternating; user2 only in its
    user_embeddings file; sample_steps 2, seed 3), in data order."""
    from preflab.models.run_config import run_config

    return [json.loads(line)["prompt"] for line in open(run_config(run["out"])["dataset_name"])]


def test_cli_images_equal_ppd_samplers_and_samples_json_says_what_each_is(ppd_run, tmp_path, capsys):  # noqa: F811
    from preflab.loops.ppd_sample import PPDSampler

    prompts = _train_prompts(ppd_run)[:2]
    out = tmp_path / "s"
    status, err = _sample(capsys, ppd_run["out"], "--prompt", prompts[0], "--prompt", prompts[1], "--base",
                          "--user", "user1", "--user", "user2", "--users", "user0", "user1", "--gamma", "0,0.25,1",
                          "--num-images-per-prompt", "2", "--seed", "5", "--out", out)
    assert status == 0, err
    record = json.loads((out / "samples.json").read_text())
    columns = prompts * 2  # image k of prompt i is column k * P + i, seeded 5 * 100003 + column
    seeds = [5 * 100003 + c for c in range(4)]
    rows = [(None, None, None), ("user1", None, None), ("user2", None, None), ("user0", "user1", 0.0),
            ("user0", "user1", 0.25), ("user0", "user1", 1.0)]
    assert record["rows"] == ["base", "user1", "user2", "user0->user1 gamma=0", "user0->user1 gamma=0.25",
                              "user0->user1 gamma=1"]
    assert (record["steps"], record["guidance_scale"], record["seed"], record["loss_type"]) == (STEPS, 1.0, 5, "ppd")
    assert record["samples"] == [
        {"file": f"sample-r{r:02d}-c{c:03d}.png", "row": r, "column": c, "prompt": columns[c], "seed": seeds[c],
         "user": u, "other_user": o, "gamma": gamma} for r, (u, o, gamma) in enumerate(rows) for c in range(4)]
    got = [torch.stack([_png(out / f"sample-r{r:02d}-c{c:03d}.png") for c in range(4)]) for r in range(len(rows))]
    sampler = PPDSampler(str(ppd_run["out"]))
    want = [sampler.sample(columns, u, seeds=seeds, **({"other_user": o, "gamma": g} if o else {}))
            for u, o, g in rows]
    for r in range(len(rows)):
        assert torch.equal(got[r], want[r]), record["rows"][r]
    user0 = sampler.sample(columns, "user0", seeds=seeds)
    assert torch.equal(got[3], user0) and torch.equal(got[5], got[1])  # gamma 0: user0; gamma 1: user1
    assert not torch.equal(got[4], user0) and not torch.equal(got[4], got[1])  # 0.25: neither endpoint
    assert not torch.equal(got[0], got[1])  # the trained branch moves the samples off the base model's
    # the grid: one row per model, the images in column order
    from preflab.diffusion.pipeline import save_grid

    save_grid(got, tmp_path / "want.png")
    assert torch.equal(_png(out / "grid.png"), _png(tmp_path / "want.png"))


def test_samples_png_of_a_ppd_run_is_what_its_readme_command_samples(ppd_run, tmp_path, capsys):  # noqa: F811
    """DiffusionRun.write_samples (ppd): the base model, then the training users user0, user1, on the first 8 (here
    4) prompts with seeds seed * 100003 + i; the README's `preflab sample` command draws that grid pixel for pixel."""
    run = ppd_run["out"]
    readme = (run / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("`samples.png`"))
    assert "then users user0, user1, one row each" in line
    command = shlex.split(line.split("; `", 1)[1].rsplit("` draws", 1)[0])
    assert command[:4] == ["preflab", "sample", str(run), "--base"]
    assert command.count("--prompt") == 4 and [command[i + 1] for i, x in enumerate(command) if x == "--prompt"] == \
        _train_prompts(ppd_run)
    status, err = _sample(capsys, *command[2:], "--out", tmp_path / "again")
    assert status == 0, err
    grid = _png(run / "samples.png")
    assert torch.equal(_png(tmp_path / "again" / "grid.png"), grid)
    # 3 rows of 4 images of 16 px with 2 px gaps, upscaled 4x; the user rows are not the base row
    assert tuple(grid.shape) == (3, (3 * 18 + 2) * 4, (4 * 18 + 2) * 4)
    base, user0 = grid[:, 8:8 + 64], grid[:, 8 + 72:8 + 72 + 64]
    assert not torch.equal(base, user0)
    # preflab report captions a ppd grid by its rows, another run's as reference / trained
    from preflab.report.html import _samples
    from preflab.report.runs import RunData

    html = _samples([RunData(name="ppd", path=run, config={"task": "diffusion", "loss_type": "ppd"}),
                     RunData(name="dpo", path=run, config={"task": "diffusion", "loss_type": "diffusion_dpo"})])
    assert html.count("top row the base model (the user branch off), then one row per training user") == 1
    assert html.count("top row reference, bottom row trained model") == 1


def _plain_run(root, loss_type="diffusion_dpo", task="diffusion"):
    """A finished non-ppd diffusion run's final directory: the tiny pipeline and the run's config.yaml."""
    from preflab.diffusion.pipeline import tiny_text_to_image_pipeline

    run = root / f"{task}-{loss_type}"
    tiny_text_to_image_pipeline(0).save_pretrained(run)
    (run / "config.yaml").write_text(f"task: {task}\nloss_type: {loss_type}\nmodel_name_or_path: builtin:tiny-sd\n"
                                     "dataset_name: x.jsonl\nseed: 7\nsample_steps: 2\nguidance_scale: 2.0\n")
    return run


def test_a_non_ppd_run_samples_its_pipeline_and_refuses_the_ppd_options(tmp_path, capsys):
    from preflab.diffusion.pipeline import components_of, load_pipeline, sample_images

    run = _plain_run(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    status, err = _sample(capsys, run, "--prompts", prompts, "--prompt", "a green disc")
    assert status == 0, err
    record = json.loads((run / "samples" / "samples.json").read_text())
    order = ["a green disc", "a red circle", "a blue square"]  # --prompt first, then the file's rows
    assert [s["prompt"] for s in record["samples"]] == order and record["rows"] == ["trained"]
    assert [s["seed"] for s in record["samples"]] == [7 * 100003 + c for c in range(3)]
    assert (record["steps"], record["guidance_scale"]) == (2, 2.0) and "note" not in record
    comps = components_of(load_pipeline(str(run)))
    want = sample_images(comps, comps.denoiser.float(), order, [7 * 100003 + c for c in range(3)], 2, 2.0)
    got = torch.stack([_png(run / "samples" / s["file"]) for s in record["samples"]])
    assert torch.equal(got, want)
    for flags in (["--user", "user0"], ["--users", "a", "b", "--gamma", "0.5"], ["--base"]):
        status, err = _sample(capsys, run, "--prompt", "x", "--out", tmp_path / "no", *flags)
        said = " / ".join(f for f in flags if f.startswith("--"))
        assert status == 2 and f"{said}: {run} is a diffusion_dpo run, which has no user branch" in err, err
    assert not (tmp_path / "no").exists()


def test_refusals_name_the_user_the_option_and_the_run(ppd_run, tmp_path, capsys):  # noqa: F811
    run = ppd_run["out"]
    cases = [
        (["--user", "nobody", "--user", "user0"], "user(s) 'nobody' of"),
        (["--users", "user0", "ghost", "--gamma", "0.5"], "user(s) 'ghost' of"),
        (["--user", "user0", "--gamma", "0.5"], "--users A B and --gamma G[,G2..] go together"),
        (["--users", "user0", "user1", "--gamma", "0.5,1.5"], r"--gamma 0.5,1.5: 1.5 is not in [0, 1]"),
        (["--users", "user0", "user1", "--gamma", "half"], "--gamma half: 'half' is not a number"),
        ([], "is a ppd run: say whose samples to draw"),
        (["--user", "user0", "--num-images-per-prompt", "0"], "--num-images-per-prompt 0: give 1 or more"),
        (["--user", "user0", "--steps", "0"], "--steps 0: sampling needs 1 or more"),
    ]
    for flags, said in cases:
        status, err = _sample(capsys, run, "--prompt", "a red disc", "--out", tmp_path / "none", *flags)
        assert status == 2 and said in err, (flags, err)
    status, err = _sample(capsys, run, "--prompt", "a red disc", "--out", tmp_path / "none", "--user", "nobody")
    assert "(its users: 'user0', 'user1', 'user2')" in err and "Add them to" in err
    assert not (tmp_path / "none").exists()  # nothing is written before the refusals
    with pytest.raises(ConfigError, match="user 'nobody' has no embedding"):  # the sampler's own check agrees
        from preflab.loops.ppd_sample import PPDSampler

        PPDSampler(str(run)).embedding("nobody")


def test_prompt_files_bad_rows_are_refused_by_file_and_line(tmp_path, capsys):
    from preflab.loops.sample_prompts import read_prompt_file, sampled_prompts

    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "a red disc", "id": 1}\n{"prompt": ""}\n')
    assert read_prompt_file(str(good)) == ["a red disc", ""]
    txt = tmp_path / "p.txt"
    txt.write_text("  a red disc \nsecond\n")
    assert read_prompt_file(str(txt)) == ["  a red disc ", "second"]  # taken as written
    bad = {
        '{"prompt": "a"}\n{"text": "b"}\n': "line 2 has no field 'prompt' (its keys: ['text'])",
        '{"prompt": "a"}\nnot json\n': "line 2 is not JSON",
        '{"prompt": 3}\n': "line 1: field 'prompt' is a int, not a string",
        '["a"]\n': "line 1 is a JSON list, not an object",
        '{"prompt": "a"}\n\n{"prompt": "b"}\n': "line 2 is empty",
    }
    for i, (text, said) in enumerate(bad.items()):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            read_prompt_file(str(path))
        assert f"--prompts {path} " in str(err.value) and said in str(err.value), str(err.value)
    (tmp_path / "p.csv").write_text("prompt\na\n")
    with pytest.raises(ConfigError, match="from a .jsonl file"):
        read_prompt_file(str(tmp_path / "p.csv"))
    with pytest.raises(ConfigError, match="needs prompts"):
        sampled_prompts(None, None)
    # through the command: the bad row is named before the run is loaded
    run = _plain_run(tmp_path)
    status, err = _sample(capsys, run, "--prompts", tmp_path / "bad0.jsonl")
    assert status == 2 and f"--prompts {tmp_path / 'bad0.jsonl'} line 2 has no field 'prompt'" in err


def test_runs_that_cannot_be_sampled_are_refused_naming_the_command(tmp_path, capsys):
    text = tmp_path / "dpo"
    text.mkdir()
    (text / "config.yaml").write_text("task: dpo\nmodel_name_or_path: builtin:tiny-lm\ndataset_name: x.jsonl\n")
    status, err = _sample(capsys, text, "--prompt", "hi")
    assert status == 2 and f"{text} is a task: dpo run; preflab sample draws images from task: diffusion runs" in err
    assert f"`preflab eval {text} --data ...`" in err
    run = _plain_run(tmp_path)
    checkpoint = run / "checkpoint-2"
    checkpoint.mkdir()
    status, err = _sample(capsys, checkpoint, "--prompt", "hi")
    assert status == 2 and "is a checkpoint folder without model.safetensors" in err
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((run / "config.yaml").read_text())
    status, err = _sample(capsys, unfinished, "--prompt", "hi")
    assert status == 2 and "holds no pipeline (model_index.json)" in err


def test_out_is_not_overwritten_without_overwrite_which_keeps_other_files(tmp_path, capsys):
    run = _plain_run(tmp_path)
    assert _sample(capsys, run, "--prompt", "a", "--prompt", "b", "--num-images-per-prompt", "2")[0] == 0
    out = run / "samples"
    first = sorted(p.name for p in out.iterdir())
    assert first == sorted(["grid.png", "samples.json"] + [f"sample-r00-c{c:03d}.png" for c in range(4)])
    (out / "mine.txt").write_text("kept")
    status, err = _sample(capsys, run, "--prompt", "a")
    assert status == 2 and f"{out} already holds 7 file(s)" in err and "--overwrite" in err
    assert _sample(capsys, run, "--prompt", "a", "--overwrite")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["grid.png", "mine.txt", "samples.json",
                                                            "sample-r00-c000.png"])


def test_a_self_npo_run_is_sampled_with_a_note_that_it_is_the_negative_model(tmp_path, capsys):
    run = _plain_run(tmp_path, loss_type="self_npo")
    capsys.readouterr()
    assert main(["sample", str(run), "--prompt", "a"]) == 0
    said = capsys.readouterr().out
    note = json.loads((run / "samples" / "samples.json").read_text())["note"]
    assert "Self-NPO's negative model" in note and f"note: {note}" in said
