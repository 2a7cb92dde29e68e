"""Which weight files the safety check looks at: the ones that will be loaded, model and adapter separately (#18.17)."""
import json

import pytest

from preflab.errors import UnsafeLoadError
from preflab.models.load import check_weights_safe, pickle_weights_to_load


def make(folder, *names, adapter_base=None):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"\x80\x04payload")          # contents do not matter: nothing is loaded
    if adapter_base is not None:
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": adapter_base}))
    return folder


def test_a_stray_safetensors_file_does_not_let_a_pickle_adapter_through(tmp_path):
    folder = make(tmp_path / "run", "adapter_model.bin", "notes.safetensors",
                  adapter_base="some/hub-model")
    (folder / "old").mkdir()
    (folder / "old" / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsafeLoadError, match=r"run would load pickle weights \(adapter_model.bin\)"):
        check_weights_safe(str(folder), allow_pickle=False)
    check_weights_safe(str(folder), allow_pickle=True)           # the user asked for it


def test_model_and_adapter_weights_are_checked_separately(tmp_path):
    # safetensors model weights do not cover a pickle adapter, and vice versa
    both = make(tmp_path / "a", "config.json", "model.safetensors", "adapter_model.bin", adapter_base="x/y")
    assert pickle_weights_to_load(both) == ["adapter_model.bin"]
    model_pickle = make(tmp_path / "b", "config.json", "pytorch_model.bin", "adapter_model.safetensors",
                        adapter_base="x/y")
    assert pickle_weights_to_load(model_pickle) == ["pytorch_model.bin"]
    nested = make(tmp_path / "c", "config.json", "pytorch_model.bin")  # weights only in a subfolder do not count
    make(nested / "backup", "model.safetensors")
    assert pickle_weights_to_load(nested) == ["pytorch_model.bin"]


def test_safe_folders_pass_and_training_state_is_not_weights(tmp_path):
    run = make(tmp_path / "run", "config.json", "model.safetensors", "training_args.bin", "optimizer.pt",
               "rng_state_0.pth")
    lora = make(tmp_path / "lora", "adapter_model.safetensors", "optimizer.pt", "training_args.bin",
                adapter_base="x/y")
    sharded = make(tmp_path / "sharded", "config.json", "model-00001-of-00002.safetensors",
                   "model-00002-of-00002.safetensors")
    for folder in (run, lora, sharded):
        assert pickle_weights_to_load(folder) == []
        check_weights_safe(str(folder), allow_pickle=False)


def test_a_local_base_model_of_an_adapter_is_checked_too(tmp_path):
    base = make(tmp_path / "base", "config.json", "pytorch_model.bin")
    lora = make(tmp_path / "lora", "adapter_model.safetensors", adapter_base=str(base))
    assert pickle_weights_to_load(lora) == [f"{base}/pytorch_model.bin"]
    with pytest.raises(UnsafeLoadError, match="pytorch_model.bin"):
        check_weights_safe(str(lora), allow_pickle=False)


def test_the_refusal_names_the_weights_that_would_load_and_never_the_training_state(tmp_path):
    """A pickle model folder with a checkpoint's training state beside it: the refusal (and what to convert) names
    the weights only; optimizer.pt & co. are never loaded as weights, so a folder that holds nothing else pickled is
    not refused. A stray .safetensors file that is not model*.safetensors covers nothing (planted bugs in the
    mutation-data round survived the tests of folders with safetensors weights)."""
    state = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", "rng_state.pth")
    pickled = make(tmp_path / "pickled", "config.json", "pytorch_model.bin", "notes.safetensors", *state)
    assert pickle_weights_to_load(pickled) == ["pytorch_model.bin"]
    with pytest.raises(UnsafeLoadError, match=r"pickled would load pickle weights \(pytorch_model.bin\);"):
        check_weights_safe(str(pickled), allow_pickle=False)
    state_only = make(tmp_path / "state_only", "config.json", *state)
    assert pickle_weights_to_load(state_only) == []
