"""Tokenized SFT rows (input_ids, optional labels / completion_mask / assistant_masks) and SFTConfig's
dataset_kwargs {skip_prepare_dataset: true}: the sequences and loss tokens preflab trains on equal those of TRL 1.16's
own SFTTrainer on the same dataset (its prepared input_ids / labels, cut at max_length, or as given when it skips
preparing); what TRL refuses or would read ambiguously is refused with the column and what to do."""
import pytest

from preflab.config import config_from_dict
from preflab.data.report import TokenizeReport
from preflab.errors import ConfigError, DataError
from preflab.loops.sft_packing import pack_examples
from preflab.loops.sft_rows import tokenize_sft_row
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

datasets = pytest.importorskip("datasets")
pytest.importorskip("trl")

MAX = 8
ROWS = [{"input_ids": [1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 2], "completion_mask": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]},
        {"input_ids": [1, 50, 51, 52, 2], "completion_mask": [0, 0, 1, 1, 1]},
        {"input_ids": [1, 60, 61, 62, 63, 2], "completion_mask": [0, 1, 1, 1, 1, 1]}]
LABELLED = [{"input_ids": [1, 70, 71, 72, 73, 2], "labels": [-100, -100, 71, 72, -100, 2]},
            {"input_ids": [1, 80, 81, 82, 83, 84, 85, 86, 87, 2], "labels": [1, 80, 81, 82, 83, 84, 85, 86, 87, 2]}]


def _cfg(**kw):
    return config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny-llama", "dataset_name": "synthetic",
                             "max_length": MAX, "use_cpu": True, **kw})


def _ours(rows, **kw):
    cfg, tok = _cfg(**kw), tiny_tokenizer()
    items = [tokenize_sft_row(i, row, tok, cfg, TokenizeReport())[0] for i, row in enumerate(rows)]
    return pack_examples(items, cfg.packing_strategy, MAX)[0] if cfg.packing else items


def _trl(rows, **options):
    from trl import SFTConfig, SFTTrainer as TRLSFTTrainer

    tok = tiny_tokenizer()
    trainer = TRLSFTTrainer(model=tiny_causal_lm(tok, seed=0), processing_class=tok,
                            args=SFTConfig(output_dir="unused", report_to=[], use_cpu=True, bf16=False, max_length=MAX,
                                           **options),
                            train_dataset=datasets.Dataset.from_list(rows))
    out = []
    for r in trainer.train_dataset:  # a packed row (bfd_split) cut at its seq_lengths; labels absent: every token
        labels, start = r.get("labels") or r["input_ids"], 0
        for n in r.get("seq_lengths") or [len(r["input_ids"])]:
            out.append((tuple(r["input_ids"][start:start + n]),
                        tuple(t for t in range(1, n) if labels[start + t] != -100)))
            start += n
    return out


def _sequence(x):
    mask = x.loss_mask or [True] * len(x.completion_ids)
    return tuple(x.prompt_ids + x.completion_ids), tuple(len(x.prompt_ids) + k for k, m in enumerate(mask) if m)


@pytest.mark.parametrize("options", [{"completion_only_loss": True}, {"completion_only_loss": False},
                                     {"completion_only_loss": True, "packing": True, "packing_strategy": "wrapped"}])
def test_tokenized_rows_equal_trls_prepared_rows(options):
    """completion_mask read with completion_only_loss: true, every token with false; a row cut at max_length keeps
    its start; wrapped joins the rows (TRL's labels of each row's first token decide whether it is predicted)."""
    assert [_sequence(x) for x in _ours(ROWS, **options)] == _trl(ROWS, **options)


@pytest.mark.parametrize("options", [{}, {"packing": True, "packing_strategy": "bfd_split"}])
def test_labels_column_is_used_as_given(options):
    theirs = _trl(LABELLED, **options)
    ours = [_sequence(x) for x in _ours(LABELLED, **options)]
    assert sorted(ours) == sorted(x for x in theirs if x[1])


def test_skip_prepare_dataset_uses_rows_as_they_are():
    """dataset_kwargs {skip_prepare_dataset: true}: no cut at max_length (TRL's dataset must be truncated already),
    labels as given, and without labels every token after the first carries loss (TRL's collator: labels = ids)."""
    for rows in ([{"input_ids": r["input_ids"]} for r in ROWS], LABELLED):
        theirs = _trl(rows, dataset_kwargs={"skip_prepare_dataset": True})
        assert max(len(ids) for ids, _ in theirs) > MAX
        assert [_sequence(x) for x in _ours(rows, dataset_kwargs={"skip_prepare_dataset": True})] == theirs
    assert _cfg(dataset_kwargs='{"skip_prepare_dataset": "true"}').skip_prepare_dataset is True  # TrainingArguments' JSON
    assert _cfg(dataset_kwargs={}).skip_prepare_dataset is False


def test_what_trl_refuses_or_reads_ambiguously_is_refused(tmp_path):
    from preflab.loops.sft import SFTTrainer
    from jsonl_files import write_jsonl

    with pytest.raises(ConfigError, match="dataset_kwargs key\\(s\\) num_proc are not supported: TRL 1.16's "
                                          "SFTTrainer reads only skip_prepare_dataset"):
        _cfg(dataset_kwargs={"skip_prepare_dataset": True, "num_proc": 4})
    with pytest.raises(ConfigError, match="TRL packs nothing when it skips preparing"):
        _cfg(dataset_kwargs={"skip_prepare_dataset": True}, packing=True, packing_strategy="wrapped")
    tok = tiny_tokenizer()

    def build(rows, **kw):
        path = tmp_path / "rows.jsonl"
        write_jsonl(path, rows)
        cfg = config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(path),
                                "max_length": MAX, "use_cpu": True, "on_bad_row": "skip",
                                "output_dir": str(tmp_path / "out"), **kw})
        return SFTTrainer(cfg, tokenizer=tok)

    # a completion_mask with TRL's default completion_only_loss (null: every token for rows without prompt): ambiguous,
    # an error even under on_bad_row: skip, naming the file, row and column
    with pytest.raises(DataError, match="rows.jsonl.*completion_mask.*completion_only_loss: true"):
        build(ROWS)
    # TRL 1.16 refuses mask columns without labels when it skips preparing (it would train every token)
    with pytest.raises(DataError, match="assistant_masks.*Add a 'labels' column"):
        build([{"input_ids": [1, 5, 6], "assistant_masks": [0, 1, 1]}], dataset_kwargs={"skip_prepare_dataset": True})
    with pytest.raises(DataError, match="labels.*neither -100 nor that token's input id"):
        build([{"input_ids": [1, 5, 6], "labels": [-100, 7, 6]}])
    with pytest.raises(DataError, match="skip_prepare_dataset: true reads rows as they are"):
        build([{"text": "a b c"}] * 2, dataset_kwargs={"skip_prepare_dataset": True}, on_bad_row="error")
