"""Loading options beside a model given from Python (preflab.models.given): preflab loads no model then, so
load_dtype, model_init_kwargs, load_in_4bit / load_in_8bit, use_peft and the LoRA options, ref_model_name_or_path,
ref_load_dtype, allow_pickle and trust_remote_code were accepted and silently ignored. Each is now refused naming
the option (or accepted where the given object already is what it asks for), in the offline Trainer and OnlineRun;
a recipe stage handed a model preflab loaded itself is not checked."""
import sys
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.loops.offline import Trainer
from preflab.models.load import add_lora, frozen_copy, load_causal_lm
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.online.run import OnlineRun

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import synthetic_pairs  # noqa: E402

BASE = dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", per_device_train_batch_size=4,
            max_steps=1, disable_tqdm=True, use_cpu=True, save_strategy="no")
LORA = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"])

# option values -> the start of the refusal's line (the option named first); model_init_kwargs beside a builtin:
# name are refused by the config itself (models.load.builtin_init_kwargs_conflicts), so those rows name hub models
REFUSED = [
    ({"load_dtype": "bfloat16"}, "load_dtype: bfloat16: the policy given from Python has float32 weights"),
    ({"model_init_kwargs": {"revision": "main"}, "model_name_or_path": "someone/a-model"}, "model_init_kwargs: {'revision': 'main'} are from_pretrained"),
    ({"load_in_4bit": True, **LORA, "model_name_or_path": "someone/a-model"},
     "load_in_4bit: preflab loads no model when the policy is given from Python"),
    ({"use_peft": True}, "use_peft: preflab loads no model when the policy is given from Python"),
    ({"ref_model_name_or_path": "builtin:tiny-llama", "no_ref": True}, "ref_model_name_or_path: preflab loads no"),
    ({"ref_model_name_or_path": "someone/a-ref", "ref_model_init_kwargs": {"revision": "main"}},
     "ref_model_init_kwargs: {'revision': 'main'} are from_pretrained arguments"),
    ({"ref_load_dtype": "bfloat16"}, "ref_load_dtype: bfloat16: the reference given from Python has float32"),
    ({"allow_pickle": True}, "allow_pickle: preflab loads no model when the policy is given from Python"),
    ({"trust_remote_code": True}, "trust_remote_code: preflab loads no model when the policy is given from Python"),
]


def _trainer(tmp_path, policy, ref, **options):
    cfg = config_from_dict({**BASE, "output_dir": str(tmp_path), **options})
    return Trainer(cfg, policy=policy, ref=ref, tokenizer=tiny_tokenizer(), train_data=synthetic_pairs(8))


@pytest.mark.parametrize("options,refusal", REFUSED, ids=[r.split(":")[0] for _, r in REFUSED])
def test_a_loading_option_beside_a_given_policy_is_refused(tmp_path, options, refusal):
    options = dict(options)
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    if "lora_r" in options:  # load_in_4bit needs use_peft: a policy with the adapters it describes
        policy = add_lora(policy, 4, 8, 0.05, ["q_proj", "v_proj"])
    ref = None if options.pop("no_ref", False) else frozen_copy(tiny_causal_lm(tok, seed=1))
    with pytest.raises(ConfigError, match="options that apply only to a model preflab loads") as err:
        _trainer(tmp_path, policy, ref, **options)
    assert f"\n  {refusal}" in str(err.value), str(err.value)
    assert str(err.value).count("\n  ") == 1  # only that option


def test_given_models_already_in_the_load_dtype_and_with_the_lora_adapters_are_accepted(tmp_path):
    """load_dtype / ref_load_dtype of the given models' own dtype are carried out already; LoRA options that made
    the given policy's adapters describe them; a different adapter shape, or ref_load_dtype with no reference, is
    refused."""
    tok = tiny_tokenizer()
    policy, ref = tiny_causal_lm(tok, seed=0).to(torch.bfloat16), frozen_copy(tiny_causal_lm(tok, seed=1))
    trainer = _trainer(tmp_path, policy, ref.to(torch.bfloat16), load_dtype="bfloat16", ref_load_dtype="bfloat16")
    assert trainer.policy is policy
    lora_policy = add_lora(tiny_causal_lm(tok, seed=0), 4, 8, 0.0, ["q_proj", "v_proj"])
    assert _trainer(tmp_path, lora_policy, None, **LORA).ref_is_base
    # ref_model_name_or_path beside a given reference records where it comes from (the VLM demo's eval reads it)
    assert _trainer(tmp_path, policy, ref, ref_model_name_or_path="builtin:tiny-llama").ref is ref
    with pytest.raises(ConfigError, match=r"\n  lora_r: preflab loads no model .* the given policy's own adapters "
                                          r"differ"):
        _trainer(tmp_path, add_lora(tiny_causal_lm(tok, seed=0), 8, 8, 0.0, ["q_proj", "v_proj"]), None, **LORA)
    with pytest.raises(ConfigError, match=r"\n  ref_load_dtype: float32: .* none was given"):
        _trainer(tmp_path, tiny_causal_lm(tok, seed=0), None, ref_load_dtype="float32")


def test_a_model_preflab_loaded_is_handed_on_without_the_check(tmp_path):
    """A recipe's stage gets the model preflab loaded with the run's options (load_causal_lm tags it, frozen_copy
    and LoRA wrapping keep the tag): not refused, though the options were applied when it was loaded."""
    tok = tiny_tokenizer()
    policy = load_causal_lm("builtin:tiny-llama", "bfloat16", tokenizer=tok)
    trainer = _trainer(tmp_path, policy, frozen_copy(policy), load_dtype="float16", allow_pickle=True)
    assert trainer.policy is policy


def test_a_loading_option_beside_a_policy_given_to_an_online_run_is_refused(tmp_path):
    from preflab.online.tasks import Task

    tok = tiny_tokenizer("char")
    cfg = config_from_dict(dict(task="online", trainer="online_dpo", online_task="dataset", dataset_name="unused",
                                reward_funcs="x", model_name_or_path="someone/a-model", max_steps=1,
                                num_generations=2, prompts_per_generation=2, max_completion_length=3,
                                disable_tqdm=True, use_cpu=True, output_dir=str(tmp_path),
                                model_init_kwargs={"revision": "main"}))
    with pytest.raises(ConfigError, match=r"\n  model_init_kwargs: \{'revision': 'main'\} are from_pretrained"):
        OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=16, num_layers=1, seed=1), tokenizer=tok,
                  task=Task(["say a\n", "say b\n"], [lambda prompts, completions, **kw: [1.0] * len(completions)]))
