"""preflab.eval.loading's decisions (and preflab.models.run_config.run_seed's) on hand-made run folders: the seed of a builtin model (--seed 0 included), which
model is a run's reference, the tokenizer check, an adapter's base named with ~, an interrupted run's advice and a
LoRA checkpoint's null options."""
import json

import pytest
import yaml

from preflab.errors import ConfigError, PreflabError
from preflab.config_defaults import DEFAULT_SEED
from preflab.eval.loading import _base_name, check_same_tokenizer, load_for_eval, lora_options, run_reference
from preflab.models.run_config import run_seed


def test_run_seed_is_the_flag_then_the_runs_then_trains_default():
    assert run_seed({"seed": 7}, 0) == 0  # --seed 0 is a seed, not "no seed"
    assert run_seed({"seed": 7}, 5) == 5 and run_seed({"seed": 7}) == 7
    assert run_seed({}) == DEFAULT_SEED == 42


def _run(folder, **cfg):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def test_a_runs_reference_is_its_ref_model_before_its_starting_policy(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    run = _run(tmp_path / "run", task="dpo", model_name_or_path="builtin:tiny-llama", ref_model_name_or_path=str(ref))
    assert run_reference(str(run)) == (str(ref), "ref_model_name_or_path")
    plain = _run(tmp_path / "plain", task="dpo", model_name_or_path="builtin:tiny-llama")
    assert run_reference(str(plain)) == ("builtin:tiny-llama", "model_name_or_path")
    reward = _run(tmp_path / "rm", task="reward", model_name_or_path="builtin:tiny-llama")
    assert run_reference(str(reward)) is None  # not a text policy


class _Tok:
    def __init__(self, vocab, eos):
        self.vocab, self.eos_token_id = vocab, eos

    def get_vocab(self):
        return dict(self.vocab)

    def __len__(self):
        return len(self.vocab)


def test_a_reference_tokenizer_with_another_eos_is_refused():
    vocab = {"a": 0, "b": 1, "</s>": 2}
    check_same_tokenizer("ref", _Tok(vocab, 2), _Tok(vocab, 2))
    with pytest.raises(ConfigError, match="EOS id 1 vs 2"):
        check_same_tokenizer("ref", _Tok(vocab, 1), _Tok(vocab, 2))


def test_an_adapters_base_under_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "base").mkdir()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "~/base"}))
    assert _base_name({}, adapter) == str(tmp_path / "base")


def test_an_interrupted_run_is_advised_to_evaluate_its_newest_checkpoint(tmp_path):
    run = _run(tmp_path / "run", task="dpo", model_name_or_path="builtin:tiny-llama")
    for step in (2, 10, 9):
        (run / f"checkpoint-{step}").mkdir()
    with pytest.raises(PreflabError) as err:
        load_for_eval(str(run))
    assert f"`preflab eval {run / 'checkpoint-10'} --data" in str(err.value)


def test_a_null_lora_option_is_trainconfigs_default():
    options = lora_options({"lora_r": 4, "lora_dropout": None})
    assert options["lora_r"] == 4 and options["lora_dropout"] == 0.05
