"""The small problems user trials 4-5 saw and left (CHANGELOG "Seen and not fixed"), each reproduced as a user
meets it: the message or value asserted, not only that the command runs."""
import json

import yaml

from tests.eval.test_eval_unpaired import KTO_ROWS


def _saved_run(path, config: dict):
    """A run directory as `preflab train` leaves it: a tiny model and tokenizer saved, and its config.yaml."""
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer("bytelevel")
    tiny_causal_lm(tok, seed=1).save_pretrained(path)
    tok.save_pretrained(path)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def test_the_eval_of_a_kto_run_on_unpaired_rows_names_what_beta_sets_not_r_star(tmp_path):
    """Before: `preflab eval` of a `loss_type: kto` run on unpaired rows noted that "rewards/*, the idealized ranking
    accuracy R* and the difficulty are DPO's quantities ...; read R* as DPO's ceiling", though neither R* nor the
    difficulty is computed for unpaired rows. After: the note names rewards/* and unpaired/auroc, KTO's own reward."""
    from preflab.eval_cli.checkpoint import evaluate_checkpoint

    from preflab.eval.run import run_truncation

    run = _saved_run(tmp_path / "kto", {"task": "dpo", "loss_type": "kto", "beta": 0.1, "seed": 0, "max_length": 128,
                                        "model_name_or_path": "builtin:tiny-llama"})
    # the CLI's truncation note said "pairs are cut as the run's eval set was" of these unpaired rows
    assert run_truncation(str(run))[1] == ("the eval rows (pairs, or unpaired completions) are cut as the run's eval "
                                           "set was (max_length=128, from its config.yaml); --max-length / "
                                           "--max-prompt-length change it")
    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in KTO_ROWS))
    result = evaluate_checkpoint(str(run), str(data), reference=str(run))
    assert result["num_completions"] == 5 and "unpaired/auroc" in result["metrics"]
    assert result["notes"][0] == (
        "the run trained with loss_type kto: rewards/* and unpaired/auroc are beta (log pi - log pi_ref) at "
        "beta=0.1, KTO's implicit reward, the rewards/* TRL's KTOTrainer logs; these unpaired rows give no R* or "
        "difficulty (they need pairs)")
    assert not any("R* as DPO's ceiling" in n for n in result["notes"])


def test_the_beta_notes_of_unpaired_rows_name_the_quantities_they_set():
    """The sft and no-KL notes of an unpaired eval say rewards/* and unpaired/auroc; a pair eval's keep R*."""
    from preflab.eval.run import eval_beta

    assert eval_beta(None, {"task": "sft", "beta": 0.1}, unpaired=True) == (0.1, [
        "the run is task: sft (maximum likelihood, no beta; its config.yaml's beta is the option's default, unread): "
        "beta = 0.1 is used for rewards/* and unpaired/auroc, DPO's quantities against the reference; pass --beta "
        "to choose it"])
    assert eval_beta(None, {"beta": 0.0}, unpaired=True)[1] == [
        "the run's beta is 0.0 (no KL term), which defines no implicit reward: beta = 0.1 is used for rewards/* and "
        "unpaired/auroc; pass --beta to choose it"]
    assert "rewards/*, R* and the difficulty" in eval_beta(None, {"beta": 0.0})[1][0]
    ipo = eval_beta(None, {"task": "dpo", "loss_type": "ipo", "beta": 0.5}, unpaired=True)[1][0]
    assert "at beta=0.5, DPO's implicit reward at the run's beta, that objective's own parameter" in ipo
    assert "read R* as DPO's ceiling" in eval_beta(None, {"task": "dpo", "loss_type": "kto", "beta": 0.5})[1][0]


def _online_dataset_run(path):
    """What `preflab train` left for the trial's online_task: dataset run with an eval set and eval_steps 3 (no
    eval_on_start): eval rows at steps 3 and 6, summary.json eval_reward_before (the starting model) / _after."""
    path.mkdir(parents=True)
    rows = [{"step": s, "round": s, "eval_reward": 5.0, "eval_judge/dropped": 0, "eval_win_rate_vs_reference": w}
            for s, w in ((3, 0.5), (6, 0.75))]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "summary.json").write_text(json.dumps({"global_step": 6, "eval_reward_before": 4.0,
                                                   "eval_reward_after": 5.0}))
    (path / "config.yaml").write_text(yaml.safe_dump({"task": "online", "online_task": "dataset", "eval_steps": 3}))
    return path


def test_an_online_headline_says_which_before_is_not_the_starting_model(tmp_path):
    """Before: the headline of an online run with an eval set said "its first eval was at step 3, after training had
    started, so 'before' is not the starting model" under a table whose eval_reward "before" (summary.json
    eval_reward_before) IS the starting model. After: the note names the rows it is about and says the other's
    before is the start's."""
    from preflab.report.headline import headline_rows, late_before_note
    from preflab.report.html import write_report
    from preflab.report.runs import load_run

    run = _online_dataset_run(tmp_path / "online")
    rows = headline_rows(load_run(run))
    assert [(r["metric"], r["before"]) for r in rows] == [("eval_reward", ("before training", 4.0)),
                                                          ("eval_win_rate_vs_reference", ("step 3", 0.5))]
    said = ("its first eval was at step 3, after training had started, so the 'before' of eval_win_rate_vs_reference "
            "is not the starting model (eval_on_start: true evaluates it at step 0); the 'before' of eval_reward is: "
            "the run measured it before training (summary.json)")
    assert late_before_note(rows) == said
    html = write_report([str(run)], str(tmp_path / "r.html")).read_text()
    assert said.replace("'", "&#x27;") in html
    # without a summary pair (every before an eval step) the note keeps its one-clause form
    assert late_before_note(rows[1:]) == ("its first eval was at step 3, after training had started, so 'before' is "
                                          "not the starting model; eval_on_start: true evaluates it at step 0")


def _sft_rows(n: int) -> list[dict]:
    """n SFT rows cycling through TRL's three forms: prompt + completion, text, messages."""
    rows = []
    for i in range(n):
        if i % 3 == 0:
            rows.append({"prompt": f"echo {i}\n", "completion": f"ECHO {i}"})
        elif i % 3 == 1:
            rows.append({"text": f"echo {i}\nECHO {i}"})
        else:
            rows.append({"messages": [{"role": "user", "content": f"echo {i}"},
                                      {"role": "assistant", "content": f"ECHO {i}"}]})
    return rows


def test_the_eval_of_an_sft_run_counts_pairs_whose_prompt_or_response_it_trained_on(tmp_path):
    """Before: `preflab eval` of a task: sft run read its SFT file as preference pairs and said only "holds no
    preference pairs ... so whether the eval rows were trained on was not checked". After: the SFT rows are read as
    text (less the rows eval_fraction held out) and each eval pair is checked: a response the run trained on
    (prompt + chosen or prompt + rejected is an SFT sequence) and a prompt it trained on."""
    from jsonl_files import write_jsonl

    from preflab.data.holdout import held_out_positions
    from preflab.data.rows import load_rows
    from preflab.eval.run import training_overlap

    sft = write_jsonl(tmp_path / "sft.jsonl", _sft_rows(12))
    cfg = {"task": "sft", "dataset_name": sft, "eval_fraction": 0.25, "seed": 3}
    held = sorted(held_out_positions(12, 0.25, 3))
    trained = [i for i in range(12) if i not in held]
    text_row = next(i for i in trained if i % 3 == 1)
    completion_row = next(i for i in trained if i % 3 == 0)
    messages_row = next(i for i in trained if i % 3 == 2)
    pairs = [
        {"prompt": f"echo {completion_row}\n", "chosen": "no", "rejected": f"ECHO {completion_row}"},  # both
        {"prompt": f"echo {text_row}\n", "chosen": f"ECHO {text_row}", "rejected": "no"},  # both (a text row)
        {"prompt": f"echo {text_row}\n", "chosen": "other", "rejected": "no"},  # the prompt: a text row begins so
        {"prompt": [{"role": "user", "content": f"echo {messages_row}"}],
         "chosen": [{"role": "assistant", "content": f"ECHO {messages_row}"}],
         "rejected": [{"role": "assistant", "content": "no"}]},  # both (a messages row)
        {"prompt": f"echo {held[0]}\n", "chosen": f"ECHO {held[0]}", "rejected": "no"},  # held out: neither
        {"prompt": "echo 99\n", "chosen": "ECHO 99", "rejected": "no"}]  # neither
    examples = load_rows(write_jsonl(tmp_path / "pairs.jsonl", pairs), kind="pairwise")[0]
    record, note, why = training_overlap(examples, cfg)
    assert why is None
    assert record == {"prompts": 4, "pairs": 3, "rows": 6, "checked_against": sft, "split": "train",
                      "training_sequences": 9}
    assert note.startswith("4 of 6 eval pairs (66.7%) have a prompt the run trained on, and 3 (50.0%) have a "
                           "response the run trained on by maximum likelihood (prompt + chosen or prompt + rejected "
                           "is one of its SFT sequences")
    # a pair run's config reading the same file still says it holds no preference pairs
    assert training_overlap(examples, {"dataset_name": sft})[2].startswith(
        f"the run's training data {sft} (dataset_name, split train) holds no preference pairs")
    from preflab.report.headline import trained_on_clause

    assert trained_on_clause({"overlap_with_training": record}) == (
        ", 4 with a prompt the run trained on (3 with a response it trained on by SFT; not held-out)")
    # an online run's overlap has pairs: null (it trained on its own samples): the report said "None training pairs"
    assert trained_on_clause({"overlap_with_training": {"prompts": 256, "pairs": None, "training_prompts": 600}}) == (
        ", 256 with a prompt the run trained on (it trained on no pairs; not held-out)")
    assert trained_on_clause({"overlap_with_training": {"prompts": 2, "pairs": 1}}) == (
        ", 2 with a prompt the run trained on (1 training pairs; not held-out)")
    # an offline run whose eval shares prompts but no pair with its training data: 0 pairs, not "no pairs"
    assert trained_on_clause({"overlap_with_training": {"prompts": 2, "pairs": 0}}) == (
        ", 2 with a prompt the run trained on (0 training pairs; the prompts are not held-out)")


def test_group_by_length_with_train_sampling_strategy_random_is_refused_not_run_grouped(tmp_path):
    """Before: `group_by_length: true` beside `train_sampling_strategy: random` ran length-grouped without a word,
    though transformers 5 (TRL 1.x) has no group_by_length (TrainingArguments refuses it) and samples
    train_sampling_strategy's random order. After: the two are refused as disagreeing; each alone keeps its meaning."""
    import pytest

    from preflab.config import load_config
    from preflab.errors import ConfigError

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl",
                                    "group_by_length": True, "train_sampling_strategy": "random"}))
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert ("group_by_length: true and train_sampling_strategy: random disagree: transformers 5 (TRL 1.x) has no "
            "group_by_length and samples train_sampling_strategy's random order") in str(err.value)
    path.write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl",
                                    "train_sampling_strategy": "group_by_length"}))
    assert load_config(str(path)).group_by_length is True
    path.write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl",
                                    "train_sampling_strategy": "random"}))
    assert load_config(str(path)).group_by_length is False


def test_plan_of_an_online_run_says_it_reads_no_max_length_and_what_its_micro_batch_holds(tmp_path, capsys):
    """Before: the refusal described the run by max_length's batch ("per_device_train_batch_size x sequences of
    max_length"), an option online runs do not read, and every recipe's micro-batch as prompt groups. After: it
    says an online run reads no max_length, and counts a pair recipe's micro-batch in pairs, a group recipe's in
    groups, with the prompt's cut (max_prompt_length) and the completions' (max_completion_length)."""
    from preflab.cli import main

    base = {"task": "online", "online_task": "dataset", "model_name_or_path": "builtin:tiny-llama",
            "dataset_name": "p.jsonl", "reward_funcs": "demo_echo_reward", "num_generations": 4,
            "max_completion_length": 8, "per_device_train_batch_size": 3, "max_steps": 2}
    said = {}
    for trainer, extra in (("online_dpo", {"max_prompt_length": 24}), ("rloo", {})):
        config = tmp_path / f"{trainer}.yaml"
        config.write_text(yaml.safe_dump({**base, "trainer": trainer, **extra}))
        assert main(["plan", str(config)]) == 2
        said[trainer] = capsys.readouterr().err
    assert "an online run reads no max_length" in said["rloo"]
    assert ("This one (trainer online_dpo) scores per micro-batch per_device_train_batch_size=3 pairs of completions "
            "(6 sequences), each a prompt of at most max_prompt_length=24 tokens + at most max_completion_length=8 "
            "new tokens") in said["online_dpo"]
    assert ("This one (trainer rloo) scores per micro-batch per_device_train_batch_size=3 prompt groups of "
            "num_generations=4 completions (12 sequences)") in said["rloo"]


def test_a_grpo_option_in_an_rloo_run_is_said_to_be_grpos_not_an_unknown_key():
    """Before: `trainer: rloo` with top_entropy_quantile (and entropy_coef, use_adaptive_entropy, delta,
    importance_sampling_level, off_policy_mask_threshold, the sapo_ / vespo_ parameters) stopped with "unknown config
    key 'top_entropy_quantile'". After: each is named a GRPO-family option rloo does not read, as TRL's RLOOConfig
    has none of them (checked against TRL's dataclasses where it is installed)."""
    import dataclasses

    import pytest

    from preflab.config import config_from_dict
    from preflab.errors import ConfigError
    from preflab.objectives import objective_class

    base = dict(task="online", trainer="rloo", online_task="demo", model_name_or_path="builtin:tiny-llama",
                max_steps=2)
    grpo_only = ("top_entropy_quantile", "entropy_coef", "use_adaptive_entropy", "entropy_coef_delta",
                 "entropy_target", "delta", "importance_sampling_level", "off_policy_mask_threshold",
                 "sapo_temperature_pos", "vespo_k_neg")
    assert set(grpo_only) <= {f.name for f in dataclasses.fields(objective_class("grpo"))}
    value = {"use_adaptive_entropy": True, "importance_sampling_level": "sequence"}
    for key in grpo_only:
        with pytest.raises(ConfigError) as err:
            config_from_dict({**base, key: value.get(key, 0.5)})
        assert str(err.value) == (
            f"{key} is an option of the GRPO family (trainers grpo, dapo, dr_grpo, bnpo, gspo, cispo, sapo, luspo, "
            f"vespo; TRL's GRPOConfig), which trainer 'rloo' does not read (TRL's RLOOConfig has no such field "
            "either: RLOOTrainer does not read it); remove it, or choose a GRPO-family trainer.")
    trl = pytest.importorskip("trl")
    assert not set(grpo_only) & {f.name for f in dataclasses.fields(trl.RLOOConfig)}
    assert set(grpo_only) <= {f.name for f in dataclasses.fields(trl.GRPOConfig)}


def test_the_report_says_the_held_out_answers_cut_and_the_prompts_unscored(tmp_path):
    """Before: an online run's held-out eval logged eval_completions/clipped_ratio and eval_judge/dropped (user trial
    4) but the report said nothing of them, as it does of the training rounds' cut and unscored completions. After:
    a note per count, at the last eval step, with how many eval steps had any; none when both are 0."""
    from preflab.report.html import write_report
    from preflab.report.runs import load_run

    run = _online_dataset_run(tmp_path / "online")
    rows = [{"step": 3, "eval_reward": 5.0, "eval_judge/dropped": 1, "eval_completions/clipped_ratio": 0.0},
            {"step": 6, "eval_reward": 5.0, "eval_judge/dropped": 0, "eval_completions/clipped_ratio": 2 / 3}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    said = [n for n in load_run(run).missing if n.startswith("held-out eval")]
    assert said == ["held-out eval: greedy held-out answers reached max_completion_length without EOS at 1 of 2 eval "
                    "steps (66.7% of them at the last, step 6), so eval_reward scored cut-off text there "
                    "(eval_completions/clipped_ratio)",
                    "held-out eval: the judges gave no score to some held-out prompts at 1 of 2 eval steps (at most "
                    "1, at step 3; 0 at the last, step 6); those prompts are left out of eval_reward and the win "
                    "rate (eval_judge/dropped)"]
    assert "(66.7% of them at the last, step 6)" in write_report([str(run)], str(tmp_path / "r.html")).read_text()
    quiet = _online_dataset_run(tmp_path / "quiet")  # its rows log eval_judge/dropped 0 and no clipped ratio
    assert not any(n.startswith("held-out eval") for n in load_run(quiet).missing)


def test_sft_overlap_counts_each_form_by_hand(tmp_path):
    """data.overlap.sft_overlap_counts on one row of each form, each eval pair's verdict written out: a messages
    row's prompt is its turns before the last assistant turn (that turn is the response, not prompt); a pair whose
    REJECTED response is an SFT sequence is trained on; a string prompt a text row begins with is trained on. And
    `preflab eval` reads an SFT run's text under its dataset_text_field (a `body` column here)."""
    from types import SimpleNamespace

    from jsonl_files import write_jsonl

    from preflab.data.overlap import sft_overlap_counts, sft_sequence
    from preflab.eval.run import training_overlap

    user, said = {"role": "user", "content": "a?"}, {"role": "assistant", "content": "A"}
    train = [sft_sequence(0, {"messages": [user, said]}), sft_sequence(1, {"text": "Q: b\nB"}),
             sft_sequence(2, {"prompt": "c ", "completion": "C"})]
    assert train[0].prompt == [user]

    def pair(prompt, chosen, rejected):
        return SimpleNamespace(prompt=prompt, chosen=chosen, rejected=rejected)

    other = {"role": "assistant", "content": "x"}
    cases = [(pair([user], [other], [other]), (1, 0)),       # the messages row's prompt, not its response
             (pair([user, said], [other], [other]), (0, 0)),  # the whole conversation is no prompt it trained on
             (pair("c ", "x", "C"), (1, 1)),                  # the rejected side is the prompt + completion row
             (pair("Q: b\n", "x", "y"), (1, 0)),              # the text row begins with the prompt
             (pair("Q: z\n", "x", "y"), (0, 0))]
    for example, (prompts, pairs) in cases:
        assert sft_overlap_counts(train, [example]) == {"prompts": prompts, "pairs": pairs, "rows": 1}, example
    sft = write_jsonl(tmp_path / "body.jsonl", [{"body": f"Q: {i}\nA{i}"} for i in range(4)])
    from preflab.data.rows import load_rows

    pair_file = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Q: 1\n", "chosen": "A1", "rejected": "no"}])
    examples = load_rows(pair_file, kind="pairwise")[0]
    record = training_overlap(examples, {"task": "sft", "dataset_name": sft, "dataset_text_field": "body"})[0]
    assert (record["prompts"], record["pairs"], record["training_sequences"]) == (1, 1, 4)


def test_the_unpaired_beta_note_says_kto_only_when_every_objective_is_kto():
    """A loss list of kto and ipo: rewards/* is DPO's implicit reward at the run's beta, not KTO's alone."""
    from preflab.eval.run import eval_beta

    note = eval_beta(None, {"task": "dpo", "loss_type": ["kto", "ipo"], "beta": 0.2}, unpaired=True)[1][0]
    assert note == ("the run trained with loss_type kto, ipo: rewards/* and unpaired/auroc are beta (log pi - log "
                    "pi_ref) at beta=0.2, DPO's implicit reward at the run's beta, that objective's own parameter; "
                    "these unpaired rows give no R* or difficulty (they need pairs)")


def test_the_late_before_note_names_the_earliest_late_eval_and_leaves_eval_on_start_rows_alone():
    """Rows whose first eval was at steps 5 and 3 (after training started): the note says step 3, the earliest;
    a row first evaluated at step 0 (eval_on_start) is the starting model: alone it needs no note, and beside a
    late row it is not named among the late ones."""
    from preflab.report.headline import late_before_note

    def row(metric, step):
        return {"metric": metric, "before": (f"step {step:g}", 1.0), "first_step": float(step)}

    start = row("eval_c", 0)
    assert late_before_note([start]) is None
    summary_row = {"metric": "reward", "before": ("before training", 2.0)}
    assert late_before_note([row("eval_a", 5), row("eval_b", 3), start, summary_row]) == (
        "its first eval was at step 3, after training had started, so the 'before' of eval_a, eval_b is not the "
        "starting model (eval_on_start: true evaluates it at step 0); the 'before' of reward is: the run measured it "
        "before training (summary.json)")
