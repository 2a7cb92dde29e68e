"""A reward model given where a causal LM loads (a DPO / SFT / online run's model_name_or_path or reference, a policy
eval's model) is refused before any load, naming the option (preflab.models.load.check_not_a_reward_model):
AutoModelForCausalLM.from_pretrained built its backbone with a fresh random LM head and dropped the score head, and
`preflab train` trained that noise to the end (exit 0)."""
import json

import pytest
import yaml

from preflab.cli import main
from preflab.errors import ConfigError


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models.heads import build_reward_model, set_reward_config

    path = tmp_path_factory.mktemp("rm")
    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-llama", 1, tok, seed=0)
    set_reward_config(model, {"head": "bt", "tau": 1.0})
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def _want(option, path):
    return (f"{option}={str(path)!r} is a reward model (LlamaForSequenceClassification), not a causal language model: "
            "loaded as one, its score head is dropped and its LM head starts random. Give a policy (e.g. the model "
            "the reward model was trained from, its config.yaml's model_name_or_path); a reward model scores as a "
            "judge (reward_funcs, `preflab eval --reward-model`) or is evaluated with `preflab eval DIR --task "
            "reward`.")


def test_train_refuses_a_reward_model_as_the_policy_or_the_reference(reward_dir, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": "a b", "chosen": " good", "rejected": " bad"}) + "\n"
                            for _ in range(4)))
    for option in ("model_name_or_path", "ref_model_name_or_path"):
        config = tmp_path / f"{option}.yaml"
        config.write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama", option: str(reward_dir),
                                          "dataset_name": str(data), "max_steps": 1, "eval_fraction": 0,
                                          "output_dir": str(tmp_path / option)}))
        assert main(["train", str(config)]) == 2  # the old code trained it: exit 0
        assert _want(option, reward_dir) in capsys.readouterr().err
        assert not (tmp_path / option / "config.yaml").exists()


def test_loading_a_reward_model_as_a_causal_lm_is_refused_and_a_policy_still_loads(reward_dir, tmp_path):
    from preflab.eval.loading import load_for_eval
    from preflab.models.load import load_causal_lm
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    with pytest.raises(ConfigError) as err:
        load_causal_lm(str(reward_dir), option="--reference")
    assert str(err.value) == _want("--reference", reward_dir)
    with pytest.raises(ConfigError) as err:  # `preflab eval` of a reward model without a run's config.yaml
        load_for_eval(str(reward_dir))
    assert str(err.value) == _want("model_name_or_path", reward_dir)
    tok = tiny_tokenizer()
    tiny_causal_lm(tok, hidden_size=16, num_layers=1).save_pretrained(tmp_path / "policy")
    assert load_causal_lm(str(tmp_path / "policy")).config.architectures == ["LlamaForCausalLM"]
