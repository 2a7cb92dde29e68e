"""YAML configs: safe loading, bounded aliases, duplicate keys refused (issue 18.12, 18.16)."""
import re
import time

import pytest

from preflab.config import config_from_dict, load_config, parse_override
from preflab.errors import ConfigError

HEAD = "model_name_or_path: builtin:tiny-llama\ndataset_name: d.jsonl\n"


def bomb(levels: int) -> str:
    """The billion-laughs shape: each level is a list of nine aliases of the level below."""
    lines = ['a0: &a0 ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "x", "y"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nlora_target_modules: *a{levels}\n"


def test_alias_bomb_is_refused_quickly(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(HEAD + bomb(9))  # 82 aliases, 9**10 strings once expanded
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to about"):
        load_config(path)
    assert time.perf_counter() - started < 5


def test_bomb_inside_one_option_is_refused_by_its_size(tmp_path):
    items = ["  - &b1 [x, y, x, y, x, y, x, y]"]
    items += [f"  - &b{i} [" + ", ".join([f"*b{i - 1}"] * 8) + "]" for i in range(2, 7)]  # 40 aliases
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "lora_target_modules:\n" + "\n".join(items) + "\n")
    with pytest.raises(ConfigError, match="option 'lora_target_modules' expands to about"):
        load_config(path)


def test_too_many_aliases_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "x: &x 1\nlora_target_modules: [" + ", ".join(["*x"] * 150) + "]\n")
    with pytest.raises(ConfigError, match="more than 100 YAML aliases"):
        load_config(path)


def test_a_few_aliases_still_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "dataset_split: &s train_prefs\neval_split: *s\n")
    assert load_config(path).eval_split == "train_prefs"


def test_duplicate_key_is_an_error_naming_key_and_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "beta: 0.1\nlearning_rate: 1.0e-6\nbeta: 0.5\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'beta' \(lines 3 and 5\)"):
        load_config(path)


def test_nested_duplicate_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "objective_params:\n  gamma: 1\n  gamma: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'gamma'"):
        load_config(path)


def test_tags_still_refused_in_file_and_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "beta: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert parse_override("beta=!!python/object/apply:os.getcwd []")[1] == "!!python/object/apply:os.getcwd []"


@pytest.mark.parametrize("override, shown", [("learning_rate=inf", "learning_rate=inf"),
                                             ("beta=nan", "beta=nan"), ("beta=1e400", "beta=inf"),
                                             ("beta=-.inf", "beta=-inf"), ("max_grad_norm=nan", "max_grad_norm=nan")])
def test_a_value_that_is_not_finite_is_refused(override, shown):
    """learning_rate=inf passed `> 0` and trained; beta=1e400 became inf without a word."""
    with pytest.raises(ConfigError, match=f"^{re.escape(shown)} is not allowed: {override.split('=')[0]} must be "
                                          r"finite \(nan, \.inf and literals too large"):
        load_config("examples/quickstart.yaml", [override])


def test_max_grad_norm_inf_still_means_measure_without_clipping():
    assert load_config("examples/quickstart.yaml", ["max_grad_norm=inf"]).max_grad_norm == float("inf")


def test_the_same_override_twice_with_two_values_is_said(capsys):
    """beta=0.2 beta=0.3 trained with 0.3 and no word. The last one still wins (argparse's rule, which TRL's
    HfArgumentParser follows, and scripts that append to a common set of overrides rely on), and it is said; the
    same value twice says nothing."""
    assert load_config("examples/quickstart.yaml", ["beta=0.2", "max_steps=3", "beta=0.3"]).beta == 0.3
    assert "preflab: note: overrides 'beta=0.2' and 'beta=0.3' set beta twice; the last one wins." in \
        capsys.readouterr().out
    assert load_config("examples/quickstart.yaml", ["beta=0.2", "beta=0.2"]).beta == 0.2
    assert "twice" not in capsys.readouterr().out


def test_quoted_numbers_in_yaml_are_read_as_trls_parser_reads_them(tmp_path):
    """`beta: "0.2"` was read as 0.2 but `max_steps: "2"` refused. TRL's TrlParser makes a YAML config's values
    argparse defaults, which argparse converts with the option's type when they are text: "0.2" -> 0.2, "2" -> 2,
    "2.5" for an int refused (int('2.5') fails)."""
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + 'beta: "0.2"\nmax_steps: "2"\nseed: " 7"\nlearning_rate: "1e-6"\n')
    cfg = load_config(path)
    assert (cfg.beta, cfg.max_steps, cfg.seed, cfg.learning_rate) == (0.2, 2, 7, 1e-6)
    assert type(cfg.max_steps) is int and type(cfg.beta) is float
    for bad in ('"2.5"', '"ten"', '""'):
        path.write_text(HEAD + f"max_steps: {bad}\n")
        with pytest.raises(ConfigError, match=r"max_steps must be int, got '"):
            load_config(path)
    assert load_config("examples/quickstart.yaml", ["max_steps=3"]).max_steps == 3


def test_quoted_booleans_in_yaml_are_read_as_trls_parser_reads_them(tmp_path):
    """`use_cpu: "true"` and `bf16: "false"` were refused ("must be bool"). TRL's parser (HfArgumentParser) gives a
    bool option the type string_to_bool, which reads yes/true/t/y/1 and no/false/f/n/0 in any case: each spelling is
    read to the value transformers' string_to_bool gives; other text is refused naming the option and the value."""
    from transformers.hf_argparser import string_to_bool

    path = tmp_path / "c.yaml"
    for text in ("true", "TRUE", "yes", "Y", "t", "1", "false", "False", "no", "N", "f", "0"):
        path.write_text(HEAD + f'use_cpu: "{text}"\ndisable_tqdm: "{text}"\n')
        cfg = load_config(path)
        assert cfg.use_cpu is string_to_bool(text) and cfg.disable_tqdm is string_to_bool(text), text
    for bad in ('"maybe"', '"on"', '""', '" true"'):
        path.write_text(HEAD + f"use_cpu: {bad}\n")
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert str(err.value) == (f"use_cpu must be bool, got {bad.replace(chr(34), chr(39))} (str); as text, TRL's "
                                  f"parser reads true/false, yes/no, t/f, y/n and 1/0 (any case), set in {path}."), \
            str(err.value)
    assert load_config("examples/quickstart.yaml", ["use_cpu=yes"]).use_cpu is True


def test_a_type_error_names_the_file_or_the_override_that_set_the_value(tmp_path):
    """user-trial-9: `max_steps: 10.0` in a config file and `max_steps=2.5` on the command line both gave
    "max_steps must be int, got ... (float)." with no word of where the value was written; each now says it (the
    last override of a key wins, so it is the one named), and several errors are each given their own source."""
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "max_steps: 10.0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"max_steps must be int, got 10.0 (float), set in {path}."
    with pytest.raises(ConfigError) as err:
        load_config(path, ["max_steps=3", "max_steps=2.5", "beta=abc"])
    assert str(err.value) == ("max_steps must be int, got 2.5 (float), set by the override 'max_steps=2.5'.\n"
                              "beta must be float, got 'abc' (str), set by the override 'beta=abc'.")
    assert load_config(path, ["max_steps=3"]).max_steps == 3  # the override replaces the file's bad value
    with pytest.raises(ConfigError) as err:  # a dict from Python has no file to name: the message as before
        config_from_dict({"model_name_or_path": "m", "dataset_name": "d", "max_steps": 2.5})
    assert str(err.value) == "max_steps must be int, got 2.5 (float)."
