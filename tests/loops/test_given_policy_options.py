"""Loading options on a policy passed from Python (Trainer(cfg, policy=...), OnlineRun(cfg, policy=...)): preflab
applies use_peft and load_in_4bit / load_in_8bit only to a model it loads; on a given policy they were accepted and
not applied (a use_peft run trained every weight). They are now checked against the policy (4/8-bit needs a CUDA
GPU: not tested here)."""
import pytest

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.offline import Trainer
from preflab.models.load import add_lora
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.online.run import OnlineRun

PAIRS = [{"prompt": "the cat sat on", "chosen": " the mat", "rejected": " a dog"},
         {"prompt": "hello world ,", "chosen": " preference", "rejected": " the cat"}]


def _cfg(tmp_path, **kw):
    return config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "unused",
                             "output_dir": str(tmp_path), "max_steps": 1, "use_cpu": True, "disable_tqdm": True,
                             "per_device_train_batch_size": 2, **kw})


def test_use_peft_on_a_given_policy_without_adapters_is_refused(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(ConfigError, match=r"use_peft: true, but the policy passed from Python has no LoRA adapters"):
        Trainer(_cfg(tmp_path, use_peft=True), policy=tiny_causal_lm(tok), tokenizer=tok, train_data=PAIRS)
    lora = add_lora(tiny_causal_lm(tok), 4, 8, 0.0, ["q_proj", "v_proj"])
    run = Trainer(_cfg(tmp_path, use_peft=True), policy=lora, tokenizer=tok, train_data=PAIRS)
    assert run.lora and run.ref_is_base


def test_online_run_checks_a_given_policy_too(tmp_path):
    tok = tiny_tokenizer()
    cfg = config_from_dict({"task": "online", "online_task": "demo", "trainer": "grpo", "use_peft": True,
                            "model_name_or_path": "builtin:tiny-llama", "output_dir": str(tmp_path), "max_steps": 1,
                            "use_cpu": True, "disable_tqdm": True})
    with pytest.raises(ConfigError, match=r"use_peft: true, but the policy passed from Python has no LoRA adapters"):
        OnlineRun(cfg, policy=tiny_causal_lm(tok), tokenizer=tok)
