"""preflab.resume_check's rules by case: which changed option refuses a resume (the seed) and which is a note, an option
added since the checkpoint, a checkpoint that saved no data fingerprint, and an online run on another number of
processes."""
from types import SimpleNamespace

import pytest

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.resume_check import capped_at_positions, check_global_batch, check_resume_config, check_resume_data


def _cfg(tmp_path, **kw):
    return config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl",
                             "output_dir": str(tmp_path), **kw})


def test_a_changed_seed_refuses_the_resume_and_a_changed_logging_step_is_a_note(tmp_path):
    """The seed decides the data order and dropout from here on: what the run computes."""
    saved = _cfg(tmp_path, seed=1).to_dict()
    with pytest.raises(ConfigError, match=r"change what the run computes: seed \(1 -> 2\)"):
        check_resume_config(saved, _cfg(tmp_path, seed=2), "checkpoint-2", note=print)
    notes = []
    check_resume_config(saved, _cfg(tmp_path, seed=1, logging_steps=7), "checkpoint-2", note=notes.append)
    assert len(notes) == 1 and "resuming with changed option(s): logging_steps (" in notes[0]


def test_an_option_added_since_the_checkpoint_counts_only_away_from_its_default(tmp_path):
    saved = {k: v for k, v in _cfg(tmp_path).to_dict().items() if k != "beta"}  # a config saved before beta existed
    notes = []
    check_resume_config(saved, _cfg(tmp_path), "checkpoint-2", note=notes.append)  # beta at its default: no change
    assert notes == []
    with pytest.raises(ConfigError, match=r"change what the run computes: beta \(None -> 0.3\)"):
        check_resume_config(saved, _cfg(tmp_path, beta=0.3), "checkpoint-2", note=print)


def test_a_checkpoint_without_a_data_fingerprint_is_not_compared(tmp_path):
    cfg = _cfg(tmp_path)
    check_resume_data({}, "sha256:" + "a" * 64, cfg, "checkpoint-2", note=print)  # an older preflab saved none
    check_resume_data({"data_fingerprint": "sha256:" + "a" * 64}, None, cfg, "checkpoint-2", note=print)
    with pytest.raises(ConfigError, match="the training examples differ"):
        check_resume_data({"data_fingerprint": "sha256:" + "a" * 64}, "sha256:" + "b" * 64, cfg, "checkpoint-2")


def test_an_online_run_resumes_on_another_number_of_processes(tmp_path):
    """An online step takes the round's examples on any number of processes (docs/online.md): not refused (an
    objective that reads each micro-batch online is: tests/test_resume_check.py)."""
    saved = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}
    online = SimpleNamespace(task="online", per_device_train_batch_size=8, gradient_accumulation_steps=1)
    check_global_batch(saved, {"world_size": 2}, online, 1, "checkpoint-4")
    with pytest.raises(ConfigError, match="global batch of 16"):
        check_global_batch(saved, {"world_size": 2}, SimpleNamespace(**{**vars(online), "task": "dpo"}), 1,
                           "checkpoint-4")


def test_max_length_is_compared_after_the_cap_the_checkpoints_run_applied(tmp_path):
    """A checkpoint of a run on a 512-position model saved max_length 512 (cap_max_length) and model_positions 512:
    an unset max_length (1024) or one above 512 is the same 512 after the cap; one below it is a change. A
    checkpoint without model_positions (an older preflab) is compared as it was."""
    saved = _cfg(tmp_path, max_length=512).to_dict()
    for same in ({}, {"max_length": None}, {"max_length": 2048}, {"max_length": 512}):
        check_resume_config(saved, _cfg(tmp_path, **same), "checkpoint-2", note=print, positions=512)
    with pytest.raises(ConfigError, match=r"max_length \(512 -> 256\)"):
        check_resume_config(saved, _cfg(tmp_path, max_length=256), "checkpoint-2", note=print, positions=512)
    with pytest.raises(ConfigError, match=r"max_length \(512 -> 1024\)"):
        check_resume_config(saved, _cfg(tmp_path), "checkpoint-2", note=print, positions=None)
    assert capped_at_positions({"max_length": 300, "seed": 1}, 512) == {"max_length": 300, "seed": 1}
    assert capped_at_positions({"max_length": None, "seed": 1}, 512) == {"max_length": 512, "seed": 1}


def test_a_checkpoint_saved_before_optim_existed_resumes_as_adamw_torch_or_adamw_hf_and_refuses_sgd(tmp_path):
    """A preflab before `optim` was an option saved none (it popped a TRL config's adamw_torch / adamw_hf and built
    AdamW): resuming it with optim adamw_torch or adamw_hf is a noted change of option, not one of what the run
    computes; with sgd it is (another optimizer) and is refused."""
    saved = {k: v for k, v in _cfg(tmp_path).to_dict().items() if k != "optim"}
    for optim in ("adamw_torch", "adamw_hf"):
        notes = []
        check_resume_config(saved, _cfg(tmp_path, optim=optim), "checkpoint-2", note=notes.append)
        assert notes == [f"preflab: note: resuming with changed option(s): optim (None -> '{optim}')."]
    with pytest.raises(ConfigError, match=r"change what the run computes: optim \(None -> 'sgd'\)"):
        check_resume_config(saved, _cfg(tmp_path, optim="sgd"), "checkpoint-2", note=print)
