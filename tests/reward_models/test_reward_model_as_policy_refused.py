"""A reward model given where a causal LM loads (a DPO / SFT / online run's model_name_or_path or reference, a policy
eval's model) is refused before any load, naming the option (preflab.models.load.check_not_a_reward_model):
AutoModelForCausalLM.from_pretrained built its backbone with a fresh random LM head and dropped the score head, and
`preflab train` trained that noise to the end (exit 0)."""
import json

import pytest
import yaml

from preflab.cli import main
from preflab.errors import ConfigError


def _want(option, path):  # the reward model: conftest's tiny_rm_dir
    return (f"{option}={str(path)!r} is a reward model (LlamaForSequenceClassification), not a causal language model: "
            "loaded as one, its score head is dropped and its LM head starts random. Give a policy (e.g. the model "
            "the reward model was trained from, its config.yaml's model_name_or_path); a reward model scores as a "
            "judge (reward_funcs, `preflab eval --reward-model`) or is evaluated with `preflab eval DIR --task "
            "reward`.")


def test_train_refuses_a_reward_model_as_the_policy_or_the_reference(tiny_rm_dir, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": "a b", "chosen": " good", "rejected": " bad"}) + "\n"
                            for _ in range(4)))
    for option in ("model_name_or_path", "ref_model_name_or_path"):
        config = tmp_path / f"{option}.yaml"
        config.write_text(yaml.safe_dump({"model_name_or_path": "builtin:tiny-llama", option: str(tiny_rm_dir),
                                          "dataset_name": str(data), "max_steps": 1, "eval_fraction": 0,
                                          "output_dir": str(tmp_path / option)}))
        assert main(["train", str(config)]) == 2  # the old code trained it: exit 0
        assert _want(option, tiny_rm_dir) in capsys.readouterr().err
        assert not (tmp_path / option / "config.yaml").exists()


def test_loading_a_reward_model_as_a_causal_lm_is_refused_and_a_policy_still_loads(tiny_rm_dir, tmp_path):
    from preflab.eval.loading import load_for_eval
    from preflab.models.load import load_causal_lm
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    with pytest.raises(ConfigError) as err:
        load_causal_lm(str(tiny_rm_dir), option="--reference")
    assert str(err.value) == _want("--reference", tiny_rm_dir)
    with pytest.raises(ConfigError) as err:  # `preflab eval` of a reward model without a run's config.yaml
        load_for_eval(str(tiny_rm_dir))
    assert str(err.value) == _want("model_name_or_path", tiny_rm_dir)
    tok = tiny_tokenizer()
    tiny_causal_lm(tok, hidden_size=16, num_layers=1).save_pretrained(tmp_path / "policy")
    assert load_causal_lm(str(tmp_path / "policy")).config.architectures == ["LlamaForCausalLM"]
