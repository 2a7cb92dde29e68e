"""Under a launcher a `preflab: error:` is printed once for an error every rank has, and never hidden when it may
be one rank's alone (cli.error_message). The ranks are faked in-process through the launcher's RANK variable."""
from __future__ import annotations

import pytest
from accelerate.state import PartialState

from preflab.cli import error_message, main
from preflab.errors import ConfigError, DataError

BAD_CONFIG = ["train", "model_name_or_path=builtin:tiny-llama", "dataset_name=missing.jsonl", "max_grad_norm=-1"]


@pytest.fixture
def launcher_rank(monkeypatch):
    monkeypatch.setattr(PartialState, "_shared_state", {})  # no accelerate state: the rank comes from RANK

    def set_rank(rank: int, local_rank: int | None = None) -> None:
        monkeypatch.setenv("RANK", str(rank))
        if local_rank is None:  # a run that sets up accelerate: no LOCAL_RANK, or it would join a process group
            monkeypatch.delenv("LOCAL_RANK", raising=False)
        else:
            monkeypatch.setenv("LOCAL_RANK", str(local_rank))

    return set_rank


def test_config_error_is_printed_by_the_main_process_only(launcher_rank, capsys):
    launcher_rank(0)
    assert main(BAD_CONFIG) == 2
    assert capsys.readouterr().err.startswith("preflab: error: max_grad_norm=-1.0 is not allowed")
    launcher_rank(1, local_rank=1)
    assert main(BAD_CONFIG) == 2  # same exit code as rank 0, nothing printed: rank 0 prints the same line
    assert capsys.readouterr().err == ""
    launcher_rank(9, local_rank=1)  # another machine (its files may differ from rank 0's): printed
    assert main(BAD_CONFIG) == 2
    assert capsys.readouterr().err.startswith("[rank 9] preflab: error: max_grad_norm=-1.0 is not allowed")


def test_rank_only_errors_are_printed_with_the_rank(launcher_rank, capsys, tmp_path, monkeypatch):
    import preflab.cli
    import preflab.runlog

    launcher_rank(3)  # the run sets up accelerate's (one-process) state before reading data: fake its rank too
    monkeypatch.setattr(preflab.runlog, "is_main_process", lambda: False)
    monkeypatch.setattr(preflab.cli, "_rank", lambda: "3")
    code = main(["train", "model_name_or_path=builtin:tiny-llama", f"dataset_name={tmp_path / 'nowhere.jsonl'}",
                 f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("[rank 3] preflab: error: ") and "nowhere.jsonl" in err
    # a config error raised once the processes were joined (a resume check, a rank's own device) is printed too
    assert error_message(ConfigError("x"), group_open=True) == "[rank 3] preflab: error: x"
    assert error_message(DataError("row 7"), group_open=False) == "[rank 3] preflab: error: row 7"
    launcher_rank(3, local_rank=3)  # rank 0's machine
    assert error_message(ConfigError("x"), group_open=False) is None
    launcher_rank(3, local_rank=0)  # the first rank of another machine
    assert error_message(ConfigError("x"), group_open=False) == "[rank 3] preflab: error: x"
    monkeypatch.setattr(preflab.runlog, "is_main_process", lambda: True)
    assert error_message(ConfigError("x"), group_open=False) == "preflab: error: x"


def test_commands_other_than_train_under_a_launcher_are_refused_once(launcher_rank, capsys, tmp_path, monkeypatch):
    """`accelerate launch --num_processes 2 $(which preflab) eval RUN --data PAIRS` ran the whole evaluation on both
    ranks, printed it twice and had both write RUN's eval.json; now every command but train is refused under a
    launcher, printed by the main process only (the other ranks exit 2 quietly), before anything is read."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "eval-out"
    command = ["eval", str(tmp_path / "run"), "--data", "examples/data/loud_echo_pairs.jsonl", "--out", str(out)]
    launcher_rank(0)
    assert main(command) == 2
    assert capsys.readouterr().err == (
        "preflab: error: preflab eval runs in one process: under this launcher (WORLD_SIZE=2) each of the 2 "
        "processes would run all of it and write the same files. Run `preflab eval ...` without accelerate launch / "
        "torchrun (only `preflab train` splits its work over processes).\n")
    launcher_rank(1, local_rank=1)
    assert main(command) == 2 and capsys.readouterr().err == ""
    launcher_rank(0)
    assert main(["objectives"]) == 2
    assert capsys.readouterr().err.startswith("preflab: error: preflab objectives runs in one process")
    assert not out.exists()
    monkeypatch.setenv("WORLD_SIZE", "1")  # a launch of one process: runs
    assert main(["objectives"]) == 0
