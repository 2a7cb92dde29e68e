"""transformers' TrainingArguments.full_determinism (a TRL config's), as transformers' Trainer applies it: the run
applies preflab.loops.launch.enable_full_determinism(seed) where it sets its seed (transformers' function written out:
importing it imports peft, tests/test_lazy_peft_imports.py), so torch's deterministic algorithms, cuDNN's
deterministic mode, the environment variables and the seeded generators are exactly transformers'; the run's weights
equal those of the same run without it (CPU: the algorithms were deterministic already). Refused where the run does
not set its own seed (recipe tasks, reward_head: multi_objective)."""
import random
import copy
import json
import os

import numpy as np
import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.sft import SFTTrainer
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

ENV = ("CUDA_LAUNCH_BLOCKING", "CUBLAS_WORKSPACE_CONFIG", "ASCEND_LAUNCH_BLOCKING", "HCCL_DETERMINISTIC",
       "FLASH_ATTENTION_DETERMINISTIC")


@pytest.fixture
def restore_determinism():
    saved = {k: os.environ.get(k) for k in ENV}
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[3])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[1], flags[2]
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _run(tmp_path, name, model, tok, **extra):
    data = tmp_path / "sft.jsonl"
    rows = [{"prompt": "the cat", "completion": " sat on the mat"}, {"prompt": "two plus three", "completion": " five"},
            {"text": "hello world"}, {"text": "a quick brown fox"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
                            "output_dir": str(tmp_path / name), "max_steps": 2, "per_device_train_batch_size": 2,
                            "learning_rate": 1e-2, "use_cpu": True, "save_steps": 0, "disable_tqdm": True, **extra})
    policy = copy.deepcopy(model)
    SFTTrainer(cfg, policy=policy, tokenizer=tok).train()
    return policy


def test_full_determinism_is_transformers_and_trains_the_same_weights(tmp_path, restore_determinism):
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    torch.use_deterministic_algorithms(False)
    plain = _run(tmp_path, "plain", model, tok)
    assert not torch.are_deterministic_algorithms_enabled()
    determined = _run(tmp_path, "full", model, tok, full_determinism=True)
    ours = {k: os.environ.get(k) for k in ENV}
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark
    # transformers' own function sets the same state
    for key in ENV:
        os.environ.pop(key, None)
    torch.use_deterministic_algorithms(False)
    from transformers.trainer_utils import enable_full_determinism

    enable_full_determinism(0)
    assert ours == {k: os.environ.get(k) for k in ENV} and ours["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    a, b = plain.state_dict(), determined.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], model.state_dict()[k]) for k in a)  # the runs trained


def _state_after(enable) -> dict:
    """Everything full determinism sets, after `enable(7)` from a cleared state: the environment, torch's and cuDNN's
    flags, and one draw of each generator the seed sets."""
    for key in ENV:
        os.environ.pop(key, None)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    enable(7)
    return {"env": {k: os.environ.get(k) for k in ENV}, "deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
            "draws": (random.random(), float(np.random.rand()), torch.rand(3).tolist())}


def test_preflabs_full_determinism_leaves_the_state_transformers_leaves(restore_determinism):
    """preflab's function, written out so that a run does not import transformers.trainer_utils (and peft through
    it), against transformers' own, from the same cleared state: the same environment, flags and seeded draws."""
    from transformers.trainer_utils import enable_full_determinism as transformers_full_determinism

    from preflab.loops.launch import enable_full_determinism

    ours = _state_after(enable_full_determinism)
    assert ours == _state_after(transformers_full_determinism)
    assert ours["env"]["CUBLAS_WORKSPACE_CONFIG"] == ":16:8" and ours["deterministic"] and not ours["warn_only"]
    assert ours["cudnn"] == (True, False)
    random.seed(7)
    assert ours["draws"][0] == random.random()  # seeded with the run's seed, not left as it was


def test_refused_where_the_run_does_not_seed_itself():
    with pytest.raises(ConfigError, match="full_determinism only applies to the runs that set their seed"):
        config_from_dict({"task": "reward", "reward_head": "multi_objective", "model_name_or_path":
                          "builtin:tiny-llama", "dataset_name": "x.jsonl", "full_determinism": True})


def test_a_later_run_without_full_determinism_says_it_inherits_the_process_wide_setting(tmp_path, capsys,
                                                                                        restore_determinism):
    """A notebook: run 1 with full_determinism: true leaves torch's deterministic algorithms on (process-wide, as
    transformers leaves them); run 2 without it ran with them silently. It now says so, and a run in a process
    without the setting says nothing."""
    from preflab.loops.launch import inherited_determinism_note

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    torch.use_deterministic_algorithms(False)
    _run(tmp_path, "plain", model, tok)
    assert "use_deterministic_algorithms is on" not in capsys.readouterr().out
    _run(tmp_path, "full", model, tok, full_determinism=True)
    assert "use_deterministic_algorithms is on" not in capsys.readouterr().out  # it asked for it
    _run(tmp_path, "after", model, tok)
    assert capsys.readouterr().out.count(inherited_determinism_note()) == 1
    assert torch.are_deterministic_algorithms_enabled()  # kept, as transformers keeps it
