"""The run plumbing's rules, one value each (the mutation-plumbing round's survivors): what metrics.jsonl keeps on a
resume, the model card's count of skipped rows, output_dir's refusals and lock, a recipe's state file, the unpaired
batch's label counts, the data preparation's refusals and notes, recipe_params' types, the ToolBox's schema and
cache, `preflab eval`'s option checks and the `preflab` command's parsing, hints and exit codes. No model is
trained: each takes well under a second past its imports (the recipe_params one imports the recipes' modules)."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from preflab.errors import ConfigError, DataError


# runlog.py: metrics.jsonl on resume / fresh start, the card's data line

def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_resume_keeps_every_appended_files_rows_up_to_and_with_the_resume_step(tmp_path):
    from preflab.runlog import MetricsLog

    for name in ("metrics.jsonl", "pair_margins.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps({"step": s, "v": s}) + "\n" for s in (1, 2, 3, 4))
                                     + '{"step": 5, "v"')  # a line torn by the kill
    log = MetricsLog(tmp_path, resume_step=2)
    for name in ("metrics.jsonl", "pair_margins.jsonl"):
        assert [r["step"] for r in _rows(tmp_path / name)] == [1, 2], name
    log.write({"step": 3, "loss": float("nan"), "reward": float("inf"), "acc": 0.5})
    assert _rows(tmp_path / "metrics.jsonl")[-1] == {"step": 3, "loss": None, "reward": None, "acc": 0.5}
    MetricsLog(tmp_path, resume_step=None)  # a fresh start: nothing of the old run is appended to
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "pair_margins.jsonl").exists()


def _step(loss, n, grad_norm, skipped=False, overflow=False, **metrics):
    return SimpleNamespace(loss=loss, num_examples=n, grad_norm=grad_norm, skipped=skipped, overflow=overflow,
                           metrics=metrics, metric_counts={}, metric_differences={})


def test_a_logging_windows_loss_is_the_mean_over_its_examples_without_skipped_or_overflow_steps():
    """loss = sum(loss_s * n_s) / sum(n_s) over the kept steps (1 * 1 + 4 * 3) / 4 = 3.25; grad_norm is the last kept
    step's; an fp16-overflow step and a non-finite (skipped) step changed no weight and are left out."""
    from preflab.runlog import average_results

    window = [_step(1.0, 1, 0.5, acc=1.0), _step(4.0, 3, 0.7, acc=0.0),
              _step(100.0, 5, 9.0, overflow=True, acc=1.0), _step(float("nan"), 2, 8.0, skipped=True)]
    assert average_results(window) == {"loss": 3.25, "grad_norm": 0.7, "acc": 0.25}
    assert average_results(window[2:])["loss"] != average_results(window[2:])["loss"]  # nothing kept: nan


def test_the_cards_skipped_line_counts_training_rows_only_and_both_truncated_sides():
    from preflab.runlog import training_data_line

    data = {"train_rows": {"skipped": {"missing_field": 2}},
            "train_tokenize": {"skipped": {"prompt_fills_max_length": 3, "missing_field": 1},
                               "prompt_truncated": 4, "response_truncated": 5},
            "eval_rows": {"skipped": {"missing_field": 7}},
            "eval_tokenize": {"skipped": {"prompt_fills_max_length": 9}, "response_truncated": 11},
            "skipped": {"missing_field": 3, "prompt_fills_max_length": 3}}
    assert training_data_line(data) == ("6 (missing_field: 3, prompt_fills_max_length: 3); "
                                        "truncated: prompt 4, response 5")
    assert training_data_line({"eval_rows": {"skipped": {"x": 1}}}) == "none"


# rundir.py: overwrite_output_dir, the lock's owner and re-entrant claims

def test_overwrite_output_dir_lets_a_run_write_into_a_non_empty_folder(tmp_path):
    from preflab.rundir import check_output_dir

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"is not empty and is not a preflab run \(it holds notes\.txt\)"):
        check_output_dir(tmp_path)
    assert check_output_dir(tmp_path, overwrite=True) == tmp_path.resolve()


def test_a_dead_runs_lock_is_taken_over_even_when_its_pid_is_alive_again(tmp_path, capsys):
    """flock proves the holder is gone: a PID reused by another process (here our parent, alive) must not block."""
    from preflab.rundir import LOCK_FILE, acquire_lock, release_output_dir

    other = os.getppid()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": other, "host": socket.gethostname(), "started": "then"}))
    acquire_lock(tmp_path)
    try:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert f"taking over the stale lock of a run that is no longer running (PID {other}" in capsys.readouterr().err
    finally:
        release_output_dir(tmp_path)


def test_a_second_claim_in_one_process_keeps_the_lock_until_both_are_released(tmp_path):
    from preflab.rundir import claim_output_dir, holds_lock, release_output_dir

    claim_output_dir(tmp_path / "run")
    claim_output_dir(tmp_path / "run")
    release_output_dir(tmp_path / "run")
    assert holds_lock(tmp_path / "run") and (tmp_path / "run" / ".preflab.lock").exists()
    release_output_dir(tmp_path / "run")
    assert not holds_lock(tmp_path / "run") and not (tmp_path / "run" / ".preflab.lock").exists()


@pytest.mark.parametrize("failure", [PermissionError(13, "Permission denied"), KeyboardInterrupt()],
                         ids=["oserror", "interrupt"])
def test_a_claim_whose_run_marker_write_fails_releases_the_lock_and_a_second_claim_takes_it(tmp_path, monkeypatch,
                                                                                            failure):
    """claim_output_dir takes the lock, then writes .preflab-run: a failure there (a read-only file: PreflabError
    naming output_dir; an interrupt: raised as it is) releases the lock. The lock file's flock is free to another
    holder (a new open file, as another process would take it), and the next claim takes it and holds it once (one
    release frees it: no count left behind by the failed claim)."""
    import fcntl

    from preflab.errors import PreflabError
    from preflab.rundir import LOCK_FILE, RUN_MARKER, claim_output_dir, holds_lock, release_output_dir

    run = tmp_path / "run"
    real_touch = Path.touch

    def touch(self, *args, **kwargs):
        if self.name == RUN_MARKER:
            raise failure
        return real_touch(self, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", touch)
    with pytest.raises(PreflabError if isinstance(failure, OSError) else KeyboardInterrupt) as caught:
        claim_output_dir(run)
    if isinstance(failure, OSError):
        assert str(caught.value).startswith(f"output_dir {run} is not writable (Permission denied)")
    assert not holds_lock(run) and not (run / LOCK_FILE).exists()
    monkeypatch.undo()
    fd = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if the failed claim still held it
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    assert claim_output_dir(run) == run.resolve() and holds_lock(run) and (run / RUN_MARKER).is_file()
    release_output_dir(run)
    assert not holds_lock(run)


# recipe_state.py: the state file's refusals and what may change, an interrupted stage's folder

def _state(path, params, resume, **kw):
    from preflab.recipe_state import RecipeStateFile

    return RecipeStateFile(path, params, resume, every_process=False, **kw)


def test_a_recipe_state_file_is_refused_without_resume_and_checked_on_resume(tmp_path):
    path = tmp_path / "toy_state.json"
    _state(path, {"n": 1, "iterations": 2}, resume=False)
    with pytest.raises(ConfigError, match="toy_state.json exists: set resume_from_checkpoint=true"):
        _state(path, {"n": 1, "iterations": 2}, resume=False)
    with pytest.raises(ConfigError, match=r"recipe_params \['n'\] differ from the interrupted run's"):
        _state(path, {"n": 2, "iterations": 2}, resume=True)
    # a key of may_change takes the new value; the others must stay
    assert _state(path, {"n": 1, "iterations": 5}, resume=True, may_change=("iterations",)).data["params"] == \
        {"n": 1, "iterations": 5}
    with pytest.raises(ConfigError, match=r"recipe_params \['iterations'\] differ .*\(only \['iterations'\] may"
                                          r" change\)|recipe_params \['n'\] differ"):
        _state(path, {"n": 3, "iterations": 5}, resume=True, may_change=("iterations",))
    notes = []
    changed = _state(path, {"n": 4, "iterations": 2}, resume=True, allow_change=True, note=notes.append)
    assert changed.data["params"] == {"n": 4, "iterations": 2}
    assert notes == ["preflab: note: resuming with changed recipe_params (allow_config_change: true): n (1 -> 4); "
                     "the finished stages keep what they trained with."]


def test_an_interrupted_stage_that_reruns_starts_in_an_empty_folder(tmp_path):
    from preflab.recipe_state import RecipeState

    (tmp_path / "sft").mkdir(parents=True)
    (tmp_path / "sft" / "metrics.jsonl").write_text('{"step": 7}\n')  # the interrupted try's files
    seen = []
    state = RecipeState(tmp_path, "toy_state.json", {}, resume=False)
    state.stage("sft", lambda folder: seen.append(sorted(p.name for p in folder.iterdir()) if folder.exists()
                                                  else None) or {"done": 1}, load=lambda folder: None)
    assert seen == [None]
    assert json.loads((tmp_path / "toy_state.json").read_text())["stages"] == {"sft": {"done": 1}}


def test_an_interrupted_stage_without_a_finished_checkpoint_is_removed_and_starts_again(tmp_path):
    from preflab.recipe_state import resume_or_clean

    stage = tmp_path / "dpo"
    (stage / "checkpoint-2").mkdir(parents=True)  # a checkpoint the kill left without its COMPLETE marker
    (stage / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (stage / "metrics.jsonl").write_text('{"step": 1}\n')
    assert resume_or_clean(stage) is False and not stage.exists()
    assert resume_or_clean(tmp_path / "never") is False


# loops/kinds.py: the unpaired batch's label counts and token count

def test_unpaired_label_counts_are_desirable_then_undesirable_and_num_tokens_counts_the_completions_only():
    from preflab.data.tokenize import TokenizedUnpaired
    from preflab.loops.kinds import LABEL_COUNTS, UnpairedKind, unpaired_extras

    items = [TokenizedUnpaired(i, [1, 2, 3], [4] * (i + 1), label) for i, label in enumerate([True, False, False])]
    extras = unpaired_extras(items)
    assert extras[LABEL_COUNTS] == (1, 2) and extras["label"].tolist() == [True, False, False]
    assert UnpairedKind.count_tokens(items) == 3 * 3 + (1 + 2 + 3)


# online_options.py: checks and defaults the option table does not hold

ONLINE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl", "task": "online", "max_steps": 2}


def test_online_recipe_defaults_fill_what_the_config_leaves_out_and_keep_what_it_gives():
    from preflab.config import config_from_dict

    assert config_from_dict({**ONLINE, "trainer": "iterative_dpo"}).refresh_reference_every == 1
    assert config_from_dict({**ONLINE, "trainer": "iterative_dpo",
                             "refresh_reference_every": 3}).refresh_reference_every == 3
    assert config_from_dict({**ONLINE, "trainer": "online_dpo"}).refresh_reference_every == 0
    params = config_from_dict({**ONLINE, "trainer": "grpo", "objective_params": {"epsilon": 0.3}}).objective_params
    assert params["epsilon"] == 0.3 and params["loss_type"] == "grpo"


def test_one_generation_per_prompt_is_refused_outside_the_game():
    from preflab.config import config_from_dict

    with pytest.raises(ConfigError, match=r"^num_generations must be >= 2: pairs and groups compare completions of "
                                          r"one prompt\.$"):
        config_from_dict({**ONLINE, "num_generations": 1})
    assert config_from_dict({**ONLINE, "num_generations": 2}).num_generations == 2


def test_game_preferences_need_one_half_on_the_diagonal():
    from preflab.online_options import check_game_preferences

    with pytest.raises(ConfigError, match=r"game_preferences\[0\]\[0\] \+ game_preferences\[0\]\[0\] = 1\.4, not 1"):
        check_game_preferences([[0.7, 0.5], [0.5, 0.3]])
    assert check_game_preferences([[0.5, 0.8], [0.2, 0.5]]).tolist() == [[0.5, 0.8], [0.2, 0.5]]


# loops/prepare.py: two eval sets, MAPL intra rows, the one-label note

def test_eval_rows_from_python_beside_the_configs_eval_set_are_refused():
    from preflab.config import config_from_dict
    from preflab.loops.prepare import config_reading_rows

    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    base = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}
    # an eval_dataset_name beside eval rows names them (user trial 27: tests/test_user_trial_27.py)
    with pytest.raises(ConfigError, match=r"eval_data was given and the config has eval_fraction=0.25: two eval sets"):
        config_reading_rows(config_from_dict({**base, "eval_fraction": 0.25}), rows, rows)
    reading = config_reading_rows(config_from_dict(base), rows, rows)
    assert reading.dataset_name is rows and reading.eval_dataset_name is rows


def test_train_data_that_is_no_rows_is_refused_naming_what_to_pass(tmp_path):
    """user-trial-9: Trainer(cfg, train_data=...) took anything but rows for ready examples: a path failed in the
    first step ('str' object has no attribute 'row_id'), a DataFrame with KeyError: 172, a generator with "has no
    len()", and a dict of columns (or one row) was read as its 3 keys. Each is refused before any model loads,
    saying what to pass; a DatasetDict (a dict subclass) and a list of rows are still read."""
    import datasets
    import pandas as pd

    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer
    from preflab.loops.prepare import config_reading_rows

    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl",
                            "output_dir": str(tmp_path / "out")})
    given = "a datasets.Dataset or a list of row dicts"
    for data, message in (
            ("pairs.jsonl", f"train_data is a path ('pairs.jsonl'); a trainer takes rows from Python ({given}). Name "
                            "a file in the config instead: dataset_name: pairs.jsonl."),
            ({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"]},
             f"train_data is one dict (keys 'prompt', 'chosen', 'rejected'); give {given}: [row] for one row, "
             "datasets.Dataset.from_dict(columns) for a dict of columns."),
            (pd.DataFrame(rows), f"train_data is a pandas DataFrame; give {given}: datasets.Dataset.from_pandas(df) "
                                 "or df.to_dict('records')."),
            ((r for r in rows), f"train_data is an iterator (generator), which has no length; give {given} "
                                "(list(...)), or set streaming: true, which reads an iterable as the steps need it."),
            (lambda: iter(rows), "train_data is a function; only streaming: true reads one (a function that returns "
                                 f"a fresh iterable of rows each pass). Set streaming: true, or give {given}."),
            (["a", "b"], f"train_data[0] is a str ('a'), not a row; give {given} (each row a dict such as "
                         "{'prompt': ..., 'chosen': ..., 'rejected': ...})."),
            ([], "train_data is empty (no rows to train on); give the rows, or leave train_data out to read the "
                 "config's dataset_name.")):
        with pytest.raises(ConfigError) as err:
            config_reading_rows(cfg, data, None)
        assert str(err.value) == message
    with pytest.raises(ConfigError, match=r"^train_data is a path \('pairs.jsonl'\)"):  # the trainer asks it
        Trainer(cfg, train_data="pairs.jsonl")
    with pytest.raises(ConfigError, match=r"^eval_data is a path \('e.jsonl'\); .* eval_dataset_name: e.jsonl\.$"):
        config_reading_rows(cfg, rows, "e.jsonl")
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    assert config_reading_rows(cfg, splits, None).dataset_name is splits
    assert config_reading_rows(cfg, rows, rows).dataset_name is rows


def _rows_file(tmp_path, rows, monkeypatch):
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))  # the tokenized rows' cache, not ~/.cache
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model_name_or_path": "builtin:tiny-llama", "dataset_name": str(path), "seed": 7, "max_length": 32,
            "truncation_mode": "keep_start", "on_bad_row": "skip", "output_dir": str(tmp_path / "out")}


def test_an_eval_fraction_whose_held_out_rows_all_fail_to_tokenize_is_refused(tmp_path, monkeypatch):
    """eval_fraction 0.3 at seed 7 holds out rows 0, 3, 5 of 10 (tests/data/test_eval_set.py); their prompts fill
    max_length, so the eval set would be empty and evaluation would silently not run."""
    from preflab.config import config_from_dict
    from preflab.loops.prepare import prepare_pairs
    from preflab.models.tiny import tiny_tokenizer

    rows = [{"prompt": "q" * 60 if i in (0, 3, 5) else "q", "chosen": "a", "rejected": "b"} for i in range(10)]
    base = _rows_file(tmp_path, rows, monkeypatch)
    with pytest.raises(DataError, match=r"the eval set \(eval_fraction=0\.3\) has no usable examples: .*tokenized 3, "
                                        r"0 kept, 3 skipped \(prompt_fills_max_length: 3\)"):
        prepare_pairs(config_from_dict({**base, "eval_fraction": 0.3}), tiny_tokenizer("char"))
    train, evals, report = prepare_pairs(config_from_dict(base), tiny_tokenizer("char"))
    assert (len(train), evals, report["skipped"]) == (7, [], {"prompt_fills_max_length": 3})


def test_the_reports_skipped_count_adds_a_reasons_rows_skipped_when_read_and_when_tokenized(tmp_path, monkeypatch):
    """summary.json's data.skipped: one reason's rows left out when read (1 wrong_type: chosen is a number) and when
    tokenized (2 wrong_type, as the tokenizer reports them for a conversational row's chat_template_kwargs) are 3."""
    import preflab.loops.prepare as prepare
    from preflab.config import config_from_dict
    from preflab.models.tiny import tiny_tokenizer

    class Tokenized:
        prompt_truncated = response_truncated = 0

        def to_dict(self):
            return {"skipped": {"wrong_type": 2}}

        def summary(self):
            return "tokenized"

    monkeypatch.setattr(prepare, "_tokenize", lambda kind, rows, tok, cfg, source: (list(rows), Tokenized()))
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": 5, "rejected": "b"}]
    cfg = config_from_dict(_rows_file(tmp_path, rows, monkeypatch))
    _, _, report = prepare.prepare_pairs(cfg, tiny_tokenizer("char"))
    assert report["train_rows"]["skipped"] == {"wrong_type": 1} and report["skipped"] == {"wrong_type": 3}


def test_a_single_mapl_intra_row_is_refused_under_a_loss_that_cannot_read_it():
    from preflab.loops.prepare import check_intra_rows
    from preflab.objectives import get_objective

    rows = [SimpleNamespace(row_id=0, rejected_prompt=None), SimpleNamespace(row_id=4, rejected_prompt=[5, 6])]
    with pytest.raises(DataError, match=r"^f\.jsonl: row 4: fields prompt_chosen / prompt_rejected: 1 MAPL intra"):
        check_intra_rows(get_objective("sigmoid"), rows, "f.jsonl", "sigmoid")
    assert check_intra_rows(get_objective("rc_dpo"), rows, "f.jsonl", "rc_dpo") == 1


def test_the_one_label_note_names_either_side():
    from preflab.loops.prepare import one_label_note

    assert "is desirable (label true): the objective gets no undesirable term" in one_label_note(3, 3, "f")
    assert "is undesirable (label false): the objective gets no desirable term" in one_label_note(0, 3, "f")
    assert one_label_note(1, 3, "f") is None and one_label_note(0, 0, "f") is None


# recipes.py: recipe_params types

def test_recipe_params_take_a_number_written_as_text_and_refuse_booleans_and_nulls_where_they_do_not_fit():
    from preflab.recipes import check_recipe_params

    params = {"sft_lr_scale": "0.5", "sft_steps": None}
    check_recipe_params("raft_ladder", params)
    assert params == {"sft_lr_scale": 0.5, "sft_steps": None}
    with pytest.raises(ConfigError, match=r"recipe_params\.n_train=True is not an integer \(its default: "
                                          r"n_train=600\)"):
        check_recipe_params("raft_ladder", {"n_train": True})
    with pytest.raises(ConfigError, match=r"recipe_params\.n_train=None is not an integer \(its default"):
        check_recipe_params("raft_ladder", {"n_train": None})


# tools/base.py: the schema's defaults and the cache file

class Echo:
    name, description = "Echo", "says its text"
    parameters = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

    def call(self, arguments):
        return arguments["text"]


def test_an_extra_argument_is_accepted_unless_the_schema_forbids_it_and_a_cache_entry_needs_ok(tmp_path):
    from preflab.tools import ToolBox, validate_arguments

    assert validate_arguments(Echo.parameters, {"text": "a", "extra": 1}) == ""
    strict = {**Echo.parameters, "additionalProperties": False}
    assert validate_arguments(strict, {"text": "a", "extra": 1}).startswith("unknown argument 'extra'")
    assert ToolBox([Echo()]).call("Echo", {"text": "hi", "extra": 1}).observation == "hi"
    cache = tmp_path / "cache.json"
    cache.write_text(json.dumps({'["Echo",{"text":"hi"}]': {"observation": "hi"}}))
    with pytest.raises(DataError, match=r"cache\.json: not a tool cache written by ToolBox\.save \(entry .* needs a "
                                        r"text 'observation' and a true/false 'ok'\)"):
        ToolBox([Echo()], cache_path=cache)


# eval_cli/cli.py: `preflab eval`'s option checks, before anything loads

@pytest.mark.parametrize("extra, said", [
    (["--confidence", "1"], "--confidence must be in (0, 1), got 1.0."),
    (["--beta", "0"], "--beta must be > 0 (the KL coefficient of the implicit reward), got 0.0."),
    (["--limit", "0"], "--limit must be at least 1, got 0."),
    (["--judge", "m:f", "--no-reference"], "a win rate compares the policy with the reference model's answers: add "
                                           "--reference."),
])
def test_eval_options_that_cannot_do_what_they_say_are_refused(tmp_path, capsys, extra, said):
    from preflab.cli import main

    (tmp_path / "data.jsonl").write_text("")
    assert main(["eval", str(tmp_path), "--data", str(tmp_path / "data.jsonl"), *extra]) == 2
    assert capsys.readouterr().err.strip() == f"preflab: error: {said}"


def test_eval_no_per_pair_reaches_the_evaluation(tmp_path, monkeypatch):
    import preflab.eval.cli
    import preflab.eval_cli.checkpoint
    from preflab.cli import main

    seen = {}
    monkeypatch.setattr(preflab.eval_cli.checkpoint, "evaluate_checkpoint",
                        lambda *a, options, **kw: seen.setdefault("options", options))
    monkeypatch.setattr(preflab.eval.cli, "format_summary", lambda result: "")
    for flag, kept in (([], True), (["--no-per-pair"], False)):
        seen.clear()
        assert main(["eval", str(tmp_path), "--data", "d.jsonl", "--reference", "builtin:tiny-llama", *flag]) == 0
        assert seen["options"].keep_per_pair is kept


# cli.py: overrides after options, TRL-style flags, exit codes, an interrupted recipe's stage

def test_overrides_after_the_options_are_applied_after_the_earlier_ones():
    from preflab.cli import _parse, build_parser

    args = _parse(build_parser(), ["plan", "c.yaml", "beta=0.1", "--world-size", "2", "beta=0.2", "seed=3"])
    assert args.overrides == ["beta=0.1", "beta=0.2", "seed=3"] and args.world_size == 2


def test_a_trl_option_name_written_as_a_flag_is_told_to_become_an_override():
    from preflab.cli import _dashed_option_hint

    for flag in ("--beta", "--dataset_test_split", "--max_new_tokens"):  # preflab's option, TRL's renamed ones
        name = flag[2:]
        assert _dashed_option_hint(flag) == (f"; training options are key=value overrides, not --options: write "
                                             f"{name}=VALUE instead of {flag} VALUE")
    assert "--dry-run is not an option" in _dashed_option_hint("--dry-run")


@pytest.mark.parametrize("signal_name, code", [("Terminated", 143), ("KeyboardInterrupt", 130)])
def test_sigterm_exits_143_and_ctrl_c_130(monkeypatch, capsys, signal_name, code):
    import preflab.cli as cli

    def stopped(args):
        raise cli.Terminated() if signal_name == "Terminated" else KeyboardInterrupt()

    monkeypatch.setattr(cli, "_handler", lambda args: stopped)
    assert cli.main(["objectives"]) == code
    assert capsys.readouterr().err.startswith("preflab: terminated (SIGTERM)." if code == 143 else
                                              "preflab: interrupted.")


def test_a_recipe_that_reruns_its_stage_says_so_even_when_the_stage_left_a_checkpoint(tmp_path):
    from preflab.cli import _recipe_interrupted_message

    stage = tmp_path / "run" / "dpo"
    (stage / "checkpoint-3").mkdir(parents=True)
    for name in ("COMPLETE", "trainer_state.json"):
        (stage / "checkpoint-3" / name).write_text("{}")
    said = ("preflab: interrupted. The recipe (task: raft_ladder) keeps its finished stages in out: rerun the same "
            "command with resume_from_checkpoint=true to continue from them.")
    assert _recipe_interrupted_message("interrupted", ("raft_ladder", "out"), stage, False) == (
        f"{said} The interrupted stage {stage} starts again at step 0 (this recipe reruns an interrupted stage from "
        "its start).")
    assert _recipe_interrupted_message("interrupted", ("raft_ladder", "out"), stage, True) == (
        f"{said} The interrupted stage {stage} continues from {stage / 'checkpoint-3'} (step 3).")


# ladder/recipe.py: the control's step count in summary.json

def test_raft_ladder_control_steps_default_to_the_dpo_stages(tmp_path, monkeypatch):
    from preflab.ladder import recipe as ladder_recipe

    class Finished:  # every stage finished earlier: the summary is built from the saved records alone
        def __init__(self, *args, **kwargs):
            pass

        def stage(self, name, run, load, checkpoints=False):
            return {"accuracy": 0.5, "valid": 1.0, "examples": [], "untrained_accuracy": 0.0}

    monkeypatch.setattr(ladder_recipe, "RecipeState", Finished)
    summary = ladder_recipe.run_raft_ladder(str(tmp_path), n_train=4, n_test=1, quiet=True)
    assert summary["control_sft_steps"] == ladder_recipe.DPO["max_steps"] == 250
    summary = ladder_recipe.run_raft_ladder(str(tmp_path / "b"), n_train=4, n_test=1, quiet=True, dpo_steps=7)
    assert summary["control_sft_steps"] == 7


def test_the_offline_trainer_names_the_runner_of_a_task_it_does_not_run():
    """user-trial-9: Trainer(load_config("examples/online/online_dpo.yaml")) failed loading builtin:demo-sft's
    tokenizer ("Repo id must use alphanumeric chars"), a distillation config with a NotImplementedError about
    DistillBatch objectives; each names its Python runner now, before anything loads. task: dpo and sft still build."""
    from preflab.config import load_config
    from preflab.loops.offline import Trainer

    root = Path(__file__).resolve().parents[1] / "examples"
    for config, what, runner in (
            ("online/online_dpo.yaml", "task: online", "preflab.online.run.OnlineRun(cfg).train()"),
            ("upo_reward_model.yaml", "task: reward", "preflab.reward_models.train.train_reward(cfg)"),
            ("fspo.yaml", "task: fspo", "preflab.recipes.run_recipe(cfg)"),
            ("diffusion/diffusion_dpo.yaml", "task: diffusion", "preflab.loops.diffusion.train_diffusion(cfg)"),
            ("vlm/dpo.yaml", "task: vlm", "preflab.loops.vlm.VisionTrainer(cfg).train()"),
            ("distill.yaml", "task: sft with teacher_model_name_or_path (distillation)",
             "preflab.loops.distill.DistillTrainer(cfg).train()")):
        with pytest.raises(ConfigError) as err:
            Trainer(load_config(root / config))
        assert str(err.value) == (f"{what} is not run by preflab.loops.offline.Trainer; from Python run it with "
                                  f"{runner}, or from the shell with `preflab train CONFIG`."), config
    from preflab.loops.offline import refuse_other_runner

    for config in ("sft.yaml", "dpo.yaml"):  # Trainer's own tasks (task: sft without a teacher is no distillation)
        assert refuse_other_runner(load_config(root / config), Trainer) is None, config
