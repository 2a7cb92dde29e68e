"""User trial 22 ("beyond text, as first-class runs"): an image-text GRPO run (online_task: vision_dataset,
Vision-R1) had no evaluation, yet eval_steps was accepted and evaluated nothing, `preflab eval RUN` stopped on the
reference ("a hub name ... hf download" for builtin:tiny-qwen2-vl) or in transformers' AutoModelForCausalLM error,
and the report told the user to run `preflab eval RUN --task vlm`, which was refused. Now the config refuses the
options that ask for an evaluation, every `preflab eval` refuses the run with one message saying where its measure
is, and the report says so instead of naming refused commands."""
import yaml

import pytest

from preflab.cli import main
from preflab.config import TrainConfig, config_from_dict
from preflab.errors import ConfigError

VISION = {"task": "online", "online_task": "vision_dataset", "trainer": "grpo",
          "model_name_or_path": "builtin:tiny-qwen2-vl", "dataset_name": "examples/vlm/data/grounding.jsonl",
          "reward_funcs": ["verifier:vision_r1_format"], "max_steps": 2, "use_cpu": True}
WHY = ("online_task: vision_dataset has no evaluation (no eval_* metrics; it reads no eval set), so nothing would be "
       "evaluated; remove {}. The run's measure is the judges' reward on its training prompts (reward, "
       "rewards/<judge>/mean in metrics.jsonl).")


def _refusal(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    return str(err.value)


@pytest.mark.parametrize("extra, named, pronoun", [
    ({"eval_steps": 2}, "eval_steps=2", "it"),
    ({"eval_on_start": True}, "eval_on_start=True", "it"),
    # eval_strategy steps sets eval_steps to logging_steps (transformers' rule) first; it was refused as "needs an
    # eval set", an eval set this task refuses
    ({"eval_strategy": "steps", "logging_steps": 3}, "eval_strategy='steps' and eval_steps=3", "them"),
])
def test_an_option_asking_a_vision_grpo_run_for_an_evaluation_is_refused_naming_it(extra, named, pronoun):
    message = _refusal({**VISION, **extra})
    assert f"{named}: {WHY.format(pronoun)}" in message
    assert "needs an eval set" not in message
    # the same options on a text online run with an eval set are read (eval_steps evaluates there)
    text = {**VISION, "online_task": "dataset", "model_name_or_path": "builtin:tiny-llama",
            "dataset_name": "examples/data/loud_echo_pairs.jsonl", "eval_fraction": 0.5, **extra}
    assert isinstance(config_from_dict(text), TrainConfig)


def test_the_vision_grpo_run_without_eval_options_is_accepted():
    cfg = config_from_dict(dict(VISION))
    assert (cfg.eval_steps, cfg.eval_on_start, cfg.online_task) == (0, False, "vision_dataset")


@pytest.mark.parametrize("task", [None, "vlm", "dpo"])
def test_preflab_eval_refuses_a_vision_grpo_run_saying_where_its_measure_is(tmp_path, capsys, task):
    from preflab.eval.run_files import vision_grpo_eval_refusal

    run = tmp_path / "r1"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(VISION))
    (run / "config.json").write_text('{"model_type": "qwen2_vl"}')
    (run / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (run / "checkpoint-2" / "model.safetensors").write_bytes(b"")
    for target in (run, run / "checkpoint-2"):
        args = ["eval", str(target), "--data", str(tmp_path / "rows.jsonl")] + (["--task", task] if task else [])
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"preflab: error: {vision_grpo_eval_refusal(target)}" in err
        assert "hf download" not in err and "AutoModelForCausalLM" not in err
    # the checkpoint's message points to the run's folder for the model and the report
    said = vision_grpo_eval_refusal(run / "checkpoint-2")
    assert f"`preflab report {run}`" in said and f"from_pretrained({str(run)!r})" in said


def _corrupt_png(tmp_path):
    path = tmp_path / "corrupt.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return path


def test_a_corrupt_image_file_is_named_in_the_diffusion_row_error(tmp_path):
    """The diffusion data error named the data file, row and field but not the image file ("the image cannot be
    read"); a pair row names two files. It names the file now; bytes keep "the image"."""
    from preflab.data.report import RowProblem
    from preflab.diffusion.images import load_image

    bad = _corrupt_png(tmp_path)
    with pytest.raises(RowProblem) as err:
        load_image("corrupt.png", "chosen_image", 16, base_dir=tmp_path)
    assert (err.value.reason, err.value.field) == ("bad_image", "chosen_image")
    assert err.value.detail.startswith(f"image file {str(bad)!r} cannot be read (")
    assert err.value.fix == "Replace the file or drop the row."
    with pytest.raises(RowProblem) as err:
        load_image(bad.read_bytes(), "chosen_image", 16)
    assert err.value.detail.startswith("the image cannot be read (")


def test_a_corrupt_image_file_is_named_in_the_vision_row_error(tmp_path):
    from preflab.data.media import load_image
    from preflab.data.report import RowProblem

    bad = _corrupt_png(tmp_path)
    with pytest.raises(RowProblem) as err:
        load_image("corrupt.png", "images[0]", str(tmp_path))
    assert err.value.detail.startswith(f"image file {str(bad)!r}: not a readable image (")
    assert err.value.fix == "Replace the file or drop the row."
    with pytest.raises(RowProblem) as err:
        load_image(bad.read_bytes(), "images[0]")
    assert err.value.detail.startswith("not a readable image (") and err.value.fix == ""


def test_the_self_npo_eval_refusal_says_what_to_use_instead(tmp_path, capsys):
    """`preflab eval SELF_NPO_RUN` said only "self_npo runs are not supported"; it now names the run's own held-out
    rows, the report, `preflab sample` and npo_guidance, for the run's folder (a checkpoint's is one level up)."""
    run = tmp_path / "npo"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "diffusion", "loss_type": "self_npo",
                                                     "model_name_or_path": "builtin:tiny-sd"}))
    (run / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (run / "checkpoint-2" / "model.safetensors").write_bytes(b"")
    for target in (run, run / "checkpoint-2"):
        assert main(["eval", str(target), "--data", str(tmp_path / "rows.jsonl")]) == 2
        err = capsys.readouterr().err
        assert ("preflab: error: preflab eval --task diffusion reads pairwise runs; self_npo runs are not supported "
                "(self_npo: a negative model for classifier-free guidance, trained without pairs). Instead: its "
                f"held-out numbers are the eval_* rows of {run}/metrics.jsonl (eval_loss, eval_x0/rmse; set "
                f"eval_dataset_name), drawn by `preflab report {run}`; `preflab sample {run} --prompt TEXT` draws the "
                "negative model's images, and preflab.diffusion.guidance.npo_guidance samples a positive model "
                "guided by it.") in err
