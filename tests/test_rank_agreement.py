"""A failed write on one rank stops every rank with the same error, at once (user trial 16; preflab.rank_agreement):
sharded_checkpoint.save_rank_checkpoint, recipe_state.main_writes and scoring.ref_cache.reference_cache waited at a
barrier after each rank wrote its part, so when rank 1's write raised (a full disk), rank 0 waited there until the
launcher killed it, saying nothing. Two gloo processes on the CPU (started by hand, not through a launcher, which
would kill the other rank as soon as one fails, so each rank's own exit and message are seen)."""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import preflab
from preflab.errors import PreflabError
from preflab.rank_agreement import RankFailure, error_text, failed_ranks, ranks_agree

ROOT = Path(__file__).resolve().parents[1]
# the preflab this test imported (benchmarks/mutation.py's mutated copy included), then the caller's path
SOURCE = os.pathsep.join([str(Path(preflab.__file__).parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])


# the scenarios of the tests that read only their own: when every selected test of this module is one of them (a
# mutant's selection), the launch runs those scenarios alone, with a shorter limit (a hang waits for it)
SCENARIOS_OF_TEST = {"test_a_failed_hub_repository_creation_stops_both_ranks_before_the_first_step": ["ddp_hub"],
                     **{f"test_an_online_main_only_call_that_raises_stops_both_ranks_with_the_mains_error[{name}]":
                        [name] for name in ("online_tool", "online_judge", "online_reset", "online_refusal")},
                     **{f"test_a_reward_function_that_fails_on_one_rank_stops_both_ranks_with_its_error[{rank}]":
                        [f"online_reward_rank{rank}"] for rank in (0, 1)},
                     "test_a_pair_builder_that_fails_on_rank_1_stops_both_ranks_with_its_error": ["online_builder_rank1"],
                     "test_a_judge_timeout_on_the_main_in_an_evaluation_stops_both_ranks_with_its_error":
                         ["online_eval_main"],
                     "test_an_evaluation_is_judged_on_the_main_alone_and_its_judge_failures_counted_on_both_ranks":
                         ["online_eval_failing"],
                     **{f"test_a_tool_loop_failure_on_rank_1_stops_both_ranks_with_its_error[{stretch}]":
                        [f"online_tool_loop_{stretch}_rank1"] for stretch in ("first", "continue")},
                     "test_a_tool_rollout_failure_on_rank_1_stops_both_ranks_with_its_error":
                         ["online_tool_rollouts_rank1"],
                     "test_an_mcts_judge_timeout_on_the_main_mid_round_stops_both_ranks_with_its_error":
                         ["mcts_stuck_main"],
                     "test_an_mcts_judge_failing_on_rank_1_alone_no_longer_touches_the_round": ["mcts_failing_rank1"]}


@pytest.fixture(scope="module")
def two_ranks(request, tmp_path_factory):
    """{(scenario, rank): its JSON line} of tests/rank_agreement_run.py on 2 gloo processes, and the wall seconds
    the pair took. Every scenario, unless each selected test is in SCENARIOS_OF_TEST: then theirs alone."""
    import socket

    selected = [item.name for item in request.session.items
                if item.module is request.module and "two_ranks" in item.fixturenames]
    only = sorted({s for name in selected for s in SCENARIOS_OF_TEST.get(name, ())}) \
        if all(name in SCENARIOS_OF_TEST for name in selected) else []

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path_factory.mktemp("ranks")
    procs = []
    started = time.perf_counter()
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SOURCE, "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "TORCH_GLOO_TIMEOUT": "300"}
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "rank_agreement_run.py"), str(out),
                                       *([",".join(only)] if only else [])],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    try:
        for rank, proc in enumerate(procs):
            stdout, stderr = proc.communicate(timeout=120 if only else 240)
            assert proc.returncode == 0, f"rank {rank}: {stderr[-3000:]}"
            for line in stdout.splitlines():
                if not line.startswith("{"):  # the DPO runs' own notes
                    continue
                row = json.loads(line)
                results[(row["scenario"], row["rank"])] = row
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return out, results, time.perf_counter() - started


def test_a_save_whose_every_part_is_written_commits_on_two_ranks(two_ranks):
    out, results, _ = two_ranks
    assert results[("sharded_ok", 0)]["error"] is None and results[("sharded_ok", 1)]["error"] is None
    names = {p.name for p in (out / "checkpoint-1").iterdir()}
    assert {"part-rank0.safetensors", "part-rank1.safetensors", "rng-rank0.safetensors", "rng-rank1.safetensors",
            "trainer_state.json", "COMPLETE"} <= names


def test_rank_1s_failed_part_stops_both_ranks_with_the_same_error_naming_rank_and_file(two_ranks):
    """Rank 1's part fails (a full disk): rank 0 does not wait at a barrier; both raise the same PreflabError naming
    rank 1 and its file, the half-written folder is removed, checkpoint-1 is kept and named, no checkpoint-2."""
    out, results, _ = two_ranks
    tmp = out / ".tmp-checkpoint-2-sharded"
    expected = (f"PreflabError: could not write sharded checkpoint {out / 'checkpoint-2'}: rank 1 failed: [Errno 28] "
                f"No space left on device: '{tmp / 'part-rank1.safetensors'}'. Earlier checkpoints are kept (the "
                f"latest: {out / 'checkpoint-1'}); free disk space or fix the permissions of output_dir (every rank "
                "writes into it: it must be one shared folder), then resume.")
    assert results[("sharded_rank1", 0)]["error"] == expected
    assert results[("sharded_rank1", 1)]["error"] == expected
    assert not tmp.exists() and not (out / "checkpoint-2").exists() and (out / "checkpoint-1" / "COMPLETE").exists()
    assert results[("sharded_rank1", 0)]["seconds"] < 20  # the gloo timeout is 300 s: nobody waited for it


def test_the_main_processs_failed_write_stops_the_other_rank_too(two_ranks):
    out, results, _ = two_ranks
    expected = ("RankFailure: the main process could not write the recipe's files: rank 0 failed: [Errno 28] No "
                f"space left on device: '{out / 'summary.json'}'")
    assert results[("main_writes", 0)]["error"] == expected and results[("main_writes", 1)]["error"] == expected
    assert results[("main_writes", 1)]["seconds"] < 20


def test_a_failed_reference_cache_write_stops_both_ranks_naming_the_file(two_ranks):
    out, results, _ = two_ranks
    cache = out / "blocked" / "cache" / f"ref-logps-{'k' * 32}.safetensors"
    for rank in (0, 1):
        error = results[("ref_cache", rank)]["error"]
        assert error.startswith(f"RankFailure: could not write the reference log-prob cache {cache}: rank 0 failed: "
                                "[Errno 20] Not a directory") or error.startswith(
            f"RankFailure: could not write the reference log-prob cache {cache}: rank 0 failed: [Errno 17] File "
            "exists"), error
        assert str(out / "blocked") in error
    assert results[("ref_cache", 1)]["seconds"] < 20


def test_the_main_processs_failed_ddp_checkpoint_stops_both_ranks_at_once_and_keeps_checkpoint_1(two_ranks):
    """DDP: the main process writes checkpoint-<step> alone (preflab.checkpoint.save_checkpoint); its write of
    checkpoint-2's model fails (a full disk). Before, the main left with its error and rank 1 waited at the step's
    barrier until the launcher killed it. Now the save is agreed in place of that barrier (loops.driver._save_agreed):
    both ranks raise the main's error (the checkpoint, what is kept) within seconds of the failure, the .tmp folder
    is removed and checkpoint-1 is whole (its COMPLETE sizes and sha256 verify)."""
    from preflab.checkpoint import verify_checkpoint

    out, results, _ = two_ranks
    run = out / "ddp"
    expected = (f"RankFailure: the save at step 2 failed: rank 0 failed: could not write checkpoint {run / 'checkpoint-2'}:"
                f" No space left on device. Earlier checkpoints are kept (the latest: {run / 'checkpoint-1'}); free "
                "disk space or fix the permissions of output_dir, then resume.")
    assert results[("ddp_checkpoint", 0)]["error"] == expected and results[("ddp_checkpoint", 1)]["error"] == expected
    assert results[("ddp_checkpoint", 1)]["ended"] - results[("ddp_checkpoint", 0)]["failed_at"] < 20
    assert sorted(p.name for p in run.glob("*checkpoint-*")) == ["checkpoint-1"]
    verify_checkpoint(run / "checkpoint-1")


def test_the_main_processs_failed_cleanup_of_all_but_the_best_checkpoint_stops_both_ranks(two_ranks):
    """load_best_model_at_end with save_total_limit 1: the main process removes the checkpoints other than the best
    after every rank loaded it; that removal is agreed (loops.driver._load_best_at_end), so its failure stops rank 1
    too, with the main's error as train() says it."""
    out, results, _ = two_ranks
    run = out / "best"
    expected = ("RankFailure: the main process could not keep only the best checkpoint: rank 0 failed: "
                f"{run / 'checkpoint-1'}: Permission denied. The latest finished checkpoint is {run / 'checkpoint-1'} "
                "(step 1); the steps after it are lost. Set resume_from_checkpoint: true to continue from it. Free "
                "disk space or fix the folder's permissions, then run again.")
    assert results[("ddp_best", 0)]["error"] == expected and results[("ddp_best", 1)]["error"] == expected
    assert results[("ddp_best", 1)]["ended"] - results[("ddp_best", 0)]["failed_at"] < 20


def test_the_main_processs_failed_final_write_stops_the_other_rank_before_train_returns(two_ranks):
    """The end of train(): rank 1 returned from train() while the main process wrote the final model and
    summary.json, so a failed write stopped the main alone (a recipe's next stage or a script's next collective on
    rank 1 then waited for it). Now rank 1 waits for the main's final files (loops.driver._finish), and both raise the
    main's error as train() says it (the file, what output_dir keeps)."""
    out, results, _ = two_ranks
    run = out / "final"
    expected = ("RankFailure: the main process could not write the final model and summary.json: rank 0 failed: "
                f"{run / 'summary.json'}: No space left on device. The latest finished checkpoint is "
                f"{run / 'checkpoint-1'} (step 1); the steps after it are lost. Set resume_from_checkpoint: true to "
                "continue from it. Free disk space or fix the folder's permissions, then run again.")
    assert results[("ddp_final", 0)]["error"] == expected and results[("ddp_final", 1)]["error"] == expected
    assert results[("ddp_final", 1)]["ended"] - results[("ddp_final", 0)]["failed_at"] < 20


def _failed_write(run: Path, file: Path, reason: str) -> str:
    """What train() says of a failed write of `file` (TrainingRun._failed_write) in output_dir `run`."""
    from preflab.checkpoint import what_is_kept

    return (f"{file}: {reason}. {what_is_kept(run)} Free disk space or fix the folder's permissions, then run "
            "again.")


def _same_error_at_once(results, scenario: str, expected: str) -> None:
    """Both ranks raised `expected`; rank 1 ended within seconds of the main's failure (the gloo timeout is 300 s)."""
    assert results[(scenario, 0)]["error"] == expected
    assert results[(scenario, 1)]["error"] == expected
    if results[(scenario, 0)]["failed_at"] is not None:
        assert results[(scenario, 1)]["ended"] - results[(scenario, 0)]["failed_at"] < 20
    assert results[(scenario, 1)]["seconds"] < 60


def test_an_output_dir_the_main_process_refuses_stops_both_ranks_before_the_model_loads(two_ranks):
    """The main process alone claims output_dir (loops.launch.make_accelerator); its refusal stopped it alone, and
    rank 1 loaded the model and waited in DDP's first broadcast. Now the claim is agreed: both raise the refusal."""
    out, results, _ = two_ranks
    run = out / "taken"
    expected = (f"RankFailure: the main process could not take output_dir {run}: rank 0 failed: output_dir "
                f"'{run}' is not empty and is not a preflab run (it holds notes.txt); a run writes README.md, "
                "config.yaml and model files there. Choose a new or empty folder, or set overwrite_output_dir: true "
                "to write into it anyway.")
    _same_error_at_once(results, "ddp_claim", expected)


def test_the_main_processs_failed_config_yaml_at_the_start_stops_both_ranks(two_ranks):
    """config.yaml is a folder: the main's write of it at the start fails (Is a directory). Before, rank 1 went on
    into the first step's collectives; now the start's writes are agreed (TrainingRun._begin) and no step runs."""
    out, results, _ = two_ranks
    run = out / "config"
    expected = ("RankFailure: the main process could not write config.yaml, metric_panels.json and metrics.jsonl: "
                f"rank 0 failed: {_failed_write(run, run / 'config.yaml', 'Is a directory')}")
    _same_error_at_once(results, "ddp_config", expected)
    assert not (run / "metrics.jsonl").exists()


def test_a_failed_metrics_row_on_a_step_without_a_save_stops_both_ranks_at_that_step(two_ranks):
    """Step 2's metrics.jsonl row fails on the main (a full disk) in a run without checkpoints: the failure is held
    on the main and agreed at the step's end, where the step's barrier stood (TrainingRun.main_writes,
    _agree_on_held_writes): both ranks raise it naming metrics.jsonl, and step 3 never runs (its row is absent)."""
    out, results, _ = two_ranks
    run = out / "metrics"
    expected = ("RankFailure: the main process could not write the run's files at step 2: rank 0 failed: "
                f"{_failed_write(run, run / 'metrics.jsonl', 'No space left on device')}")
    _same_error_at_once(results, "ddp_metrics", expected)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1]


def test_a_failed_pair_margins_write_at_the_final_evaluation_stops_both_ranks_before_the_final_files(two_ranks):
    """The final evaluation (eval_steps 0: after the last step) appends the eval pairs' margins to
    pair_margins.jsonl on the main alone (loops.offline.Trainer.evaluate); its failure is held and agreed right after
    that evaluation: both ranks raise it, and no summary.json is written."""
    out, results, _ = two_ranks
    run = out / "margins"
    assert not (run / "summary.json").exists()
    expected = ("RankFailure: the main process could not write the run's files at the final evaluation: rank 0 "
                "failed: "
                f"{_failed_write(run, run / 'pair_margins.jsonl', 'Permission denied')}")
    _same_error_at_once(results, "ddp_margins", expected)


def test_a_failed_online_round_file_stops_both_ranks_at_the_rounds_first_step(two_ranks):
    """An online run's main process writes rounds/<r>.jsonl alone while the round is built (online.run.OnlineRun);
    its failure (a full disk) is held and agreed at step 1's end: both ranks raise it naming the file."""
    out, results, _ = two_ranks
    run = out / "round"
    expected = ("RankFailure: the main process could not write the run's files at step 1: rank 0 failed: "
                f"{_failed_write(run, run / 'rounds' / '1.jsonl', 'No space left on device')}")
    _same_error_at_once(results, "online_round", expected)


def test_a_failed_online_state_write_stops_both_ranks_at_the_save(two_ranks):
    """The online state beside checkpoint-1 fails on the main. It was written before the ranks gathered their RNG
    states for the checkpoint, so the main went into the save's agreement and rank 1 into the gathering; now it is
    written after that collective (TrainingRun.beside_checkpoint): both ranks raise the main's error, and no
    checkpoint-1 is committed."""
    out, results, _ = two_ranks
    run = out / "state"
    expected = (f"RankFailure: the save at step 1 failed: rank 0 failed: could not write the online state "
                f"{run / 'online-state' / 'step-1'} of checkpoint-1: No space left on device. Earlier checkpoints "
                "are kept; free disk space or fix the permissions of output_dir, then resume.")
    _same_error_at_once(results, "online_state", expected)
    assert not (run / "checkpoint-1").exists() and not list((run / "online-state").glob("*"))


def test_preflab_eval_of_a_two_process_reward_run_uses_its_two_process_eval_batch(two_ranks, capsys):
    """A BT reward run on 2 processes evaluates its 10 eval pairs in batches of per_device_eval_batch_size x 2 = 4
    for eval_min_reward / eval_max_reward (TRL gathers each eval batch from every process). `preflab eval RUN` reads
    the 2 processes from summary.json and scores in batches of 4: every metric equals the run's final eval_*, and
    the note says 2 x 2 processes. A batch of 2 (the per-device size alone) gives another min_reward."""
    from preflab.cli import main

    out, results, _ = two_ranks
    assert results[("reward_ok", 0)]["error"] is None and results[("reward_ok", 1)]["error"] is None
    run, heldout = out / "reward" / "run", out / "reward" / "heldout.jsonl"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["environment"]["world_size"] == 2
    final = summary["final_metrics"]
    assert main(["eval", str(run), "--data", str(heldout), "--out", str(out / "reward" / "eval.json")]) == 0
    got = json.loads((out / "reward" / "eval.json").read_text())
    assert got["num_pairs"] == 10
    for key in ("accuracy", "loss", "margin", "min_reward", "mean_reward", "max_reward"):
        assert got["metrics"][f"reward_model/{key}"] == pytest.approx(final[f"eval_{key}"], abs=1e-6), key
    assert any("batch of 4 pairs, the run's eval batch (per_device_eval_batch_size 2 x 2 processes)" in note
               for note in got["notes"])
    assert main(["eval", str(run), "--data", str(heldout), "--batch-size", "2",
                 "--out", str(out / "reward" / "eval2.json")]) == 0
    per_device = json.loads((out / "reward" / "eval2.json").read_text())["metrics"]
    assert per_device["reward_model/min_reward"] != pytest.approx(final["eval_min_reward"], abs=1e-4)
    capsys.readouterr()


def test_a_failed_hub_repository_creation_stops_both_ranks_before_the_first_step(two_ranks):
    """push_to_hub: the main process alone creates the Hub repository at the start of train(); a 401 stopped it
    alone, and rank 1 went on and waited for it. Now the creation is agreed (TrainingRun._agreed, only when
    push_to_hub is set): both ranks raise the main's error within seconds, and no step ran (no metrics.jsonl)."""
    out, results, _ = two_ranks
    expected = ("RankFailure: the main process could not start push_to_hub: rank 0 failed: push_to_hub: could not "
                "create the Hub repository 'org/name': 401 Unauthorized. Nothing was trained yet. Check the token "
                "(hub_token, HF_TOKEN or `hf auth login`, with write access) and hub_model_id, or set push_to_hub: "
                "false and upload output_dir afterwards with `hf upload`.")
    _same_error_at_once(results, "ddp_hub", expected)
    assert not (out / "hub" / "metrics.jsonl").exists()


@pytest.mark.parametrize("scenario, expected", [
    ("online_tool", "RankFailure: the main process's tool calls failed: rank 0 failed: RuntimeError: lookup's result "
                    "has no text: the catalogue server sent a bad record"),
    ("online_judge", "RankFailure: environment_factory: the main process's judges failed: rank 0 failed: "
                     "RuntimeError: the weighting service returned 503"),
    ("online_reset", "RankFailure: environment_factory: the main process's resets failed: rank 0 failed: KeyError: "
                     "'target'"),
    ("online_refusal", "ConfigError: prompt row 0: Counter.reset raised ValueError: no target in this row (it is "
                       "called with the row's fields as keywords: ['prompt']; give it **kwargs for the ones it does "
                       "not read)."),
])
def test_an_online_main_only_call_that_raises_stops_both_ranks_with_the_mains_error(two_ranks, scenario, expected):
    """An online run's main-only calls (tool calls, the environments' resets and judging) send their result to the
    other rank in one broadcast; only a ConfigError (a PreflabError for the judges) travelled in it, so any other
    error (a user's RuntimeError, a KeyError) stopped the main alone and rank 1 waited in the broadcast until the
    gloo timeout. Now any error is sent in the result's place (rank_agreement.main_result): both ranks raise the
    main's error (type and message, where: tool calls, resets or judges) at once; a refusal stays a ConfigError
    with its own text (the row it names)."""
    _, results, _ = two_ranks
    _same_error_at_once(results, scenario, expected)
    assert results[(scenario, 1)]["seconds"] < 10


@pytest.mark.parametrize("rank", [0, 1])
def test_a_reward_function_that_fails_on_one_rank_stops_both_ranks_with_its_error(two_ranks, rank):
    """Without environments every rank judges the whole round itself. A reward function that raises on one rank only
    drops all 12 completions there, past max_judge_failure_fraction: that rank raised alone and the other went on
    into the step's collectives and waited there until the gloo timeout (300 s here). Now the round's judging is
    agreed (OnlineRun._round_agreement: one all-reduce per round): both ranks raise the failing rank's error, naming
    that rank and the judge's own exception, within seconds; the other rank's judging, which succeeded, is no
    failure in it."""
    _, results, _ = two_ranks
    scenario = f"online_reward_rank{rank}"
    expected = (f"RankFailure: round 1: judging the completions or building the examples failed: rank {rank} failed: "
                "round 1: 12 of 12 completions could not be scored (more than max_judge_failure_fraction = 0.1): 12 "
                "because a judge raised, 0 because every judge returned None or NaN (not applicable) for them; "
                "judge/failed counts exceptions (12 so far). The first failure: judge 'graded' raised RuntimeError: "
                "the grading server refused the request (503). Fix the judge (a reward function returns one number "
                "per completion), or raise max_judge_failure_fraction to train on the scored ones.")
    _same_error_at_once(results, scenario, expected)
    assert max(results[(scenario, r)]["seconds"] for r in (0, 1)) < 30  # a hang waits for the 300 s gloo timeout


def test_a_pair_builder_that_fails_on_rank_1_stops_both_ranks_with_its_error(two_ranks):
    """A user's pair_builder runs on every rank in the same agreed block as the judges (OnlineRun._judge_and_build):
    raising on rank 1 alone, it stops rank 0 too, with rank 1's refusal (the builder, its line, the error)."""
    out, results, _ = two_ranks
    builder = out / "builder" / "builder.py"
    expected = (f"RankFailure: round 1: judging the completions or building the examples failed: rank 1 failed: "
                f"pair_builder '{builder}:pairs' raised at {builder} line 6: KeyError: 'ranking table' in round 1 "
                "(optimizer step 1) (called as f(scores, generator) with scores of shape (4, 3)). Fix the builder.")
    _same_error_at_once(results, "online_builder_rank1", expected)
    assert max(results[("online_builder_rank1", r)]["seconds"] for r in (0, 1)) < 30


def _judge_timeout(where: str) -> str:
    """What JudgeTimeoutError says of rank_agreement_run.py's reward function `graded` stuck on 2 completions at
    `where` under judge_timeout_s 3 (loops.judge.Judge._timeout_error)."""
    return (f"judge 'graded' ({ROOT / 'tests' / 'rank_agreement_run.py'}) did not return within judge_timeout_s = 3 s "
            f"in {where} (one call on 2 completion(s)); the run stops (the call is abandoned in a background thread: "
            "Python cannot stop it). Fix the judge so that it returns (a reward function that waits on a server, a "
            "lock or a subprocess needs its own timeout), or raise judge_timeout_s (null: no limit) if a call this "
            "long is expected.")


def _timed_out_together(results, scenario: str, expected: str) -> None:
    """Both ranks raised RankFailure `expected` (_same_error_at_once) and ended within 10 s of each other (a judge
    timeout has no failed_at: the stuck rank's 3 s wait is part of it)."""
    _same_error_at_once(results, scenario, f"RankFailure: {expected}")
    assert abs(results[(scenario, 0)]["ended"] - results[(scenario, 1)]["ended"]) < 10


def test_a_judge_timeout_on_the_main_in_an_evaluation_stops_both_ranks_with_its_error(two_ranks):
    """Only the main process judges the held-out answers (online.tasks.dataset_evaluate: main_result), so a reward
    function that never returns there in step 1's evaluation raises JudgeTimeoutError on the main, which sends it in
    the scores' place: both ranks raise it, naming the main, the evaluation's step and the judge, within seconds of
    each other (before, every rank judged, and a timeout on one rank stopped that rank alone while the other went on
    into step 2's collectives and waited there until the gloo timeout); the run built (the starting policy's
    evaluation passed) and took step 1, and no step 2 ran."""
    out, results, _ = two_ranks
    _timed_out_together(results, "online_eval_main", "the evaluation at step 1 of the held-out prompts failed: the "
                        "main process's judging of the held-out answers failed: rank 0 failed: "
                        + _judge_timeout("the evaluation of the held-out prompts (eval_dataset_name / eval_fraction)"))
    rows = [json.loads(line) for line in (out / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1]  # step 1's training row; its evaluation's and step 2's never came


def test_an_evaluation_is_judged_on_the_main_alone_and_its_judge_failures_counted_on_both_ranks(two_ranks):
    """A reward function that raises at every call on rank 1 and, on the main, on the answer to one of the 2 held-out
    prompts: rank 1 judges nothing (each rank judged every held-out answer itself before, so rank 1's evaluation
    dropped every answer and disagreed with the main's), so the run ends on both ranks; both hold the main's
    evaluation (the same reward, per-prompt rewards and counts: one answer a judge raised on, with its error), and
    every evaluation row logs eval_judge/failed 1."""
    out, results, _ = two_ranks
    assert results[("online_eval_failing", 0)]["error"] is None and results[("online_eval_failing", 1)]["error"] is None
    folder = out / "eval_failing"
    main, other = ((folder / f"after-rank{rank}.json").read_text() for rank in (0, 1))
    assert main == other
    after = json.loads(main)
    assert (after["judge_failed"], after["unscored"]) == (1, 1) and math.isnan(after["per_prompt"][1])
    assert after["judge_failure"] == ("The first failure: judge 'graded' raised RuntimeError: the grading server has "
                                      "no rubric for this prompt.")
    assert after["reward"] == after["per_prompt"][0]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row["eval_judge/failed"] for row in rows if "eval_reward" in row] == [1.0, 1.0]


@pytest.mark.parametrize("stretch, where", [("first", "sampling and parsing the first turns"),
                                            ("continue", "sampling and parsing iteration 1's continuations")])
def test_a_tool_loop_failure_on_rank_1_stops_both_ranks_with_its_error(two_ranks, stretch, where):
    """The tool-calling loop's stretches that each process runs on its own (sampling and parsing its turns) end in an
    agreement (ToolCallingGenerator._agreed): turns that raise on rank 1 alone (an out-of-memory sample on its
    device), before the first exchange of tool calls or in the continuation after it, stop both ranks with rank 1's
    error, naming the stretch, within seconds. Before, rank 1 left with its error while the main waited in the tool
    calls' broadcast (or, past it, went on alone into the next collectives)."""
    _, results, _ = two_ranks
    scenario = f"online_tool_loop_{stretch}_rank1"
    _same_error_at_once(results, scenario, f"RankFailure: the tool-calling loop failed while {where}: rank 1 failed: "
                        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB on device 1")
    assert max(results[(scenario, r)]["seconds"] for r in (0, 1)) < 10


def test_a_tool_rollout_failure_on_rank_1_stops_both_ranks_with_its_error(two_ranks):
    """OTC's calculator rollouts (online.tool_rollout.ToolRolloutGenerator) are sampled by every process on its own;
    a sample that raises on rank 1 alone stops both ranks with rank 1's error (its generate ends in an agreement),
    where rank 0 used to return its rollouts and go on alone into the round's next collective."""
    _, results, _ = two_ranks
    _same_error_at_once(results, "online_tool_rollouts_rank1", "RankFailure: the tool rollouts failed: rank 1 failed: "
                        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB on device 1")


def test_an_mcts_judge_timeout_on_the_main_mid_round_stops_both_ranks_with_its_error(two_ranks):
    """MCTS-DPO's searches run in step on every rank (each expansion's generation is sharded and gathered), with a
    judge call per expansion in between. Each rank judged itself, so a timeout on one rank was raised there alone,
    mid-round, while the other went on into the next collective. Now the main process judges and sends the scores or
    its failure (mcts.Search._judged, rank_agreement.main_result): its timeout at the second prompt's search stops
    both ranks with the main's error (naming the judge, the round and the limit) within seconds of each other."""
    _, results, _ = two_ranks
    _timed_out_together(results, "mcts_stuck_main", "the main process's judging of the MCTS rollouts failed: rank 0 "
                        "failed: " + _judge_timeout("round 1 (optimizer step 1)"))


def test_an_mcts_judge_failing_on_rank_1_alone_no_longer_touches_the_round(two_ranks):
    """A judge that raises at every call on rank 1 alone dropped every child there (NaN scores): rank 1 grew other
    trees than rank 0 (its expansions no longer matched rank 0's gathers) and stopped the round past
    max_judge_failure_fraction. Only the main process judges now (one judgement, the same tree on every rank): the
    run ends on both ranks, and its round logged the main's scores with nothing dropped."""
    out, results, _ = two_ranks
    assert results[("mcts_failing_rank1", 0)]["error"] is None and results[("mcts_failing_rank1", 1)]["error"] is None
    row = json.loads((out / "mcts_failing" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["judge/dropped"] == 0.0 and row["examples/count"] >= 1
    assert json.loads((out / "mcts_failing" / "summary.json").read_text())["judge"]["judge/failed"] == 0.0


def test_the_two_ranks_finish_well_before_any_timeout(two_ranks):
    _, results, wall = two_ranks
    assert len(results) == 58
    assert wall < 230  # process start and imports included (2 shared cores); a hang waits for the 240 s limit


def test_one_process_raises_the_blocks_own_error_unchanged():
    """Without a process group there is nobody to tell: the block's error is raised as it is, and a block that
    does not fail passes through; failed_ranks is this process alone."""
    err = OSError(28, "No space left on device", "/x/model.safetensors")
    with pytest.raises(OSError) as caught:
        with ranks_agree("writing"):
            raise err
    assert caught.value is err
    with ranks_agree("writing"):
        pass
    assert failed_ranks(True) == [0] and failed_ranks(False) == []


def test_a_rank_failure_names_each_failed_rank_in_order():
    failure = RankFailure("could not write X", {3: "boom", 1: error_text(OSError(28, "No space left on device", "f"))})
    assert isinstance(failure, PreflabError)
    assert str(failure) == ("could not write X: rank 1 failed: [Errno 28] No space left on device: 'f'; rank 3 failed:"
                            " boom")
    assert error_text(ValueError("bad")) == "ValueError: bad"


def test_main_result_on_one_process_is_the_computation_with_its_own_error():
    """Without several processes main_result is compute() itself: its value, and its error unchanged (no
    RankFailure, no ConfigError made of a RuntimeError)."""
    from types import SimpleNamespace

    from preflab.rank_agreement import main_result

    err = RuntimeError("the weighting service returned 503")

    def broken():
        raise err

    for accelerator in (None, SimpleNamespace(num_processes=1, is_main_process=True)):
        assert main_result(lambda: {"answers": 3}, accelerator, "x") == {"answers": 3}
        with pytest.raises(RuntimeError) as caught:
            main_result(broken, accelerator, "x")
        assert caught.value is err
