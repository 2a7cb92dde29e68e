"""Regressions from a reward-model user's trial (an engineer coming from TRL's RewardTrainer): train, evaluate,
reload, judge and resume reward models as docs/reward-models.md says; each finding now right or loud."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "reward_models"))  # reward_synthetic


def _reward_cfg(out, data, **kw):
    from preflab.config import config_from_dict

    return config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
                             "per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-2,
                             "logging_steps": 1, "use_cpu": True, "seed": 0, "output_dir": str(out), **kw})


def _pairs_file(tmp_path, n=8, name="pairs.jsonl", **extra):
    from reward_synthetic import marker_rows

    path = tmp_path / name
    path.write_text("".join(json.dumps({**r, **extra}) + "\n" for r in marker_rows(n, seed=0)))
    return path


def test_reward_eval_loss_keeps_the_runs_center_rewards_coefficient_and_tau(tmp_path):
    """TRL's compute_loss adds center_rewards_coefficient * mean((r_w + r_l)^2) in evaluation too, so the run's
    eval_loss has it; `preflab eval --task reward` (docs: "equal to the run's final eval_* on the same data") dropped
    it (saved head: {head: bt, tau}). Also a checkpoint of a run killed before writing config.json was scored with
    tau 1 whatever reward_head_params said."""
    from preflab.reward_models.eval import evaluate_reward_model
    from preflab.reward_models.heads import load_reward_checkpoint
    from preflab.reward_models.train import train_reward

    data = _pairs_file(tmp_path)
    out = tmp_path / "run"
    summary = train_reward(_reward_cfg(out, data, eval_dataset_name=str(data), center_rewards_coefficient=0.5,
                                       reward_head_params={"tau": 0.5}, save_steps=2))
    final = summary["final_metrics"]
    result = evaluate_reward_model(str(out), str(data))
    assert result["loss"] == pytest.approx(final["eval_loss"], abs=1e-5)
    assert result["mean_logit"] == pytest.approx(final["eval_margin"] / 0.5, abs=1e-5)
    (out / "config.json").unlink()  # as a killed run leaves it: checkpoints only
    from preflab.models.tiny import tiny_tokenizer

    checkpoint = evaluate_reward_model(load_reward_checkpoint(out / "checkpoint-2"), str(data),
                                       tokenizer=tiny_tokenizer())
    assert checkpoint["loss"] == pytest.approx(final["eval_loss"], abs=1e-5)
    assert checkpoint["mean_logit"] == pytest.approx(result["mean_logit"], abs=1e-5)


def test_rows_without_a_margin_beside_rows_with_one_are_counted_and_said(tmp_path, capsys):
    """A `margin` column with gaps (null in some rows, absent in others) trained those rows with margin 0 and said
    nothing (TRL's collator fails on a null margin, so such a gap is likely a data mistake). Now counted in the
    run's data report and eval.json, with a note in both."""
    from preflab.reward_models.cli import reward_eval_notes
    from preflab.reward_models.eval import evaluate_reward_model
    from preflab.reward_models.train import train_reward

    path = _pairs_file(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        if i % 3 == 0:
            row["margin"] = None
        elif i % 3 == 1:
            row["margin"] = 1.5  # rows 2 and 5 (i % 3 == 2) have no margin key at all
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = train_reward(_reward_cfg(tmp_path / "run", path, max_steps=1))
    assert summary["data"]["margin_missing"] == 5  # rows 0, 3, 6 (null) and 2, 5 (absent)
    assert f"{path}: 5 rows have no margin (null or absent) beside rows that have one" in capsys.readouterr().out
    result = evaluate_reward_model(str(tmp_path / "run"), str(path))
    assert result["margin_missing"] == 5
    assert any(n.startswith("--data: 5 rows have no margin") for n in reward_eval_notes(result, 1024))
    # a file where no row has a margin is the ordinary case: nothing to say
    plain = _pairs_file(tmp_path, name="plain.jsonl")
    assert evaluate_reward_model(str(tmp_path / "run"), str(plain))["margin_missing"] == 0


def test_eval_split_with_eval_strategy_evaluates_on_that_split_of_dataset_name(capsys):
    """TRL's `dataset_test_split: test` with `eval_strategy: steps` evaluated on dataset_name's test split, but
    preflab's own name for it (`eval_split`, documented as "TRL script: dataset_test_split") was refused ("needs
    an eval set"). Both spellings now give the same config; the refusal without either names eval_split."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    base = dict(task="reward", model_name_or_path="builtin:tiny-llama", dataset_name="data/dd",
                eval_strategy="steps", eval_steps=3)
    ours = config_from_dict(dict(base, eval_split="test"))
    trl = config_from_dict(dict(base, dataset_test_split="test"))
    assert (ours.eval_dataset_name, ours.eval_split) == (trl.eval_dataset_name, trl.eval_split) == ("data/dd", "test")
    assert "eval_split: test with eval_strategy: steps -> eval_dataset_name: data/dd (its 'test' split)" in \
        capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"needs an eval set: set eval_dataset_name or eval_fraction, or eval_split "
                                          r"\(TRL's dataset_test_split, e.g. test\) for a split of dataset_name"):
        config_from_dict(base)


def test_report_of_a_reward_run_says_which_pairs_the_data_report_left_out(tmp_path):
    """A reward run dropped the pairs longer than max_length (TRL's filter) and said so on the terminal once; its
    `preflab report` showed the curves and metrics as of a run on the whole file. Now the report's notes carry
    summary.json's data report: what each set left out, by reason and of how many."""
    from preflab.report.runs import load_run
    from preflab.reward_models.train import train_reward

    path = _pairs_file(tmp_path, n=12)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[3]["chosen"] += " and a very long tail that no short max_length can hold" * 3
    rows[7]["rejected"] += " and a very long tail that no short max_length can hold" * 3
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    summary = train_reward(_reward_cfg(out, path, max_length=64, max_steps=1))
    assert summary["data"]["train_tokenize"]["skipped"] == {"longer_than_max_length": 2}
    notes = load_run(out).missing
    assert f"data: training examples (tokenized) of {path}: 2 of 12 left out (longer_than_max_length 2)" in notes
    assert "data: 2 training examples per epoch are not trained on in that epoch (every step takes a full global " \
           "batch; unused_rows_per_epoch)" in notes  # 10 pairs in steps of 4
    assert "no eval rows in metrics.jsonl: set eval_steps and an eval set (eval_fraction or eval_dataset_name) to " \
           "log the reward model's held-out accuracy, margin and loss (eval_accuracy, eval_margin, eval_loss)" in notes


def test_reward_eval_reports_calibration_ece_and_brier_by_hand():
    """`preflab eval --task reward` gave accuracy but nothing on whether P(chosen > rejected) = sigmoid(logit) is
    calibrated (a TRL user checks it before using the model's probabilities). ece (Guo et al. 2017, 10 confidence
    bins over [0.5, 1]) and brier, checked by hand on five probabilities."""
    import torch

    from preflab.reward_models.calibration import calibration

    p = torch.tensor([0.92, 0.92, 0.08, 0.5, 0.77], dtype=torch.float64)
    out = calibration(torch.log(p / (1 - p)))
    # bins: [0.9, 0.95): three pairs at confidence 0.92, two right; [0.5, 0.55): the tie (wrong) at 0.5;
    # [0.75, 0.8): one right at 0.77
    assert [(b["low"], b["count"]) for b in out["calibration_bins"]] == [(0.5, 1), (0.75, 1), (0.9, 3)]
    assert out["ece"] == pytest.approx(3 / 5 * abs(2 / 3 - 0.92) + 1 / 5 * 0.5 + 1 / 5 * 0.23, abs=1e-12)
    assert out["brier"] == pytest.approx((0.08 ** 2 * 2 + 0.92 ** 2 + 0.25 + 0.23 ** 2) / 5, abs=1e-12)


def test_calibration_counts_a_tie_as_wrong_beside_a_right_pair_in_its_bin():
    """A tie (logit 0, confidence 1/2) is wrong by the accuracy's rule. Alone in its bin, right or wrong give the same
    |acc - conf| = 1/2; beside a right pair at p = 0.52 in [0.5, 0.55): acc 1/2, conf 0.51, ece 2/3 x 0.01 +
    1/3 x |1 - 0.92| (the pair at 0.92, right, in [0.9, 0.95))."""
    import torch

    from preflab.reward_models.calibration import calibration

    p = torch.tensor([0.5, 0.52, 0.92], dtype=torch.float64)
    out = calibration(torch.log(p / (1 - p)))
    assert [(b["low"], b["count"], b["accuracy"]) for b in out["calibration_bins"]] == [(0.5, 2, 0.5), (0.9, 1, 1.0)]
    assert out["ece"] == pytest.approx(2 / 3 * 0.01 + 1 / 3 * 0.08, abs=1e-12)


def test_preflab_eval_reward_prints_ece_and_brier(tmp_path, capsys):
    """The command prints and writes what evaluate_reward_model computes; the bins hold every pair."""
    from preflab.cli import main
    from preflab.reward_models.eval import evaluate_reward_model
    from preflab.reward_models.train import train_reward

    data = _pairs_file(tmp_path)
    train_reward(_reward_cfg(tmp_path / "run", data))
    assert main(["eval", str(tmp_path / "run"), "--task", "reward", "--data", str(data)]) == 0
    metrics = json.loads((tmp_path / "run" / "eval.json").read_text())["metrics"]
    result = evaluate_reward_model(str(tmp_path / "run"), str(data))
    assert metrics["reward_model/ece"] == pytest.approx(result["ece"], abs=1e-9)
    assert metrics["reward_model/brier"] == pytest.approx(result["brier"], abs=1e-9)
    assert "reward_model/margin_missing" not in metrics
    assert "reward_model/ece" in capsys.readouterr().out
    assert sum(b["count"] for b in result["calibration_bins"]) == result["num_pairs"] == 8


def test_reward_eval_on_the_training_folder_names_the_split_the_run_evaluated_on(tmp_path, capsys):
    """A run trained on folder/train.jsonl and evaluated on folder/test.jsonl (eval_split: test, TRL's
    dataset_test_split); `preflab eval RUN --task reward --data folder --split train` said "evaluate a held-out
    file" although the held-out split sits in the same folder. The note now names `--split test`; with it (and
    without --split, which reads test as the policy eval) the eval loss is the run's own final eval_loss."""
    from preflab.cli import main
    from preflab.reward_models.train import train_reward

    folder = tmp_path / "prefs"
    folder.mkdir()
    _pairs_file(folder, name="train.jsonl")
    rows = _pairs_file(tmp_path, n=12, name="all.jsonl").read_text().splitlines()[8:]
    (folder / "test.jsonl").write_text("".join(line + "\n" for line in rows))
    summary = train_reward(_reward_cfg(tmp_path / "run", folder, eval_dataset_name=str(folder), eval_split="test"))
    assert main(["eval", str(tmp_path / "run"), "--task", "reward", "--data", str(folder), "--split", "train"]) == 0
    assert (f"--data {folder} (split train) is the run's training data (dataset_name): every row was trained on, so "
            "these metrics are not held-out; give --split test, the split the run evaluated on") in \
        capsys.readouterr().out
    for split in (["--split", "test"], []):  # no --split reads test too (as the policy eval: open_eval_split)
        assert main(["eval", str(tmp_path / "run"), "--task", "reward", "--data", str(folder), *split]) == 0
        out = json.loads((tmp_path / "run" / "eval.json").read_text())
        assert out["num_pairs"] == 4 and not any("training data" in n for n in out["notes"])
        assert out["metrics"]["reward_model/loss"] == pytest.approx(summary["final_metrics"]["eval_loss"], abs=1e-5)


def test_load_best_model_note_does_not_give_the_loaded_checkpoint_an_unsaved_steps_metric(tmp_path):
    """A reward run with eval_steps 5, save_steps 10 and load_best_model_at_end (eval_loss): the best eval was at
    step 25, which has no checkpoint, so (as transformers) checkpoint-10 is loaded, the last best step that was
    saved. The run said "loaded the best model from .../checkpoint-10 (eval_loss 9.80031)": step 25's loss, not
    checkpoint-10's (10.40). The note now says which step holds the best loss and that it was not saved."""
    from preflab.loops.best_model import BestModel

    best = BestModel("eval_loss", greater_is_better=False)
    losses = {5: 12.2, 10: 10.4, 15: 9.92, 20: 9.94, 25: 9.80031, 30: 9.8003273}  # the trial run's eval_loss
    for step, loss in losses.items():
        best.update({"eval_loss": loss}, step)
        if step % 10 == 0:
            (tmp_path / f"checkpoint-{step}").mkdir()
            best.note_checkpoint(tmp_path, step)
    assert (best.best_global_step, best.best_model_checkpoint) == (25, str(tmp_path / "checkpoint-10"))
    assert best.loaded_note() == (
        f"loaded the best saved model from {tmp_path / 'checkpoint-10'} (step 10); the best eval_loss, 9.80031, was "
        "at step 25, which has no checkpoint (as transformers, the last best step that was saved is loaded; "
        "save_steps equal to eval_steps saves every candidate). The final model is its weights.")
    best.update({"eval_loss": 9.0}, 40)
    (tmp_path / "checkpoint-40").mkdir()
    best.note_checkpoint(tmp_path, 40)
    assert best.loaded_note() == (f"loaded the best model from {tmp_path / 'checkpoint-40'} (eval_loss 9); the "
                                  "final model is its weights.")


def test_reward_rows_without_a_shared_prompt_train_on_the_whole_texts_as_trl(tmp_path):
    """TRL's RewardTrainer tokenizes `chosen` and `rejected` whole when a row has no prompt; preflab refused every
    implicit row whose two texts share no start ("no_common_prompt"), and an explicit empty prompt ("empty
    string"), so such a dataset could not train a reward model. A reward model scores the whole text, so these rows
    now read with the prompt "" (form standard_no_prompt); the ids are TRL's, tokenizer(text + eos). Offline DPO,
    which needs a prompt, still refuses them."""
    from preflab.data.rows import load_rows
    from preflab.errors import DataError
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.data import tokenize_reward_pairs
    from preflab.reward_models.eval import evaluate_reward_model
    from preflab.reward_models.train import train_reward

    rows = [{"chosen": "Paris is the capital.", "rejected": "London is the capital."},
            {"chosen": "Yes, gladly.", "rejected": "No."}, {"prompt": "", "chosen": "A fine answer", "rejected": "Meh"},
            {"chosen": "Sure thing", "rejected": "Nope"}]
    path = tmp_path / "whole.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = train_reward(_reward_cfg(tmp_path / "run", path, max_steps=1))
    assert summary["data"]["train_rows"]["forms"] == {"standard_no_prompt": 4}
    assert evaluate_reward_model(str(tmp_path / "run"), str(path))["num_pairs"] == 4
    tok = tiny_tokenizer()
    examples, report = load_rows(str(path), prompt_optional=True)
    assert report.forms == {"standard_no_prompt": 4}
    pairs, _ = tokenize_reward_pairs(examples, tok)
    for row, pair in zip(rows, pairs):
        assert pair.prompt_ids + pair.chosen_ids == tok(row["chosen"] + tok.eos_token)["input_ids"]
        assert pair.prompt_ids + pair.rejected_ids == tok(row["rejected"] + tok.eos_token)["input_ids"]
    with pytest.raises(DataError, match="share no prefix that ends at a word boundary"):
        load_rows(str(path))  # the default (DPO and the other offline tasks): a prompt is needed


def test_lora_modules_to_save_score_is_what_a_lora_reward_run_does(capsys):
    """TRL's reward-model recipe passes `--lora_task_type SEQ_CLS` and often `--lora_modules_to_save score`; PEFT's
    SEQ_CLS already trains the score head whole, as preflab's LoRA reward run does. lora_modules_to_save was
    refused for every value; under task: reward, [score] is accepted with a note. Other values are PEFT's
    modules_to_save now (a name that matches no module of the model is refused when the adapters are built:
    tests/loops/test_lora_trl_options.py)."""
    from preflab.config import config_from_dict

    base = {"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
            "use_peft": True, "lora_task_type": "SEQ_CLS"}
    cfg = config_from_dict({**base, "lora_modules_to_save": ["score"]})
    assert cfg.use_peft and "lora_modules_to_save: [score]: task: reward trains the score head whole" in \
        capsys.readouterr().err
    assert cfg.lora_modules_to_save is None  # the note's [score] is what SEQ_CLS does: not passed twice
    assert config_from_dict({**base, "lora_modules_to_save": ["embed_tokens"]}).lora_modules_to_save == [
        "embed_tokens"]
    assert config_from_dict({**base, "task": "dpo", "lora_task_type": "CAUSAL_LM", "lora_modules_to_save": [
        "lm_head"]}).lora_modules_to_save == ["lm_head"]


def test_a_themis_model_as_a_judge_or_in_reward_eval_is_named_not_called_headless(tmp_path):
    """`preflab eval RUN/with_traces --task reward` (or the folder as `reward_funcs`) of a Themis run said the model
    "has no trained reward head ... its scores would come from a random head", though its value head is trained:
    a Themis model scores by generating tool calls, which neither path runs. Now named, with what scores it."""
    from preflab.errors import ConfigError
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.reward_models.heads import load_reward_model, set_reward_config
    from preflab.reward_models.themis import ThemisModel

    model = ThemisModel(tiny_causal_lm(tiny_tokenizer()))
    set_reward_config(model, {"head": "themis", "with_trace": True})  # as the Themis run's RewardRun saves it
    model.save_pretrained(tmp_path / "with_traces")
    with pytest.raises(ConfigError, match=r"with_traces is a Themis tool-augmented reward model .*"
                                          r"ThemisModel.from_pretrained and score with score_with_tools"):
        load_reward_model(str(tmp_path / "with_traces"))
    assert ThemisModel.from_pretrained(str(tmp_path / "with_traces")).value_head.weight.shape[0] == 1


def test_eval_on_start_refusal_does_not_promise_a_reward_run_a_dpo_metric():
    """A reward run's `eval_on_start: true` was refused with "its eval_reference_ranking_accuracy measures the
    starting model", a DPO metric a reward run never logs. eval_on_start now runs (tests/test_eval_on_start.py);
    without an eval set it is refused for that reason alone, naming no task's metric."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"eval_on_start: true evaluates the starting model before the first step, "
                                          r"but there is no eval set") as err:
        config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                          "eval_on_start": True})
    assert "eval_reference_ranking_accuracy" not in str(err.value)


def test_a_gpm_run_says_when_margins_are_beyond_what_its_score_can_reach(tmp_path, capsys):
    """A TRL-scale margin column (1, 2, ...) under reward_head: gpm trained silently, but a normalised GPM score has
    |s| <= 1, so -log sigma((s - m) / tau) stays >= log(1 + e^((m - 1) / tau)) for m >= 1 (trial: eval_loss 9.8 on
    margins 0 / 1 / 2.5). Now a note counts those pairs; a BT run on the same rows says nothing."""
    import math

    import torch

    from preflab.reward_models.gpm import GPMHead
    from preflab.reward_models.train import train_reward

    path = _pairs_file(tmp_path)
    rows = [dict(json.loads(line), margin=[0.0, 0.5, 1.0, 2.5][i % 4])
            for i, line in enumerate(path.read_text().splitlines())]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_reward(_reward_cfg(tmp_path / "gpm", path, reward_head="gpm", reward_head_params={"dim": 2},
                             learning_rate=1e-3, max_steps=1))
    assert ("4 of 8 training pairs have a margin >= 1 (largest 2.5), which a normalised GPM score s (|s| <= 1) can "
            "never exceed") in capsys.readouterr().out
    train_reward(_reward_cfg(tmp_path / "bt", path, max_steps=1))
    assert "margin >= 1" not in capsys.readouterr().out
    # the bound the note states: at the best possible s = 1 the loss of margin 2.5 is log(1 + e^15)
    head, v = GPMHead(dim=2), torch.tensor([[1.0, 0.0]])
    out = head.loss(v, torch.tensor([[0.0, 1.0]]), {"margin": torch.tensor([2.5])})  # s = 1
    assert float(out.loss) == pytest.approx(math.log1p(math.exp(15.0)), rel=1e-6)
