"""New-user trial 11 (an ML engineer who uses diffusers and VLMs): what it found, pinned.

- A model of one kind given to a task of another (builtin:tiny-qwen2-vl as a diffusion model, builtin:tiny-sd or a
  saved diffusers pipeline under task: vlm, a VLM builtin under task: dpo) reached the other kind's loader, which
  failed in its own words (a hub lookup, "Repo id must use alphanumeric chars", "no processor files"); preflight now
  refuses it naming the kind, the task's kind with its built-ins and the task that trains it.
- `preflab eval --task vlm / diffusion` stopped at one bad row of --data, saying "set on_bad_row: skip", an option
  eval does not take; it now skips and counts bad rows as the policy eval does (a note, eval.json's data_report),
  and the metrics equal those of the good rows alone.
- `diffusion_noising.mode: forwards` stopped the run only after the data was read and encoded, naming "PairNoiser
  mode"; it is checked with the config, naming the option.
- check_modality said "task 'vlm' trains text models" and, for a diffusion run, pointed to `preflab objectives`
  without naming the diffusion objectives; task: vlm with an unpaired loss named a batch class and no fix.
"""
import json
import shutil
from pathlib import Path

import pytest

from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest
from preflab.config import load_config, preflight
from preflab.errors import ConfigError, DataError
from preflab.models.model_kind import check_model_fits_task, model_kind


# ----------------------------------------------------------------------------------------- model kind vs task
@pytest.mark.parametrize("task,name,kind,trained_by", [
    ("diffusion", "builtin:tiny-qwen2-vl", "an image-text model", "vlm"),
    ("vlm", "builtin:tiny-sd", "a text-to-image pipeline", "diffusion"),
    ("vlm", "builtin:tiny-llama", "a causal language model", "dpo (or sft, reward)"),
    ("dpo", "builtin:tiny-qwen2-vl", "an image-text model", "vlm"),
    ("reward", "builtin:tiny-flux", "a text-to-image pipeline", "diffusion"),
    ("sft", "builtin:demo-sft", "the online demo's policy", "online")])
def test_a_builtin_of_another_kind_is_refused_naming_both_kinds(task, name, kind, trained_by):
    with pytest.raises(ConfigError) as err:
        check_model_fits_task(name, task)
    message = str(err.value)
    assert message.startswith(f"model_name_or_path={name!r} is {kind}, but task: {task} trains ")
    assert message.endswith(f"or set task: {trained_by} to train {kind}.")


def test_the_task_kind_and_its_builtins_are_named():
    with pytest.raises(ConfigError) as err:
        check_model_fits_task("builtin:tiny-qwen2-vl", "diffusion", "model_name_or_path")
    assert ("task: diffusion trains a text-to-image pipeline (e.g. builtin:tiny-sd, builtin:tiny-sd3, builtin:tiny-flux, "
            "a hub name or a saved folder of that kind)") in str(err.value)


@pytest.mark.parametrize("task,name", [("diffusion", "builtin:tiny-sd3"), ("vlm", "builtin:tiny-llava"),
                                       ("dpo", "builtin:tiny-gpt2"), ("online", "builtin:tiny-qwen2-vl"),
                                       ("online", "builtin:demo-sft"), ("vlm", "Qwen/Qwen2-VL-2B-Instruct"),
                                       ("icpl", "builtin:tiny-sd")])
def test_a_model_of_the_tasks_kind_or_of_unknown_kind_passes(task, name):
    check_model_fits_task(name, task)  # no error


def test_a_saved_pipeline_folder_is_a_pipeline_and_a_model_folder_is_unknown(tmp_path):
    pipe, model = tmp_path / "pipe", tmp_path / "model"
    pipe.mkdir(), model.mkdir()
    (pipe / "model_index.json").write_text("{}")
    (model / "config.json").write_text("{}")
    assert model_kind(str(pipe)) == "a text-to-image pipeline"
    assert model_kind(str(model)) is None and model_kind("builtin:tiny-nope") is None
    with pytest.raises(ConfigError, match="is a text-to-image pipeline, but task: vlm trains an image-text model"):
        check_model_fits_task(str(pipe), "vlm")
    check_model_fits_task(str(pipe), "diffusion")


@pytest.mark.parametrize("model_type,kind", [("qwen2_vl", "an image-text model"), ("llava", "an image-text model"),
                                              ("llama", "a causal language model"), ("gpt2", "a causal language model"),
                                              ("gemma3", None), ("my_remote_model", None)])
def test_a_transformers_folder_is_of_the_kind_its_model_type_loads_as(tmp_path, model_type, kind):
    """Only a type transformers maps to one of AutoModelForImageTextToText / AutoModelForCausalLM is certain: gemma3
    loads as either (a text DPO on it is legitimate) and a remote-code type as neither."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert model_kind(str(tmp_path)) == kind


def test_a_saved_vlm_run_under_task_dpo_is_refused_before_its_data_is_tokenized(tmp_path):
    """Seen: `preflab train examples/quickstart.yaml model_name_or_path=<a task: vlm run>` tokenized the data, then
    stopped with transformers' "Unrecognized configuration class ... Model type should be one of" ~100 classes."""
    (tmp_path / "vlm").mkdir()
    (tmp_path / "vlm" / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    cfg = load_config("examples/quickstart.yaml", [f"model_name_or_path={tmp_path / 'vlm'}",
                                                   f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    assert str(err.value).startswith(f"model_name_or_path={str(tmp_path / 'vlm')!r} is an image-text model, but task: "
                                     "dpo trains a causal language model")
    assert str(err.value).endswith("or set task: vlm to train an image-text model.")


def test_preflight_refuses_the_kind_before_any_data_is_read(tmp_path):
    """Through the config layer, as `preflab train` runs it: the dataset does not exist, so reaching it would fail
    with another error; the kind is refused first."""
    cfg = load_config("examples/diffusion/diffusion_dpo.yaml", ["model_name_or_path=builtin:tiny-qwen2-vl",
                                                                f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"^model_name_or_path='builtin:tiny-qwen2-vl' is an image-text model"):
        preflight(cfg)
    cfg = load_config("examples/vlm/dpo.yaml", ["ref_model_name_or_path=builtin:tiny-sd",
                                                f"output_dir={tmp_path / 'run2'}"])
    with pytest.raises(ConfigError, match=r"^ref_model_name_or_path='builtin:tiny-sd' is a text-to-image pipeline"):
        preflight(cfg)


# ------------------------------------------------------------------------------------- objective / task messages
def test_vlm_task_is_called_image_text_and_diffusion_objectives_are_listed():
    from preflab.objectives.base import check_modality

    with pytest.raises(ConfigError) as err:
        check_modality("diffusion_dpo", "vlm")
    assert "task 'vlm' trains image-text models (scored on their answers' tokens" in str(err.value)
    assert "trains text models" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        check_modality("sigmoid", "diffusion")
    assert ("use a diffusion objective (loss_type: diffusion_dpo | smpo_diffusion | diffusion_inpo | dcpo | ppd | "
            "self_npo;") in str(err.value)
    with pytest.raises(ConfigError, match="task 'dpo' trains text models"):  # unchanged where it is right
        check_modality("diffusion_dpo", "dpo")


def test_the_named_diffusion_objectives_are_every_registered_diffusion_objective():
    from preflab.objectives._registry import list_objectives, objective_class
    from preflab.objectives.base import MODALITY_OBJECTIVES

    registered = {name for name in list_objectives() if getattr(objective_class(name), "modality", "text") == "diffusion"}
    assert set(MODALITY_OBJECTIVES["diffusion"]) == registered


def test_vlm_with_an_unpaired_loss_says_to_use_a_pairwise_one(tmp_path):
    from preflab.loops.vlm import VisionTrainer

    cfg = load_config("examples/vlm/dpo.yaml", ["loss_type=kto", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError) as err:
        VisionTrainer(cfg)
    assert str(err.value) == ("task: vlm trains pairwise objectives (a chosen and a rejected answer per prompt); "
                              "loss_type 'kto' consumes UnpairedBatch rows. Use a pairwise loss_type (sigmoid, ipo, "
                              "robust, rrpo, ...: `preflab objectives` lists them).")


# ---------------------------------------------------------------------------------- diffusion_noising choices
@pytest.mark.parametrize("override,message", [
    ("diffusion_noising.mode=forwards",
     "diffusion_noising.mode must be one of forward, ddim_invert; got 'forwards'. Did you mean 'forward'?"),
    ("diffusion_noising.grid_snap=flor",
     "diffusion_noising.grid_snap must be one of exact, floor; got 'flor'. Did you mean 'floor'?")])
def test_a_misspelt_noising_value_is_refused_with_the_config(tmp_path, override, message):
    from preflab.loops.diffusion import check_diffusion_options

    cfg = load_config("examples/diffusion/diffusion_dpo.yaml", [override, f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError) as err:
        check_diffusion_options(cfg)
    assert str(err.value) == message


def test_valid_noising_values_pass_and_an_unknown_key_names_the_keys(tmp_path):
    from preflab.loops.diffusion import check_diffusion_options

    for mode, snap in (("forward", "exact"), ("ddim_invert", "floor")):
        cfg = load_config("examples/diffusion/diffusion_inpo.yaml", [f"diffusion_noising.mode={mode}",
                                                                     f"diffusion_noising.grid_snap={snap}"])
        check_diffusion_options(cfg)
    cfg = load_config("examples/diffusion/diffusion_dpo.yaml", ["diffusion_noising.mod=forward"])
    with pytest.raises(ConfigError) as err:
        check_diffusion_options(cfg)
    assert str(err.value).endswith("'renoise_iters', 'steps_offset']. Did you mean 'mode'?")


# ----------------------------------------------------------------------------- eval: bad rows skipped, counted
def test_skipped_rows_note_counts_reasons_and_names_the_first_bad_row():
    from preflab.eval.skipped_rows import skipped_rows_note

    report = {"train_rows": {"skipped": {"bad_image": 2}, "skipped_examples": [
        {"row_id": 3, "line": 4, "field": "images[0]", "reason": "bad_image", "detail": "no such file"}]},
        "train_tokenize": {"skipped": {"too_long": 1}}, "skipped": {"bad_image": 2, "too_long": 1}}
    note, parts = skipped_rows_note(report, 5, "d.jsonl")
    assert note == ("data: 3 bad row(s) of --data d.jsonl skipped (bad_image: 2, too_long: 1). First skipped: line 4, "
                    "field 'images[0]': bad_image (no such file). The rows are listed under data_report in eval.json; "
                    "the metrics cover the 5 pairs kept")
    assert parts == {"rows": report["train_rows"], "tokenize": report["train_tokenize"]}
    assert skipped_rows_note({"skipped": {}}, 5, "d.jsonl") == (None, {})
    with pytest.raises(DataError, match=r"no usable pairs in --data d.jsonl: every row was skipped as bad"):
        skipped_rows_note(report, 0, "d.jsonl")


VLM_DATA = Path("examples/vlm/data")
VLM_ROWS = [json.loads(line) for line in (VLM_DATA / "pairs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory):
    """A task: vlm run folder (the tiny starting policy saved as the final weights, with processor and config)."""
    from preflab.models.vlm import load_vlm

    root = tmp_path_factory.mktemp("trial11_vlm")
    run = root / "run"
    cfg = load_config("examples/vlm/dpo.yaml", [f"output_dir={run}"])
    policy, _, processor = load_vlm(cfg)
    policy.save_pretrained(run, safe_serialization=True)
    processor.save_pretrained(run)
    cfg.save(run / "config.yaml")
    return run


def _vlm_rows(rows, folder: Path) -> list[dict]:
    for name in {n for row in rows for n in row["images"]}:
        shutil.copy(VLM_DATA / name, folder / name)
    return rows


def test_vlm_eval_skips_a_bad_row_and_equals_the_eval_of_the_good_rows(vlm_run, tmp_path):
    from preflab.loops.vlm_eval import evaluate_vlm_run

    good = _vlm_rows(VLM_ROWS[:6], tmp_path)
    bad = {**VLM_ROWS[6], "images": ["red_sqare.png"]}  # a misspelt file name
    with_bad = write_jsonl(tmp_path / "with_bad.jsonl", good[:3] + [bad] + good[3:])
    only_good = write_jsonl(tmp_path / "good.jsonl", good)
    result, clean = evaluate_vlm_run(str(vlm_run), with_bad), evaluate_vlm_run(str(vlm_run), only_good)
    assert result["num_pairs"] == clean["num_pairs"] == 6
    assert result["metrics"] == pytest.approx(clean["metrics"], abs=1e-6)
    said = [n for n in result["notes"] if n.startswith("data: ")]
    assert said == [f"data: 1 bad row(s) of --data {with_bad} skipped (bad_image: 1). First skipped: line 4, field "
                    f"'images[0]': bad_image (image file 'red_sqare.png' does not exist (looked for "
                    f"'{tmp_path / 'red_sqare.png'}')). The rows are listed under data_report in eval.json; the metrics "
                    "cover the 6 pairs kept"]
    assert result["data_report"]["rows"]["skipped"] == {"bad_image": 1}
    assert "data_report" not in clean and not [n for n in clean["notes"] if n.startswith("data: ")]


DIFF_DATA = Path("examples/diffusion/data")
DIFF_ROWS = [json.loads(line) for line in (DIFF_DATA / "train.jsonl").read_text().splitlines()]


def _abs(row: dict) -> dict:
    return {**row, **{side: str((DIFF_DATA / row[side]).resolve()) for side in ("chosen_image", "rejected_image")}}


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    pytest.importorskip("diffusers")
    from preflab.diffusion.pipeline import load_pipeline

    root = tmp_path_factory.mktemp("trial11_diffusion")
    run = root / "run"
    train = write_jsonl(root / "train.jsonl", [_abs(r) for r in DIFF_ROWS[:4]])
    cfg = load_config("examples/diffusion/diffusion_dpo.yaml", [f"output_dir={run}", f"dataset_name={train}",
                                                                "eval_dataset_name=null"])
    load_pipeline(cfg.model_name_or_path, seed=cfg.seed).save_pretrained(run, safe_serialization=True)
    cfg.save(run / "config.yaml")
    return run


def test_diffusion_eval_skips_a_bad_row_and_equals_the_eval_of_the_good_rows(diffusion_run, tmp_path):
    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    good = [_abs(r) for r in DIFF_ROWS[4:9]]
    bad = {**good[0], "chosen_image": str(tmp_path / "missing.png")}
    with_bad = write_jsonl(tmp_path / "with_bad.jsonl", good[:2] + [bad] + good[2:])
    only_good = write_jsonl(tmp_path / "good.jsonl", good)
    result, clean = evaluate_diffusion_run(str(diffusion_run), with_bad), evaluate_diffusion_run(str(diffusion_run),
                                                                                                 only_good)
    assert result["num_pairs"] == clean["num_pairs"] == 5
    assert result["metrics"] == pytest.approx(clean["metrics"], abs=1e-6)
    said = [n for n in result["notes"] if n.startswith("data: ")]
    assert said == [f"data: 1 bad row(s) of --data {with_bad} skipped (missing_image: 1). First skipped: line 3, "
                    f"field 'chosen_image': missing_image (image file '{tmp_path / 'missing.png'}' does not exist). "
                    "The rows are listed under data_report in eval.json; the metrics cover the 5 pairs kept"]
    assert result["data_report"]["rows"]["skipped"] == {"missing_image": 1}


# ------------------------------------------------------------------------- vision rows: a list in 'image'
def test_a_list_of_images_in_the_single_image_column_says_to_use_images():
    from preflab.data.report import RowProblem
    from preflab.data.vision import vision_prompt

    row = {**VLM_ROWS[0], "image": VLM_ROWS[0]["images"]}
    del row["images"]
    with pytest.raises(RowProblem) as err:
        vision_prompt(row, str(VLM_DATA))
    assert (err.value.reason, err.value.field) == ("wrong_type", "image")
    assert err.value.detail == "'image' is TRL's single-image column (one image), but the row gives a list of 1"
    assert err.value.fix.startswith("Name a list of images 'images'")
    # one image in 'image' (a path, or an array image written as nested lists) reads as the same pixels as 'images'
    import numpy as np

    prompt, images = vision_prompt({**row, "image": VLM_ROWS[0]["images"][0]}, str(VLM_DATA))
    _, listed = vision_prompt(VLM_ROWS[0], str(VLM_DATA))
    assert np.array_equal(np.asarray(images[0]), np.asarray(listed[0]))
    nested = np.asarray(listed[0]).tolist()
    _, from_array = vision_prompt({**row, "image": nested}, str(VLM_DATA))
    assert np.array_equal(np.asarray(from_array[0]), np.asarray(listed[0]))


# ------------------------------------------------------------------ report headline: held-out pairs, seen prompts
def test_headline_says_the_pairs_are_held_out_when_only_their_prompts_were_trained_on():
    """A diffusion eval of held-out pairs on the training captions (the shipped examples' test.jsonl): eval.json's
    note says "the pairs are held-out but their prompts are not"; the headline said "(0 training pairs; not
    held-out)"."""
    from preflab.report.headline import trained_on_clause

    assert trained_on_clause({"overlap_with_training": {"prompts": 8, "pairs": 0, "rows": 8}}) == (
        ", 8 with a prompt the run trained on (0 training pairs; the prompts are not held-out)")
    assert trained_on_clause({"overlap_with_training": {"prompts": 8, "pairs": 3, "rows": 8}}) == (
        ", 8 with a prompt the run trained on (3 training pairs; not held-out)")
    assert trained_on_clause({"overlap_with_training": {"prompts": 0, "pairs": 0, "rows": 8}}) == ""


# --------------------------------------------------------------- demo diffusion --quiet: no pipeline-load bars
def test_quiet_demo_loads_pipelines_without_diffusers_bars(tmp_path, capsys):
    pytest.importorskip("diffusers")
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from preflab.demo.diffusion import pipeline_load_bars
    from preflab.diffusion.pipeline import load_pipeline

    load_pipeline("builtin:tiny-sd").save_pretrained(tmp_path / "pipe")
    assert diffusers_logging.is_progress_bar_enabled()
    with pipeline_load_bars(False):
        DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert "Loading pipeline components" not in capsys.readouterr().err
    assert diffusers_logging.is_progress_bar_enabled()  # put back as it was
    with pipeline_load_bars(True):
        DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert "Loading pipeline components" in capsys.readouterr().err


# ------------------------------------------------------------------- preflab eval --help for a diffusion user
def test_eval_help_gives_the_diffusion_reward_signature_and_the_win_rate_default():
    import re

    from preflab.cli import build_parser

    parser = build_parser()
    eval_parser = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "eval")[1]
    text = " ".join(eval_parser.format_help().split())
    assert "with --task diffusion, f(images, prompts): images uint8 [N, 3, S, S], one score per image" in text
    said = int(re.search(r"for the win rate \(default: (\d+)\)", text).group(1))
    assert said == parser.parse_args(["eval", "RUN", "--data", "x.jsonl"]).win_rate_prompts


# ------------------------------------------------------- the image demos' summary.json says what true_reward is
def test_the_image_demos_say_what_their_true_reward_is_and_the_folder_report_shows_it(tmp_path):
    """`preflab report outputs/demo-vlm` headlined true_reward 0.23 -> 0.70 with nothing saying it is a colour
    accuracy (the text demo's summary.json has `about`; the image demos' had none). Tiny settings: the text, not the
    gain, is under test."""
    import html

    pytest.importorskip("diffusers")
    from preflab.demo.diffusion import ABOUT as DIFFUSION_ABOUT, run_diffusion_demo
    from preflab.demo.vlm import ABOUT as VLM_ABOUT, run_vlm_demo
    from preflab.report.html import write_report

    vlm = run_vlm_demo(str(tmp_path / "vlm"), quiet=True, n_train=16, n_heldout=4, sft_steps=1, dpo_steps=1)
    diffusion = run_diffusion_demo(str(tmp_path / "diffusion"), quiet=True, num_pairs=8, vae_steps=1, sft_steps=1,
                                   dpo_steps=1, num_samples=2, sample_steps=1)
    for summary, about, folder in ((vlm, VLM_ABOUT, "vlm"), (diffusion, DIFFUSION_ABOUT, "diffusion")):
        assert summary["about"] == about
        assert json.loads((tmp_path / folder / "summary.json").read_text())["about"] == about
        page = write_report([str(tmp_path / folder)], tmp_path / f"{folder}.html")
        assert f'<p class="about">{html.escape(about)}</p>' in Path(page).read_text()
    assert "colour accuracy" in VLM_ABOUT and "dominance of red" in DIFFUSION_ABOUT


# ----------------------------------------------------------- report: the eval table's beta row names R* only where it is
def test_the_eval_tables_beta_row_names_r_star_only_where_an_eval_holds_it():
    from types import SimpleNamespace

    from preflab.report.html import eval_beta_doc

    def run(name, **eval_json):
        return SimpleNamespace(name=name, eval=eval_json)

    diffusion, vlm = run("d", task="diffusion"), run("v", task="vlm")
    text, unpaired = run("t", task="dpo"), run("u", num_completions=4)
    assert eval_beta_doc([diffusion], {"d": {"implicit_accuracy": 0.6}}) == (
        "beta of the implicit reward b (MSE_ref - MSE), in the run's convention (no R*)")
    assert eval_beta_doc([vlm], {"v": {"ranking_accuracy": 0.5}}) == "beta of the implicit reward"
    assert eval_beta_doc([text], {"t": {"idealized_ranking_accuracy": 0.9}}) == "beta of the implicit reward and of R*"
    assert eval_beta_doc([unpaired], {"u": {"unpaired/auroc": 0.7}}) == "beta of the implicit reward (unpaired rows: no R*)"
    assert eval_beta_doc([diffusion, vlm], {"d": {}, "v": {}}) == "beta of the implicit reward"


def test_limit_help_names_the_tasks_that_read_it_and_a_vlm_eval_refuses_it():
    from preflab.cli import build_parser
    from preflab.eval.cli import refuse_unread_options
    from preflab.eval_cli.cli import limit_help

    assert limit_help() == ("evaluate at most this many rows (the policy eval, --task reward, distill; --task diffusion "
                            "and vlm refuse it)")
    args = build_parser().parse_args(["eval", "RUN", "--data", "x.jsonl", "--task", "vlm", "--limit", "8"])
    with pytest.raises(ConfigError, match="does not use --limit"):
        refuse_unread_options(args, "vlm")
    refuse_unread_options(build_parser().parse_args(["eval", "RUN", "--data", "x.jsonl", "--limit", "8"]), "reward")


def test_a_diffusion_eval_refuses_a_reference_of_another_kind_before_reading_data(diffusion_run, tmp_path):
    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    with pytest.raises(ConfigError) as err:  # the data file does not exist: the kind is refused first
        evaluate_diffusion_run(str(diffusion_run), str(tmp_path / "absent.jsonl"), reference="builtin:tiny-qwen2-vl")
    assert str(err.value).startswith("--reference='builtin:tiny-qwen2-vl' is an image-text model, but task: "
                                     "diffusion trains a text-to-image pipeline")
