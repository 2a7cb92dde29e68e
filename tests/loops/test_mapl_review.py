"""Review of MAPL intra rows: the paths beside `preflab train`'s own (streaming eval set, reward-model eval of a split
or a limited set) read intra rows as the training path does, or refuse them."""
import json
from types import SimpleNamespace

import pytest

from preflab.config import config_from_dict
from preflab.data.mapl import build_mapl_rows
from preflab.errors import DataError
from preflab.models.tiny import tiny_tokenizer

BASE = [{"prompt": f"Q{i}: describe item {i}.", "chosen": c, "rejected": r} for i, (c, r) in enumerate([
    ("it is red, small", "blue"), ("- one\n- two", "one two"), ("A LOUD ANSWER", "a quiet one"),
    ("short", "a much longer answer here")])]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_streaming_eval_set_refuses_intra_rows_for_a_loss_that_compares_responses(tmp_path):
    """The eval set of a streaming run is read whole (loops.streaming.eval_examples); intra rows there must be refused
    for loss_type: sigmoid as in the ordinary run, not scored as y | x_w against y | x_l."""
    from preflab.loops.streaming import eval_examples

    intra, _ = build_mapl_rows(BASE, seed=0)
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": write_rows(
        tmp_path / "train.jsonl", BASE), "eval_dataset_name": write_rows(tmp_path / "eval.jsonl", intra),
        "output_dir": str(tmp_path / "out"), "streaming": True, "max_steps": 1, "use_cpu": True})
    with pytest.raises(DataError, match=r"eval\.jsonl: row 0: fields prompt_chosen / prompt_rejected.*'sigmoid'"):
        eval_examples(cfg, tiny_tokenizer(), SimpleNamespace(name="pairs"))


def test_reward_eval_of_a_limited_set_reads_intra_rows_as_the_whole_file(tmp_path):
    """`preflab eval --task reward --limit N` hands the rows over as dicts: intra rows must stay intra rows (they were
    rebuilt as {prompt, chosen: y, rejected: y} and skipped as identical), so --limit covering every row gives the
    numbers of the whole file."""
    from preflab.cli import main
    from preflab.reward_models.eval import evaluate_reward_model
    from preflab.reward_models.heads import build_reward_model

    rows, _ = build_mapl_rows(BASE, seed=0, keep_original=True)
    data = write_rows(tmp_path / "mapl.jsonl", rows)
    tok = tiny_tokenizer("bytelevel")
    build_reward_model("builtin:tiny-llama", 1, tok, seed=0).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    direct = evaluate_reward_model(str(tmp_path / "rm"), data, on_bad_row="skip")
    assert direct["num_pairs"] == len(rows) == 8
    assert main(["eval", str(tmp_path / "rm"), "--data", data, "--task", "reward", "--limit", str(len(rows))]) == 0
    result = json.loads((tmp_path / "rm" / "eval.json").read_text())
    assert result["num_pairs"] == 8
    assert result["metrics"]["reward_model/accuracy"] == direct["accuracy"]
    assert result["metrics"]["reward_model/mean_logit"] == pytest.approx(direct["mean_logit"], abs=1e-6)


def test_a_table_mixing_pairs_and_intra_rows_reads_as_the_jsonl_file(tmp_path):
    """A parquet (or hub / save_to_disk) table of the builder's output has every column in every row, null where a
    row has no value: the null columns of the other form must not make a row 'both forms' (every row was refused)."""
    import datasets

    from preflab.data.rows import load_rows

    rows, _ = build_mapl_rows(BASE, seed=0, keep_original=True)
    jsonl = write_rows(tmp_path / "mapl.jsonl", rows)
    datasets.load_dataset("json", data_files=jsonl, split="train").to_parquet(str(tmp_path / "mapl.parquet"))
    plain, plain_report = load_rows(jsonl, kind="pairwise")
    table, table_report = load_rows(str(tmp_path / "mapl.parquet"), kind="pairwise")
    assert table_report.forms == plain_report.forms == {"standard": 4, "intra_standard": 4}
    assert [(x.prompt, x.chosen, x.rejected, x.rejected_prompt) for x in table] == \
        [(x.prompt, x.chosen, x.rejected, x.rejected_prompt) for x in plain]


def test_reward_context_cut_from_the_rejected_prompt_of_an_intra_row_is_a_bad_row():
    """A context sits at the start of both prompts of an intra row; max_prompt_length (keep_end) cutting it from x_l
    only (x_l longer than x_w) is a bad row as for x_w, not a row trained with x_l's context cut away."""
    from preflab.data.rows import load_rows
    from preflab.data.tokenize import rejected_prompt_of, tokenize_pairs
    from preflab.reward_models.context import CONTEXT_TEMPLATE, with_context
    from preflab.reward_models.data import tokenize_reward_pairs

    row = {"prompt_chosen": "Q\n\nUse no commas.", "completion": "a plain answer", "context": "the user is a chemist",
           "prompt_rejected": "Q\n\nUse at least two commas, and spell every number out in words as well."}
    examples, _ = load_rows([row], kind="pairwise")
    tok = tiny_tokenizer()
    (full,), _ = tokenize_pairs(with_context(examples, CONTEXT_TEMPLATE), tok, max_length=None)
    limit = len(full.prompt_ids) + 1
    assert len(full.prompt_ids) <= limit < len(rejected_prompt_of(full))  # x_w fits, x_l would lose its start
    with pytest.raises(DataError, match="context.*max_prompt_length"):
        tokenize_reward_pairs(examples, tok, max_length=None, max_prompt_length=limit,
                              context_template=CONTEXT_TEMPLATE)
