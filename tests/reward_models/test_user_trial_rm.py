"""Regressions from a reward-model user's trial: what a user saw silently wrong, each now loud or right."""
import json

import pytest
import torch

from reward_synthetic import marker_rows


def _eval_args(checkpoint, data, out, **kw):
    import argparse

    return argparse.Namespace(checkpoint=str(checkpoint), data=str(data), out=str(out), split="train", limit=None,
                              batch_size=8, max_length=1024, task="reward", **kw)


def test_eval_reward_says_how_many_rows_it_skipped_and_refuses_when_none_is_left(tiny_rm_dir, tmp_path, capsys):
    """`preflab eval --task reward` skipped bad rows (ties, empty sides, bad JSON) with the count only inside
    eval.json, and a file of ties alone ended in a raw `torch.cat(): expected a non-empty list` traceback."""
    from preflab.cli import main
    from preflab.errors import DataError

    rows = marker_rows(4, seed=0)
    data = tmp_path / "mix.jsonl"
    lines = [json.dumps(r) for r in rows] + [json.dumps({"prompt": "a", "chosen": " x", "rejected": " x"})] * 2
    data.write_text("\n".join(lines + ["not json"]) + "\n")
    assert main(["eval", str(tiny_rm_dir), "--task", "reward", "--data", str(data), "--out",
                 str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert "3 rows skipped and not scored (identical 2, invalid_json 1)" in printed
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["num_pairs"] == 4 and result["reward_eval"]["skipped"] == {"identical": 2, "invalid_json": 1}

    ties = tmp_path / "ties.jsonl"
    ties.write_text("\n".join(lines[4:6]) + "\n")
    from preflab.reward_models.eval import evaluate_reward_model

    with pytest.raises(DataError, match="no pair left to score.*identical"):
        evaluate_reward_model(str(tiny_rm_dir), str(ties), on_bad_row="skip")


def test_eval_reward_drops_and_reports_pairs_longer_than_max_length(tiny_rm_dir, tmp_path, capsys):
    """A pair longer than --max-length is dropped, as TRL's RewardTrainer filters it (it was cut and scored at its
    cut, and before that not said at all); the count and what to do are said, and it is in `skipped`."""
    from preflab.cli import main

    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "the cat", "chosen": " sat on the mat " * 6, "rejected": " ran"}) + "\n"
                    + json.dumps({"prompt": "a", "chosen": " good", "rejected": " bad"}) + "\n")
    assert main(["eval", str(tiny_rm_dir), "--task", "reward", "--data", str(data), "--max-length", "16",
                 "--out", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "1 pairs are longer than max_length=16 tokens and were dropped" in out and "raise --max-length" in out
    result = json.loads((tmp_path / "e.json").read_text())["reward_eval"]
    assert result["skipped"] == {"longer_than_max_length": 1} and result["num_pairs"] == 1
    assert result["truncated"] == {"prompt": 0, "response": 0}


@pytest.mark.parametrize("option, match", [({"layout": "prefix_packed"}, "batches padded rows"),
                                           ({"padding_free": True}, "batches padded rows"),
                                           ({"generate_during_eval": True}, "generates nothing")])
def test_reward_task_refuses_options_it_does_not_read(option, match):
    """layout (TRL's padding_free) and generate_during_eval were accepted by task: reward and ignored."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                          **option})


def test_reward_task_reads_max_completion_length(tmp_path):
    """max_completion_length was ignored by task: reward (responses kept whole, 'response truncated 0')."""
    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.data import load_reward_pairs

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "the cat", "chosen": " sat on the mat today", "rejected": " ran"}) + "\n")
    cfg = config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
                            "max_completion_length": 3})
    train, _, report, _ = load_reward_pairs(cfg, tiny_tokenizer())
    assert len(train[0].chosen_ids) == 3 and len(train[0].rejected_ids) <= 3
    assert report["train_tokenize"]["response_truncated"] == 1


def test_reward_task_loads_weights_in_load_dtype(tmp_path):
    """load_dtype (TRL's torch_dtype) was ignored by task: reward: the model was always built in float32."""
    from safetensors.torch import load_file

    from preflab.config import config_from_dict
    from preflab.reward_models.train import train_reward

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(8, seed=0)))
    cfg = config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
                            "load_dtype": "bfloat16", "max_steps": 1, "per_device_train_batch_size": 4,
                            "output_dir": str(tmp_path / "rm"), "disable_tqdm": True, "use_cpu": True,
                            "max_length": 64})
    train_reward(cfg)
    assert {t.dtype for t in load_file(str(tmp_path / "rm" / "model.safetensors")).values()} == {torch.bfloat16}


@pytest.mark.parametrize("bad", ["high", float("nan"), float("inf"), True])
def test_a_bad_margin_is_a_bad_row_not_a_traceback(bad):
    """A string margin ended training in a raw `ValueError: could not convert string to float`; a NaN margin
    made that batch's loss NaN and was trained on silently."""
    from preflab.data.rows import load_rows
    from preflab.errors import DataError
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.data import tokenize_reward_pairs

    rows = [{"prompt": "the cat", "chosen": " sat", "rejected": " ran", "margin": 1.5},
            {"prompt": "a dog", "chosen": " park", "rejected": " mat", "margin": bad},
            {"prompt": "a dog", "chosen": " good", "rejected": " mat"}]
    examples, _ = load_rows(rows, kind="pairwise")
    with pytest.raises(DataError, match="row 1, field 'margin'.*not a finite number"):
        tokenize_reward_pairs(examples, tiny_tokenizer(), source="rows")
    pairs, report = tokenize_reward_pairs(examples, tiny_tokenizer(), on_bad_row="skip")
    assert [p.row_id for p in pairs] == [0, 2] and [p.extras["margin"] for p in pairs] == [1.5, 0.0]
    assert report.skipped == {"bad_margin": 1} and report.kept == 2
    report.check()


def test_a_gpm_judge_drops_a_completion_it_cannot_read_instead_of_ending_the_run():
    """An online run judged by a GPM directory stopped with "row 4, field 'completion': the text contains
    '<|system|>'" when the policy wrote a special token of the judge's tokenizer; a reward-model judge scored
    such a completion NaN and counted it (judge/failed). Now the GPM drops it too, and the other completions keep
    their mean win rate against each other."""
    import math

    from preflab.loops.judge import Judge
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.gpm import GPMHead
    from preflab.reward_models.heads import build_reward_model
    from preflab.reward_models.interface import GPMPreference

    tok = tiny_tokenizer()
    bad = "<|system|>"  # a control token of the judge's tokenizer (as the demo policy wrote)
    pm = GPMPreference(build_reward_model("builtin:tiny-llama", 4, tok, seed=0), tok, head=GPMHead(dim=4))
    completions = [" sat", f" ran {bad}", " the mat", " park"]
    judge = Judge(pm)
    scores, _ = judge(["the cat"] * 4, completions, [0, 0, 0, 0])
    assert math.isnan(scores[1]) and judge.failed == 1
    good = [completions[i] for i in (0, 2, 3)]
    w = pm.win_rate_matrix("the cat", good).double()
    expected = (w.sum(-1) - w.diagonal()) / 2
    torch.testing.assert_close(scores[[0, 2, 3]], expected, atol=1e-6, rtol=0)


def test_eval_says_when_the_model_never_saw_the_contexts(tiny_rm_dir, tmp_path, capsys):
    """A model trained without contexts, evaluated on context rows (RPR-style reversals), scored the prompt alone:
    reversal_accuracy 0 and per_context accuracies a and 1 - a, with nothing saying the contexts were unseen."""
    from preflab.cli import main

    rows = []
    for r in marker_rows(3, seed=0):
        rows += [{**r, "context": "likes good"},
                 {**r, "chosen": r["rejected"], "rejected": r["chosen"], "context": "hates good"}]
    data = tmp_path / "ctx.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", str(tiny_rm_dir), "--task", "reward", "--data", str(data), "--out",
                 str(tmp_path / "e.json")]) == 0
    assert "6 rows carry a `context` this model was not trained with" in capsys.readouterr().out
    result = json.loads((tmp_path / "e.json").read_text())["reward_eval"]
    assert result["context_not_shown"] == 6 and result["reversal_accuracy"] == 0.0


def test_eval_shows_per_subset_accuracy_and_report_names_the_reward_eval(tiny_rm_dir, tmp_path, capsys):
    """Per-subset accuracy was only inside eval.json's reward_eval (not printed, not in the report's table), and
    `preflab report` on a reward run told the user to run the policy eval (`--reference REF`)."""
    import shutil

    from preflab.cli import main
    from preflab.report.html import _eval_section
    from preflab.report.runs import load_run

    data = tmp_path / "ev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(8, seed=0)))
    run = tmp_path / "run"
    shutil.copytree(tiny_rm_dir, run)
    (run / "config.yaml").write_text("task: reward\n")
    loaded = load_run(run)
    assert any("--task reward --data HELDOUT" in m for m in loaded.missing)
    assert "--task reward --data HELDOUT" in _eval_section([loaded])
    assert main(["eval", str(run), "--task", "reward", "--data", str(data)]) == 0
    out = json.loads((run / "eval.json").read_text())
    per = out["reward_eval"]["per_subset"]
    assert out["metrics"]["reward_model/subset/s1/accuracy"] == per["s1"]["accuracy"]
    assert out["metrics"]["reward_model/subset/s2/accuracy"] == per["s2"]["accuracy"]
    assert "reward_model/subset/s1/accuracy" in capsys.readouterr().out
    assert "reward_model/subset/s2/accuracy" in _eval_section([load_run(run)])


@pytest.mark.parametrize("attributes, rating, match", [
    (("helpfulness", "verbosty"), 1.0, r"no row rates \['verbosty'\].*rate \['helpfulness', 'verbosity'\]"),
    (("helpfulness", "verbosity"), "high", r"row 1, field 'helpfulness': the rating 'high' is not a finite"),
    (("helpfulness", "verbosity"), float("nan"), r"row 1, field 'helpfulness': the rating nan is not a finite")])
def test_multi_objective_rows_refuse_a_typo_d_attribute_and_bad_ratings(attributes, rating, match):
    """A misspelt attribute was never observed: its head output trained on nothing while the run logged
    mse/<attribute> = 0.0; a string rating was a raw ValueError, a NaN rating a NaN loss."""
    from preflab.errors import DataError
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.multi_objective import tokenize_rated

    rows = [{"prompt": "q", "response": " a", "ratings": {"helpfulness": 2.0, "verbosity": 1.0}},
            {"prompt": "q", "response": " b", "ratings": {"helpfulness": rating, "verbosity": None}}]
    with pytest.raises(DataError, match=match):
        tokenize_rated(rows, tiny_tokenizer(), attributes)


def test_a_mid_run_checkpoint_of_a_reward_run_evaluates_and_judges(tmp_path):
    """`preflab eval RUN/checkpoint-N --task reward` ended in a raw transformers "Unrecognized model ... Should have
    a `model_type` key" traceback (a checkpoint holds the trained parameters only); a missing directory in a raw
    OSError about huggingface.co. Now the checkpoint is rebuilt on its base: the last checkpoint scores exactly as
    the final model."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError
    from preflab.reward_models.eval import evaluate_reward_model
    from preflab.reward_models.interface import load_judge
    from preflab.reward_models.train import train_reward

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(16, seed=0)))
    out = tmp_path / "rm"
    train_reward(config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama",
                                   "dataset_name": str(data), "max_steps": 2, "save_steps": 1,
                                   "per_device_train_batch_size": 8, "learning_rate": 1e-2, "max_length": 64,
                                   "output_dir": str(out), "disable_tqdm": True, "use_cpu": True}))
    held_out = marker_rows(8, seed=1)
    final = evaluate_reward_model(str(out), held_out)
    last = evaluate_reward_model(str(out / "checkpoint-2"), held_out)
    first = evaluate_reward_model(str(out / "checkpoint-1"), held_out)
    assert last["mean_logit"] == pytest.approx(final["mean_logit"], abs=1e-6)
    assert first["mean_logit"] != pytest.approx(final["mean_logit"], abs=1e-4)
    prompts, responses = [r["prompt"] for r in held_out], [r["chosen"] for r in held_out]
    torch.testing.assert_close(load_judge(str(out / "checkpoint-2")).score(prompts, responses),
                               load_judge(str(out)).score(prompts, responses), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="not a directory"):
        evaluate_reward_model(str(out / "checkpoint-9"), held_out)


def test_the_eval_sets_skipped_rows_are_said(tmp_path, capsys):
    """With on_bad_row: skip, rows of eval_dataset_name were dropped without a word (only the training set's counts
    were printed, and the eval set's row report was not kept)."""
    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.data import load_reward_pairs

    train, held = tmp_path / "t.jsonl", tmp_path / "e.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(4, seed=0)))
    rows = marker_rows(3, seed=1) + [{"prompt": "a", "chosen": " x", "rejected": " x"}] * 2
    held.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(train),
                            "eval_dataset_name": str(held), "eval_split": "train", "on_bad_row": "skip"})
    _, evals, report, _ = load_reward_pairs(cfg, tiny_tokenizer())
    assert len(evals) == 3 and report["eval_rows"]["skipped"] == {"identical": 2}
    # the eval set's line reads as the policy tasks' (`preflab: data (eval):`, docs/configuration.md), not `eval data:`
    out = capsys.readouterr().out
    assert "preflab: data (eval): " + str(held) + " (pairwise): 5 rows, 3 kept, 2 skipped (identical: 2)" in out


@pytest.mark.parametrize("last_token_head", [False, True])
def test_training_from_a_model_with_another_head_width_keeps_the_backbone(tmp_path, capsys, last_token_head):
    """Starting a BT run from a GPM (or any classifier with another number of labels) ended in transformers'
    raw "ignore_mismatched_sizes" RuntimeError; a fallback-head model (reward_head.safetensors) came back with its
    old 4-output head, of which the BT loss silently read output 0 only."""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.reward_models.heads import build_reward_model, reward_model_from_config

    tok = tiny_tokenizer()
    gpm = reward_model_from_config(tiny_causal_lm(tok).config, 4, tok.pad_token_id, seed=3,
                                   last_token_head=last_token_head)
    gpm.save_pretrained(tmp_path, safe_serialization=True)
    bt = build_reward_model(str(tmp_path), 1, tok, seed=0)
    assert "has a 4-output head and this run's head has 1 output(s)" in capsys.readouterr().out
    assert bt.score.weight.shape[0] == 1
    old = {k.removeprefix("model.").removeprefix("backbone."): v for k, v in gpm.state_dict().items()
           if "score" not in k}
    new = {k.removeprefix("model.").removeprefix("backbone."): v for k, v in bt.state_dict().items()
           if "score" not in k}
    assert old.keys() == new.keys()
    for key in old:
        torch.testing.assert_close(new[key], old[key], atol=0, rtol=0)


def test_a_policy_directory_is_not_taken_for_a_reward_model(tmp_path):
    """`preflab eval POLICY_DIR --task reward` (or `reward_funcs: POLICY_DIR`) loaded the causal LM into a
    sequence classifier with a randomly initialised head and reported its accuracy (about chance) as a result."""
    from preflab.errors import ConfigError
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.tasks import resolve_judge
    from preflab.reward_models.eval import evaluate_reward_model

    tok = tiny_tokenizer()
    tiny_causal_lm(tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no trained reward head.*LlamaForCausalLM"):
        evaluate_reward_model(str(tmp_path), marker_rows(4, seed=0))
    with pytest.raises(ConfigError, match="no trained reward head"):
        resolve_judge(str(tmp_path))


def test_a_multi_objective_model_as_a_judge_is_refused_when_loaded_without_a_direction(tmp_path):
    """`reward_funcs: DPA_DIR` loaded and then stopped the run at the first judged round ("give direction=", which
    a config cannot); load_judge now says so when the judge is loaded, and with a direction it scores v^T r."""
    from preflab.errors import ConfigError
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.heads import build_reward_model, set_reward_config
    from preflab.reward_models.interface import RewardModel, load_judge

    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-llama", 2, tok, seed=0)
    set_reward_config(model, {"head": "multi_objective", "attributes": ["helpfulness", "verbosity"]})
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"multi-output reward model \(\['helpfulness', 'verbosity'\]\)"):
        load_judge(str(tmp_path))
    judge = load_judge(str(tmp_path), direction=[0.6, 0.8])
    raw = RewardModel(model, tok).outputs(["the cat"], [" sat"])
    torch.testing.assert_close(judge.score(["the cat"], [" sat"]), raw @ torch.tensor([0.6, 0.8]), atol=1e-6,
                               rtol=0)


def test_a_fallback_head_bt_model_still_loads_as_a_judge(tmp_path):
    """The multi-output check above reads the head's width, not config.num_labels (2 by default on a backbone)."""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.reward_models.heads import reward_model_from_config, set_reward_config
    from preflab.reward_models.interface import RewardModel, load_judge

    tok = tiny_tokenizer()
    model = reward_model_from_config(tiny_causal_lm(tok).config, 1, tok.pad_token_id, last_token_head=True)
    set_reward_config(model, {"head": "bt", "tau": 1.0})
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    torch.testing.assert_close(load_judge(str(tmp_path)).score(["a"], [" b"]),
                               RewardModel(model, tok).score(["a"], [" b"]), atol=1e-6, rtol=0)


def test_preflab_train_trains_a_gpm_with_reward_head(tmp_path):
    """A GPM could only be trained from Python (train_reward(cfg, head=GPMHead(...))); `preflab train` had no
    option for it. reward_head: gpm trains one, saved with its head description; misspelt parameters are errors."""
    from preflab.cli import main
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError
    from preflab.reward_models.gpm import GPMHead
    from preflab.reward_models.interface import GPMPreference, load_judge
    from preflab.reward_models.train import head_from_cfg

    base = {"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}
    assert head_from_cfg(config_from_dict({**base, "reward_head": "gpm",
                                           "reward_head_params": {"dim": 4, "tau": 0.5}})) == GPMHead(4, 0.5)
    with pytest.raises(ConfigError, match=r"\['dims'\] are not fields of reward_head: gpm"):
        head_from_cfg(config_from_dict({**base, "reward_head": "gpm", "reward_head_params": {"dims": 4}}))
    with pytest.raises(ConfigError, match="only apply to task: reward"):
        config_from_dict({**base, "task": "dpo", "reward_head": "gpm"})
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(16, seed=0)))
    out = tmp_path / "gpm"
    assert main(["train", "task=reward", "model_name_or_path=builtin:tiny-llama", f"dataset_name={data}",
                 "reward_head=gpm", "reward_head_params={dim: 4}", f"output_dir={out}", "max_steps=2",
                 "per_device_train_batch_size=8", "max_length=64", "disable_tqdm=true", "use_cpu=true"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reward_model"] == {"head": "gpm", "dim": 4, "tau": 0.1, "normalize": True}
    judge = load_judge(str(out))
    assert isinstance(judge, GPMPreference) and judge.head == GPMHead(4)
    p = judge.prefer(["a", "b"], [" good", " x"], [" y", " good"])
    torch.testing.assert_close(p + judge.prefer(["a", "b"], [" y", " good"], [" good", " x"]), torch.ones(2),
                               atol=1e-6, rtol=0)


def test_a_context_aware_reward_model_judges_with_the_rows_context():
    """An online judge trained with contexts (its config stores the context template) scored the prompt alone:
    the prompt rows' `context` column never reached it. A model trained without contexts is still given none."""
    from preflab.loops.judge import Judge
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.heads import build_reward_model, set_reward_config
    from preflab.reward_models.interface import RewardModel

    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-llama", 1, tok, seed=0)
    set_reward_config(model, {"head": "bt", "tau": 1.0, "context_template": "Context: {context}\n\n{prompt}"})
    rm = RewardModel(model, tok)
    prompts, completions = ["the cat", "the cat"], [" sat", " sat"]
    columns = [{"context": "likes cats"}, {"context": "hates cats"}]
    scores, _ = Judge(rm, cache=False)(prompts, completions, [0, 1], columns)
    expected = rm.score(prompts, completions, contexts=["likes cats", "hates cats"]).double()
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)
    assert scores[0] != scores[1]
    set_reward_config(model, {"head": "bt", "tau": 1.0})
    plain = RewardModel(model, tok)
    scores, _ = Judge(plain, cache=False)(prompts, completions, [0, 1], columns)
    torch.testing.assert_close(scores, plain.score(prompts, completions).double(), atol=1e-6, rtol=0)


def test_a_judge_and_prompt_rows_that_disagree_about_contexts_get_one_note_each(capsys):
    """Trial 19: a context-aware reward model judging prompt rows without a `context` scored them unconditioned,
    and a plain one ignored the rows' `context`, both without a word. Each case now gets one note per judge; the
    scores are the model's own (with the context where the model reads it, without where it does not)."""
    from preflab.loops.judge import Judge
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.heads import build_reward_model, set_reward_config
    from preflab.reward_models.interface import RewardModel

    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-llama", 1, tok, seed=0)
    set_reward_config(model, {"head": "bt", "tau": 1.0, "context_template": "Context: {context}\n\n{prompt}"})
    aware = RewardModel(model, tok)
    prompts, completions = ["the cat", "the dog"], [" sat", " ran"]
    judge = Judge(aware, cache=False)
    for _ in range(2):  # two rounds, one note
        scores, _ = judge(prompts, completions, [0, 1], [{}, {}])
    torch.testing.assert_close(scores, aware.score(prompts, completions).double(), atol=1e-6, rtol=0)
    out = capsys.readouterr().out
    assert out.count("is a context-aware reward model (trained with contexts), but these prompt rows give no "
                     "`context`") == 1
    judge(prompts, completions, [0, 1], [{"context": "likes cats"}, {"context": "likes dogs"}])
    assert "note" not in capsys.readouterr().out  # model and rows agree: nothing to say
    set_reward_config(model, {"head": "bt", "tau": 1.0})
    plain = RewardModel(model, tok)
    scores, _ = Judge(plain, cache=False)(prompts, completions, [0, 1], [{"context": "likes cats"}, {}])
    torch.testing.assert_close(scores, plain.score(prompts, completions).double(), atol=1e-6, rtol=0)
    assert capsys.readouterr().out.count("the prompt rows give a `context`, which judge") == 1


def test_reward_eval_says_its_training_data_is_not_held_out(tiny_rm_dir, tmp_path, capsys):
    """`preflab eval --task reward` on the run's own training file said nothing, where the policy, VLM and
    diffusion evals note that the metrics are not held-out (README: preflab eval)."""
    import shutil

    from preflab.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(8, seed=0)))
    other = tmp_path / "heldout.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(8, seed=1)))
    run = tmp_path / "run"
    shutil.copytree(tiny_rm_dir, run)
    (run / "config.yaml").write_text(f"task: reward\nmodel_name_or_path: builtin:tiny-llama\ndataset_name: {data}\n"
                                     "eval_fraction: 0.25\nseed: 3\n")
    assert main(["eval", str(run), "--task", "reward", "--data", str(data)]) == 0
    note = (f"--data {data} (split train) is the run's training data (dataset_name): only the eval_fraction=0.25 of "
            "its rows the run held out (seed 3) were not trained on, so these metrics are not held-out; evaluate a "
            "held-out file for generalization")
    assert json.loads((run / "eval.json").read_text())["notes"] == [note]
    assert note in capsys.readouterr().out
    assert main(["eval", str(run), "--task", "reward", "--data", str(other)]) == 0
    assert json.loads((run / "eval.json").read_text())["notes"] == []


def test_eval_reward_on_unpaired_rows_says_what_the_rows_are(tiny_rm_dir, tmp_path):
    """`preflab eval RM --task reward --data kto.jsonl` said only "no pair left to score (10 rows; skipped:
    {'missing_field': 10}); ... a pair needs a non-empty chosen and rejected"; it now shows the first skipped row and
    why (the rows are TRL's unpaired form), as the policy eval does (user-trial-3)."""
    from preflab.errors import DataError
    from preflab.reward_models.eval import evaluate_reward_model

    data = tmp_path / "kto.jsonl"
    data.write_text("".join(json.dumps({"prompt": "p", "completion": c, "label": c == " a"}) + "\n"
                            for c in (" a", " b")))
    with pytest.raises(DataError) as err:
        evaluate_reward_model(str(tiny_rm_dir), str(data), on_bad_row="skip")
    assert str(err.value) == (
        f"{data}: no pair left to score (2 rows; skipped: {{'missing_field': 2}}). First skipped: line 1, field "
        "'chosen': missing_field (missing: the row is TRL's unpaired preference form (prompt, completion, label), not "
        "a preference pair). A reward model is evaluated on preference pairs (prompt, chosen, rejected; a pair needs "
        "a non-empty chosen and rejected that differ): fix the rows or point --data at other rows.")
