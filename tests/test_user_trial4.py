"""Fourth new-user trial (user-trial-4): each finding's symptom, pinned by the message or value a user sees."""
import pytest

from preflab.data.rows import load_rows
from preflab.errors import DataError
from tests.jsonl_files import write_jsonl


def _weighted_pairs(n: int, odd_row: int, odd_weight) -> list[dict]:
    rows = [{"prompt": f"echo: w{i}", "chosen": f"W{i}!", "rejected": f"w{i}", "weight": 0.5 + i / 10}
            for i in range(n)]
    rows[odd_row]["weight"] = odd_weight
    return rows


def test_an_extra_that_is_a_list_in_one_row_and_a_number_in_the_others_is_a_bad_row_at_load(tmp_path):
    """Before: the row passed the load check, the column was left out of the batch that held it (stack_extras), and
    after some training steps the objective stopped with "needs batch.extras['weight'], which this batch does not
    carry ... Add a 'weight' column", though every row had one."""
    path = write_jsonl(tmp_path / "w.jsonl", _weighted_pairs(6, 4, [1, 2]))
    with pytest.raises(DataError) as err:
        load_rows(path, required_extras={"weight": (0.0, None)})
    msg = str(err.value)
    assert "row 4 (line 5), field 'weight'" in msg
    assert "a list ([1, 2]) where row 0 holds a number (0.5)" in msg
    examples, report = load_rows(path, required_extras={"weight": (0.0, None)}, on_bad_row="skip")
    assert [ex.row_id for ex in examples] == [0, 1, 2, 3, 5]
    assert report.skipped == {"invalid_extra": 1}
    # lists in every row (one nesting) are one kind: all kept
    rows = [dict(r, weight=[r["weight"], 1.0]) for r in _weighted_pairs(4, 0, 0.5)]
    assert len(load_rows(write_jsonl(tmp_path / "l.jsonl", rows), required_extras=["weight"])[0]) == 4


def test_eval_win_rate_answers_are_as_long_as_the_runs_completions_and_cut_ones_are_counted(tmp_path, monkeypatch,
                                                                                            capsys):
    """Before: `preflab eval ONLINE_RUN --reward-fn F` generated 64 new tokens whatever the run's
    max_completion_length (8 here: the policy never trained on longer answers), eval.json did not say how long the
    answers were, and answers cut without EOS were not counted (training counts them: completions/clipped_ratio)."""
    import json

    import yaml

    from preflab.cli import main
    from preflab.generate import generate_ids
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer("bytelevel")
    run, ref = tmp_path / "run", tmp_path / "ref"
    models = {}
    for folder, seed in ((run, 1), (ref, 2)):
        models[folder.name] = tiny_causal_lm(tok, seed=seed)
        models[folder.name].save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
    (run / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama", "beta": 0.1,
                                                     "seed": 0, "task": "online", "max_completion_length": 3}))
    data = write_jsonl(tmp_path / "pairs.jsonl", _weighted_pairs(4, 0, 0.5))
    lengths = []
    (tmp_path / "lengths.py").write_text(
        "def length(prompts, completions, **kwargs):\n    return [float(len(c)) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["eval", str(run), "--data", data, "--reference", str(ref), "--reward-fn", "lengths:length",
                 "--out", str(tmp_path / "e.json")]) == 0
    assert "up to the run's max_completion_length=3 new tokens" in capsys.readouterr().err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["win_rate"]["max_new_tokens"] == 3 and result["win_rate"]["decoding"] == "greedy"
    prompts = [tok(f"echo: w{i}")["input_ids"] for i in range(4)]
    for who, model in (("policy", models["run"]), ("reference", models["ref"])):
        answers = generate_ids(model, prompts, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=3)
        assert max(map(len, answers)) <= 3
        lengths.append(sum(map(len, answers)) / 4)
        clipped = sum(tok.eos_token_id not in a for a in answers) / 4
        assert result["metrics"][f"clipped_ratio/{who}_generation"] == clipped
    assert result["metrics"]["length/policy_generation"] == lengths[0]
    cut = [round(result["metrics"][f"clipped_ratio/{w}_generation"] * 4) for w in ("policy", "reference")]
    assert any(cut)  # tiny random models do not stop within 3 tokens: the note is there
    assert (f"win rate: {cut[0]} of the policy's and {cut[1]} of the reference's 4 answers reached "
            "max_new_tokens=3 without EOS") in " ".join(result["notes"])
    # --max-new-tokens wins over the run's length, without the note
    assert main(["eval", str(run), "--data", data, "--reference", str(ref), "--reward-fn", "lengths:length",
                 "--max-new-tokens", "5", "--out", str(tmp_path / "e5.json")]) == 0
    assert "max_completion_length=3" not in capsys.readouterr().err
    assert json.loads((tmp_path / "e5.json").read_text())["win_rate"]["max_new_tokens"] == 5


def _kto_run(path, kind: str, eval_json: dict | None = None):
    import json

    import yaml

    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text(json.dumps({"step": 3, "eval_loss": 0.66}) + "\n")
    (path / "config.yaml").write_text(yaml.safe_dump({"task": "dpo", "loss_type": "kto", "beta": 0.1,
                                                      "eval_fraction": 0.25, "eval_steps": 3}))
    (path / "summary.json").write_text(json.dumps({"data": {"train_rows": {"kind": kind, "total": 24}}}))
    if eval_json is not None:
        (path / "eval.json").write_text(json.dumps(eval_json))
    return path


def test_the_report_of_a_kto_run_does_not_wait_for_pair_margins_and_counts_its_completions(tmp_path):
    """Before: a KTO run (unpaired rows, evaluated at step 3) was told "no per-pair margins (pair_margins.jsonl) yet:
    a preference run writes them at each eval step, and this run has not logged one" (it never can: no pairs), and
    its eval.json's table row "pairs" read 0 with no count of the 24 completions it scored."""
    from preflab.report.html import write_report
    from preflab.report.runs import load_run

    kto = _kto_run(tmp_path / "kto", "unpaired", {"num_pairs": 0, "num_completions": 24, "num_desirable": 12,
                                                  "beta": 0.1, "metrics": {"unpaired/auroc": 0.75}})
    pairs = _kto_run(tmp_path / "pairs", "pairwise")
    assert not any("per-pair margins" in note for note in load_run(kto).missing)
    assert any(note.startswith("no per-pair margins (pair_margins.jsonl) yet") for note in load_run(pairs).missing)
    html = write_report([str(kto)], str(tmp_path / "report.html")).read_text()
    assert "no per-pair margins were saved" not in html
    assert '<td>completions</td><td class="num">24</td>' in html


def test_a_reward_function_without_kwargs_is_refused_naming_the_keyword_not_dropped_completion_by_completion():
    """Before: `def f(prompts, completions)` (no **kwargs) as reward_funcs raised TypeError on every completion
    (the call passes completion_ids and the prompt row's columns); all 16 of round 1 were dropped as judge failures
    and the run stopped with "... or raise max_judge_failure_fraction to train on the scored ones" (none was)."""
    from preflab.errors import ConfigError
    from preflab.loops.judge import Judge

    def nokw(prompts, completions):
        return [float(len(c)) for c in completions]

    def takes_answer(prompts, completions, completion_ids, answer):
        return [float(c == a) for c, a in zip(completions, answer)]

    judge = Judge(nokw)
    with pytest.raises(ConfigError) as err:
        judge(["p", "q"], ["a", "bb"], columns=[{"answer": "a"}, {"answer": "b"}], completion_ids=[[1], [2, 3]])
    assert ("reward function 'nokw'" in str(err.value) and "takes (prompts, completions) and cannot be called with "
            "answer=..., completion_ids=...:" in str(err.value) and "Add **kwargs" in str(err.value))
    assert judge.failed == 0
    # called with only what it takes, it scores (the eval's win rate calls it so)
    assert Judge(nokw)(["p", "q"], ["a", "bb"])[0].tolist() == [1.0, 2.0]
    # a function naming every keyword it is passed needs no **kwargs
    scores, _ = Judge(takes_answer)(["p", "q"], ["a", "bb"], columns=[{"answer": "a"}, {"answer": "b"}],
                                    completion_ids=[[1], [2, 3]])
    assert scores.tolist() == [1.0, 0.0]


def test_an_online_runs_held_out_eval_counts_unscored_prompts_and_cut_answers(tmp_path):
    """Before: eval_reward of online_task: dataset averaged the held-out answers a judge scored and said nothing of
    those it did not (a reward function's None) nor of answers cut at max_completion_length (every one, here)."""
    import json

    from preflab.config import config_from_dict
    from preflab.generate import generate_ids
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun

    write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"say {w}\n"} for w in ("ab", "cd", "ef", "gh")])
    write_jsonl(tmp_path / "eval.jsonl", [{"prompt": f"say {w}\n"} for w in ("ij", "kl", "mn")])
    (tmp_path / "rewards.py").write_text("def length(prompts, completions, **kw):\n"
                                         "    return [None if 'kl' in p else float(len(c))\n"
                                         "            for p, c in zip(prompts, completions)]\n")
    cfg = config_from_dict(dict(task="online", trainer="grpo", online_task="dataset",
                                dataset_name=str(tmp_path / "train.jsonl"),
                                eval_dataset_name=str(tmp_path / "eval.jsonl"),
                                reward_funcs=f"{tmp_path / 'rewards.py'}:length", model_name_or_path="builtin:tiny-llama",
                                learning_rate=1e-12, max_steps=1, eval_steps=1, num_generations=2,
                                prompts_per_generation=2, per_device_train_batch_size=2, max_completion_length=5,
                                logging_steps=1, disable_tqdm=True, use_cpu=True, output_dir=str(tmp_path / "out")))
    tok = tiny_tokenizer("char")
    policy = tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=1)
    ids = generate_ids(policy, [tok(f"say {w}\n").input_ids for w in ("ij", "kl", "mn")], eos_id=tok.eos_token_id,
                       pad_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                       max_new_tokens=5)
    OnlineRun(cfg, policy=policy, tokenizer=tok).train()
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if "eval_reward" in r][-1]
    assert final["eval_judge/dropped"] == 1  # the 'kl' prompt: None from the only judge
    assert final["eval_completions/clipped_ratio"] == sum(tok.eos_token_id not in c for c in ids) / 3
    scored = [len(tok.decode(c, skip_special_tokens=True)) for c, w in zip(ids, ("ij", "kl", "mn")) if w != "kl"]
    assert final["eval_reward"] == sum(scored) / 2


def test_an_unfinished_streaming_pass_through_a_shuffle_buffer_is_not_called_the_sources_first_rows(tmp_path, capsys):
    """Before: examples/streaming.yaml (shuffle buffer 64) stopped after 4 steps said "counts of one pass (the first
    33 rows read; ...)" and counted row 5 as skipped but not row 9 (missing 'chosen'): the 33 rows were drawn
    through the buffer, not the file's first 33 (in file order, buffer 0, it is 34 rows with both skipped)."""
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer

    rows = [{"prompt": f"echo: w{i}", "chosen": f"W{i}!", "rejected": f"w{i}"} for i in range(40)]
    rows[5]["rejected"] = rows[5]["chosen"]
    del rows[3]["chosen"]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    said = {}
    for buffer in (0, 16):
        Trainer(config_from_dict(dict(
            model_name_or_path="builtin:tiny-llama", dataset_name=data, output_dir=str(tmp_path / f"b{buffer}"),
            streaming=True, streaming_shuffle_buffer=buffer, per_device_train_batch_size=4, max_steps=2,
            max_length=64, disable_tqdm=True, use_cpu=True, seed=3, on_bad_row="skip"))).train()
        said[buffer] = next(line for line in capsys.readouterr().out.splitlines() if "counts of one pass" in line)
    assert "(the first 10 rows read; the first pass did not end): " in said[0]  # 8 kept + rows 3 and 5 skipped
    assert "10 rows, 8 kept, 2 skipped (identical: 1, missing_field: 1)" in said[0]
    assert "rows drawn so far through the shuffle buffer of 16, not the source's first" in said[16]
    assert "the first pass did not end" in said[16] and "rows read;" not in said[16]


def test_two_reward_functions_of_one_name_log_one_metric_each(tmp_path):
    """Before: reward_funcs [a.py:score, b.py:score] (or one function listed twice) logged one rewards/score/mean:
    the second judge's mean overwrote the first's, while `reward` summed both."""
    import json

    from preflab.config import config_from_dict
    from preflab.loops.judge import distinct_names
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun

    (tmp_path / "a.py").write_text("def score(prompts, completions, **kw):\n    return [1.0 for c in completions]\n")
    (tmp_path / "b.py").write_text("def score(prompts, completions, **kw):\n    return [3.0 for c in completions]\n")
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"say {w}\n"} for w in ("ab", "cd")])
    cfg = config_from_dict(dict(task="online", trainer="grpo", online_task="dataset",
                                dataset_name=str(tmp_path / "train.jsonl"),
                                reward_funcs=[f"{tmp_path / 'a.py'}:score", f"{tmp_path / 'b.py'}:score"],
                                model_name_or_path="builtin:tiny-llama", learning_rate=1e-12, max_steps=1,
                                num_generations=2, prompts_per_generation=2, per_device_train_batch_size=2,
                                max_completion_length=3, logging_steps=1, disable_tqdm=True, use_cpu=True,
                                output_dir=str(tmp_path / "out")))
    tok = tiny_tokenizer("char")
    OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=1), tokenizer=tok).train()
    row = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    assert (row["rewards/score/mean"], row["rewards/score_2/mean"], row["reward"]) == (1.0, 3.0, 4.0)
    assert distinct_names(["f", "g", "f", "f_2", "f"]) == ["f", "g", "f_2", "f_2_2", "f_3"]
