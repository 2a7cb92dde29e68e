"""User trial of the diagnostics (preflab eval / report / lab): each test is a mistake or an edge a researcher
hits, with the number or the message the old code got wrong."""
import json
import math

import pytest
import torch
import yaml

from preflab.cli import main
from preflab.errors import ConfigError, DataError
from preflab.eval.loading import load_for_eval
from preflab.eval.run import EvalOptions, eval_beta, evaluate_models
from preflab.eval.winrate import judge_outcomes, win_rate, win_rate_from_outcomes, wilson_interval
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from lora_weights import randomize_lora_b  # tests/, on sys.path beside conftest

ROWS = [
    {"prompt": "what is two plus three ?", "chosen": " five", "rejected": " the cat sat"},
    {"prompt": "hello world ,", "chosen": " preference optimization", "rejected": " the dog ran"},
    {"prompt": "the cat sat on", "chosen": " the mat", "rejected": " a quick brown fox jumps"},
]


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer("bytelevel")
    return tok, tiny_causal_lm(tok, seed=1).eval(), tiny_causal_lm(tok, seed=2).eval()


# --- win rate: a failed verdict is no verdict (never a tie, a loss or a crash) ---------------------------------

class FailingTrlJudge:
    """TRL's BasePairwiseJudge: index of the better answer, -1 where the judge failed (e.g. an unparsable reply)."""

    def judge(self, prompts, completions):
        return [0, -1, 1, -1]


def test_a_trl_judge_failure_is_left_out_not_counted_as_a_tie():
    outcomes = judge_outcomes(FailingTrlJudge(), ["p"] * 4, ["a"] * 4, ["b"] * 4)
    assert outcomes == [1.0, None, 0.0, None]
    result = win_rate_from_outcomes(outcomes)
    # one win, one loss over the 2 judged prompts: 0.5 on n = 2 (the old code: 2 ties -> 0.5 on n = 4, and a
    # narrower interval than the data supports)
    assert (result.n, result.failed, result.wins, result.losses, result.ties) == (2, 2, 1, 1, 0)
    assert (result.ci_low, result.ci_high) == pytest.approx(wilson_interval(0.5, 2))


def test_nan_or_none_rewards_have_no_verdict_instead_of_a_loss():
    # prompt 2: the policy's reward is NaN (the old code: a loss); prompt 4: None (the old code: TypeError)
    result = win_rate([1.0, float("nan"), 3.0, None, 2.0], [0.0, 1.0, 4.0, 1.0, 2.0])
    assert (result.n, result.failed) == (3, 2)
    assert result.win_rate == pytest.approx((1 + 0 + 0.5) / 3)
    callable_judge = lambda p, a, b: [1.0, None, float("nan"), 0.25]  # noqa: E731
    assert judge_outcomes(callable_judge, ["p"] * 4, ["a"] * 4, ["b"] * 4) == [1.0, None, None, 0.25]


def test_a_judge_with_the_wrong_number_of_verdicts_or_none_at_all_is_refused():
    with pytest.raises(ConfigError, match="2 verdicts for 3 prompts"):
        judge_outcomes(lambda p, a, b: [1.0, 1.0], ["p"] * 3, ["a"] * 3, ["b"] * 3)
    with pytest.raises(ConfigError, match="no verdict on any of the 3"):
        win_rate_from_outcomes([None, None, None])
    with pytest.raises(ConfigError, match="index of the"):
        judge_outcomes(type("J", (), {"judge": lambda self, p, c: [2]})(), ["p"], ["a"], ["b"])


# --- eval options and data ------------------------------------------------------------------------------------

def test_rater_proportions_outside_the_unit_interval_are_refused(tiny):
    tok, policy, ref = tiny
    rows = [dict(ROWS[0], alpha=0.75), dict(ROWS[1], alpha=75), dict(ROWS[2], alpha=0.5)]
    # the old code clipped 75 to 1 - 1e-3 and reported R* as if the raters had been unanimous
    with pytest.raises(DataError, match=r"row 1, field 'alpha': 75 is not a rater proportion"):
        evaluate_models(policy, tok, rows, ref=ref, options=EvalOptions(keep_per_pair=False))
    ok = evaluate_models(policy, tok, [dict(ROWS[0], alpha=0.75), dict(ROWS[1], alpha=1)], ref=ref, beta=1.0)
    assert ok["per_pair"]["alpha"] == [0.75, 1.0]


def test_run_beta_zero_or_another_objective_is_said(tmp_path):
    assert eval_beta(None, {"beta": 0.3, "loss_type": "sigmoid"}) == (0.3, [])
    assert eval_beta(0.2, {"beta": 0.0}) == (0.2, [])
    beta, notes = eval_beta(None, {"beta": 0.0, "task": "online"})     # GRPO without a KL term
    assert beta == 0.1 and "no KL term" in notes[0]
    beta, notes = eval_beta(None, {"beta": 0.5, "loss_type": "ipo", "task": "dpo"})
    assert beta == 0.5 and "loss_type ipo" in notes[0] and "DPO's" in notes[0]


@pytest.mark.parametrize("option", [["--beta", "0"], ["--beta", "-0.1"], ["--batch-size", "0"], ["--limit", "0"],
                                    ["--win-rate-prompts", "0"], ["--max-new-tokens", "0"], ["--hard-margin", "-1"]])
def test_eval_options_out_of_range_stop_before_any_model_loads(tmp_path, capsys, option):
    # the old code: a ValueError traceback after loading both models (beta, batch size), or a win rate over 0
    # prompts written as null
    assert main(["eval", str(tmp_path / "nowhere"), "--data", "x.jsonl", "--no-reference", *option]) == 2
    assert option[0] in capsys.readouterr().err


def test_a_reference_with_another_tokenizer_is_refused(tmp_path, tiny):
    tok, _, _ = tiny
    other = tiny_tokenizer("bytelevel", vocab_size=400)    # same text, other ids
    tiny_causal_lm(other, seed=3).save_pretrained(tmp_path / "ref", safe_serialization=True)
    other.save_pretrained(tmp_path / "ref")
    # the old code scored the reference on the policy's token ids without a word
    with pytest.raises(ConfigError, match="another tokenizer"):
        load_for_eval(str(tmp_path / "ref"), tokenizer=tok)
    _, own = load_for_eval(str(tmp_path / "ref"))
    assert own.get_vocab() == other.get_vocab()
    load_for_eval(str(tmp_path / "ref"), tokenizer=own)          # the same tokenizer passes


def test_an_interrupted_run_names_its_checkpoints(tmp_path, tiny):
    run = tmp_path / "run"
    for step in (5, 10):
        (run / f"checkpoint-{step}").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama", "beta": 0.1}))
    with pytest.raises(Exception, match=r"no final model .* checkpoint-5, checkpoint-10; evaluate the newest with "
                                        r"`preflab eval \S*checkpoint-10"):
        load_for_eval(str(run))


def test_a_file_without_pairs_names_the_missing_field(tiny, tmp_path):
    tok, policy, _ = tiny
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    with pytest.raises(Exception, match=r"line 1, field 'chosen': missing_field.*'messages' \(SFT\)"):
        evaluate_models(policy, tok, str(path))


def test_a_reward_run_passed_as_a_policy_gets_no_reference_note(tmp_path, capsys):
    run = tmp_path / "rm"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "reward", "model_name_or_path": "builtin:tiny-llama"}))
    assert main(["eval", str(run), "--task", "dpo", "--data", "x.jsonl"]) == 2  # without --task: evaluated as one
    err = capsys.readouterr().err
    assert "--task reward" in err and "no saved run config" not in err     # the old code said both


# --- report ---------------------------------------------------------------------------------------------------

def _report_run(tmp_path, rows, config=None):
    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.yaml").write_text(yaml.safe_dump(config or {"task": "dpo", "beta": 0.1}))
    return run


def test_report_says_and_shows_non_finite_steps(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from preflab.report.plots import curve_panel
    from preflab.report.runs import load_run

    rows = [{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.6}, {"step": 3, "loss": None},
            {"step": 4, "nonfinite": True, "nonfinite_what": "loss_or_grad", "row_ids": [7]},
            {"step": 5, "loss": 0.5}]
    run = load_run(_report_run(tmp_path, rows))
    # the old report dropped the null and joined 0.6 to 0.5: a diverging run looked clean, and said nothing
    assert run.skipped_steps == [4.0] and run.null_steps("loss") == [3.0]
    assert any("1 training step(s) skipped as non-finite" in m and "step 4" in m for m in run.missing)
    assert any(m.startswith("loss was logged non-finite") and "step 3" in m for m in run.missing)
    plotted, vlines = [], []
    monkeypatch.setattr(Axes, "plot", lambda self, x, y, *a, **k: plotted.append((list(x), list(y))) or [])
    monkeypatch.setattr(Axes, "axvline", lambda self, x, *a, **k: vlines.append(x))
    assert curve_panel([run], "Loss", "loss", [("loss", "train", "#000")]) is not None
    (steps, values), = plotted
    assert steps == [1.0, 2.0, 3.0, 5.0] and values[:2] == [0.69, 0.6] and math.isnan(values[2]) \
        and values[3] == 0.5                                  # the metrics.jsonl values, broken at step 3
    assert vlines == [4.0]


def test_report_of_a_reward_model_run_draws_its_accuracy(tmp_path):
    from preflab.report.html import write_report

    rows = [{"step": s, "loss": 0.7 - 0.01 * s, "accuracy": 0.5 + 0.05 * s, "margin": 0.1 * s} for s in (1, 2, 3)]
    rows.append({"step": 3, "eval_loss": 0.66, "eval_accuracy": 0.6, "eval_margin": 0.2})
    html = write_report([_report_run(tmp_path, rows, {"task": "reward"})], tmp_path / "r.html").read_text()
    assert 'alt="Reward model accuracy"' in html and 'alt="Reward model margin"' in html   # absent before


def test_a_reward_function_returning_too_few_rewards_is_refused(tiny):
    from preflab.eval.winrate import compare_generations

    tok, policy, ref = tiny
    prompt_ids = [[tok.bos_token_id] + tok(t, add_special_tokens=False).input_ids for t in ("a b", "c d", "e f")]
    short = lambda prompts, completions: [1.0] * (len(completions) - 1)  # noqa: E731
    # the old code: both sides equally short, so the win rate silently covered 2 of the 3 prompts
    with pytest.raises(ConfigError, match="returned 2 and 2 rewards for 3"):
        compare_generations(policy, ref, tok, prompt_ids, ["a b", "c d", "e f"], reward_fn=short, max_new_tokens=2)


def test_margin_notes_only_for_preference_runs_and_say_how(tmp_path):
    from preflab.report.html import write_report
    from preflab.report.runs import load_run

    rows = [{"step": 1, "loss": 0.7}]
    sft = load_run(_report_run(tmp_path / "sft", rows, {"task": "sft"}))
    dpo = load_run(_report_run(tmp_path / "dpo", rows, {"task": "dpo"}))
    # the old note, on every run: "the trainer logs batch means only" (it writes pair_margins.jsonl at eval steps)
    assert not any("pair_margins" in m for m in sft.missing)
    assert any("written at each eval step" in m or "writes them at each eval step" in m for m in dpo.missing)
    html = write_report([tmp_path / "sft" / "run"], tmp_path / "r.html").read_text()
    assert "batch means only" not in html and "Reward margins per pair" not in html


def test_plan_prints_a_tiny_models_parameter_count(capsys):
    from preflab.plan import count

    assert (count(37_792), count(124_439_808), count(7.24e9)) == ("37,792", "124.4 M", "7.240 B")
    from pathlib import Path

    assert main(["plan", str(Path(__file__).parents[1] / "examples" / "quickstart.yaml")]) == 0
    assert "37,792 parameters" in capsys.readouterr().out          # the old line: "0.000 B parameters"


def test_report_of_an_interrupted_run_or_a_checkpoint_points_to_what_works(tmp_path):
    from preflab.errors import PreflabError
    from preflab.report.html import write_report
    from preflab.report.runs import load_run

    run = _report_run(tmp_path, [{"step": 1, "loss": 0.7}])
    for step in (5, 10):
        (run / f"checkpoint-{step}").mkdir()
    # the old note told to run `preflab eval RUN`, which fails on a run without a final model
    note = next(m for m in load_run(run).missing if m.startswith("no eval.json"))
    assert f"preflab eval {run / 'checkpoint-10'} --data HELDOUT [--reward-fn MODULE:FUNCTION] --out {run / 'eval.json'}" in note
    with pytest.raises(PreflabError, match=r"is a checkpoint of the run .*`preflab report \S*run`"):
        write_report([run / "checkpoint-10"], tmp_path / "r.html")


# --- lab ------------------------------------------------------------------------------------------------------

def test_lab_out_that_is_a_file_stops_before_the_experiment_runs(tmp_path, capsys, monkeypatch):
    import preflab.lab.registry as registry

    ran = []
    monkeypatch.setattr(registry, "run_experiment", lambda name, quick=False: ran.append(name))
    (tmp_path / "results").write_text("x")
    # the old code ran the experiment, then died with a FileExistsError traceback at mkdir
    assert main(["lab", "run", "ranking-accuracy", "--quick", "--out", str(tmp_path / "results")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and ran == []


def test_extra_responses_that_are_not_a_list_or_cannot_be_scored_are_said(tiny):
    tok, policy, ref = tiny
    rows = [dict(ROWS[0], extra_responses=" six"), dict(ROWS[1])]
    # the old code ignored the string and reported "the data has no 'extra_responses' column"
    with pytest.raises(DataError, match=r"row 0, field 'extra_responses': a list of further responses"):
        evaluate_models(policy, tok, rows, ref=ref)
    with pytest.raises(DataError, match=r"row 0, field 'extra_responses': each further response is a string"):
        evaluate_models(policy, tok, [dict(ROWS[0], extra_responses=[{"text": " six"}])], ref=ref)  # was a crash
    rows = [dict(ROWS[0], extra_responses=[" six", " "]), dict(ROWS[1], extra_responses=[" hi"])]
    out = evaluate_models(policy, tok, rows, ref=ref)
    # the old code scored the blank response as a response (EOS alone), without a word
    assert out["metrics"]["dispersion/num_unseen_responses"] == 2.0
    assert any("1 empty 'extra_responses' responses were left out" in n for n in out["notes"])


def test_a_lora_runs_checkpoint_is_evaluated_with_its_adapters(tmp_path):
    from safetensors.torch import save_file

    from preflab.models.load import add_lora, load_causal_lm, load_tokenizer

    cfg = {"model_name_or_path": "builtin:tiny-llama", "seed": 3, "beta": 0.1, "use_peft": True, "lora_r": 4,
           "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_modules": "all-linear"}
    tok = load_tokenizer("builtin:tiny-llama")
    trained = add_lora(load_causal_lm("builtin:tiny-llama", tokenizer=tok, seed=3), 4, 8, 0.0, "all-linear")
    torch.manual_seed(0)
    randomize_lora_b(trained, 0.2)                     # "trained" adapters (peft starts B at 0)
    ckpt = tmp_path / "run" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    save_file({n: p.detach().contiguous() for n, p in trained.named_parameters() if p.requires_grad},
              str(ckpt / "model.safetensors"))
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(cfg))
    # the old code refused: "a LoRA training checkpoint; evaluate the final run directory" (an interrupted LoRA
    # run has none)
    model, _ = load_for_eval(str(ckpt))
    ids = torch.tensor([tok("echo: kit cat hat\nKIT CAT HAT").input_ids])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, trained.eval()(ids).logits, atol=1e-5)
        base = load_causal_lm("builtin:tiny-llama", tokenizer=tok, seed=3)
        assert not torch.allclose(model(ids).logits, base(ids).logits, atol=1e-3)   # the adapters count


def test_evaluate_models_uses_the_beta_of_its_options(tiny):
    tok, policy, ref = tiny
    # the old code ignored EvalOptions(beta=...) in evaluate_models and used its own default 0.1
    out = evaluate_models(policy, tok, ROWS, ref=ref, options=EvalOptions(beta=0.5))
    pp = out["per_pair"]
    h = [(a - c) - (b - d) for a, b, c, d in zip(pp["policy_chosen"], pp["policy_rejected"], pp["ref_chosen"],
                                                  pp["ref_rejected"])]
    assert out["beta"] == 0.5 and out["metrics"]["rewards/margins"] == pytest.approx(0.5 * sum(h) / len(h))
    with pytest.raises(ConfigError, match="disagree"):
        evaluate_models(policy, tok, ROWS, ref=ref, options=EvalOptions(beta=0.5), beta=0.2)


def test_evaluating_the_runs_training_data_is_said(tmp_path):
    from preflab.eval.run import training_data_note

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n")
    cfg = {"dataset_name": str(data), "dataset_split": "train", "eval_fraction": 0.1, "seed": 7}
    note = training_data_note(str(data), cfg, "train")
    assert "is the run's training data" in note and "eval_fraction=0.1" in note and "seed 7" in note
    assert "every row was trained on" in training_data_note(str(data), {**cfg, "eval_fraction": 0.0}, "train")
    assert training_data_note(str(data), cfg, "test") is None              # another split of it
    assert training_data_note(str(tmp_path / "heldout.jsonl"), cfg, "train") is None


def test_report_refuses_a_run_given_twice(tmp_path):
    from preflab.errors import PreflabError
    from preflab.report.html import write_report

    run = _report_run(tmp_path, [{"step": 1, "loss": 0.7}])
    # the old report showed it as two runs both named by its whole path ("//tmp/.../run")
    with pytest.raises(PreflabError, match="given twice"):
        write_report([run, tmp_path / "." / "run"], tmp_path / "r.html")


def test_reward_model_win_rate_scores_as_the_reward_model_was_trained(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from preflab.eval_cli.checkpoint import reward_model_fn
    from preflab.reward_models.interface import RewardModel

    tok = tiny_tokenizer("bytelevel")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "rm", safe_serialization=True)
    tok.save_pretrained(tmp_path / "rm")
    prompts, answers = ["the cat", "hello world ,"], [" sat on the mat", " hi"]
    # the old reward_model_fn scored prompt + answer without the eos the reward model is trained with
    want = RewardModel.from_pretrained(str(tmp_path / "rm")).score(prompts, answers).tolist()
    assert reward_model_fn(str(tmp_path / "rm"))(prompts=prompts, completions=answers) == pytest.approx(want)
    # a policy given as --reward-model: the old code scored with a freshly initialised (random) head
    tiny_causal_lm(tok, seed=1).save_pretrained(tmp_path / "policy", safe_serialization=True)
    tok.save_pretrained(tmp_path / "policy")
    with pytest.raises(ConfigError, match="no trained reward head"):
        reward_model_fn(str(tmp_path / "policy"))
