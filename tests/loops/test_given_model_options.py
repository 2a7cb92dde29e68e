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


# the reward trainer and the diffusion trainer run the same check (preflab.models.given) over the options that
# apply to them: they add LoRA adapters to a given model under use_peft, and have no reference model
RM = dict(task="reward", model_name_or_path="builtin:tiny-llama", dataset_name="/no/such/data.jsonl",
          max_steps=1, disable_tqdm=True, use_cpu=True, save_strategy="no")
REWARD_REFUSED = [
    ({"load_dtype": "bfloat16"}, "load_dtype: bfloat16: the reward model given from Python has float32 weights"),
    ({"model_init_kwargs": {"revision": "main"}, "model_name_or_path": "someone/a-model"},
     "model_init_kwargs: {'revision': 'main'} are from_pretrained arguments and preflab loads no model when the "
     "reward model is given from Python. Load the reward model with them, or drop model_init_kwargs."),
    ({"allow_pickle": True}, "allow_pickle: preflab loads no model when the reward model is given from Python, so no "
                             "weights are read. Drop allow_pickle."),
    ({"trust_remote_code": True}, "trust_remote_code: preflab loads no model when the reward model is given from "
                                  "Python and the tokenizer was given too"),
    ({"allow_pickle": True, "reward_head": "multi_objective", "reward_head_params": {"attributes": ["a", "b"]}},
     "allow_pickle: preflab loads no model when the reward model is given from Python"),
]


@pytest.mark.parametrize("options,refusal", REWARD_REFUSED, ids=["load_dtype", "model_init_kwargs", "allow_pickle",
                                                                 "trust_remote_code", "multi_objective"])
def test_a_loading_option_beside_a_reward_model_given_from_python_is_refused(tmp_path, options, refusal):
    """train_reward(cfg, model=...) read no data yet: the refusal comes first (the data path does not exist)."""
    from preflab.reward_models.heads import build_reward_model
    from preflab.reward_models.train import train_reward

    tok = tiny_tokenizer()
    cfg = config_from_dict({**RM, "output_dir": str(tmp_path), **options})
    with pytest.raises(ConfigError, match="options that apply only to a model preflab loads") as err:
        train_reward(cfg, model=build_reward_model("builtin:tiny-llama", 1, tok, seed=0), tokenizer=tok)
    assert f"\n  {refusal}" in str(err.value), str(err.value)
    assert str(err.value).count("\n  ") == 1


def test_use_peft_adds_adapters_to_a_given_reward_model_and_a_given_peft_one_keeps_its_own(tmp_path):
    """use_peft beside a given reward model without adapters is carried out (LoRA added, as to a loaded one); a given
    PEFT reward model trains its own adapters (not wrapped twice) when lora_* describe them, and is refused when
    they differ."""
    from peft import LoraConfig, get_peft_model

    from preflab.reward_models.heads import build_reward_model
    from preflab.reward_models.train import check_given_reward_model, reward_model_for_run

    tok = tiny_tokenizer()
    cfg = config_from_dict({**RM, "output_dir": str(tmp_path), **LORA})
    plain = build_reward_model("builtin:tiny-llama", 1, tok, seed=0)
    check_given_reward_model(cfg, plain, tok)
    wrapped = reward_model_for_run(cfg, 1, tok, plain)
    assert wrapped.peft_config["default"].r == 4 and wrapped.get_base_model() is plain
    peft_model = get_peft_model(build_reward_model("builtin:tiny-llama", 1, tok, seed=0),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS"))
    check_given_reward_model(cfg, peft_model, tok)
    assert reward_model_for_run(cfg, 1, tok, peft_model) is peft_model
    with pytest.raises(ConfigError, match=r"\n  lora_r, lora_alpha: preflab loads no model when the reward model is "
                                          r"given from Python, .* the given reward model's own adapters differ"):
        check_given_reward_model(config_from_dict({**RM, "output_dir": str(tmp_path), **LORA, "lora_r": 8,
                                                   "lora_alpha": 16}), peft_model, tok)


def test_a_loading_option_beside_a_diffusion_pipeline_given_from_python_is_refused(tmp_path):
    """DiffusionRun(cfg, pipeline=...): allow_pickle and trust_remote_code act only in load_pipeline, so beside a
    given pipeline they are refused; a pipeline load_pipeline made (preflab eval --task diffusion hands one on) is
    not checked."""
    from preflab.diffusion.pipeline import load_pipeline, tiny_text_to_image_pipeline
    from preflab.loops.diffusion import DiffusionRun

    raw = dict(task="diffusion", model_name_or_path="builtin:tiny-sd", dataset_name=str(tmp_path / "no-such-data"),
               loss_type="diffusion_dpo", resolution=16, max_steps=1, use_cpu=True, disable_tqdm=True,
               output_dir=str(tmp_path / "run"), allow_pickle=True, trust_remote_code=True)
    with pytest.raises(ConfigError, match="options that apply only to a model preflab loads") as err:
        DiffusionRun(config_from_dict(raw), pipeline=tiny_text_to_image_pipeline(0))
    assert str(err.value).split("\n  ")[1:] == [
        "allow_pickle: preflab loads no model when the pipeline is given from Python, so no weights are read. Drop "
        "allow_pickle.",
        "trust_remote_code: preflab loads no model when the pipeline is given from Python and the tokenizer was given "
        "too, so no code is loaded. Drop trust_remote_code."]
    with pytest.raises(Exception) as err:  # past the check: the missing data is what stops it
        DiffusionRun(config_from_dict(raw), pipeline=load_pipeline("builtin:tiny-sd"))
    assert "no-such-data" in str(err.value) and "options that apply only" not in str(err.value)


def test_lora_target_modules_all_linear_or_a_reordered_list_matches_a_given_peft_policy(tmp_path):
    """peft stores target_modules as a set, and "all-linear" resolved to the module paths it picked (not the string):
    a list naming the modules "all-linear" picked, in any order, describes adapters made with "all-linear" (it was
    refused as "differs": the names were compared with peft's stored paths); a list naming fewer modules does not
    (refused). lora_target_modules at its default ("all-linear") is compared only when written."""
    from peft import LoraConfig, get_peft_model

    from preflab.reward_models.heads import build_reward_model
    from preflab.reward_models.train import check_given_reward_model

    tok = tiny_tokenizer()
    all_linear = add_lora(tiny_causal_lm(tok, seed=0), 4, 8, 0.0, "all-linear")
    assert isinstance(all_linear.peft_config["default"].target_modules, set)  # what peft stores: resolved paths
    lora = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    assert _trainer(tmp_path, all_linear, None, **lora, lora_target_modules="all-linear").policy is all_linear
    every = ["up_proj", "down_proj", "gate_proj", "o_proj", "v_proj", "k_proj", "q_proj"]
    assert _trainer(tmp_path, all_linear, None, **lora, lora_target_modules=every).policy is all_linear
    two = add_lora(tiny_causal_lm(tok, seed=0), 4, 8, 0.0, ["v_proj", "q_proj"])
    assert _trainer(tmp_path, two, None, **lora, lora_target_modules=["q_proj", "v_proj"]).policy is two
    with pytest.raises(ConfigError, match=r"\n  lora_target_modules: preflab loads no model .* own adapters differ"):
        _trainer(tmp_path, all_linear, None, **lora, lora_target_modules=["q_proj", "v_proj"])
    # a reward model's adapters made with "all-linear" leave out the score head (peft's modules_to_save): the list
    # of the seven projections names the same modules
    rm = get_peft_model(build_reward_model("builtin:tiny-llama", 1, tok, seed=0),
                        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="SEQ_CLS"))
    check_given_reward_model(config_from_dict({**RM, "output_dir": str(tmp_path), **lora,
                                               "lora_target_modules": every}), rm, tok)
    with pytest.raises(ConfigError, match=r"\n  lora_target_modules: preflab loads no model .* own adapters differ"):
        check_given_reward_model(config_from_dict({**RM, "output_dir": str(tmp_path), **lora,
                                                   "lora_target_modules": every[:-1]}), rm, tok)


@pytest.mark.parametrize("helper", ["_maybe_include_all_linear_layers", "check_target_module_exists"])
def test_lora_target_modules_beside_a_given_peft_policy_fails_loudly_without_peft_s_target_rule(tmp_path,
                                                                                                  monkeypatch, helper):
    """The comparison resolves lora_target_modules with peft's private _maybe_include_all_linear_layers (peft 0.21
    has no public equivalent that leaves the model as it is) and its check_target_module_exists. A peft without one
    of them was an ImportError from inside the check; now it is a PreflabError naming the helper and peft's version,
    before anything is compared."""
    import peft
    import peft.tuners.tuners_utils as tuners_utils

    from preflab.errors import PreflabError

    tok = tiny_tokenizer()
    policy = add_lora(tiny_causal_lm(tok, seed=0), 4, 8, 0.0, "all-linear")
    monkeypatch.delattr(tuners_utils, helper)
    want = (rf"peft {peft.__version__} has no peft\.tuners\.tuners_utils\.{helper}, which preflab uses to resolve "
            r"lora_target_modules")
    with pytest.raises(PreflabError, match=want):
        _trainer(tmp_path, policy, None, use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                 lora_target_modules=["q_proj", "v_proj"])  # set: compared (the default is not)


def test_a_lora_option_written_at_its_default_is_compared_with_a_given_policys_adapters(tmp_path):
    """lora_r: 16 (its default) written beside a given policy whose adapters have r = 8 described adapters the run
    does not train with, and was accepted unmentioned (only options away from their default were compared); a
    written option is compared at any value (TrainConfig.written_options)."""
    tok = tiny_tokenizer()
    policy = add_lora(tiny_causal_lm(tok, seed=0), 8, 8, 0.0, ["q_proj", "v_proj"])
    lora = dict(use_peft=True, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"])
    assert _trainer(tmp_path, policy, None, **lora).policy is policy
    with pytest.raises(ConfigError, match=r"\n  lora_r: preflab loads no model when the policy is given from Python, "
                                          r"and the LoRA options shape .* own adapters differ"):
        _trainer(tmp_path, policy, None, **lora, lora_r=16)


def test_use_rslora_use_dora_and_modules_to_save_are_compared_with_a_given_policys_adapters(tmp_path):
    """TRL ModelConfig's use_rslora / use_dora / lora_modules_to_save beside a given PEFT policy: the same as its
    adapters' is accepted, another value refused naming the option (as for lora_r)."""
    tok = tiny_tokenizer()
    policy = add_lora(tiny_causal_lm(tok, seed=0), 4, 8, 0.0, ["q_proj", "v_proj"], use_rslora=True, use_dora=True,
                      modules_to_save=["lm_head"])
    lora = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"])
    same = dict(use_rslora=True, use_dora=True, lora_modules_to_save=["lm_head"])
    assert _trainer(tmp_path, policy, None, **lora, **same).policy is policy
    with pytest.raises(ConfigError, match=r"\n  use_rslora, use_dora, lora_modules_to_save: preflab loads no model"):
        _trainer(tmp_path, add_lora(tiny_causal_lm(tok, seed=0), 4, 8, 0.0, ["q_proj", "v_proj"]), None, **lora,
                 **same)
