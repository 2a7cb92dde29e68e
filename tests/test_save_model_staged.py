"""A direct run.save_model() (after train(), or before it) is staged like train()'s own final save (user trial 16;
preflab.loops.driver.TrainingRun.save_model over preflab.final_save.staged_final_save): a save that fails or is
killed after its first file leaves every previous file byte for byte, no truncated file and no stage folder, for a
text run and a diffusion pipeline; a save that finishes writes the model's current weights. The kinds of run only
write (write_model): none has a save_model of its own that could write in place."""
import errno
import importlib
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preflab.errors import PreflabError
from preflab.final_save import INCOMPLETE_MARKER, STAGE_PREFIX

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "loops"))
from test_best_model import _rows  # noqa: E402


class Killed(BaseException):
    """A kill during a write (BaseException: no `except Exception` stops it)."""


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _unchanged_but_marked(folder: Path, before: dict[str, bytes]) -> bool:
    """folder's files are `before` byte for byte plus the incomplete marker (a save that did not finish)."""
    now = _files(folder)
    return INCOMPLETE_MARKER in now and {k: v for k, v in now.items() if k != INCOMPLETE_MARKER} == before


def _text_trainer(tmp_path):
    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer

    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "rows",
                            "output_dir": str(tmp_path / "run"), "max_steps": 1, "per_device_train_batch_size": 4,
                            "max_length": 64, "learning_rate": 0.05, "disable_tqdm": True, "save_strategy": "no",
                            "report_to": []})
    return Trainer(cfg, train_data=_rows(8))


def _shift_weights(model: torch.nn.Module, by: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(by)


def test_a_text_runs_save_model_failing_after_its_first_file_keeps_the_previous_model(tmp_path, monkeypatch):
    """After train(): the policy changes, then save_model() fails in the tokenizer's write (a full disk), after
    model.safetensors was written: output_dir's files are the first save's byte for byte. Saved again without the
    fault, model.safetensors holds the changed policy exactly."""
    trainer = _text_trainer(tmp_path)
    trainer.train()
    run = tmp_path / "run"
    before = _files(run)
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    _shift_weights(policy, 0.25)
    written = []

    def full_disk(folder, *args, **kwargs):
        written.extend(p.name for p in Path(folder).iterdir())
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "tokenizer.json"))

    monkeypatch.setattr(trainer.tokenizer, "save_pretrained", full_disk)
    with pytest.raises(OSError) as caught:
        trainer.save_model()
    assert "model.safetensors" in written  # the weights were written (into the stage) before the fault
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(run / "tokenizer.json"))
    assert _unchanged_but_marked(run, before)
    monkeypatch.undo()
    trainer.save_model()
    assert not (run / INCOMPLETE_MARKER).exists()
    saved = load_file(str(run / "model.safetensors"))
    state = policy.state_dict()
    assert all(torch.equal(saved[k], state[k]) for k in saved) and len(saved) >= len(state) - 1
    assert not torch.equal(saved["model.norm.weight"], load_file_bytes(before["model.safetensors"])
                           ["model.norm.weight"])
    assert not list(run.glob(f"{STAGE_PREFIX}*"))


def load_file_bytes(data: bytes) -> dict:
    from safetensors.torch import load

    return load(data)


def test_save_model_with_an_output_dir_writes_there_staged_and_nowhere_else(tmp_path):
    """transformers' Trainer.save_model(output_dir): the model goes to that folder; the run's own is untouched."""
    trainer = _text_trainer(tmp_path)
    trainer.train()
    run_files = _files(tmp_path / "run")
    other = tmp_path / "elsewhere"
    trainer.save_model(other)
    assert _files(tmp_path / "run") == run_files
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(_files(other))
    assert _files(other)["model.safetensors"] == run_files["model.safetensors"]
    assert trainer.out == tmp_path / "run"  # the writers' folder is the run's again


def _diffusion_run(out):
    from preflab.config import config_from_dict
    from preflab.loops.diffusion import DiffusionRun

    return DiffusionRun(config_from_dict({
        "task": "diffusion", "loss_type": "diffusion_dpo", "model_name_or_path": "builtin:tiny-sd", "resolution": 16,
        "dataset_name": str(ROOT / "examples/diffusion/data/train.jsonl"), "use_cpu": True, "output_dir": str(out),
        "report_to": [], "disable_tqdm": True}))


def test_a_diffusion_pipelines_save_model_killed_after_its_first_weights_file_keeps_the_previous_pipeline(
        tmp_path, monkeypatch):
    """A pipeline is several folders (unet/, vae/, text_encoder/, ...): save_model() killed while writing the second
    diffusers weights file (half of it written) leaves every file of the previous save byte for byte; saved again,
    unet/diffusion_pytorch_model.safetensors holds the changed UNet exactly."""
    import safetensors.torch as st

    out = tmp_path / "run"
    run = _diffusion_run(out)
    run.save_model()  # before train(): into the config's output_dir
    before = _files(out)
    assert "unet/diffusion_pytorch_model.safetensors" in before and "vae/diffusion_pytorch_model.safetensors" in before
    unet = run.accelerator.unwrap_model(run.module).unet
    _shift_weights(unet, 0.5)
    real, calls = st.save_file, []

    def killed_on_the_second(tensors, filename, metadata=None):
        calls.append(Path(filename).parent.name)
        real(tensors, filename, metadata=metadata)
        if len(calls) == 2:
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[:len(data) // 2])
            raise Killed

    monkeypatch.setattr(st, "save_file", killed_on_the_second)
    with pytest.raises(Killed):
        run.save_model()
    assert len(calls) == 2
    assert _unchanged_but_marked(out, before)
    assert not list(out.glob(f"{STAGE_PREFIX}*"))
    from preflab.diffusion.pipeline import check_pipeline_files

    with pytest.raises(PreflabError, match="^final model incomplete: "):  # the pipeline loader refuses it
        check_pipeline_files(str(out))
    monkeypatch.undo()
    run.save_model()
    check_pipeline_files(str(out))
    saved = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    state = unet.state_dict()
    assert set(saved) == set(state) and all(torch.equal(saved[k], state[k]) for k in saved)
    assert _files(out)["unet/diffusion_pytorch_model.safetensors"] != before["unet/diffusion_pytorch_model.safetensors"]


RUN_MODULES = ["preflab.loops.offline", "preflab.loops.sft", "preflab.loops.distill", "preflab.loops.vlm",
               "preflab.loops.diffusion", "preflab.online.run", "preflab.online.vision", "preflab.online.hypo_offline",
               "preflab.reward_models.reward_run"]


def _subclasses(cls) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_no_kind_of_run_has_a_save_model_of_its_own():
    """save_model is the driver's alone (the staging is written once); each kind of run writes through
    write_model, and every kind named in the brief has one."""
    from preflab.loops.driver import TrainingRun

    for name in RUN_MODULES:
        importlib.import_module(name)
    runs = {cls.__name__: cls for cls in _subclasses(TrainingRun) if cls.__module__.startswith("preflab.")}
    assert {"Trainer", "DiffusionRun", "VisionTrainer", "OnlineRun", "VisionOnlineRun", "RewardRun"} <= set(runs)
    assert [n for n, cls in runs.items() if cls.save_model is not TrainingRun.save_model] == []
    assert [n for n, cls in runs.items() if cls.write_model is TrainingRun.write_model] == []


def test_save_model_writes_the_objectives_current_state_and_the_umasks_file_modes(tmp_path):
    """A SparsePO run trained, then its masks changed: save_model(other) writes sparsepo_masks.safetensors holding
    the changed masks (the objective's own trained tensors, as train()'s end writes them), and the safetensors files
    get the umask's mode (safetensors writes 0600), as train()'s final save gives them."""
    import os

    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer

    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "rows", "loss_type": "sparsepo",
                            "output_dir": str(tmp_path / "run"), "max_steps": 1, "per_device_train_batch_size": 4,
                            "max_length": 64, "disable_tqdm": True, "save_strategy": "no", "report_to": []})
    trainer = Trainer(cfg, train_data=_rows(8))
    kept = os.umask(0o022)  # safetensors' 0600 and the umask's 0644 differ
    try:
        trainer.train()
        _shift_weights(trainer.objective, 0.5)
        other = tmp_path / "elsewhere"
        trainer.save_model(other)
    finally:
        os.umask(kept)
    masks = load_file(str(other / "sparsepo_masks.safetensors"))
    state = trainer.objective.state_dict()
    assert masks.keys() == state.keys() and all(torch.equal(masks[k], state[k].cpu()) for k in masks)
    for folder in (tmp_path / "run", other):
        for name in ("model.safetensors", "sparsepo_masks.safetensors"):
            assert (folder / name).stat().st_mode & 0o777 == 0o644, (folder, name)
