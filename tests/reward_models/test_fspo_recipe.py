"""The FSPO recipe (task: fspo): its training file is build_episodes' output on the training users only, held-out
users are evaluated and counted, shots = 0 is plain DPO on the same pairs (equal weights), resume = uninterrupted,
and bad rows are refused with file, row and field."""
import json

import pytest
import torch
from safetensors.torch import load_file

from preflab.cli import main
from preflab.errors import ConfigError, DataError
from preflab.reward_models.fewshot_episodes import build_episodes, render_completion, render_episode
from preflab.reward_models.fspo import episode_rows, read_user_rows, run_fspo, split_users, toy_user_rows

TINY = {"users_per_group": 3, "rows_per_user": 4, "heldout_fraction": 0.34, "hidden_size": 32, "num_layers": 1,
        "steps": 3, "batch_size": 4, "instruction": "Answer."}


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_training_file_is_build_episodes_of_the_training_users(tmp_path):
    summary = run_fspo(str(tmp_path), quiet=True, baseline=False, shots=2, **TINY)
    rows = toy_user_rows(3, 4, seed=0)
    train, held, held_ids = split_users(rows, None, 0.34)
    assert held_ids == ["loud-2", "quiet-2"] and summary["heldout_users"] == held_ids
    expected, _ = build_episodes(train, shots=2, passes=2, instruction="Answer.", seed=0)
    written = _jsonl(tmp_path / "data" / "episodes.jsonl")
    assert written == [{k: e[k] for k in ("prompt", "chosen", "rejected")} for e in expected]
    assert not any(u in e["prompt"] for e in written for u in held_ids)
    held_prompts = {r["prompt"] for r in held} - {r["prompt"] for r in train}
    assert held_prompts and not any(p in e["prompt"] for e in written for p in held_prompts)
    # held-out users: every row the query of one episode (2 shots from the same user), counted in the summary
    assert summary["heldout_episodes"] == summary["heldout_pairs"] == len(held) == 8
    assert summary["train_users"] == 4 and summary["train_episodes"] == len(expected) == 2 * 16
    assert set(summary["by_group_after"]) == {"loud", "quiet"}
    assert sum(g["episodes"] for g in summary["by_group_after"].values()) == 8


def test_a_user_too_small_for_the_shots_is_left_out_of_both_stages_and_the_pooled_control_is_printed(tmp_path,
                                                                                                       capsys):
    """Trial 19: a user with fewer than shots + 1 rows has no episode; the pooled stage trained and was scored on
    its pairs all the same (held out: 5 pooled pairs against FSPO's 4 episodes, the user's group in pooled_by_group
    only), and nothing said so. Now both stages see the same query pairs, a note names the users, and the pooled
    accuracy is the recipe's control (printed by `preflab train`, in the report's baseline column)."""
    from preflab.loops.cli import recipe_headline

    rows = toy_user_rows(3, 4, seed=0)
    small = {"loud-0", "loud-2"}  # one training and one held-out user keep a single row each
    rows = [r for i, r in enumerate(rows) if r["user_id"] not in small or i == min(
        j for j, q in enumerate(rows) if q["user_id"] == r["user_id"])]
    data = tmp_path / "users.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = {k: v for k, v in TINY.items() if k not in ("users_per_group", "rows_per_user", "heldout_fraction")}
    summary = run_fspo(str(tmp_path / "run"), data_file=str(data), heldout_users=("loud-2", "quiet-2"), shots=1,
                       **params)
    assert "['loud-0']" in capsys.readouterr().out.split("fspo: note: 1 training user(s) ")[1].split("\n")[0]
    assert summary["skipped_users"].keys() == small
    # training: loud-1, quiet-0, quiet-1 (4 rows each) x 2 passes, in both stages; loud-0's row in neither
    episodes = _jsonl(tmp_path / "run" / "data" / "episodes.jsonl")
    pooled = _jsonl(tmp_path / "run" / "data" / "pooled.jsonl")
    assert len(episodes) == len(pooled) == summary["train_episodes"] == 2 * 12
    query = lambda prompt: prompt.rsplit("## Question \n", 1)[1]  # noqa: E731
    assert sorted(query(e["prompt"]) for e in episodes) == sorted(query(p["prompt"]) for p in pooled)
    # held out: quiet-2's 4 rows scored by both stages; loud-2 by neither
    assert summary["heldout_episodes"] == 4
    assert summary["by_group_after"].keys() == summary["pooled_by_group_after"].keys() == {"quiet"}
    assert summary["pooled_by_group_after"]["quiet"]["episodes"] == 4
    assert summary["control_after"] == summary["pooled_accuracy_after"]
    assert summary["control_pair_choice_reward_after"] == summary["pooled_pair_choice_reward_after"]
    head = recipe_headline("run", summary)
    assert head["control_after"] == summary["pooled_accuracy_after"]
    assert head["pair_choice_reward_after"] == summary["pair_choice_reward_after"]


def test_preflab_eval_of_a_stage_on_the_heldout_episodes_file_gives_the_summarys_accuracy(tmp_path, capsys):
    """Trial 19: the held-out users' episodes were not written, so a stage run could not be evaluated on them with
    `preflab eval`. Now data/heldout_episodes.jsonl and data/heldout_pooled.jsonl hold the rows each stage was scored
    on, and the policy eval's ranking accuracy 1[log pi(y_w) > log pi(y_l)] on them is the summary's accuracy (two
    code paths: preflab.eval's and the recipe's preference_accuracy)."""
    summary = run_fspo(str(tmp_path), quiet=True, **TINY)
    rows = toy_user_rows(3, 4, seed=0)
    _, held, _ = split_users(rows, None, 0.34)
    expected, _ = episode_rows(held, shots=1, passes=1, seed=1, instruction="Answer.")
    assert _jsonl(tmp_path / "data" / "heldout_episodes.jsonl") == [
        {k: e[k] for k in ("prompt", "chosen", "rejected")} for e in expected]
    for stage, file, key in (("fspo", "heldout_episodes", "metric_after"),
                             ("pooled", "heldout_pooled", "pooled_accuracy_after")):
        assert main(["eval", str(tmp_path / stage), "--data", str(tmp_path / "data" / f"{file}.jsonl"),
                     "--no-reference", "--out", str(tmp_path / f"{stage}.json")]) == 0
        result = json.loads((tmp_path / f"{stage}.json").read_text())
        assert result["num_pairs"] == summary["heldout_episodes"] == 8
        assert result["metrics"]["ranking_accuracy"] == pytest.approx(summary[key], abs=1e-6)


def test_toy_rows_do_not_depend_on_the_hash_seed():
    """Regression: the toy ordered a set of prompts, so two processes (PYTHONHASHSEED) built other rows and trained
    other weights from the same seed."""
    import os
    import subprocess
    import sys

    code = "import json; from preflab.reward_models.fspo import toy_user_rows; print(json.dumps(toy_user_rows(2, 5)))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": h}).stdout for h in ("1", "2", "3")}
    assert len(outs) == 1 and json.loads(outs.pop()) == toy_user_rows(2, 5)


def test_zero_shots_is_plain_dpo_on_the_same_pairs(tmp_path):
    """shots = 0: the FSPO stage's data and final weights equal the pooled (plain DPO) stage's exactly."""
    summary = run_fspo(str(tmp_path), quiet=True, shots=0, **TINY)
    assert (tmp_path / "data" / "episodes.jsonl").read_text() == (tmp_path / "data" / "pooled.jsonl").read_text()
    row = _jsonl(tmp_path / "data" / "pooled.jsonl")[0]
    first = toy_user_rows(3, 4, seed=0)[0]
    assert row == {"prompt": render_episode([], first["prompt"], "Answer."),
                   "chosen": render_completion(first["chosen"]), "rejected": render_completion(first["rejected"])}
    fspo, pooled = load_file(str(tmp_path / "fspo" / "model.safetensors")), load_file(
        str(tmp_path / "pooled" / "model.safetensors"))
    assert fspo.keys() == pooled.keys() and all(torch.equal(fspo[k], pooled[k]) for k in fspo)
    assert summary["metric_after"] == summary["pooled_accuracy_after"]
    assert summary["by_group_after"] == summary["pooled_by_group_after"]


def test_resume_after_the_fspo_stage_equals_an_uninterrupted_run(tmp_path):
    full = run_fspo(str(tmp_path / "full"), quiet=True, **TINY)
    part = tmp_path / "part"
    run_fspo(str(part), quiet=True, stop_after_stage="fspo", **TINY)
    assert not (part / "summary.json").exists() and (part / "fspo" / "model.safetensors").exists()
    with pytest.raises(ConfigError, match="exists: set resume_from_checkpoint"):
        run_fspo(str(part), quiet=True, **TINY)
    resumed = run_fspo(str(part), quiet=True, resume=True, **TINY)
    drop = lambda s: {k: v for k, v in s.items() if k != "runtime_s"}  # noqa: E731
    assert drop(resumed) == drop(full)
    for stage in ("fspo", "pooled"):
        a, b = (load_file(str(d / stage / "model.safetensors")) for d in (tmp_path / "full", part))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_fspo_interrupted_mid_stage_resumes_from_its_checkpoint_and_equals_an_uninterrupted_run(tmp_path,
                                                                                                 stop_runs_at_step):
    """save_steps > 0: a run interrupted in the middle of its first stage continues from that stage's newest
    checkpoint (before, the resume deleted the checkpoints and reran the stage), and its state file, written before
    the stage, refuses a restart without resume and a resume with other recipe_params (before, no file existed
    until the stage ended, so both went ahead)."""
    from preflab.loops.offline import Trainer

    params = {**TINY, "steps": 4, "save_steps": 1, "baseline": False}
    full = run_fspo(str(tmp_path / "full"), quiet=True, **params)
    part = tmp_path / "part"
    with stop_runs_at_step(Trainer, 2):
        run_fspo(str(part), quiet=True, **params)
    assert (part / "fspo" / "checkpoint-2").is_dir() and not (part / "fspo" / "model.safetensors").exists()
    with pytest.raises(ConfigError, match="exists: set resume_from_checkpoint"):
        run_fspo(str(part), quiet=True, **params)
    with pytest.raises(ConfigError, match=r"recipe_params \['beta'\] differ from the interrupted run's"):
        run_fspo(str(part), quiet=True, resume=True, **{**params, "beta": 0.2})
    resumed = run_fspo(str(part), quiet=True, resume=True, **params)
    assert json.loads((part / "fspo" / "summary.json").read_text())["resumed_from_step"] == 2  # not rerun
    drop = lambda s: {k: v for k, v in s.items() if k != "runtime_s"}  # noqa: E731
    assert drop(resumed) == drop(full)
    a, b = (load_file(str(d / "fspo" / "model.safetensors")) for d in (tmp_path / "full", part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fspo_resume_with_other_recipe_params_goes_on_only_with_allow_config_change(tmp_path, stop_runs_at_step,
                                                                                  capsys):
    """allow_config_change: true reaches a recipe as it does a plain run's resume: a resume with another beta, of a
    run interrupted in the middle of its first stage (save_steps 1), goes on with a note naming the change, down to
    the stage's own checkpoint check; without it the resume is refused. Before, preflab train refused
    allow_config_change for every recipe."""
    from preflab.loops.offline import Trainer

    params = {**TINY, "save_steps": 1, "baseline": False}
    out = tmp_path / "run"
    with stop_runs_at_step(Trainer, 2):
        run_fspo(str(out), quiet=True, **params)
    cfg = tmp_path / "fspo.yaml"
    cfg.write_text(json.dumps({"task": "fspo", "output_dir": str(out), "disable_tqdm": True, "seed": 0,
                               "recipe_params": {**params, "beta": 0.2}}))
    assert main(["train", str(cfg), "resume_from_checkpoint=true"]) == 2
    assert "recipe_params ['beta'] differ from the interrupted run's" in capsys.readouterr().err
    assert main(["train", str(cfg), "resume_from_checkpoint=true", "allow_config_change=true"]) == 0
    printed = capsys.readouterr().out
    assert "resuming with changed recipe_params (allow_config_change: true): beta (0.1 -> 0.2)" in printed
    assert json.loads((out / "fspo" / "summary.json").read_text())["resumed_from_step"] == 2
    assert json.loads((out / "summary.json").read_text())["params"]["beta"] == 0.2


def test_preflab_train_runs_the_recipe_and_refuses_bad_rows(tmp_path):
    rows = toy_user_rows(2, 3, seed=1)
    data = tmp_path / "users.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "fspo.yaml"
    params = {**TINY, "data_file": str(data), "heldout_users": ["loud-1", "quiet-1"], "baseline": False}
    del params["users_per_group"], params["rows_per_user"], params["heldout_fraction"]
    cfg.write_text(json.dumps({"task": "fspo", "output_dir": str(tmp_path / "run"), "recipe_params": params}))
    assert main(["train", str(cfg)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["heldout_users"] == ["loud-1", "quiet-1"] and summary["heldout_episodes"] == 6
    assert summary["train_pairs"] == 6
    bad = [dict(r) for r in rows]
    del bad[4]["user_id"]
    data.write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(DataError, match=r"users\.jsonl row 4 \(line 5\), field 'user_id': missing") as err:
        read_user_rows(data)
    assert "on_bad_row" not in str(err.value)  # the recipe has no such option to offer
    bad[4] = {**rows[4], "user_id": None}
    data.write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(DataError, match=r"users\.jsonl row 4 \(line 5\), field 'user_id': null\. Each row needs a "
                                        r"value there"):
        read_user_rows(data)
    bad[4] = {**rows[4], "rejected": rows[4]["chosen"]}
    data.write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(DataError, match=r"users\.jsonl row 4 \(line 5\), field 'rejected': identical"):
        read_user_rows(data)
    data.write_text('{"user_id": "a"\n')
    with pytest.raises(DataError, match=r"users\.jsonl row 0 \(line 1\): the line is not valid JSON"):
        read_user_rows(data)
    data.write_text('{"user_id": "a", "user_id": "b", "prompt": "p", "chosen": "x", "rejected": "y"}\n')
    with pytest.raises(DataError, match=r"users\.jsonl row 0 \(line 1\), field 'user_id': the object has the key"):
        read_user_rows(data)  # the json module would keep "b" silently
    with pytest.raises(DataError, match=r"recipe_params\.data_file: .* is not a file"):
        read_user_rows(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match=r"heldout_users \['nobody'\] are not user_ids"):
        split_users(rows, ["nobody"], 0.5)
    with pytest.raises(ConfigError, match="shots >= 0"):
        episode_rows(rows, shots=-1, passes=1, seed=0)


def test_user_rows_are_read_line_by_line_as_every_jsonl_reader_reads_them(tmp_path):
    """A byte-order mark, a line separator (U+2028) inside a prompt and blank lines: the rows as written (the old
    reader split text lines on U+2028 and refused the BOM); a bad UTF-8 line is a DataError naming row and line."""
    rows = toy_user_rows(1, 2, seed=0)
    rows[1]["prompt"] += "\u2028and on"
    data = tmp_path / "users.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    data.write_bytes(b"\xef\xbb\xbf" + "\n\n".join(lines).encode() + b"\n\n")
    assert read_user_rows(data) == rows
    data.write_bytes(("\n".join(lines[:3]) + "\n\n").encode() + b'{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=r"users\.jsonl row 3 \(line 5\): the line is not valid UTF-8"):
        read_user_rows(data)


def test_response_logps_are_the_scorers_sums_over_the_response_tokens():
    """response_logps (the held-out metric's scores) = sum of log pi(response token | prompt, earlier tokens), as the
    training scorer has it on BOS + prompt + response; rows of other lengths in one padded batch."""
    from preflab.data.layout import padded
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.reward_models.fspo import response_logps
    from preflab.scoring.lm import naive_token_logps

    tok = tiny_tokenizer("char")
    model = tiny_causal_lm(tok, arch="llama", hidden_size=32, num_layers=1, num_heads=4, seed=3)
    prompts, responses = ["echo: sun cat", "echo: a"], [" SUN CAT", " a b c d"]
    got = response_logps(model, tok, prompts, responses)
    for k, (p, r) in enumerate(zip(prompts, responses)):
        prompt_ids = [tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]
        response_ids = tok(r, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            want = naive_token_logps(model, padded([(prompt_ids, response_ids)], tok.pad_token_id)).sum()
        assert got[k].item() == pytest.approx(want.item(), abs=1e-5)
