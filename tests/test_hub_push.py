"""push_to_hub (preflab.hub_push): which folders and files each hub_strategy uploads, to which repository, branch and
visibility, from a tiny DPO run with huggingface_hub.HfApi replaced by a recorder (no network); a failed upload is an
error naming the repository and keeps the local files; hub_token never reaches config.yaml. The 2-process check
(uploads from the main process only) is in tests/loops/test_ddp_cli_launch.py's shared DDP launch
(test_two_processes_upload_from_the_main_process_only: tests/loops/scale_matrix_run.py's `hub_push` run, which
reads RecordingHfApi and run from here)."""
import sys
from pathlib import Path

import huggingface_hub
import pytest
import yaml
from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS
from huggingface_hub.utils import filter_repo_objects

from preflab.config import config_from_dict
from preflab.config_trl import translate_trl
from preflab.errors import ConfigError, PreflabError
from preflab.hub_push import HubPusher, push_run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "loops"))
from tiny_run import run  # noqa: E402


class RecordingHfApi:
    """HfApi's create_repo / create_branch / upload_folder, recorded. upload_folder lists the files huggingface_hub
    would send: the folder's files filtered by allow/ignore patterns (and its DEFAULT_IGNORE_PATTERNS), as
    HfApi._prepare_upload_folder_additions filters them, prefixed with path_in_repo."""
    calls: list = []
    fail_uploads = False

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, **kwargs):
        RecordingHfApi.calls.append(("create_repo", {"repo_id": repo_id, "token": token, "private": private,
                                                     "exist_ok": exist_ok}))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id if '/' in repo_id else 'me/' + repo_id}")

    def create_branch(self, repo_id, *, branch, token=None, exist_ok=False, **kwargs):
        RecordingHfApi.calls.append(("create_branch", {"repo_id": repo_id, "branch": branch, "exist_ok": exist_ok}))

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, commit_message=None, token=None,
                      revision=None, allow_patterns=None, ignore_patterns=None, **kwargs):
        folder = Path(folder_path)
        names = sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/*") if p.is_file())
        ignore = list(ignore_patterns or []) + list(DEFAULT_IGNORE_PATTERNS)
        kept = list(filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore))
        prefix = f"{path_in_repo.strip('/')}/" if path_in_repo else ""
        RecordingHfApi.calls.append(("upload_folder", {
            "repo_id": repo_id, "folder": folder.name, "path_in_repo": path_in_repo, "message": commit_message,
            "token": token, "revision": revision, "files": {prefix + n for n in kept}}))
        if RecordingHfApi.fail_uploads:
            raise OSError("403 Forbidden: you do not have write access")


@pytest.fixture
def hub(monkeypatch):
    RecordingHfApi.calls, RecordingHfApi.fail_uploads = [], False
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return RecordingHfApi


def uploads(hub):
    return [kw for name, kw in hub.calls if name == "upload_folder"]


TRAINING_STATE = {"optimizer.safetensors", "optimizer.json", "rng.safetensors", "rng.json"}
FINAL_MODEL = {"model.safetensors", "config.json", "tokenizer_config.json", "README.md"}


def test_every_save_uploads_each_checkpoints_weights_then_the_final_model(tmp_path, hub):
    out = tmp_path / "my-dpo-run"
    run(out, max_steps=4, save_steps=2, push_to_hub=True)
    assert hub.calls[0] == ("create_repo", {"repo_id": "my-dpo-run", "token": None, "private": None,
                                            "exist_ok": True})  # transformers' default name: output_dir's
    pushed = uploads(hub)
    assert [u["message"] for u in pushed] == ["Training in progress, step 2", "Training in progress, step 4",
                                              "End of training"]
    assert {u["repo_id"] for u in pushed} == {"me/my-dpo-run"}  # create_repo's repo_id (the namespace added)
    assert [u["folder"] for u in pushed] == ["checkpoint-2", "checkpoint-4", "my-dpo-run"]
    for ckpt in pushed[:2]:  # the weights and the trainer state, no optimizer / RNG state, under last-checkpoint/
        assert ckpt["path_in_repo"] == "last-checkpoint"
        assert "last-checkpoint/model.safetensors" in ckpt["files"]
        assert "last-checkpoint/trainer_state.json" in ckpt["files"]
        assert not {f"last-checkpoint/{n}" for n in TRAINING_STATE | {"COMPLETE"}} & ckpt["files"]
    final = pushed[2]
    assert final["path_in_repo"] is None and final["revision"] is None
    assert FINAL_MODEL <= final["files"]
    assert not any(f.startswith(("checkpoint-", ".", "_")) or f.endswith((".bin", ".pt", ".pkl"))
                   for f in final["files"])
    on_disk = {p.relative_to(out).as_posix() for p in out.glob("**/*") if p.is_file()}
    assert final["files"] == {f for f in on_disk if not f.startswith(("checkpoint-", "."))}  # nothing else left out
    assert (out / "checkpoint-4" / "optimizer.safetensors").is_file()  # uploading leaves the run's files


@pytest.mark.parametrize("strategy, folders", [("checkpoint", ["last-checkpoint", "last-checkpoint"]),
                                               ("all_checkpoints", ["checkpoint-2", "checkpoint-4"])])
def test_checkpoint_strategies_upload_the_whole_checkpoint(tmp_path, hub, strategy, folders):
    run(tmp_path / "out", max_steps=4, save_steps=2, push_to_hub=True, hub_strategy=strategy,
        hub_model_id="org/name", hub_private_repo=True, hub_revision="dev")
    assert hub.calls[:2] == [("create_repo", {"repo_id": "org/name", "token": None, "private": True,
                                              "exist_ok": True}),
                             ("create_branch", {"repo_id": "org/name", "branch": "dev", "exist_ok": True})]
    pushed = uploads(hub)
    assert [u["path_in_repo"] for u in pushed] == [*folders, None]
    assert [u["message"] for u in pushed] == ["Training in progress, step 2, checkpoint",
                                              "Training in progress, step 4, checkpoint", "End of training"]
    assert {u["revision"] for u in pushed} == {"dev"}
    for folder, ckpt in zip(folders, pushed):  # resumable: the optimizer and RNG state go too
        assert {f"{folder}/{n}" for n in TRAINING_STATE | {"model.safetensors", "trainer_state.json"}} <= ckpt["files"]


def test_end_uploads_only_the_final_model_with_the_given_token(tmp_path, hub):
    run(tmp_path / "out", max_steps=4, save_steps=2, push_to_hub=True, hub_strategy="end", hub_token="hf_secret")
    pushed = uploads(hub)
    assert [(u["message"], u["token"]) for u in pushed] == [("End of training", "hf_secret")]
    assert hub.calls[0][1]["token"] == "hf_secret"
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["hub_token"] == "<HUB_TOKEN>"  # the uploaded config.yaml holds no token
    assert "hf_secret" not in "".join(p.read_text(errors="ignore") for p in (tmp_path / "out").glob("**/*.json*"))


def test_a_failed_upload_is_an_error_naming_the_repository_and_keeps_the_model(tmp_path, hub):
    hub.fail_uploads = True
    with pytest.raises(PreflabError) as err:
        run(tmp_path / "out", max_steps=2, push_to_hub=True, hub_strategy="end", hub_model_id="org/name")
    text = str(err.value)
    assert "org/name" in text and "403 Forbidden" in text and f"hf upload org/name {tmp_path / 'out'}" in text
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "summary.json").is_file()


def test_a_failed_checkpoint_upload_stops_the_run_and_keeps_the_checkpoint(tmp_path, hub):
    hub.fail_uploads = True
    with pytest.raises(PreflabError, match="last-checkpoint failed") as err:
        run(tmp_path / "out", max_steps=4, save_steps=2, push_to_hub=True, hub_model_id="org/name")
    assert "org/name/last-checkpoint" in str(err.value)
    assert (tmp_path / "out" / "checkpoint-2" / "optimizer.safetensors").is_file()


def test_repository_creation_fails_before_training(tmp_path, hub, monkeypatch):
    def refuse(self, *a, **k):
        raise OSError("401 Unauthorized")

    monkeypatch.setattr(RecordingHfApi, "create_repo", refuse)
    with pytest.raises(PreflabError, match="could not create the Hub repository 'org/name': 401 Unauthorized"):
        run(tmp_path / "out", max_steps=2, push_to_hub=True, hub_model_id="org/name")
    assert not (tmp_path / "out" / "metrics.jsonl").exists() or "loss" not in (
        tmp_path / "out" / "metrics.jsonl").read_text()


def test_without_push_to_hub_nothing_is_uploaded_and_hub_options_are_noted(tmp_path, hub, capsys):
    run(tmp_path / "out", max_steps=2, hub_model_id="org/name")
    assert hub.calls == []
    assert "hub_model_id without push_to_hub: true: nothing is uploaded" in capsys.readouterr().out


def test_trl_hub_keys_are_read_and_the_masked_token_dropped():
    raw, notes, errors = translate_trl({"push_to_hub": True, "hub_strategy": "checkpoint", "hub_token": "<HUB_TOKEN>",
                                        "hub_model_id": "org/x"})
    assert errors == [] and raw == {"push_to_hub": True, "hub_strategy": "checkpoint", "hub_model_id": "org/x"}
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x", "output_dir": "o",
                            "push_to_hub": True, "hub_token": "<HUB_TOKEN>"})
    assert cfg.push_to_hub and cfg.hub_token is None
    with pytest.raises(ConfigError, match="hub_strategy"):
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x", "output_dir": "o",
                          "hub_strategy": "all_saves"})


def test_pusher_default_repository_is_output_dirs_name(tmp_path):
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x",
                            "output_dir": str(tmp_path / "runs" / "dpo-7"), "push_to_hub": True})
    assert HubPusher.from_config(cfg).repo_name == "dpo-7"
    assert HubPusher.from_config(config_from_dict({**cfg.to_dict(), "push_to_hub": False})) is None


def test_resume_with_a_token_is_not_a_config_change_and_never_prints_it(tmp_path, hub, capsys):
    run(tmp_path / "out", max_steps=2, save_steps=2, push_to_hub=True, hub_strategy="checkpoint",
        hub_token="hf_secret")
    run(tmp_path / "out", max_steps=4, save_steps=2, push_to_hub=True, hub_strategy="all_checkpoints",
        hub_token="hf_other", resume_from_checkpoint=True, overwrite_output_dir=True)
    assert "hf_secret" not in capsys.readouterr().out
    assert [u["path_in_repo"] for u in uploads(hub)] == ["last-checkpoint", None, "checkpoint-4", None]
    assert [u["token"] for u in uploads(hub)] == ["hf_secret", "hf_secret", "hf_other", "hf_other"]


def test_preflab_push_uploads_a_finished_runs_final_files(tmp_path, hub, capsys):
    from preflab.cli import main

    run(tmp_path / "out", max_steps=2, save_steps=2, hub_model_id="org/saved", hub_private_repo=True)
    hub.calls.clear()
    assert main(["push", str(tmp_path / "out"), "--revision", "v1"]) == 0
    assert hub.calls[:2] == [("create_repo", {"repo_id": "org/saved", "token": None, "private": True,
                                              "exist_ok": True}),
                             ("create_branch", {"repo_id": "org/saved", "branch": "v1", "exist_ok": True})]
    (pushed,) = uploads(hub)
    assert pushed["message"] == "Upload preflab run" and pushed["revision"] == "v1"
    assert FINAL_MODEL <= pushed["files"] and not any(f.startswith("checkpoint-") for f in pushed["files"])
    assert "https://huggingface.co/org/saved" in capsys.readouterr().out
    assert main(["push", str(tmp_path / "out" / "checkpoint-2"), "--repo-id", "a/b"]) == 2  # not a model folder
    assert "checkpoint-2 is a checkpoint" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), "--repo-id", "a/b"]) == 2
    assert "holds no saved model" in capsys.readouterr().err
    assert len(uploads(hub)) == 1  # neither refused folder was uploaded


def test_a_recipe_refuses_push_to_hub_saying_how_to_upload_a_stage():
    raw = yaml.safe_load((ROOT / "examples" / "tools" / "dstc.yaml").read_text())
    with pytest.raises(ConfigError, match=r"push_to_hub, hub_model_id are not passed to the stages of task dstc: .*"
                                          r"uploads none.*preflab push FOLDER"):
        config_from_dict({**raw, "push_to_hub": True, "hub_model_id": "org/x"})


def test_trainer_push_to_hub_after_train_as_trl_scripts_call_it(tmp_path, hub, capsys, monkeypatch):
    _, trainer = run(tmp_path / "out", max_steps=2, hub_model_id="org/script")  # push_to_hub off: train uploads none
    assert uploads(hub) == []
    assert trainer.push_to_hub(dataset_name="trl-lib/x") == "org/script"
    (pushed,) = uploads(hub)
    assert pushed["message"] == "End of training" and pushed["repo_id"] == "org/script"
    assert FINAL_MODEL <= pushed["files"]
    assert "push_to_hub(dataset_name=...)" in capsys.readouterr().out

    def offline(self, *a, **k):
        raise OSError("[Errno -2] Name or service not known")

    # user trial 27: offline, the refusal speaks of the call made (it said "run the same `preflab push` again" and
    # named the CLI's --token / --repo-id to a Python user); `preflab push` keeps its own wording
    monkeypatch.setattr(RecordingHfApi, "create_repo", offline)
    with pytest.raises(PreflabError) as err:
        trainer.push_to_hub()
    said = str(err.value)
    assert said.startswith("trainer.push_to_hub(): could not create the Hub repository 'org/script': [Errno -2]")
    assert "call trainer.push_to_hub() again" in said and "--token" not in said
    with pytest.raises(PreflabError, match=r"^preflab push: could not create .* run the same `preflab push` again"):
        push_run(tmp_path / "out", "org/script")

