"""dataset_config (TRL's ScriptArguments.dataset_config, datasets' `name`: load_dataset(NAME, CONFIG)) and
eval_dataset_config: every reader reads the chosen configuration through preflab.data.configured_source.

Offline, a hub dataset's configurations are a local folder whose README.md front matter declares `configs:` (as a
downloaded hub dataset's card does): configuration 'a' and 'b' hold different rows, 'a_again' lists a's files once
more, 'c' gives a data_dir. Checked: the rows read are exactly the configuration's (equal to reading its files
directly, and to datasets.load_dataset(folder, config)), for DPO pairs, reward pairs, online prompts and the
streaming reader; the tokenization cache never serves one configuration's items to another; an unknown
configuration names the ones there are; a configuration of a plain file (which datasets ignores), a glob, a
save_to_disk folder, a folder without configurations, or rows from Python is refused naming the option; the option
through YAML, key=value, TRL's names and the saved config.yaml."""
import json
from types import SimpleNamespace

import pytest

from preflab.config import config_from_dict, config_with_overrides, load_config, preflight
from preflab.data.configured_source import ConfiguredSource, eval_source, training_source
from preflab.data.rows import load_rows
from preflab.errors import ConfigError, DataError
from preflab.models.tiny import tiny_tokenizer

ROWS = {  # configuration -> split -> prompts (chosen / rejected follow from the prompt)
    "a": {"train": ["a-train-0", "a-train-1"], "test": ["a-test-0"]},
    "b": {"train": ["b-train-0", "b-train-1", "b-train-2"], "test": ["b-test-0", "b-test-1"]},
    "c": {"train": ["c-train-0"]},
}
CARD = """---
configs:
- config_name: a
  data_files:
  - split: train
    path: a/train.jsonl
  - split: test
    path: a/test.jsonl
- config_name: b
  data_files:
  - split: train
    path: b/train-*.jsonl
  - split: test
    path: b/test.jsonl
- config_name: a_again
  data_files:
  - split: train
    path: a/train.jsonl
- config_name: c
  data_dir: c_data
---
# two configurations of one preference dataset
"""


def _row(prompt: str) -> dict:
    return {"prompt": prompt, "chosen": f"good answer to {prompt}", "rejected": f"bad answer to {prompt}"}


def _write(path, prompts) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(_row(p)) + "\n" for p in prompts))


@pytest.fixture
def hub_copy(tmp_path):
    """A folder laid out as a downloaded hub dataset with configurations a, b, a_again and c (data_dir)."""
    folder = tmp_path / "prefs"
    _write(folder / "a" / "train.jsonl", ROWS["a"]["train"])
    _write(folder / "a" / "test.jsonl", ROWS["a"]["test"])
    _write(folder / "b" / "train-00000.jsonl", ROWS["b"]["train"][:2])  # two shards, read in order
    _write(folder / "b" / "train-00001.jsonl", ROWS["b"]["train"][2:])
    _write(folder / "b" / "test.jsonl", ROWS["b"]["test"])
    _write(folder / "c_data" / "train.jsonl", ROWS["c"]["train"])
    (folder / "README.md").write_text(CARD)
    return folder


def _cfg(folder, tmp_path, **kw):
    return config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": str(folder),
                             "max_length": 64, "output_dir": str(tmp_path / "out"), **kw})


# ------------------------------------------------------------------------------------------------ reading rows
@pytest.mark.parametrize("config, split", [("a", "train"), ("a", "test"), ("b", "train"), ("b", "test"),
                                           ("c", "train")])
def test_a_configuration_reads_exactly_its_own_rows(hub_copy, config, split):
    rows, report = load_rows(ConfiguredSource(str(hub_copy), config), split=split)
    assert [r.prompt for r in rows] == ROWS[config][split]
    assert [r.chosen for r in rows] == [_row(p)["chosen"] for p in ROWS[config][split]]
    assert report.source == f"{hub_copy} (config {config})"


def test_preflabs_card_reader_reads_what_datasets_load_dataset_reads(hub_copy, monkeypatch):
    """The hub path (datasets.load_dataset(name, config), used for a hub name) and preflab's own reading of a
    local card give the same rows; an unknown configuration through datasets is a DataError naming the option and
    the configurations datasets lists."""
    from preflab.data import sources

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # no hub lookup before datasets reads the local folder
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hub_copy.parent / "hf-cache"))
    for config in ("a", "b"):
        loaded = sources._load_hub(str(hub_copy), "train", configured=ConfiguredSource(str(hub_copy), config))
        assert [row["prompt"] for row in loaded] == ROWS[config]["train"]
    with pytest.raises(DataError) as err:
        sources._load_hub(str(hub_copy), None, configured=ConfiguredSource(str(hub_copy), "zz"))
    assert str(err.value).startswith("dataset_config='zz': ")
    assert "no configuration 'zz'" in str(err.value) and "'a', 'b', 'a_again', 'c'" in str(err.value)
    with pytest.raises(DataError, match=r"(?s)several configurations and none was chosen .*Set dataset_config"):
        sources._load_hub(str(hub_copy), None)


def test_data_files_are_read_under_their_configurations_data_dir(tmp_path, monkeypatch):
    """A configuration giving data_dir and data_files: the patterns are relative to data_dir (datasets' builder
    resolves them under base_path/data_dir), so `train-*.jsonl` under data_dir d_data reads d_data's shards and not
    the folder's own train file; the same with one configuration and no dataset_config. With two configurations the
    rows equal datasets.load_dataset(folder, "d")'s (datasets 5.2 infers a card's file format from its first
    configuration's data_files read from the folder's root, ignoring data_dir, so the card lists e first)."""
    import datasets

    folder = tmp_path / "prefs"
    _write(folder / "train-00000.jsonl", ["top-level-0"])  # matched by the pattern only if data_dir is left out
    _write(folder / "d_data" / "train-00000.jsonl", ["d-train-0", "d-train-1"])
    _write(folder / "d_data" / "test.jsonl", ["d-test-0"])
    _write(folder / "e_data" / "train.jsonl", ["e-train-0"])
    entry = ("- config_name: d\n  data_dir: d_data\n  data_files:\n  - split: train\n    path: train-*.jsonl\n"
             "  - split: test\n    path: test.jsonl\n")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    want = {"train": ["d-train-0", "d-train-1"], "test": ["d-test-0"]}
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: e\n  data_dir: e_data\n" + entry + "---\n")
    for split, prompts in want.items():
        assert [r.prompt for r in load_rows(ConfiguredSource(str(folder), "d"), split=split)[0]] == prompts
        assert datasets.load_dataset(str(folder), "d", split=split)["prompt"] == prompts
    (folder / "README.md").write_text("---\nconfigs:\n" + entry + "---\n")  # one configuration, none named
    for split, prompts in want.items():
        assert [r.prompt for r in load_rows(folder, split=split)[0]] == prompts


def test_the_folder_without_a_configuration_is_refused_naming_them_and_the_option(hub_copy):
    with pytest.raises(DataError, match=r"declares 4 configurations .*Set dataset_config \(eval_dataset_config for "
                                        r"eval_dataset_name, --data-config for preflab eval's --data\) to one of "
                                        r"'a', 'b', 'a_again', 'c'"):
        load_rows(str(hub_copy))


# ------------------------------------------------------------------------------------- training readers
def test_dpo_pairs_of_each_configuration_equal_those_of_its_own_file(hub_copy, tmp_path, monkeypatch):
    """prepare_examples (DPO, KTO's reader too) with dataset_config b tokenizes exactly what pointing dataset_name at
    b's files gives; the data report names the configuration."""
    from preflab.loops.prepare import prepare_examples

    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    tok = tiny_tokenizer()
    for config in ("a", "b"):
        train, evals, report = prepare_examples(_cfg(hub_copy, tmp_path, dataset_config=config), tok)
        assert report["train_rows"]["source"] == f"{hub_copy} (config {config})"
        assert report["train_rows"]["kept"] == len(ROWS[config]["train"]) and evals == []
        direct = tmp_path / f"direct-{config}.jsonl"
        _write(direct, ROWS[config]["train"])
        want, _, _ = prepare_examples(_cfg(direct, tmp_path), tok)
        assert [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in train] == \
            [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in want]
    assert tok.decode(train[0].prompt_ids, skip_special_tokens=True).endswith("b-train-0")


def test_the_tokenization_cache_keeps_configurations_apart(hub_copy, tmp_path, monkeypatch):
    """a, then b, then a again: b is never served a's cached items, a's second read is a cache hit equal to the
    first; a_again holds the same rows as a and still gets its own entry (the key holds the configuration)."""
    from preflab.loops.prepare import prepare_examples

    cache = tmp_path / "cache"
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(cache))
    tok = tiny_tokenizer()

    def read(config):
        train, _, report = prepare_examples(_cfg(hub_copy, tmp_path, dataset_config=config), tok)
        return [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in train], report["train_tokenize"]["from_cache"]

    first_a, hit = read("a")
    assert not hit
    b, hit = read("b")
    assert not hit and len(b) == 3 and b != first_a[:len(b)]
    again_a, hit = read("a")
    assert hit and again_a == first_a
    same_rows, hit = read("a_again")
    assert not hit and same_rows == first_a
    assert len(list((cache / "tokenized").glob("tokenized-pairs-*.json"))) == 3


def test_reward_pairs_and_their_eval_set_read_the_configurations_asked(hub_copy, tmp_path):
    """task: reward (another reader) trains on b; the eval set from the same folder takes b's test split
    (dataset_config carries over, as TRL's one load_dataset(name, config)), or a's with eval_dataset_config: a."""
    from preflab.reward_models.data import load_reward_pairs

    tok = tiny_tokenizer()
    kw = dict(task="reward", dataset_config="b", eval_dataset_name=str(hub_copy), eval_split="test")
    train, evals, report, _ = load_reward_pairs(_cfg(hub_copy, tmp_path, **kw), tok)
    assert report["train_rows"]["source"] == f"{hub_copy} (config b)" and len(train) == 3
    assert len(evals) == 2 and report["eval_rows"]["source"] == f"{hub_copy} (config b)"
    _, evals, report, _ = load_reward_pairs(_cfg(hub_copy, tmp_path, **kw, eval_dataset_config="a"), tok)
    assert len(evals) == 1 and report["eval_rows"]["source"] == f"{hub_copy} (config a)"


def test_online_prompts_and_the_streaming_reader_read_the_configuration(hub_copy, tmp_path):
    from preflab.loops.streaming import _row_source

    cfg = _cfg(hub_copy, tmp_path, dataset_config="b")
    rows, _ = load_rows(training_source(cfg), split=cfg.dataset_split, kind="prompt")  # online_task: dataset's read
    assert [r.prompt for r in rows] == ROWS["b"]["train"]
    open_rows, name = _row_source(cfg, None)
    assert name == f"{hub_copy} (config b)"
    assert [raw.data["prompt"] for raw in open_rows()] == ROWS["b"]["train"]


def test_the_eval_configuration_rule():
    def cfg(**kw):
        return SimpleNamespace(**{"dataset_name": "org/prefs", "dataset_config": "en", "eval_dataset_config": None,
                                  **kw})

    assert eval_source(cfg(eval_dataset_name="org/prefs")) == ConfiguredSource("org/prefs", "en")  # the same data
    assert eval_source(cfg(eval_dataset_name="org/other")) == "org/other"  # another: none unless it says
    fr = eval_source(cfg(eval_dataset_name="org/other", eval_dataset_config="fr"))
    assert (fr, fr.option, fr.data_option) == (ConfiguredSource("org/other", "fr"), "eval_dataset_config",
                                               "eval_dataset_name")
    assert eval_source(cfg(eval_dataset_name="org/prefs", eval_dataset_config="fr")).config == "fr"
    assert training_source(cfg(dataset_config=None)) == "org/prefs"


def test_the_same_folder_spelled_two_ways_is_the_same_data(tmp_path, monkeypatch):
    """eval_dataset_name naming dataset_name's folder by another spelling (relative / absolute, a trailing slash, a
    `..` detour) inherits dataset_config; a folder of the same name elsewhere, or one that does not exist, does not."""
    (tmp_path / "data").mkdir()
    (tmp_path / "other" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    def cfg(eval_name):
        return SimpleNamespace(dataset_name="data", dataset_config="en", eval_dataset_config=None,
                               eval_dataset_name=eval_name)

    for same in (f"{tmp_path}/data", "./data/", "other/../data"):
        assert eval_source(cfg(same)) == ConfiguredSource(same, "en"), same
    for other in ("other/data", "missing/../data2"):
        assert eval_source(cfg(other)) == other


# ---------------------------------------------------------------------------------------------- refusals
def test_an_unknown_configuration_is_refused_before_loading_naming_the_ones_declared(hub_copy, tmp_path):
    with pytest.raises(ConfigError) as err:
        preflight(_cfg(hub_copy, tmp_path, dataset_config="bb"), check_models=False)
    assert f"dataset_name='{hub_copy}': dataset_config='bb': directory {hub_copy} declares no configuration 'bb'" \
        in str(err.value)
    assert "it declares ['a', 'b', 'a_again', 'c']" in str(err.value) and "Did you mean 'b'?" in str(err.value)
    with pytest.raises(ConfigError, match=r"eval_dataset_name=.*eval_dataset_config='x': .*declares no configuration"):
        preflight(_cfg(hub_copy, tmp_path, dataset_config="a", eval_dataset_name=str(hub_copy),
                       eval_dataset_config="x"), check_models=False)
    preflight(_cfg(hub_copy, tmp_path, dataset_config="a"), check_models=False)  # a known one passes


def test_a_configuration_of_something_without_configurations_is_refused(hub_copy, tmp_path):
    """datasets ignores a configuration name given with a data file (load_dataset('json', 'x', data_files=...)
    reads the file): preflab refuses it, as it would be unused; so for a glob, a save_to_disk folder and a folder
    whose card declares no configurations."""
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_list([_row("s")]).save_to_disk(str(saved))
    cases = {hub_copy / "a" / "train.jsonl": "is a single data file, which has no configurations",
             str(hub_copy / "a" / "*.jsonl"): "is a glob of data files, which have no configurations",
             saved: "was saved with save_to_disk",
             hub_copy / "a": "declares no configurations"}
    for name, said in cases.items():
        with pytest.raises(ConfigError, match=rf"dataset_config='a': .*{said}.*Remove dataset_config"):
            preflight(_cfg(name, tmp_path, dataset_config="a"), check_models=False)
        with pytest.raises(DataError, match=said):  # the readers refuse it too (Python callers skip preflight)
            load_rows(ConfiguredSource(str(name), "a"))
    with pytest.raises(ConfigError, match="eval_dataset_config='a' names a configuration of eval_dataset_name, "
                                          "which is not set"):
        _cfg(hub_copy, tmp_path, dataset_config="a", eval_dataset_config="a")


def test_rows_given_from_python_with_a_configuration_are_refused(hub_copy, tmp_path):
    from preflab.loops.prepare import config_reading_rows

    cfg = config_reading_rows(_cfg(hub_copy, tmp_path, dataset_config="a"), [_row("p")], None)
    with pytest.raises(ConfigError, match=r"dataset_config='a' names a configuration of dataset_name, but the data "
                                          r"was given from Python \(list\)"):
        training_source(cfg)


# ------------------------------------------------------------------------------- config file, CLI, TRL, saved
def test_the_option_through_yaml_key_value_trl_names_and_the_saved_config(hub_copy, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"model_name_or_path: builtin:tiny-llama\ndataset_name: {hub_copy}\ndataset_config: a\n")
    assert load_config(path).dataset_config == "a"
    assert load_config(path, ["dataset_config=b"]).dataset_config == "b"
    trl = config_with_overrides({"model_name_or_path": "builtin:tiny-llama", "dataset_name": str(hub_copy),
                                 "dataset_config": "b", "dataset_test_split": "test", "eval_strategy": "steps",
                                 "eval_steps": 5})
    assert (trl.dataset_config, trl.eval_dataset_name, trl.eval_split) == ("b", str(hub_copy), "test")
    assert eval_source(trl) == ConfiguredSource(str(hub_copy), "b")  # TRL's test split of the same configuration
    mixture = config_from_dict({"model_name_or_path": "builtin:tiny-llama",
                                "datasets": [{"path": "openai/gsm8k", "name": "main", "split": "train"}]})
    assert (mixture.dataset_name, mixture.dataset_config) == ("openai/gsm8k", "main")
    cfg = _cfg(hub_copy, tmp_path, dataset_config="a")
    cfg.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").dataset_config == "a"  # the run's config.yaml keeps it
    assert config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x",
                             "dataset_config": None}).dataset_config is None  # TRL's default


def test_a_hub_name_reaches_load_dataset_with_its_configuration(monkeypatch):
    """A hub name (no local path) with dataset_config: datasets.load_dataset(name, name=config, split=...), the
    reader named after both; without one the call is as before (no name)."""
    import datasets

    calls = []

    def recording_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list([_row("hub-row")])

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", recording_load_dataset)
    rows, report = load_rows(ConfiguredSource("openai/gsm8k", "main"), split="test")
    assert [r.prompt for r in rows] == ["hub-row"] and report.source == "hub:openai/gsm8k (config main)[test]"
    load_rows("openai/gsm8k", split="test")
    assert calls == [("openai/gsm8k", {"split": "test", "name": "main"}), ("openai/gsm8k", {"split": "test"})]


def test_a_run_records_its_configuration_in_config_yaml_summary_and_model_card(hub_copy, tmp_path, monkeypatch):
    """One optimizer step of a DPO run on configuration b with b's test split as the eval set: config.yaml keeps
    dataset_config, summary.json's data report names the configuration for both sets, the model card says it."""
    import torch

    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm

    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    out = tmp_path / "run"
    cfg = _cfg(hub_copy, tmp_path, dataset_config="b", eval_dataset_name=str(hub_copy), eval_split="test",
               output_dir=str(out), max_steps=1, per_device_train_batch_size=1, disable_tqdm=True, use_cpu=True)
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok).train()
    assert load_config(out / "config.yaml").dataset_config == "b"
    data = json.loads((out / "summary.json").read_text())["data"]
    assert data["train_rows"]["source"] == data["eval_rows"]["source"] == f"{hub_copy} (config b)"
    assert (data["train_rows"]["total"], data["eval_rows"]["total"]) == (3, 2)
    assert f"on `{hub_copy}` (dataset_config `b`)" in (out / "README.md").read_text()


def test_preflab_evals_overlap_check_reads_the_runs_configuration(hub_copy):
    """`preflab eval` compares the eval rows with a run's training rows read from its config.yaml: with its
    dataset_config, those are the configuration's rows (without it the folder of several would be refused)."""
    from preflab.eval.run import policy_training_rows

    training = policy_training_rows({"task": "dpo", "dataset_name": str(hub_copy), "dataset_config": "b"})
    assert training.why is None and [r.prompt for r in training.rows] == ROWS["b"]["train"]
    assert training.whose == f"the run's training data {hub_copy} (dataset_name, dataset_config b, split train)"
