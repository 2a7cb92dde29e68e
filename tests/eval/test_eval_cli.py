"""`preflab eval` end to end on tiny models saved as safetensors + tokenizer, checked against an independent path."""
import json

import pytest
import torch
import yaml

from preflab.cli import main
from preflab.data.layout import padded
from preflab.data.rows import load_rows
from preflab.data.tokenize import tokenize_pairs
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.scoring.lm import naive_token_logps

ROWS = [
    {"prompt": "what is two plus three ?", "chosen": " the answer is five .", "rejected": " the cat sat",
     "alpha": 0.75, "extra_responses": [" five", " hello world"]},
    {"prompt": "hello world ,", "chosen": " preference optimization", "rejected": " the dog ran", "alpha": 1.0},
    {"prompt": "how many legs does a spider have ?", "chosen": " eight", "rejected": " five", "alpha": 0.6,
     "extra_responses": [" nine"]},
    {"prompt": "the cat sat on", "chosen": " the mat", "rejected": " a quick brown fox jumps", "alpha": 0.9},
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    tok = tiny_tokenizer("bytelevel")
    models = {}
    for name, seed in (("run", 1), ("ref", 2)):
        model = tiny_causal_lm(tok, seed=seed)
        model.save_pretrained(root / name, safe_serialization=True)
        tok.save_pretrained(root / name)
        models[name] = model
    (root / "run" / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama",
                                                              "beta": 0.2, "seed": 0}))
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return root, data, tok, models


def independent_sums(model, tok, data):
    """Summed chosen / rejected log-probs through full logits, one sequence at a time."""
    pairs, _ = tokenize_pairs(load_rows(str(data))[0], tok, max_length=1024)
    one = lambda p, r: naive_token_logps(model, padded([(p, r)], tok.pad_token_id)).double().sum()  # noqa: E731
    with torch.no_grad():
        return (torch.stack([one(p.prompt_ids, p.chosen_ids) for p in pairs]),
                torch.stack([one(p.prompt_ids, p.rejected_ids) for p in pairs]))


def test_eval_writes_eval_json_that_matches_an_independent_computation(saved, capsys):
    root, data, tok, models = saved
    assert main(["eval", str(root / "run"), "--data", str(data), "--reference", str(root / "ref")]) == 0
    assert "wrote" in capsys.readouterr().out
    result = json.loads((root / "run" / "eval.json").read_text())
    assert result["num_pairs"] == 4 and result["beta"] == 0.2 and result["beta_source"] == "run config"
    pc, pr = independent_sums(models["run"], tok, data)
    rc, rr = independent_sums(models["ref"], tok, data)
    per_pair, m = result["per_pair"], result["metrics"]
    torch.testing.assert_close(torch.tensor(per_pair["policy_chosen"], dtype=torch.float64), pc, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(per_pair["ref_rejected"], dtype=torch.float64), rr, atol=1e-4, rtol=0)
    assert m["ranking_accuracy"] == float((pc >= pr).double().mean())
    assert m["reference_ranking_accuracy"] == float((rc >= rr).double().mean())
    assert m["rewards/accuracies"] == float(((pc - rc) > (pr - rr)).double().mean())
    assert m["logps_drift/chosen"] == pytest.approx(float((pc - rc).mean()), abs=1e-4)
    # the idealized ranking accuracy R* on the reference sums and the data's alpha column, written out here
    alpha = torch.tensor([r["alpha"] for r in ROWS], dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
    expected = ((rc - rr) + (torch.log(alpha) - torch.log1p(-alpha)) / 0.2 > 0).double().mean()
    assert m["idealized_ranking_accuracy"] == float(expected)
    assert result["notes"] == []                               # every row carried alpha
    # dispersion: each prompt's extra responses scored independently, policy vs reference
    from preflab.data.examples import UnpairedExample
    from preflab.data.tokenize import tokenize_unpaired

    drifts, mass = [], []
    for i, row in enumerate(ROWS):
        if "extra_responses" not in row:
            continue
        items, _ = tokenize_unpaired([UnpairedExample(i, row["prompt"], r, True) for r in row["extra_responses"]],
                                     tok, max_length=1024)
        with torch.no_grad():
            d = {name: torch.stack([naive_token_logps(models[name], padded([(t.prompt_ids, t.completion_ids)],
                                                                             tok.pad_token_id)).double().sum()
                                    for t in items]) for name in ("run", "ref")}
        drifts += (d["run"] - d["ref"]).tolist()
        mass.append(float(torch.logsumexp(d["run"], 0) - torch.logsumexp(d["ref"], 0)))
    assert m["dispersion/num_unseen_responses"] == 3.0
    assert m["dispersion/unseen_logps_drift"] == pytest.approx(sum(drifts) / 3, abs=1e-4)
    assert m["dispersion/unseen_log_mass_drift"] == pytest.approx(sum(mass) / 2, abs=1e-4)
    assert set(result["missing"]) == {"win_rate", "overlap_with_training"}  # the run config names no dataset_name
    assert result["missing"]["overlap_with_training"].startswith("the run's config.yaml names no dataset_name")


def test_win_rate_with_a_reward_function_named_on_the_command_line(saved, tmp_path, monkeypatch):
    root, data, _, _ = saved
    (tmp_path / "my_rewards.py").write_text(
        "def length(prompts, completions, **kwargs):\n    return [float(len(c)) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "result.json"
    assert main(["eval", str(root / "run"), "--data", str(data), "--reference", str(root / "ref"), "--reward-fn",
                 "my_rewards:length", "--win-rate-prompts", "3", "--max-new-tokens", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    win = result["win_rate"]
    assert win["n"] == 3 and win["wins"] + win["ties"] + win["losses"] == 3
    assert result["metrics"]["win_rate"] == win["win_rate"]
    assert win["ci_low"] <= win["win_rate"] <= win["ci_high"]
    assert len(result["generation_examples"]) == 3


def test_without_reference_only_policy_metrics_and_the_reason(saved, tmp_path):
    root, data, _, _ = saved
    out = tmp_path / "noref"
    assert main(["eval", str(root / "run"), "--data", str(data), "--out", str(out), "--beta", "0.5", "--device",
                 "cpu", "--no-reference"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert "ranking_accuracy" in result["metrics"] and "idealized_ranking_accuracy" not in result["metrics"]
    assert "reference" in result["missing"] and result["beta_source"] == "--beta"
    assert result["reference"] is None and result["reference_source"] is None


def _run_dir_with(root, tmp_path, **config):
    """A copy of the saved run whose config.yaml holds `config`."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(root / "run", run, ignore=shutil.ignore_patterns("eval.json"))
    (run / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama", "beta": 0.2,
                                                     "seed": 0, **config}))
    return run


def test_without_reference_the_runs_reference_is_used_and_said(saved, tmp_path, capsys):
    """No --reference: the run's ref_model_name_or_path is the reference (its log-probs are the reference model's),
    one note says so; an explicit --reference still wins."""
    root, data, tok, models = saved
    run = _run_dir_with(root, tmp_path, ref_model_name_or_path=str(root / "ref"))
    assert main(["eval", str(run), "--data", str(data), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("preflab: note:") == 1
    assert f"ref_model_name_or_path {root / 'ref'}" in err and "--reference" in err
    result = json.loads((run / "eval.json").read_text())
    assert result["reference"] == str(root / "ref")
    assert result["reference_source"] == "run config (ref_model_name_or_path)"
    rc, _ = independent_sums(models["ref"], tok, data)
    torch.testing.assert_close(torch.tensor(result["per_pair"]["ref_chosen"], dtype=torch.float64), rc, atol=1e-4,
                               rtol=0)
    assert "reference" not in result["missing"]
    assert main(["eval", str(run), "--data", str(data), "--device", "cpu", "--reference", str(run)]) == 0
    explicit = json.loads((run / "eval.json").read_text())
    assert explicit["reference"] == str(run) and explicit["reference_source"] == "--reference"
    assert explicit["per_pair"]["ref_chosen"] == explicit["per_pair"]["policy_chosen"]  # the policy as reference
    assert "preflab: note:" not in capsys.readouterr().err


def test_without_reference_the_runs_starting_model_is_used(saved, tmp_path, capsys):
    """A run without ref_model_name_or_path trained against its model_name_or_path (here a builtin, seeded by the
    run's seed): the same numbers as naming it with --reference."""
    root, data, _, _ = saved
    run = _run_dir_with(root, tmp_path)
    assert main(["eval", str(run), "--data", str(data), "--device", "cpu", "--out", str(tmp_path / "auto")]) == 0
    assert "the run's model_name_or_path builtin:tiny-llama" in capsys.readouterr().err
    assert main(["eval", str(run), "--data", str(data), "--device", "cpu", "--out", str(tmp_path / "given"),
                 "--reference", "builtin:tiny-llama"]) == 0
    auto, given = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("auto", "given"))
    assert auto["reference_source"] == "run config (model_name_or_path)"
    assert auto["metrics"] == given["metrics"] and "idealized_ranking_accuracy" in auto["metrics"]


def test_a_runs_reference_that_is_gone_stops_with_its_name(saved, tmp_path, capsys):
    root, data, _, _ = saved
    gone = tmp_path / "moved-away-sft"
    run = _run_dir_with(root, tmp_path, ref_model_name_or_path=str(gone))
    assert main(["eval", str(run), "--data", str(data), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(gone) in err and "--reference" in err and "ref_model_name_or_path" in err
    assert not (run / "eval.json").exists()


def test_a_bare_model_directory_has_no_reference_and_says_so(saved, tmp_path, capsys):
    """A model directory without a preflab run config: no reference (as before), a note that the reference
    metrics are absent, and eval.json's "missing" says why."""
    root, data, _, _ = saved
    assert main(["eval", str(root / "ref"), "--data", str(data), "--device", "cpu", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.count("preflab: note:") == 1 and "reference metrics" in err and "absent" in err
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["reference"] is None and "reference" in result["missing"]
    assert "idealized_ranking_accuracy" not in result["metrics"]


def test_errors_are_clear(saved, tmp_path, capsys):
    root, data, _, _ = saved
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((root / "run" / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    assert main(["eval", str(pickled), "--data", str(data)]) == 2
    assert "safetensors" in capsys.readouterr().err
    assert main(["eval", str(root / "ref"), "--data", str(data), "--reward-fn", "m:f"]) == 2  # no run config
    assert "--reference" in capsys.readouterr().err
    assert main(["eval", str(root / "run"), "--data", str(data), "--reward-fn", "m:f", "--no-reference"]) == 2
    assert "--reference" in capsys.readouterr().err


def test_task_reward_evaluates_a_reward_model_into_eval_json(saved, tmp_path):
    import preflab.reward_models.eval as reward_eval
    from transformers import LlamaConfig, LlamaForSequenceClassification

    root, data, tok, _ = saved
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "rm", safe_serialization=True)
    tok.save_pretrained(tmp_path / "rm")
    assert main(["eval", str(tmp_path / "rm"), "--data", str(data), "--task", "reward"]) == 0
    result = json.loads((tmp_path / "rm" / "eval.json").read_text())
    direct = reward_eval.evaluate_reward_model(str(tmp_path / "rm"), str(data), on_bad_row="skip")
    assert result["task"] == "reward" and result["num_pairs"] == direct["num_pairs"] == 4
    assert result["metrics"]["reward_model/accuracy"] == direct["accuracy"]


def test_routed_tasks_refuse_the_options_they_would_ignore(tmp_path, capsys):
    """--task reward reads no reference, beta or judge; --task diffusion reads no --limit / --beta: such an option
    stops the command naming it (before, it was accepted and ignored). Defaults and read options pass the check."""
    from preflab.eval.cli import refuse_unread_options
    from preflab.cli import build_parser

    data = tmp_path / "pairs.jsonl"
    data.write_text("")
    for task, extra, named in (("reward", ["--reference", "x"], "--reference"), ("reward", ["--beta", "0.2"], "--beta"),
                               ("reward", ["--judge", "m:f"], "--judge"), ("diffusion", ["--limit", "3"], "--limit"),
                               ("diffusion", ["--beta", "0.2", "--device", "cpu"], "--beta, --device")):
        assert main(["eval", str(tmp_path / "run"), "--data", str(data), "--task", task, *extra]) == 2
        err = capsys.readouterr().err
        assert f"--task {task} does not use {named}" in err, err
    parse = build_parser().parse_args
    refuse_unread_options(parse(["eval", "r", "--data", "d", "--task", "reward", "--limit", "3", "--split", "test"]),
                          "reward")
    refuse_unread_options(parse(["eval", "r", "--data", "d", "--task", "diffusion", "--reference", "b",
                                 "--win-rate-prompts", "4"]), "diffusion")


def test_an_online_demo_runs_reference_is_builtin_demo_sft(tmp_path):
    """An online demo run trains against builtin:demo-sft (not a directory, not a builtin:tiny-* name): without
    --reference, preflab eval takes it as the run's reference (it was refused as 'not a directory here')."""
    from preflab.eval.loading import DEMO_SFT, run_reference

    (tmp_path / "config.yaml").write_text(f"task: online\nmodel_name_or_path: {DEMO_SFT}\nseed: 2\n")
    assert run_reference(str(tmp_path)) == (DEMO_SFT, "model_name_or_path")


def test_eval_token_rewards_from_the_command_line_sum_to_each_pairs_reward(saved, tmp_path, capsys):
    """--token-rewards N: eval.json's token_rewards holds the first N pairs' per-token implicit rewards (methods
    §C #10), each side summing to beta (S_theta - S_ref) of the independent full-logits sums; below 0 is refused."""
    root, data, tok, models = saved
    out = tmp_path / "eval.json"
    assert main(["eval", str(root / "run"), "--data", str(data), "--reference", str(root / "ref"), "--out", str(out),
                 "--token-rewards", "3", "--device", "cpu"]) == 0
    entries = json.loads(out.read_text())["token_rewards"]
    assert [e["row_id"] for e in entries] == [0, 1, 2]
    pc, pr = independent_sums(models["run"], tok, data)
    rc, rr = independent_sums(models["ref"], tok, data)
    for k, e in enumerate(entries):
        assert sum(e["chosen"]["rewards"]) == pytest.approx(0.2 * float(pc[k] - rc[k]), abs=1e-4)  # run beta 0.2
        assert sum(e["rejected"]["rewards"]) == pytest.approx(0.2 * float(pr[k] - rr[k]), abs=1e-4)
    capsys.readouterr()
    assert main(["eval", str(root / "run"), "--data", str(data), "--token-rewards", "-1"]) == 2
    assert "--token-rewards is a number of pairs" in capsys.readouterr().err


def test_reward_fn_takes_the_builtin_judge_names_reward_funcs_takes(saved, tmp_path, capsys):
    """`--reward-fn demo_true_reward` (the judge of an online demo run, and the name its reward_funcs takes) was
    "is not 'module:name'". It is the same function as its module path: the same verdicts and win rate."""
    root, _, _, _ = saved
    data = tmp_path / "echo.jsonl"  # the demo task's prompts, which its judge reads
    data.write_text("".join(json.dumps({"prompt": f"echo: {w}\n", "chosen": w.upper(), "rejected": w}) + "\n"
                            for w in ("sun cat", "map dog red", "box pen")))
    results = []
    for spec in ("demo_true_reward", "preflab.online.tasks:demo_true_reward"):
        out = tmp_path / f"{spec.replace(':', '_')}.json"
        assert main(["eval", str(root / "run"), "--data", str(data), "--reference", str(root / "ref"), "--reward-fn",
                     spec, "--win-rate-prompts", "3", "--max-new-tokens", "4", "--out", str(out)]) == 0
        results.append(json.loads(out.read_text())["win_rate"])
    # the same verdicts; eval.json's judge keeps the name as given (user trial 13)
    assert [r.pop("judge") for r in results] == ["--reward-fn demo_true_reward",
                                                 "--reward-fn preflab.online.tasks:demo_true_reward"]
    assert results[0] == results[1] and results[0]["n"] == 3
    capsys.readouterr()
    assert main(["eval", str(root / "run"), "--data", str(data), "--reference", str(root / "ref"), "--reward-fn",
                 "verifier:no_such"]) == 2
    assert "--reward-fn: preflab.verifiers has no 'no_such'" in capsys.readouterr().err


def test_a_builtin_reference_is_seeded_as_train_built_it_without_config_yaml(saved, tmp_path):
    """A model folder without config.yaml (a merged LoRA model saved by hand) evaluated against --reference
    builtin:tiny-llama gets the reference its run trained against: TrainConfig's default seed (42), the same
    reference log-probs and implicit rewards as the run folder (saved seed 42) itself; before, seed 0. --seed
    overrides the saved seed."""
    import shutil

    from preflab.models.load import load_causal_lm

    root, data, tok, _ = saved
    run, bare = tmp_path / "run", tmp_path / "bare"
    shutil.copytree(root / "run", run)
    (run / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama", "beta": 0.2,
                                                     "seed": 42}))
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("config.yaml", "eval.json"))
    results = {}
    for name, folder, extra in (("run", run, []), ("bare", bare, []), ("bare seed 0", bare, ["--seed", "0"])):
        out = tmp_path / name.replace(" ", "_")
        assert main(["eval", str(folder), "--data", str(data), "--reference", "builtin:tiny-llama", "--beta",
                     "0.2", "--device", "cpu", "--out", str(out), *extra]) == 0
        results[name] = json.loads((out / "eval.json").read_text())
    run_pairs, bare_pairs = results["run"]["per_pair"], results["bare"]["per_pair"]
    assert bare_pairs["ref_chosen"] == run_pairs["ref_chosen"]
    assert bare_pairs["ref_rejected"] == run_pairs["ref_rejected"]
    assert results["bare"]["metrics"] == results["run"]["metrics"]
    rc, rr = independent_sums(load_causal_lm("builtin:tiny-llama", tokenizer=tok, seed=42), tok, data)
    torch.testing.assert_close(torch.tensor(bare_pairs["ref_chosen"], dtype=torch.float64), rc, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(bare_pairs["ref_rejected"], dtype=torch.float64), rr, atol=1e-4,
                               rtol=0)
    zero_c, _ = independent_sums(load_causal_lm("builtin:tiny-llama", tokenizer=tok, seed=0), tok, data)
    seeded = torch.tensor(results["bare seed 0"]["per_pair"]["ref_chosen"], dtype=torch.float64)
    torch.testing.assert_close(seeded, zero_c, atol=1e-4, rtol=0)
    assert (seeded - rc).abs().max() > 1e-2  # seed 0's reference is another model: the test tells them apart
