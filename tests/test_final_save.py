"""The final model is written whole or not at all (user trial 15; preflab.final_save): a save killed part way leaves
the previous model.safetensors byte for byte (or none) and no temp folder; a finished save's weights are the
model's state_dict exactly; summary.json and eval.json are fsynced before and after their rename."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import preflab.atomic_file as af
from preflab.checkpoint import clean_interrupted_saves
from preflab.final_save import STAGE_PREFIX, staged_final_save

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
    assert _files(tmp_path) == before  # every file as it was (config.json, written first, included), nothing new


def test_a_first_save_killed_mid_write_leaves_no_model(tmp_path, monkeypatch):
    import transformers.modeling_utils as mu

    monkeypatch.setattr(mu, "safe_save_file", _half_written(mu.safe_save_file))
    with pytest.raises(Killed):
        with staged_final_save(tmp_path) as stage:
            _tiny_llama(1).save_pretrained(stage, safe_serialization=True)
    assert list(tmp_path.iterdir()) == []


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
    assert _files(tmp_path) == before


def test_a_killed_saves_folder_is_removed_at_the_next_start(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"whole")
    left = tmp_path / f"{STAGE_PREFIX}abc123"
    (left / "unet").mkdir(parents=True)
    (left / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
    notes = []
    clean_interrupted_saves(tmp_path, warn=notes.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert len(notes) == 1 and "1 unfinished final model folder" in notes[0]


def test_a_trainer_killed_in_its_final_save_leaves_no_model_then_a_rerun_saves_the_policy_exactly(tmp_path,
                                                                                                  monkeypatch):
    """Through preflab train's driver (_finish): a kill in the weights' write leaves no model.safetensors, no
    summary.json and the stage folder (as SIGKILL would: the process does not clean up); the next start removes it,
    and a finished save's model.safetensors equals the trained policy's state_dict."""
    import transformers.modeling_utils as mu

    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer

    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "rows",
                            "output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 4,
                            "max_length": 64, "learning_rate": 0.05, "disable_tqdm": True, "save_strategy": "no",
                            "report_to": []})
    real = mu.safe_save_file
    monkeypatch.setattr(mu, "safe_save_file", _half_written(real))
    monkeypatch.setattr("preflab.final_save.shutil.rmtree", lambda *a, **k: None)  # SIGKILL runs no cleanup
    with pytest.raises(Killed):
        Trainer(cfg, train_data=_rows(8)).train()
    run = tmp_path / "run"
    assert not (run / "model.safetensors").exists() and not (run / "summary.json").exists()
    assert len(list(run.glob(f"{STAGE_PREFIX}*"))) == 1
    monkeypatch.undo()
    trainer = Trainer(config_from_dict({**cfg.to_dict(), "overwrite_output_dir": True}), train_data=_rows(8))
    trainer.train()
    assert not list(run.glob(f"{STAGE_PREFIX}*"))
    saved = load_file(str(run / "model.safetensors"))
    state = trainer.accelerator.unwrap_model(trainer.policy).state_dict()
    assert set(saved) <= set(state) and len(saved) >= len(state) - 1  # a tied lm_head is saved once
    assert all(torch.equal(saved[k], state[k].cpu()) for k in saved)
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
    yet in output_dir), and every folder it lands in is fsynced once all are moved."""
    import preflab.final_save as fs

    events = []
    monkeypatch.setattr(fs, "fsync_file", lambda p: events.append(("file", Path(p).name,
                                                                   (tmp_path / Path(p).name).exists())))
    monkeypatch.setattr(fs, "fsync_folder", lambda p: events.append(("folder", Path(p), None)))
    with staged_final_save(tmp_path) as stage:
        (stage / "sub").mkdir()
        (stage / "sub" / "w.safetensors").write_bytes(b"1")
        (stage / "model.safetensors").write_bytes(b"2")
    files = [e for e in events if e[0] == "file"]
    assert sorted(files) == [("file", "model.safetensors", False), ("file", "w.safetensors", False)]
    assert sorted(e[1] for e in events[len(files):]) == [tmp_path, tmp_path / "sub"]  # the folders, after the files


def test_a_write_error_in_the_stage_names_the_file_in_output_dir(tmp_path):
    """The staging folder's name is one the user never sees: a full disk while writing its tokenizer.json is
    reported as output_dir/tokenizer.json (errno kept), and the folder is removed."""
    import errno

    with pytest.raises(OSError) as caught:
        with staged_final_save(tmp_path) as stage:
            raise OSError(errno.ENOSPC, "No space left on device", str(stage / "tokenizer.json"))
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(tmp_path / "tokenizer.json"))
    assert list(tmp_path.iterdir()) == []
