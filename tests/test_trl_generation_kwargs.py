"""TRL GRPOConfig's generation_kwargs (task: online), by TRL 1.16's rule: GRPOTrainer builds its generate()
settings from temperature, top_p, top_k, min_p, repetition_penalty and max_completion_length (as max_new_tokens),
then applies generation_kwargs over them. The keys preflab has become its options with the value TRL's update gives;
do_sample: false and every other generate() argument are refused naming them; other tasks still refuse the key."""
import json

import pytest

from preflab.config import config_from_dict
from preflab.errors import ConfigError

ONLINE = {"task": "online", "trainer": "grpo", "max_steps": 2, "model_name_or_path": "builtin:tiny-llama",
          "dataset_name": "d.jsonl", "reward_funcs": "demo_true_reward"}
SAMPLER = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_completion_length")


def _trl_generation_settings(args: dict, kwargs: dict) -> dict:
    """The settings GRPOTrainer.__init__ (transformers path) passes to GenerationConfig: its dict from the config's
    fields, updated with generation_kwargs (trl/trainer/grpo_trainer.py)."""
    settings = {"max_new_tokens": args["max_completion_length"], "do_sample": True,
                **{k: args[k] for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")}}
    settings.update(kwargs)
    return settings


@pytest.mark.parametrize("kwargs", [
    {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 48, "do_sample": True},
    {"top_k": 0, "temperature": 1.3},
])
def test_sampler_settings_equal_trls_update(kwargs, capsys):
    """Each sampler option ends at the value TRL's GenerationConfig gets (the option's, or generation_kwargs' when
    given); a replaced value is noted; the JSON-string form (TrainingArguments' command line) gives the same."""
    pytest.importorskip("trl")
    from trl import GRPOConfig

    fields = {"temperature": 0.9, "top_p": 0.95, "top_k": 5, "min_p": None, "repetition_penalty": 1.0,
              "max_completion_length": 32}
    defaults = {k: v for k, v in GRPOConfig(output_dir="unused", bf16=False).to_dict().items() if k in SAMPLER}
    assert set(defaults) == set(SAMPLER)  # every option compared here is a GRPOConfig field
    trl = _trl_generation_settings(fields, kwargs)
    cfg = config_from_dict({**ONLINE, **fields, "generation_kwargs": kwargs})
    ours = {"max_new_tokens": cfg.max_completion_length, "do_sample": True,
            **{k: getattr(cfg, k) for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")}}
    assert ours == trl
    before = {**fields, "max_new_tokens": fields["max_completion_length"]}
    replaced = [k for k in kwargs if k != "do_sample" and before[k] is not None and trl[k] != before[k]]
    said = capsys.readouterr()
    assert replaced and all(f"generation_kwargs {k}:" in said.out + said.err for k in replaced)
    again = config_from_dict({**ONLINE, **fields, "generation_kwargs": json.dumps(kwargs)})
    assert {k: getattr(again, k) for k in SAMPLER} == {k: getattr(cfg, k) for k in SAMPLER}


def test_other_generate_arguments_and_tasks_are_refused():
    with pytest.raises(ConfigError, match="generation_kwargs num_beams, stop_strings: preflab samples"):
        config_from_dict({**ONLINE, "generation_kwargs": {"num_beams": 4, "stop_strings": ["\n"], "top_k": 3}})
    with pytest.raises(ConfigError, match="generation_kwargs do_sample: false: .* remove it"):
        config_from_dict({**ONLINE, "generation_kwargs": {"do_sample": False}})
    with pytest.raises(ConfigError, match="generation_kwargs is not valid JSON"):
        config_from_dict({**ONLINE, "generation_kwargs": "{top_k: 3"})
    with pytest.raises(ConfigError, match="generation_kwargs is not supported"):  # no generation in task: dpo
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl",
                          "generation_kwargs": {"top_k": 3}})
    cfg = config_from_dict({**ONLINE, "generation_kwargs": {}})  # GRPOConfig's empty mapping: nothing asked
    assert (cfg.top_k, cfg.temperature) == (0, 1.0)
