"""User trial of the image/video side (diffusion and vision-language preference training): what a user saw that
broke or misled, each fixed and pinned here."""
import io
import json
import struct
import zlib

import pytest

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from preflab.errors import ConfigError, DataError  # noqa: E402


def huge_png_header(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG file whose header claims width x height pixels: PIL refuses to open it as a decompression bomb."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def small_png(colour=(255, 0, 0), size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def test_a_decompression_bomb_image_is_a_bad_row_naming_file_row_and_field(tmp_path):
    # seen: a 20000 x 20000 image stopped the run with PIL's DecompressionBombError traceback, even with
    # on_bad_row: skip
    from preflab.data.media import load_image as load_vlm_image
    from preflab.data.report import RowProblem
    from preflab.diffusion.data import load_image_pairs

    (tmp_path / "huge.png").write_bytes(huge_png_header())
    (tmp_path / "ok.png").write_bytes(small_png())
    (tmp_path / "ok2.png").write_bytes(small_png((0, 0, 255)))  # a pair of one image is refused (identical)
    rows = [{"prompt": "a", "chosen_image": "ok.png", "rejected_image": "ok2.png"},
            {"prompt": "b", "chosen_image": "huge.png", "rejected_image": "ok.png"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"pairs.jsonl row 1 .*chosen_image.*400000000 pixels"):
        load_image_pairs(str(path), resolution=8)
    examples, report = load_image_pairs(str(path), resolution=8, on_bad_row="skip")
    assert [x.prompt for x in examples] == ["a"] and report.skipped == {"bad_image": 1}
    with pytest.raises(RowProblem, match="400000000 pixels") as err:
        load_vlm_image("huge.png", "images[0]", str(tmp_path))
    assert err.value.field == "images[0]"


@pytest.mark.parametrize("key, says", [("beta_dpo=2500", r"beta=2500 convention=diffusers.*beta=5000"),
                                        ("max_train_steps=10", "'max_steps'"), ("rank=4", "'lora_r'"),
                                        ("checkpointing_steps=5", "'save_steps'")])
def test_diffusers_dpo_script_flags_name_preflabs_option(key, says):
    # seen: `beta_dpo=2500` (diffusers' train_diffusion_dpo.py) gave only "unknown config key 'beta_dpo'", and
    # beta=2500 would silently be half the strength (salesforce convention)
    from preflab.config import load_config

    with pytest.raises(ConfigError, match=says):
        load_config(None, ["task=diffusion", "loss_type=diffusion_dpo", "model_name_or_path=builtin:tiny-sd",
                           "dataset_name=x.jsonl", key])


def test_beta_with_convention_diffusers_equals_twice_beta_in_the_default_convention():
    # the equivalence the beta_dpo hint states
    from preflab.config import load_config

    base = ["task=diffusion", "loss_type=diffusion_dpo", "model_name_or_path=builtin:tiny-sd", "dataset_name=x.jsonl"]
    a = load_config(None, base + ["beta=2500", "convention=diffusers"])
    b = load_config(None, base + ["beta=5000"])
    assert a.objective().scale == b.objective().scale == 2500


@pytest.mark.parametrize("part", ["vae", "scheduler"])
def test_a_pipeline_directory_missing_a_component_names_it(tmp_path, part):
    # seen: "could not load the diffusers pipeline 'mymodel': Error no file named config.json found in directory
    # mymodel.. Check the name (hub access or HF_HUB_OFFLINE)": the vae folder was missing, not the directory's
    import shutil

    pytest.importorskip("diffusers")
    from preflab.diffusion.pipeline import load_pipeline, tiny_text_to_image_pipeline

    tiny_text_to_image_pipeline(0).save_pretrained(tmp_path / "model")
    assert type(load_pipeline(str(tmp_path / "model"))).__name__ == "StableDiffusionPipeline"
    shutil.rmtree(tmp_path / "model" / part)
    with pytest.raises(ConfigError, match=rf"incomplete diffusers pipeline.*lists {part} \(.*model/{part} is missing"):
        load_pipeline(str(tmp_path / "model"))


def test_diffusion_eval_from_another_directory_names_the_runs_relative_base_model(tmp_path, monkeypatch):
    # seen: `preflab eval ../outputs/run --task diffusion` from another folder asked the hub for 'mymodel' (the run's
    # relative model_name_or_path) five times over ~20 s, then "does not appear to have a file named
    # model_index.json ... Check the name (hub access or HF_HUB_OFFLINE)"
    from preflab.loops.diffusion_eval import evaluate_diffusion_run, run_base_model

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("task: diffusion\nloss_type: diffusion_dpo\nmodel_name_or_path: mymodel\n"
                                     "dataset_name: pairs.jsonl\nresolution: 16\n")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs.jsonl").write_text("")  # the data exists (its split is decided before the model is loaded)
    with pytest.raises(ConfigError, match=r"model_name_or_path='mymodel'.*not a directory here.*--reference DIR"):
        evaluate_diffusion_run(str(run), "pairs.jsonl")
    (tmp_path / "mymodel").mkdir()  # found from this directory: used as it is
    assert run_base_model(str(run), "mymodel") == "mymodel"
    assert run_base_model(str(run), "stable-diffusion-v1-5/stable-diffusion-v1-5").startswith("stable-diffusion")
    with pytest.raises(ConfigError, match="outputs/base/final"):
        run_base_model(str(run), "outputs/base/final")


@pytest.mark.parametrize("task, final, command", [
    ("diffusion", "model_index.json", "--task diffusion --data HELDOUT [--reward-fn MODULE:FUNCTION]"),
    ("vlm", "config.json", "--task vlm --data HELDOUT")])
def test_report_tells_a_diffusion_or_vlm_run_the_eval_command_that_works_for_it(tmp_path, task, final, command):
    # seen: the report of a finished diffusion run said "run `preflab eval RUN/checkpoint-4 --data HELDOUT
    # --reference REF` ... (the run has no final model yet)": it had one (a pipeline), and that command refuses a
    # diffusion run (it needs --task diffusion); a VLM run was told the same text-policy command
    from preflab.report.runs import load_run

    run = tmp_path / "run"
    (run / "checkpoint-4").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.69}) + "\n")
    (run / "config.yaml").write_text(f"task: {task}\n")
    (run / final).write_text("{}")
    note = next(m for m in load_run(run).missing if m.startswith("no eval.json"))
    assert f"preflab eval {run} {command}" in note and "no final" not in note and "--reference REF" not in note
    if task == "diffusion":  # an unfinished run: its newest checkpoint (preflab eval reads diffusion checkpoints)
        (run / final).unlink()
        note = next(m for m in load_run(run).missing if m.startswith("no eval.json"))
        assert f"preflab eval {run / 'checkpoint-4'} {command} --out {run / 'eval.json'}" in note


def pair_file(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_diffusion_run_says_what_it_skipped_in_the_eval_set_and_why(tmp_path, capsys):
    # seen: with on_bad_row: skip and an eval file with an unreadable image, the run printed "6 of 6 rows kept
    # (0 skipped, 0 ties dropped); 6 train, 5 eval examples": the skipped eval row was not said
    pytest.importorskip("diffusers")
    from preflab.config import config_from_dict
    from preflab.loops.diffusion import DiffusionRun

    (tmp_path / "ok.png").write_bytes(small_png())
    (tmp_path / "ok2.png").write_bytes(small_png((0, 0, 255)))
    (tmp_path / "bad.png").write_text("not an image")
    good = {"prompt": "a red disc", "chosen_image": "ok.png", "rejected_image": "ok2.png"}
    train = pair_file(tmp_path, "train.jsonl", [good] * 2 + [{**good, "rejected_image": "bad.png"}])
    held = pair_file(tmp_path, "test.jsonl", [good, {**good, "chosen_image": "bad.png"}, {**good, "prompt": ""}])
    cfg = config_from_dict({"task": "diffusion", "model_name_or_path": "builtin:tiny-sd", "dataset_name": train,
                            "eval_dataset_name": held, "loss_type": "diffusion_dpo", "resolution": 16,
                            "on_bad_row": "skip", "max_steps": 1, "output_dir": str(tmp_path / "out"),
                            "use_cpu": True, "disable_tqdm": True, "per_device_train_batch_size": 2})
    run = DiffusionRun(cfg)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("preflab: data:"))
    assert "2 of 3 rows kept (1 skipped (bad_image: 1), 0 ties dropped)" in line
    assert "eval data: 1 of 3 rows kept (2 skipped (bad_image: 1, missing_caption: 1), 0 ties dropped)" in line
    assert len(run.eval_data) == 1


def test_a_vision_row_with_an_image_or_video_column_is_not_trained_text_only(tmp_path):
    # seen: a row {"image": "a.png", "prompt": "What colour?", "chosen": "red", "rejected": "blue"} (the column name
    # of RLAIF-V and most HF image datasets) was read as a text-only pair: the VLM never saw the image. Now the
    # single `image` column is the row's one image (TRL's rows), equal to `images: [a.png]`; a single `video`
    # column is refused, naming `videos`
    from preflab.data.vision import read_vision_pairs

    (tmp_path / "a.png").write_bytes(small_png())
    row = {"prompt": "What colour?", "chosen": "red", "rejected": "blue"}
    [single], _ = read_vision_pairs(pair_file(tmp_path, "pairs.jsonl", [{**row, "image": "a.png"}]))
    [example], _ = read_vision_pairs(pair_file(tmp_path, "ok.jsonl", [{**row, "images": ["a.png"]}]))
    assert len(example.images) == 1 and example.images[0].getpixel((0, 0)) == (255, 0, 0)
    assert len(single.images) == 1 and single.images[0].tobytes() == example.images[0].tobytes()
    with pytest.raises(DataError, match=r"row 0 .*field 'videos'.*has a 'video' column but no 'videos'.*Rename"):
        read_vision_pairs(pair_file(tmp_path, "video.jsonl", [{**row, "video": ["a.png", "a.png"]}]))
    [text_only], _ = read_vision_pairs(pair_file(tmp_path, "text.jsonl", [row]))  # no image column at all: as before
    assert text_only.images == []


def test_a_vision_rows_relative_image_is_read_beside_the_data_file_before_the_working_directory(tmp_path,
                                                                                             monkeypatch):
    # seen: data/pairs.jsonl naming "imgs/a.png" trained on ./imgs/a.png (another picture of that name in the
    # working directory) instead of data/imgs/a.png, silently; docs/vision.md: paths are relative to the data file
    from preflab.data.media import load_image
    from preflab.data.report import RowProblem

    (tmp_path / "data" / "imgs").mkdir(parents=True)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "data" / "imgs" / "a.png").write_bytes(small_png((255, 0, 0)))
    (tmp_path / "imgs" / "a.png").write_bytes(small_png((0, 0, 255)))
    (tmp_path / "imgs" / "only_here.png").write_bytes(small_png((0, 255, 0)))
    monkeypatch.chdir(tmp_path)
    assert load_image("imgs/a.png", "images[0]", "data").getpixel((0, 0)) == (255, 0, 0)
    assert load_image("imgs/only_here.png", "images[0]", "data").getpixel((0, 0)) == (0, 255, 0)  # still found
    with pytest.raises(RowProblem, match=r"'imgs/none.png' does not exist \(looked for 'data/imgs/none.png'\)"):
        load_image("imgs/none.png", "images[0]", "data")


def test_pickapic_and_preflab_rows_from_csv_read_their_numbers_and_empty_optional_cells(tmp_path):
    # seen: a Pick-a-Pic CSV (caption,jpg_0,jpg_1,label_0) stopped at row 0: "field 'label_0': expected a finite
    # number, got '0'" (every CSV cell is text); an empty optional cell (caption_0) was a missing caption
    import csv

    from preflab.diffusion.data import load_image_pairs

    (tmp_path / "red.png").write_bytes(small_png((255, 0, 0)))
    (tmp_path / "blue.png").write_bytes(small_png((0, 0, 255)))
    with open(tmp_path / "pick.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["caption", "jpg_0", "jpg_1", "label_0", "caption_0", "caption_1", "ps_score_0", "ps_score_1"])
        w.writerows([["a", "red.png", "blue.png", "1", "", "", "", ""],
                     ["b", "red.png", "blue.png", "0", "", "", "", ""],     # label 0: blue preferred
                     ["c", "red.png", "blue.png", "0.5", "", "", "", ""],   # tie: dropped
                     ["d", "red.png", "blue.png", "1", "r", "b", "0.20", "0.25"]])  # scores order the pair
    examples, report = load_image_pairs(str(tmp_path / "pick.csv"), resolution=8)
    assert [x.prompt for x in examples] == ["a", "b", "d"] and report.ties_dropped == 1
    assert [tuple(x.chosen[:, 0, 0].tolist()) for x in examples] == [(255, 0, 0), (0, 0, 255), (0, 0, 255)]
    assert examples[0].caption_chosen is None and examples[2].caption_chosen == "b"
    assert examples[2].preference_prob == pytest.approx(0.574480, abs=1e-6)
    (tmp_path / "pairs.csv").write_text("prompt,chosen_image,rejected_image,preference_prob\np,red.png,blue.png,0.8\n"
                                        "q,red.png,blue.png,high\n")
    [x], report = load_image_pairs(str(tmp_path / "pairs.csv"), resolution=8, on_bad_row="skip")
    assert x.preference_prob == 0.8 and report.skipped == {"bad_value": 1}


@pytest.mark.slow
def test_diffusion_eval_of_a_lora_checkpoint_equals_the_eval_of_the_final_pipeline_at_that_step(tmp_path):
    # seen: `preflab eval RUN/checkpoint-4 --task diffusion` said "has no config.yaml": a run stopped before its end
    # (or an earlier step) could not be evaluated or sampled at all
    pytest.importorskip("diffusers")
    from preflab.config import config_from_dict
    from preflab.diffusion.shapes import write_pair_dataset
    from preflab.loops.diffusion import DiffusionRun
    from preflab.loops.diffusion_eval import evaluate_diffusion_run, shapes_reward

    data = str(write_pair_dataset(tmp_path / "data", 4, seed=0))
    cfg = config_from_dict({"task": "diffusion", "model_name_or_path": "builtin:tiny-sd", "dataset_name": data,
                            "loss_type": "diffusion_dpo", "beta": 200.0, "resolution": 16, "max_steps": 2,
                            "save_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-2,
                            "use_peft": True, "lora_r": 4, "output_dir": str(tmp_path / "run"), "use_cpu": True,
                            "disable_tqdm": True, "sample_steps": 2})
    DiffusionRun(cfg).train()
    final = evaluate_diffusion_run(str(tmp_path / "run"), data, reward_fn=shapes_reward, num_prompts=2)
    at_2 = evaluate_diffusion_run(str(tmp_path / "run" / "checkpoint-2"), data, reward_fn=shapes_reward,
                                  num_prompts=2)
    assert at_2["metrics"]["loss"] == pytest.approx(final["metrics"]["loss"], abs=1e-5)
    assert at_2["metrics"]["loss"] != pytest.approx(0.6931, abs=1e-4)  # trained: not the reference's log 2
    assert at_2["metrics"]["reward/policy"] == pytest.approx(final["metrics"]["reward/policy"], abs=1e-4)
    assert final["beta"] == at_2["beta"] == 200.0  # the report's beta row


@pytest.mark.parametrize("over, named", [("ref_model_name_or_path=sft-pipeline", "a frozen copy"),
                                         ("precompute_ref_log_probs=true", "a frozen copy"),
                                         ("max_length=77", "text encoder's length"),
                                         ("rpo_alpha=1.0", "NLL"),  # was: "objective SFT scores text models"
                                         ("layout=padded", "text encoder's length")])
def test_text_options_a_diffusion_run_does_not_read_are_refused(over, named):
    # seen: ref_model_name_or_path=sft-pipeline on a Diffusion-DPO run was accepted and the run trained against a
    # frozen copy of model_name_or_path instead; max_length / layout were accepted and did nothing
    from preflab.config import load_config

    base = ["task=diffusion", "loss_type=diffusion_dpo", "model_name_or_path=builtin:tiny-sd", "dataset_name=x.jsonl"]
    with pytest.raises(ConfigError, match=rf"{over.split('=')[0]} only applies to .*{named}.*task: diffusion"):
        load_config(None, base + [over])
    load_config(None, base)  # the defaults are fine
    load_config(None, ["model_name_or_path=builtin:tiny-gpt2", "dataset_name=x.jsonl", over])  # a text run reads it


@pytest.mark.parametrize("loss, beta", [("diffusion_dpo", 5000.0), ("diffusion_inpo", 2000.0), ("dcpo", 500.0)])
def test_a_diffusion_run_without_beta_gets_its_objectives_default_not_the_text_default(loss, beta, capsys):
    # seen: a Diffusion-DPO config without `beta` trained with TrainConfig's beta=0.1 (scale 0.05 on MSE
    # differences of ~1e-3: a gradient 5e4 times smaller than the paper's beta=5000), silently
    from preflab.config import load_config

    base = ["task=diffusion", "model_name_or_path=builtin:tiny-sd", "dataset_name=x.jsonl", f"loss_type={loss}"]
    cfg = load_config(None, base)
    assert cfg.beta == beta and cfg.objective().beta == beta
    assert f"{loss}'s own default beta={beta:g}" in capsys.readouterr().err
    assert load_config(None, base + ["beta=0.1"]).objective().beta == 0.1  # a written beta stays
    assert load_config(None, ["model_name_or_path=builtin:tiny-gpt2", "dataset_name=x.jsonl"]).beta == 0.1


def test_a_vlm_directory_without_its_processor_files_is_a_config_error_naming_the_fix(tmp_path):
    # seen: a saved image-text model without preprocessor_config.json stopped `preflab train` with transformers'
    # OSError traceback ("Can't load image processor for 'vlmodel3' ... huggingface.co")
    from types import SimpleNamespace

    from preflab.models.tiny_vlm import tiny_vlm, tiny_vlm_processor
    from preflab.models.vlm import load_vlm_processor

    processor = tiny_vlm_processor("qwen2_vl")
    tiny_vlm(processor, "qwen2_vl").save_pretrained(tmp_path / "model")
    cfg = SimpleNamespace(processor_name_or_path=None, model_name_or_path=str(tmp_path / "model"),
                          trust_remote_code=False)
    with pytest.raises(ConfigError, match=r"directory .*model has no processor files.*processor_name_or_path"):
        load_vlm_processor(cfg)


@pytest.mark.parametrize("task, what", [
    (["task=diffusion", "loss_type=diffusion_dpo", "model_name_or_path=builtin:tiny-sd"], "task: diffusion"),
    (["task=vlm", "model_name_or_path=builtin:tiny-qwen2-vl"], "task: vlm")])
def test_plan_says_it_does_not_plan_diffusion_or_vlm_runs(task, what, capsys):
    # seen: `preflab plan examples/diffusion/diffusion_dpo.yaml` said "no model config could be read (Repo id must
    # use alphanumeric chars ...: 'builtin:tiny-sd'); give ... builtin:tiny-llama"
    from preflab.cli import main

    assert main(["plan", *task, "dataset_name=x.jsonl"]) != 0
    err = capsys.readouterr().err
    assert f"a {what} run" in err and "is not planned" in err and "builtin:tiny-llama" not in err


def test_report_explains_a_diffusion_eval_in_image_terms(tmp_path):
    # seen: the report of `preflab eval --task diffusion` explained logps/chosen as "mean summed log-prob of the
    # chosen responses under the policy" and win_rate as "the policy's answer", beta "–" (not in eval.json), and
    # without eval.json told to run the text command `preflab eval RUN_DIR --data HELDOUT --reference REF`
    import html

    from preflab.report.html import write_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.69}) + "\n")
    (run / "config.yaml").write_text("task: diffusion\n")
    page = html.unescape(write_report([run], tmp_path / "a.html").read_text())
    assert "run `preflab eval RUN_DIR --task diffusion --data HELDOUT" in page
    (run / "eval.json").write_text(json.dumps({"task": "diffusion", "beta": 5000.0, "num_pairs": 6, "metrics": {
        "logps/chosen": -1.1, "win_rate": 0.75, "implicit_accuracy": 0.5}}))
    page = html.unescape(write_report([run], tmp_path / "b.html").read_text())
    assert "minus the policy's mean denoising error (MSE) on the chosen images" in page
    assert "--reward-fn scores the trained pipeline's sample above the base model's" in page
    assert "mean summed log-prob" not in page and "5000" in page


def test_no_usable_diffusion_rows_says_why_they_were_skipped(tmp_path):
    # seen: with on_bad_row: skip and a caption column named `text`, the run said only "no usable rows (6 read,
    # 6 skipped, 0 ties dropped). Check the columns and images."
    from preflab.diffusion.data import load_image_pairs

    (tmp_path / "a.png").write_bytes(small_png())
    path = pair_file(tmp_path, "pick.jsonl", [{"text": "a", "jpg_0": "a.png", "jpg_1": "a.png", "label_0": 1}] * 3)
    with pytest.raises(DataError, match=r"no usable rows \(3 read, 3 skipped \(missing_field: 3\), 0 ties dropped\)\. "
                                        r"First skipped: row 0, field 'caption': the row has no 'caption' \(Pick-a-Pic's "
                                        r"form is caption \+ jpg_0 \+ jpg_1 \+ label_0; the row has \['jpg_0', 'jpg_1', "
                                        r"'label_0', 'text'\]\)"):
        load_image_pairs(path, resolution=8, on_bad_row="skip")


def test_a_pipeline_with_pickle_only_component_weights_names_them_and_allow_pickle(tmp_path):
    # seen: a pipeline whose vae/ held diffusion_pytorch_model.bin only failed with "no file named
    # diffusion_pytorch_model.safetensors found in directory mybin/vae ... Check the name (hub access ...)"
    import torch
    from safetensors.torch import load_file

    pytest.importorskip("diffusers")
    from preflab.diffusion.pipeline import load_pipeline, tiny_text_to_image_pipeline
    from preflab.errors import UnsafeLoadError

    tiny_text_to_image_pipeline(0).save_pretrained(tmp_path / "model")
    vae = tmp_path / "model" / "vae"
    torch.save(load_file(str(vae / "diffusion_pytorch_model.safetensors")), vae / "diffusion_pytorch_model.bin")
    (vae / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UnsafeLoadError, match=r"vae/diffusion_pytorch_model.bin.*allow_pickle=true"):
        load_pipeline(str(tmp_path / "model"))
    assert type(load_pipeline(str(tmp_path / "model"), allow_pickle=True).vae).__name__ == "AutoencoderKL"


def test_diffusion_eval_says_the_reference_came_from_the_runs_config_when_it_does_not_load(tmp_path, monkeypatch):
    # seen: for a run trained from `outputs/base` (a relative path, from another folder) eval said only "could not
    # load the diffusers pipeline 'outputs/base': ... Check the name (hub access or HF_HUB_OFFLINE)"
    pytest.importorskip("diffusers")
    import preflab.diffusion.pipeline as pipeline
    from preflab.diffusion.shapes import write_pair_dataset
    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    pipeline.tiny_text_to_image_pipeline(0).save_pretrained(tmp_path / "run")
    (tmp_path / "run" / "config.yaml").write_text("task: diffusion\nloss_type: diffusion_dpo\nbeta: 200\n"
                                                  "model_name_or_path: outputs/base\ndataset_name: x.jsonl\n"
                                                  "resolution: 16\nuse_cpu: true\nsample_steps: 0\n")
    data = str(write_pair_dataset(tmp_path / "data", 2, seed=0))
    real = pipeline.load_pipeline

    def offline(name, *args, **kwargs):
        if name == "outputs/base":
            raise ConfigError("could not load the diffusers pipeline 'outputs/base': not on the hub.")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(pipeline, "load_pipeline", offline)
    with pytest.raises(ConfigError, match=r"not on the hub\. \(the reference is .*run's model_name_or_path from its "
                                          r"config.yaml.*--reference DIR\)"):
        evaluate_diffusion_run(str(tmp_path / "run"), data)
