"""Models, data and output folders given as local paths, as users pass them (the local-paths trial): "~" paths, a
model folder without its tokenizer, a name taken as a hub name without a network, globs of data files, files of blank
lines in every reader. Each test fails on the code before the trial (changes/local-paths.md)."""
import json
from pathlib import Path

import pytest

from preflab.cli import main
from preflab.errors import ConfigError, DataError, SplitMissing

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "loud_echo_pairs.jsonl"


def _rows(n: int) -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines()[:n]]


@pytest.mark.slow  # one tiny training step
def test_home_in_output_dir_puts_the_whole_run_in_the_home_folder(tmp_path, monkeypatch, capsys):
    """output_dir: ~/run took the run's lock in $HOME/run but wrote its model and metrics into ./~/run."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(cwd)
    code = main(["train", "model_name_or_path=builtin:tiny-llama", f"dataset_name={DATA}", "output_dir=~/run",
                 "max_steps=1", "per_device_train_batch_size=2", "eval_fraction=0", "max_length=64", "use_cpu=true",
                 "disable_tqdm=true"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in cwd.iterdir()) == []  # no ./~ folder
    assert (home / "run" / "model.safetensors").is_file() and (home / "run" / "summary.json").is_file()
    assert json.loads((home / "run" / "summary.json").read_text())["data"]["train_rows"]["total"] == 256


def test_home_in_path_options_is_expanded_in_the_config(tmp_path, monkeypatch):
    """model_name_or_path: ~/model passed check_model_name (which expanded it) and then reached from_pretrained as a
    hub repo id ("Repo id must be in the form 'repo_name' or 'namespace/repo_name': '~/model'")."""
    from preflab.config import config_from_dict

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = config_from_dict(dict(model_name_or_path="~/model", ref_model_name_or_path="~/ref", dataset_name="~/d.jsonl",
                                eval_dataset_name="~/e.jsonl", output_dir="~/out",
                                resume_from_checkpoint="~/out/checkpoint-2"))
    assert (cfg.model_name_or_path, cfg.ref_model_name_or_path, cfg.dataset_name, cfg.eval_dataset_name,
            cfg.output_dir, cfg.resume_from_checkpoint) == (
        f"{tmp_path}/model", f"{tmp_path}/ref", f"{tmp_path}/d.jsonl", f"{tmp_path}/e.jsonl", f"{tmp_path}/out",
        f"{tmp_path}/out/checkpoint-2")
    assert config_from_dict(dict(model_name_or_path="org/model~1", dataset_name="x.jsonl")).model_name_or_path == \
        "org/model~1"  # only a leading ~ is a home folder


def test_home_in_nested_path_options_is_expanded_in_the_config(tmp_path, monkeypatch):
    """reward_funcs' model folders and code files, reward_aggregator, user_embeddings and recipe_params' files kept
    "~/..." (the judge loader then looked for ./~/rm, or a module file ~/rewards.py under the working folder); now
    expanded where the config's own path options are (preflab.home_paths.home_expanded)."""
    from preflab.config import config_from_dict

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = config_from_dict(dict(task="online", max_steps=2, model_name_or_path="m", dataset_name="p.jsonl",
                                reward_funcs=["~/rm", "~/rewards.py:fn", "verifier:math"], reward_aggregator="~/agg"))
    assert cfg.reward_funcs == [f"{tmp_path}/rm", f"{tmp_path}/rewards.py:fn", "verifier:math"]
    assert cfg.reward_aggregator == f"{tmp_path}/agg"
    assert config_from_dict(dict(task="online", max_steps=2, model_name_or_path="m", dataset_name="p.jsonl",
                                 reward_funcs="~/rm")).reward_funcs == f"{tmp_path}/rm"
    assert config_from_dict(dict(task="fspo", recipe_params={"data_file": "~/u.jsonl", "stop_after_stage": None})
                            ).recipe_params == {"data_file": f"{tmp_path}/u.jsonl", "stop_after_stage": None}


def test_home_in_an_objective_parameter_written_at_the_top_level_is_expanded(tmp_path, monkeypatch):
    """An objective parameter written at the top level of a config (not inside objective_params) was put into
    objective_params after TrainConfig had expanded it, so `weights_file: ~/w.safetensors` reached the objective as
    "~/w.safetensors"; now expanded by the rule objective_params' own values follow (preflab.home_paths)."""
    from preflab.config import config_from_dict

    monkeypatch.setenv("HOME", str(tmp_path))
    objective = tmp_path / "my_loss.py"
    objective.write_text("from dataclasses import dataclass\n"
                         "from preflab.objectives.dpo import DPO\n\n\n"
                         "@dataclass(frozen=True)\nclass WithFile(DPO):\n    weights_file: str = ''\n")
    cfg = config_from_dict(dict(model_name_or_path="org/m", dataset_name="d.jsonl", loss_type="~/my_loss.py:WithFile",
                                weights_file="~/w.safetensors"))
    assert cfg.objective_params["weights_file"] == f"{tmp_path}/w.safetensors"
    assert cfg.objective().weights_file == f"{tmp_path}/w.safetensors"
    cfg = config_from_dict(dict(model_name_or_path="org/m", dataset_name="d.jsonl", loss_type="~/my_loss.py:WithFile",
                                objective_params={"weights_file": "~/w.safetensors"}))  # the nested form: as before
    assert cfg.objective().weights_file == f"{tmp_path}/w.safetensors"


def test_a_resume_whose_saved_config_holds_a_literal_home_path_is_no_config_change(tmp_path, monkeypatch):
    """A config.yaml (or recipe state) written before "~" was expanded holds "~/d.jsonl"; the resumed config holds
    the expanded path: not a changed option (it refused the resume). Another path still is a change."""
    from preflab.recipe_state import RecipeStateFile
    from preflab.resume_check import compare_configs

    monkeypatch.setenv("HOME", str(tmp_path))
    saved = {"dataset_name": "~/d.jsonl", "reward_funcs": ["~/rm", "verifier:math"], "output_dir": "~/run"}
    current = {"dataset_name": f"{tmp_path}/d.jsonl", "reward_funcs": [f"{tmp_path}/rm", "verifier:math"],
               "output_dir": f"{tmp_path}/run"}
    assert compare_configs(saved, current) == ({}, {})
    assert compare_configs(saved, {**current, "dataset_name": f"{tmp_path}/e.jsonl"}) == (
        {}, {"dataset_name": ("~/d.jsonl", f"{tmp_path}/e.jsonl")})
    state = tmp_path / "fspo_state.json"
    state.write_text(json.dumps({"params": {"data_file": "~/u.jsonl"}, "stages": {}}))
    RecipeStateFile(state, {"data_file": f"{tmp_path}/u.jsonl"}, resume=True)  # no "recipe_params differ"
    with pytest.raises(ConfigError, match=r"recipe_params \['data_file'\] differ"):
        RecipeStateFile(state, {"data_file": f"{tmp_path}/v.jsonl"}, resume=True)


def test_a_model_folder_without_tokenizer_files_says_to_save_the_tokenizer(tmp_path):
    """A folder written by model.save_pretrained alone: AutoTokenizer's error spoke of sentencepiece and tiktoken."""
    from preflab.models.load import load_tokenizer
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    folder = tmp_path / "model"
    tiny_causal_lm(tiny_tokenizer(), hidden_size=16, num_layers=1).save_pretrained(folder)
    with pytest.raises(ConfigError) as err:
        load_tokenizer(str(folder))
    assert str(err.value) == (
        f"model_name_or_path='{folder}' holds no tokenizer files (tokenizer.json, tokenizer_config.json, vocab.json, "
        "...); model.save_pretrained saves no tokenizer. Save the tokenizer of the model it was made from into the "
        f"folder too, e.g. AutoTokenizer.from_pretrained(<that model>).save_pretrained('{folder}').")
    tiny_tokenizer().save_pretrained(folder)
    assert load_tokenizer(str(folder)).eos_token == "</s>"


@pytest.mark.parametrize("failure,words", [
    ("network", "and the hub could not be reached (ConnectError: [Errno -3] Temporary failure in name resolution): "
                "no network? Download the model where there is one (hf download someorg/somemodel) or give a local "
                "directory; HF_HUB_OFFLINE=1 skips the lookup."),
    ("missing", "and the hub has no model of that name (RepositoryNotFoundError: 404 no such repo); check the name"),
])
def test_a_name_that_is_no_folder_says_it_was_taken_as_a_hub_name_and_why_the_lookup_failed(
        tmp_path, monkeypatch, failure, words):
    """The lookup's failure said only "the hub lookup failed (ConnectError: ...)": not that the name was read as a
    hub name for want of a local folder (which one was tried), nor that there is no network."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    httpx = pytest.importorskip("httpx2")  # huggingface_hub 2.x's HTTP client (its errors are what a lookup raises)

    from preflab.models.load import check_model_name

    def model_info(name, timeout):
        if failure == "network":
            raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")
        raise RepositoryNotFoundError("404 no such repo", response=httpx.Response(404, request=httpx.Request(
            "GET", "https://huggingface.co/api/models/someorg/somemodel")))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        check_model_name("someorg/somemodel")
    assert str(err.value).startswith(
        f"model_name_or_path='someorg/somemodel' was taken as a hub name: it is no local directory (tried "
        f"{tmp_path.resolve()}/someorg/somemodel) and is not in the local hub cache, ")
    assert words in str(err.value)


def test_a_path_like_name_is_never_looked_up_on_the_hub(tmp_path, monkeypatch):
    from preflab.models.load import check_model_name

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        check_model_name("./models/mine")
    assert str(err.value) == (f"model_name_or_path='./models/mine': no such local directory (tried {tmp_path.resolve()}"
                              "/models/mine); it is written as a path, so it was not looked up on the hub.")


def test_a_glob_reads_the_matching_files_in_order_and_names_each_rows_file(tmp_path):
    """dataset_name: data/*.jsonl was 'data file or directory ... does not exist'; datasets reads data_files globs."""
    from preflab.data.rows import load_rows
    from preflab.data.sources import RowReader

    rows = _rows(5)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[2:]))
    (tmp_path / "shards" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    (tmp_path / "shards" / "notes.txt").write_text("not data")
    pattern = str(tmp_path / "shards" / "*.jsonl")
    assert [raw.data for raw in RowReader(pattern)] == rows
    assert [(Path(raw.file).name, raw.row_id, raw.line) for raw in RowReader(pattern)][1:3] == [
        ("a.jsonl", 1, 2), ("b.jsonl", 2, 1)]
    bad = dict(rows[1], chosen=5)
    (tmp_path / "shards" / "b.jsonl").write_text(json.dumps(rows[2]) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as err:
        load_rows(pattern)
    assert str(err.value).startswith(f"{tmp_path}/shards/b.jsonl row 3 (line 2), field 'chosen': expected a string or "
                                     "a list of messages, got int.")
    with pytest.raises(DataError, match=r"data path '.*/nothere/\*.jsonl' matches no file \(read as a glob"):
        RowReader(str(tmp_path / "nothere" / "*.jsonl"))
    with pytest.raises(SplitMissing, match=r"the glob '.*' is read as one split, 'train' .* has no split 'test'"):
        RowReader(pattern, split="test")
    assert RowReader(pattern, split="test", otherwise="train").split == "train"  # preflab eval's default


def test_a_vision_file_of_blank_lines_is_empty_with_its_blank_lines_counted(tmp_path):
    """The vision reader's report never took the reader's blank-line count, so its "is empty" error said nothing of
    the blank lines (the text readers' says "(3 blank lines)")."""
    from preflab.data.report import refuse_empty
    from preflab.data.vision import read_vision_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text("\n  \n\r\n")
    rows, report = read_vision_pairs(str(path))
    assert (rows, report.total, report.blank_lines) == ([], 0, 3)
    with pytest.raises(DataError) as err:
        refuse_empty(report, "dataset_name", str(path))
    assert str(err.value) == f"dataset_name='{path}' ({path}) is empty: it holds no rows (3 blank lines). Fill it, or point dataset_name at data with rows."


def test_an_online_vision_prompt_file_of_blank_lines_is_empty_with_its_blank_lines_counted(tmp_path):
    """It said "online_task vision_dataset needs at least one row with `images` and `prompt`", without the count."""
    from preflab.online.vision import vision_prompt_rows

    path = tmp_path / "prompts.jsonl"
    path.write_text("\n\n\n\n")
    report = {}
    with pytest.raises(DataError) as err:
        vision_prompt_rows(str(path), processor=None, report_to=report)
    assert str(err.value) == f"{path} is empty: it holds no rows (4 blank lines). Fill it, or point to data with rows."
    assert report["prompt_rows"]["blank_lines"] == 4


def test_a_diffusion_file_of_blank_lines_is_empty_not_rows_without_usable_columns(tmp_path):
    """It said "no usable rows (0 read, 0 skipped, 0 ties dropped). Check the columns and images."."""
    from preflab.diffusion.data import load_image_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DataError) as err:
        load_image_pairs(str(path), resolution=8)
    assert str(err.value) == f"{path} is empty: it holds no rows (2 blank lines). Fill it, or point to data with rows."


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
@pytest.mark.parametrize("form", [".jsonl", ".json", ".csv"])
def test_a_compressed_data_file_reads_the_rows_of_the_plain_file(tmp_path, suffix, form):
    """train.jsonl.gz (Anthropic/hh-rlhf ships its splits so) was "unsupported file type '.gz'"."""
    import bz2
    import csv
    import gzip
    import io
    import lzma

    from preflab.data.sources import RowReader

    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in _rows(4)]
    if form == ".csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, ["prompt", "chosen", "rejected"], lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
        blob = b"\xef\xbb\xbf" + text.getvalue().encode()
    else:
        blob = (json.dumps(rows) if form == ".json" else "\n".join(map(json.dumps, rows)) + "\n\n").encode()
    plain = tmp_path / f"train{form}"
    plain.write_bytes(blob)
    packed = tmp_path / f"train{form}{suffix}"
    packed.write_bytes({".gz": gzip, ".bz2": bz2, ".xz": lzma}[suffix].compress(blob))
    assert [r.data for r in RowReader(str(packed))] == [r.data for r in RowReader(str(plain))] == rows
    streamed = RowReader(str(packed), streaming=True)
    assert [r.data for r in streamed] == rows and streamed.blank_lines == (1 if form == ".jsonl" else 0)


def test_a_truncated_compressed_file_names_the_file_and_the_rows_read(tmp_path):
    import gzip

    from preflab.data.sources import RowReader

    blob = gzip.compress("".join(json.dumps(r) + "\n" for r in _rows(200)).encode())
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(blob[:len(blob) // 2])
    read = []
    with pytest.raises(DataError) as err:
        read.extend(RowReader(str(path)))
    assert len(read) > 50
    assert str(err.value).startswith(f"{path}: cannot decompress it after {len(read)} rows (EOFError: ")
    assert str(err.value).endswith("the file may be truncated or damaged. Download it again, or decompress it to see "
                                   "where it breaks.")
    zst = tmp_path / "train.jsonl.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(DataError) as err:
        RowReader(str(zst))
    assert str(err.value) == (f"{zst}: compressed file type '.zst'; preflab reads .jsonl, .json, .parquet, .csv, "
                              ".arrow, and .jsonl, .json, .csv compressed as .gz, .bz2, .xz. Decompress it first.")


def _saved_tiny(folder: Path):
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, hidden_size=16, num_layers=1)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


@pytest.mark.slow  # scores two pairs
def test_eval_takes_home_paths_of_the_model_the_data_and_the_output(tmp_path, monkeypatch, capsys):
    """`preflab eval '~/model' --data '~/d.jsonl'`: "~/model is not a directory" (the arguments were not expanded)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PREFLAB_CACHE_DIR", str(tmp_path / "cache"))
    _saved_tiny(tmp_path / "model")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(2)))
    code = main(["eval", "~/model", "--data", "~/d.jsonl", "--out", "~/scores", "--no-reference", "--limit", "2"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "scores" / "eval.json").read_text())["checkpoint"] == f"{tmp_path}/model"


def test_eval_of_a_peft_adapter_folder_loads_the_base_its_adapter_config_names(tmp_path):
    """An adapter saved by peft (no preflab config.yaml) was "holds no full model and no saved config naming its base
    model", though adapter_config.json names its base (and training takes such a folder as the reference)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from preflab.eval.loading import load_for_eval

    base, tok = _saved_tiny(tmp_path / "base")
    adapted = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    adapted.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    adapted.save_pretrained(tmp_path / "adapter")
    model, _ = load_for_eval(str(tmp_path / "adapter"), tokenizer=tok)
    from transformers import AutoModelForCausalLM

    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                         str(tmp_path / "adapter")).merge_and_unload()
    ids = torch.tensor([[1, 5, 9, 13]])
    assert torch.equal(model(ids).logits, expected.eval()(ids).logits)
    assert not torch.equal(model(ids).logits, AutoModelForCausalLM.from_pretrained(tmp_path / "base")(ids).logits)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(dict(config, base_model_name_or_path="gone")))
    with pytest.raises(Exception, match=r"adapter_config.json names 'gone', which is not a directory here\)"):
        load_for_eval(str(tmp_path / "adapter"), tokenizer=tok)


def test_pickle_weights_are_refused_with_a_conversion_that_works_and_eval_refuses_remote_code_first(tmp_path):
    """A pytorch_model.bin-only folder is refused saying how to convert it, and that conversion passes the check;
    `preflab eval` of a folder whose config maps to shipped code (auto_map) was refused only by transformers' own
    message ("... at https://hf.co//tmp/...: pass trust_remote_code=True"), after loading began."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from preflab.errors import UnsafeLoadError
    from preflab.eval.loading import load_for_eval
    from preflab.models.load import check_weights_safe

    folder = tmp_path / "pickled"
    _saved_tiny(folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(UnsafeLoadError) as err:
        load_for_eval(str(folder))
    assert str(err.value) == (
        f"{folder} would load pickle weights (pytorch_model.bin); loading them can run arbitrary code. Convert them to "
        "safetensors where you trust them (AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR) writes "
        "model.safetensors beside them), or set allow_pickle=true (`preflab eval`: --allow-pickle) if you trust the "
        "files.")
    AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder)
    check_weights_safe(str(folder), allow_pickle=False)  # converted: accepted

    remote = tmp_path / "remote"
    _saved_tiny(remote)
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="mytiny", auto_map={"AutoModelForCausalLM": "modeling_my.MyModel"})
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "modeling_my.py").write_text("raise SystemExit('the shipped code ran')\n")
    with pytest.raises(ConfigError) as err:
        load_for_eval(str(remote))
    assert str(err.value) == (
        f"model='{remote}' needs the model code shipped in the folder (modeling_my.py, named by auto_map in "
        f"{remote}/config.json; model_type 'mytiny' is not one transformers knows). preflab runs such code only with "
        "trust_remote_code: true (`preflab eval`: --trust-remote-code); read those files first, and set it only if "
        "you trust them.")


def test_a_truncated_safetensors_file_is_one_error_naming_the_model(tmp_path):
    """A half-copied model.safetensors ended the run in a SafetensorError traceback from the Rust reader."""
    from preflab.models.load import load_causal_lm

    folder = tmp_path / "model"
    _, tok = _saved_tiny(folder)
    blob = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(blob[:len(blob) // 2])
    with pytest.raises(ConfigError) as err:
        load_causal_lm(str(folder), tokenizer=tok)
    assert str(err.value) == (
        f"model_name_or_path='{folder}' could not be loaded: a weights file is damaged or incomplete (SafetensorError: "
        "Error while deserializing header: incomplete metadata, file not fully covered); save or download the model "
        "again.")


def test_a_folder_without_config_json_is_no_model_folder_listing_what_it_holds(tmp_path):
    """An empty folder got the tokenizer advice; a folder of tokenizer files only got transformers' "Unrecognized
    model ... Should have a `model_type` key in its config.json" of a config.json that is not there."""
    from preflab.models.load import load_causal_lm, load_tokenizer
    from preflab.models.tiny import tiny_tokenizer

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as err:
        load_tokenizer(str(empty))
    assert str(err.value) == (
        f"model_name_or_path='{empty}' is no model folder: it has no config.json (it is empty). Give the folder that "
        "model.save_pretrained and tokenizer.save_pretrained wrote (config.json, *.safetensors, the tokenizer files).")
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    with pytest.raises(ConfigError, match=r"^ref_model_name_or_path='.*/tok' is no model folder: it has no config.json "
                                          r"\(it holds chat_template.jinja, tokenizer.json, tokenizer_config.json\)\."):
        load_causal_lm(str(tmp_path / "tok"), tokenizer=tok, option="ref_model_name_or_path")


def test_a_missing_data_path_names_the_close_file_beside_it_or_the_missing_folder(tmp_path, monkeypatch,
                                                                                  capsys):
    """user-trial-9: `dataset_name: examples/data/loud_echo_pairs.json` (the file is .jsonl) said only "Check the
    path". A name close to one in its folder (difflib ratio >= 0.8) is suggested, as written (relative); a folder
    that does not exist is named; a name close to nothing keeps "Check the path" (a shared ".jsonl" is not close)."""
    from preflab.data.sources import missing_path_message

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.jsonl").write_text("")
    (tmp_path / "data" / "other.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    root, head = tmp_path.resolve(), "it is written as a path, so it was not looked up on the hub."
    assert missing_path_message("data/pairs.json", Path("data/pairs.json")) == (
        f"data file or directory 'data/pairs.json' does not exist (tried {root}/data/pairs.json); {head} Did you "
        "mean 'data/pairs.jsonl'?")
    assert missing_path_message("dta/pairs.jsonl", Path("dta/pairs.jsonl")).endswith(
        f"{head} Its folder {root}/dta does not exist.")
    assert missing_path_message("dta/sub/pairs.jsonl", Path("dta/sub/pairs.jsonl")).endswith(
        f"{head} Its folder {root}/dta does not exist.")  # the first folder missing, not the innermost
    assert missing_path_message("data/zzz.jsonl", Path("data/zzz.jsonl")).endswith(f"{head} Check the path.")
    assert main(["train", "model_name_or_path=builtin:tiny-llama", "dataset_name=data/pairs.json",
                 f"output_dir={tmp_path / 'out'}"]) == 2  # as a run reads dataset_name
    assert capsys.readouterr().err.strip().endswith("Did you mean 'data/pairs.jsonl'?")
