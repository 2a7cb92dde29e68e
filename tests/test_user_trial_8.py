"""User trial 8 (diffusion, VLM, reward models, eval / report): each test reproduces a finding and asserts the fixed
message or value."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_a_pami_vdpo_run_says_its_layout_and_calls_its_rows_single_response(tmp_path, capsys, monkeypatch):
    """Before: the data line called sft.jsonl's one-answer rows "(pairwise)", no `layout:` line was printed, and
    summary.json said layout prefix_shared while every batch was scored padded (each pair's rejected side has its own,
    perturbed, images: collate_vision_pairs falls back per batch, without a word)."""
    from preflab.config import load_config
    from preflab.loops.vlm import VisionTrainer

    monkeypatch.chdir(ROOT)
    trainer = VisionTrainer(load_config("examples/vlm/pami_vdpo.yaml", [f"output_dir={tmp_path / 'pami'}"]))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("preflab: ")]
    data = [line for line in lines if "vision data:" in line]
    assert data == ["preflab: vision data: examples/vlm/data/sft.jsonl (single-response): 8 rows, 8 kept, 0 skipped; "
                    "forms: vision_standard 8; vision_pairs: pami_vdpo built 8 train pairs, 0 eval pairs"]
    layout = [line for line in lines if line.startswith("preflab: layout:")]
    assert layout == ["preflab: layout: prefix_shared shares one prompt per pair, but all 8 pairs score the rejected "
                      "answer on other images than the chosen (input-side negatives: vision_pairs: pami_vdpo's "
                      "perturbed images, or a `rejected_images` column); scoring with the padded layout (the prompt "
                      "computed once per side, same log-probs)."]
    assert trainer.layout == "padded"  # summary.json's `layout` (TrainingRun.summary_extras)
    assert "rejected_answers_unused" not in trainer.data_report and not [x for x in lines if "are not used" in x]
    assert trainer.data_report["train_rows"]["kind"] == "single-response"
    # the batches are padded, as the line says: two rows per pair
    assert trainer.collate(trainer.train_data[:2]).input_ids.shape[0] == 4


def test_a_pairs_file_given_to_pami_vdpo_says_its_rejected_answers_are_not_used(tmp_path, capsys, monkeypatch):
    """Before: pami_vdpo on chosen/rejected rows took `chosen` as the answer and dropped every `rejected` answer
    without a word (cat_adpo refuses such rows, naming vision_pairs: given)."""
    from preflab.config import load_config
    from preflab.data.vision import read_vision_pairs
    from preflab.loops.vlm import VisionTrainer

    monkeypatch.chdir(ROOT)
    rows = "examples/vlm/data/pairs.jsonl"
    assert read_vision_pairs(rows, responses_only=True)[1].rejected_unused == 8
    assert read_vision_pairs(rows)[1].rejected_unused == 0  # vision_pairs: given reads them
    assert read_vision_pairs("examples/vlm/data/sft.jsonl", responses_only=True)[1].rejected_unused == 0
    trainer = VisionTrainer(load_config("examples/vlm/pami_vdpo.yaml", [
        f"output_dir={tmp_path / 'pami'}", "dataset_name=examples/vlm/data/pairs.jsonl",
        "vision_pair_params={num_candidates: 1, augmentations: [flip]}"]))
    notes = [line for line in capsys.readouterr().out.splitlines() if "are not used" in line]
    assert notes == ["preflab: note: data: examples/vlm/data/pairs.jsonl: vision_pairs: pami_vdpo reads one answer "
                     "per row (`response`, else `chosen`) and builds the rejected side itself; the `rejected` answers "
                     "of 8 of the 8 rows are not used. To train on the given pairs, set vision_pairs: given."]
    assert trainer.data_report["rejected_answers_unused"] == 8


def test_the_layout_line_counts_the_pairs_with_their_own_rejected_images(tmp_path, capsys):
    """Given pairs (vision_pairs: given) where some rows have a `rejected_images` column: the line counts them and
    the layout stays prefix_shared for the others; the layout the trainer reports is the one collate builds."""
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "vlm"))
    from vlm_helpers import image, pair_row, tiny

    from preflab.config import config_from_dict
    from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs
    from preflab.loops.vlm import VisionTrainer
    from preflab.models.load import frozen_copy

    model, processor = tiny("llava")
    rows = [pair_row(chosen="it is red", rejected="it is blue", seed=i) for i in range(3)]
    rows[1]["rejected_images"] = [image((20, 20, 200), seed=9)]
    examples, report = read_vision_pairs(rows)
    assert report.kind == "pairwise"  # two answers per row: unchanged
    pairs, _, _ = tokenize_vision_pairs(examples, processor)
    cfg = config_from_dict(dict(task="vlm", model_name_or_path="builtin:tiny-llava", dataset_name="unused",
                                output_dir=str(tmp_path / "run"), per_device_train_batch_size=1, max_steps=1,
                                disable_tqdm=True, use_cpu=True))
    trainer = VisionTrainer(cfg, policy=model, ref=frozen_copy(model), processor=processor, train_data=pairs)
    assert trainer.layout == "prefix_shared"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("preflab: layout:")]
    assert lines == ["preflab: layout: prefix_shared shares one prompt per pair, but 1 of the 3 pairs score the "
                     "rejected answer on other images than the chosen (input-side negatives: vision_pairs: "
                     "pami_vdpo's perturbed images, or a `rejected_images` column); a batch holding one of them is "
                     "scored with the padded layout (same log-probs), the others with prefix_shared."]
    # one pair per batch: row 1's batch is padded (two rows, one per side), the others shared (one row)
    assert [trainer.collate([p]).input_ids.shape[0] for p in pairs] == [1, 2, 1]
    # every pair's own images shared: no line, prefix_shared
    same, _, _ = tokenize_vision_pairs([examples[0], examples[2]], processor)
    trainer2 = VisionTrainer(cfg, policy=model, ref=frozen_copy(model), processor=processor, train_data=same)
    assert trainer2.layout == "prefix_shared"
    assert "preflab: layout:" not in capsys.readouterr().out


@pytest.mark.parametrize("given, layout", [({"layout": "packed"}, "packed"), ({"layout": "prefix_packed"}, "prefix_packed"),
                                           ({"padding_free": True}, "prefix_packed")])
def test_task_vlm_refuses_the_packed_layouts_it_does_not_build(given, layout):
    """Before: layout: packed on task: vlm trained padded and prefix_packed trained prefix_shared (summary.json said
    so afterwards, nothing before): vision_layout_choice maps every other name to padded / prefix_shared."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    base = {"task": "vlm", "model_name_or_path": "builtin:tiny-llava", "dataset_name": "rows.jsonl"}
    with pytest.raises(ConfigError) as err:
        config_from_dict({**base, **given})
    assert (f"layout={layout!r} (or TRL's padding_free: true) is not built for task: vlm, which lays image-text "
            "pairs out as prefix_shared") in str(err.value)
    assert "Set layout: prefix_shared or padded." in str(err.value)
    for ok in ("prefix_shared", "padded"):  # the two it builds: unchanged
        assert config_from_dict({**base, "layout": ok}).layout == ok


def test_diffusion_win_rate_refuses_a_reward_function_with_the_wrong_count_and_notes_what_it_left_out(tmp_path,
                                                                                                    monkeypatch):
    """Before: a --reward-fn returning N - 1 scores for N images gave a win rate over the first N - 1 prompts without
    a word (zip), and a NaN score made reward/policy NaN; reward/policy / reward/reference were in eval.json but
    not printed."""
    import torch

    from preflab.cli import main
    from preflab.errors import ConfigError
    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    monkeypatch.chdir(ROOT)
    out, data = tmp_path / "dpo", "examples/diffusion/data/test.jsonl"
    assert main(["train", "examples/diffusion/diffusion_dpo.yaml", f"output_dir={out}", "max_steps=1",
                 "eval_dataset_name=null", "disable_tqdm=true", "sample_steps=2"]) == 0

    def short(images, prompts):
        return torch.zeros(images.shape[0] - 1)

    with pytest.raises(ConfigError) as err:
        evaluate_diffusion_run(str(out), data, reward_fn=short, num_prompts=3)
    assert str(err.value) == ("--reward-fn short returned 2 scores for the trained pipeline's 3 images; it must "
                              "return one per image (None where it cannot score one).")

    seen = {}

    def red_but_first(images, prompts):  # no score for the first prompt
        red = images[:, 0].double().mean((1, 2))
        seen.setdefault("policy", red)  # the trained pipeline's samples are scored first
        return [float("nan")] + red[1:].tolist()

    result = evaluate_diffusion_run(str(out), data, reward_fn=red_but_first, num_prompts=3)
    assert result["win_rate"]["failed"] == 1 and result["win_rate"]["n"] == 2
    assert result["notes"][-1] == ("1 prompt(s) had no score (None, NaN or inf from the reward function) and are "
                                   "left out of the win rate (n = 2)")
    assert result["metrics"]["reward/policy"] == pytest.approx(float(seen["policy"][1:].mean()), abs=1e-12)


def test_diffusion_reward_scores_are_checked_and_all_ties_are_said():
    """image_rewards: one finite score per image or None; a raise names the function and the samples' shape.
    win_rate_note: all ties (a constant reward) are said; a mixed result has no note."""
    import torch

    from preflab.errors import ConfigError
    from preflab.eval.winrate import win_rate
    from preflab.loops.diffusion_eval import image_rewards, win_rate_note

    images = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    assert image_rewards(lambda im, p: torch.tensor([[1.0], [float("inf")], [2.5]]), images, ["a", "b", "c"],
                         "trained") == [1.0, None, 2.5]

    def broken(images, prompts):
        raise KeyError("clip")

    with pytest.raises(ConfigError) as err:
        image_rewards(broken, images, ["a", "b", "c"], "reference")
    assert str(err.value).startswith("--reward-fn broken raised KeyError on the reference pipeline's samples (images "
                                     "uint8 [3, 3, 4, 4], 3 prompts): 'clip'. It is called as f(images, prompts)")
    tied = win_rate([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert tied.win_rate == 0.5 and win_rate_note(tied) == (
        "all 3 compared prompts are ties (the reward function gave the trained and the reference pipeline's images "
        "the same score: a constant function, or samples that did not change), so win_rate 0.5 says nothing about "
        "the run")
    assert win_rate_note(win_rate([1.0, 2.0, 1.0], [1.0, 1.0, 1.0])) is None


def test_self_npo_on_pair_rows_says_it_uses_the_chosen_images_and_encodes_no_rejected_one(tmp_path, capsys,
                                                                                        monkeypatch):
    """Before: examples/diffusion/self_npo.yaml (a pair file) trained on each pair's chosen image and set the rejected
    one aside without a word, after VAE-encoding it. Rows {prompt, image} give no note."""
    from preflab.config import load_config
    from preflab.loops.diffusion import DiffusionRun

    monkeypatch.chdir(ROOT)
    run = DiffusionRun(load_config("examples/diffusion/self_npo.yaml", [f"output_dir={tmp_path / 'pairs'}",
                                                                         "eval_dataset_name=null"]))
    lines = [line for line in capsys.readouterr().out.splitlines() if "self_npo trains on one image" in line]
    assert lines == ["preflab: note: data: self_npo trains on one image per row: 16 of the 16 training rows are "
                     "preference pairs, of which it uses the chosen image (with its caption) and not the rejected one "
                     "(16 rejected images unused). Self-NPO needs no preferences: rows {prompt, image}, or prompts "
                     "alone, train it the same way."]
    assert run.data_report["rejected_images_unused"] == 16
    assert sorted({side for _, side in run.latents}) == ["chosen"] and len(run.latents) == 16
    # the same images as {prompt, image} rows: no note, the same latents
    rows = tmp_path / "images.jsonl"
    src = (ROOT / "examples/diffusion/data/train.jsonl").read_text().splitlines()
    rows.write_text("\n".join(json.dumps({"prompt": r["prompt"], "image": str(ROOT / "examples/diffusion/data" /
                                                                               r["chosen_image"])})
                              for r in map(json.loads, src)) + "\n")
    images = DiffusionRun(load_config("examples/diffusion/self_npo.yaml", [f"output_dir={tmp_path / 'images'}",
                                                                           "eval_dataset_name=null",
                                                                           f"dataset_name={rows}"]))
    assert "self_npo trains on one image" not in capsys.readouterr().out
    assert images.data_report["rejected_images_unused"] == 0
    import torch

    assert all(torch.equal(images.latents[(id(b), "chosen")], run.latents[(id(a), "chosen")])
               for a, b in zip(run.train_data, images.train_data))


def test_a_rated_row_with_a_misspelt_attribute_is_said_not_trained_silently(tmp_path, capsys, monkeypatch):
    """Before: {"ratings": {"helpfulnes": 2, "verbosity": 1}} under attributes [helpfulness, verbosity] trained
    verbosity alone for that row without a word. Keys of a ratings object that are not attributes are counted and
    said (a close one as a likely misspelling); top-level columns are not ratings and are not counted."""
    from preflab.cli import main
    from preflab.reward_models.multi_objective import load_rated

    rows = [{"prompt": f"echo: w{i}\n", "response": f"W{i}" if i % 2 else f"w{i}",
             "ratings": {"helpfulness": float(i % 2), "verbosity": 1.0, "correctness": 2.0}} for i in range(16)]
    rows[3] = {**rows[3], "ratings": {"helpfulnes": 2.0, "verbosity": 1.0}}
    rows[5] = {"prompt": "echo: x\n", "response": "X", "helpfulness": 1.0, "source": "web"}  # top-level form
    kept, report = load_rated(rows, ["helpfulness", "verbosity"])
    assert kept[3]["ratings"] == {"helpfulness": None, "verbosity": 1.0}
    assert report.ratings_not_trained == {"correctness": 14, "helpfulnes": 1}
    data = tmp_path / "rated.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.chdir(ROOT)
    assert main(["train", "examples/upo_reward_model.yaml", f"output_dir={tmp_path / 'dpa'}", f"dataset_name={data}",
                 "reward_head=multi_objective", "reward_head_params={attributes: [helpfulness, verbosity]}",
                 "max_steps=1", "disable_tqdm=true"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "are not trained on" in line]
    assert notes == [f"preflab: note: data: {data}: ratings not among reward_head_params.attributes ['helpfulness', "
                     "'verbosity'] are not trained on: 'correctness' in 14 row(s), 'helpfulnes' in 1 row(s) (a "
                     "misspelt 'helpfulness'?). Fix a misspelt name in the rows, or add the attribute to "
                     "reward_head_params.attributes."]
    summary = json.loads((tmp_path / "dpa" / "summary.json").read_text())
    assert summary["data"]["train_ratings_not_trained"] == {"correctness": 14, "helpfulnes": 1}


@pytest.mark.parametrize("task, args, said", [
    ("diffusion", ["--confidence", "1.5"], "--confidence must be in (0, 1), got 1.5."),
    ("diffusion", ["--win-rate-prompts", "-2"], "--win-rate-prompts must be at least 1, got -2."),
    ("diffusion", ["--batch-size", "0"], "--batch-size must be at least 1, got 0."),
    ("vlm", ["--batch-size", "0"], "--batch-size must be at least 1, got 0."),
    ("reward", ["--max-length", "0"], "--max-length must be at least 1, got 0."),
])
def test_routed_eval_tasks_refuse_out_of_range_numbers_before_loading(task, args, said, tmp_path, capsys):
    """Before: `--task diffusion --confidence 1.5` was a StatisticsError traceback after both pipelines had sampled,
    `--win-rate-prompts 0` a tokenizer IndexError, `--win-rate-prompts -2` judged all prompts but the last two."""
    from preflab.cli import main

    missing = tmp_path / "no-run"  # refused before the run is looked at
    assert main(["eval", str(missing), "--task", task, "--data", str(tmp_path / "d.jsonl"), *args]) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"preflab: error: {said}"


def test_pickscores_that_reorder_pick_a_pic_labels_are_counted_and_said():
    """Before: with ps_score_0 / ps_score_1 present the scores ordered every Pick-a-Pic pair (SmPO's rule) for every
    loss_type, so a diffusion_dpo run trained some pairs against their human label_0, and kept label_0 ties as
    pairs, without a word."""
    from preflab.diffusion.data import load_image_pairs

    images = ROOT / "examples/diffusion/data/images"
    a, b = str(images / "train-0-chosen.png"), str(images / "train-0-rejected.png")
    row = {"caption": "a red disc", "jpg_0": a, "jpg_1": b}
    rows = [{**row, "label_0": 1, "ps_score_0": 0.25, "ps_score_1": 0.20},   # agrees
            {**row, "label_0": 1, "ps_score_0": 0.20, "ps_score_1": 0.25},   # reversed: jpg_1 first
            {**row, "label_0": 0, "ps_score_0": 0.25, "ps_score_1": 0.20},   # reversed: jpg_0 first
            {**row, "label_0": 0.5, "ps_score_0": 0.21, "ps_score_1": 0.24},  # a tie ordered by the scores
            {**row, "label_0": 0.5},                                          # a tie, no scores: dropped
            {**row, "label_0": 0}]                                            # no scores: the label orders
    examples, report = load_image_pairs(rows, resolution=16)
    assert [x.chosen_ref.field for x in examples] == ["jpg_0", "jpg_1", "jpg_0", "jpg_1", "jpg_1"]
    assert (report.label_reversed_by_scores, report.label_ties_ordered_by_scores, report.ties_dropped) == (2, 1, 1)
    assert report.to_dict()["label_reversed_by_scores"] == 2 and report.to_dict()["label_ties_ordered_by_scores"] == 1
    assert report.scores_note() == (
        "<rows>: 2 pair(s) whose ps_score_0 / ps_score_1 order reverses label_0 and 1 label_0 tie(s) (0.5) kept as "
        "pairs ordered by their scores: with both PickScores the scores order a Pick-a-Pic pair (SmPO's rule, the "
        "reward model over the human label), for every loss_type. To train on the human labels, drop the "
        "ps_score_0 / ps_score_1 columns.")
    agreeing, plain = load_image_pairs(rows[:1] + rows[4:], resolution=16)
    assert plain.scores_note() is None and "label_reversed_by_scores" not in plain.to_dict()


def test_a_model_dir_that_is_no_pipeline_is_refused_before_the_data_is_read(tmp_path, capsys):
    """Before: the training set was read (every image decoded: hours for Pick-a-Pic) and its data line printed, then
    the model directory was found to hold no model_index.json. Now the file checks come first (the data named here
    does not even exist), and a folder with a config.json is said to be one model, not a pipeline."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError
    from preflab.loops.diffusion import DiffusionRun

    model = tmp_path / "vlm-run"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = config_from_dict({"task": "diffusion", "loss_type": "diffusion_dpo", "model_name_or_path": str(model),
                            "dataset_name": str(tmp_path / "missing.jsonl"), "resolution": 16, "use_cpu": True,
                            "output_dir": str(tmp_path / "out")})
    with pytest.raises(ConfigError) as err:
        DiffusionRun(cfg)
    assert str(err.value) == (f"{model} is not a diffusers pipeline directory (no model_index.json) (it holds a "
                              "config.json: one model, such as a transformers model or a single pipeline component, "
                              "not a pipeline); save one with pipeline.save_pretrained(dir).")
    assert "preflab: data:" not in capsys.readouterr().out
