"""`preflab eval --data DATA --data-config NAME`: the configuration of a dataset (TRL's dataset_config, datasets'
`name`), read through preflab.data.configured_source as every training reader reads dataset_config, for every
--task; refused (naming --data-config and --data) where it would be unused: a single data file, a glob, a
save_to_disk folder. Before, --data had no configuration and a folder declaring several was refused outright.

The data: a folder laid out as a downloaded hub dataset whose README.md declares configurations 'a' and 'b' (their
own rows, train and test) and 'c' (train only)."""
import json

import pytest
import torch
import yaml

from preflab.cli import main
from preflab.data.rows import load_rows
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from jsonl_files import write_jsonl  # tests/, on sys.path beside conftest

PROMPTS = {("a", "train"): ["a0 ?", "a1 ?"], ("a", "test"): ["at0 ?"],
           ("b", "train"): ["b0 ?", "b1 ?", "b2 ?"], ("b", "test"): ["bt0 ?", "bt1 ?"], ("c", "train"): ["c0 ?"]}
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
    path: b/train.jsonl
  - split: test
    path: b/test.jsonl
- config_name: c
  data_files:
  - split: train
    path: c/train.jsonl
---
"""


def _rows(prompts):
    return [{"prompt": p, "chosen": f" yes {p}", "rejected": f" no {p}"} for p in prompts]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(root, the dataset folder, the tokenizer): a policy run (trained on configuration a's train split, per its
    config.yaml), a reference, a reward model, and the dataset folder."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("eval_data_config")
    folder = root / "prefs"
    for (config, split), prompts in PROMPTS.items():
        (folder / config).mkdir(parents=True, exist_ok=True)
        write_jsonl(folder / config / f"{split}.jsonl", _rows(prompts))
    (folder / "README.md").write_text(CARD)
    tok = tiny_tokenizer("bytelevel")
    for name, seed in (("run", 1), ("ref", 2)):
        tiny_causal_lm(tok, seed=seed).save_pretrained(root / name, safe_serialization=True)
        tok.save_pretrained(root / name)
    (root / "run" / "config.yaml").write_text(yaml.safe_dump({
        "model_name_or_path": "builtin:tiny-llama", "beta": 0.2, "seed": 0, "dataset_name": str(folder),
        "dataset_config": "a", "dataset_split": "train"}))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(root / "rm", safe_serialization=True)
    tok.save_pretrained(root / "rm")
    return root, folder


def _eval(root, *args, out):
    code = main(["eval", str(root / "run"), "--reference", str(root / "ref"), "--out", str(out), *args])
    return code, (json.loads(out.read_text()) if out.exists() else None)


def test_the_configuration_is_read_and_scored_as_its_own_files(saved, tmp_path, capsys):
    """--data-config b reads b's test split: the per-pair log-probs equal those of `--data b/test.jsonl`; eval.json
    records data and data_config; the run trained on configuration a, so no pair is a training pair."""
    root, folder = saved
    code, got = _eval(root, "--data", str(folder), "--data-config", "b", out=tmp_path / "b.json")
    assert code == 0, capsys.readouterr().err
    _, want = _eval(root, "--data", str(folder / "b" / "test.jsonl"), out=tmp_path / "file.json")
    assert (got["data"], got["data_config"], got["split"], got["num_pairs"]) == (str(folder), "b", "test", 2)
    assert got["per_pair"]["policy_chosen"] == want["per_pair"]["policy_chosen"]
    assert got["per_pair"]["ref_rejected"] == want["per_pair"]["ref_rejected"]
    assert got["metrics"] == want["metrics"]
    assert f"read split 'test' of {folder} (config b)" in " ".join(got["notes"])
    assert "data_config" not in want
    assert got["overlap_with_training"]["prompts"] == 0 and got["overlap_with_training"]["training_pairs"] == 2


def test_the_runs_own_configuration_and_split_is_said_to_be_its_training_data(saved, tmp_path):
    """--data-config a --split train is the run's training data (dataset_config a): said; configuration b's train
    split is not (same folder, other configuration); c has no test split, so its train split is read, said."""
    root, folder = saved
    _, got = _eval(root, "--data", str(folder), "--data-config", "a", "--split", "train", out=tmp_path / "a.json")
    said = [n for n in got["notes"] if "is the run's training data" in n]
    assert said and said[0].startswith(f"--data {folder} (split train, configuration a) is the run's training data")
    assert got["num_pairs"] == 2 and got["overlap_with_training"]["pairs"] == 2
    _, other = _eval(root, "--data", str(folder), "--data-config", "b", "--split", "train", out=tmp_path / "b.json")
    assert not [n for n in other["notes"] if "is the run's training data" in n]
    assert other["num_pairs"] == 3 and other["overlap_with_training"]["pairs"] == 0
    _, only_train = _eval(root, "--data", str(folder), "--data-config", "c", out=tmp_path / "c.json")
    assert (only_train["split"], only_train["num_pairs"]) == ("train", 1)


def test_task_reward_reads_the_configuration(saved, tmp_path):
    """--task reward with --data-config: the accuracy and pair count of evaluating b's test file directly."""
    import preflab.reward_models.eval as reward_eval

    root, folder = saved
    out = tmp_path / "rm.json"
    assert main(["eval", str(root / "rm"), "--data", str(folder), "--data-config", "b", "--task", "reward",
                 "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    direct = reward_eval.evaluate_reward_model(str(root / "rm"), str(folder / "b" / "test.jsonl"), on_bad_row="skip")
    assert (got["data"], got["data_config"], got["split"], got["num_pairs"]) == (str(folder), "b", "test", 2)
    assert got["metrics"]["reward_model/accuracy"] == direct["accuracy"]


def test_a_configuration_of_what_has_none_is_refused_naming_the_options(saved, tmp_path, capsys):
    """A single data file, a glob, a save_to_disk folder: --data-config would be unused (datasets ignores a
    configuration given with data files), so the command stops naming --data-config and --data; an undeclared
    configuration names the declared ones; a folder of several without --data-config says to set it."""
    import datasets

    root, folder = saved
    disk = tmp_path / "saved"
    datasets.Dataset.from_list(_rows(["s ?"])).save_to_disk(str(disk))
    cases = {str(folder / "a" / "train.jsonl"): "is a single data file, which has no configurations",
             str(folder / "a" / "*.jsonl"): "is a glob of data files, which have no configurations",
             str(disk): "was saved with save_to_disk"}
    for data, said in cases.items():
        code, _ = _eval(root, "--data", data, "--data-config", "a", out=tmp_path / "x.json")
        err = capsys.readouterr().err
        assert code != 0 and f"--data-config='a': {data} {said}" in err and "Remove --data-config" in err, err
    code, _ = _eval(root, "--data", str(folder), "--data-config", "bb", out=tmp_path / "x.json")
    err = capsys.readouterr().err
    assert code != 0 and "--data-config='bb': directory" in err and "it declares ['a', 'b', 'c']" in err, err
    code, _ = _eval(root, "--data", str(folder), out=tmp_path / "x.json")
    assert code != 0 and "--data-config for preflab eval's --data" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_the_rows_read_are_the_configurations(saved):
    """The reader the eval opens (open_eval_split of eval_data) reads exactly the configuration's rows."""
    from preflab.eval.run import eval_data, open_eval_split

    _, folder = saved
    for config in ("a", "b"):
        split, _, reader = open_eval_split(eval_data(str(folder), config), None)
        assert split == "test" and [r.prompt for r in load_rows(reader)[0]] == PROMPTS[(config, "test")]
    assert eval_data(str(folder), None) == str(folder)  # no --data-config: --data as given
