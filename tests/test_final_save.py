"""The final model is written as one unit (user trial 15, atomic-final; preflab.final_save): a save killed part way
leaves the previous model files byte for byte (or none), no temp folder and the incomplete marker, which every
loader refuses ("final model incomplete: ..."); a finished save's weights are the model's state_dict exactly and its
files are byte for byte a plain save_pretrained's; summary.json and eval.json are fsynced before and after their
rename."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import preflab.atomic_file as af
from preflab.checkpoint import clean_interrupted_saves
from preflab.errors import PreflabError
from preflab.final_save import INCOMPLETE_MARKER, STAGE_PREFIX, staged_final_save

sys.path.insert(0, str(Path(__file__).parent / "loops"))
from test_best_model import _rows  # noqa: E402


class Killed(BaseException):
    """A kill during a write (BaseException, as a KeyboardInterrupt: no `except Exception` stops it)."""


def _tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))


def _half_written(real_save_file):
    """A safetensors save_file that writes the first half of the file's bytes and then dies."""
    def save_file(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[:len(data) // 2])
        raise Killed

    return save_file


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _model_files(folder: Path) -> dict[str, bytes]:
    """_files without the incomplete marker (what a save that did not finish adds)."""
    return {name: data for name, data in _files(folder).items() if name != INCOMPLETE_MARKER}


def _refused_as_incomplete(folder: Path) -> None:
    """Loading `folder` as a model is refused, naming the unfinished save and the resume that finishes it."""
    from preflab.models.load import load_causal_lm

    with pytest.raises(PreflabError, match=r"^final model incomplete: .*rerun with resume_from_checkpoint=true"):
        load_causal_lm(str(folder))


def test_a_save_killed_mid_write_leaves_the_previous_model_byte_for_byte_and_no_temp(tmp_path, monkeypatch):
    import transformers.modeling_utils as mu

    with staged_final_save(tmp_path) as stage:
        _tiny_llama(0).save_pretrained(stage, safe_serialization=True)
    before = _files(tmp_path)
    assert "model.safetensors" in before and "config.json" in before
    monkeypatch.setattr(mu, "safe_save_file", _half_written(mu.safe_save_file))
    with pytest.raises(Killed):
        with staged_final_save(tmp_path) as stage:
            _tiny_llama(1).save_pretrained(stage, safe_serialization=True)
    assert _model_files(tmp_path) == before  # every file as it was (config.json, written first, included)
    assert (tmp_path / INCOMPLETE_MARKER).is_file()  # the one thing new: the mark, so the folder is refused
    _refused_as_incomplete(tmp_path)


def test_a_first_save_killed_mid_write_leaves_no_model(tmp_path, monkeypatch):
    import transformers.modeling_utils as mu

    monkeypatch.setattr(mu, "safe_save_file", _half_written(mu.safe_save_file))
    with pytest.raises(Killed):
        with staged_final_save(tmp_path) as stage:
            _tiny_llama(1).save_pretrained(stage, safe_serialization=True)
    assert [p.name for p in tmp_path.iterdir()] == [INCOMPLETE_MARKER]
    _refused_as_incomplete(tmp_path)  # not "no config.json": the save that did not finish is named


def _half_saved_then_raises(real_save_pretrained):
    """A model's save_pretrained that writes its files, cuts its weights file to half and then raises (a crash in
    the middle of the save: config.json whole, model.safetensors partial)."""
    def save_pretrained(self, folder, *args, **kwargs):
        real_save_pretrained(self, folder, *args, **kwargs)
        weights = Path(folder) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
        raise RuntimeError("crashed half way through save_pretrained")

    return save_pretrained


def test_a_crash_inside_save_pretrained_keeps_the_previous_model_and_loading_refuses_until_a_save_finishes(
        tmp_path, monkeypatch):
    """save_pretrained writes half its weights and raises: the previous model's files are byte for byte as they were,
    no stage folder is left, and the folder is refused ("final model incomplete") until a save finishes; the next
    save clears the mark, and the folder loads to that save's weights exactly."""
    from transformers import LlamaForCausalLM

    from preflab.models.load import load_causal_lm

    old, new = _tiny_llama(7), _tiny_llama(8)
    with staged_final_save(tmp_path) as stage:
        old.save_pretrained(stage, safe_serialization=True)
    before = _files(tmp_path)
    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", _half_saved_then_raises(LlamaForCausalLM.save_pretrained))
    with pytest.raises(RuntimeError, match="half way"):
        with staged_final_save(tmp_path) as stage:
            new.save_pretrained(stage, safe_serialization=True)
    assert _model_files(tmp_path) == before and not list(tmp_path.glob(f"{STAGE_PREFIX}*"))
    _refused_as_incomplete(tmp_path)
    monkeypatch.undo()
    with staged_final_save(tmp_path) as stage:
        new.save_pretrained(stage, safe_serialization=True)
    assert not (tmp_path / INCOMPLETE_MARKER).exists()
    back = load_causal_lm(str(tmp_path))
    assert all(torch.equal(back.state_dict()[k], v) for k, v in new.state_dict().items())


def test_a_kill_while_files_are_renamed_in_leaves_the_mark_and_every_rename_happens_under_it(tmp_path, monkeypatch):
    """The mark is the unit's commit: it is in output_dir at every rename of a finished save (and goes only after
    the last), and a kill after the first of several renames (a sharded save: old and new shards mixed) leaves it,
    so the mix is refused."""
    import preflab.final_save as fs

    with staged_final_save(tmp_path) as stage:
        _tiny_llama(3).save_pretrained(stage, safe_serialization=True)
    marked_at_rename = []
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name != INCOMPLETE_MARKER:  # os is one module: the mark's own atomic write renames too
            marked_at_rename.append((tmp_path / INCOMPLETE_MARKER).is_file())
        real_replace(src, dst)

    monkeypatch.setattr(fs.os, "replace", replace)
    with staged_final_save(tmp_path) as stage:
        _tiny_llama(4).save_pretrained(stage, safe_serialization=True, max_shard_size="20KB")
    assert len(marked_at_rename) >= 4 and all(marked_at_rename)
    assert not (tmp_path / INCOMPLETE_MARKER).exists()

    def killed_after_first(src, dst):
        real_replace(src, dst)
        if Path(dst).name != INCOMPLETE_MARKER:
            raise Killed

    monkeypatch.setattr(fs.os, "replace", killed_after_first)
    with pytest.raises(Killed):
        with staged_final_save(tmp_path) as stage:
            _tiny_llama(5).save_pretrained(stage, safe_serialization=True)
    _refused_as_incomplete(tmp_path)


def test_a_finished_save_is_byte_for_byte_a_plain_save_pretrained_and_leaves_nothing_else(tmp_path):
    """The staging changes where the bytes are written, not what they are: a model and its tokenizer saved through
    staged_final_save equal, file for file and byte for byte, the same save_pretrained calls into a plain folder
    (no mark, no stage folder left); so does a sharded save."""
    from preflab.models.tiny import tiny_tokenizer

    model, tokenizer = _tiny_llama(9), tiny_tokenizer("bytelevel")
    for options in ({}, {"max_shard_size": "20KB"}):
        plain, staged = tmp_path / f"plain{len(options)}", tmp_path / f"staged{len(options)}"
        model.save_pretrained(plain, safe_serialization=True, **options)
        tokenizer.save_pretrained(plain)
        with staged_final_save(staged) as stage:
            model.save_pretrained(stage, safe_serialization=True, **options)
            tokenizer.save_pretrained(stage)
        assert _files(staged) == _files(plain)
        assert "model.safetensors" in _files(plain) or "model.safetensors.index.json" in _files(plain)


def test_a_saved_model_holds_the_state_dict_exactly_and_no_temp(tmp_path):
    model = _tiny_llama(2)
    with staged_final_save(tmp_path) as stage:
        model.save_pretrained(stage, safe_serialization=True)
    saved = load_file(str(tmp_path / "model.safetensors"))
    expected = model.state_dict()
    tied = set(expected) - set(saved)
    assert tied <= {"lm_head.weight"}  # tied to embed_tokens: saved once
    assert {k: v.tolist() for k, v in saved.items()} == {k: expected[k].tolist() for k in saved}
    assert not list(tmp_path.glob(f"{STAGE_PREFIX}*"))


def test_sharded_then_single_file_saves_leave_no_stale_shards(tmp_path):
    """save_pretrained removes a previous save's stale shards from the folder it writes; it writes the empty stage
    now, so publishing does it: a single-file save over a sharded one leaves no shard and no index, and the other
    way round no model.safetensors; each model loads back with its own weights."""
    from transformers import LlamaForCausalLM

    sharded, single = _tiny_llama(3), _tiny_llama(4)
    with staged_final_save(tmp_path) as stage:
        sharded.save_pretrained(stage, safe_serialization=True, max_shard_size="20KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and (tmp_path / "model.safetensors.index.json").exists()
    back = LlamaForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in sharded.state_dict().items())
    with staged_final_save(tmp_path) as stage:
        single.save_pretrained(stage, safe_serialization=True)
    assert not list(tmp_path.glob("model-*")) and not (tmp_path / "model.safetensors.index.json").exists()
    back = LlamaForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in single.state_dict().items())
    with staged_final_save(tmp_path) as stage:
        sharded.save_pretrained(stage, safe_serialization=True, max_shard_size="20KB")
    assert not (tmp_path / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors")) == shards


def test_index_files_are_published_after_every_shard(tmp_path, monkeypatch):
    """An index never names a shard not yet in place: os.replace sees it last."""
    import preflab.final_save as fs

    moved = []
    real_replace = os.replace
    monkeypatch.setattr(fs.os, "replace", lambda src, dst: (moved.append(Path(dst).name), real_replace(src, dst)))
    with staged_final_save(tmp_path) as stage:
        _tiny_llama(3).save_pretrained(stage, safe_serialization=True, max_shard_size="20KB")
    assert moved[-1] == "model.safetensors.index.json"
    assert sum(name.startswith("model-") for name in moved) >= 2


def test_a_lora_adapter_save_killed_mid_write_keeps_the_previous_adapter(tmp_path, monkeypatch):
    import peft.peft_model as pm
    from peft import LoraConfig, get_peft_model

    def adapter(seed):
        model = get_peft_model(_tiny_llama(0), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
        torch.manual_seed(seed)
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.data.normal_()
        return model

    first = adapter(5)
    with staged_final_save(tmp_path) as stage:
        first.save_pretrained(stage)
    weights = load_file(str(tmp_path / "adapter_model.safetensors"))
    lora = {n: p for n, p in first.named_parameters() if "lora_" in n}
    assert len(weights) == len(lora) > 0
    assert sorted(v.sum().item() for v in weights.values()) == sorted(p.sum().item() for p in lora.values())
    before = _files(tmp_path)
    monkeypatch.setattr(pm, "safe_save_file", _half_written(pm.safe_save_file))
    with pytest.raises(Killed):
        with staged_final_save(tmp_path) as stage:
            adapter(6).save_pretrained(stage)
    assert _model_files(tmp_path) == before and (tmp_path / INCOMPLETE_MARKER).is_file()


def test_a_killed_saves_folder_is_removed_at_the_next_start(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"whole")
    left = tmp_path / f"{STAGE_PREFIX}abc123"
    (left / "unet").mkdir(parents=True)
    (left / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
    notes = []
    clean_interrupted_saves(tmp_path, warn=notes.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert len(notes) == 1 and "1 unfinished final model folder" in notes[0]


@pytest.mark.parametrize("loader", ["load_causal_lm", "check_pipeline_files", "load_for_eval", "push_run"])
def test_every_loader_of_a_folder_refuses_a_marked_one(tmp_path, loader):
    """The refusal sits where every local folder load passes (check_weights_safe; `preflab push` too): a complete
    model folder with the mark left by an unfinished save is refused by each, and loads once the mark is gone."""
    from preflab.final_save import mark_incomplete

    _tiny_llama(0).save_pretrained(tmp_path, safe_serialization=True)
    mark_incomplete(tmp_path)

    def load():
        if loader == "load_causal_lm":
            from preflab.models.load import load_causal_lm
            return load_causal_lm(str(tmp_path))
        if loader == "check_pipeline_files":
            from preflab.diffusion.pipeline import check_pipeline_files
            return check_pipeline_files(str(tmp_path))
        if loader == "load_for_eval":
            from preflab.eval.loading import load_for_eval
            return load_for_eval(str(tmp_path))
        from preflab.hub_push import push_run
        return push_run(tmp_path, "me/run", api=object())

    with pytest.raises(PreflabError, match=r"^final model incomplete: the final save into "):
        load()
    if loader == "load_causal_lm":
        (tmp_path / INCOMPLETE_MARKER).unlink()
        assert load() is not None


def test_a_trainer_killed_in_its_final_save_is_refused_then_a_resume_saves_the_policy_exactly(tmp_path, monkeypatch):
    """Through preflab train's driver (_finish): a kill in the weights' write leaves no model.safetensors, no
    summary.json, the stage folder (as SIGKILL would: the process does not clean up) and the mark, so `preflab eval
    RUN`'s loader refuses the run ("final model incomplete ... rerun with resume_from_checkpoint=true"). The resume
    that message asks for removes the stage folder, saves the final model (the mark goes) and its model.safetensors
    equals the resumed policy's state_dict, which is the step-2 checkpoint's."""
    import transformers.modeling_utils as mu

    from preflab.config import config_from_dict
    from preflab.eval.loading import load_for_eval
    from preflab.loops.offline import Trainer

    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "rows",
                            "output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 4,
                            "max_length": 64, "learning_rate": 0.05, "disable_tqdm": True, "save_strategy": "steps",
                            "save_steps": 2, "report_to": []})
    real = mu.safe_save_file
    monkeypatch.setattr(mu, "safe_save_file", _half_written(real))
    monkeypatch.setattr("preflab.final_save.shutil.rmtree", lambda *a, **k: None)  # SIGKILL runs no cleanup
    with pytest.raises(Killed):
        Trainer(cfg, train_data=_rows(8)).train()
    run = tmp_path / "run"
    assert not (run / "model.safetensors").exists() and not (run / "summary.json").exists()
    assert len(list(run.glob(f"{STAGE_PREFIX}*"))) == 1 and (run / INCOMPLETE_MARKER).is_file()
    monkeypatch.undo()
    with pytest.raises(PreflabError, match=r"^final model incomplete: .*rerun with resume_from_checkpoint=true"):
        load_for_eval(str(run))
    trainer = Trainer(config_from_dict({**cfg.to_dict(), "resume_from_checkpoint": True}), train_data=_rows(8))
    trainer.train()
    assert not list(run.glob(f"{STAGE_PREFIX}*")) and not (run / INCOMPLETE_MARKER).exists()
    saved = load_file(str(run / "model.safetensors"))
    state = trainer.accelerator.unwrap_model(trainer.policy).state_dict()
    assert set(saved) <= set(state) and len(saved) >= len(state) - 1  # a tied lm_head is saved once
    assert all(torch.equal(saved[k], state[k].cpu()) for k in saved)
    model, _ = load_for_eval(str(run))
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    assert json.loads((run / "summary.json").read_text())["global_step"] == 2


def _count_fsyncs(monkeypatch) -> list[int]:
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    return calls


def test_summary_json_is_fsynced_file_then_folder(tmp_path, monkeypatch):
    from preflab.runlog import write_summary

    synced = []
    monkeypatch.setattr(af, "fsync_file", lambda p: synced.append(("file", Path(p).parent, Path(p).exists())))
    monkeypatch.setattr(af, "fsync_folder", lambda p: synced.append(("folder", Path(p), (Path(p) / "summary.json")
                                                                     .exists())))
    write_summary(tmp_path, {"step": 3})
    # the temp file before the rename (summary.json not there yet), the folder after it
    assert synced == [("file", tmp_path, True), ("folder", tmp_path, True)]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"step": 3}


def test_fsync_counts_summary_and_eval_json_but_not_plain_writes(tmp_path, monkeypatch):
    from preflab.eval.run import write_json
    from preflab.runlog import write_summary

    calls = _count_fsyncs(monkeypatch)
    write_summary(tmp_path, {"step": 3})
    assert len(calls) == 2
    write_json(tmp_path / "eval.json", {"eval_loss": 0.5})
    assert len(calls) == 4
    af.write_text_file(tmp_path / "timeline.txt", "x")  # not durable: no fsync
    assert len(calls) == 4


def test_each_published_file_is_fsynced_before_its_rename_and_its_folders_after(tmp_path, monkeypatch):
    """A rename may reach the disk before the file's bytes: each staged file is fsynced while still in the stage (not
    yet in output_dir), every folder it lands in is fsynced once all are moved (the mark still there), and output_dir
    once more after the mark is removed (the commit on disk after every file it vouches for)."""
    import preflab.final_save as fs

    events = []
    monkeypatch.setattr(fs, "fsync_file", lambda p: events.append(("file", Path(p).name,
                                                                   (tmp_path / Path(p).name).exists())))
    monkeypatch.setattr(fs, "fsync_folder", lambda p: events.append(("folder", Path(p),
                                                                     (tmp_path / INCOMPLETE_MARKER).exists())))
    with staged_final_save(tmp_path) as stage:
        (stage / "sub").mkdir()
        (stage / "sub" / "w.safetensors").write_bytes(b"1")
        (stage / "model.safetensors").write_bytes(b"2")
    files = [e for e in events if e[0] == "file"]
    assert sorted(files) == [("file", "model.safetensors", False), ("file", "w.safetensors", False)]
    folders = events[len(files):]
    assert sorted((e[1], e[2]) for e in folders[:-1]) == [(tmp_path, True), (tmp_path / "sub", True)]
    assert folders[-1] == ("folder", tmp_path, False)


def test_a_write_error_in_the_stage_names_the_file_in_output_dir(tmp_path):
    """The staging folder's name is one the user never sees: a full disk while writing its tokenizer.json is
    reported as output_dir/tokenizer.json (errno kept), and the folder is removed."""
    import errno

    with pytest.raises(OSError) as caught:
        with staged_final_save(tmp_path) as stage:
            raise OSError(errno.ENOSPC, "No space left on device", str(stage / "tokenizer.json"))
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(tmp_path / "tokenizer.json"))
    assert [p.name for p in tmp_path.iterdir()] == [INCOMPLETE_MARKER]  # the stage removed, the save marked unfinished
