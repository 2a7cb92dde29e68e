"""Second user trial of the image/video side (diffusion and vision-language preference training): what a user saw
that broke or misled, each fixed and pinned here."""
import html
import json

import pytest

from preflab.report.html import write_report
from preflab.report.runs import load_run


def diffusion_run_dir(tmp_path, loss_type, samples=False):
    run = tmp_path / loss_type
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.69}) + "\n"
                                       + json.dumps({"step": 1, "eval_loss": 0.6}) + "\n")
    (run / "config.yaml").write_text(f"task: diffusion\nloss_type: {loss_type}\nmodel_name_or_path: builtin:tiny-sd\n"
                                     "dataset_name: pairs.jsonl\n")
    (run / "model_index.json").write_text("{}")
    if samples:
        from PIL import Image

        Image.new("RGB", (8, 8)).save(run / "samples.png")
    return run


def test_report_of_a_ppd_run_asks_for_its_eval_with_a_win_rate(tmp_path):
    # ppd runs are evaluated (user-conditioned implicit reward) and, with --reward-fn, sampled per user for the win
    # rate against the base model (preflab.loops.diffusion_eval.ppd_samples)
    from preflab.report.runs import eval_command

    assert eval_command({"task": "diffusion", "loss_type": "ppd"}) == \
        "preflab eval RUN_DIR --task diffusion --data HELDOUT [--reward-fn MODULE:FUNCTION]"
    note = next(m for m in load_run(diffusion_run_dir(tmp_path, "ppd")).missing if m.startswith("no eval.json"))
    assert "does not score" not in note


@pytest.mark.parametrize("loss_type", ["self_npo"])
def test_report_of_a_ppd_or_self_npo_run_does_not_ask_for_the_eval_that_refuses_it(tmp_path, loss_type):
    # seen: the report of a ppd / self_npo run said "no eval.json: run `preflab eval RUN --task diffusion --data
    # HELDOUT ...` for the implicit-reward accuracy on held-out pairs", and that command refuses both objectives
    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    run = diffusion_run_dir(tmp_path, loss_type)
    note = next(m for m in load_run(run).missing if m.startswith("no eval.json"))
    assert note.startswith(f"no eval.json: `preflab eval --task diffusion` does not score {loss_type} runs (")
    assert "--data HELDOUT" not in note
    page = html.unescape(write_report([run], tmp_path / "r.html").read_text())
    assert "--task diffusion --data HELDOUT" not in page and "Held-out evaluation (eval.json)" not in page
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "resolution: 16\n")
    # the command the note stopped naming; refused before it opens --data (a missing file was reported first)
    with pytest.raises(Exception, match=f"{loss_type} runs are not supported"):
        evaluate_diffusion_run(str(run), str(tmp_path / "no-such-file.jsonl"))


def test_report_captions_a_self_npo_sample_grid_as_the_negative_models_single_row(tmp_path):
    # seen: a self_npo run's samples.png is one row (its negative model; write_samples keeps no base to sample), and
    # the report captioned it "top row reference, bottom row trained model"
    npo, dpo = diffusion_run_dir(tmp_path, "self_npo", True), diffusion_run_dir(tmp_path, "diffusion_dpo", True)
    page = html.unescape(write_report([npo, dpo], tmp_path / "r.html").read_text())
    assert "self_npo: one row, the trained negative model (Self-NPO" in page
    assert "diffusion_dpo: top row reference, bottom row trained model" in page
    assert page.count("top row reference") == 1


def test_report_lists_what_each_run_trained_on_what(tmp_path):
    # seen: the report's run list said only each run's folder name and path; what it trained (task, objective, base
    # model, data) was only in the config dump at the bottom
    run = diffusion_run_dir(tmp_path, "diffusion_dpo")
    page = html.unescape(write_report([run], tmp_path / "r.html").read_text())
    assert (f"<li><b>diffusion_dpo</b>: {run} (task diffusion, loss_type diffusion_dpo, model_name_or_path "
            "builtin:tiny-sd, dataset_name pairs.jsonl)</li>") in page


def test_generate_during_eval_is_refused_for_a_vlm_run_whose_samples_would_not_see_the_images(tmp_path):
    # seen: `preflab train examples/vlm/dpo.yaml generate_during_eval=true eval_fraction=0.25` wrote
    # eval_samples.jsonl, generated from the prompts' token ids without pixel_values: answers to pictures the model
    # never saw
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError
    from preflab.loops.vlm import VisionTrainer

    cfg = config_from_dict(dict(task="vlm", model_name_or_path="builtin:tiny-qwen2-vl",
                                dataset_name="examples/vlm/data/pairs.jsonl", eval_fraction=0.25,
                                generate_during_eval=True, output_dir=str(tmp_path / "run"), max_steps=1,
                                use_cpu=True, report_to="none"))
    with pytest.raises(ConfigError, match="generate_during_eval: preflab's eval samples are generated from the "
                                          "prompts' token ids without their images or videos"):
        VisionTrainer(cfg)


def sft_example(row_id, images):
    from preflab.data.vision import VisionPairExample

    answer = [{"role": "assistant", "content": [{"type": "text", "text": "Grey."}]}]
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    return VisionPairExample(row_id, prompt, answer, answer, images)


def test_pami_leaves_out_a_candidate_with_the_originals_pixels_and_names_a_row_with_no_other(tmp_path):
    # seen: a colour rotation of a grey image (or a flip of a symmetric one) is the image itself; with a scorer that
    # ranks it first (d = 0 beats negative gaps) PaMi-VDPO kept it, and the run stopped at tokenizing with "chosen
    # and rejected have the same tokens and the same images", which names no augmentation
    from PIL import Image

    from preflab.data.vision_pairs import build_pami_pairs

    grey, red = Image.new("RGB", (8, 8), (90, 90, 90)), Image.new("RGB", (8, 8), (200, 10, 10))
    score = lambda ex, images: 1.0 if _same(images, ex.images) else 2.0  # noqa: E731  (perturbing helps: d < 0)
    [pair], info = build_pami_pairs([sft_example(0, [grey])], score, 2, ("colour", "noise"), seed=0)
    assert not _same(pair.rejected_images, [grey]) and info["unchanged_candidates_left_out"] >= 1
    with pytest.raises(Exception) as err:
        build_pami_pairs([sft_example(0, [red]), sft_example(1, [grey])], score, 3, ("colour",), source="sft.jsonl")
    assert str(err.value).startswith("sft.jsonl row 1, field 'images': none of its 3 perturbed candidates "
                                     "(augmentations ['colour']) changes a pixel of its images.")


def _same(a, b):
    import numpy as np

    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


@pytest.mark.parametrize("images, augmentations, says", [
    ([], ("flip",), "row 0, field 'images': the row has no image or video to perturb."),
    (["frame"], ("reverse", "shuffle"), "row 0, field 'images': the row has 1 image/frame and augmentations "
                                        "['reverse', 'shuffle'] are all temporal"),
])
def test_pami_row_without_images_or_with_one_frame_for_temporal_augmentations_names_file_row_and_field(
        images, augmentations, says):
    # seen: "PaMi-VDPO: no augmentation applies (temporal ones need several images or frames)." with no file and no
    # row, and "row N has no image or video to perturb" without the file, both as ConfigErrors
    from PIL import Image

    from preflab.data.vision_pairs import build_pami_pairs
    from preflab.errors import DataError

    images = [Image.new("RGB", (8, 8), (200, 10, 10)) for _ in images]
    with pytest.raises(DataError) as err:
        build_pami_pairs([sft_example(0, images)], lambda ex, im: 0.0, 2, augmentations, source="clips.jsonl")
    assert str(err.value).startswith(f"clips.jsonl {says}") and err.value.field == "images"


@pytest.mark.slow
def test_preflab_eval_of_a_pami_run_scores_the_pairs_the_run_evaluated(tmp_path):
    # seen: a pami_vdpo run's last eval on sft.jsonl logged eval_loss 0.6885 (rewards/accuracies 0.75);
    # `preflab eval RUN --task vlm --data sft.jsonl` said loss 0.6804, accuracy 1.0: it chose each row's perturbed
    # images with the trained policy (those it tells apart best), the run with its starting policy
    from pathlib import Path

    from preflab.cli import main
    from preflab.loops.vlm_eval import evaluate_vlm_run

    root = Path(__file__).resolve().parents[1]
    data, out = str(root / "examples/vlm/data/sft.jsonl"), tmp_path / "pami"
    assert main(["train", str(root / "examples/vlm/pami_vdpo.yaml"), f"dataset_name={data}",
                 f"eval_dataset_name={data}", "eval_steps=4", "learning_rate=1e-2", "disable_tqdm=true",
                 "vision_pair_params={num_candidates: 6}", f"output_dir={out}"]) == 0
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "eval_loss" in x][-1]
    result = evaluate_vlm_run(str(out), data)
    assert result["metrics"]["loss"] == pytest.approx(logged["eval_loss"], abs=1e-6)
    assert result["metrics"]["rewards/accuracies"] == logged["eval_rewards/accuracies"]
    assert any("is the run's training data" in n for n in result["notes"])  # --data is the training file
