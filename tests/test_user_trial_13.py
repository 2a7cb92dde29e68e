"""User trial 13 ("did alignment actually work?", from the user docs only): the findings it fixed, each pinned with
the value or message the old code gave. The win rate's judge and an all-ties win rate (eval.json, terminal,
report), NaN log-probs in the lab's R / R*, a token environment with one sequence, the reward-model metrics the
report's table left without a meaning."""
import json
import math

import numpy as np
import pytest
import yaml

from preflab.cli import main
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

ROWS = [{"prompt": "what is two plus three ?", "chosen": " five", "rejected": " the cat sat"},
        {"prompt": "hello world ,", "chosen": " preference optimization", "rejected": " the dog ran"},
        {"prompt": "the cat sat on", "chosen": " the mat", "rejected": " a quick brown fox jumps"}]

REWARDS = ("def zero(prompts, completions, **kwargs):\n    return [0.0 for _ in completions]\n"
           "def length(prompts, completions, **kwargs):\n    return [float(len(c)) for c in completions]\n")


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """eval.json of one tiny run judged twice (a reward function scoring every answer 0, one scoring by length),
    with what `preflab eval` printed each time."""
    import sys

    root = tmp_path_factory.mktemp("trial13")
    tok = tiny_tokenizer("bytelevel")
    for name, seed in (("run", 1), ("ref", 2)):
        model = tiny_causal_lm(tok, seed=seed)
        model.save_pretrained(root / name, safe_serialization=True)
        tok.save_pretrained(root / name)
    (root / "run" / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama",
                                                              "beta": 0.2, "seed": 0}))
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "trial13_rewards.py").write_text(REWARDS)
    sys.path.insert(0, str(root))
    results = {}
    try:
        for name, fn, prompts in (("zero", "zero", 3), ("length", "length", 3), ("fewer", "length", 5)):
            out = root / f"{name}.json"
            printed = _main_printed(["eval", str(root / "run"), "--data", str(data), "--reference", str(root / "ref"),
                                     "--reward-fn", f"trial13_rewards:{fn}", "--win-rate-prompts", str(prompts),
                                     "--max-new-tokens", "3", "--device", "cpu", "--out", str(out)])
            results[name] = (json.loads(out.read_text()), printed)
    finally:
        sys.path.remove(str(root))
    return root, results


def _main_printed(argv) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue()


def _report_run(tmp_path, name: str, result: dict):
    from preflab.report.runs import load_run

    run = tmp_path / name
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.69}\n')
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "dpo", "beta": 0.2}))
    (run / "eval.json").write_text(json.dumps(result))
    return load_run(run)


def test_eval_json_names_the_win_rates_judge(judged):
    # seen: eval.json's win_rate held no word of what judged it ({"win_rate", "ci_low", ..., "decoding"}), so a
    # report of a run judged by --reward-fn demo_echo_reward beside one judged by --reward-model DIR showed 0.5 and 1
    # side by side as one measure
    _, results = judged
    assert results["zero"][0]["win_rate"]["judge"] == "--reward-fn trial13_rewards:zero"
    assert results["length"][0]["win_rate"]["judge"] == "--reward-fn trial13_rewards:length"


def test_only_a_win_rate_of_nothing_but_ties_gets_the_all_ties_caveat():
    # one tie among wins and losses is an ordinary verdict: 0.5 from 1 win, 1 tie, 1 loss is a measured 0.5
    from preflab.eval.winrate import win_rate, win_rate_caveats

    mixed = win_rate([1.0, 0.0, 2.0], [0.0, 0.0, 3.0]).to_dict()
    assert (mixed["wins"], mixed["ties"], mixed["losses"], mixed["win_rate"]) == (1, 1, 1, 0.5)
    assert win_rate_caveats(mixed) == []
    ties = win_rate([0.0, 0.0], [0.0, 0.0]).to_dict()
    assert win_rate_caveats(ties) == [
        "win rate: every one of the 2 verdicts is a tie: the judge scored the policy's and the reference's answers "
        "the same on every prompt, so the win rate 0.5 says it told no answer apart, not that the policy is as good "
        "as the reference; check the judge on these answers (generation_examples)"]


def test_a_win_rate_over_fewer_prompts_than_asked_says_so(judged):
    # seen: --win-rate-prompts 20 on 4 pairs gave n = 4 (interval 0.150 to 0.850) with no word that 16 of the 20
    # prompts asked for were not there
    _, results = judged
    fewer, asked = results["fewer"][0], results["length"][0]
    note = ("win rate: the evaluated pairs hold 3 distinct prompts, fewer than --win-rate-prompts 5: the win rate and "
            "its interval are over those 3")
    assert fewer["win_rate"]["n"] == 3 and note in fewer["notes"]
    assert f"  note: {note}" in results["fewer"][1].splitlines()
    assert fewer["win_rate"] == asked["win_rate"]  # the same 3 prompts judged: the same verdicts
    assert not any("distinct prompts, fewer than" in n for n in asked["notes"])  # 3 asked, 3 there


def test_judge_label_names_each_win_rate_option():
    import argparse

    from preflab.eval_cli.cli import judge_label

    ns = lambda **kw: argparse.Namespace(**{"reward_fn": None, "reward_model": None, "judge": None, **kw})  # noqa
    assert judge_label(ns(reward_model="/runs/bt")) == "--reward-model /runs/bt"
    assert judge_label(ns(judge="mod:Judge")) == "--judge mod:Judge"
    assert judge_label(ns(reward_fn="demo_echo_reward")) == "--reward-fn demo_echo_reward"
    assert judge_label(ns()) is None


def test_an_all_ties_win_rate_is_said_to_measure_nothing(judged):
    # seen (the quickstart run judged by demo_echo_reward, which scored every unfinished answer 0): win_rate 0.5000,
    # interval 0.2993 to 0.7007, 0 wins / 20 ties / 0 losses, no note, and the report's headline read "0.5: as good as
    # the reference". By hand, Wilson at p = 1/2, n = 3: 1/2 +- z/(1 + z^2/3) sqrt(1/12 + z^2/36).
    _, results = judged
    result, printed = results["zero"]
    win = result["win_rate"]
    assert (win["wins"], win["ties"], win["losses"], win["n"]) == (0, 3, 0, 3) and win["win_rate"] == 0.5
    z = 1.959963984540054
    half = z / (1 + z * z / 3) * math.sqrt(1 / 12 + z * z / 36)
    assert (win["ci_low"], win["ci_high"]) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    note = ("win rate: every one of the 3 verdicts is a tie: the judge (--reward-fn trial13_rewards:zero) scored the "
            "policy's and the reference's answers the same on every prompt, so the win rate 0.5 says it told no "
            "answer apart, not that the policy is as good as the reference; check the judge on these answers "
            "(generation_examples)")
    assert note in result["notes"]
    assert f"  note: {note}" in printed.splitlines()
    # a judge that tells answers apart gets no such note (the three answers differ in length here)
    other = results["length"][0]
    assert other["win_rate"]["ties"] < other["win_rate"]["n"]
    assert not any("every one of the" in n for n in other["notes"])


def test_the_report_says_each_win_rates_judge_and_an_all_ties_rate(judged, tmp_path):
    from preflab.report.headline import eval_json_rows
    from preflab.report.html import _eval_section

    _, results = judged
    zero = _report_run(tmp_path, "zero", results["zero"][0])
    length = _report_run(tmp_path, "length", results["length"][0])
    rows = {r["metric"]: r for r in eval_json_rows(zero)}
    assert rows["win_rate"]["meaning"] == (
        "win rate of the policy's generations against the reference's (preflab eval, judged by --reward-fn "
        "trial13_rewards:zero); every verdict a tie: the judge told no answer apart, so 0.5 is not evidence the "
        "policy is as good")
    rows = {r["metric"]: r for r in eval_json_rows(length)}
    assert rows["win_rate"]["meaning"] == (
        "win rate of the policy's generations against the reference's (preflab eval, judged by --reward-fn "
        "trial13_rewards:length; a tie counts 1/2; 0.5: as good as the reference)")
    page = _eval_section([zero, length])
    assert "; judged by --reward-fn trial13_rewards:zero)</p>" in page
    assert "; judged by --reward-fn trial13_rewards:length)</p>" in page


def test_an_older_eval_json_without_a_judge_reads_as_before(tmp_path):
    from preflab.report.headline import win_rate_meaning

    assert win_rate_meaning({"n": 4, "ties": 1}) == ("win rate of the policy's generations against the reference's "
                                                     "(preflab eval; a tie counts 1/2; 0.5: as good as the reference)")


@pytest.mark.parametrize("call, field", [
    (lambda la: la.ranking_accuracy([np.nan, 1.0], [0.0, 0.0]), "chosen_logps"),
    (lambda la: la.ranking_accuracy([1.0, 1.0], [0.0, np.nan]), "rejected_logps"),
    (lambda la: la.idealized_ranking_accuracy([np.nan, 1.0], [0.0, 0.0], 0.9, 0.1), "ref_chosen_logps"),
    (lambda la: la.idealized_ranking_accuracy_range([1.0, 1.0], [0.0, np.nan], 0.9), "ref_rejected_logps")])
def test_the_labs_ranking_accuracies_refuse_a_nan_log_prob(call, field):
    # seen: ranking_accuracy([nan, 1], [0, 0]) == 0.5 and idealized_ranking_accuracy([nan, 1], [0, 0], 0.9, 0.1) ==
    # 0.5: the NaN pair counted as ranked wrongly, without a word
    import preflab.lab as lab

    index = 1 if field.startswith(("rejected", "ref_rejected")) else 0
    with pytest.raises(ValueError, match=rf"^{field} has NaN at index {index} \(1 of 2 values\)"):
        call(lab)


def test_a_log_prob_of_minus_infinity_is_still_a_log_prob():
    # a response of probability 0 under the reference: the optimum gives it 0 too, so the pair ranks wrongly
    import preflab.lab as lab

    assert lab.idealized_ranking_accuracy([-np.inf, -1.0], [-2.0, -2.0], 1.0, 0.1) == 0.5
    assert lab.ranking_accuracy([-np.inf, -1.0], [-2.0, -2.0]) == 0.5


@pytest.mark.parametrize("vocab, length", [(1, 3), (0, 3), (3, 0), (2.0, 3)])
def test_a_token_environment_without_two_sequences_is_refused(vocab, length):
    # seen: TokenEnv(1, 3) and TokenEnv(3, 0) were built; sample_pairs then failed inside numpy with "Cannot take a
    # larger sample than population when replace is False", TokenEnv(0, 3) with "a must be a positive integer"
    from preflab.lab import TokenEnv

    with pytest.raises(ValueError, match=rf"^TokenEnv needs vocab >= 2 tokens and length >= 1 \(integers\), so that "
                                         rf"two sequences differ; got vocab={vocab!r}, length={length!r}\.$"):
        TokenEnv(vocab, length, context="last")


def test_the_smallest_token_environment_has_its_two_sequences():
    from preflab.lab import TokenEnv
    from preflab.lab.dpo_3d import sample_pairs

    env = TokenEnv(np.int64(2), 1, context="last")
    assert env.n_sequences == 2 and sorted(sample_pairs(env, 1)[0]) == [0, 1]


def test_the_reward_models_own_metrics_have_a_meaning_in_the_report(tmp_path):
    # seen: the report's eval.json table of a BT and a GPM run showed reward_model/loss, margin, prob, min_reward,
    # mean_reward, max_reward, rewards/chosen and rewards/rejected with an empty meaning, and BT's margin (2.51, a
    # reward difference) beside GPM's (0.30, its score s) as one quantity
    from preflab.eval.names import METRIC_DOCS
    from preflab.report.html import _eval_section

    keys = ("loss", "margin", "prob", "min_reward", "mean_reward", "max_reward", "rewards/chosen", "rewards/rejected")
    assert all(METRIC_DOCS.get(f"reward_model/{k}") for k in keys)
    result = {"task": "reward", "num_pairs": 4, "metrics": {"reward_model/accuracy": 0.75, "reward_model/margin": 2.5}}
    page = _eval_section([_report_run(tmp_path, "bt", result)])
    assert ("<td>reward_model/margin</td>" in page and
            'not comparable between the two</td>' in page)
    # a reward model has no beta: no "beta of the implicit reward and of R*" row of dashes (a policy run keeps it)
    assert "<td>beta</td>" not in page
    policy = {"num_pairs": 4, "beta": 0.1, "metrics": {"ranking_accuracy": 0.5}}
    assert "<td>beta</td>" in _eval_section([_report_run(tmp_path, "dpo", policy)])


def _trained_run(tmp_path, name: str, data: dict):
    """A dpo run folder with two eval rows (R below the reference's) and `data` as its summary's data report."""
    from preflab.report.runs import load_run

    run = tmp_path / name
    run.mkdir()
    rows = [{"step": s, "eval_ranking_accuracy": r, "eval_reference_ranking_accuracy": 0.3,
             "eval_rewards/accuracies": 0.8, "eval_loss": 0.6} for s, r in ((2, 0.2), (4, 0.25))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "dpo", "beta": 0.1}))
    (run / "summary.json").write_text(json.dumps({"data": data}))
    return load_run(run)


def test_the_headline_does_not_call_an_eval_set_of_training_prompts_held_out(tmp_path):
    # seen: `preflab train examples/quickstart.yaml eval_fraction=0 eval_dataset_name=<its training file>` printed
    # "256 of 256 eval example(s) have a prompt that is also a train prompt" when it started, and summary.json counted
    # them (data.overlap.eval_prompts_in_train: 256), yet `preflab report` labelled eval_ranking_accuracy
    # "ranking accuracy R, held-out" and said "held-out ranking accuracy R (0.25, step 4) is below ..."
    from preflab.report.headline import headline_notes, headline_rows

    seen = _trained_run(tmp_path, "seen", {"overlap": {"duplicate_train_examples": 0, "eval_prompts_in_train": 256},
                                           "eval_tokenize": {"total": 256, "kept": 250}})
    rows = {r["metric"]: r for r in headline_rows(seen)}
    clause = ", on the run's eval set: 256 of its 256 examples have a prompt the run trained on (prompts not held-out)"
    assert rows["eval_ranking_accuracy"]["meaning"] == "ranking accuracy R" + clause
    assert rows["eval_rewards/accuracies"]["meaning"] == "implicit reward accuracy" + clause
    assert rows["eval_loss"]["meaning"] == "loss" + clause
    notes = headline_notes(seen, list(rows.values()))
    assert any(n.startswith("eval-set ranking accuracy R (0.25, step 4) is below the reference model's (0.3)")
               for n in notes)
    assert not any("held-out ranking accuracy" in n for n in notes)
    # a run whose eval set shares no prompt with its training rows (the quickstart's eval_fraction split) is as before
    held = _trained_run(tmp_path, "held", {"overlap": {"duplicate_train_examples": 0, "eval_prompts_in_train": 0},
                                           "eval_tokenize": {"total": 26, "kept": 26}})
    rows = {r["metric"]: r for r in headline_rows(held)}
    assert rows["eval_ranking_accuracy"]["meaning"] == "ranking accuracy R, held-out"
    notes = headline_notes(held, list(rows.values()))
    assert any(n.startswith("held-out ranking accuracy R (0.25, step 4)") for n in notes)


def test_a_gpm_runs_headline_does_not_read_its_score_as_a_reward_difference(tmp_path):
    # seen (a GPM and a BT reward run in one report): both headlines read eval_margin as "mean r(chosen) -
    # r(rejected), held-out" and eval_accuracy as "pairwise accuracy r(chosen) > r(rejected)"; a GPM has no r(y):
    # its margin is the mean skew score s (0.25 beside BT's 2.03) and its accuracy counts s > 0
    from preflab.report.headline import headline_rows
    from preflab.report.runs import load_run

    meanings = {}
    for head in ("bt", "gpm"):
        run = tmp_path / head
        run.mkdir()
        (run / "metrics.jsonl").write_text(json.dumps({"step": 40, "eval_accuracy": 0.8, "eval_margin": 0.25,
                                                       "eval_loss": 0.3}) + "\n")
        (run / "config.yaml").write_text(yaml.safe_dump({"task": "reward", "reward_head": head}))
        meanings[head] = {r["metric"]: r["meaning"] for r in headline_rows(load_run(run))}
    assert meanings["bt"]["eval_margin"] == "mean r(chosen) - r(rejected), held-out"
    assert meanings["gpm"]["eval_margin"] == "mean GPM score s(chosen, rejected); P = sigmoid(s / tau), held-out"
    assert meanings["gpm"]["eval_accuracy"] == "pairwise accuracy s(chosen, rejected) > 0 (GPM score), held-out"
    assert meanings["gpm"]["eval_loss"] == meanings["bt"]["eval_loss"] == "loss, held-out"


@pytest.mark.parametrize("name", ["result.json", "plot.PNG"])
def test_lab_run_refuses_an_out_that_names_a_file(tmp_path, capsys, name):
    # seen: `preflab lab run ranking-accuracy --out x.json` (as `preflab eval --out` takes) made a folder x.json/
    # holding ranking-accuracy.png and ranking-accuracy.json
    out = tmp_path / name
    assert main(["lab", "run", "ranking-accuracy", "--quick", "--out", str(out)]) == 2
    stem = str(tmp_path / name.rsplit(".", 1)[0])
    assert capsys.readouterr().err.strip().endswith(
        f"--out {out} names a file, but --out is the folder ranking-accuracy.png and ranking-accuracy.json go into: "
        f"give --out {stem} (or an existing folder).")
    assert not out.exists()


def test_lab_run_writes_into_an_existing_folder_named_like_a_file(tmp_path, capsys):
    out = tmp_path / "results.json"
    out.mkdir()
    assert main(["lab", "run", "ranking-accuracy", "--quick", "--out", str(out)]) == 0
    assert json.loads((out / "ranking-accuracy.json").read_text())["numbers"]["idealized"] == [1.0, 0.75, 0.5]


def test_a_reward_runs_data_report_counts_eval_prompts_it_trains_on(tmp_path, capsys):
    # seen: a reward run (eval_dataset_name = its training file) kept no overlap count in summary.json's data report
    # (the policy tasks keep data.overlap), so its report headline called eval_accuracy "held-out" with no way to know
    from preflab.config import config_from_dict
    from preflab.reward_models.data import load_reward_pairs

    train, held = tmp_path / "t.jsonl", tmp_path / "e.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    held.write_text("".join(json.dumps(r) + "\n" for r in ROWS[1:] + [{"prompt": "new prompt", "chosen": " a",
                                                                       "rejected": " b"}]))
    cfg = config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(train),
                            "eval_dataset_name": str(held), "eval_split": "train"})
    _, evals, report, _ = load_reward_pairs(cfg, tiny_tokenizer("bytelevel"))
    assert len(evals) == 3
    assert report["overlap"] == {"duplicate_train_examples": 0, "eval_prompts_in_train": 2}
    assert ("preflab: note: data: 2 of 3 eval example(s) have a prompt that is also a train prompt: the eval then "
            "measures prompts the reward model was trained on.") in capsys.readouterr().out.splitlines()
